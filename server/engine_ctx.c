/*
 * engine_ctx.c — the engine's per-model contexts (engine_internal.h):
 * made for a model when the engine starts or when its first job reaches
 * the queue, dropped when the model has been unloaded (DELETE /models,
 * a rescan) and nothing runs or waits on it any more.  A context holds a
 * reference to its model, so the model's weights outlive its last
 * sequence, and its index cannot be reused by another model meanwhile.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "tfm/tokenizer.h"

void srv_engine_release_slot(srv_engine *e, slot *s)
{
    if (s->job)
        srv_job_unref(s->job);
    s->job = NULL;
    s->phase = SLOT_FREE;
    atomic_fetch_sub(&e->running, 1);
}

static void ctx_destroy(srv_engine *e, mctx *mc)
{
    if (!mc)
        return;
    for (int k = 0; mc->slots && k < e->max_batch; k++) {
        slot *s = &mc->slots[k];
        if (s->phase != SLOT_FREE) {
            srv_job_finish(s->job, SRV_FINISH_CANCELLED);
            srv_engine_release_slot(e, s);
        }
        tfm_state_destroy(s->st);
        tfm_sampler_destroy(s->smp);
        free(s->ids);
    }
    free(mc->slots);
    free(mc->logits);
    free(mc->row_logits);
    free(mc->bst);
    free(mc->btok);
    free(mc->bslot);
    tfm_workspace_destroy(mc->ws);
    srv_model_put(mc->m);
    free(mc);
}

mctx *srv_engine_ctx_create(srv_engine *e, const srv_model *m)
{
    if (strcmp(m->kind, "text") || !m->tok)
        return NULL;
    mctx *mc = calloc(1, sizeof *mc);
    if (!mc)
        goto fail;
    const tfm_config *c = &m->model->cfg;
    int max_batch = e->max_batch;
    mc->m = srv_model_hold(m);
    mc->eos = tfm_tokenizer_eos(m->tok);
    /* llama2.c models end a sequence with BOS, as run.c stops on it */
    mc->stop2 = tfm_tokenizer_kind_of(m->tok) == TFM_TOKENIZER_LLAMA2C ? tfm_tokenizer_bos(m->tok)
                                                                      : mc->eos;
    int rows = max_batch > PREFILL_CHUNK ? max_batch : PREFILL_CHUNK;
    if (tfm_workspace_create(m->model, rows, e->n_threads, &mc->ws) != TFM_OK)
        goto fail;
    tfm_workspace_profile(mc->ws)->enabled = 1;
    /* a model may name its kernel in its checkpoint's metadata; the flag
     * decides otherwise */
    const char *mk = tfm_model_meta_get(m->model, "attention");
    mc->attention = mk && !strcmp(mk, "naive")   ? TFM_ATTN_NAIVE
                    : mk && !strcmp(mk, "tiled") ? TFM_ATTN_TILED
                                                 : e->attention;
    tfm_workspace_set_attention(mc->ws, mc->attention);
    mc->slots = calloc((size_t)max_batch, sizeof *mc->slots);
    mc->logits = malloc((size_t)max_batch * c->vocab_size * sizeof(float));
    mc->bst = calloc((size_t)max_batch, sizeof *mc->bst);
    mc->btok = calloc((size_t)max_batch, sizeof(int));
    mc->bslot = calloc((size_t)max_batch, sizeof(int));
    if (!mc->slots || !mc->logits || !mc->bst || !mc->btok || !mc->bslot)
        goto fail;
    /* --kv-cache (validated at startup) */
    tfm_kv_format kvf = TFM_KV_F32;
    if (e->reg && e->reg->cfg)
        tfm_kv_format_parse(e->reg->cfg->kv_cache, &kvf);
    for (int k = 0; k < max_batch; k++) {
        slot *s = &mc->slots[k];
        tfm_sampler_params sp = {.temperature = 0.0f, .top_p = 1.0f};
        s->ids = malloc((size_t)c->seq_len * sizeof(int));
        if (!s->ids || tfm_state_create_fmt(m->model, 0, kvf, &s->st) != TFM_OK ||
            tfm_sampler_create(c->vocab_size, &sp, &s->smp) != TFM_OK)
            goto fail;
    }
    if (kvf != TFM_KV_F32) /* once per model context, not per request */
        fprintf(stderr, "attnd: model %s: KV cache %s, %zu bytes per token, %d slots of %d\n",
                m->name, tfm_kv_format_name(kvf), tfm_kv_bytes_per_token(c, kvf), max_batch,
                c->seq_len);
    e->mc[m->index] = mc;
    e->live[e->n_live++] = mc;
    return mc;
fail:
    fprintf(stderr, "attnd: engine: out of memory for model %s\n", m->name);
    ctx_destroy(e, mc);
    return NULL;
}

int srv_engine_ctx_failed(const srv_engine *e, const srv_job *j)
{
    return e->failed_uid[j->model->index] == j->model->uid;
}

/* One context per iteration, the oldest such job's: it allocates the KV
 * caches, so outside the queue's lock. */
void srv_engine_ctx_make_queued(srv_engine *e)
{
    const srv_model *m = NULL;
    for (int i = 0; i < e->q_len && !m; i++)
        if (!e->mc[e->q[i]->model->index] && !srv_engine_ctx_failed(e, e->q[i]))
            m = e->q[i]->model;
    if (!m)
        return;
    srv_model_hold(m); /* the job may end meanwhile */
    pthread_mutex_unlock(&e->mu);
    if (!srv_engine_ctx_create(e, m))
        e->failed_uid[m->index] = m->uid;
    srv_model_put(m);
    pthread_mutex_lock(&e->mu);
}

static int ctx_busy(const srv_engine *e, const mctx *mc)
{
    for (int k = 0; k < e->max_batch; k++)
        if (mc->slots[k].phase != SLOT_FREE)
            return 1;
    for (int i = 0; i < e->q_len; i++)
        if (e->q[i]->model == mc->m)
            return 1;
    return 0;
}

void srv_engine_ctx_collect(srv_engine *e)
{
    unsigned removals = srv_models_removals(e->reg);
    if (removals == e->removals_seen)
        return;
    int waiting = 0, n_gone = 0;
    mctx *gone[SRV_MODELS_MAX];
    for (int i = 0; i < e->n_live;) {
        mctx *mc = e->live[i];
        if (!atomic_load(&mc->m->removed)) {
            i++;
            continue;
        }
        if (ctx_busy(e, mc)) { /* its last sequences are still running */
            waiting = 1;
            i++;
            continue;
        }
        /* its work stays in the op accounting (counters never go down) */
        tfm_profile_add(&e->prof_dropped, tfm_workspace_profile(mc->ws));
        e->mc[mc->m->index] = NULL;
        e->live[i] = e->live[--e->n_live];
        gone[n_gone++] = mc;
    }
    if (!waiting)
        e->removals_seen = removals;
    if (n_gone == 0)
        return;
    /* freeing KV caches takes a while: not under the queue's lock */
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < n_gone; i++)
        ctx_destroy(e, gone[i]); /* drops the model's last reference, mostly */
    pthread_mutex_lock(&e->mu);
}

void srv_engine_ctx_destroy_all(srv_engine *e)
{
    for (int m = 0; m < e->n_live; m++)
        ctx_destroy(e, e->live[m]);
    e->n_live = 0;
}

