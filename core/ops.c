/*
 * ops.c — the numeric kernels: dot, axpy, RMSNorm, softmax (its max and
 * exp-and-sum passes shared with attention.c's online softmax), RoPE, SwiGLU
 * and the weight-matrix product every layer is made of.
 *
 * Decode is bound by memory bandwidth: each token streams every weight once.
 * cblas_sgemv streams at about half the speed of a plain vectorised loop on
 * these machines (PEERS.md), so for a handful of rows tfm__matmul uses its
 * own kernel: four weight rows at a time against each input row, AVX-512
 * FMA with masked tails, split by weight rows over the pool.  From
 * TFM__GEMM_MIN_ROWS rows on, sgemm's cache blocking wins and each pool
 * thread calls single-threaded cblas_sgemm on its slice of weight rows.
 *
 * Without AVX-512 the same loops are written over 8-wide partial sums that
 * the compiler vectorises.  Every kernel has a plain-loop reference in
 * tests/unit/test_ops.c.
 */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "internal.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_AVX512 1
#else
#define HAVE_AVX512 0
#endif

#if HAVE_AVX512
static inline __mmask16 tail_mask(int r) { return (__mmask16)((1u << r) - 1u); }

/* e^x for 16 lanes: x = k ln2 + r, |r| <= ln2/2, e^r by a degree-6
 * polynomial (Cephes' expf coefficients), times 2^k built in the exponent
 * bits.  Relative error about 2e-7; inputs below -87 flush to 0, which is
 * what softmax wants for masked scores. */
static inline __m512 exp512(__m512 x)
{
    const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.3f);
    x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
    __m512 res = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    /* exactly 0 for the flushed range (2^-126 scaling would leave denormals) */
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_GT_OQ), res);
}
#endif

void tfm__add(float *y, const float *x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] += x[i];
}

void tfm__scale(float *y, float a, int n)
{
    for (int i = 0; i < n; i++)
        y[i] *= a;
}

void tfm__rmsnorm(float *o, const float *x, const float *w, int n, float eps)
{
    float ss = tfm__dot(x, x, n) / (float)n + eps;
    ss = 1.0f / sqrtf(ss);
    for (int i = 0; i < n; i++)
        o[i] = w[i] * (ss * x[i]);
}

float tfm__exp_sum(float *x, int n, float shift)
{
    float sum = 0;
    int i = 0;
#if HAVE_AVX512
    __m512 vshift = _mm512_set1_ps(shift), vsum = _mm512_setzero_ps();
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : tail_mask(n - i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vshift));
        e = _mm512_maskz_mov_ps(m, e);
        _mm512_mask_storeu_ps(x + i, m, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    sum = _mm512_reduce_add_ps(vsum);
#else
    for (; i < n; i++) {
        x[i] = expf(x[i] - shift);
        sum += x[i];
    }
#endif
    return sum;
}

float tfm__max(const float *x, int n)
{
#if HAVE_AVX512
    __m512 m = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
    if (i < n) {
        __mmask16 t = tail_mask(n - i);
        m = _mm512_mask_max_ps(m, t, m, _mm512_maskz_loadu_ps(t, x + i));
    }
    return _mm512_reduce_max_ps(m);
#else
    float m = x[0];
    for (int i = 1; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
#endif
}

void tfm__softmax(float *x, int n)
{
    float inv = 1.0f / tfm__exp_sum(x, n, tfm__max(x, n));
    for (int i = 0; i < n; i++)
        x[i] *= inv;
}

void tfm__rope(float *v, int n_heads, int head_size, const float *cos, const float *sin)
{
    int half = head_size / 2;
    for (int h = 0; h < n_heads; h++) {
        float *p = v + (size_t)h * head_size;
        for (int i = 0; i < half; i++) {
            float a = p[2 * i], b = p[2 * i + 1];
            p[2 * i] = a * cos[i] - b * sin[i];
            p[2 * i + 1] = a * sin[i] + b * cos[i];
        }
    }
}

void tfm__swiglu(float *h, const float *g, int n)
{
    int i = 0;
#if HAVE_AVX512
    /* silu(v) = v / (1 + e^-v); exp512 clamps, so large |v| stay finite */
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(h + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), v));
        __m512 silu = _mm512_div_ps(v, _mm512_add_ps(one, e));
        _mm512_storeu_ps(h + i, _mm512_mul_ps(silu, _mm512_loadu_ps(g + i)));
    }
#endif
    for (; i < n; i++) {
        float v = h[i];
        v *= 1.0f / (1.0f + expf(-v));
        h[i] = v * g[i];
    }
}

