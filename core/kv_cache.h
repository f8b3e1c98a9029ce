/*
 * kv_cache.h — cross-file internals of the KV cache in bf16 or q8
 * (core/kv_cache.c; formats in tfm/model.h): a view of one kv head's rows,
 * the row conversions the forward writes with, and the dot products and
 * sums the decode kernels read them with (the rows' widening is in
 * attention.c, which reads four rows or a 16-lane slice at a time).
 *
 * A view (tfm__kv) is one kv head of one layer: position p's row of hs
 * values starts at element p * ld of data (ld = kv_dim, the head's offset
 * already applied) and, in q8, its scale is scale[p * lds].  The kernels
 * below work on one row (attention.c's fallback for rows left over from
 * its blocks of four); inline for the same reason as tfm__dot.  AVX-512F
 * only (bf16 widened by a shift, int8 by vpmovsxbd); a plain loop
 * otherwise and for the tail of a head size that is not a multiple of 16.
 */
#ifndef TFM_KV_CACHE_H
#define TFM_KV_CACHE_H

#include <string.h>

#include "internal.h"

typedef struct tfm__kv {
    tfm_kv_format fmt;
    const void *data;   /* row 0 of the head: float, uint16_t (bf16) or int8_t */
    const float *scale; /* q8: row 0's scale; else NULL */
    size_t ld;          /* elements between positions (kv_dim) */
    size_t lds;         /* q8: scales between positions (n_kv_heads) */
} tfm__kv;

/* The view of kv head h of cache layer l (the softmax ordinal: the layer
 * itself when no layer is linear) of st's keys (values: 1) */
tfm__kv tfm__kv_head(const tfm_state *st, int values, int l, int h);

/* Converts row (kv_dim floats: n_kv_heads heads of hs) into st's keys
 * (values: 1) of layer l at position pos, in st's format.  No allocation. */
void tfm__kv_store(tfm_state *st, int values, int l, int pos, const float *row);

/* Rows p0 .. p0+n-1 of a view as float32 into out (n, hs), contiguous:
 * prefill's key and value tiles, and the tests' reference. */
void tfm__kv_load_rows(const tfm__kv *v, int p0, int n, int hs, float *out);

/* ---- attention over a view (attention.c) ----------------------------------
 * As tfm__attn_prefill and tfm__attn_decode (internal.h), with the keys
 * and values read through views in any format (f32 views work too: the
 * tests' way to compare).  Prefill also takes tile, tfm__attn_kv_tile_floats
 * (hs) floats of the caller's: one key block and one value block as float32.
 * Decode needs no tile: rows are read in their format. */
size_t tfm__attn_kv_tile_floats(int hs);
void tfm__attn_prefill_kv(tfm_attn_kernel kern, float *out, int ldo, const float *q, int ldq,
                          const tfm__kv *k, const tfm__kv *v, int hs, int T, int p0,
                          float *scratch, float *tile);
void tfm__attn_decode_kv(tfm_attn_kernel kern, float *out, const float *q, const tfm__kv *k,
                         const tfm__kv *v, int hs, int ctx, float *scratch);

static inline float tfm__bf16_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* a (n floats) · b (n bf16) */
static inline float tfm__dot_bf16(const float *a, const uint16_t *b, int n)
{
    int i = 0;
    float s = 0.0f;
#if defined(__AVX512F__)
    __m512 s0 = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(b + i)));
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)),
                             s0);
    }
    s = _mm512_reduce_add_ps(s0);
#endif
    for (; i < n; i++)
        s += a[i] * tfm__bf16_f32(b[i]);
    return s;
}

/* a (n floats) · b (n int8), unscaled */
static inline float tfm__dot_i8(const float *a, const int8_t *b, int n)
{
    int i = 0;
    float s = 0.0f;
#if defined(__AVX512F__)
    __m512 s0 = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + i))));
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), w, s0);
    }
    s = _mm512_reduce_add_ps(s0);
#endif
    for (; i < n; i++)
        s += a[i] * (float)b[i];
    return s;
}

#endif
