/*
 * models.h — the models attnd serves: loaded once at start-up, immutable
 * afterwards, and shared read-only by the HTTP loop and the engine.
 */
#ifndef SRV_MODELS_H
#define SRV_MODELS_H

#include "config.h"
#include "tfm/model.h"
#include "tfm/tokenizer.h"

typedef struct srv_model {
    char name[128];    /* the file's stem */
    char source[1024]; /* the file it came from */
    const char *kind;  /* "text" (recall models come with training) */
    tfm_model *model;
    tfm_tokenizer *tok;
    int index;         /* position in the registry */
} srv_model;

typedef struct srv_models {
    srv_model *items; /* sorted by name */
    int n;
} srv_models;

/* Loads --model files, or every *.safetensors / *.bin in the models dir.
 * Errors are printed (one line per file) and the file skipped; returns the
 * number loaded, -1 when a --model named explicitly could not be loaded. */
int srv_models_load(srv_models *reg, const srv_config *cfg);
void srv_models_deinit(srv_models *reg);
const srv_model *srv_models_find(const srv_models *reg, const char *name);
/* The first text model by name, or NULL. */
const srv_model *srv_models_default(const srv_models *reg);

#endif
