/*
 * forward.c — the forward passes: prefill (a prompt as matrix-matrix
 * products) and batched decode (one token for each of several sequences).
 *
 * Both run the same layer code over a block of R token rows held in the
 * workspace (R <= max_rows): rows are a prompt's consecutive tokens in
 * prefill, and one token of each sequence in decode.  Every weight matrix is
 * then one product over the R rows (tfm__matmul: a bandwidth kernel for few
 * rows, sgemm for many).  Only attention differs:
 *   prefill  per head, causal attention of the chunk's rows over all cached
 *            positions; heads are split over the pool.
 *   decode   per (sequence, head), attention of the one row over that
 *            sequence's cache; pairs split over the pool.
 * The kernels themselves (naive: whole score rows; tiled: key blocks with an
 * online softmax) are in attention.c; the workspace's choice, AUTO by
 * default, is resolved per call there (tfm__attn_pick).
 *
 * A state's cache may be bf16 or q8 (kv_cache.c): new keys and values then
 * go through ws->k / ws->v and are converted as they are stored, and the
 * attention calls take views of the cache (tfm__attn_*_kv); float32 caches
 * keep the direct path (the projections write into the cache).
 *
 * Linear-attention layers (cfg.linear_layers) share everything but the
 * mixing step, which is forward_linear.c's: their keys and values go
 * through ws->k / ws->v into the layer's recurrent state, not a cache, and
 * the cache layers are the softmax layers' ordinals (kl below).
 *
 * Nothing here allocates: the workspace owns the scratch, the state owns
 * its KV cache.  Every op is recorded in the workspace's profile.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kv_cache.h"

struct tfm_workspace {
    const tfm_model *m;
    int max_rows, max_ctx, n_threads;
    tfm__pool *pool;
    tfm_profile prof;
    float *x;    /* (R, dim) residual stream */
    float *xb;   /* (R, dim) normed input / attention output */
    float *xb2;  /* (R, dim) */
    float *q;    /* (R, dim) */
    float *k;    /* (R, kv_dim) decode: new keys before they go to each cache */
    float *v;    /* (R, kv_dim) */
    float *hb;   /* (R, hidden) */
    float *hb2;  /* (R, hidden) */
    float *att;  /* (n_threads, max_rows, max_ctx) attention scratch: the
                  * naive kernel's need; the tiled one uses a corner */
    float *kvtile; /* (n_threads, tfm__attn_kv_tile_floats(hs)): prefill's
                    * dequantised key and value block, bf16/q8 caches */
    tfm_attn_kernel attn; /* as set; AUTO resolved per call */
    const int *pos; /* decode: each row's position (points into posbuf) */
    int *posbuf;    /* (R) */
    tfm_state **rows_state; /* (R) decode: each row's sequence */
    float *lin;     /* linear layers: tfm__linear_ws_floats (qf, kf, scratch) */
    size_t lin_floats;
    int lin_chunk;  /* their prefill chunk */
    void *xq;       /* quantised models: the prepared activations */
    float *tiles;   /* and each thread's dequantised tile (model_quant.c) */
};

void openblas_set_num_threads(int num_threads);

