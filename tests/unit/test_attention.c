/*
 * test_attention.c — the attention kernels (core/attention.c): naive and
 * tiled against each other and against a plain double-precision reference,
 * in prefill (one chunk and several, so p0 > 0) and decode; the full forward
 * with each kernel; the scratch accounting in the profile.
 *
 * The reference is causal softmax attention written out in doubles, row by
 * row, sharing no code with core/.  Inputs are uniform noise; a second
 * flavour grows the keys' magnitude with position so that later key blocks
 * keep raising a row's max and the tiled kernel's rescaling is exercised.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "testutil.h"
#include "tfm/model.h"

#define TOL 1e-5f

typedef struct {
    int hs, n_heads, n_kv;
} shape;

/* 6 x 48: the 15M model's heads; GQA with 2 and 4 query heads per kv head */
static const shape shapes[] = {{48, 6, 6}, {64, 4, 2}, {16, 4, 1}};
static const int lengths[] = {1, 2, 63, 64, 65, 127, 128, 129, 300, 1000, 2048};

/* Attention of every position 0..N-1 over its causal past, all heads:
 * out (N, n_heads * hs), from q (N, n_heads * hs), k and v (N, n_kv * hs). */
static void ref_attention(float *out, const float *q, const float *k, const float *v, int N,
                          shape s)
{
    int dim = s.n_heads * s.hs, kv = s.n_kv * s.hs, group = s.n_heads / s.n_kv;
    double *w = malloc((size_t)N * sizeof(double)), *o = malloc((size_t)s.hs * sizeof(double));
    for (int h = 0; h < s.n_heads; h++) {
        int kh = h / group;
        for (int t = 0; t < N; t++) {
            const float *qt = q + (size_t)t * dim + (size_t)h * s.hs;
            double mx = -INFINITY, sum = 0;
            for (int p = 0; p <= t; p++) {
                const float *kp = k + (size_t)p * kv + (size_t)kh * s.hs;
                double d = 0;
                for (int i = 0; i < s.hs; i++)
                    d += (double)qt[i] * kp[i];
                w[p] = d / sqrt((double)s.hs);
                mx = fmax(mx, w[p]);
            }
            for (int p = 0; p <= t; p++)
                sum += (w[p] = exp(w[p] - mx));
            memset(o, 0, (size_t)s.hs * sizeof(double));
            for (int p = 0; p <= t; p++) {
                const float *vp = v + (size_t)p * kv + (size_t)kh * s.hs;
                for (int i = 0; i < s.hs; i++)
                    o[i] += w[p] / sum * vp[i];
            }
            for (int i = 0; i < s.hs; i++)
                out[(size_t)t * dim + (size_t)h * s.hs + i] = (float)o[i];
        }
    }
    free(w), free(o);
}

static void fill(float *x, size_t n, float scale, uint64_t *rng)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * tu_uniform(rng);
}

/* q, k, v for N positions; growing: key p scaled by 1 + 3p/N */
static void make_inputs(float *q, float *k, float *v, int N, shape s, int growing, uint64_t seed)
{
    int dim = s.n_heads * s.hs, kv = s.n_kv * s.hs;
    fill(q, (size_t)N * dim, 2.0f, &seed);
    fill(k, (size_t)N * kv, 1.0f, &seed);
    fill(v, (size_t)N * kv, 1.0f, &seed);
    if (growing)
        for (int p = 0; p < N; p++)
            for (int i = 0; i < kv; i++)
                k[(size_t)p * kv + i] *= 1.0f + 3.0f * p / N;
}

/* Prefill of N positions in chunks of `chunk` rows, every head, by kernel
 * kern, into out (N, dim).  Scratch is malloc'd at exactly the size the
 * kernel asks for, so the sanitizer build catches an overrun. */
