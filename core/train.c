/*
 * train.c — the trainer: forward with the activations kept, backward, and
 * AdamW (see tfm/train.h).
 *
 * Rows are the B x T tokens of a batch, N = B * T of them, laid out
 * sequence after sequence (row b*T + t is token t of sequence b, at
 * position t).  Per layer the forward keeps exactly what its backward
 * reads:
 *     x_in    (N, d)   residual stream entering the layer
 *     xn1     (N, d)   rms(x_in) * rms_att: the input of wq, wk, wv
 *     rs1     (N)      1 / rms of x_in
 *     qkv     (N, d + 2 kv)  q | k | v, after RoPE (q, k)
 *     att     (B, heads, T, T)  softmax probabilities (naive attention)
 *     lse     (B, heads, T)     their rows' log-sum-exp (tiled attention,
 *                               train_attn.c: the backward recomputes P)
 *     ao      (N, d)   attention output, the input of wo
 *     x_mid   (N, d)   residual after attention
 *     xn2, rs2         the FFN's norm, as above
 *     h13     (N, 2 hidden)  w1 | w3 outputs
 *     hg      (N, hidden)  silu(h1) * h3, the input of w2
 * then the final norm (x_f, xnf, rsf) and the probabilities (N, vocab).
 *
 * Every weight product is one sgemm over all N rows, the rows split over
 * the pool: forward Y = X W^T, backward dX = dY W and dW += dY^T X (dW's
 * rows split, so no two threads write one gradient).  wq, wk, wv run as
 * one product over a fused copy of the three (so do w1 and w3): with the
 * narrow matrices of small models, one sgemm of three times the width is
 * much faster than three.  Attention is small
 * sgemm calls per (sequence, head) — per (sequence, kv head) in the
 * backward, so the query heads that share a kv head accumulate into its dK
 * and dV on one thread.  Reductions over rows (norm weight gradients, the
 * loss, the gradient norm) are summed per fixed chunk and then in chunk
 * order: the result does not depend on which thread ran which chunk.
 */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tfm/train.h"
#include "train_internal.h"

void openblas_set_num_threads(int num_threads);

/* Reductions use this many chunks whatever the thread count. */
#define RED_CHUNKS 32

typedef struct layer_acts {
    float *x_in, *xn1, *rs1, *qkv, *att, *ao, *x_mid, *xn2, *rs2, *h13, *hg;
    float *lse; /* (B, heads, T), tiled attention only (att is NULL then) */
    float *wqkv, *w13; /* fused weight copies, (d + 2 kv, d) and (2 hidden, d) */
} layer_acts;

struct tfm_trainer {
    tfm_model *m;
    int training; /* gradients and AdamW allocated */
    int max_B, max_T, n_threads;
    tfm__pool *pool;
    layer_acts *L;
    float *x_f, *xnf, *rsf, *probs;
    /* backward scratch */
    float *dx, *dxn, *dqkv, *dao, *dhg, *dh13, *dlog;
    float *gfused; /* (max(d + 2 kv, 2 hidden), d): a fused weight's gradient */
    float *dP; /* (n_threads, T, T), naive attention */
    tfm_attn_kernel attn; /* NAIVE or TILED */
    float *fa; /* (n_threads, tfm__flash_scratch(T)), tiled attention */
    size_t bytes, attn_bytes; /* allocated in all, and for attention */
    float *rope_nsin; /* (max_T, head_size / 2): -rope_sin, the inverse rotation */
    float *grads, *mom1, *mom2;
    double red[RED_CHUNKS]; /* per-chunk partial sums */
    float *red_vec;         /* (RED_CHUNKS, dim) partial norm-weight gradients */
    int *tok, *tgt;         /* the last forward's batch */
    int B, T, have_fwd;
    long counted;
    int steps;
    /* op accounting (profile.h): phase train for a training trainer,
     * prefill for an evaluation one */
    tfm_profile prof;
    tfm_phase phase;
};

/* ---- parallel helpers --------------------------------------------------- */

typedef void (*rows_fn)(tfm_trainer *t, const void *args, int r0, int r1, int chunk);

typedef struct {
    tfm_trainer *t;
    rows_fn fn;
    const void *args;
    int n;
} rows_job;

static void rows_task(void *ctx, int chunk, int n_chunks, int thread)
{
    const rows_job *j = ctx;
    int lo, hi;
    tfm__split(j->n, chunk, n_chunks, 1, &lo, &hi);
    if (lo < hi)
        j->fn(j->t, j->args, lo, hi, chunk);
}

/* fn over rows [0, n) in n_chunks fixed parts (RED_CHUNKS for reductions,
 * so each partial has a fixed slice). */
static void run_rows(tfm_trainer *t, rows_fn fn, const void *args, int n, int n_chunks)
{
    rows_job j = {t, fn, args, n};
    if (n_chunks > n)
        n_chunks = n > 0 ? n : 1;
    tfm__pool_run(t->pool, rows_task, &j, n_chunks);
}

static int row_chunks(const tfm_trainer *t, int n)
{
    return tfm__pool_chunks(t->pool, n, 4);
}

/* The three products of a linear layer y = x W^T, x (N, d), W (n, d):
 *   forward  y (N, n)  (+)= x W^T          (out y,  a x,  b W)
 *   input    dx (N, d) (+)= dy W           (out dx, a dy, b W)
 *   weight   dW (n, d) (+)= dy^T x         (out dW, a dy, b x; dW's rows split)
 * each one sgemm per chunk of rows, += when acc. */
typedef struct {
    float *out;
    const float *a, *b;
    int N, d, n, acc;
} mm_args;

static void mm_fwd_rows(tfm_trainer *t, const void *args, int r0, int r1, int chunk)
{
    const mm_args *m = args;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, m->n, m->d, 1.0f,
                m->a + (size_t)r0 * m->d, m->d, m->b, m->d, m->acc ? 1.0f : 0.0f,
                m->out + (size_t)r0 * m->n, m->n);
}

static void mm_dx_rows(tfm_trainer *t, const void *args, int r0, int r1, int chunk)
{
    const mm_args *m = args;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, m->d, m->n, 1.0f,
                m->a + (size_t)r0 * m->n, m->n, m->b, m->d, m->acc ? 1.0f : 0.0f,
                m->out + (size_t)r0 * m->d, m->d);
}

static void mm_dw_rows(tfm_trainer *t, const void *args, int r0, int r1, int chunk)
{
    const mm_args *m = args;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1 - r0, m->d, m->N, 1.0f, m->a + r0,
                m->n, m->b, m->d, m->acc ? 1.0f : 0.0f, m->out + (size_t)r0 * m->d, m->d);
}

/* One product over `rows` rows in chunks of about `per_chunk`, booked as
 * contraction of component comp. */
static void run_mm(tfm_trainer *t, tfm_component comp, rows_fn fn, const mm_args *m, int rows,
                   int per_chunk)
{
    double t0 = tfm__prof_start(&t->prof);
    run_rows(t, fn, m, rows, tfm__pool_chunks(t->pool, (rows + per_chunk - 1) / per_chunk, 2));
    tfm__prof_op(&t->prof, t->phase, TFM_CLASS_CONTRACTION, comp, t0, 2.0 * m->N * m->d * m->n);
}

static void matmul_fwd(tfm_trainer *t, tfm_component comp, float *y, const float *x,
                       const float *w, int N, int d, int n, int acc)
{
    mm_args m = {y, x, w, N, d, n, acc};
    run_mm(t, comp, mm_fwd_rows, &m, N, 32);
}