tfm_status tfm_workspace_create(const tfm_model *m, int max_rows, int n_threads,
                                tfm_workspace **out)
{
    *out = NULL;
    if (!m || max_rows < 1 || n_threads < 1 || n_threads > 256)
        return TFM_E_INVALID;
    const tfm_config *c = &m->cfg;
    size_t R = (size_t)max_rows, d = (size_t)c->dim, h = (size_t)c->hidden_dim;
    size_t kv = d / (size_t)c->n_heads * (size_t)c->n_kv_heads;
    tfm_workspace *ws = calloc(1, sizeof *ws);
    if (!ws)
        return TFM_E_NOMEM;
    ws->m = m;
    ws->max_rows = max_rows;
    ws->max_ctx = c->seq_len;
    ws->n_threads = n_threads;
    ws->prof.enabled = 1;
    /* one set of compute threads: ours (see pool.c) */
    openblas_set_num_threads(1);
    ws->pool = tfm__pool_create(n_threads);
    ws->x = tfm__alloc(R * d * sizeof(float));
    ws->xb = tfm__alloc(R * d * sizeof(float));
    ws->xb2 = tfm__alloc(R * d * sizeof(float));
    ws->q = tfm__alloc(R * d * sizeof(float));
    ws->k = tfm__alloc(R * kv * sizeof(float));
    ws->v = tfm__alloc(R * kv * sizeof(float));
    ws->hb = tfm__alloc(R * h * sizeof(float));
    ws->hb2 = tfm__alloc(R * h * sizeof(float));
    ws->att = tfm__alloc((size_t)n_threads * R * (size_t)ws->max_ctx * sizeof(float));
    ws->kvtile = tfm__alloc((size_t)n_threads *
                            tfm__attn_kv_tile_floats(c->dim / c->n_heads) * sizeof(float));
    ws->lin_floats = tfm__linear_ws_floats(c, max_rows, &ws->lin_chunk);
    if (ws->lin_floats && !(ws->lin = tfm__alloc(ws->lin_floats * sizeof(float)))) {
        tfm_workspace_destroy(ws);
        return TFM_E_NOMEM;
    }
    ws->posbuf = calloc(R, sizeof(int));
    ws->rows_state = calloc(R, sizeof(tfm_state *));
    if (m->q) {
        size_t wide = d > h ? d : h, qb = R < TFM__QBATCH_MAX ? R : TFM__QBATCH_MAX;
        ws->xq = tfm__alloc(tfm_qx_bytes((tfm_wformat)m->q->fmt, (int)qb, (int)wide) + 64);
        ws->tiles = tfm__alloc((size_t)n_threads * TFM__QTILE_ROWS * wide * sizeof(float));
        if (!ws->xq || !ws->tiles) {
            tfm_workspace_destroy(ws);
            return TFM_E_NOMEM;
        }
    }
    if (!ws->pool || !ws->x || !ws->xb || !ws->xb2 || !ws->q || !ws->k || !ws->v || !ws->hb ||
        !ws->hb2 || !ws->att || !ws->kvtile || !ws->posbuf || !ws->rows_state) {
        tfm_workspace_destroy(ws);
        return TFM_E_NOMEM;
    }
    *out = ws;
    return TFM_OK;
}

void tfm_workspace_destroy(tfm_workspace *ws)
{
    if (!ws)
        return;
    tfm__pool_destroy(ws->pool);
    tfm__free(ws->x);
    tfm__free(ws->xb);
    tfm__free(ws->xb2);
    tfm__free(ws->q);
    tfm__free(ws->k);
    tfm__free(ws->v);
    tfm__free(ws->hb);
    tfm__free(ws->hb2);
    tfm__free(ws->att);
    tfm__free(ws->kvtile);
    tfm__free(ws->lin);
    free(ws->posbuf);
    free(ws->rows_state);
    tfm__free(ws->xq);
    tfm__free(ws->tiles);
    free(ws);
}

int tfm_workspace_max_rows(const tfm_workspace *ws) { return ws->max_rows; }
int tfm_workspace_threads(const tfm_workspace *ws) { return ws->n_threads; }
tfm_profile *tfm_workspace_profile(tfm_workspace *ws) { return &ws->prof; }

void tfm_workspace_set_attention(tfm_workspace *ws, tfm_attn_kernel k)
{
    ws->attn = k == TFM_ATTN_NAIVE || k == TFM_ATTN_TILED ? k : TFM_ATTN_AUTO;
}

/* Y (R, n) = X (R, d) · Wᵀ for matrix k (TFM__QM_*) of layer l, or the
 * classifier (l < 0): the float32 weights at base + off, or the model's
 * quantised copy. */
