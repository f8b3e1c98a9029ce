/*
 * models_internal.h — what models.c (the registry) and models_scan.c (the
 * files) share; nothing else includes it.
 */
#ifndef SRV_MODELS_INTERNAL_H
#define SRV_MODELS_INTERNAL_H

#include "models.h"

/* Frees an entry that is not (or no longer) registered. */
void srv_model_entry_destroy(srv_model *e);

/* Registers e (loaded, its name and file set; the registry takes it):
 * into a free slot, or into replaces' slot (replaces must still be
 * published under the same name), atomically for readers.  0; -1 full;
 * -2 the name is taken (by another entry than replaces); -3 replaces is
 * no longer published.  On failure the caller still owns e. */
int srv_models_publish(srv_models *reg, srv_model *e, const srv_model *replaces);

/* Unpublishes m and drops the registry's reference; 0, or -1 when m was
 * not published. */
int srv_models_unpublish(srv_models *reg, const srv_model *m);

/* Up to cap published entries, each a reference, in slot order. */
int srv_models_snapshot(srv_models *reg, const srv_model **out, int cap);

/* The rescans' memory of files that failed (models_scan.c). */
void srv_reload_memo_free(srv_models *reg);

#endif