static void matmul_bwd_dx(tfm_trainer *t, tfm_component comp, float *dx, const float *dy,
                          const float *w, int N, int d, int n, int acc)
{
    mm_args m = {dx, dy, w, N, d, n, acc};
    run_mm(t, comp, mm_dx_rows, &m, N, 32);
}

static void matmul_bwd_dw(tfm_trainer *t, tfm_component comp, float *dw, const float *dy,
                          const float *x, int N, int d, int n, int acc)
{
    mm_args m = {dw, dy, x, N, d, n, acc};
    run_mm(t, comp, mm_dw_rows, &m, n, 16);
}

/* ---- RMSNorm -------------------------------------------------------------- */

typedef struct {
    float *out, *rs;
    const float *x, *w;
    int d;
    float eps;
} norm_args;

static void norm_rows(tfm_trainer *t, const void *args, int r0, int r1, int chunk)
{
    const norm_args *a = args;
    for (int r = r0; r < r1; r++) {
        const float *x = a->x + (size_t)r * a->d;
        float *o = a->out + (size_t)r * a->d;
        float ss = 0.0f;
        for (int i = 0; i < a->d; i++)
            ss += x[i] * x[i];
        float rs = 1.0f / sqrtf(ss / (float)a->d + a->eps);
        a->rs[r] = rs;
        for (int i = 0; i < a->d; i++)
            o[i] = a->w[i] * (x[i] * rs);
    }
}

static void rmsnorm_fwd(tfm_trainer *t, tfm_component comp, float *out, float *rs,
                        const float *x, const float *w, int N)
{
    double t0 = tfm__prof_start(&t->prof);
    norm_args a = {out, rs, x, w, t->m->cfg.dim, t->m->cfg.norm_eps};
    run_rows(t, norm_rows, &a, N, row_chunks(t, N));
    tfm__prof_op(&t->prof, t->phase, TFM_CLASS_NORMALIZATION, comp, t0,
                 4.0 * N * t->m->cfg.dim);
}

/* o = w * x * rs with rs = (mean x^2 + eps)^-1/2:
 *   dw += sum_rows dout * x * rs
 *   dx += rs * (w dout - x * rs^2 * mean(w dout * x)) */
typedef struct {
    float *dx;
    const float *dout, *x, *rs, *w;
    int d;
} norm_bwd_args;

static void norm_bwd_rows(tfm_trainer *t, const void *args, int r0, int r1, int chunk)
{
    const norm_bwd_args *a = args;
    int d = a->d;
    float *dw = t->red_vec + (size_t)chunk * d;
    memset(dw, 0, (size_t)d * sizeof(float));
    for (int r = r0; r < r1; r++) {
        const float *x = a->x + (size_t)r * d, *g = a->dout + (size_t)r * d;
        float *dx = a->dx + (size_t)r * d;
        float rs = a->rs[r], dot = 0.0f;
        for (int i = 0; i < d; i++) {
            dw[i] += g[i] * x[i] * rs;
            dot += a->w[i] * g[i] * x[i];
        }
        float c = rs * rs * rs * dot / (float)d;
        for (int i = 0; i < d; i++)
            dx[i] += rs * a->w[i] * g[i] - c * x[i];
    }
}

static void rmsnorm_bwd(tfm_trainer *t, tfm_component comp, float *dx, float *dw,
                        const float *dout, const float *x, const float *rs, const float *w, int N)
{
    double t0 = tfm__prof_start(&t->prof);
    int d = t->m->cfg.dim, n_chunks = N < RED_CHUNKS ? N : RED_CHUNKS;
    norm_bwd_args a = {dx, dout, x, rs, w, d};
    run_rows(t, norm_bwd_rows, &a, N, n_chunks);
    for (int c = 0; c < n_chunks; c++)
        for (int i = 0; i < d; i++)
            dw[i] += t->red_vec[(size_t)c * d + i];
    tfm__prof_op(&t->prof, t->phase, TFM_CLASS_NORMALIZATION, comp, t0, 9.0 * N * d);
}

/* ---- RoPE ----------------------------------------------------------------- */

typedef struct {
    float *v; /* the first head of row 0 */
    const float *sin; /* the model's sines, or their negatives (inverse) */
    int stride, n_heads, T;
} rope_args;

static void rope_rows(tfm_trainer *t, const void *args, int r0, int r1, int chunk)
{
    const rope_args *a = args;
    int hs = t->m->cfg.dim / t->m->cfg.n_heads, half = hs / 2;
    for (int r = r0; r < r1; r++) {
        size_t pos = (size_t)(r % a->T);
        tfm__rope(a->v + (size_t)r * a->stride, a->n_heads, hs, t->m->rope_cos + pos * half,
                  a->sin + pos * half);
    }
}

/* The backward of a rotation is the inverse rotation: the same cosines,
 * negated sines. */
static void rope(tfm_trainer *t, float *v, int stride, int n_heads, int N, int T, int inverse)
{
    double t0 = tfm__prof_start(&t->prof);
    rope_args a = {v, inverse ? t->rope_nsin : t->m->rope_sin, stride, n_heads, T};
    run_rows(t, rope_rows, &a, N, row_chunks(t, N));
    tfm__prof_op(&t->prof, t->phase, TFM_CLASS_ELEMENTWISE, TFM_COMP_ATTENTION, t0,
                 3.0 * N * n_heads * (t->m->cfg.dim / t->m->cfg.n_heads));
}

/* ---- attention ------------------------------------------------------------ */

typedef struct {
    tfm_trainer *t;
    layer_acts *a;
    int B, T;
} attn_job;

/* One (sequence, head): S = Q K^T / sqrt(hs), causal softmax, O = P V;
 * tiled: train_attn.c's forward, which keeps only P's log-sum-exp. */
static void attn_fwd_one(void *ctx, int chunk, int n_chunks, int thread)
{
    const attn_job *j = ctx;
    const tfm_trainer *t = j->t;
    const tfm_config *c = &t->m->cfg;
    int nh = c->n_heads, hs = c->dim / nh, kvd = hs * c->n_kv_heads;
    int group = nh / c->n_kv_heads, T = j->T, d = c->dim, E = d + 2 * kvd;
    int b = chunk / nh, h = chunk % nh, kh = h / group;
    size_t row0 = (size_t)b * T;
    const float *q = j->a->qkv + row0 * E + (size_t)h * hs;
    const float *k = j->a->qkv + row0 * E + d + (size_t)kh * hs;
    const float *v = j->a->qkv + row0 * E + d + kvd + (size_t)kh * hs;
    float *o = j->a->ao + row0 * d + (size_t)h * hs;
    if (t->attn == TFM_ATTN_TILED) {
        tfm__flash_forward(o, d, j->a->lse + ((size_t)b * nh + h) * T, q, E, k, v, E, hs, T,
                           t->fa + (size_t)thread * tfm__flash_scratch(t->max_T));
        return;
    }
    float *P = j->a->att + ((size_t)b * nh + h) * T * T;
    float scale = 1.0f / sqrtf((float)hs);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, E, k, E, 0.0f, P, T);
    for (int i = 0; i < T; i++) {
        float *p = P + (size_t)i * T;
        tfm__softmax(p, i + 1);
        memset(p + i + 1, 0, (size_t)(T - i - 1) * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, P, T, v, E, 0.0f, o, d);
}

/* Books one layer's attention core (B sequences of T): executed FLOPs,
 * seconds as contraction, the softmax (or its backward) as normalization
 * FLOPs; calls one per sequence in the forward only.  Kind "naive": the
 * full T x T products (the causal mask zeroes the upper half), the whole
 * score matrix materialised and kept for the backward, its bytes the peak.
 * Kind "tiled": the tiles up to the diagonal (the backward's five products
 * a tile, S recomputed); the peak is the kept log-sum-exp plus every
 * thread's scratch tiles. */