static void wmatmul(tfm_workspace *ws, float *y, const float *x, const float *base, size_t off,
                    int k, int l, int R, int d, int n)
{
    const tfm_qweights *q = ws->m->q;
    if (!q) {
        tfm__matmul(ws->pool, y, x, base + off, R, d, n);
        return;
    }
    const tfm_qmat *qm = l < 0 ? &q->cls : &q->layer[(size_t)l * TFM__QM_PER_LAYER + k];
    tfm__qmatmul(ws->pool, y, x, qm, R, ws->xq, ws->tiles);
}

/* ---- attention ------------------------------------------------------------ */

/* Prefill: one chunk of T rows of one sequence, at positions p0 .. p0+T-1;
 * the chunk's keys and values are already in the cache. */
typedef struct {
    tfm_workspace *ws;
    const tfm_state *st;
    int layer, p0, T; /* layer: the cache layer (softmax ordinal) */
    tfm_attn_kernel kern; /* resolved */
} prefill_attn_args;

/* Head geometry of a config: head size, kv width, query heads per kv head. */
typedef struct {
    int hs, kv, group;
} heads;

static heads heads_of(const tfm_config *c)
{
    heads g = {c->dim / c->n_heads, c->dim / c->n_heads * c->n_kv_heads,
               c->n_heads / c->n_kv_heads};
    return g;
}

static void prefill_attn_task(void *ctx, int chunk, int n_chunks, int t)
{
    const prefill_attn_args *a = ctx;
    tfm_workspace *ws = a->ws;
    const tfm_config *c = &ws->m->cfg;
    heads g = heads_of(c);
    int hs = g.hs, kv = g.kv, group = g.group;
    size_t lofs = (size_t)a->layer * (size_t)a->st->max_seq * (size_t)kv;
    float *scratch = ws->att + (size_t)t * ws->max_rows * ws->max_ctx;
    int h0, h1;
    tfm__split(c->n_heads, chunk, n_chunks, 1, &h0, &h1);
    if (a->st->kv_format != TFM_KV_F32) {
        float *tile = ws->kvtile + (size_t)t * tfm__attn_kv_tile_floats(hs);
        for (int h = h0; h < h1; h++) {
            tfm__kv K = tfm__kv_head(a->st, 0, a->layer, h / group);
            tfm__kv V = tfm__kv_head(a->st, 1, a->layer, h / group);
            tfm__attn_prefill_kv(a->kern, ws->xb + (size_t)h * hs, c->dim, ws->q + (size_t)h * hs,
                                 c->dim, &K, &V, hs, a->T, a->p0, scratch, tile);
        }
        return;
    }
    for (int h = h0; h < h1; h++) {
        const float *K = a->st->key_cache + lofs + (size_t)(h / group) * hs;
        const float *V = a->st->value_cache + lofs + (size_t)(h / group) * hs;
        tfm__attn_prefill(a->kern, ws->xb + (size_t)h * hs, c->dim, ws->q + (size_t)h * hs,
                          c->dim, K, V, kv, hs, a->T, a->p0, scratch);
    }
}

/* Decode: row r is one token of sequence rows_state[r] at position pos[r]. */
typedef struct {
    tfm_workspace *ws;
    int layer, R; /* layer: the cache layer (softmax ordinal) */
} decode_attn_args;

static void decode_attn_task(void *ctx, int chunk, int n_chunks, int t)
{
    const decode_attn_args *a = ctx;
    tfm_workspace *ws = a->ws;
    const tfm_config *c = &ws->m->cfg;
    heads g = heads_of(c);
    int hs = g.hs, kv = g.kv, group = g.group;
    float *scratch = ws->att + (size_t)t * ws->max_rows * ws->max_ctx;
    int j0, j1;
    tfm__split(a->R * c->n_heads, chunk, n_chunks, 1, &j0, &j1);
    for (int j = j0; j < j1; j++) {
        int r = j / c->n_heads, h = j % c->n_heads;
        const tfm_state *st = ws->rows_state[r];
        int ctxlen = ws->pos[r] + 1;
        if (st->kv_format != TFM_KV_F32) {
            tfm__kv K = tfm__kv_head(st, 0, a->layer, h / group);
            tfm__kv V = tfm__kv_head(st, 1, a->layer, h / group);
            tfm__attn_decode_kv(tfm__attn_pick(ws->attn, 1, ctxlen),
                                ws->xb + (size_t)r * c->dim + (size_t)h * hs,
                                ws->q + (size_t)r * c->dim + (size_t)h * hs, &K, &V, hs, ctxlen,
                                scratch);
            continue;
        }
        size_t lofs = (size_t)a->layer * (size_t)st->max_seq * (size_t)kv + (size_t)(h / group) * hs;
        tfm__attn_decode(tfm__attn_pick(ws->attn, 1, ctxlen),
                         ws->xb + (size_t)r * c->dim + (size_t)h * hs,
                         ws->q + (size_t)r * c->dim + (size_t)h * hs, st->key_cache + lofs,
                         st->value_cache + lofs, kv, hs, ctxlen, scratch);
    }
}

