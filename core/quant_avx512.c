/*
 * quant_avx512.c — the bf16, q8 and q4 products on AVX-512 (tfm/quant.h).
 *
 * Each function is compiled for the instructions it uses (a target
 * attribute, with gcc and clang alike), whatever the build's -march, and
 * quant.c calls it only when the CPU says it has them (cpuid and the OS's
 * saved register state, read once here).
 *
 * q8 and q4: per block of 32, the activations' int8 |x| times the weights
 * with x's sign (vpsignb) make the unsigned-by-signed products vpdpbusd
 * sums into 8 int32 (the same integer dot product as the reference), then
 * one fma by the block's two scales, the weight's fp16 one converted eight
 * at a time (vcvtph2ps).  bf16: vdpbf16ps, 32 pairs an instruction, two
 * accumulators.  A row of weights is read once for all B activation rows
 * (it stays in L1 across them), so small batches share the bandwidth.
 */
#include <cpuid.h>
#include <immintrin.h>
#include <string.h>

#include "quant_internal.h"

#define KERNEL __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")))

/* ---- the CPU ------------------------------------------------------------------- */

typedef struct cpu {
    int checked, vnni, bf16;
} cpu;

static cpu the_cpu;

static unsigned long long xcr0(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static void check_cpu(void)
{
    unsigned a, b, c, d;
    cpu r = {1, 0, 0};
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 27)) /* OSXSAVE */ &&
        (c & (1u << 29)) /* F16C */ && (c & (1u << 12)) /* FMA */ &&
        (xcr0() & 0xe6) == 0xe6 /* the OS saves xmm, ymm, opmask and zmm */ &&
        __get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        int base = (b & (1u << 16)) && (b & (1u << 30)) && (b & (1u << 31)) && (b & (1u << 5));
        r.vnni = base && (c & (1u << 11));
        if (base && __get_cpuid_count(7, 1, &a, &b, &c, &d))
            r.bf16 = (a >> 5) & 1;
    }
    the_cpu = r; /* racing first callers all write the same */
}

int tfm__cpu_avx512_vnni(void)
{
    if (!the_cpu.checked)
        check_cpu();
    return the_cpu.vnni;
}

int tfm__cpu_avx512_bf16(void)
{
    if (!the_cpu.checked)
        check_cpu();
    return the_cpu.bf16;
}

/* ---- kernels ---------------------------------------------------------------------- */

KERNEL static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One block: acc += float(sum_i w_i x_i) * scale. */
KERNEL static inline __m256 block_fma(__m256i w, const int8_t *x, float scale, __m256 acc)
{
    __m256i xv = _mm256_loadu_si256((const __m256i *)x);
    __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(xv),
                                      _mm256_sign_epi8(w, xv));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(scale), acc);
}

/* The 32 q4 weights of a block as int8 in [-8, 7], in order. */
KERNEL static inline __m256i q4_unpack(const uint8_t *blk)
{
    __m128i b = _mm_loadu_si128((const __m128i *)blk), m = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    return _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8));
}

/* q8 and q4 share everything but how a block's weights are loaded. */
KERNEL static void qrows_int8(const tfm_qmat *w, float *y, int ldy, const void *xq, int B, int r0,
                              int r1, int q4)
{
    size_t d = (size_t)w->d, nb = d / TFM_QK, n = (size_t)B * d;
    const int8_t *xqa = xq;
    const float *xsa = (const float *)(xqa + n);
    for (int r = r0; r < r1; r++) {
        const int8_t *w8 = (const int8_t *)w->data + (size_t)r * d;
        const uint8_t *w4 = (const uint8_t *)w->data + (size_t)r * (d / 2);
        const uint16_t *sc = w->scale + (size_t)r * nb;
        for (int b = 0; b < B; b++) {
            const int8_t *xr = xqa + (size_t)b * d;
            const float *xs = xsa + (size_t)b * nb;
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
            size_t k = 0;
            for (; k + 8 <= nb; k += 8) {
                float s[8];
                _mm256_storeu_ps(s, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + k))),
                                                  _mm256_loadu_ps(xs + k)));
                for (int j = 0; j < 8; j += 2) {
                    size_t k0 = k + (size_t)j, k1 = k0 + 1;
                    __m256i wa = q4 ? q4_unpack(w4 + k0 * 16)
                                    : _mm256_loadu_si256((const __m256i *)(w8 + k0 * TFM_QK));
                    __m256i wb = q4 ? q4_unpack(w4 + k1 * 16)
                                    : _mm256_loadu_si256((const __m256i *)(w8 + k1 * TFM_QK));
                    acc0 = block_fma(wa, xr + k0 * TFM_QK, s[j], acc0);
                    acc1 = block_fma(wb, xr + k1 * TFM_QK, s[j + 1], acc1);
                }
            }
            for (; k < nb; k++) {
                __m256i wv = q4 ? q4_unpack(w4 + k * 16)
                                : _mm256_loadu_si256((const __m256i *)(w8 + k * TFM_QK));
                acc0 = block_fma(wv, xr + k * TFM_QK, _cvtsh_ss(sc[k]) * xs[k], acc0);
            }
            y[(size_t)b * ldy + r] = hsum256(_mm256_add_ps(acc0, acc1));
        }
    }
}

KERNEL void tfm__qrows_q8_avx512(const tfm_qmat *w, float *y, int ldy, const void *xq, int B,
                                 int r0, int r1)
{
    qrows_int8(w, y, ldy, xq, B, r0, r1, 0);
}

KERNEL void tfm__qrows_q4_avx512(const tfm_qmat *w, float *y, int ldy, const void *xq, int B,
                                 int r0, int r1)
{
    qrows_int8(w, y, ldy, xq, B, r0, r1, 1);
}

KERNEL void tfm__qrows_bf16_avx512(const tfm_qmat *w, float *y, int ldy, const void *xq, int B,
                                   int r0, int r1)
{
    size_t d = (size_t)w->d;
    for (int r = r0; r < r1; r++) {
        const uint16_t *wr = (const uint16_t *)w->data + (size_t)r * d;
        for (int b = 0; b < B; b++) {
            const uint16_t *xr = (const uint16_t *)xq + (size_t)b * d;
            __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
            size_t i = 0;
            for (; i + 64 <= d; i += 64) {
                acc0 = _mm512_dpbf16_ps(acc0, (__m512bh)_mm512_loadu_si512(xr + i),
                                        (__m512bh)_mm512_loadu_si512(wr + i));
                acc1 = _mm512_dpbf16_ps(acc1, (__m512bh)_mm512_loadu_si512(xr + i + 32),
                                        (__m512bh)_mm512_loadu_si512(wr + i + 32));
            }
            for (; i < d; i += 32) {
                size_t left = d - i;
                __mmask32 m = left >= 32 ? 0xffffffffu : (__mmask32)((1u << left) - 1);
                acc0 = _mm512_dpbf16_ps(acc0, (__m512bh)_mm512_maskz_loadu_epi16(m, xr + i),
                                        (__m512bh)_mm512_maskz_loadu_epi16(m, wr + i));
            }
            y[(size_t)b * ldy + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        }
    }
}