static void record_train_attention(tfm_trainer *t, double t0, int B, int T, int backward)
{
    tfm_profile *p = &t->prof;
    if (!p->enabled)
        return;
    const tfm_config *c = &t->m->cfg;
    double dt = tfm_now() - t0, tt = (double)T * T;
    double f = (backward ? 8.0 : 4.0) * c->dim * tt * B; /* 4 or 2 products */
    int ph = t->phase;
    if (t->attn == TFM_ATTN_TILED) {
        int hs = c->dim / c->n_heads;
        f = tfm__flash_flops(T, hs, backward) * c->n_heads * B;
        double scratch = (double)t->n_threads * tfm__flash_scratch(t->max_T);
        tfm__prof_attention(p, ph, TFM_ATTN_KIND_TILED, T, dt, f, backward ? 0 : (uint64_t)B);
        tfm__prof_attn_peak(p, ph,
                            ((double)B * c->n_heads * T + scratch) * sizeof(float));
    } else {
        tfm__prof_attention(p, ph, TFM_ATTN_KIND_NAIVE, T, dt, f, backward ? 0 : (uint64_t)B);
        if (!backward) /* the stored softmax */
            tfm__prof_attn_peak(p, ph, (double)B * c->n_heads * tt * sizeof(float));
    }
    p->seconds[ph][TFM_CLASS_CONTRACTION] += dt;
    p->flops[ph][TFM_CLASS_CONTRACTION] += f;
    p->flops[ph][TFM_CLASS_NORMALIZATION] +=
        (backward ? 4.0 : 5.0) * c->n_heads * B * (T * (T + 1.0) / 2.0);
    p->comp_seconds[ph][TFM_COMP_ATTENTION] += dt;
}

static void attention_fwd(tfm_trainer *t, layer_acts *a, int B, int T)
{
    double t0 = tfm__prof_start(&t->prof);
    attn_job j = {t, a, B, T};
    tfm__pool_run(t->pool, attn_fwd_one, &j, B * t->m->cfg.n_heads);
    record_train_attention(t, t0, B, T, 0);
}

/* One (sequence, kv head), over the query heads that read it:
 *   dP = dO V^T;  dS = P * (dP - rowsum(dP * P));
 *   dQ = dS K / sqrt(hs);  dK += dS^T Q / sqrt(hs);  dV += P^T dO.
 * Tiled: the same tile by tile (train_attn.c). */
static void attn_bwd_one(void *ctx, int chunk, int n_chunks, int thread)
{
    const attn_job *j = ctx;
    tfm_trainer *t = j->t;
    const tfm_config *c = &t->m->cfg;
    int nh = c->n_heads, nkv = c->n_kv_heads, hs = c->dim / nh, kvd = hs * nkv;
    int group = nh / nkv, T = j->T, d = c->dim, E = d + 2 * kvd;
    int b = chunk / nkv, kh = chunk % nkv;
    size_t row0 = (size_t)b * T;
    const float *k = j->a->qkv + row0 * E + d + (size_t)kh * hs;
    const float *v = j->a->qkv + row0 * E + d + kvd + (size_t)kh * hs;
    float *dk = t->dqkv + row0 * E + d + (size_t)kh * hs;
    float *dv = t->dqkv + row0 * E + d + kvd + (size_t)kh * hs;
    if (t->attn == TFM_ATTN_TILED) {
        size_t h0 = (size_t)kh * group;
        tfm__flash_backward(t->dqkv + row0 * E + h0 * hs, E, dk, dv, E,
                            t->dao + row0 * d + h0 * hs, d, j->a->ao + row0 * d + h0 * hs, d,
                            j->a->lse + ((size_t)b * nh + h0) * T,
                            j->a->qkv + row0 * E + h0 * hs, E, k, v, E, hs, T, group,
                            t->fa + (size_t)thread * tfm__flash_scratch(t->max_T));
        return;
    }
    float *dP = t->dP + (size_t)thread * t->max_T * t->max_T;
    float scale = 1.0f / sqrtf((float)hs);
    for (int r = 0; r < T; r++) {
        memset(dk + (size_t)r * E, 0, (size_t)hs * sizeof(float));
        memset(dv + (size_t)r * E, 0, (size_t)hs * sizeof(float));
    }
    for (int h = kh * group; h < (kh + 1) * group; h++) {
        const float *P = j->a->att + ((size_t)b * nh + h) * T * T;
        const float *q = j->a->qkv + row0 * E + (size_t)h * hs;
        const float *dout = t->dao + row0 * d + (size_t)h * hs;
        float *dq = t->dqkv + row0 * E + (size_t)h * hs;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dout, d, v, E, 0.0f,
                    dP, T);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, P, T, dout, d, 1.0f,
                    dv, E);
        for (int i = 0; i < T; i++) {
            const float *p = P + (size_t)i * T;
            float *g = dP + (size_t)i * T, s = 0.0f;
            for (int jj = 0; jj <= i; jj++)
                s += g[jj] * p[jj];
            for (int jj = 0; jj <= i; jj++)
                g[jj] = p[jj] * (g[jj] - s);
            memset(g + i + 1, 0, (size_t)(T - i - 1) * sizeof(float));
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, scale, dP, T, k, E, 0.0f,
                    dq, E);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, scale, dP, T, q, E, 1.0f,
                    dk, E);
    }
}

static void attention_bwd(tfm_trainer *t, layer_acts *a, int B, int T)
{
    double t0 = tfm__prof_start(&t->prof);
    attn_job j = {t, a, B, T};
    tfm__pool_run(t->pool, attn_bwd_one, &j, B * t->m->cfg.n_kv_heads);
    record_train_attention(t, t0, B, T, 1);
}

/* ---- SwiGLU ----------------------------------------------------------------- */

typedef struct {
    float *hg, *dh13;
    const float *h13, *dhg;
    int H;
} glu_args;

static void glu_fwd_rows(tfm_trainer *t, const void *args, int r0, int r1, int chunk)
{
    const glu_args *a = args;
    size_t H = (size_t)a->H;
    for (int r = r0; r < r1; r++) {
        const float *h = a->h13 + (size_t)r * 2 * H;
        memcpy(a->hg + (size_t)r * H, h, H * sizeof(float));
        tfm__swiglu(a->hg + (size_t)r * H, h + H, (int)H);
    }
}

/* hg = silu(h1) h3: dh3 = dhg h1 s; dh1 = dhg h3 silu'(h1), where
 * silu'(x) = s (1 + x (1 - s)), s = sigmoid(x). */
static void glu_bwd_rows(tfm_trainer *t, const void *args, int r0, int r1, int chunk)
{
    const glu_args *a = args;
    size_t H = (size_t)a->H;
    for (int r = r0; r < r1; r++) {
        const float *h = a->h13 + (size_t)r * 2 * H;
        float *g = a->dh13 + (size_t)r * 2 * H;
        tfm__swiglu_backward(g, g + H, h, h + H, a->dhg + (size_t)r * H, H);
    }
}

/* ---- loss ------------------------------------------------------------------ */

typedef struct {
    float *probs;
    const int *tgt;
    int V;
} ce_args;

static void ce_rows(tfm_trainer *t, const void *args, int r0, int r1, int chunk)
{
    const ce_args *a = args;
    double loss = 0.0;
    for (int r = r0; r < r1; r++) {
        float *p = a->probs + (size_t)r * a->V;
        tfm__softmax(p, a->V);
        if (a->tgt && a->tgt[r] >= 0) {
            float pt = p[a->tgt[r]];
            loss -= log(pt > 1e-30f ? (double)pt : 1e-30);
        }
    }
    t->red[chunk] = loss;
}

