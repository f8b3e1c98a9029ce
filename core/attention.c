/*
 * attention.c — the attention kernels, one head at a time: naive and tiled,
 * for prefill (a chunk of query rows, causal) and decode (one query row).
 *
 * naive   the lecture's formula as written: the head's score matrix
 *         S = Q K^T / sqrt(hs) over the whole context by one sgemm, a
 *         causal mask and softmax per row, then S V by a second sgemm.  S is
 *         (T, ctx): scratch grows with the context, O(T * ctx).
 * tiled   FlashAttention's idea (Dao et al. 2022) on the CPU.  Query rows go
 *         in blocks of BQ, keys in blocks of BK.  For each (query block,
 *         key block) pair one sgemm gives the (BQ, BK) score tile; each row
 *         keeps a running max m and running sum l of e^(s - m); when a tile
 *         raises a row's max, the row's output accumulator and sum are
 *         rescaled by e^(m_old - m_new) before the tile's e^(s - m) V is
 *         added by a second sgemm (beta 1).  One division by l at the end.
 *         Scratch is the tile plus m and l: O(BQ * BK), whatever the context.
 *         Causality costs nothing beyond the diagonal: a query block stops
 *         at its own last key, so the masked key blocks are never computed
 *         (the naive kernel computes the chunk's masked triangle and
 *         discards it), and only tiles that straddle the diagonal mask
 *         per row.
 *
 * Both do O(T * ctx * hs) arithmetic (naive plus the chunk's masked
 * triangle); they differ in memory traffic (naive writes and rereads a
 * (T, ctx) matrix three times: sgemm, softmax, sgemm) and in call overhead
 * (tiled makes two small sgemm calls and T row passes per tile).  Numbers and the AUTO rule: see
 * tfm__attn_pick below.
 *
 * Decode has one query row, so "naive" is a ctx-long score row (dots,
 * softmax, axpys) and "tiled" the same online softmax over BK keys at a time
 * with a BK-float score block: the row never exists in full.
 *
 * A cache in bf16 or q8 (kv_cache.c) goes through the *_kv entry points:
 * decode reads each key and value row in its format (four rows' scores at
 * a time, the weighted values a 16-lane slice at a time: see scores_kv; a
 * q8 row's scale multiplies its score, and the softmax weight of its
 * value); prefill dequantises one key
 * block and its value block (BK rows each) into the caller's tile and runs
 * the same sgemms over it: the naive kernel builds its score rows block by
 * block, the tiled kernel converts the block it is about to use.  Never a
 * float copy of the whole cache.  The float32 entry points are the code
 * they were.
 *
 * Nothing here allocates: the caller passes scratch (tfm__attn_scratch
 * floats, at most T * ctx, so the workspace's (max_rows, max_ctx) slot per
 * thread fits either kernel).  The running statistics live on the stack
 * (2 * BQ floats).
 */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "internal.h"
#include "kv_cache.h"

/* Tile shape (see tfm__attn_pick): BQ * BK floats = 32 KiB, an L1-sized
 * score tile. */
#define BQ 64  /* query rows per tile */
#define BK 128 /* keys per tile */

const char *tfm_attn_kernel_name(tfm_attn_kernel k)
{
    static const char *names[] = {"auto", "naive", "tiled"};
    return (unsigned)k <= TFM_ATTN_TILED ? names[k] : "unknown";
}

/* Measured on the 15M model's heads (6 x 48), one thread, medians of 5-21
 * runs interleaving the kernels, ms for the attention of a whole N-token
 * prompt, all heads (AMD EPYC with AVX-512, OpenBLAS 0.3.21):
 *
 *               chunks of 256 rows (server)     one chunk of N rows (attn CLI)
 *        N      naive    tiled   naive/tiled     naive     tiled   naive/tiled
 *      128       0.22     0.17      1.25          0.24      0.19      1.24
 *      512       3.0      2.4       1.27          3.8       2.4       1.62
 *     1024      11.6     10.7       1.09         16.9       9.6       1.77
 *     4096       156      142       1.10          346       154       2.25
 *     8192       623      583       1.07         1249       562       2.22
 *
 * (4 heads x 64: the same picture, 1.0x at 4096-8192 in 256-row chunks.)
 * Both run at ~70 GFLOP/s of sgemm; tiled wins by skipping each chunk's
 * masked triangle, which the naive kernel computes and throws away: half
 * the work of a one-chunk prompt, a large share of short ones.  In 256-row
 * chunks at long contexts the triangle is a sliver and the two are within
 * 10%.  Below one tile (ctx <= 64) they are within noise (0.9-1.1x).  So
 * for prefill there is no crossover: AUTO is tiled.  Decode (one row,
 * T = 1) measured naive 2-3% faster at every length from 16 to 8192 keys
 * (tiled pays a call and a rescale per block; the naive score row is at
 * most 32 KiB at 8192 keys, so tiling saves no traffic), so AUTO keeps the
 * single-row path there, and for one-row prefill chunks, the same
 * computation.  Tile shapes from 64x128 to 256x256 measured within noise of
 * each other; 64x128 is the smallest. */
