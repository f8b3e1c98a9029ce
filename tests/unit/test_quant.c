/* test_quant.c — the weight formats (tfm/quant.h): conversions, round
 * trips, and every kernel against the plain reference and against the
 * float32 product of the dequantised weights, at odd sizes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant_internal.h"
#include "testutil.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float uni(void) { return tu_uniform(&rng); }

/* ---- conversions ----------------------------------------------------------------- */

static void test_f16(void **state)
{
    (void)state;
    /* every half converts to a float and back to itself (NaNs stay NaNs) */
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = tfm_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            assert_true(isnan(tfm_f16_to_f32(tfm_f32_to_f16(f))));
            continue;
        }
        assert_int_equal(tfm_f32_to_f16(f), h);
    }
    /* random floats: against the compiler's _Float16 (round to nearest even) */
    for (int i = 0; i < 200000; i++) {
        float f = ldexpf(uni(), (int)(uni() * 40.0f)); /* 2^-40 .. 2^40 */
        _Float16 want = (_Float16)f;
        uint16_t wb;
        memcpy(&wb, &want, 2);
        assert_int_equal(tfm_f32_to_f16(f), wb);
    }
    assert_int_equal(tfm_f32_to_f16(1e6f), 0x7c00);
    assert_int_equal(tfm_f32_to_f16(-1e6f), 0xfc00);
    assert_true(tfm_f16_to_f32(tfm_f32_to_f16(65504.0f)) == 65504.0f);
}

static void test_bf16(void **state)
{
    (void)state;
    for (int i = 0; i < 200000; i++) {
        float f = ldexpf(uni(), (int)(uni() * 60.0f));
        float back = tfm_bf16_to_f32(tfm_f32_to_bf16(f));
        /* nearest: within half a unit of bf16's 8-bit mantissa */
        assert_true(fabsf(back - f) <= fabsf(f) * (1.0f / 256.0f) + 1e-30f);
        /* and no other bf16 is nearer */
        uint16_t h = tfm_f32_to_bf16(f);
        float up = tfm_bf16_to_f32((uint16_t)(h + 1)), dn = tfm_bf16_to_f32((uint16_t)(h - 1));
        assert_true(fabsf(back - f) <= fabsf(up - f) && fabsf(back - f) <= fabsf(dn - f));
    }
    assert_true(isnan(tfm_bf16_to_f32(tfm_f32_to_bf16(NAN))));
}

/* ---- round trips ---------------------------------------------------------------------- */

typedef struct qm {
    tfm_qmat m;
    void *data;
    uint16_t *scale;
} qm;

static qm make(tfm_wformat f, const float *w, int n, int d)
{
    qm q = {{f, n, d, NULL, NULL}, NULL, NULL};
    size_t db, sb;
    assert_int_equal(tfm_qmat_bytes(f, n, d, &db, &sb), TFM_OK);
    q.data = malloc(db ? db : 1);
    q.scale = sb ? malloc(sb) : NULL;
    assert_int_equal(tfm_quantize(f, w, n, d, q.data, q.scale), TFM_OK);
    q.m.data = q.data;
    q.m.scale = q.scale;
    return q;
}

static void drop(qm *q)
{
    free(q->data);
    free(q->scale);
}

static float *rand_mat(int n, int d)
{
    float *w = malloc((size_t)n * d * sizeof *w);
    for (size_t i = 0; i < (size_t)n * d; i++)
        w[i] = uni() * (i % 97 == 0 ? 4.0f : 1.0f); /* a few large weights per row */
    return w;
}

static void test_bytes_and_shapes(void **state)
{
    (void)state;
    size_t db, sb;
    assert_int_equal(tfm_qmat_bytes(TFM_WF_Q8, 768, 768, &db, &sb), TFM_OK);
    assert_true(db + sb == (size_t)768 * 768 * 34 / 32); /* 1.0625 bytes a weight */
    assert_int_equal(tfm_qmat_bytes(TFM_WF_Q4, 768, 768, &db, &sb), TFM_OK);
    assert_true(db + sb == (size_t)768 * 768 * 18 / 32); /* 0.5625 */
    assert_int_equal(tfm_qmat_bytes(TFM_WF_BF16, 3, 33, &db, &sb), TFM_OK);
    assert_true(db == 3 * 33 * 2 && sb == 0);
    assert_int_equal(tfm_qmat_bytes(TFM_WF_Q8, 4, 33, &db, &sb), TFM_E_SHAPE);
    assert_int_equal(tfm_qmat_bytes(TFM_WF_Q4, 4, 48, &db, &sb), TFM_E_SHAPE);
    tfm_wformat f;
    assert_int_equal(tfm_wformat_parse("q8", &f), TFM_OK);
    assert_int_equal(f, TFM_WF_Q8);
    assert_int_equal(tfm_wformat_parse("q5", &f), TFM_E_INVALID);
    assert_string_equal(tfm_wformat_name(TFM_WF_BF16), "bf16");
}