/* dlogits = (probs - onehot(target)) / counted on counted rows, else 0 */
typedef struct {
    float inv;
    int V;
} dlog_args;

static void dlog_rows(tfm_trainer *t, const void *args, int r0, int r1, int chunk)
{
    const dlog_args *a = args;
    for (int r = r0; r < r1; r++) {
        float *g = t->dlog + (size_t)r * a->V;
        const float *p = t->probs + (size_t)r * a->V;
        if (t->tgt[r] < 0) {
            memset(g, 0, (size_t)a->V * sizeof(float));
            continue;
        }
        for (int i = 0; i < a->V; i++)
            g[i] = p[i] * a->inv;
        g[t->tgt[r]] -= a->inv;
    }
}

/* ---- create / destroy ---------------------------------------------------------- */

/* n floats, counted in t->bytes (and t->attn_bytes: attention's own) */
static float *talloc(tfm_trainer *t, size_t n)
{
    float *p = tfm__alloc(n * sizeof(float));
    t->bytes += p ? n * sizeof(float) : 0;
    return p;
}

static float *talloc_attn(tfm_trainer *t, size_t n)
{
    float *p = talloc(t, n);
    t->attn_bytes += p ? n * sizeof(float) : 0;
    return p;
}

/* AUTO.  Measured with `attn bench-train --configs text --attention both
 * --seq-len T --batch B --threads 1` (byte LM: d 128, 4 heads of 32, 4
 * layers, V 258; B = 4096 / T up to 512, then 2; 5-9 alternated steps on a
 * 2-core EPYC shared with other builds, so +-10%), tiled step time over
 * naive, ratio of medians / median of per-step ratios:
 *     T  128: 1.10 / 0.99    256: 0.99 / 1.00    512: 0.95 / 0.89
 *     T 1024: 0.74 / 0.76   2048: 0.75 / 0.69
 * The naive kernel multiplies full T x T matrices and discards the masked
 * half; the tiled one stops at the diagonal, which pays for recomputing S
 * from T ~ 256 on.  So: tiled from TFM_TRAIN_AUTO_TILED_SEQ tokens, or
 * whenever naive's (T, T) buffers would pass TFM_TRAIN_AUTO_TILED_BYTES;
 * below both, naive, as tfm_trainer_create always was (so short-sequence
 * runs keep their exact numbers). */
tfm_attn_kernel tfm_trainer_attention_pick(const tfm_config *c, int max_batch, int max_seq,
                                           int n_threads)
{
    double naive = ((double)c->n_layers * max_batch * c->n_heads + n_threads) * max_seq *
                   (double)max_seq * sizeof(float);
    return max_seq >= TFM_TRAIN_AUTO_TILED_SEQ || naive > TFM_TRAIN_AUTO_TILED_BYTES
               ? TFM_ATTN_TILED
               : TFM_ATTN_NAIVE;
}

static tfm_status trainer_create(tfm_model *m, int max_batch, int max_seq, int n_threads,
                                 int training, tfm_attn_kernel kern, tfm_trainer **out)
{
    *out = NULL;
    if (!m || max_batch < 1 || max_seq < 1 || max_seq > m->cfg.seq_len || n_threads < 1 ||
        n_threads > 256 || (unsigned)kern > TFM_ATTN_TILED)
        return TFM_E_INVALID;
    if (m->q) /* quantised matrices: the trainer reads and writes float32 */
        return TFM_E_UNSUPPORTED;
    if (m->cfg.linear_layers) /* its forward and backward are softmax layers' only */
        return TFM_E_UNSUPPORTED;
    const tfm_config *c = &m->cfg;
    size_t N = (size_t)max_batch * max_seq, d = (size_t)c->dim, H = (size_t)c->hidden_dim;
    size_t kvd = d / (size_t)c->n_heads * (size_t)c->n_kv_heads, V = (size_t)c->vocab_size;
    size_t TT = (size_t)max_seq * max_seq, E = d + 2 * kvd;
    if (N > (size_t)1 << 24)
        return TFM_E_RANGE;
    tfm_trainer *t = calloc(1, sizeof *t);
    if (!t)
        return TFM_E_NOMEM;
    t->m = m;
    t->training = training;
    t->max_B = max_batch;
    t->max_T = max_seq;
    t->n_threads = n_threads;
    t->attn = kern == TFM_ATTN_AUTO ? tfm_trainer_attention_pick(&m->cfg, max_batch, max_seq,
                                                                 n_threads)
                                    : kern;
    t->prof.enabled = 1;
    t->phase = training ? TFM_PHASE_TRAIN : TFM_PHASE_PREFILL;
    openblas_set_num_threads(1);
    t->pool = tfm__pool_create(n_threads);
    t->L = calloc((size_t)c->n_layers, sizeof *t->L);
    int ok = t->pool && t->L;
    for (int l = 0; ok && l < c->n_layers; l++) {
        layer_acts *a = &t->L[l];
        float **fd[] = {&a->x_in, &a->xn1, &a->ao, &a->x_mid, &a->xn2};
        for (size_t i = 0; i < sizeof fd / sizeof fd[0]; i++)
            ok &= (*fd[i] = talloc(t, N * d)) != NULL;
        ok &= (a->qkv = talloc(t, N * E)) != NULL;
        ok &= (a->rs1 = talloc(t, N)) != NULL;
        ok &= (a->rs2 = talloc(t, N)) != NULL;
        ok &= (a->h13 = talloc(t, N * 2 * H)) != NULL;
        ok &= (a->hg = talloc(t, N * H)) != NULL;
        ok &= (a->wqkv = talloc(t, E * d)) != NULL;
        ok &= (a->w13 = talloc(t, 2 * H * d)) != NULL;
        if (t->attn == TFM_ATTN_TILED)
            ok &= (a->lse = talloc_attn(t, (size_t)max_batch * c->n_heads * max_seq)) != NULL;
        else
            ok &= (a->att = talloc_attn(t, (size_t)max_batch * c->n_heads * TT)) != NULL;
    }
    ok = ok && (t->x_f = talloc(t, N * d)) &&
         (t->xnf = talloc(t, N * d)) && (t->rsf = talloc(t, N)) &&
         (t->probs = talloc(t, N * V)) && (t->tok = calloc(N, sizeof(int))) &&
         (t->tgt = calloc(N, sizeof(int)));
    if (ok && t->attn == TFM_ATTN_TILED)
        ok = (t->fa = talloc_attn(t, (size_t)n_threads * tfm__flash_scratch(max_seq))) != NULL;
    if (ok && training) {
        size_t P = m->n_floats, rope_n = (size_t)max_seq * (d / (size_t)c->n_heads / 2);
        ok = (t->dx = talloc(t, N * d)) &&
             (t->dxn = talloc(t, N * d)) &&
             (t->dqkv = talloc(t, N * E)) &&
             (t->dao = talloc(t, N * d)) &&
             (t->dhg = talloc(t, N * H)) &&
             (t->dh13 = talloc(t, N * 2 * H)) &&
             (t->gfused = talloc(t, (E > 2 * H ? E : 2 * H) * d)) &&
             (t->dlog = talloc(t, N * V)) &&
             (t->attn == TFM_ATTN_TILED || (t->dP = talloc_attn(t, (size_t)n_threads * TT))) &&
             (t->rope_nsin = talloc(t, rope_n)) &&
             (t->red_vec = talloc(t, RED_CHUNKS * d)) &&
             (t->grads = talloc(t, P)) &&
             (t->mom1 = talloc(t, P)) && (t->mom2 = talloc(t, P));
        if (ok) {
            for (size_t i = 0; i < rope_n; i++)
                t->rope_nsin[i] = -m->rope_sin[i];
            memset(t->grads, 0, P * sizeof(float));
            memset(t->mom1, 0, P * sizeof(float));
            memset(t->mom2, 0, P * sizeof(float));
        }
    }
    if (!ok) {
        tfm_trainer_destroy(t);
        return TFM_E_NOMEM;
    }
    *out = t;
    return TFM_OK;
}

