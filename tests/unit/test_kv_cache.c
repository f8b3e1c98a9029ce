/*
 * test_kv_cache.c — the KV cache in bf16 and q8 (core/kv_cache.c and the
 * *_kv attention kernels).
 *
 * Checked, per format (f32, bf16, q8) and on head sizes 48 (three AVX-512
 * vectors), 10 and 6 (a tail only) and 24 (a vector and a tail):
 *   - names, bytes per token against the formula, and the bytes the state
 *     allocates;
 *   - a row's round trip within the format's bound (bf16: 2^-9 relative;
 *     q8: half a step, max|row| / 254, per element);
 *   - the kernels that read the cache in its format (decode: on-the-fly dot
 *     products, naive and tiled; prefill: block-dequantised sgemms, naive
 *     and tiled) against the float32 kernels run on a dequantised copy of
 *     the same rows: the plain reference, to float rounding (1e-5);
 *   - the forward: prefill (several chunk sizes, 1-2 threads) against token
 *     by token decode, naive against tiled, and a copied state decoding as
 *     its source (bit for bit);
 *   - bf16 and q8 against the float32 cache over 64 greedy tokens: logits
 *     within 0.5% (bf16) and 1.5% (q8) of the f32 logits' largest magnitude
 *     (measured: 0.08-0.14% and 0.25-0.39%), top-1 the same at >= 90% of
 *     the steps (measured 63-64 of 64).
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

#include "kv_cache.h"
#include "testutil.h"

static const tfm_kv_format FORMATS[] = {TFM_KV_F32, TFM_KV_BF16, TFM_KV_Q8};
#define N_FORMATS 3

/* (dim, heads, kv_heads): head sizes 48, 10, 6 and 24 (a vector and a tail) */
static const int SHAPES[][3] = {{96, 2, 1}, {40, 4, 2}, {24, 4, 2}, {72, 3, 3}};
#define N_SHAPES 4

static tfm_model *shape_model(int s, int seq_len, uint64_t seed)
{
    return tu_random_model(SHAPES[s][0], SHAPES[s][0] * 2, 2, SHAPES[s][1], SHAPES[s][2], 300,
                           seq_len, 0, seed);
}

/* max |a - b| / max |ref| */
static float scaled_diff(const float *a, const float *ref, size_t n)
{
    float d = 0.0f, mx = 1e-30f;
    for (size_t i = 0; i < n; i++) {
        d = fmaxf(d, fabsf(a[i] - ref[i]));
        mx = fmaxf(mx, fabsf(ref[i]));
    }
    return d / mx;
}

static void test_kv_names_and_bytes(void **state)
{
    (void)state;
    tfm_kv_format f = TFM_KV_Q8;
    assert_int_equal(tfm_kv_format_parse("bf16", &f), TFM_OK);
    assert_int_equal(f, TFM_KV_BF16);
    assert_int_equal(tfm_kv_format_parse("q4", &f), TFM_E_INVALID);
    assert_int_equal(tfm_kv_format_parse(NULL, &f), TFM_E_INVALID);
    assert_int_equal(f, TFM_KV_BF16);
    assert_null(tfm_kv_format_name((tfm_kv_format)7));
    for (int i = 0; i < N_FORMATS; i++) {
        assert_int_equal(tfm_kv_format_parse(tfm_kv_format_name(FORMATS[i]), &f), TFM_OK);
        assert_int_equal(f, FORMATS[i]);
    }
    /* the 15M shape: 6 layers, 288 wide, 6 kv heads of 48 */
    tfm_config c = {.dim = 288, .hidden_dim = 768, .n_layers = 6, .n_heads = 6, .n_kv_heads = 6,
                    .vocab_size = 32000, .seq_len = 256};
    assert_int_equal(tfm_kv_bytes_per_token(&c, TFM_KV_F32), 6 * 2 * 288 * 4);
    assert_int_equal(tfm_kv_bytes_per_token(&c, TFM_KV_BF16), 6 * 2 * 288 * 2);
    assert_int_equal(tfm_kv_bytes_per_token(&c, TFM_KV_Q8), 6 * 2 * (288 + 6 * 4));
    assert_int_equal(tfm_kv_bytes_per_token(&c, (tfm_kv_format)3), 0);
    tfm_model *m = shape_model(1, 40, 1);
    for (int i = 0; i < N_FORMATS; i++) {
        tfm_state *st;
        assert_int_equal(tfm_state_create_fmt(m, 33, FORMATS[i], &st), TFM_OK);
        assert_int_equal(st->kv_format, FORMATS[i]);
        assert_int_equal(st->kv_bytes, 33 * tfm_kv_bytes_per_token(&m->cfg, FORMATS[i]));
        assert_true((FORMATS[i] == TFM_KV_F32) == (st->key_cache != NULL));
        tfm_state_destroy(st);
    }
    tfm_state *st = (tfm_state *)1;
    assert_int_equal(tfm_state_create_fmt(m, 0, (tfm_kv_format)3, &st), TFM_E_INVALID);
    assert_null(st);
    assert_int_equal(tfm_state_create_fmt(m, 41, TFM_KV_Q8, &st), TFM_E_RANGE);
    tfm_model_destroy(m);
}

