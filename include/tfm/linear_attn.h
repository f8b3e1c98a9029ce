/*
 * tfm/linear_attn.h — causal linear attention with Based's feature map, the
 * kernels of a second token mixer (issue 14).  Standalone: not yet wired
 * into the model.
 *
 * A short tour (one layer, one sequence):
 *
 *     tfm_linattn_shape sh = {.n_heads = 8, .n_kv_heads = 2, .f = 16, .head_dim = 64};
 *     tfm_linattn_state st;
 *     void *mem = malloc(tfm_linattn_state_bytes(&sh));        // caller owns it
 *     tfm_linattn_state_init(&st, &sh, mem, tfm_linattn_state_bytes(&sh));
 *     size_t ns = tfm_linattn_prefill_scratch(&sh, TFM_LINATTN_CHUNK);
 *     float *scratch = malloc(ns * sizeof(float));              // once
 *     tfm_linattn_prefill(&st, T, TFM_LINATTN_CHUNK, q, k, v, out, scratch, ns);
 *     for (;;)                                                  // then per token
 *         tfm_linattn_decode(&st, q1, k1, v1, out1);            // O(1) in T
 *
 * The mixer.  Per head, with q_t, k_s in R^f (already projected) and v_s in
 * R^head_dim, the feature map is the 2nd-order Taylor expansion of exp
 * (Zhang et al., Arora et al. "Based"):
 *
 *     phi(x) = [ 1,  x / f^(1/4),  (x (x) x) / (sqrt(2) sqrt(f)) ]
 *              F = 1 + f + f^2 features (all f^2 products, both orders)
 *
 * so that phi(q).phi(k) = 1 + q.k/sqrt(f) + (q.k)^2/(2f) >= 1/2 > 0, and
 *
 *     y_t = sum_{s<=t} phi(q_t).phi(k_s) v_s / (sum_{s<=t} phi(q_t).phi(k_s) + eps)
 *
 * with eps = TFM_LINATTN_EPS.  The sums over s are the state: per kv head
 * S = sum phi(k_s) v_s^T (F, head_dim) and z = sum phi(k_s) (F), so decode
 * is y = phi(q)^T S / (phi(q)^T z + eps), O(F head_dim) a head whatever
 * the context length.
 *
 * Heads.  q is (T, n_heads, f); k is (T, n_kv_heads, f) and v is
 * (T, n_kv_heads, head_dim), as in Based's GQA: query head h reads the
 * state of kv head h / (n_heads / n_kv_heads), so the state is per KV
 * head (n_kv_heads = n_heads is plain multi-head).  All tensors are dense
 * row-major, token-major: element (t, h, i) at (t * heads + h) * width + i.
 *
 * Prefill is chunked (tfm_linattn_prefill): per chunk of C tokens the
 * intra-chunk weights A = mask(phi(Q) phi(K)^T) are computed as the
 * polynomial of Q K^T (C x C x f by sgemm, not C x C x F), then
 * out = (A V + phi(Q) S) / (A 1 + phi(Q) z + eps) and S += phi(K)^T V,
 * z += sum phi(K).  Prefill then decode, prefill in pieces, and
 * token-by-token decode give the same outputs to float rounding.
 *
 * Memory and threads.  Nothing here allocates: the state's storage and
 * every scratch buffer belong to the caller, sized by the *_bytes and
 * *_scratch functions.  The functions keep no globals; a state (and a
 * scratch buffer) is used by one thread at a time.  Bad arguments give
 * TFM_E_INVALID, a too small buffer TFM_E_RANGE; nothing aborts.
 */
#ifndef TFM_LINEAR_ATTN_H
#define TFM_LINEAR_ATTN_H

#include <stddef.h>

#include "tfm/status.h"

#define TFM_LINATTN_EPS 1e-6f        /* added to the denominator (>= 1/2 a token) */
#define TFM_LINATTN_CHUNK 64         /* the default prefill chunk */
#define TFM_LINATTN_MAX_CHUNK 1024   /* chunks are 1 .. this many tokens */
#define TFM_LINATTN_MAX_F 256        /* feature dims are 1 .. this */
#define TFM_LINATTN_MAX_HEAD_DIM 4096
#define TFM_LINATTN_MAX_HEADS 4096

typedef struct tfm_linattn_shape {
    int n_heads;    /* query heads */
    int n_kv_heads; /* key/value heads (and states); divides n_heads */
    int f;          /* projected feature dim of q and k per head (Based: 16) */
    int head_dim;   /* width of v and of the output per head */
} tfm_linattn_shape;

/* TFM_OK when every field is in range and n_kv_heads divides n_heads,
 * else TFM_E_INVALID (also for sh NULL). */
tfm_status tfm_linattn_shape_check(const tfm_linattn_shape *sh);

/* F = 1 + f + f^2, the width of phi; 0 when f is outside 1 .. MAX_F. */
size_t tfm_linattn_feature_dim(int f);

/* phi (F) = phi(x (f)) as above, the quadratic block row-major:
 * phi[1 + f + a*f + b] = x_a x_b / (sqrt(2) sqrt(f)).  Borrows both.
 * TFM_E_INVALID on NULL or f out of range. */
tfm_status tfm_linattn_feature_map(const float *x, int f, float *phi);

/* ---- the recurrent state of one sequence in one layer ------------------- */

typedef struct tfm_linattn_state {
    tfm_linattn_shape shape;
    float *S;    /* (n_kv_heads, F, head_dim) sum phi(k) v^T; points into mem */
    float *z;    /* (n_kv_heads, F)           sum phi(k);     points into mem */
    long n_tokens; /* tokens absorbed since the last reset */
} tfm_linattn_state;