static void test_round_trip(void **state)
{
    (void)state;
    const int n = 37, d = 96;
    float *w = rand_mat(n, d), *back = malloc((size_t)n * d * sizeof *back);
    tfm_wformat fs[] = {TFM_WF_F32, TFM_WF_BF16, TFM_WF_Q8, TFM_WF_Q4};
    for (int t = 0; t < 4; t++) {
        qm q = make(fs[t], w, n, d);
        tfm_dequantize_rows(&q.m, 0, n, back);
        for (int b = 0; b < n * d / TFM_QK; b++) {
            float amax = 0;
            for (int i = 0; i < TFM_QK; i++)
                amax = fmaxf(amax, fabsf(w[b * TFM_QK + i]));
            for (int i = 0; i < TFM_QK; i++) {
                float x = w[b * TFM_QK + i], e = fabsf(back[b * TFM_QK + i] - x);
                switch (fs[t]) {
                case TFM_WF_F32: assert_true(e == 0); break;
                case TFM_WF_BF16: assert_true(e <= fabsf(x) / 256.0f); break;
                /* half a step, the step amax/127 (or /8) itself 1e-3 off (fp16) */
                case TFM_WF_Q8: assert_true(e <= amax / 127.0f * 0.5f * 1.01f + amax * 1e-3f); break;
                /* q4: the side away from the largest weight reaches 7 steps
                 * only: up to a whole step there */
                case TFM_WF_Q4:
                    assert_true(e <= amax / 8.0f * (fabsf(x) <= amax * 7.0f / 8.0f ? 0.5f : 1.0f) *
                                         1.01f + amax * 1e-3f);
                    break;
                }
            }
        }
        /* a sub-range of rows */
        tfm_dequantize_rows(&q.m, 5, 9, back);
        float *again = malloc((size_t)n * d * sizeof *again);
        tfm_dequantize_rows(&q.m, 0, n, again);
        assert_memory_equal(back, again + 5 * d, 4 * (size_t)d * sizeof(float));
        free(again);
        drop(&q);
    }
    /* q4: the largest weight of a block is exactly -8 steps */
    float blk[32] = {0};
    blk[3] = -2.0f, blk[7] = 1.5f, blk[20] = 0.25f;
    qm q = make(TFM_WF_Q4, blk, 1, 32);
    float out[32];
    tfm_dequantize_rows(&q.m, 0, 1, out);
    assert_true(out[3] == -2.0f);
    assert_true(fabsf(out[7] - 1.5f) <= 0.125f);
    drop(&q);
    free(w);
    free(back);
}

/* ---- products -------------------------------------------------------------------------- */

/* y = X · Wᵀ in double over the dequantised weights and the float input. */
static void float_ref(const qm *q, const float *x, int B, double *y)
{
    int n = q->m.n, d = q->m.d;
    float *wd = malloc((size_t)n * d * sizeof *wd);
    tfm_dequantize_rows(&q->m, 0, n, wd);
    for (int b = 0; b < B; b++)
        for (int r = 0; r < n; r++) {
            double s = 0;
            for (int i = 0; i < d; i++)
                s += (double)wd[(size_t)r * d + i] * x[(size_t)b * d + i];
            y[(size_t)b * n + r] = s;
        }
    free(wd);
}

