/* test_quant_model.c — a model quantised at load time (tfm_model_quantize)
 * through the whole forward, against the float32 forward of the same
 * weights: prefill (dequantised tiles and sgemm) and decode (the kernels),
 * each other, the reference kernels, and the bytes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tfm/checkpoint.h"
#include "tfm/quant.h"
#include "tfm/train.h"
#include "testutil.h"

enum { DIM = 64, HID = 128, LAYERS = 2, HEADS = 4, KV = 2, VOCAB = 258, SEQ = 128, T = 40 };

static tfm_model *model(int fmt, int shared)
{
    char err[160];
    tfm_model *m = tu_random_model(DIM, HID, LAYERS, HEADS, KV, VOCAB, SEQ, shared, 11);
    assert_int_equal(tfm_model_quantize(m, fmt, err, sizeof err), TFM_OK);
    assert_int_equal(tfm_model_wformat(m), fmt);
    return m;
}

/* Logits of T prompt tokens by prefill (last row), then of 12 decode
 * steps (each fed the given token): (1 + 12) rows of VOCAB. */
static void run(tfm_model *m, const int *toks, float *out)
{
    tfm_workspace *ws;
    tfm_state *st;
    assert_int_equal(tfm_workspace_create(m, 64, 2, &ws), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &st), TFM_OK);
    assert_int_equal(tfm_prefill(ws, st, toks, T, out), TFM_OK);
    for (int s = 0; s < 12; s++)
        assert_int_equal(tfm_decode(ws, &st, &toks[T + s], 1, out + (size_t)(s + 1) * VOCAB),
                         TFM_OK);
    tfm_state_destroy(st);
    tfm_workspace_destroy(ws);
}

/* Largest |a - b| over the rows, as a share of the largest |b|. */
static double rel_err(const float *a, const float *b, size_t n)
{
    double e = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - b[i]));
        scale = fmax(scale, fabs((double)b[i]));
    }
    return e / (scale > 0 ? scale : 1);
}

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

static void test_against_f32(void **state)
{
    (void)state;
    int toks[T + 12];
    for (int i = 0; i < T + 12; i++)
        toks[i] = (i * 37 + 11) % 256;
    size_t n = (size_t)13 * VOCAB;
    float *ref = malloc(n * sizeof *ref), *got = malloc(n * sizeof *got);
    const int fmts[] = {TFM_WF_BF16, TFM_WF_Q8, TFM_WF_Q4};
    /* documented bounds: the largest logit error as a share of the largest
     * logit, over prefill and decode (measured here: printed) */
    const double tol[] = {0.01, 0.03, 0.15};
    for (int shared = 0; shared <= 1; shared++) {
        tfm_model *f32 = model(TFM_WF_F32, shared);
        run(f32, toks, ref);
        for (int i = 0; i < 3; i++) {
            tfm_model *q = model(fmts[i], shared);
            run(q, toks, got);
            double e = rel_err(got, ref, n);
            int agree = 0;
            for (int r = 0; r < 13; r++)
                agree += argmax(got + (size_t)r * VOCAB, VOCAB) == argmax(ref + (size_t)r * VOCAB, VOCAB);
            printf("# %s (shared %d): logits within %.4f of f32's scale, top-1 %d/13\n",
                   tfm_wformat_name(fmts[i]), shared, e, agree);
            assert_true(e < tol[i]);
            /* the reference kernels compute the same products */
            float *refk = malloc(n * sizeof *refk);
            tfm_quant_force_ref(1);
            run(q, toks, refk);
            tfm_quant_force_ref(0);
            assert_true(rel_err(refk, got, n) < 1e-4);
            free(refk);
            tfm_model_destroy(q);
        }
        tfm_model_destroy(f32);
    }
    free(ref);
    free(got);
}

/* Prefill's dequantised tiles and decode's kernels give the same logits
 * up to the activations' rounding. */