/* The backward of hg = silu(h1) h3 (training): with s = sigmoid(h1),
 * dh3 = dhg h1 s and dh1 = dhg h3 s (1 + h1 (1 - s)).  dh1 may alias dhg. */
void tfm__swiglu_backward(float *dh1, float *dh3, const float *h1, const float *h3,
                          const float *dhg, size_t n)
{
    size_t i = 0;
#if HAVE_AVX512
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(h1 + i), g = _mm512_loadu_ps(dhg + i);
        __m512 sg = _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        __m512 gs = _mm512_mul_ps(g, sg);
        _mm512_storeu_ps(dh3 + i, _mm512_mul_ps(gs, x));
        __m512 t = _mm512_fmadd_ps(x, _mm512_sub_ps(one, sg), one);
        _mm512_storeu_ps(dh1 + i, _mm512_mul_ps(_mm512_mul_ps(gs, _mm512_loadu_ps(h3 + i)), t));
    }
#endif
    for (; i < n; i++) {
        float x = h1[i], g = dhg[i];
        float sg = 1.0f / (1.0f + expf(-x));
        dh3[i] = g * x * sg;
        dh1[i] = g * h3[i] * sg * (1.0f + x * (1.0f - sg));
    }
}

/* ---- weight-matrix products --------------------------------------------- */

typedef struct {
    float *y;
    const float *x, *w;
    int B, d, n;
} mm_args;

#if HAVE_AVX512
/* The eight horizontal sums of s[0..8) at once: a transposing add tree
 * (pairs within 128-bit lanes, then across lanes) costs about a third of
 * eight separate reductions, which were ~40% of the eight-row kernel's
 * instructions on 288-wide rows. */
static inline void hsum8(const __m512 s[8], float out[8])
{
    __m512 t[4], u[2];
    for (int k = 0; k < 4; k++) /* lane: [a0+a2, b0+b2, a1+a3, b1+b3] */
        t[k] = _mm512_add_ps(_mm512_unpacklo_ps(s[2 * k], s[2 * k + 1]),
                             _mm512_unpackhi_ps(s[2 * k], s[2 * k + 1]));
    for (int k = 0; k < 2; k++) { /* lane: one partial sum of each of 4 rows */
        __m512d a = _mm512_castps_pd(t[2 * k]), b = _mm512_castps_pd(t[2 * k + 1]);
        u[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    /* lanes of v: [u0.L0+u0.L2, u0.L1+u0.L3, u1.L0+u1.L2, u1.L1+u1.L3] */
    __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x44),
                             _mm512_shuffle_f32x4(u[0], u[1], 0xEE));
    __m512 r = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));
    _mm_storeu_ps(out, _mm512_castps512_ps128(r));
    _mm_storeu_ps(out + 4, _mm512_extractf32x4_ps(r, 2));
}
#endif

/* y[b, r0..r1) for every input row b, one weight row at a time: the row
 * streams from memory once and each vector of it feeds eight (or four)
 * input rows, one accumulator each, so a batch costs little more than one
 * sequence until the FMAs, not the memory, are the limit.  One weight row at a time is
 * deliberate: interleaving four weight rows (four streams 4*d bytes apart)
 * measured at less than half the bandwidth, since the hardware prefetcher
 * follows one sequential stream best. */
static void kernel_rows(const mm_args *a, int r0, int r1)
{
    /* locals with restrict: the stores to y may not force reloads */
    const int d = a->d, n = a->n, B = a->B;
    const float *restrict W = a->w, *restrict X = a->x;
    float *restrict Y = a->y;
    for (int i = r0; i < r1; i++) {
        const float *w = W + (size_t)i * d;
        int b = 0;
#if HAVE_AVX512
        for (; b + 8 <= B; b += 8) {
            const float *x0 = X + (size_t)b * d;
            __m512 s[8];
            for (int k = 0; k < 8; k++)
                s[k] = _mm512_setzero_ps();
            int j = 0;
            for (; j + 16 <= d; j += 16) { /* unmasked: loads fold into the FMAs */
                __m512 wv = _mm512_loadu_ps(w + j);
                for (int k = 0; k < 8; k++)
                    s[k] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x0 + (size_t)k * d + j), s[k]);
            }
            if (j < d) {
                __mmask16 m = tail_mask(d - j);
                __m512 wv = _mm512_maskz_loadu_ps(m, w + j);
                for (int k = 0; k < 8; k++)
                    s[k] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x0 + (size_t)k * d + j), s[k]);
            }
            float sums[8];
            hsum8(s, sums);
            for (int k = 0; k < 8; k++)
                Y[(size_t)(b + k) * n + i] = sums[k];
        }
        for (; b + 4 <= B; b += 4) {
            const float *x0 = X + (size_t)b * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
            __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
            __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
            int j = 0;
            for (; j + 16 <= d; j += 16) {
                __m512 wv = _mm512_loadu_ps(w + j);
                s0 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x0 + j), s0);
                s1 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x1 + j), s1);
                s2 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x2 + j), s2);
                s3 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x3 + j), s3);
            }
            if (j < d) {
                __mmask16 m = tail_mask(d - j);
                __m512 wv = _mm512_maskz_loadu_ps(m, w + j);
                s0 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x0 + j), s0);
                s1 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x1 + j), s1);
                s2 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x2 + j), s2);
                s3 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x3 + j), s3);
            }
            float *y = Y + (size_t)b * n + i;
            y[0] = _mm512_reduce_add_ps(s0);
            y[(size_t)n] = _mm512_reduce_add_ps(s1);
            y[(size_t)2 * n] = _mm512_reduce_add_ps(s2);
            y[(size_t)3 * n] = _mm512_reduce_add_ps(s3);
        }