tfm_attn_kernel tfm__attn_pick(tfm_attn_kernel k, int T, int ctx)
{
    if (k == TFM_ATTN_NAIVE || k == TFM_ATTN_TILED)
        return k;
    (void)ctx;
    return T == 1 ? TFM_ATTN_NAIVE : TFM_ATTN_TILED;
}

static int imin(int a, int b) { return a < b ? a : b; }

/* One decode row's online softmax over a block of nk scores s: the
 * running max *m and sum *l, the output (hs) rescaled when the max grows
 * (block 0 starts them).  The caller then adds the block's weighted values. */
static void online_block(float *s, int nk, int first, float *m, float *l, float *out, int hs)
{
    float mx = tfm__max(s, nk);
    if (first) {
        *m = mx;
    } else if (mx > *m) {
        float a = expf(*m - mx);
        *l *= a;
        tfm__scale(out, a, hs);
        *m = mx;
    }
    *l += tfm__exp_sum(s, nk, *m);
}

size_t tfm__attn_scratch(tfm_attn_kernel k, int T, int ctx)
{
    if (k == TFM_ATTN_TILED)
        return (size_t)imin(T, BQ) * (size_t)imin(ctx, BK);
    return (size_t)T * (size_t)ctx;
}

size_t tfm__attn_bytes(tfm_attn_kernel k, int T, int ctx)
{
    size_t stats = k == TFM_ATTN_TILED ? 2 * (size_t)imin(T, BQ) : 0;
    return (tfm__attn_scratch(k, T, ctx) + stats) * sizeof(float);
}

/* ---- prefill -------------------------------------------------------------- */

static void prefill_naive(float *out, int ldo, const float *q, int ldq, const float *k,
                          const float *v, int ldkv, int hs, int T, int p0, float *S)
{
    int ctx = p0 + T;
    /* S (T, ctx) = q (T, hs) · k^T / sqrt(hs) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, ctx, hs, 1.0f / sqrtf((float)hs), q,
                ldq, k, ldkv, 0.0f, S, ctx);
    for (int r = 0; r < T; r++) {
        float *row = S + (size_t)r * ctx;
        int valid = p0 + r + 1; /* causal: keys 0 .. p0 + r */
        tfm__softmax(row, valid);
        memset(row + valid, 0, (size_t)(ctx - valid) * sizeof(float));
    }
    /* out (T, hs) = S · v (ctx, hs) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, ctx, 1.0f, S, ctx, v, ldkv,
                0.0f, out, ldo);
}

/* Query rows [r0, r0 + nq) of a chunk (nq <= BQ), every key block up to the
 * block's last key. */
static void prefill_tile_rows(float *out, int ldo, const float *q, int ldq, const float *k,
                              const float *v, int ldkv, int hs, int p0, int r0, int nq, float *S,
                              const tfm__kv *qk, const tfm__kv *qv, float *tile)
{
    float m[BQ], l[BQ]; /* running max and sum of each query row */
    float scale = 1.0f / sqrtf((float)hs);
    int kend = p0 + r0 + nq; /* keys the block's last row sees */
    for (int kb = 0; kb < kend; kb += BK) {
        int nk = imin(BK, kend - kb);
        const float *kk, *vv;
        int ld = hs;
        if (qk) { /* a bf16 or q8 cache: this block's keys and values as floats */
            tfm__kv_load_rows(qk, kb, nk, hs, tile);
            tfm__kv_load_rows(qv, kb, nk, hs, tile + (size_t)BK * hs);
            kk = tile;
            vv = tile + (size_t)BK * hs;
        } else {
            kk = k + (size_t)kb * ldkv;
            vv = v + (size_t)kb * ldkv;
            ld = ldkv;
        }
        /* S (nq, nk) = q[r0..] · k[kb..]^T / sqrt(hs) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hs, scale,
                    q + (size_t)r0 * ldq, ldq, kk, ld, 0.0f, S, nk);
        for (int i = 0; i < nq; i++) {
            float *s = S + (size_t)i * nk;
            int valid = imin(nk, p0 + r0 + i + 1 - kb); /* causal within the tile */
            if (valid <= 0) { /* the whole tile row is in this row's future */
                memset(s, 0, (size_t)nk * sizeof(float));
                continue;
            }
            float mx = tfm__max(s, valid);
            if (kb == 0) { /* key 0 is in every row's past: m, l start here */
                m[i] = mx;
                l[i] = 0.0f;
            } else if (mx > m[i]) {
                float a = expf(m[i] - mx);
                l[i] *= a;
                tfm__scale(out + (size_t)(r0 + i) * ldo, a, hs);
                m[i] = mx;
            }
            l[i] += tfm__exp_sum(s, valid, m[i]);
            if (valid < nk)
                memset(s + valid, 0, (size_t)(nk - valid) * sizeof(float));
        }
        /* out[r0..] (nq, hs) (+)= P (nq, nk) · v[kb..] (nk, hs); the first
         * tile overwrites, so out needs no clearing */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hs, nk, 1.0f, S, nk, vv, ld,
                    kb == 0 ? 0.0f : 1.0f, out + (size_t)r0 * ldo, ldo);
    }
    for (int i = 0; i < nq; i++)
        tfm__scale(out + (size_t)(r0 + i) * ldo, 1.0f / l[i], hs);
}

