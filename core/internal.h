/*
 * internal.h — cross-file internals of the core (tfm__ prefix): aligned
 * allocation, the compute thread pool, the vectorised kernels, and the
 * profile recording helpers.  Not installed; never included by the server.
 */
#ifndef TFM_INTERNAL_H
#define TFM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tfm/linear_attn.h"
#include "tfm/model.h"
#include "tfm/quant.h"
#include "tfm/profile.h"

/* 64-byte aligned memory (one cache line, one AVX-512 vector); NULL on
 * failure or size 0.  Freed with tfm__free. */
void *tfm__alloc(size_t bytes);
void tfm__free(void *p);

/* splitmix64 (Steele, Lea, Flood): advances *s and returns the next value;
 * a seed expands into a stream with no bad seeds.  The model's random
 * initialisations and the training data all draw from it. */
static inline uint64_t tfm__splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* ---- mixers (model_mixer.c) ----------------------------------------------
 * Layer l's ordinal among the linear layers (its wfeat and state) and among
 * the softmax layers (its KV cache layer); l's own kind is not counted. */
int tfm__linear_ordinal(const tfm_config *c, int l);
int tfm__softmax_ordinal(const tfm_config *c, int l);
/* The linear mixer's shape of a config (head_dim = head_size). */
tfm_linattn_shape tfm__linattn_shape(const tfm_config *c);
/* feature_dim's default when some layer is linear (tfm_config_defaults). */
void tfm__config_mixer_defaults(tfm_config *c);
/* NULL when linear_layers and feature_dim are valid, else the message. */
const char *tfm__config_mixer_check(const tfm_config *c);

/* ---- thread pool --------------------------------------------------------
 * n_threads compute threads: the caller of tfm__pool_run is thread 0, and
 * n_threads - 1 workers spin briefly, then sleep, between jobs.  A job is
 * n_chunks calls fn(ctx, chunk, n_chunks, thread), each chunk run exactly
 * once by whichever thread claims it (thread is that thread's index, for
 * per-thread scratch); run returns when all are done.  Only one thread may
 * call run at a time (the workspace's owner).  Nothing is allocated per job.
 * See pool.c for why chunks are claimed rather than assigned. */
typedef struct tfm__pool tfm__pool;
typedef void (*tfm__task_fn)(void *ctx, int chunk, int n_chunks, int thread);
tfm__pool *tfm__pool_create(int n_threads);
void tfm__pool_destroy(tfm__pool *p);
int tfm__pool_size(const tfm__pool *p);
void tfm__pool_run(tfm__pool *p, tfm__task_fn fn, void *ctx, int n_chunks);
/* A chunk count for `items` units of work: per_thread chunks per thread,
 * at most one per item, 1 without workers. */
int tfm__pool_chunks(const tfm__pool *p, int items, int per_thread);
/* [*lo, *hi) is part i's share of n items (of nparts), in multiples of
 * align. */
void tfm__split(int n, int i, int nparts, int align, int *lo, int *hi);

/* ---- kernels (ops.c; dot and axpy inline: attention calls them once per
 * position, where a call costs as much as the work) ------------------------ */
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* One accumulator, 16 lanes per step, as plain as llama2.c's loop: on the
 * decode path (weight rows of 288-2048 floats streamed from DRAM) this ran
 * ~1.4x faster than a two-accumulator, 32-lane unrolling, which looks
 * better on paper; the loads, not the FMA chain, set the pace.  Pass the
 * streamed operand second: it becomes the FMA's memory operand. */
static inline float tfm__dot(const float *a, const float *b, int n)
{
#if defined(__AVX512F__)
    __m512 s0 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(s0);
#else
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += a[i + k] * b[i + k];
    float s = 0;
    for (; i < n; i++)
        s += a[i] * b[i];
    for (int k = 0; k < 8; k++)
        s += acc[k];
    return s;
#endif
}

/* y += a * x */
static inline void tfm__axpy(float *y, float a, const float *x, int n)
{
    int i = 0;
#if defined(__AVX512F__)
    __m512 va = _mm512_set1_ps(a);
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
#endif
    for (; i < n; i++)
        y[i] += a * x[i];
}
void tfm__add(float *y, const float *x, int n);           /* y += x */
void tfm__scale(float *y, float a, int n);                /* y *= a */
/* o = w * x / sqrt(mean(x^2) + eps), as run.c computes it. */
void tfm__rmsnorm(float *o, const float *x, const float *w, int n, float eps);
/* In place, numerically stable (max subtracted). */
void tfm__softmax(float *x, int n);
/* Softmax's two passes, shared with the online softmax of attention.c:
 * the max of x[0..n), n >= 1; and x[i] = e^(x[i] - shift) in place,
 * returning their sum. */