/* ---- the layer stack over R rows ------------------------------------------ */

/* Books one attention call (one sequence, one layer) of context ctx over
 * `keys` query-key pairs (ctx for a decode row, the causal triangle for a
 * prefill chunk) and dt seconds.  Scores, softmax and values run fused per
 * head, so their time is booked as contraction (it dominates) while their
 * FLOPs go to their own classes. */
static void record_attention(tfm_profile *p, const tfm_config *c, tfm_phase ph,
                             tfm_attn_kernel kern, double dt, int ctx, double keys)
{
    int k = kern == TFM_ATTN_TILED ? TFM_ATTN_KIND_TILED : TFM_ATTN_KIND_NAIVE;
    double f = 4.0 * c->dim * keys; /* QK^T and PV, 2 flops a multiply-add, all heads */
    tfm__prof_attention(p, ph, k, ctx, dt, f, 1);
    p->seconds[ph][TFM_CLASS_CONTRACTION] += dt;
    p->flops[ph][TFM_CLASS_CONTRACTION] += f;
    p->flops[ph][TFM_CLASS_NORMALIZATION] += 5.0 * c->n_heads * keys;
    p->comp_seconds[ph][TFM_COMP_ATTENTION] += dt;
}

/* Books the scratch one attention call held: one kernel's bytes on each of
 * `threads` threads (the largest, when a decode batch mixes kernels). */
static void record_attn_bytes(tfm_profile *p, tfm_phase ph, size_t bytes, int threads)
{
    tfm__prof_attn_peak(p, ph, (double)bytes * threads);
}

/* Runs the layers over ws->x (R rows).  Prefill: st, p0 set, R consecutive
 * positions.  Decode: st NULL, per-row states and positions in ws. */
