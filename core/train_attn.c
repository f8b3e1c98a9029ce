/*
 * train_attn.c — the trainer's tiled attention: FlashAttention's forward
 * and FlashAttention-2's backward (Dao et al. 2022, Dao 2023) on the CPU,
 * linear in memory (see train_internal.h for the calling convention).
 *
 * The naive trainer keeps every head's (T, T) softmax for the backward:
 * B x heads x T^2 floats a layer, 4 GiB at B 8, 4 heads, 4 layers,
 * T 2048 (plus a (T, T) dP per thread).  Here the forward keeps only each
 * query row's log-sum-exp L = m + log l (its running max and sum of the
 * online softmax, attention.c's tiles), and the backward recomputes the
 * probabilities tile by tile:
 *
 *     D_i = rowsum(dO_i * O_i)                      (= rowsum(dP_i * P_i))
 *     per (query block, key block) tile, causal tiles only:
 *         S  = Q K^T * scale;  P = exp(S - L)       (the forward's P exactly)
 *         dV += P^T dO;  dP = dO V^T;  dS = P * (dP - D)
 *         dQ += dS K * scale;  dK += dS^T Q * scale
 *
 * Scratch is two (BQ, BK) tiles and D (T floats) per thread; the stored
 * state is L, T floats a head.  The price is recomputing S (one more
 * product: five per tile against the naive backward's four), which the
 * causal skip more than pays for: the naive kernels multiply full T x T
 * matrices and discard the upper half, the tiled ones stop at the
 * diagonal.
 *
 * Determinism: a call owns one (sequence, kv head).  Its query heads
 * accumulate into the kv head's dK and dV in head order, key block by key
 * block, query block by query block, all on one thread: no atomics, the
 * same sums in the same order whatever the thread count.
 */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "internal.h"
#include "train_internal.h"

#define BQ TFM__FA_BQ
#define BK TFM__FA_BK

static int imin(int a, int b) { return a < b ? a : b; }

size_t tfm__flash_scratch(int max_T) { return 2 * (size_t)BQ * BK + (size_t)max_T; }

double tfm__flash_flops(int T, int hs, int backward)
{
    /* the tiles each kernel runs: forward, per query block, keys up to its
     * last row; backward, per key block, query blocks from the block's
     * first row on */
    double f = 0.0;
    if (!backward)
        for (int r0 = 0; r0 < T; r0 += BQ) {
            int nq = imin(BQ, T - r0), kend = r0 + nq;
            for (int kb = 0; kb < kend; kb += BK)
                f += 4.0 * hs * nq * imin(BK, kend - kb);
        }
    else
        for (int kb = 0; kb < T; kb += BK)
            for (int qb = kb / BQ * BQ; qb < T; qb += BQ)
                f += 10.0 * hs * imin(BQ, T - qb) * imin(BK, T - kb);
    return f;
}

void tfm__flash_forward(float *o, int ldo, float *lse, const float *q, int ldq, const float *k,
                        const float *v, int ldkv, int hs, int T, float *S)
{
    float scale = 1.0f / sqrtf((float)hs);
    for (int r0 = 0; r0 < T; r0 += BQ) {
        int nq = imin(BQ, T - r0), kend = r0 + nq; /* keys the block's last row sees */
        float m[BQ], l[BQ]; /* running max and sum of each query row */
        for (int kb = 0; kb < kend; kb += BK) {
            int nk = imin(BK, kend - kb);
            /* S (nq, nk) = q[r0..] k[kb..]^T * scale */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hs, scale,
                        q + (size_t)r0 * ldq, ldq, k + (size_t)kb * ldkv, ldkv, 0.0f, S, nk);
            for (int i = 0; i < nq; i++) {
                float *s = S + (size_t)i * nk;
                int valid = imin(nk, r0 + i + 1 - kb);
                if (valid <= 0) { /* the tile row is in this row's future */
                    memset(s, 0, (size_t)nk * sizeof(float));
                    continue;
                }
                float mx = tfm__max(s, valid);
                if (kb == 0) { /* key 0 is in every row's past */
                    m[i] = mx;
                    l[i] = 0.0f;
                } else if (mx > m[i]) {
                    float a = expf(m[i] - mx);
                    l[i] *= a;
                    tfm__scale(o + (size_t)(r0 + i) * ldo, a, hs);
                    m[i] = mx;
                }
                l[i] += tfm__exp_sum(s, valid, m[i]);
                if (valid < nk)
                    memset(s + valid, 0, (size_t)(nk - valid) * sizeof(float));
            }
            /* o[r0..] (nq, hs) (+)= P v[kb..]; the first tile overwrites */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hs, nk, 1.0f, S, nk,
                        v + (size_t)kb * ldkv, ldkv, kb == 0 ? 0.0f : 1.0f,
                        o + (size_t)r0 * ldo, ldo);
        }
        for (int i = 0; i < nq; i++) {
            tfm__scale(o + (size_t)(r0 + i) * ldo, 1.0f / l[i], hs);
            lse[r0 + i] = m[i] + logf(l[i]);
        }
    }
}

