/*
 * quant_avx512.c — the bf16, q8 and q4 products on AVX-512 (tfm/quant.h).
 *
 * Each function is compiled for the instructions it uses (a target
 * attribute, with gcc and clang alike), whatever the build's -march, and
 * quant.c calls it only when the CPU says it has them (cpuid and the OS's
 * saved register state, read once here, under pthread_once: the products
 * run on the pool's threads).
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
#include <pthread.h>
#include <string.h>

#include "quant_internal.h"

#define KERNEL __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512bf16")))

/* ---- the CPU ------------------------------------------------------------------- */

typedef struct cpu {
    int vnni, bf16;
} cpu;

static cpu the_cpu; /* written once, under cpu_once */
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

static unsigned long long xcr0(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static void check_cpu(void)
{
    unsigned a, b, c, d;
    cpu r = {0, 0};
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 27)) /* OSXSAVE */ &&
        (c & (1u << 29)) /* F16C */ && (c & (1u << 12)) /* FMA */ &&
        (xcr0() & 0xe6) == 0xe6 /* the OS saves xmm, ymm, opmask and zmm */ &&
        __get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        int base = (b & (1u << 16)) && (b & (1u << 17)) /* DQ */ && (b & (1u << 30)) && (b & (1u << 31)) && (b & (1u << 5));
        r.vnni = base && (c & (1u << 11));
        if (base && __get_cpuid_count(7, 1, &a, &b, &c, &d))
            r.bf16 = (a >> 5) & 1;
    }
    the_cpu = r;
}

int tfm__cpu_avx512_vnni(void)
{
    pthread_once(&cpu_once, check_cpu);
    return the_cpu.vnni;
}

int tfm__cpu_avx512_bf16(void)
{
    pthread_once(&cpu_once, check_cpu);
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

/* Two blocks at once in a zmm: 64 weights, 64 activations; acc's lanes
 * 0-7 take the first block's sum times sa, 8-15 the second's times sb. */
KERNEL static inline __m512 block2_fma(__m512i w, const int8_t *x, float sa, float sb, __m512 acc)
{
    __m512i xv = _mm512_loadu_si512(x);
    __mmask64 neg = _mm512_movepi8_mask(xv);
    __m512i sw = _mm512_mask_sub_epi8(w, neg, _mm512_setzero_si512(), w); /* w * sign(x) */
    __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(xv), sw);
    __m512 sc = _mm512_insertf32x8(_mm512_set1_ps(sa), _mm256_set1_ps(sb), 1);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc);
}

/* The 64 q4 weights of two consecutive blocks as int8 in [-8, 7]. */
KERNEL static inline __m512i q4_unpack2(const uint8_t *blk)
{
    __m256i b = _mm256_loadu_si256((const __m256i *)blk), m = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_and_si256(b, m), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
    /* 128-bit lanes [A.lo, B.lo, A.hi, B.hi] -> [A.lo, A.hi, B.lo, B.hi] */
    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));
    return _mm512_sub_epi8(z, _mm512_set1_epi8(8));
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
            __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
            size_t k = 0;
            for (; k + 8 <= nb; k += 8) {
                float s[8];
                _mm256_storeu_ps(s, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + k))),
                                                  _mm256_loadu_ps(xs + k)));
                for (int j = 0; j < 8; j += 4) {
                    size_t k0 = k + (size_t)j, k2 = k0 + 2;
                    __m512i wa = q4 ? q4_unpack2(w4 + k0 * 16) : _mm512_loadu_si512(w8 + k0 * TFM_QK);
                    __m512i wb = q4 ? q4_unpack2(w4 + k2 * 16) : _mm512_loadu_si512(w8 + k2 * TFM_QK);
                    acc0 = block2_fma(wa, xr + k0 * TFM_QK, s[j], s[j + 1], acc0);
                    acc1 = block2_fma(wb, xr + k2 * TFM_QK, s[j + 2], s[j + 3], acc1);
                }
            }
            __m256 tail = _mm256_setzero_ps();
            for (; k < nb; k++) {
                __m256i wv = q4 ? q4_unpack(w4 + k * 16)
                                : _mm256_loadu_si256((const __m256i *)(w8 + k * TFM_QK));
                tail = block_fma(wv, xr + k * TFM_QK, _cvtsh_ss(sc[k]) * xs[k], tail);
            }
            y[(size_t)b * ldy + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + hsum256(tail);
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
            __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
            size_t i = 0;
            for (; i + 128 <= d; i += 128) { /* four chains: the instruction's latency */
                acc0 = _mm512_dpbf16_ps(acc0, (__m512bh)_mm512_loadu_si512(xr + i),
                                        (__m512bh)_mm512_loadu_si512(wr + i));
                acc1 = _mm512_dpbf16_ps(acc1, (__m512bh)_mm512_loadu_si512(xr + i + 32),
                                        (__m512bh)_mm512_loadu_si512(wr + i + 32));
                acc2 = _mm512_dpbf16_ps(acc2, (__m512bh)_mm512_loadu_si512(xr + i + 64),
                                        (__m512bh)_mm512_loadu_si512(wr + i + 64));
                acc3 = _mm512_dpbf16_ps(acc3, (__m512bh)_mm512_loadu_si512(xr + i + 96),
                                        (__m512bh)_mm512_loadu_si512(wr + i + 96));
            }
            acc0 = _mm512_add_ps(acc0, acc2);
            acc1 = _mm512_add_ps(acc1, acc3);
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