static void run_prefill(tfm_attn_kernel kern, float *out, const float *q, const float *k,
                        const float *v, int N, int chunk, shape s)
{
    int dim = s.n_heads * s.hs, kv = s.n_kv * s.hs, group = s.n_heads / s.n_kv;
    for (int p0 = 0; p0 < N; p0 += chunk) {
        int T = N - p0 < chunk ? N - p0 : chunk;
        size_t nsc = tfm__attn_scratch(kern, T, p0 + T);
        assert_true(nsc >= 1 && nsc <= (size_t)T * (p0 + T));
        float *sc = malloc(nsc * sizeof(float));
        for (int h = 0; h < s.n_heads; h++)
            tfm__attn_prefill(kern, out + (size_t)p0 * dim + (size_t)h * s.hs, dim,
                              q + (size_t)p0 * dim + (size_t)h * s.hs, dim,
                              k + (size_t)(h / group) * s.hs, v + (size_t)(h / group) * s.hs, kv,
                              s.hs, T, p0, sc);
        free(sc);
    }
}

static void test_attention_prefill_matches_reference(void **state)
{
    static const int chunks[] = {0 /* one chunk */, 64, 37};
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (size_t li = 0; li < sizeof lengths / sizeof *lengths; li++)
            for (int growing = 0; growing <= 1; growing++) {
                shape s = shapes[si];
                int N = lengths[li], dim = s.n_heads * s.hs, kv = s.n_kv * s.hs;
                if (N > 1000 && growing) /* the reference dominates the run time */
                    continue;
                size_t nq = (size_t)N * dim;
                float *q = malloc(nq * sizeof(float)), *ref = malloc(nq * sizeof(float));
                float *k = malloc((size_t)N * kv * sizeof(float));
                float *v = malloc((size_t)N * kv * sizeof(float));
                float *naive = malloc(nq * sizeof(float)), *tiled = malloc(nq * sizeof(float));
                make_inputs(q, k, v, N, s, growing, 1000 + 10 * si + growing);
                ref_attention(ref, q, k, v, N, s);
                for (size_t ci = 0; ci < sizeof chunks / sizeof *chunks; ci++) {
                    int chunk = chunks[ci] ? chunks[ci] : N;
                    char what[80], label[96];
                    snprintf(what, sizeof what, "hs=%d heads=%d/%d N=%d chunk=%d%s", s.hs,
                             s.n_heads, s.n_kv, N, chunk, growing ? " growing" : "");
                    run_prefill(TFM_ATTN_NAIVE, naive, q, k, v, N, chunk, s);
                    run_prefill(TFM_ATTN_TILED, tiled, q, k, v, N, chunk, s);
                    snprintf(label, sizeof label, "naive %s", what);
                    tu_check_tensor(label, naive, ref, nq, TOL);
                    snprintf(label, sizeof label, "tiled %s", what);
                    tu_check_tensor(label, tiled, ref, nq, TOL);
                    snprintf(label, sizeof label, "tiled vs naive %s", what);
                    tu_check_tensor(label, tiled, naive, nq, TOL);
                }
                free(q), free(k), free(v), free(ref), free(naive), free(tiled);
            }
}

/* One query row over positions 0..pos: row pos of the prefill reference. */
static void test_attention_decode_matches_reference(void **state)
{
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        shape s = shapes[si];
        int N = 1000, dim = s.n_heads * s.hs, kv = s.n_kv * s.hs, group = s.n_heads / s.n_kv;
        float *q = malloc((size_t)N * dim * sizeof(float));
        float *ref = malloc((size_t)N * dim * sizeof(float));
        float *k = malloc((size_t)N * kv * sizeof(float)), *v = malloc((size_t)N * kv * sizeof(float));
        float got[2][64 * 6];
        make_inputs(q, k, v, N, s, 1, 77 + si);
        ref_attention(ref, q, k, v, N, s);
        static const int positions[] = {0, 1, 62, 63, 64, 127, 128, 129, 300, 999};
        for (size_t pi = 0; pi < sizeof positions / sizeof *positions; pi++) {
            int pos = positions[pi], ctx = pos + 1;
            for (int kern = TFM_ATTN_NAIVE; kern <= TFM_ATTN_TILED; kern++) {
                size_t nsc = tfm__attn_scratch((tfm_attn_kernel)kern, 1, ctx);
                assert_true(nsc >= 1 && nsc <= (size_t)ctx);
                float *sc = malloc(nsc * sizeof(float));
                for (int h = 0; h < s.n_heads; h++)
                    tfm__attn_decode((tfm_attn_kernel)kern, got[kern - 1] + h * s.hs,
                                     q + (size_t)pos * dim + (size_t)h * s.hs,
                                     k + (size_t)(h / group) * s.hs, v + (size_t)(h / group) * s.hs,
                                     kv, s.hs, ctx, sc);
                free(sc);
                tu_check_tensor(kern == TFM_ATTN_NAIVE ? "decode naive" : "decode tiled",
                                got[kern - 1], ref + (size_t)pos * dim, (size_t)dim, TOL);
            }
            tu_check_tensor("decode tiled vs naive", got[1], got[0], (size_t)dim, TOL);
        }
        free(q), free(k), free(v), free(ref);
    }
}