float tfm__max(const float *x, int n);
float tfm__exp_sum(float *x, int n, float shift);
/* Rotates n_heads heads of head_size at one position: pairs (2i, 2i+1) by
 * the angle whose cos/sin are cos[i], sin[i] (head_size / 2 each). */
void tfm__rope(float *v, int n_heads, int head_size, const float *cos, const float *sin);
/* h = silu(h) * g, element-wise. */
void tfm__swiglu(float *h, const float *g, int n);
/* Its backward for training, hg = silu(h1) h3: dh1 and dh3 from dhg
 * (dh1 may alias dhg). */
void tfm__swiglu_backward(float *dh1, float *dh3, const float *h1, const float *h3,
                          const float *dhg, size_t n);

/* Y (B, n) = X (B, d) · W^T for W (n, d) row-major: every weight matrix
 * product of the model.  Small B (decode) streams W once through a
 * vectorised kernel split by rows over the pool; larger B (prefill, big
 * batches) calls cblas_sgemm on each thread's slice of W's rows. */
void tfm__matmul(tfm__pool *pool, float *y, const float *x, const float *w, int B, int d, int n);
/* The same through one path only, for tests and benchmarks. */
void tfm__matmul_kernel(tfm__pool *pool, float *y, const float *x, const float *w, int B, int d,
                        int n);
void tfm__matmul_sgemm(tfm__pool *pool, float *y, const float *x, const float *w, int B, int d,
                       int n);
/* Below this many rows tfm__matmul always uses the kernel; up to twice as
 * many while rows are short (d <= 512); sgemm beyond (see ops.c). */
#define TFM__GEMM_MIN_ROWS 8
int tfm__use_kernel(int B, int d);

/* n floats to int8 with one scale, max|x| / 127 (0 for an all-zero x),
 * each rounded to nearest even and clamped to [-127, 127]; returns the
 * scale (quant.c).  The activations' q8 blocks and the q8 KV cache's head
 * rows are both made by it. */
float tfm__q8_absmax(const float *x, int n, int8_t *q);

/* ---- quantised weights (model_quant.c) -------------------------------------- */

/* A model's matrices in one format (tfm/quant.h), one tfm_qmat each: per
 * layer wq, wk, wv, wo, w1, w2, w3, then the classifier; their data in
 * one buffer. */
enum { TFM__QM_WQ, TFM__QM_WK, TFM__QM_WV, TFM__QM_WO, TFM__QM_W1, TFM__QM_W2, TFM__QM_W3,
       TFM__QM_PER_LAYER };
typedef struct tfm_qweights {
    int fmt;          /* tfm_wformat */
    tfm_qmat *layer;  /* (n_layers, TFM__QM_PER_LAYER) */
    tfm_qmat cls;
    void *buf;
    size_t bytes;     /* data and scales */
} tfm_qweights;
void tfm__qweights_free(tfm_qweights *q);
/* Rows of weights one dequantised tile holds (prefill's path). */
#define TFM__QTILE_ROWS 64
/* Y (B, n) = X (B, d) · Wᵀ for a quantised W: B <= TFM__QBATCH_MAX by the
 * kernels (activations prepared into xq, tfm_qx_bytes(fmt, B, d)), more
 * by dequantised tiles of TFM__QTILE_ROWS rows (each thread its own tile
 * in tiles, n_threads x TFM__QTILE_ROWS x d floats) and sgemm. */
#define TFM__QBATCH_MAX 16
void tfm__qmatmul(tfm__pool *pool, float *y, const float *x, const tfm_qmat *w, int B, void *xq,
                  float *tiles);

/* ---- attention kernels (attention.c) --------------------------------------
 * One head at a time, row-major operands with the head's slice at column 0
 * and explicit leading dimensions, so the callers pass pointers into the
 * workspace's (R, dim) buffers and the (seq, kv_dim) cache.  Scores are
 * scaled by 1/sqrt(hs).  A kernel must be NAIVE or TILED here (resolve AUTO
 * with tfm__attn_pick first).  Nothing is allocated; scratch is the
 * caller's, tfm__attn_scratch(...) floats, never more than T * ctx. */

/* AUTO resolved for a call of T query rows over ctx keys (T = 1: decode). */
tfm_attn_kernel tfm__attn_pick(tfm_attn_kernel k, int T, int ctx);
/* Floats of caller scratch a call needs. */
size_t tfm__attn_scratch(tfm_attn_kernel k, int T, int ctx);
/* Bytes a call holds beyond its operands (scratch plus running statistics):
 * what the profile books as attn_peak_bytes. */
size_t tfm__attn_bytes(tfm_attn_kernel k, int T, int ctx);

/* Prefill, one head: out (T, hs; ldo) = causal attention of q (T, hs; ldq)
 * at positions p0 .. p0+T-1 over keys k and values v (p0+T, hs; ldkv), row
 * i seeing keys 0 .. p0+i. */