/* Random rows at every position of every layer, keys and values. */
static void fill_random(tfm_state *st, uint64_t seed)
{
    const tfm_config *c = &st->model->cfg;
    int kv = c->dim / c->n_heads * c->n_kv_heads;
    float *row = malloc((size_t)kv * sizeof(float));
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < st->max_seq; p++)
            for (int which = 0; which < 2; which++) {
                for (int i = 0; i < kv; i++) /* a few larger values: outliers */
                    row[i] = tu_uniform(&seed) * (i % 7 == 3 ? 4.0f : 1.0f);
                tfm__kv_store(st, which, l, p, row);
            }
    st->pos = st->max_seq;
    free(row);
}

static void test_kv_row_round_trip(void **state)
{
    (void)state;
    for (int s = 0; s < N_SHAPES; s++) {
        tfm_model *m = shape_model(s, 16, 2);
        const tfm_config *c = &m->cfg;
        int hs = c->dim / c->n_heads, kv = hs * c->n_kv_heads;
        float *row = malloc((size_t)kv * sizeof(float)), *back = malloc((size_t)hs * sizeof(float));
        uint64_t seed = 11;
        for (int fi = 0; fi < N_FORMATS; fi++) {
            tfm_state *st;
            assert_int_equal(tfm_state_create_fmt(m, 0, FORMATS[fi], &st), TFM_OK);
            for (int i = 0; i < kv; i++)
                row[i] = tu_uniform(&seed) * (i == 1 ? 9.0f : 1.0f);
            if (c->n_kv_heads > 1) /* an all-zero head: scale 0, values 0 */
                memset(row + hs, 0, (size_t)hs * sizeof(float));
            tfm__kv_store(st, 1, 1, 5, row);
            for (int h = 0; h < c->n_kv_heads; h++) {
                tfm__kv v = tfm__kv_head(st, 1, 1, h);
                tfm__kv_load_rows(&v, 5, 1, hs, back);
                const float *x = row + (size_t)h * hs;
                float amax = 0.0f;
                for (int i = 0; i < hs; i++)
                    amax = fmaxf(amax, fabsf(x[i]));
                for (int i = 0; i < hs; i++) {
                    float err = fabsf(back[i] - x[i]);
                    if (FORMATS[fi] == TFM_KV_F32)
                        assert_true(err == 0.0f);
                    else if (FORMATS[fi] == TFM_KV_BF16)
                        assert_true(err <= fabsf(x[i]) * 0x1p-8f);
                    else
                        assert_true(err <= amax / 254.0f * 1.0001f + 1e-7f);
                }
            }
            tfm_state_destroy(st);
        }
        free(row), free(back);
        tfm_model_destroy(m);
    }
}

/* The kernels reading the cache in its format against the float32 kernels
 * on the same rows dequantised: decode at several lengths (across key
 * blocks of 128), prefill chunks at several offsets, naive and tiled. */
