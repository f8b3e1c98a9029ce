/*
 * quant.c — the weight formats (tfm/quant.h): conversions, quantisation,
 * the plain C reference products, and the choice of kernels.  The AVX-512
 * kernels are quant_avx512.c's, compiled for those instructions whatever
 * the build's -march, and called only when the CPU has them.
 *
 * The reference computes exactly what the kernels compute, in a plain
 * order: bf16 products of bf16-rounded activations summed in float; q8 and
 * q4 integer dot products per block (exact), each times its two scales,
 * summed in float.  The kernels differ from it only in the order of the
 * float sums.
 */
#include "tfm/quant.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "quant_internal.h"

/* ---- conversions ------------------------------------------------------------ */

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t tfm_f32_to_bf16(float f)
{
    uint32_t u = bits_of(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN stays a (quiet) NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float tfm_bf16_to_f32(uint16_t h) { return float_of((uint32_t)h << 16); }

uint16_t tfm_f32_to_f16(float f)
{
    uint32_t u = bits_of(f), sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (a >= 0x477ff000u)                  /* rounds to 65520 or more: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below 2^-14: a subnormal half (or 0) */
        /* a / 2^-24, rounded to nearest even, via the float adder */
        float v = float_of(a) * 16777216.0f; /* exact: a power of two */
        uint32_t q = (uint32_t)lrintf(v);
        return (uint16_t)(sign | q);
    }
    uint32_t e = ((a >> 23) - 112) << 10, m = (a >> 13) & 0x3ffu;
    uint32_t h = e | m, rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1)))
        h++; /* may carry into the exponent: still right */
    return (uint16_t)(sign | h);
}

float tfm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) /* zero or subnormal: m * 2^-24 */
        return float_of(sign) + (sign ? -1.0f : 1.0f) * (float)m * (1.0f / 16777216.0f);
    if (e == 31)
        return float_of(sign | 0x7f800000u | (m << 13));
    return float_of(sign | ((e + 112) << 23) | (m << 13));
}

/* ---- formats ------------------------------------------------------------------ */

const char *tfm_wformat_name(tfm_wformat f)
{
    switch (f) {
    case TFM_WF_F32: return "f32";
    case TFM_WF_BF16: return "bf16";
    case TFM_WF_Q8: return "q8";
    case TFM_WF_Q4: return "q4";
    }
    return NULL;
}

tfm_status tfm_wformat_parse(const char *name, tfm_wformat *out)
{
    for (int f = TFM_WF_F32; f <= TFM_WF_Q4; f++)
        if (name && !strcmp(name, tfm_wformat_name((tfm_wformat)f))) {
            *out = (tfm_wformat)f;
            return TFM_OK;
        }
    return TFM_E_INVALID;
}

tfm_status tfm_qmat_bytes(tfm_wformat f, int n, int d, size_t *data_bytes, size_t *scale_bytes)
{
    size_t w = (size_t)n * (size_t)d, nb = w / TFM_QK;
    size_t db = 0, sb = 0;
    if (n < 0 || d < 0)
        return TFM_E_INVALID;
    switch (f) {
    case TFM_WF_F32: db = w * 4; break;
    case TFM_WF_BF16: db = w * 2; break;
    case TFM_WF_Q8:
    case TFM_WF_Q4:
        if (d % TFM_QK)
            return TFM_E_SHAPE;
        db = f == TFM_WF_Q8 ? w : w / 2;
        sb = nb * 2;
        break;
    default:
        return TFM_E_INVALID;
    }
    if (data_bytes)
        *data_bytes = db;
    if (scale_bytes)
        *scale_bytes = sb;
    return TFM_OK;
}

/* One block of 32 weights: its fp16 scale and the integer values, each
 * w / scale rounded to nearest.  q8: scale max|w| / 127, values in
 * [-127, 127].  q4 (llama.cpp's Q4_0): the weight of largest magnitude m
 * gives scale m / -8, so that it is exactly -8 and the others fall in
 * [-8, 7] (one more step on the side it is not). */