static void test_prefill_vs_decode(void **state)
{
    (void)state;
    const int fmts[] = {TFM_WF_BF16, TFM_WF_Q8, TFM_WF_Q4};
    int toks[T];
    for (int i = 0; i < T; i++)
        toks[i] = (i * 13 + 5) % 256;
    for (int i = 0; i < 3; i++) {
        tfm_model *q = model(fmts[i], 0);
        tfm_workspace *ws;
        tfm_state *a, *b;
        float *pl = malloc(VOCAB * sizeof *pl), *dl = malloc(VOCAB * sizeof *dl);
        assert_int_equal(tfm_workspace_create(q, 64, 1, &ws), TFM_OK);
        assert_int_equal(tfm_state_create(q, 0, &a), TFM_OK);
        assert_int_equal(tfm_state_create(q, 0, &b), TFM_OK);
        assert_int_equal(tfm_prefill(ws, a, toks, T, pl), TFM_OK); /* T > 16 rows: tiles */
        for (int t = 0; t < T; t++)                                 /* one row at a time */
            assert_int_equal(tfm_decode(ws, &b, &toks[t], 1, dl), TFM_OK);
        double e = rel_err(dl, pl, VOCAB);
        printf("# %s: decode vs prefill logits within %.5f\n", tfm_wformat_name(fmts[i]), e);
        assert_true(e < (fmts[i] == TFM_WF_BF16 ? 0.01 : 0.03));
        free(pl), free(dl);
        tfm_state_destroy(a), tfm_state_destroy(b);
        tfm_workspace_destroy(ws);
        tfm_model_destroy(q);
    }
}

static void test_bytes_and_refusals(void **state)
{
    (void)state;
    char err[160];
    tfm_model *f32 = model(TFM_WF_F32, 0), *q8 = model(TFM_WF_Q8, 0), *q4 = model(TFM_WF_Q4, 0);
    size_t matrices = (size_t)LAYERS * (2 * DIM * DIM + 2 * (DIM / HEADS * KV) * DIM + 3 * HID * DIM) +
                      (size_t)VOCAB * DIM;
    size_t floats = (size_t)VOCAB * DIM + (size_t)LAYERS * 2 * DIM + DIM; /* embedding, norms */
    assert_true(tfm_model_weight_bytes(f32) == (floats + matrices) * 4);
    /* q8: 34 bytes a block of 32, each matrix's parts 64-byte aligned */
    size_t q8b = tfm_model_weight_bytes(q8);
    assert_true(q8b >= floats * 4 + matrices * 34 / 32);
    assert_true(q8b <= floats * 4 + matrices * 34 / 32 + (size_t)(7 * LAYERS + 1) * 128);
    assert_true(tfm_model_weight_bytes(q4) < q8b);
    /* once only; saved as safetensors only (test_checkpoint_quant.c); q8
     * needs widths that are multiples of 32 */
    assert_int_equal(tfm_model_quantize(q8, TFM_WF_Q4, err, sizeof err), TFM_E_UNSUPPORTED);
    assert_int_equal(tfm_checkpoint_save(q8, tu_path("q8.bin"), TFM_CKPT_AUTO, err,
                                         sizeof err),
                     TFM_E_UNSUPPORTED);
    /* nor trained: the trainer reads and writes float32 matrices */
    tfm_trainer *tr = NULL;
    assert_int_equal(tfm_trainer_create(q8, 2, 8, 1, &tr), TFM_E_UNSUPPORTED);
    assert_null(tr);
    assert_int_equal(tfm_trainer_create(f32, 2, 8, 1, &tr), TFM_OK);
    tfm_trainer_destroy(tr);
    tfm_model *odd = tu_random_model(48, 80, 1, 4, 2, 258, 32, 0, 3);
    assert_int_equal(tfm_model_quantize(odd, TFM_WF_Q8, err, sizeof err), TFM_E_SHAPE);
    assert_non_null(strstr(err, "multiples of 32"));
    assert_int_equal(tfm_model_wformat(odd), TFM_WF_F32);
    assert_int_equal(tfm_model_quantize(odd, TFM_WF_BF16, err, sizeof err), TFM_OK);
    assert_string_equal(tfm_model_meta_get(odd, "weights"), "bf16");
    tfm_model_destroy(odd);
    tfm_model_destroy(f32), tfm_model_destroy(q8), tfm_model_destroy(q4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_f32),
        cmocka_unit_test(test_prefill_vs_decode),
        cmocka_unit_test(test_bytes_and_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