/* Bytes of state: 4 * n_kv_heads * F * (head_dim + 1); 0 for a bad shape.
 * Independent of the context length. */
size_t tfm_linattn_state_bytes(const tfm_linattn_shape *sh);

/* Lays a state over mem (caller-owned, at least state_bytes, 4-byte
 * aligned; it must outlive the state) and resets it.  Nothing to deinit:
 * free mem when done.  TFM_E_INVALID on NULL, a bad shape or misaligned
 * mem; TFM_E_RANGE when bytes is too small. */
tfm_status tfm_linattn_state_init(tfm_linattn_state *st, const tfm_linattn_shape *sh, void *mem,
                                  size_t bytes);
/* Back to the empty prefix (S = 0, z = 0, n_tokens = 0). */
void tfm_linattn_state_reset(tfm_linattn_state *st);
/* dst := src (a forked sequence); TFM_E_INVALID when the shapes differ. */
tfm_status tfm_linattn_state_copy(tfm_linattn_state *dst, const tfm_linattn_state *src);

/* ---- inference ------------------------------------------------------------ */

/* Floats of scratch tfm_linattn_prefill needs for chunks of `chunk`
 * tokens: C (2F + C + 1), C = chunk; 0 for a bad shape or chunk. */
size_t tfm_linattn_prefill_scratch(const tfm_linattn_shape *sh, int chunk);

/* T tokens continuing the state's prefix; updates the state.
 *   q   (T, n_heads, f)           borrowed
 *   k   (T, n_kv_heads, f)        borrowed
 *   v   (T, n_kv_heads, head_dim) borrowed
 *   out (T, n_heads, head_dim)    written; must not overlap the inputs
 *   scratch (scratch_floats)      caller's, >= prefill_scratch(chunk)
 * T = 0 is a no-op.  TFM_E_INVALID on NULL pointers, T < 0, chunk outside
 * 1 .. MAX_CHUNK; TFM_E_RANGE when the scratch is too small.  The state is
 * untouched on error. */
tfm_status tfm_linattn_prefill(tfm_linattn_state *st, int T, int chunk, const float *q,
                               const float *k, const float *v, float *out, float *scratch,
                               size_t scratch_floats);

/* One token: S += phi(k) v^T, z += phi(k), then out = phi(q)^T S /
 * (phi(q)^T z + eps) per head.  q (n_heads, f), k (n_kv_heads, f),
 * v (n_kv_heads, head_dim), out (n_heads, head_dim); no scratch.
 * TFM_E_INVALID on NULL. */
tfm_status tfm_linattn_decode(tfm_linattn_state *st, const float *q, const float *k,
                              const float *v, float *out);

/* The plain quadratic form from an empty state, in double: for every t and
 * every s <= t, phi(q_t).phi(k_s) summed feature by feature over all F
 * features (not the closed form).  out (T, n_heads, head_dim) in double.
 * O(T^2 F) time, no scratch: for tests.  TFM_E_INVALID on bad arguments. */
tfm_status tfm_linattn_reference(const tfm_linattn_shape *sh, int T, const float *q,
                                 const float *k, const float *v, double *out);

/* ---- training ------------------------------------------------------------- */

/* Floats of scratch tfm_linattn_backward needs for one sequence of up to T
 * tokens:  ceil(T / C) F (head_dim + 1)      the state before each chunk
 *        + F (head_dim + 1)                  dS, dz from later chunks
 *        + C (3F + 3C + 2 head_dim + 2)      one chunk's working set
 * with C = min(chunk, T) (the first term is what makes it O(T)); 0 for bad
 * arguments. */
size_t tfm_linattn_backward_scratch(const tfm_linattn_shape *sh, int T, int chunk);

/* The backward of one sequence's prefill from an empty state: given the
 * forward's q, k, v (shapes as in prefill) and dout (T, n_heads, head_dim),
 * ACCUMULATES (+=, llm.c's convention: zero them first) dq (T, n_heads, f),
 * dk (T, n_kv_heads, f), dv (T, n_kv_heads, head_dim).  Recomputes the
 * forward (it needs no saved activations): one sweep over the chunks keeps
 * the state before each, a reverse sweep carries dS = sum over later
 * queries of phi(q) dN^T back to earlier keys.  Linear in T in time and
 * memory.  B sequences: B calls (each with its own scratch, so one a
 * thread).  Errors as prefill. */
tfm_status tfm_linattn_backward(const tfm_linattn_shape *sh, int T, int chunk, const float *q,
                                const float *k, const float *v, const float *dout, float *dq,
                                float *dk, float *dv, float *scratch, size_t scratch_floats);

/* ---- op accounting (a multiply-add counts 2) ---------------------------- */

/* FLOPs tfm_linattn_prefill performs for T tokens in chunks of `chunk`
 * (what its loops and sgemm calls execute, full C x C squares included);
 * independent of the state's prefix.  -1 for bad arguments. */
double tfm_linattn_flops(const tfm_linattn_shape *sh, int T, int chunk);
/* FLOPs of one tfm_linattn_decode; -1 for a bad shape. */
double tfm_linattn_decode_flops(const tfm_linattn_shape *sh);
/* FLOPs of one tfm_linattn_backward of T tokens (its recomputed forward
 * included); -1 for bad arguments. */
double tfm_linattn_backward_flops(const tfm_linattn_shape *sh, int T, int chunk);

#endif /* TFM_LINEAR_ATTN_H */