tfm_status tfm_trainer_create(tfm_model *m, int max_batch, int max_seq, int n_threads,
                              tfm_trainer **out)
{
    return trainer_create(m, max_batch, max_seq, n_threads, 1, TFM_ATTN_AUTO, out);
}

tfm_status tfm_trainer_create_attn(tfm_model *m, int max_batch, int max_seq, int n_threads,
                                   tfm_attn_kernel attention, tfm_trainer **out)
{
    return trainer_create(m, max_batch, max_seq, n_threads, 1, attention, out);
}

/* Forward only, for evaluation of a shared read-only model: the trainer
 * never writes the model (tfm_trainer_adamw refuses without gradients). */
tfm_status tfm__trainer_create_eval(const tfm_model *m, int max_batch, int max_seq,
                                    int n_threads, tfm_trainer **out)
{
    return trainer_create((tfm_model *)m, max_batch, max_seq, n_threads, 0, TFM_ATTN_AUTO, out);
}

void tfm_trainer_destroy(tfm_trainer *t)
{
    if (!t)
        return;
    if (t->L) {
        for (int l = 0; l < t->m->cfg.n_layers; l++) {
            layer_acts *a = &t->L[l];
            float *p[] = {a->x_in, a->xn1, a->rs1, a->qkv,  a->att, a->lse, a->ao,
                          a->x_mid, a->xn2, a->rs2, a->h13, a->hg,  a->wqkv, a->w13};
            for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
                tfm__free(p[i]);
        }
        free(t->L);
    }
    float *p[] = {t->x_f,  t->xnf,  t->rsf, t->probs, t->dx,    t->dxn,      t->dqkv,
                  t->dao,  t->dhg,  t->dh13, t->dlog, t->dP,    t->red_vec,  t->gfused,
                  t->rope_nsin, t->fa,
                  t->grads, t->mom1, t->mom2};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        tfm__free(p[i]);
    free(t->tok);
    free(t->tgt);
    tfm__pool_destroy(t->pool);
    free(t);
}

tfm_model *tfm_trainer_model(tfm_trainer *t) { return t->m; }
const float *tfm_trainer_probs(const tfm_trainer *t) { return t->probs; }
long tfm_trainer_counted(const tfm_trainer *t) { return t->counted; }
float *tfm_trainer_grads(tfm_trainer *t) { return t->grads; }
int tfm_trainer_step_count(const tfm_trainer *t) { return t->steps; }
int tfm__trainer_max_batch(const tfm_trainer *t) { return t->max_B; }
int tfm__trainer_max_seq(const tfm_trainer *t) { return t->max_T; }
tfm_profile *tfm_trainer_profile(tfm_trainer *t) { return &t->prof; }
tfm_attn_kernel tfm_trainer_attention(const tfm_trainer *t) { return t->attn; }

void tfm_trainer_memory(const tfm_trainer *t, size_t *total, size_t *attention)
{
    if (total)
        *total = t->bytes;
    if (attention)
        *attention = t->attn_bytes;
}

/* ---- forward ------------------------------------------------------------------- */

typedef struct {
    const int *tok;
    int d;
} embed_args;

static void embed_rows(tfm_trainer *t, const void *args, int r0, int r1, int chunk)
{
    const embed_args *a = args;
    for (int r = r0; r < r1; r++)
        memcpy(t->L[0].x_in + (size_t)r * a->d,
               t->m->w.token_embedding + (size_t)a->tok[r] * a->d, (size_t)a->d * sizeof(float));
}

tfm_status tfm_trainer_forward(tfm_trainer *t, const int *inputs, const int *targets, int B,
                               int T, float *loss)
{
    const tfm_config *c = &t->m->cfg;
    t->have_fwd = 0;
    if (!inputs || B < 1 || T < 1 || B > t->max_B || T > t->max_T)
        return TFM_E_INVALID;
    int N = B * T, d = c->dim, H = c->hidden_dim, V = c->vocab_size;
    int kvd = d / c->n_heads * c->n_kv_heads, E = d + 2 * kvd;
    long counted = 0;
    for (int i = 0; i < N; i++) {
        if (inputs[i] < 0 || inputs[i] >= V || (targets && targets[i] >= V))
            return TFM_E_INVALID;
        t->tok[i] = inputs[i];
        t->tgt[i] = targets && targets[i] >= 0 ? targets[i] : -1;
        counted += t->tgt[i] >= 0;
    }
    t->B = B;
    t->T = T;
    t->counted = counted;
    const tfm_weights *w = &t->m->w;
    tfm_profile *prof = &t->prof;
    const int ph = t->phase;
    double t0 = tfm__prof_start(prof);
    embed_args ea = {t->tok, d};
    run_rows(t, embed_rows, &ea, N, row_chunks(t, N));
    tfm__prof_op(prof, ph, TFM_CLASS_ELEMENTWISE, TFM_COMP_OTHER, t0, 0.0);
    for (int l = 0; l < c->n_layers; l++) {
        layer_acts *a = &t->L[l];
        size_t ld = (size_t)l * d;
        rmsnorm_fwd(t, TFM_COMP_ATTENTION, a->xn1, a->rs1, a->x_in, w->rms_att + ld, N);
        size_t dd = (size_t)d * d, kd = (size_t)kvd * d, hd = (size_t)H * d;
        memcpy(a->wqkv, w->wq + ld * d, dd * sizeof(float));
        memcpy(a->wqkv + dd, w->wk + l * kd, kd * sizeof(float));
        memcpy(a->wqkv + dd + kd, w->wv + l * kd, kd * sizeof(float));
        matmul_fwd(t, TFM_COMP_ATTENTION, a->qkv, a->xn1, a->wqkv, N, d, E, 0);
        rope(t, a->qkv, E, c->n_heads, N, T, 0);
        rope(t, a->qkv + d, E, c->n_kv_heads, N, T, 0);
        attention_fwd(t, a, B, T);
        memcpy(a->x_mid, a->x_in, (size_t)N * d * sizeof(float));
        matmul_fwd(t, TFM_COMP_ATTENTION, a->x_mid, a->ao, w->wo + ld * d, N, d, d, 1);
        rmsnorm_fwd(t, TFM_COMP_MLP, a->xn2, a->rs2, a->x_mid, w->rms_ffn + ld, N);
        memcpy(a->w13, w->w1 + l * hd, hd * sizeof(float));
        memcpy(a->w13 + hd, w->w3 + l * hd, hd * sizeof(float));
        matmul_fwd(t, TFM_COMP_MLP, a->h13, a->xn2, a->w13, N, d, 2 * H, 0);
        t0 = tfm__prof_start(prof);
        glu_args g = {.hg = a->hg, .h13 = a->h13, .H = H};
        run_rows(t, glu_fwd_rows, &g, N, row_chunks(t, N));
        tfm__prof_op(prof, ph, TFM_CLASS_ELEMENTWISE, TFM_COMP_MLP, t0, 5.0 * N * H);
        float *next = l + 1 < c->n_layers ? t->L[l + 1].x_in : t->x_f;
        memcpy(next, a->x_mid, (size_t)N * d * sizeof(float));
        matmul_fwd(t, TFM_COMP_MLP, next, a->hg, w->w2 + (size_t)l * d * H, N, H, d, 1);
    }
    rmsnorm_fwd(t, TFM_COMP_OTHER, t->xnf, t->rsf, t->x_f, w->rms_final, N);
    matmul_fwd(t, TFM_COMP_OTHER, t->probs, t->xnf, w->wcls, N, d, V, 0);
    int n_chunks = N < RED_CHUNKS ? N : RED_CHUNKS;
    t0 = tfm__prof_start(prof);
    ce_args ca = {t->probs, t->tgt, V};
    run_rows(t, ce_rows, &ca, N, n_chunks);
    tfm__prof_op(prof, ph, TFM_CLASS_NORMALIZATION, TFM_COMP_OTHER, t0, 5.0 * N * V);
    if (prof->enabled)
        prof->tokens[ph] += (uint64_t)N;
    double total = 0.0;
    for (int i = 0; i < n_chunks; i++)
        total += t->red[i];
    if (loss)
        *loss = counted ? (float)(total / (double)counted) : 0.0f;
    t->have_fwd = 1;
    return TFM_OK;
}