void tfm__attn_prefill(tfm_attn_kernel kern, float *out, int ldo, const float *q, int ldq,
                       const float *k, const float *v, int ldkv, int hs, int T, int p0,
                       float *scratch);
/* Decode, one head of one row: out (hs) = attention of q (hs) over keys k
 * and values v (ctx, hs; ldkv). */
void tfm__attn_decode(tfm_attn_kernel kern, float *out, const float *q, const float *k,
                      const float *v, int ldkv, int hs, int ctx, float *scratch);

/* ---- linear-attention layers in the forward (forward_linear.c) -------------
 * Workspace floats for max_rows rows (qf, kf, the prefill kernel's scratch
 * for chunks of *chunk tokens); 0 without linear layers.  Prefill mixes
 * layer l's roped q (R, dim), k and v (R, kv_dim) of R consecutive tokens
 * of st at p0.. into out (R, dim) through st's state of that layer; decode
 * mixes one row per sequence (rows_state[r] at pos[r]), each through its
 * own state.  buf is the workspace's (tfm__linear_ws_floats).  Both book
 * into prof (kind "linear"). */
size_t tfm__linear_ws_floats(const tfm_config *c, int max_rows, int *chunk);
tfm_status tfm__linear_prefill(tfm__pool *pool, tfm_profile *prof, tfm_phase ph,
                               const tfm_model *m, int l, tfm_state *st, int p0, int R,
                               const float *q, const float *k, const float *v, float *out,
                               float *buf, size_t buf_floats, int chunk);
void tfm__linear_decode(tfm__pool *pool, tfm_profile *prof, tfm_phase ph, const tfm_model *m,
                        int l, tfm_state *const *rows_state, const int *pos, int R, const float *q,
                        const float *k, const float *v, float *out, float *buf);

/* ---- profile recording --------------------------------------------------- */
static inline void tfm__prof_op(tfm_profile *p, tfm_phase ph, tfm_op_class c, tfm_component comp,
                                double t0, double flops)
{
    if (!p || !p->enabled)
        return;
    double dt = tfm_now() - t0;
    p->seconds[ph][c] += dt;
    p->flops[ph][c] += flops;
    p->comp_seconds[ph][comp] += dt;
}

static inline double tfm__prof_start(const tfm_profile *p)
{
    return p && p->enabled ? tfm_now() : 0.0;
}

/* Books attention-core work (scores, softmax, values) of one kind over
 * context ctx: its seconds and FLOPs, and `calls` calls (one per sequence
 * and layer), in the context's bucket.  The attn_* counters only: the
 * caller books the op classes. */
static inline void tfm__prof_attention(tfm_profile *p, tfm_phase ph, tfm_attn_kind k, int ctx,
                                       double dt, double flops, uint64_t calls)
{
    int b = tfm_ctx_bucket(ctx);
    p->attn_seconds[ph][b] += dt;
    p->attn_flops[ph][b] += flops;
    p->attn_calls[ph][b] += calls;
    p->attn_kind_seconds[ph][k][b] += dt;
    p->attn_kind_flops[ph][k][b] += flops;
    p->attn_kind_calls[ph][k][b] += calls;
}

/* Books the attention scratch one call held at once (a peak). */
static inline void tfm__prof_attn_peak(tfm_profile *p, tfm_phase ph, double bytes)
{
    if (bytes > p->attn_peak_bytes[ph])
        p->attn_peak_bytes[ph] = bytes;
}

/* ---- atomic file writes (checkpoint.c) -------------------------------------
 * A temporary file in the target's directory, fsync, rename over the path,
 * fsync of the directory.  The first error sticks (like ferror): later
 * writes do nothing and commit reports it, so a save is a plain sequence of
 * writes; commit removes the temporary file after any error. */
typedef struct tfm__afile {
    FILE *f;
    char *tmp;        /* "<path>.tmp.<pid>" */
    const char *path; /* borrowed */
    tfm_status st;
    char *err;
    size_t errlen;
} tfm__afile;
tfm_status tfm__afile_open(tfm__afile *af, const char *path, char *err, size_t errlen);
void tfm__afile_write(tfm__afile *af, const void *buf, size_t n);
tfm_status tfm__afile_commit(tfm__afile *af);

/* ---- training (train.c) -----------------------------------------------------
 * A forward-only trainer over a read-only model (no gradients, no
 * optimiser state): evaluation and the recall service. */
struct tfm_trainer;
tfm_status tfm__trainer_create_eval(const tfm_model *m, int max_batch, int max_seq, int n_threads,
                             struct tfm_trainer **out);
int tfm__trainer_max_batch(const struct tfm_trainer *t);
int tfm__trainer_max_seq(const struct tfm_trainer *t);

#endif /* TFM_INTERNAL_H */