static void test_kv_kernels_match_reference(void **state)
{
    (void)state;
    static const int ctxs[] = {1, 7, 128, 129, 300};
    static const int chunks[][2] = {{1, 0}, {5, 0}, {70, 0}, {70, 230}, {3, 297}, {64, 128}};
    for (int s = 0; s < N_SHAPES; s++) {
        tfm_model *m = shape_model(s, 300, 3);
        const tfm_config *c = &m->cfg;
        int hs = c->dim / c->n_heads, kv = hs * c->n_kv_heads, S = 300;
        float *K = malloc((size_t)S * hs * sizeof(float)), *V = malloc((size_t)S * hs * sizeof(float));
        float *q = malloc((size_t)S * hs * sizeof(float));
        float *got = malloc((size_t)S * hs * sizeof(float)), *ref = malloc((size_t)S * hs * sizeof(float));
        float *scratch = malloc((size_t)S * S * sizeof(float));
        float *tile = malloc(tfm__attn_kv_tile_floats(hs) * sizeof(float));
        uint64_t seed = 5;
        for (int i = 0; i < S * hs; i++)
            q[i] = tu_uniform(&seed) * 2.0f;
        for (int fi = 0; fi < N_FORMATS; fi++) {
            tfm_state *st;
            assert_int_equal(tfm_state_create_fmt(m, 0, FORMATS[fi], &st), TFM_OK);
            fill_random(st, 100 + fi);
            int h = c->n_kv_heads - 1, l = 1;
            tfm__kv kq = tfm__kv_head(st, 0, l, h), vq = tfm__kv_head(st, 1, l, h);
            tfm__kv_load_rows(&kq, 0, S, hs, K);
            tfm__kv_load_rows(&vq, 0, S, hs, V);
            (void)kv;
            for (int kern = TFM_ATTN_NAIVE; kern <= TFM_ATTN_TILED; kern++) {
                for (size_t i = 0; i < sizeof ctxs / sizeof *ctxs; i++) {
                    tfm__attn_decode((tfm_attn_kernel)kern, ref, q, K, V, hs, hs, ctxs[i], scratch);
                    tfm__attn_decode_kv((tfm_attn_kernel)kern, got, q, &kq, &vq, hs, ctxs[i],
                                        scratch);
                    tu_check_tensor("decode", got, ref, (size_t)hs, 1e-5f);
                }
                for (size_t i = 0; i < sizeof chunks / sizeof *chunks; i++) {
                    int T = chunks[i][0], p0 = chunks[i][1];
                    tfm__attn_prefill((tfm_attn_kernel)kern, ref, hs, q, hs, K, V, hs, hs, T, p0,
                                      scratch);
                    tfm__attn_prefill_kv((tfm_attn_kernel)kern, got, hs, q, hs, &kq, &vq, hs, T,
                                         p0, scratch, tile);
                    tu_check_tensor("prefill", got, ref, (size_t)T * hs, 1e-5f);
                }
            }
            tfm_state_destroy(st);
        }
        free(K), free(V), free(q), free(got), free(ref), free(scratch), free(tile);
        tfm_model_destroy(m);
    }
}

static void prompt(int *t, int n, int V, uint64_t seed)
{
    for (int i = 0; i < n; i++)
        t[i] = (int)(tu_rng(&seed) % (uint64_t)V);
}

/* Token by token decode against prefill in chunks of 64, 37, 8 and 1 rows
 * on 1 and 2 threads, per format and head size; then naive against tiled.
 * The same rows are quantised either way, from keys that differ only by
 * float rounding (sgemm or the matrix-vector kernel), so a value can land
 * one rounding step apart: the tolerance, 1e-3 of the logits' scale, allows
 * for that step's effect (measured: below 2e-6 on these models); float
 * rounding, 1e-4, for f32. */
static void test_kv_prefill_equals_decode(void **state)
{
    (void)state;
    static const int rows[] = {64, 37, 8, 1};
    for (int s = 0; s < N_SHAPES; s++) {
        tfm_model *m = shape_model(s, 64, 4);
        int V = m->cfg.vocab_size, n = 45, toks[46];
        prompt(toks, 46, V, 9);
        float *dec = malloc((size_t)V * sizeof(float)), *pre = malloc((size_t)V * sizeof(float));
        float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
        for (int fi = 0; fi < N_FORMATS; fi++) {
            float tol = FORMATS[fi] == TFM_KV_F32 ? 1e-4f : 1e-3f;
            tfm_workspace *w1;
            tfm_state *sd;
            assert_int_equal(tfm_workspace_create(m, 1, 1, &w1), TFM_OK);
            assert_int_equal(tfm_state_create_fmt(m, 0, FORMATS[fi], &sd), TFM_OK);
            for (int p = 0; p < n; p++)
                assert_int_equal(tfm_decode(w1, &sd, &toks[p], 1, dec), TFM_OK);
            assert_int_equal(tfm_decode(w1, &sd, &toks[n], 1, b), TFM_OK);
            float worst = 0.0f;
            for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
                for (int threads = 1; threads <= 2; threads++)
                    for (int kern = TFM_ATTN_AUTO; kern <= TFM_ATTN_TILED; kern++) {
                        tfm_workspace *ws;
                        tfm_state *sp;
                        assert_int_equal(tfm_workspace_create(m, rows[i], threads, &ws), TFM_OK);
                        tfm_workspace_set_attention(ws, (tfm_attn_kernel)kern);
                        assert_int_equal(tfm_state_create_fmt(m, 0, FORMATS[fi], &sp), TFM_OK);
                        assert_int_equal(tfm_prefill(ws, sp, toks, n, pre), TFM_OK);
                        assert_int_equal(sp->pos, n);
                        float d = scaled_diff(pre, dec, (size_t)V);
                        worst = fmaxf(worst, d);
                        assert_true(d <= tol);
                        /* decoding continues as the decoded state does */
                        assert_int_equal(tfm_decode(ws, &sp, &toks[n], 1, a), TFM_OK);
                        d = scaled_diff(a, b, (size_t)V);
                        worst = fmaxf(worst, d);
                        assert_true(d <= tol);
                        tfm_state_destroy(sp);
                        tfm_workspace_destroy(ws);
                    }
            printf("# hs %d %s: prefill vs decode logits within %.2g of their scale\n",
                   m->cfg.dim / m->cfg.n_heads, tfm_kv_format_name(FORMATS[fi]), worst);
            tfm_state_destroy(sd);
            tfm_workspace_destroy(w1);
        }
        free(dec), free(pre), free(a), free(b);
        tfm_model_destroy(m);
    }
}