static void prefill_tiled(float *out, int ldo, const float *q, int ldq, const float *k,
                          const float *v, int ldkv, int hs, int T, int p0, float *S)
{
    for (int r0 = 0; r0 < T; r0 += BQ)
        prefill_tile_rows(out, ldo, q, ldq, k, v, ldkv, hs, p0, r0, imin(BQ, T - r0), S, NULL,
                          NULL, NULL);
}

void tfm__attn_prefill(tfm_attn_kernel kern, float *out, int ldo, const float *q, int ldq,
                       const float *k, const float *v, int ldkv, int hs, int T, int p0,
                       float *scratch)
{
    if (kern == TFM_ATTN_TILED)
        prefill_tiled(out, ldo, q, ldq, k, v, ldkv, hs, T, p0, scratch);
    else
        prefill_naive(out, ldo, q, ldq, k, v, ldkv, hs, T, p0, scratch);
}

/* ---- decode --------------------------------------------------------------- */

static void decode_naive(float *out, const float *q, const float *k, const float *v, int ldkv,
                         int hs, int ctx, float *att)
{
    float scale = 1.0f / sqrtf((float)hs);
    for (int p = 0; p < ctx; p++)
        att[p] = tfm__dot(q, k + (size_t)p * ldkv, hs) * scale;
    tfm__softmax(att, ctx);
    memset(out, 0, (size_t)hs * sizeof(float));
    for (int p = 0; p < ctx; p++)
        tfm__axpy(out, att[p], v + (size_t)p * ldkv, hs);
}

static void decode_tiled(float *out, const float *q, const float *k, const float *v, int ldkv,
                         int hs, int ctx, float *s)
{
    float scale = 1.0f / sqrtf((float)hs), m = 0.0f, l = 0.0f;
    memset(out, 0, (size_t)hs * sizeof(float));
    for (int kb = 0; kb < ctx; kb += BK) {
        int nk = imin(BK, ctx - kb);
        const float *kk = k + (size_t)kb * ldkv, *vv = v + (size_t)kb * ldkv;
        for (int j = 0; j < nk; j++)
            s[j] = tfm__dot(q, kk + (size_t)j * ldkv, hs) * scale;
        online_block(s, nk, kb == 0, &m, &l, out, hs);
        for (int j = 0; j < nk; j++)
            tfm__axpy(out, s[j], vv + (size_t)j * ldkv, hs);
    }
    tfm__scale(out, 1.0f / l, hs);
}

void tfm__attn_decode(tfm_attn_kernel kern, float *out, const float *q, const float *k,
                      const float *v, int ldkv, int hs, int ctx, float *scratch)
{
    if (kern == TFM_ATTN_TILED)
        decode_tiled(out, q, k, v, ldkv, hs, ctx, scratch);
    else
        decode_naive(out, q, k, v, ldkv, hs, ctx, scratch);
}

/* ---- a bf16 or q8 cache ----------------------------------------------------- */

size_t tfm__attn_kv_tile_floats(int hs) { return 2 * (size_t)BK * (size_t)hs; }

/* The naive kernel's score rows and weighted sum one key block at a time:
 * the same S (T, ctx) and the same softmax, the sgemms split by columns
 * (scores) and by the inner dimension (values, beta 1 after the first). */