/* One (query block, key block) tile of one query head; P and dS (nq, nk)
 * are the scratch tiles.  qb is at or after the key block's first row, so
 * every row of the tile sees key kb. */
static void backward_tile(float *dq, int lddq, float *dk, float *dv, int lddkv,
                          const float *dout, int lddo, const float *L, const float *D,
                          const float *q, int ldq, const float *k, const float *v, int ldkv,
                          int hs, int qb, int nq, int kb, int nk, float scale, float *P,
                          float *dS)
{
    const float *qt = q + (size_t)qb * ldq, *dot = dout + (size_t)qb * lddo;
    const float *kt = k + (size_t)kb * ldkv, *vt = v + (size_t)kb * ldkv;
    /* P = exp(Q K^T * scale - L), causal */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hs, scale, qt, ldq, kt, ldkv,
                0.0f, P, nk);
    for (int i = 0; i < nq; i++) {
        float *p = P + (size_t)i * nk;
        int valid = imin(nk, qb + i + 1 - kb);
        tfm__exp_sum(p, valid, L[qb + i]);
        if (valid < nk)
            memset(p + valid, 0, (size_t)(nk - valid) * sizeof(float));
    }
    /* dV[kb..] (nk, hs) += P^T dO[qb..] */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hs, nq, 1.0f, P, nk, dot, lddo,
                1.0f, dv + (size_t)kb * lddkv, lddkv);
    /* dP (nq, nk) = dO[qb..] V[kb..]^T; dS = P * (dP - D), zero where P is */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hs, 1.0f, dot, lddo, vt, ldkv,
                0.0f, dS, nk);
    for (int i = 0; i < nq; i++) {
        const float *p = P + (size_t)i * nk;
        float *g = dS + (size_t)i * nk, Di = D[qb + i];
        for (int j = 0; j < nk; j++)
            g[j] = p[j] * (g[j] - Di);
    }
    /* dQ[qb..] (nq, hs) += dS K[kb..] * scale;  dK[kb..] (nk, hs) += dS^T Q[qb..] * scale */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hs, nk, scale, dS, nk, kt, ldkv,
                1.0f, dq + (size_t)qb * lddq, lddq);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hs, nq, scale, dS, nk, qt, ldq, 1.0f,
                dk + (size_t)kb * lddkv, lddkv);
}

void tfm__flash_backward(float *dq, int lddq, float *dk, float *dv, int lddkv, const float *dout,
                         int lddo, const float *o, int ldo, const float *lse, const float *q,
                         int ldq, const float *k, const float *v, int ldkv, int hs, int T,
                         int group, float *scratch)
{
    float *P = scratch, *dS = scratch + (size_t)BQ * BK, *D = dS + (size_t)BQ * BK;
    float scale = 1.0f / sqrtf((float)hs);
    for (int r = 0; r < T; r++) {
        memset(dk + (size_t)r * lddkv, 0, (size_t)hs * sizeof(float));
        memset(dv + (size_t)r * lddkv, 0, (size_t)hs * sizeof(float));
    }
    for (int g = 0; g < group; g++) {
        size_t col = (size_t)g * hs;
        const float *qg = q + col, *dog = dout + col, *og = o + col, *L = lse + (size_t)g * T;
        float *dqg = dq + col;
        for (int r = 0; r < T; r++) {
            D[r] = tfm__dot(dog + (size_t)r * lddo, og + (size_t)r * ldo, hs);
            memset(dqg + (size_t)r * lddq, 0, (size_t)hs * sizeof(float));
        }
        for (int kb = 0; kb < T; kb += BK) {
            int nk = imin(BK, T - kb);
            for (int qb = kb / BQ * BQ; qb < T; qb += BQ)
                backward_tile(dqg, lddq, dk, dv, lddkv, dog, lddo, L, D, qg, ldq, k, v, ldkv, hs,
                              qb, imin(BQ, T - qb), kb, nk, scale, P, dS);
        }
    }
}