/* ---- backward ------------------------------------------------------------------- */

/* Gradient regions as offsets into the flat buffer, like the weights. */
static float *grad_of(tfm_trainer *t, const float *weight)
{
    return t->grads + (weight - t->m->data);
}

tfm_status tfm_trainer_backward(tfm_trainer *t)
{
    if (!t->training || !t->have_fwd)
        return TFM_E_INVALID;
    const tfm_config *c = &t->m->cfg;
    const tfm_weights *w = &t->m->w;
    int B = t->B, T = t->T, N = B * T, d = c->dim, H = c->hidden_dim, V = c->vocab_size;
    int kvd = d / c->n_heads * c->n_kv_heads, E = d + 2 * kvd;
    memset(t->grads, 0, t->m->n_floats * sizeof(float));
    if (!t->counted)
        return TFM_OK;
    tfm_profile *prof = &t->prof;
    const int ph = t->phase;
    double t0 = tfm__prof_start(prof);
    dlog_args da = {1.0f / (float)t->counted, V};
    run_rows(t, dlog_rows, &da, N, row_chunks(t, N));
    tfm__prof_op(prof, ph, TFM_CLASS_ELEMENTWISE, TFM_COMP_OTHER, t0, (double)N * V);
    /* classifier: dwcls += dlog^T xnf; dxnf = dlog wcls */
    matmul_bwd_dw(t, TFM_COMP_OTHER, grad_of(t, w->wcls), t->dlog, t->xnf, N, d, V, 1);
    matmul_bwd_dx(t, TFM_COMP_OTHER, t->dxn, t->dlog, w->wcls, N, d, V, 0);
    memset(t->dx, 0, (size_t)N * d * sizeof(float));
    rmsnorm_bwd(t, TFM_COMP_OTHER, t->dx, grad_of(t, w->rms_final), t->dxn, t->x_f, t->rsf,
                w->rms_final, N);
    for (int l = c->n_layers - 1; l >= 0; l--) {
        layer_acts *a = &t->L[l];
        size_t ld = (size_t)l * d;
        size_t hd = (size_t)H * d, dd = (size_t)d * d, kd = (size_t)kvd * d;
        const float *w2 = w->w2 + l * hd;
        /* FFN: x_out = x_mid + w2 hg; dx is dL/dx_out and stays as the
         * residual's share of dL/dx_mid */
        matmul_bwd_dw(t, TFM_COMP_MLP, grad_of(t, w2), t->dx, a->hg, N, H, d, 1);
        matmul_bwd_dx(t, TFM_COMP_MLP, t->dhg, t->dx, w2, N, H, d, 0);
        t0 = tfm__prof_start(prof);
        glu_args g = {.dh13 = t->dh13, .h13 = a->h13, .dhg = t->dhg, .H = H};
        run_rows(t, glu_bwd_rows, &g, N, row_chunks(t, N));
        tfm__prof_op(prof, ph, TFM_CLASS_ELEMENTWISE, TFM_COMP_MLP, t0, 9.0 * N * H);
        matmul_bwd_dw(t, TFM_COMP_MLP, t->gfused, t->dh13, a->xn2, N, d, 2 * H, 0);
        tfm__add(grad_of(t, w->w1 + l * hd), t->gfused, (int)hd);
        tfm__add(grad_of(t, w->w3 + l * hd), t->gfused + hd, (int)hd);
        matmul_bwd_dx(t, TFM_COMP_MLP, t->dxn, t->dh13, a->w13, N, d, 2 * H, 0);
        rmsnorm_bwd(t, TFM_COMP_MLP, t->dx, grad_of(t, w->rms_ffn + ld), t->dxn, a->x_mid,
                    a->rs2, w->rms_ffn + ld, N);
        /* attention: x_mid = x_in + wo ao */
        const float *wo = w->wo + ld * d;
        matmul_bwd_dw(t, TFM_COMP_ATTENTION, grad_of(t, wo), t->dx, a->ao, N, d, d, 1);
        matmul_bwd_dx(t, TFM_COMP_ATTENTION, t->dao, t->dx, wo, N, d, d, 0);
        attention_bwd(t, a, B, T);
        rope(t, t->dqkv, E, c->n_heads, N, T, 1);
        rope(t, t->dqkv + d, E, c->n_kv_heads, N, T, 1);
        matmul_bwd_dw(t, TFM_COMP_ATTENTION, t->gfused, t->dqkv, a->xn1, N, d, E, 0);
        tfm__add(grad_of(t, w->wq + ld * d), t->gfused, (int)dd);
        tfm__add(grad_of(t, w->wk + l * kd), t->gfused + dd, (int)kd);
        tfm__add(grad_of(t, w->wv + l * kd), t->gfused + dd + kd, (int)kd);
        matmul_bwd_dx(t, TFM_COMP_ATTENTION, t->dxn, t->dqkv, a->wqkv, N, d, E, 0);
        rmsnorm_bwd(t, TFM_COMP_ATTENTION, t->dx, grad_of(t, w->rms_att + ld), t->dxn, a->x_in,
                    a->rs1, w->rms_att + ld, N);
    }
    /* embedding: rows in order, one thread (a token may repeat) */
    t0 = tfm__prof_start(prof);
    float *demb = grad_of(t, w->token_embedding);
    for (int r = 0; r < N; r++)
        tfm__add(demb + (size_t)t->tok[r] * d, t->dx + (size_t)r * d, d);
    tfm__prof_op(prof, ph, TFM_CLASS_ELEMENTWISE, TFM_COMP_OTHER, t0, (double)N * d);
    return TFM_OK;
}

/* ---- clipping and AdamW ------------------------------------------------------------ */

typedef struct {
    float *g;
    size_t n;
    float scale;
} vec_args;

typedef struct {
    tfm_trainer *t;
    vec_args v;
} vec_job;

static void sumsq_task(void *ctx, int chunk, int n_chunks, int thread)
{
    vec_job *j = ctx;
    size_t lo = j->v.n * (size_t)chunk / (size_t)n_chunks;
    size_t hi = j->v.n * (size_t)(chunk + 1) / (size_t)n_chunks;
    double s = 0.0;
    for (size_t i = lo; i < hi; i++)
        s += (double)j->v.g[i] * j->v.g[i];
    j->t->red[chunk] = s;
}

static void scale_task(void *ctx, int chunk, int n_chunks, int thread)
{
    vec_job *j = ctx;
    size_t lo = j->v.n * (size_t)chunk / (size_t)n_chunks;
    size_t hi = j->v.n * (size_t)(chunk + 1) / (size_t)n_chunks;
    tfm__scale(j->v.g + lo, j->v.scale, (int)(hi - lo));
}