/* 64 greedy tokens on the f32 cache, then the same tokens fed to a bf16 and
 * a q8 cache (teacher-forced, so one early flip does not derail the rest):
 * every step's logits within the format's tolerance of f32's. */
static void test_kv_close_to_f32(void **state)
{
    (void)state;
    for (int s = 0; s < N_SHAPES; s++) {
        tfm_model *m = shape_model(s, 80, 6);
        int V = m->cfg.vocab_size, n = 64, toks[65];
        float *ref = malloc((size_t)n * V * sizeof(float)), *got = malloc((size_t)V * sizeof(float));
        tfm_workspace *ws;
        tfm_state *sf;
        assert_int_equal(tfm_workspace_create(m, 4, 1, &ws), TFM_OK);
        assert_int_equal(tfm_state_create(m, 0, &sf), TFM_OK);
        toks[0] = 1;
        for (int p = 0; p < n; p++) {
            assert_int_equal(tfm_decode(ws, &sf, &toks[p], 1, ref + (size_t)p * V), TFM_OK);
            int best = 0;
            for (int i = 1; i < V; i++)
                best = ref[(size_t)p * V + i] > ref[(size_t)p * V + best] ? i : best;
            toks[p + 1] = best;
        }
        for (int fi = 1; fi < N_FORMATS; fi++) {
            float tol = FORMATS[fi] == TFM_KV_BF16 ? 0.005f : 0.015f, worst = 0.0f;
            int top1 = 0;
            tfm_state *st;
            assert_int_equal(tfm_state_create_fmt(m, 0, FORMATS[fi], &st), TFM_OK);
            for (int p = 0; p < n; p++) {
                assert_int_equal(tfm_decode(ws, &st, &toks[p], 1, got), TFM_OK);
                worst = fmaxf(worst, scaled_diff(got, ref + (size_t)p * V, (size_t)V));
                int best = 0;
                for (int i = 1; i < V; i++)
                    best = got[i] > got[best] ? i : best;
                top1 += best == toks[p + 1];
            }
            printf("# hs %d %s vs f32 cache: logits within %.3g of their scale, top-1 %d/%d\n",
                   m->cfg.dim / m->cfg.n_heads, tfm_kv_format_name(FORMATS[fi]), worst, top1, n);
            assert_true(worst <= tol);
            assert_true(top1 >= n * 9 / 10);
            tfm_state_destroy(st);
        }
        tfm_state_destroy(sf);
        tfm_workspace_destroy(ws);
        free(ref), free(got);
        tfm_model_destroy(m);
    }
}