static void run_layers(tfm_workspace *ws, tfm_phase ph, tfm_state *st, int p0, int R)
{
    const tfm_model *m = ws->m;
    const tfm_config *c = &m->cfg;
    const tfm_weights *w = &m->w;
    tfm_profile *prof = &ws->prof;
    int d = c->dim, hid = c->hidden_dim, hs = d / c->n_heads, kv = hs * c->n_kv_heads;
    int half = hs / 2;
    for (int l = 0; l < c->n_layers; l++) {
        size_t ld = (size_t)l * d;
        int lin = tfm_config_layer_linear(c, l), kl = tfm__softmax_ordinal(c, l);
        /* attention block */
        double t0 = tfm__prof_start(prof);
        for (int r = 0; r < R; r++)
            tfm__rmsnorm(ws->xb + (size_t)r * d, ws->x + (size_t)r * d, w->rms_att + ld, d,
                         c->norm_eps);
        tfm__prof_op(prof, ph, TFM_CLASS_NORMALIZATION, TFM_COMP_ATTENTION, t0, 4.0 * R * d);

        t0 = tfm__prof_start(prof);
        float *kout = ws->k, *vout = ws->v;
        if (st && st->kv_format == TFM_KV_F32 && !lin) { /* prefill writes straight
                                                          * into the cache rows */
            size_t off = ((size_t)kl * st->max_seq + (size_t)p0) * kv;
            kout = st->key_cache + off;
            vout = st->value_cache + off;
        }
        wmatmul(ws, ws->q, ws->xb, w->wq, (size_t)l * d * d, TFM__QM_WQ, l, R, d, d);
        wmatmul(ws, kout, ws->xb, w->wk, (size_t)l * kv * d, TFM__QM_WK, l, R, d, kv);
        wmatmul(ws, vout, ws->xb, w->wv, (size_t)l * kv * d, TFM__QM_WV, l, R, d, kv);
        tfm__prof_op(prof, ph, TFM_CLASS_CONTRACTION, TFM_COMP_ATTENTION, t0,
                     2.0 * R * d * (d + 2.0 * kv));

        t0 = tfm__prof_start(prof);
        for (int r = 0; r < R; r++) {
            int pos = st ? p0 + r : ws->pos[r];
            const float *cs = m->rope_cos + (size_t)pos * half, *sn = m->rope_sin + (size_t)pos * half;
            tfm__rope(ws->q + (size_t)r * d, c->n_heads, hs, cs, sn);
            tfm__rope(kout + (size_t)r * kv, c->n_kv_heads, hs, cs, sn);
        }
        if (st && st->kv_format != TFM_KV_F32 && !lin) { /* converted into the cache */
            for (int r = 0; r < R; r++) {
                tfm__kv_store(st, 0, kl, p0 + r, ws->k + (size_t)r * kv);
                tfm__kv_store(st, 1, kl, p0 + r, ws->v + (size_t)r * kv);
            }
        }
        if (!st && !lin) { /* decode: each row's new key and value into its own cache */
            for (int r = 0; r < R; r++) {
                tfm_state *s = ws->rows_state[r];
                if (s->kv_format != TFM_KV_F32) {
                    tfm__kv_store(s, 0, kl, ws->pos[r], ws->k + (size_t)r * kv);
                    tfm__kv_store(s, 1, kl, ws->pos[r], ws->v + (size_t)r * kv);
                    continue;
                }
                size_t off = ((size_t)kl * s->max_seq + (size_t)ws->pos[r]) * kv;
                memcpy(s->key_cache + off, ws->k + (size_t)r * kv, (size_t)kv * sizeof(float));
                memcpy(s->value_cache + off, ws->v + (size_t)r * kv, (size_t)kv * sizeof(float));
            }
        }
        tfm__prof_op(prof, ph, TFM_CLASS_ELEMENTWISE, TFM_COMP_ATTENTION, t0,
                     3.0 * R * (d + kv));

        t0 = tfm__prof_start(prof);
        if (lin && st) {
            /* cannot fail: the chunk and the scratch were sized together */
            tfm__linear_prefill(ws->pool, prof, ph, m, l, st, p0, R, ws->q, ws->k, ws->v, ws->xb,
                                ws->lin, ws->lin_floats, ws->lin_chunk);
        } else if (lin) {
            tfm__linear_decode(ws->pool, prof, ph, m, l, ws->rows_state, ws->pos, R, ws->q, ws->k,
                               ws->v, ws->xb, ws->lin);
        } else if (st) {
            prefill_attn_args a = {ws, st, kl, p0, R, tfm__attn_pick(ws->attn, R, p0 + R)};
            tfm__pool_run(ws->pool, prefill_attn_task, &a, c->n_heads);
            if (prof->enabled) {
                double dt = tfm_now() - t0;
                st->prefill_attn_seconds += dt;
                record_attention(prof, c, ph, a.kern, dt, p0 + R,
                                 (double)R * p0 + (double)R * (R + 1) / 2.0);
                record_attn_bytes(prof, ph, tfm__attn_bytes(a.kern, R, p0 + R),
                                  ws->n_threads < c->n_heads ? ws->n_threads : c->n_heads);
            }
        } else {
            decode_attn_args a = {ws, kl, R};
            int chunks = tfm__pool_chunks(ws->pool, R * c->n_heads, 4);
            tfm__pool_run(ws->pool, decode_attn_task, &a, chunks);
            if (prof->enabled) {
                /* one pool run for all rows: share its time out by keys */
                double dt = tfm_now() - t0, keys = 0;
                size_t bytes = 0;
                for (int r = 0; r < R; r++) {
                    int n = ws->pos[r] + 1;
                    size_t b = tfm__attn_bytes(tfm__attn_pick(ws->attn, 1, n), 1, n);
                    keys += n;
                    bytes = b > bytes ? b : bytes;
                }
                for (int r = 0; r < R; r++)
                    record_attention(prof, c, ph, tfm__attn_pick(ws->attn, 1, ws->pos[r] + 1),
                                     dt * (ws->pos[r] + 1) / keys, ws->pos[r] + 1,
                                     ws->pos[r] + 1);
                record_attn_bytes(prof, ph, bytes,
                                  ws->n_threads < chunks ? ws->n_threads : chunks);
            }
        }

        t0 = tfm__prof_start(prof);
        wmatmul(ws, ws->xb2, ws->xb, w->wo, (size_t)l * d * d, TFM__QM_WO, l, R, d, d);
        tfm__prof_op(prof, ph, TFM_CLASS_CONTRACTION, TFM_COMP_ATTENTION, t0, 2.0 * R * d * d);
        t0 = tfm__prof_start(prof);
        tfm__add(ws->x, ws->xb2, R * d);
        tfm__prof_op(prof, ph, TFM_CLASS_ELEMENTWISE, TFM_COMP_ATTENTION, t0, (double)R * d);

        /* MLP block */
        t0 = tfm__prof_start(prof);
        for (int r = 0; r < R; r++)
            tfm__rmsnorm(ws->xb + (size_t)r * d, ws->x + (size_t)r * d, w->rms_ffn + ld, d,
                         c->norm_eps);
        tfm__prof_op(prof, ph, TFM_CLASS_NORMALIZATION, TFM_COMP_MLP, t0, 4.0 * R * d);
        t0 = tfm__prof_start(prof);
        wmatmul(ws, ws->hb, ws->xb, w->w1, (size_t)l * hid * d, TFM__QM_W1, l, R, d, hid);
        wmatmul(ws, ws->hb2, ws->xb, w->w3, (size_t)l * hid * d, TFM__QM_W3, l, R, d, hid);
        tfm__prof_op(prof, ph, TFM_CLASS_CONTRACTION, TFM_COMP_MLP, t0, 4.0 * R * d * hid);
        t0 = tfm__prof_start(prof);
        tfm__swiglu(ws->hb, ws->hb2, R * hid);
        tfm__prof_op(prof, ph, TFM_CLASS_ELEMENTWISE, TFM_COMP_MLP, t0, 5.0 * R * hid);
        t0 = tfm__prof_start(prof);
        wmatmul(ws, ws->xb, ws->hb, w->w2, (size_t)l * d * hid, TFM__QM_W2, l, R, hid, d);
        tfm__prof_op(prof, ph, TFM_CLASS_CONTRACTION, TFM_COMP_MLP, t0, 2.0 * R * d * hid);
        t0 = tfm__prof_start(prof);
        tfm__add(ws->x, ws->xb, R * d);
        tfm__prof_op(prof, ph, TFM_CLASS_ELEMENTWISE, TFM_COMP_MLP, t0, (double)R * d);
    }
}