static uint16_t quant_block(const float *w, int q4, int8_t *q)
{
    float amax = 0, m = 0;
    for (int i = 0; i < TFM_QK; i++)
        if (fabsf(w[i]) > amax)
            amax = fabsf(w[i]), m = w[i];
    uint16_t h = tfm_f32_to_f16(q4 ? m / -8.0f : amax / 127.0f);
    float d = tfm_f16_to_f32(h);
    float inv = d != 0 ? 1.0f / d : 0.0f;
    int lo = q4 ? -8 : -127, hi = q4 ? 7 : 127;
    for (int i = 0; i < TFM_QK; i++) {
        long v = lrintf(w[i] * inv);
        q[i] = (int8_t)(v < lo ? lo : v > hi ? hi : v);
    }
    return h;
}

tfm_status tfm_quantize(tfm_wformat f, const float *w, int n, int d, void *data, uint16_t *scale)
{
    size_t db, sb;
    tfm_status st = tfm_qmat_bytes(f, n, d, &db, &sb);
    if (st != TFM_OK)
        return st;
    size_t count = (size_t)n * (size_t)d;
    if (f == TFM_WF_F32) {
        memcpy(data, w, count * 4);
    } else if (f == TFM_WF_BF16) {
        uint16_t *o = data;
        for (size_t i = 0; i < count; i++)
            o[i] = tfm_f32_to_bf16(w[i]);
    } else {
        int8_t q[TFM_QK];
        for (size_t b = 0; b < count / TFM_QK; b++) {
            scale[b] = quant_block(w + b * TFM_QK, f == TFM_WF_Q4, q);
            if (f == TFM_WF_Q8) {
                memcpy((int8_t *)data + b * TFM_QK, q, TFM_QK);
            } else {
                uint8_t *o = (uint8_t *)data + b * (TFM_QK / 2);
                for (int i = 0; i < TFM_QK / 2; i++)
                    o[i] = (uint8_t)((q[i] + 8) | ((q[i + 16] + 8) << 4));
            }
        }
    }
    return TFM_OK;
}

/* Weight i of q4 block b (of row-major blocks). */
static int q4_at(const uint8_t *blk, int i)
{
    return i < 16 ? (blk[i] & 0xf) - 8 : (blk[i - 16] >> 4) - 8;
}

void tfm_dequantize_rows(const tfm_qmat *m, int r0, int r1, float *out)
{
    size_t d = (size_t)m->d;
    for (int r = r0; r < r1; r++) {
        float *o = out + (size_t)(r - r0) * d;
        size_t base = (size_t)r * d;
        switch (m->fmt) {
        case TFM_WF_F32:
            memcpy(o, (const float *)m->data + base, d * 4);
            break;
        case TFM_WF_BF16:
            for (size_t i = 0; i < d; i++)
                o[i] = tfm_bf16_to_f32(((const uint16_t *)m->data)[base + i]);
            break;
        case TFM_WF_Q8:
        case TFM_WF_Q4:
            for (size_t b = 0; b < d / TFM_QK; b++) {
                size_t blk = base / TFM_QK + b;
                float s = tfm_f16_to_f32(m->scale[blk]);
                for (int i = 0; i < TFM_QK; i++) {
                    int q = m->fmt == TFM_WF_Q8
                                ? ((const int8_t *)m->data)[blk * TFM_QK + i]
                                : q4_at((const uint8_t *)m->data + blk * (TFM_QK / 2), i);
                    o[b * TFM_QK + i] = s * (float)q;
                }
            }
            break;
        }
    }
}

/* ---- activations ---------------------------------------------------------------- */

size_t tfm_qx_bytes(tfm_wformat f, int B, int d)
{
    size_t n = (size_t)B * (size_t)d;
    switch (f) {
    case TFM_WF_BF16: return n * 2;
    case TFM_WF_Q8:
    case TFM_WF_Q4: return n + n / TFM_QK * sizeof(float);
    default: return 0;
    }
}

float tfm__q8_absmax(const float *x, int n, int8_t *q)
{
    float amax = 0.0f;
    for (int i = 0; i < n; i++)
        amax = fmaxf(amax, fabsf(x[i]));
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int i = 0; i < n; i++) {
        long r = lrintf(x[i] * inv);
        q[i] = (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
    }
    return amax / 127.0f;
}

void tfm_qx_prepare(tfm_wformat f, const float *x, int B, int d, void *xq)
{
    size_t n = (size_t)B * (size_t)d;
    if (f == TFM_WF_BF16) {
        uint16_t *o = xq;
        for (size_t i = 0; i < n; i++)
            o[i] = tfm_f32_to_bf16(x[i]);
    } else if (f == TFM_WF_Q8 || f == TFM_WF_Q4) {
        int8_t *q = xq;
        float *s = (float *)(q + n);
        for (size_t b = 0; b < n / TFM_QK; b++) {
            s[b] = tfm__q8_absmax(x + b * TFM_QK, TFM_QK, q + b * TFM_QK);
        }
    }
}