/* A copy decodes exactly as its source; formats must match. */
static void test_kv_state_copy(void **state)
{
    (void)state;
    tfm_model *m = shape_model(1, 64, 7);
    int V = m->cfg.vocab_size, toks[30];
    prompt(toks, 30, V, 3);
    float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
    tfm_workspace *ws;
    assert_int_equal(tfm_workspace_create(m, 16, 1, &ws), TFM_OK);
    for (int fi = 0; fi < N_FORMATS; fi++) {
        tfm_state *src, *dst, *small, *other;
        assert_int_equal(tfm_state_create_fmt(m, 0, FORMATS[fi], &src), TFM_OK);
        assert_int_equal(tfm_state_create_fmt(m, 0, FORMATS[fi], &dst), TFM_OK);
        assert_int_equal(tfm_state_create_fmt(m, 20, FORMATS[fi], &small), TFM_OK);
        assert_int_equal(tfm_state_create_fmt(m, 0, FORMATS[(fi + 1) % N_FORMATS], &other),
                         TFM_OK);
        assert_int_equal(tfm_prefill(ws, src, toks, 25, NULL), TFM_OK);
        assert_int_equal(tfm_prefill(ws, dst, toks + 3, 7, NULL), TFM_OK); /* overwritten */
        /* copies of the first 20 positions, into a same-size and a smaller state */
        tfm_state *copies[2] = {dst, small};
        for (int i = 0; i < 2; i++) {
            assert_int_equal(tfm_state_copy(copies[i], src, 20), TFM_OK);
            assert_int_equal(copies[i]->pos, 20);
        }
        tfm_state *ref;
        assert_int_equal(tfm_state_create_fmt(m, 0, FORMATS[fi], &ref), TFM_OK);
        assert_int_equal(tfm_state_copy(ref, src, 20), TFM_OK);
        assert_int_equal(tfm_state_copy(small, src, 20), TFM_OK);
        assert_int_equal(tfm_decode(ws, &ref, &toks[20], 1, a), TFM_OK);
        assert_int_equal(tfm_decode(ws, &dst, &toks[20], 1, b), TFM_OK);
        assert_memory_equal(a, b, (size_t)V * sizeof(float));
        /* the small copy holds the same rows at its own stride */
        assert_int_equal(tfm_state_copy(small, src, 19), TFM_OK);
        assert_int_equal(tfm_state_copy(dst, src, 19), TFM_OK);
        assert_int_equal(tfm_decode(ws, &small, &toks[19], 1, a), TFM_OK);
        assert_int_equal(tfm_decode(ws, &dst, &toks[19], 1, b), TFM_OK);
        assert_memory_equal(a, b, (size_t)V * sizeof(float));
        /* errors */
        assert_int_equal(tfm_state_copy(other, src, 5), TFM_E_INVALID);
        assert_int_equal(tfm_state_copy(dst, src, 26), TFM_E_RANGE);
        assert_int_equal(tfm_state_copy(small, src, 21), TFM_E_RANGE);
        assert_int_equal(tfm_state_copy(NULL, src, 1), TFM_E_INVALID);
        tfm_state_destroy(ref);
        tfm_state_destroy(src);
        tfm_state_destroy(dst);
        tfm_state_destroy(small);
        tfm_state_destroy(other);
    }
    tfm_workspace_destroy(ws);
    free(a), free(b);
    tfm_model_destroy(m);
}

/* Batched decode mixing formats: each row as it would decode alone. */
static void test_kv_mixed_batch(void **state)
{
    (void)state;
    tfm_model *m = shape_model(0, 64, 8);
    int V = m->cfg.vocab_size, toks[20];
    prompt(toks, 20, V, 4);
    float *lb = malloc((size_t)3 * V * sizeof(float)), *l1 = malloc((size_t)V * sizeof(float));
    tfm_workspace *ws;
    assert_int_equal(tfm_workspace_create(m, 3, 2, &ws), TFM_OK);
    tfm_state *bs[3], *one[3];
    for (int i = 0; i < N_FORMATS; i++) {
        assert_int_equal(tfm_state_create_fmt(m, 0, FORMATS[i], &bs[i]), TFM_OK);
        assert_int_equal(tfm_state_create_fmt(m, 0, FORMATS[i], &one[i]), TFM_OK);
        assert_int_equal(tfm_prefill(ws, bs[i], toks, 10 + i, NULL), TFM_OK);
        assert_int_equal(tfm_prefill(ws, one[i], toks, 10 + i, NULL), TFM_OK);
    }
    int next[3] = {toks[10], toks[11], toks[12]};
    assert_int_equal(tfm_decode(ws, bs, next, 3, lb), TFM_OK);
    for (int i = 0; i < N_FORMATS; i++) {
        assert_int_equal(tfm_decode(ws, &one[i], &next[i], 1, l1), TFM_OK);
        tu_check_tensor("batched row", lb + (size_t)i * V, l1, (size_t)V, 1e-4f);
        tfm_state_destroy(bs[i]);
        tfm_state_destroy(one[i]);
    }
    tfm_workspace_destroy(ws);
    free(lb), free(l1);
    tfm_model_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_names_and_bytes),
        cmocka_unit_test(test_kv_row_round_trip),
        cmocka_unit_test(test_kv_kernels_match_reference),
        cmocka_unit_test(test_kv_prefill_equals_decode),
        cmocka_unit_test(test_kv_close_to_f32),
        cmocka_unit_test(test_kv_state_copy),
        cmocka_unit_test(test_kv_mixed_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