float tfm_trainer_clip(tfm_trainer *t, float max_norm)
{
    if (!t->training)
        return 0.0f;
    double t0 = tfm__prof_start(&t->prof);
    double n_floats = (double)t->m->n_floats;
    vec_job j = {t, {t->grads, t->m->n_floats, 1.0f}};
    tfm__pool_run(t->pool, sumsq_task, &j, RED_CHUNKS);
    double s = 0.0;
    for (int i = 0; i < RED_CHUNKS; i++)
        s += t->red[i];
    float norm = (float)sqrt(s);
    if (max_norm > 0.0f && norm > max_norm) {
        j.v.scale = max_norm / norm;
        tfm__pool_run(t->pool, scale_task, &j, RED_CHUNKS);
        n_floats *= 1.5; /* 2 flops a weight, then 1 */
    }
    tfm__prof_op(&t->prof, t->phase, TFM_CLASS_ELEMENTWISE, TFM_COMP_OTHER, t0, 2.0 * n_floats);
    return norm;
}

typedef struct {
    tfm_trainer *t;
    float lr, b1, b2, eps, wd, c1, c2;
    size_t lo, hi; /* a region: [lo, hi) of the flat buffer */
    int decay;
} adam_job;

static void adam_task(void *ctx, int chunk, int n_chunks, int thread)
{
    const adam_job *j = ctx;
    size_t n = j->hi - j->lo;
    size_t lo = j->lo + n * (size_t)chunk / (size_t)n_chunks;
    size_t hi = j->lo + n * (size_t)(chunk + 1) / (size_t)n_chunks;
    float *p = j->t->m->data, *g = j->t->grads, *m1 = j->t->mom1, *m2 = j->t->mom2;
    for (size_t i = lo; i < hi; i++) {
        float gi = g[i];
        m1[i] = j->b1 * m1[i] + (1.0f - j->b1) * gi;
        m2[i] = j->b2 * m2[i] + (1.0f - j->b2) * gi * gi;
        float mh = m1[i] / j->c1, vh = m2[i] / j->c2;
        float upd = mh / (sqrtf(vh) + j->eps);
        if (j->decay)
            upd += j->wd * p[i];
        p[i] -= j->lr * upd;
    }
}

void tfm_trainer_adamw(tfm_trainer *t, const tfm_train_config *c, float lr)
{
    if (!t->training)
        return;
    double t0 = tfm__prof_start(&t->prof);
    t->steps++;
    const tfm_weights *w = &t->m->w;
    const tfm_config *mc = &t->m->cfg;
    adam_job j = {.t = t,
                  .lr = lr,
                  .b1 = c->beta1,
                  .b2 = c->beta2,
                  .eps = c->eps,
                  .wd = c->weight_decay,
                  .c1 = 1.0f - powf(c->beta1, (float)t->steps),
                  .c2 = 1.0f - powf(c->beta2, (float)t->steps)};
    /* the regions in layout order; norms are not decayed */
    size_t d = (size_t)mc->dim, L = (size_t)mc->n_layers;
    struct {
        const float *p;
        size_t n;
        int decay;
    } regions[] = {
        {w->token_embedding, (size_t)(w->rms_att - w->token_embedding), 1},
        {w->rms_att, L * d, 0},
        {w->wq, (size_t)(w->rms_ffn - w->wq), 1},
        {w->rms_ffn, L * d, 0},
        {w->w1, (size_t)(w->rms_final - w->w1), 1},
        {w->rms_final, d, 0},
    };
    for (size_t r = 0; r < sizeof regions / sizeof regions[0]; r++) {
        j.lo = (size_t)(regions[r].p - t->m->data);
        j.hi = j.lo + regions[r].n;
        j.decay = regions[r].decay;
        tfm__pool_run(t->pool, adam_task, &j, tfm__pool_chunks(t->pool, 64, 2));
    }
    if (!mc->shared_classifier) {
        j.lo = (size_t)(w->wcls - t->m->data);
        j.hi = t->m->n_floats;
        j.decay = 1;
        tfm__pool_run(t->pool, adam_task, &j, tfm__pool_chunks(t->pool, 64, 2));
    }
    /* about 14 flops a weight (moments, bias correction, sqrt, decay) */
    tfm__prof_op(&t->prof, t->phase, TFM_CLASS_ELEMENTWISE, TFM_COMP_OTHER, t0,
                 14.0 * (double)t->m->n_floats);
}

tfm_status tfm_trainer_step(tfm_trainer *t, const tfm_train_config *c, const int *inputs,
                            const int *targets, int B, int T, tfm_step_info *info)
{
    tfm_step_info si = {0};
    tfm_status st = tfm_trainer_forward(t, inputs, targets, B, T, &si.loss);
    if (st == TFM_OK)
        st = tfm_trainer_backward(t);
    if (st != TFM_OK)
        return st;
    si.grad_norm = tfm_trainer_clip(t, c->grad_clip);
    si.lr = tfm_train_lr(c, t->steps);
    tfm_trainer_adamw(t, c, si.lr);
    if (info)
        *info = si;
    return TFM_OK;
}

/* ---- config, schedule, initialisation ------------------------------------------------ */

void tfm_train_config_defaults(tfm_train_config *c)
{
    *c = (tfm_train_config){.steps = 1000,
                            .batch_size = 16,
                            .seq_len = 64,
                            .learning_rate = 1e-3f,
                            .warmup_steps = -1,
                            .min_lr_ratio = 0.1f,
                            .weight_decay = 0.1f,
                            .grad_clip = 1.0f,
                            .beta1 = 0.9f,
                            .beta2 = 0.95f,
                            .eps = 1e-8f,
                            .seed = 1};
}

static tfm_status bad(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return TFM_E_INVALID;
}

tfm_status tfm_train_config_validate(tfm_train_config *c, char *err, size_t errlen)
{
    if (c->steps < 1 || c->steps > 100000000)
        return bad(err, errlen, "steps must be between 1 and 100000000");
    if (c->batch_size < 1 || c->batch_size > 65536)
        return bad(err, errlen, "batch_size must be between 1 and 65536");
    if (c->seq_len < 2 || c->seq_len > 65536)
        return bad(err, errlen, "seq_len must be between 2 and 65536");
    if (!(c->learning_rate > 0.0f && c->learning_rate <= 10.0f))
        return bad(err, errlen, "learning_rate must be in (0, 10]");
    if (c->warmup_steps == -1)
        c->warmup_steps = c->steps / 10 < 100 ? c->steps / 10 : 100;
    if (c->warmup_steps < 0 || c->warmup_steps > c->steps)
        return bad(err, errlen, "warmup_steps must be between 0 and steps");
    if (!(c->min_lr_ratio >= 0.0f && c->min_lr_ratio <= 1.0f))
        return bad(err, errlen, "min_lr_ratio must be in [0, 1]");
    if (!(c->weight_decay >= 0.0f && c->weight_decay <= 10.0f))
        return bad(err, errlen, "weight_decay must be in [0, 10]");
    if (!(c->grad_clip >= 0.0f && isfinite(c->grad_clip)))
        return bad(err, errlen, "grad_clip must be >= 0");
    if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f))
        return bad(err, errlen, "beta1 must be in [0, 1)");
    if (!(c->beta2 >= 0.0f && c->beta2 < 1.0f))
        return bad(err, errlen, "beta2 must be in [0, 1)");
    if (!(c->eps > 0.0f && c->eps < 1.0f))
        return bad(err, errlen, "eps must be in (0, 1)");
    return TFM_OK;
}