#endif
        /* input first: the weight stream is then the FMA's memory operand,
         * which measured ~13% faster on 768-wide rows than the reverse */
        for (; b < B; b++)
            Y[(size_t)b * n + i] = tfm__dot(X + (size_t)b * d, w, d);
    }
}

static void kernel_task(void *ctx, int chunk, int n_chunks, int thread)
{
    const mm_args *a = ctx;
    int lo, hi;
    (void)thread;
    tfm__split(a->n, chunk, n_chunks, 16, &lo, &hi);
    if (lo < hi)
        kernel_rows(a, lo, hi);
}

static void sgemm_task(void *ctx, int chunk, int n_chunks, int thread)
{
    const mm_args *a = ctx;
    int lo, hi;
    (void)thread;
    tfm__split(a->n, chunk, n_chunks, 16, &lo, &hi);
    if (lo >= hi)
        return;
    /* Y[:, lo:hi] = X · W[lo:hi, :]^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, a->B, hi - lo, a->d, 1.0f, a->x, a->d,
                a->w + (size_t)lo * a->d, a->d, 0.0f, a->y + lo, a->n);
}

/* Below this many multiply-adds a job is not worth waking the workers. */
#define PARALLEL_MIN_MACS (1 << 14)

void tfm__matmul_kernel(tfm__pool *pool, float *y, const float *x, const float *w, int B, int d,
                        int n)
{
    mm_args a = {y, x, w, B, d, n};
    if ((size_t)B * d * n < PARALLEL_MIN_MACS)
        kernel_task(&a, 0, 1, 0);
    else /* small chunks: a descheduled thread holds up little; but each
          * claim is a contended atomic, so fewer for small matrices */
        tfm__pool_run(pool, kernel_task, &a,
                      tfm__pool_chunks(pool, (n + 15) / 16, (size_t)n * d < (1 << 20) ? 2 : 4));
}

void tfm__matmul_sgemm(tfm__pool *pool, float *y, const float *x, const float *w, int B, int d,
                       int n)
{
    mm_args a = {y, x, w, B, d, n};
    if ((size_t)B * d * n < PARALLEL_MIN_MACS)
        sgemm_task(&a, 0, 1, 0);
    else /* fewer, larger chunks: sgemm's blocking wants width */
        tfm__pool_run(pool, sgemm_task, &a, tfm__pool_chunks(pool, (n + 15) / 16, 2));
}

/* Measured here (one thread, cold weights, ms per product, kernel/sgemm):
 *   32000x288  B=4 1.9/5.5  B=8 3.2/5.6  B=16 8.5/6.8
 *   768x288    B=8 0.06/0.12
 *   768x768    B=4 0.10/0.18  B=8 0.28/0.18
 *   32000x768  B=4 6.1/9.4  B=8 13.6/10.4
 * The kernel is bandwidth-bound up to four rows and FMA-bound beyond, so
 * from eight rows on it keeps winning only while rows are short. */
int tfm__use_kernel(int B, int d)
{
    return B < TFM__GEMM_MIN_ROWS || (B < 2 * TFM__GEMM_MIN_ROWS && d <= 512);
}

void tfm__matmul(tfm__pool *pool, float *y, const float *x, const float *w, int B, int d, int n)
{
    if (tfm__use_kernel(B, d))
        tfm__matmul_kernel(pool, y, x, w, B, d, n);
    else
        tfm__matmul_sgemm(pool, y, x, w, B, d, n);
}