static void prefill_naive_kv(float *out, int ldo, const float *q, int ldq, const tfm__kv *k,
                             const tfm__kv *v, int hs, int T, int p0, float *S, float *tile)
{
    int ctx = p0 + T;
    float scale = 1.0f / sqrtf((float)hs);
    for (int kb = 0; kb < ctx; kb += BK) {
        int nk = imin(BK, ctx - kb);
        tfm__kv_load_rows(k, kb, nk, hs, tile);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, nk, hs, scale, q, ldq, tile, hs,
                    0.0f, S + kb, ctx);
    }
    for (int r = 0; r < T; r++) {
        float *row = S + (size_t)r * ctx;
        int valid = p0 + r + 1;
        tfm__softmax(row, valid);
        memset(row + valid, 0, (size_t)(ctx - valid) * sizeof(float));
    }
    for (int kb = 0; kb < ctx; kb += BK) {
        int nk = imin(BK, ctx - kb);
        tfm__kv_load_rows(v, kb, nk, hs, tile);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, nk, 1.0f, S + kb, ctx, tile,
                    hs, kb == 0 ? 0.0f : 1.0f, out, ldo);
    }
}

void tfm__attn_prefill_kv(tfm_attn_kernel kern, float *out, int ldo, const float *q, int ldq,
                          const tfm__kv *k, const tfm__kv *v, int hs, int T, int p0,
                          float *scratch, float *tile)
{
    if (kern == TFM_ATTN_TILED) {
        for (int r0 = 0; r0 < T; r0 += BQ)
            prefill_tile_rows(out, ldo, q, ldq, NULL, NULL, 0, hs, p0, r0, imin(BQ, T - r0),
                              scratch, k, v, tile);
    } else {
        prefill_naive_kv(out, ldo, q, ldq, k, v, hs, T, p0, scratch, tile);
    }
}

/* Decode over a bf16 or q8 cache.  The plain loops (a dot product and an
 * axpy per position, as decode_naive) measured ~1.8 and ~4.3 ns a
 * position on 48-wide heads, the axpy bound by its chain through memory:
 * each position's out += w v reloads what the last one stored.  So, with
 * AVX-512: scores take four rows at a time and reduce their four sums
 * together (about 1.1 ns a position), and the weighted sum keeps each
 * 16-lane slice of out in two registers (even and odd rows) over a block
 * of BK rows, which stays in L1 while the slices pass over it.  The plain
 * loops are the fallback and, through tfm__kv_load_rows and the float
 * kernels, the tests' reference. */
static float kv_elem(const tfm__kv *v, size_t p, int i)
{
    if (v->fmt == TFM_KV_BF16)
        return tfm__bf16_f32(((const uint16_t *)v->data)[p * v->ld + (size_t)i]);
    return (float)((const int8_t *)v->data)[p * v->ld + (size_t)i];
}

#if defined(__AVX512F__)
static inline __m512 widen16(const tfm__kv *v, size_t p, int i)
{
    if (v->fmt == TFM_KV_BF16) {
        const uint16_t *x = (const uint16_t *)v->data + p * v->ld + (size_t)i;
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)x));
        return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
    const int8_t *x = (const int8_t *)v->data + p * v->ld + (size_t)i;
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)x)));
}

/* The four vectors' lane sums into out[0..4). */
static inline void hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3, float *out)
{
    /* halves: [a0 q0+q2, a0 q1+q3, a1 q0+q2, a1 q1+q3] and the same of a2, a3 */
    __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
    __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
    /* 128-bit lane k: vector k's four partial sums */
    __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88),
                             _mm512_shuffle_f32x4(s01, s23, 0xDD));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));
    float tmp[16];
    _mm512_storeu_ps(tmp, t);
    out[0] = tmp[0], out[1] = tmp[4], out[2] = tmp[8], out[3] = tmp[12];
}
#endif

