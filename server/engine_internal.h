/*
 * engine_internal.h — the engine's own types, shared by engine.c (the
 * scheduler) and engine_ctx.c (the per-model contexts); nothing else
 * includes it.
 */
#ifndef SRV_ENGINE_INTERNAL_H
#define SRV_ENGINE_INTERNAL_H

#include "engine.h"
#include "tfm/model.h"

/* Prompt rows per prefill chunk (and so the workspace's rows). */
#define PREFILL_CHUNK 256

typedef enum { SLOT_FREE = 0, SLOT_ADMITTED, SLOT_PREFILL, SLOT_DECODE } slot_phase;

typedef struct slot {
    slot_phase phase;
    srv_job *job;
    tfm_state *st;
    tfm_sampler *smp;
    int *ids; /* the prompt's tokens, seq_len long */
    int n_ids, prefilled;
    int last; /* the token to feed next */
} slot;

/* A text model's workspace, slots and KV caches.  It holds a reference
 * to its model, given back when the context is dropped. */
typedef struct mctx {
    const srv_model *m;
    tfm_workspace *ws;
    tfm_attn_kernel attention; /* the model's ("attention" in its metadata) or --attention */
    slot *slots; /* max_batch */
    float *logits; /* (max_batch, vocab) */
    float *row_logits; /* (PREFILL_CHUNK, vocab) for prompt log-probabilities;
                        * NULL until a job asks for them */
    tfm_state **bst;
    int *btok, *bslot;
    int eos, stop2; /* tokens that end a sequence */
} mctx;

struct srv_engine {
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    srv_job **q; /* waiting jobs, oldest first (q_len of q_cap) */
    int q_len, q_cap;
    int stopping;
    const srv_models *reg;
    /* engine thread only (and create/destroy, with the thread not running):
     * the per-model contexts by srv_model.index, created for the models
     * registered at start and, lazily, for any model registered later;
     * dropped once their model is unloaded and nothing runs on it */
    mctx *mc[SRV_MODELS_MAX];
    uint64_t failed_uid[SRV_MODELS_MAX]; /* creation failed for this model
                                          * (srv_model.uid): refuse its jobs */
    mctx *live[SRV_MODELS_MAX];          /* the contexts made, in order */
    int n_live, max_batch, n_threads;
    unsigned removals_seen;              /* srv_models_removals when last collected */
    tfm_attn_kernel attention;
    atomic_int running;
    uint64_t seq; /* under mu: the last submission's number */
    tfm_profile prof; /* under mu: the workspaces' profiles, summed */
    tfm_profile prof_dropped; /* engine thread: the dropped contexts' */
    srv_engine_hooks hooks;
};

/* Frees a slot (its job's reference with it). */
void srv_engine_release_slot(srv_engine *e, slot *s);

/* A text model's context, registered in e->mc and e->live; NULL when out
 * of memory (message printed) or m is not a text model. */
mctx *srv_engine_ctx_create(srv_engine *e, const srv_model *m);
/* Frees every context (the engine is stopping). */
void srv_engine_ctx_destroy_all(srv_engine *e);
/* Engine thread, e->mu held: makes the context of the oldest queued job
 * whose model has none (dropping the lock meanwhile); returns with the
 * lock held. */
void srv_engine_ctx_make_queued(srv_engine *e);
/* Engine thread, e->mu held: drops the contexts of unloaded models that
 * no slot and no queued job uses (dropping the lock while it frees them).
 * Cheap when nothing was unloaded. */
void srv_engine_ctx_collect(srv_engine *e);
/* Whether the context of j's model could not be made. */
int srv_engine_ctx_failed(const srv_engine *e, const srv_job *j);

#endif