float tfm_train_lr(const tfm_train_config *c, int step)
{
    float lr = c->learning_rate, lo = lr * c->min_lr_ratio;
    if (step < c->warmup_steps)
        return lr * (float)(step + 1) / (float)c->warmup_steps;
    int span = c->steps - 1 - c->warmup_steps;
    double p = span > 0 ? (double)(step - c->warmup_steps) / span : 1.0;
    if (p > 1.0)
        p = 1.0;
    return lo + 0.5f * (lr - lo) * (float)(1.0 + cos(M_PI * p));
}

/* A standard normal by Box-Muller from two splitmix64 draws. */
static void fill_normal(float *p, size_t n, float std, uint64_t *s)
{
    for (size_t i = 0; i < n; i++) {
        double u1 = ((double)(tfm__splitmix64(s) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
        double u2 = (double)(tfm__splitmix64(s) >> 11) * (1.0 / 9007199254740992.0);
        p[i] = (float)(std * sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
    }
}

void tfm_model_init_train(tfm_model *m, uint64_t seed)
{
    const tfm_weights *w = &m->w;
    const tfm_config *c = &m->cfg;
    uint64_t s = seed ^ 0x5EED5EED5EED5EEDull;
    size_t d = (size_t)c->dim, L = (size_t)c->n_layers;
    float sd = 1.0f / sqrtf((float)d), sh = 1.0f / sqrtf((float)c->hidden_dim);
    float res = 1.0f / sqrtf(2.0f * (float)c->n_layers);
    for (size_t i = 0; i < m->n_floats; i++)
        m->data[i] = 0.0f;
    fill_normal(w->token_embedding, (size_t)(w->rms_att - w->token_embedding), sd, &s);
    fill_normal(w->wq, (size_t)(w->wo - w->wq), sd, &s); /* wq, wk, wv */
    fill_normal(w->wo, (size_t)(w->rms_ffn - w->wo), sd * res, &s);
    fill_normal(w->w1, (size_t)(w->w2 - w->w1), sd, &s);
    fill_normal(w->w2, (size_t)(w->w3 - w->w2), sh * res, &s);
    fill_normal(w->w3, (size_t)(w->rms_final - w->w3), sd, &s);
    if (!c->shared_classifier)
        fill_normal(w->wcls, (size_t)c->vocab_size * d, sd, &s);
    for (size_t i = 0; i < L * d; i++)
        w->rms_att[i] = w->rms_ffn[i] = 1.0f;
    for (size_t i = 0; i < d; i++)
        w->rms_final[i] = 1.0f;
}

/* ---- save / load ------------------------------------------------------------------- */

/* "ATTNDTRN", version, the config as 8 int32 + 2 float, the step count,
 * n_floats (uint64), weights, first and second moments, then an FNV-1a
 * 64-bit hash of everything before it.  Little-endian, as the machines we
 * run on. */
#define STATE_MAGIC "ATTNDTRN"
#define STATE_VERSION 1

typedef struct state_header {
    char magic[8];
    uint32_t version;
    int32_t cfg_i[8];
    float cfg_f[2];
    int32_t steps;
    uint64_t n_floats;
} state_header;

static void header_of(const tfm_trainer *t, state_header *h)
{
    const tfm_config *c = &t->m->cfg;
    memset(h, 0, sizeof *h);
    memcpy(h->magic, STATE_MAGIC, 8);
    h->version = STATE_VERSION;
    int32_t v[8] = {c->dim,        c->hidden_dim, c->n_layers, c->n_heads,
                    c->n_kv_heads, c->vocab_size, c->seq_len,  c->shared_classifier};
    memcpy(h->cfg_i, v, sizeof v);
    h->cfg_f[0] = c->norm_eps;
    h->cfg_f[1] = c->rope_theta;
    h->steps = t->steps;
    h->n_floats = t->m->n_floats;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001B3ull;
    return h;
}

#define FNV_INIT 0xCBF29CE484222325ull

tfm_status tfm_trainer_save(const tfm_trainer *t, const char *path, char *err, size_t errlen)
{
    if (!t->training)
        return bad(err, errlen, "an evaluation trainer has no optimiser state");
    state_header h;
    header_of(t, &h);
    size_t bytes = t->m->n_floats * sizeof(float);
    uint64_t sum = fnv(FNV_INIT, &h, sizeof h);
    sum = fnv(sum, t->m->data, bytes);
    sum = fnv(sum, t->mom1, bytes);
    sum = fnv(sum, t->mom2, bytes);
    tfm__afile af;
    tfm_status st = tfm__afile_open(&af, path, err, errlen);
    if (st != TFM_OK)
        return st;
    tfm__afile_write(&af, &h, sizeof h);
    tfm__afile_write(&af, t->m->data, bytes);
    tfm__afile_write(&af, t->mom1, bytes);
    tfm__afile_write(&af, t->mom2, bytes);
    tfm__afile_write(&af, &sum, sizeof sum);
    return tfm__afile_commit(&af);
}

tfm_status tfm_trainer_load(tfm_trainer *t, const char *path, char *err, size_t errlen)
{
    if (!t->training)
        return bad(err, errlen, "an evaluation trainer has no optimiser state");
    FILE *f = fopen(path, "rbe");
    if (!f) {
        if (err && errlen)
            snprintf(err, errlen, "open %s: %s", path, strerror(errno));
        return errno == ENOENT ? TFM_E_NOTFOUND : TFM_E_IO;
    }
    state_header h, want;
    header_of(t, &want);
    size_t bytes = t->m->n_floats * sizeof(float);
    tfm_status st = TFM_OK;
    float *buf = NULL;
    if (fread(&h, sizeof h, 1, f) != 1) {
        st = TFM_E_TRUNCATED;
        snprintf(err ? err : (char[1]){0}, err ? errlen : 1, "%s: truncated header", path);
        goto out;
    }
    if (memcmp(h.magic, STATE_MAGIC, 8) != 0 || h.version != STATE_VERSION) {
        st = TFM_E_FORMAT;
        snprintf(err ? err : (char[1]){0}, err ? errlen : 1, "%s: not a training state", path);
        goto out;
    }
    if (memcmp(h.cfg_i, want.cfg_i, sizeof h.cfg_i) != 0 ||
        memcmp(h.cfg_f, want.cfg_f, sizeof h.cfg_f) != 0 || h.n_floats != want.n_floats ||
        h.steps < 0) {
        st = TFM_E_SHAPE;
        snprintf(err ? err : (char[1]){0}, err ? errlen : 1,
                 "%s: saved for a different model config", path);
        goto out;
    }
    if (!(buf = malloc(3 * bytes))) {
        st = TFM_E_NOMEM;
        goto out;
    }
    uint64_t sum_file;
    if (fread(buf, 1, 3 * bytes, f) != 3 * bytes || fread(&sum_file, sizeof sum_file, 1, f) != 1) {
        st = TFM_E_TRUNCATED;
        snprintf(err ? err : (char[1]){0}, err ? errlen : 1, "%s: truncated", path);
        goto out;
    }
    uint64_t sum = fnv(fnv(FNV_INIT, &h, sizeof h), buf, 3 * bytes);
    if (sum != sum_file) {
        st = TFM_E_FORMAT;
        snprintf(err ? err : (char[1]){0}, err ? errlen : 1, "%s: checksum mismatch", path);
        goto out;
    }
    memcpy(t->m->data, buf, bytes);
    memcpy(t->mom1, (char *)buf + bytes, bytes);
    memcpy(t->mom2, (char *)buf + 2 * bytes, bytes);
    t->steps = h.steps;
out:
    free(buf);
    fclose(f);
    return st;
}