static void test_attention_names_and_pick(void **state)
{
    assert_string_equal(tfm_attn_kernel_name(TFM_ATTN_AUTO), "auto");
    assert_string_equal(tfm_attn_kernel_name(TFM_ATTN_NAIVE), "naive");
    assert_string_equal(tfm_attn_kernel_name(TFM_ATTN_TILED), "tiled");
    assert_string_equal(tfm_attn_kernel_name((tfm_attn_kernel)7), "unknown");
    /* an explicit choice stands at any length; AUTO resolves to one of them
     * (as measured: tiled for prefill chunks, the single-row path for one
     * query row) */
    for (int ctx = 1; ctx <= 32768; ctx *= 2)
        for (int T = 1; T <= 256 && T <= ctx; T *= 4) {
            assert_int_equal(tfm__attn_pick(TFM_ATTN_NAIVE, T, ctx), TFM_ATTN_NAIVE);
            assert_int_equal(tfm__attn_pick(TFM_ATTN_TILED, T, ctx), TFM_ATTN_TILED);
            tfm_attn_kernel a = tfm__attn_pick(TFM_ATTN_AUTO, T, ctx);
            assert_true(a == TFM_ATTN_NAIVE || a == TFM_ATTN_TILED);
        }
    assert_int_equal(tfm__attn_pick(TFM_ATTN_AUTO, 256, 16384), TFM_ATTN_TILED);
    assert_int_equal(tfm__attn_pick(TFM_ATTN_AUTO, 1, 16384), TFM_ATTN_NAIVE);
}

/* A forward pass per kernel over the same prompt, chunked (p0 > 0) and in
 * one chunk, one and two threads, then a few decode steps: the same logits. */
static void test_attention_forward_tiled_equals_naive(void **state)
{
    tfm_model *m = tu_random_model(64, 96, 2, 4, 2, 53, 512, 0, 21);
    int V = m->cfg.vocab_size, n = 300, steps = 4, toks[304];
    uint64_t seed = 5;
    for (int i = 0; i < n + steps; i++)
        toks[i] = (int)(tu_rng(&seed) % (uint64_t)V);
    static const int rows[] = {64, 300, 37};
    for (size_t ri = 0; ri < sizeof rows / sizeof *rows; ri++)
        for (int threads = 1; threads <= 2; threads++) {
            float *lg[2];
            for (int kern = TFM_ATTN_NAIVE; kern <= TFM_ATTN_TILED; kern++) {
                tfm_workspace *ws;
                tfm_state *st;
                assert_int_equal(tfm_workspace_create(m, rows[ri], threads, &ws), TFM_OK);
                assert_int_equal(tfm_state_create(m, 0, &st), TFM_OK);
                tfm_workspace_set_attention(ws, (tfm_attn_kernel)kern);
                float *l = lg[kern - 1] = malloc((size_t)(1 + steps) * V * sizeof(float));
                assert_int_equal(tfm_prefill(ws, st, toks, n, l), TFM_OK);
                for (int i = 0; i < steps; i++)
                    assert_int_equal(tfm_decode(ws, &st, &toks[n + i], 1, l + (size_t)(1 + i) * V),
                                     TFM_OK);
                tfm_state_destroy(st);
                tfm_workspace_destroy(ws);
            }
            tu_check_tensor("forward tiled vs naive", lg[1], lg[0], (size_t)(1 + steps) * V, TOL);
            free(lg[0]), free(lg[1]);
        }
    tfm_model_destroy(m);
}

/* Peak attention scratch in the profile: naive holds (rows, ctx) floats,
 * tiled one (64, 128) tile and its row statistics (max and sum), whatever the
 * context. */