/* ---- the reference products -------------------------------------------------------- */

void tfm__qrows_ref(const tfm_qmat *w, float *y, int ldy, const float *x, const void *xq, int B,
                    int r0, int r1)
{
    size_t d = (size_t)w->d, nb = d / TFM_QK, n = (size_t)B * d;
    for (int r = r0; r < r1; r++) {
        size_t base = (size_t)r * d;
        for (int b = 0; b < B; b++) {
            float acc = 0;
            if (w->fmt == TFM_WF_F32) {
                const float *wr = (const float *)w->data + base, *xr = x + (size_t)b * d;
                for (size_t i = 0; i < d; i++)
                    acc += wr[i] * xr[i];
            } else if (w->fmt == TFM_WF_BF16) {
                const uint16_t *wr = (const uint16_t *)w->data + base;
                const uint16_t *xr = (const uint16_t *)xq + (size_t)b * d;
                for (size_t i = 0; i < d; i++)
                    acc += tfm_bf16_to_f32(wr[i]) * tfm_bf16_to_f32(xr[i]);
            } else {
                const int8_t *xqr = (const int8_t *)xq + (size_t)b * d;
                const float *xs = (const float *)((const int8_t *)xq + n) + (size_t)b * nb;
                for (size_t k = 0; k < nb; k++) {
                    size_t blk = base / TFM_QK + k;
                    int32_t dot = 0;
                    for (int i = 0; i < TFM_QK; i++) {
                        int q = w->fmt == TFM_WF_Q8
                                    ? ((const int8_t *)w->data)[blk * TFM_QK + i]
                                    : q4_at((const uint8_t *)w->data + blk * (TFM_QK / 2), i);
                        dot += q * xqr[k * TFM_QK + i];
                    }
                    acc += tfm_f16_to_f32(w->scale[blk]) * xs[k] * (float)dot;
                }
            }
            y[(size_t)b * ldy + r] = acc;
        }
    }
}

/* ---- dispatch ------------------------------------------------------------------------ */

/* The reference forced (TFM_QUANT_ISA=ref, or tfm_quant_force_ref): read
 * once, before any product, since products run on the pool's threads. */
static atomic_int force_ref;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static void read_env(void)
{
    const char *e = getenv("TFM_QUANT_ISA");
    atomic_store(&force_ref, e && !strcmp(e, "ref"));
}

int tfm_quant_force_ref(int on)
{
    pthread_once(&env_once, read_env);
    return atomic_exchange(&force_ref, on ? 1 : 0);
}

static int use_ref(void)
{
    pthread_once(&env_once, read_env);
    return atomic_load_explicit(&force_ref, memory_order_relaxed);
}

/* Whether the AVX-512 kernel for f can run here (and is not forced off). */
static int have_avx512(tfm_wformat f)
{
    if (use_ref())
        return 0;
    if (f == TFM_WF_BF16)
        return tfm__cpu_avx512_bf16();
    if (f == TFM_WF_Q8 || f == TFM_WF_Q4)
        return tfm__cpu_avx512_vnni();
    return 0;
}

const char *tfm_quant_isa(void) { return have_avx512(TFM_WF_Q8) ? "avx512" : "ref"; }

void tfm_qmatmul_rows(const tfm_qmat *w, float *y, int ldy, const float *x, const void *xq, int B,
                      int r0, int r1)
{
    if (!have_avx512(w->fmt)) {
        tfm__qrows_ref(w, y, ldy, x, xq, B, r0, r1);
        return;
    }
    switch (w->fmt) {
    case TFM_WF_BF16: tfm__qrows_bf16_avx512(w, y, ldy, xq, B, r0, r1); break;
    case TFM_WF_Q8: tfm__qrows_q8_avx512(w, y, ldy, xq, B, r0, r1); break;
    case TFM_WF_Q4: tfm__qrows_q4_avx512(w, y, ldy, xq, B, r0, r1); break;
    default: tfm__qrows_ref(w, y, ldy, x, xq, B, r0, r1); break;
    }
}
