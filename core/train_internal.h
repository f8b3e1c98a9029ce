/*
 * train_internal.h — the trainer's tiled attention (train_attn.c), shared
 * with train.c.  Not installed.
 *
 * One head at a time, row-major operands with the head's slice at column 0
 * and explicit leading dimensions, as in attention.c: the trainer passes
 * pointers into its (N, d + 2 kv) qkv rows and (N, d) outputs.  Causal,
 * scores scaled by 1/sqrt(hs).  Nothing here allocates; scratch is the
 * caller's (tfm__flash_scratch floats per thread, allocated by
 * tfm_trainer_create).
 */
#ifndef TFM_TRAIN_INTERNAL_H
#define TFM_TRAIN_INTERNAL_H

#include <stddef.h>

/* Tile shape: BQ query rows by BK keys, the inference kernel's. */
#define TFM__FA_BQ 64
#define TFM__FA_BK 128

/* Floats of scratch one thread needs for sequences of up to max_T tokens:
 * two (BQ, BK) tiles (P and dS) and D (max_T). */
size_t tfm__flash_scratch(int max_T);

/* FLOPs the tiled kernels execute for one head of a T-token sequence
 * (tiles up to the diagonal only): the forward's two products, or the
 * backward's five (S recomputed, dV, dP, dQ, dK). */
double tfm__flash_flops(int T, int hs, int backward);

/* Forward, one (sequence, head): o (T, hs; ldo) = softmax(q k^T / sqrt(hs),
 * causal) v, and lse (T) = each row's log-sum-exp of its scaled scores,
 * what the backward needs instead of the (T, T) probabilities.  q (T, hs;
 * ldq), k and v (T, hs; ldkv).  scratch: at least BQ * BK floats. */
void tfm__flash_forward(float *o, int ldo, float *lse, const float *q, int ldq, const float *k,
                        const float *v, int ldkv, int hs, int T, float *scratch);

/* Backward (FlashAttention-2), one (sequence, kv head) and its `group`
 * query heads, which sit side by side: query head g's q, o, dout and dq
 * start at column g * hs of their rows, its lse at lse + g * T.
 *   dq (T, hs; lddq) for each query head is overwritten;
 *   dk, dv (T, hs; lddkv) are overwritten with the sums over the group.
 * The query heads, key blocks and query blocks run in a fixed order on the
 * calling thread, so the sums are bit-for-bit the same on every run.
 * scratch: tfm__flash_scratch(T) floats. */
void tfm__flash_backward(float *dq, int lddq, float *dk, float *dv, int lddkv, const float *dout,
                         int lddo, const float *o, int ldo, const float *lse, const float *q,
                         int ldq, const float *k, const float *v, int ldkv, int hs, int T,
                         int group, float *scratch);

#endif /* TFM_TRAIN_INTERNAL_H */