static void test_attention_peak_bytes(void **state)
{
    tfm_model *m = tu_random_model(32, 48, 1, 2, 1, 16, 2048, 1, 4);
    int n = 2048, rows = 256, *toks = malloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++)
        toks[i] = i % 16;
    double peak[3][2]; /* [kernel][prefill, decode] */
    for (int kern = TFM_ATTN_AUTO; kern <= TFM_ATTN_TILED; kern++) {
        tfm_workspace *ws;
        tfm_state *st;
        float logits[16];
        assert_int_equal(tfm_workspace_create(m, rows, 1, &ws), TFM_OK);
        assert_int_equal(tfm_state_create(m, 0, &st), TFM_OK);
        tfm_workspace_set_attention(ws, (tfm_attn_kernel)kern);
        tfm_profile *p = tfm_workspace_profile(ws);
        tfm_profile_reset(p);
        assert_int_equal(tfm_prefill(ws, st, toks, n - 1, logits), TFM_OK);
        assert_int_equal(tfm_decode(ws, &st, &toks[n - 1], 1, logits), TFM_OK);
        peak[kern][0] = p->attn_peak_bytes[TFM_PHASE_PREFILL];
        peak[kern][1] = p->attn_peak_bytes[TFM_PHASE_DECODE];
        tfm_state_destroy(st);
        tfm_workspace_destroy(ws);
    }
    /* last prefill chunk: 255 rows over 2047 keys; decode: 2048 keys */
    assert_true(peak[TFM_ATTN_NAIVE][0] == 255.0 * 2047 * sizeof(float));
    assert_true(peak[TFM_ATTN_NAIVE][1] == 2048.0 * sizeof(float));
    assert_true(peak[TFM_ATTN_TILED][0] == (64.0 * 128 + 2 * 64) * sizeof(float));
    assert_true(peak[TFM_ATTN_TILED][1] == (128.0 + 2) * sizeof(float));
    assert_true(peak[TFM_ATTN_TILED][0] * 10 < peak[TFM_ATTN_NAIVE][0]);
    /* AUTO: the largest of its per-chunk choices */
    double want = 0;
    for (int p0 = 0; p0 < n - 1; p0 += rows) {
        int T = n - 1 - p0 < rows ? n - 1 - p0 : rows;
        double b = (double)tfm__attn_bytes(tfm__attn_pick(TFM_ATTN_AUTO, T, p0 + T), T, p0 + T);
        want = b > want ? b : want;
    }
    assert_true(peak[TFM_ATTN_AUTO][0] == want);
    /* an out-of-range choice means AUTO */
    tfm_workspace *ws;
    tfm_state *st;
    float logits[16];
    assert_int_equal(tfm_workspace_create(m, rows, 1, &ws), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &st), TFM_OK);
    tfm_workspace_set_attention(ws, (tfm_attn_kernel)42);
    assert_int_equal(tfm_prefill(ws, st, toks, n - 1, logits), TFM_OK);
    assert_true(tfm_workspace_profile(ws)->attn_peak_bytes[TFM_PHASE_PREFILL] ==
                peak[TFM_ATTN_AUTO][0]);
    tfm_state_destroy(st);
    tfm_workspace_destroy(ws);
    /* peaks merge by max, not sum */
    tfm_profile a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    a.attn_peak_bytes[TFM_PHASE_PREFILL] = 100;
    b.attn_peak_bytes[TFM_PHASE_PREFILL] = 40;
    tfm_profile_add(&a, &b);
    tfm_profile_add(&b, &a);
    assert_true(a.attn_peak_bytes[TFM_PHASE_PREFILL] == 100);
    assert_true(b.attn_peak_bytes[TFM_PHASE_PREFILL] == 100);
    tfm_profile_reset(&a);
    assert_true(a.attn_peak_bytes[TFM_PHASE_PREFILL] == 0);
    free(toks);
    tfm_model_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_prefill_matches_reference),
        cmocka_unit_test(test_attention_decode_matches_reference),
        cmocka_unit_test(test_attention_names_and_pick),
        cmocka_unit_test(test_attention_forward_tiled_equals_naive),
        cmocka_unit_test(test_attention_peak_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