/* s[j] = q · key(p0 + j) * scale for j < n, reading the row in its format. */
static void scores_kv(float *s, const float *q, const tfm__kv *k, int p0, int n, int hs,
                      float scale)
{
    if (k->fmt == TFM_KV_F32) {
        const float *x = (const float *)k->data + (size_t)p0 * k->ld;
        for (int j = 0; j < n; j++)
            s[j] = tfm__dot(q, x + (size_t)j * k->ld, hs) * scale;
        return;
    }
    int j = 0;
#if defined(__AVX512F__)
    int hv = hs & ~15; /* the vector part; the rest per row below */
    for (; j + 4 <= n; j += 4) {
        size_t p = (size_t)(p0 + j);
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < hv; i += 16) {
            __m512 qv = _mm512_loadu_ps(q + i);
            a0 = _mm512_fmadd_ps(qv, widen16(k, p, i), a0);
            a1 = _mm512_fmadd_ps(qv, widen16(k, p + 1, i), a1);
            a2 = _mm512_fmadd_ps(qv, widen16(k, p + 2, i), a2);
            a3 = _mm512_fmadd_ps(qv, widen16(k, p + 3, i), a3);
        }
        hsum4(a0, a1, a2, a3, s + j);
        for (int r = 0; r < 4; r++)
            for (int i = hv; i < hs; i++)
                s[j + r] += q[i] * kv_elem(k, p + (size_t)r, i);
    }
#endif
    if (k->fmt == TFM_KV_BF16) {
        const uint16_t *x = (const uint16_t *)k->data + (size_t)p0 * k->ld;
        for (; j < n; j++)
            s[j] = tfm__dot_bf16(q, x + (size_t)j * k->ld, hs);
    } else {
        const int8_t *x = (const int8_t *)k->data + (size_t)p0 * k->ld;
        for (; j < n; j++)
            s[j] = tfm__dot_i8(q, x + (size_t)j * k->ld, hs);
    }
    if (k->fmt == TFM_KV_Q8) {
        const float *sc = k->scale + (size_t)p0 * k->lds;
        for (j = 0; j < n; j++)
            s[j] *= sc[(size_t)j * k->lds] * scale;
    } else {
        for (j = 0; j < n; j++)
            s[j] *= scale;
    }
}

/* out += sum_j w[j] * value(p0 + j) for j < n. */
static void values_kv(float *out, const float *w, const tfm__kv *v, int p0, int n, int hs)
{
    if (v->fmt == TFM_KV_F32) {
        const float *x = (const float *)v->data + (size_t)p0 * v->ld;
        for (int j = 0; j < n; j++)
            tfm__axpy(out, w[j], x + (size_t)j * v->ld, hs);
        return;
    }
    float wb[BK]; /* q8: the weights times each row's scale */
    for (int jb = 0; jb < n; jb += BK) {
        int nb = imin(BK, n - jb);
        size_t p = (size_t)(p0 + jb);
        const float *ww = w + jb;
        if (v->fmt == TFM_KV_Q8) {
            const float *sc = v->scale + p * v->lds;
            for (int j = 0; j < nb; j++)
                wb[j] = ww[j] * sc[(size_t)j * v->lds];
            ww = wb;
        }
        int i = 0;
#if defined(__AVX512F__)
        for (; i + 16 <= hs; i += 16) {
            __m512 a0 = _mm512_loadu_ps(out + i), a1 = _mm512_setzero_ps();
            int j = 0;
            for (; j + 2 <= nb; j += 2) {
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(ww[j]), widen16(v, p + (size_t)j, i), a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(ww[j + 1]), widen16(v, p + (size_t)j + 1, i),
                                     a1);
            }
            if (j < nb)
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(ww[j]), widen16(v, p + (size_t)j, i), a0);
            _mm512_storeu_ps(out + i, _mm512_add_ps(a0, a1));
        }
#endif
        for (; i < hs; i++) {
            float acc = 0.0f;
            for (int j = 0; j < nb; j++)
                acc += ww[j] * kv_elem(v, p + (size_t)j, i);
            out[i] += acc;
        }
    }
}

void tfm__attn_decode_kv(tfm_attn_kernel kern, float *out, const float *q, const tfm__kv *k,
                         const tfm__kv *v, int hs, int ctx, float *scratch)
{
    float scale = 1.0f / sqrtf((float)hs);
    memset(out, 0, (size_t)hs * sizeof(float));
    if (kern != TFM_ATTN_TILED) { /* the whole score row, as decode_naive */
        scores_kv(scratch, q, k, 0, ctx, hs, scale);
        tfm__softmax(scratch, ctx);
        values_kv(out, scratch, v, 0, ctx, hs);
        return;
    }
    float m = 0.0f, l = 0.0f; /* decode_tiled's online softmax */
    for (int kb = 0; kb < ctx; kb += BK) {
        int nk = imin(BK, ctx - kb);
        scores_kv(scratch, q, k, kb, nk, hs, scale);
        online_block(scratch, nk, kb == 0, &m, &l, out, hs);
        values_kv(out, scratch, v, kb, nk, hs);
    }
    tfm__scale(out, 1.0f / l, hs);
}