static void embed(tfm_workspace *ws, const int *tokens, int R)
{
    const tfm_config *c = &ws->m->cfg;
    for (int r = 0; r < R; r++)
        memcpy(ws->x + (size_t)r * c->dim, ws->m->w.token_embedding + (size_t)tokens[r] * c->dim,
               (size_t)c->dim * sizeof(float));
}

/* Final norm and classifier for R rows of ws->x starting at row r0. */
static void classify(tfm_workspace *ws, tfm_phase ph, int r0, int R, float *logits)
{
    const tfm_config *c = &ws->m->cfg;
    tfm_profile *prof = &ws->prof;
    int d = c->dim;
    double t0 = tfm__prof_start(prof);
    for (int r = 0; r < R; r++)
        tfm__rmsnorm(ws->xb + (size_t)r * d, ws->x + (size_t)(r0 + r) * d, ws->m->w.rms_final, d,
                     c->norm_eps);
    tfm__prof_op(prof, ph, TFM_CLASS_NORMALIZATION, TFM_COMP_OTHER, t0, 4.0 * R * d);
    t0 = tfm__prof_start(prof);
    wmatmul(ws, logits, ws->xb, ws->m->w.wcls, 0, 0, -1, R, d, c->vocab_size);
    tfm__prof_op(prof, ph, TFM_CLASS_CONTRACTION, TFM_COMP_OTHER, t0,
                 2.0 * R * d * c->vocab_size);
}