static void check_products(tfm_wformat f, int n, int d, int B)
{
    float *w = rand_mat(n, d), *x = rand_mat(B, d);
    qm q = make(f, w, n, d);
    void *xq = malloc(tfm_qx_bytes(f, B, d) + 1);
    tfm_qx_prepare(f, x, B, d, xq);
    float *fast = malloc((size_t)B * n * sizeof *fast), *ref = malloc((size_t)B * n * sizeof *ref);
    double *exact = malloc((size_t)B * n * sizeof *exact);
    tfm_quant_force_ref(0);
    tfm_qmatmul_rows(&q.m, fast, n, x, xq, B, 0, n);
    tfm_quant_force_ref(1);
    tfm_qmatmul_rows(&q.m, ref, n, x, xq, B, 0, n);
    tfm_quant_force_ref(0);
    float_ref(&q, x, B, exact);
    for (int b = 0; b < B; b++) {
        double xn = 0;
        for (int i = 0; i < d; i++)
            xn += fabs(x[(size_t)b * d + i]);
        for (int r = 0; r < n; r++) {
            size_t k = (size_t)b * n + r;
            double wn = 0;
            for (int i = 0; i < d; i++)
                wn = fmax(wn, fabs(w[(size_t)r * d + i]));
            double scale = xn * wn + 1e-6; /* the size of the sum's terms */
            /* the kernel computes the reference's products: float order only */
            if (fabs(fast[k] - ref[k]) > 2e-6 * scale) {
                print_error("%s n=%d d=%d B=%d [%d,%d]: kernel %.9g, reference %.9g\n",
                            tfm_wformat_name(f), n, d, B, b, r, fast[k], ref[k]);
                fail();
            }
            /* and the reference is the float product but for rounding the
             * activations (bf16: 2^-9; q8 blocks: half of amax/127) */
            double tol = f == TFM_WF_F32 ? 1e-6 : f == TFM_WF_BF16 ? 4e-3 : 8e-3;
            if (fabs(ref[k] - exact[k]) > tol * scale) {
                print_error("%s n=%d d=%d B=%d [%d,%d]: reference %.9g, float %.9g\n",
                            tfm_wformat_name(f), n, d, B, b, r, ref[k], exact[k]);
                fail();
            }
        }
    }
    /* a range of rows writes those columns only */
    if (n > 3) {
        float *part = malloc((size_t)B * n * sizeof *part);
        for (size_t i = 0; i < (size_t)B * n; i++)
            part[i] = -12345.0f;
        tfm_qmatmul_rows(&q.m, part, n, x, xq, B, 1, n - 1);
        for (int b = 0; b < B; b++)
            for (int r = 0; r < n; r++) {
                size_t k = (size_t)b * n + r;
                if (r == 0 || r == n - 1)
                    assert_true(part[k] == -12345.0f);
                else
                    assert_true(part[k] == fast[k]);
            }
        free(part);
    }
    drop(&q);
    free(w), free(x), free(xq), free(fast), free(ref), free(exact);
}

static void test_products(void **state)
{
    (void)state;
    const int ns[] = {1, 3, 17, 67};
    const int ds[] = {32, 64, 96, 288, 800, 2048};
    const int bs[] = {1, 2, 5, 8, 9, 16, 17};
    tfm_wformat fs[] = {TFM_WF_F32, TFM_WF_BF16, TFM_WF_Q8, TFM_WF_Q4};
    for (int t = 0; t < 4; t++)
        for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
            for (size_t j = 0; j < sizeof ds / sizeof *ds; j++)
                for (size_t k = 0; k < sizeof bs / sizeof *bs; k++)
                    if ((size_t)ns[i] * ds[j] * bs[k] <= 1u << 20)
                        check_products(fs[t], ns[i], ds[j], bs[k]);
    /* bf16 takes any width: tails of the 32-lane loads */
    const int odd[] = {1, 7, 31, 33, 63, 65, 100, 130};
    for (size_t j = 0; j < sizeof odd / sizeof *odd; j++)
        check_products(TFM_WF_BF16, 5, odd[j], 3);
}

static void test_isa(void **state)
{
    (void)state;
    printf("# quant isa: %s (avx512 vnni %d, bf16 %d)\n", tfm_quant_isa(), tfm__cpu_avx512_vnni(),
           tfm__cpu_avx512_bf16());
    int was = tfm_quant_force_ref(1);
    assert_string_equal(tfm_quant_isa(), "ref");
    tfm_quant_force_ref(was);
    if (tfm__cpu_avx512_vnni())
        assert_string_equal(tfm_quant_isa(), "avx512");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16),         cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_bytes_and_shapes), cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_products),    cmocka_unit_test(test_isa),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