static int tokens_valid(const tfm_model *m, const int *tokens, int n)
{
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size)
            return 0;
    return 1;
}

/* The prefill; logits of the last row (all 0) or of every row (all 1). */
static tfm_status prefill(tfm_workspace *ws, tfm_state *st, const int *tokens, int n,
                          float *logits, int all)
{
    if (!ws || !st || st->model != ws->m || n < 0 || (n > 0 && !tokens))
        return TFM_E_INVALID;
    if (!tokens_valid(ws->m, tokens, n))
        return TFM_E_INVALID;
    if (n > st->max_seq - st->pos)
        return TFM_E_RANGE;
    if (n == 0)
        return TFM_OK;
    for (int done = 0; done < n;) {
        int R = n - done < ws->max_rows ? n - done : ws->max_rows;
        embed(ws, tokens + done, R);
        run_layers(ws, TFM_PHASE_PREFILL, st, st->pos, R);
        st->pos += R;
        if (all && logits)
            classify(ws, TFM_PHASE_PREFILL, 0, R, logits + (size_t)done * ws->m->cfg.vocab_size);
        done += R;
        if (!all && done == n && logits)
            classify(ws, TFM_PHASE_PREFILL, R - 1, 1, logits);
    }
    ws->prof.tokens[TFM_PHASE_PREFILL] += (uint64_t)n;
    return TFM_OK;
}

tfm_status tfm_prefill(tfm_workspace *ws, tfm_state *st, const int *tokens, int n, float *logits)
{
    return prefill(ws, st, tokens, n, logits, 0);
}

tfm_status tfm_prefill_rows(tfm_workspace *ws, tfm_state *st, const int *tokens, int n,
                            float *row_logits)
{
    return prefill(ws, st, tokens, n, row_logits, 1);
}

tfm_status tfm_decode(tfm_workspace *ws, tfm_state *const *states, const int *tokens, int n_seq,
                      float *logits)
{
    if (!ws || !states || !tokens || !logits || n_seq < 1)
        return TFM_E_INVALID;
    if (n_seq > ws->max_rows)
        return TFM_E_RANGE;
    if (!tokens_valid(ws->m, tokens, n_seq))
        return TFM_E_INVALID;
    for (int r = 0; r < n_seq; r++) {
        tfm_state *s = states[r];
        if (!s || s->model != ws->m)
            return TFM_E_INVALID;
        if (s->pos >= s->max_seq)
            return TFM_E_RANGE;
        for (int q = 0; q < r; q++)
            if (states[q] == s)
                return TFM_E_INVALID;
    }
    for (int r = 0; r < n_seq; r++) {
        ws->rows_state[r] = states[r];
        ws->posbuf[r] = states[r]->pos;
    }
    ws->pos = ws->posbuf;
    embed(ws, tokens, n_seq);
    run_layers(ws, TFM_PHASE_DECODE, NULL, 0, n_seq);
    classify(ws, TFM_PHASE_DECODE, 0, n_seq, logits);
    for (int r = 0; r < n_seq; r++)
        states[r]->pos++;
    ws->prof.tokens[TFM_PHASE_DECODE] += (uint64_t)n_seq;
    return TFM_OK;
}
