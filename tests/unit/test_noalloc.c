/*
 * test_noalloc.c — the decode path and sampling never allocate.
 *
 * Linked with -Wl,--wrap=malloc,calloc,realloc,free,posix_memalign (see
 * CMakeLists.txt): every call goes through alloc_count.c.  After a
 * warm-up (the first sgemm call lets OpenBLAS set up its buffers), decode
 * steps at batch 1, 3 and 12 (kernel and sgemm paths) and sampling must
 * leave the counters where they were, with every option of
 * tfm_sampler_params on as well; and with KV caches in f32, bf16 and q8
 * (the 12 states' formats mixed, state 0's in each format in turn); and
 * prefill and decode of models with linear-attention layers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>

#include "alloc_count.h"
#include "testutil.h"
#include "tfm/model.h"
#include "tfm/quant.h"
#include "tfm/sampler.h"

static void test_noalloc_decode_and_sample(void **state)
{
    /* float32 weights, then q8 and bf16 (tfm_model_quantize) */
    static const int formats[] = {TFM_WF_F32, TFM_WF_Q8, TFM_WF_BF16};
    for (int fi = 0; fi < 3; fi++) {
        char qerr[128];
        tfm_model *m = tu_random_model(64, 96, 2, 4, 2, 300, 64, 0, 5);
        assert_int_equal(tfm_model_quantize(m, formats[fi], qerr, sizeof qerr), TFM_OK);
        int V = m->cfg.vocab_size;
        for (int kvf = 0; kvf < 3; kvf++)
        for (int threads = 1; threads <= 2; threads++) {
            tfm_workspace *ws;
            tfm_state *st[12];
            assert_int_equal(tfm_workspace_create(m, 12, threads, &ws), TFM_OK);
            for (int i = 0; i < 12; i++)
                assert_int_equal(tfm_state_create_fmt(m, 0, (tfm_kv_format)((kvf + i) % 3), &st[i]),
                                 TFM_OK);
            tfm_sampler_params sp = {.temperature = 0.8f, .top_k = 40, .top_p = 0.9f, .seed = 7};
            /* every option the sampler has: penalties, bias, min_p, logprobs */
            static const tfm_logit_bias bias[] = {{5, -100.0f}, {9, 3.0f}};
            tfm_sampler_params all = {.temperature = 0.7f, .top_p = 0.95f, .seed = 3, .min_p = 0.05f,
                                      .repetition_penalty = 1.3f, .presence_penalty = 0.5f,
                                      .frequency_penalty = 0.4f, .logit_bias = bias,
                                      .n_logit_bias = 2, .top_logprobs = TFM_MAX_TOP_LOGPROBS};
            tfm_token_logprob lp[1 + TFM_MAX_TOP_LOGPROBS];
            tfm_sampler *smp, *smp_all;
            assert_int_equal(tfm_sampler_create(V, &sp, &smp), TFM_OK);
            assert_int_equal(tfm_sampler_create(V, &all, &smp_all), TFM_OK);
            float *logits = malloc((size_t)12 * V * sizeof(float));
            int toks[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
            /* warm-up: every path once */
            for (int i = 0; i < 12; i++)
                assert_int_equal(tfm_prefill(ws, st[i], toks, 3 + i, logits), TFM_OK);
            assert_int_equal(tfm_decode(ws, st, toks, 12, logits), TFM_OK);
            assert_int_equal(tfm_decode(ws, st, toks, 1, logits), TFM_OK);
            long before = tu_alloc_count();
            for (int step = 0; step < 10; step++) {
                static const int batches[] = {1, 3, 12};
                int B = batches[step % 3];
                assert_int_equal(tfm_decode(ws, st, toks, B, logits), TFM_OK);
                for (int b = 0; b < B; b++)
                    toks[b] = b % 2 ? tfm_sampler_sample_lp(smp_all, logits + (size_t)b * V, lp)
                                    : tfm_sampler_sample(smp, logits + (size_t)b * V);
            }
            assert_int_equal(tfm_sampler_reset(smp, &sp), TFM_OK);
            tfm_sampler_sample(smp, logits);
            assert_int_equal(tfm_sampler_reset(smp_all, &all), TFM_OK);
            tfm_sampler_set_prompt(smp_all, toks, 16);
            tfm_sampler_sample(smp_all, logits);
            all.temperature = 0.0f; /* greedy through the processed logits */
            assert_int_equal(tfm_sampler_reset(smp_all, &all), TFM_OK);
            tfm_sampler_sample_lp(smp_all, logits, lp);
            /* a prompt's own log-probabilities: every row's logits, then each
             * row's entries (12 rows fit the logits buffer) */
            tfm_state_reset(st[0]);
            assert_int_equal(tfm_prefill_rows(ws, st[0], toks, 12, logits), TFM_OK);
            for (int r = 0; r + 1 < 12; r++)
                tfm_sampler_logprobs(smp_all, logits + (size_t)r * V, toks[r + 1], lp);
            long after = tu_alloc_count();
            assert_int_equal(after - before, 0);
            free(logits);
            tfm_sampler_destroy(smp);
            tfm_sampler_destroy(smp_all);
            for (int i = 0; i < 12; i++)
                tfm_state_destroy(st[i]);
            tfm_workspace_destroy(ws);
        }
        tfm_model_destroy(m);
    }
}

/* Beside the decode loop above: a 32000-entry vocabulary, a 1000-token
 * prompt and a history growing over 300 steps per params set, through each
 * option — logit_bias (and a ban), the three penalties, min_p alone and
 * after top_k / top_p, greedy with options, log-probabilities with 0, 5 and
 * 20 alternatives — and set_prompt and reset (which clears the history):
 * the counters stay where they were. */
static void test_noalloc_sampler_options(void **state)
{
    enum { V = 32000, STEPS = 300 };
    static const tfm_logit_bias bias[] = {{3, 2.0f}, {4, -100.0f}, {5, -1.5f}};
    const tfm_sampler_params ps[] = {
        {.temperature = 0.8f, .top_k = 40, .top_p = 0.9f, .seed = 1, .min_p = 0.05f,
         .repetition_penalty = 1.3f, .presence_penalty = 0.5f, .frequency_penalty = 0.5f,
         .logit_bias = bias, .n_logit_bias = 3, .top_logprobs = TFM_MAX_TOP_LOGPROBS},
        {.temperature = 1.0f, .top_p = 1.0f, .seed = 2, .min_p = 0.1f,
         .repetition_penalty = 0.8f, .logit_bias = bias, .n_logit_bias = 3, .top_logprobs = 5},
        {.temperature = 0.7f, .top_p = 0.95f, .seed = 3, .presence_penalty = -1.0f,
         .frequency_penalty = 2.0f, .top_logprobs = 0},
        {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.5f,
         .presence_penalty = 1.0f, .logit_bias = bias, .n_logit_bias = 3, .top_logprobs = 3},
        {.temperature = 0.0f, .top_p = 1.0f},
    };
    float *logits = malloc((size_t)V * sizeof *logits);
    int *prompt = malloc(1000 * sizeof *prompt);
    tfm_token_logprob lp[1 + TFM_MAX_TOP_LOGPROBS];
    assert_non_null(logits);
    assert_non_null(prompt);
    for (int i = 0; i < 1000; i++)
        prompt[i] = (i * 7919) % V;
    tfm_sampler *smp;
    assert_int_equal(tfm_sampler_create(V, &ps[0], &smp), TFM_OK);
    uint64_t rng = 99;
    long before = tu_alloc_count();
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        assert_int_equal(tfm_sampler_reset(smp, &ps[k]), TFM_OK);
        tfm_sampler_set_prompt(smp, prompt, 1000);
        for (int step = 0; step < STEPS; step++) {
            for (int i = 0; i < V; i++) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                logits[i] = (float)(rng >> 40) * (6.0f / 16777216.0f);
            }
            int id = step % 2 ? tfm_sampler_sample(smp, logits)
                              : tfm_sampler_sample_lp(smp, logits, lp);
            assert_true(id >= 0 && id < V && id != 4);
        }
    }
    long after = tu_alloc_count();
    assert_int_equal(after - before, 0);
    tfm_sampler_destroy(smp);
    free(prompt);
    free(logits);
}

/* A hybrid model (["linear", "softmax"], f = 8) and an all-linear one:
 * prefill (chunks of 12 rows, linear states and a cache in each format)
 * and batched decode at 1, 3 and 12 rows, on 1 and 2 threads. */
static void test_noalloc_linear_mixer(void **state)
{
    (void)state;
    for (uint64_t lin = 1; lin <= 3; lin += 2)
        for (int threads = 1; threads <= 2; threads++) {
            tfm_config c = {.dim = 64, .hidden_dim = 96, .n_layers = 2, .n_heads = 4,
                            .n_kv_heads = 2, .vocab_size = 300, .seq_len = 64,
                            .shared_classifier = 1, .linear_layers = lin, .feature_dim = 8};
            tfm_config_defaults(&c);
            tfm_model *m;
            char err[128];
            assert_int_equal(tfm_model_create(&c, &m, err, sizeof err), TFM_OK);
            tfm_model_init_random(m, 9);
            tfm_workspace *ws;
            tfm_state *st[12];
            assert_int_equal(tfm_workspace_create(m, 12, threads, &ws), TFM_OK);
            for (int i = 0; i < 12; i++)
                assert_int_equal(tfm_state_create_fmt(m, 0, (tfm_kv_format)(i % 3), &st[i]),
                                 TFM_OK);
            float *logits = malloc((size_t)12 * 300 * sizeof(float));
            int toks[30];
            for (int i = 0; i < 30; i++)
                toks[i] = (i * 37) % 300;
            assert_int_equal(tfm_prefill(ws, st[0], toks, 3, logits), TFM_OK); /* warm-up */
            assert_int_equal(tfm_decode(ws, st, toks, 12, logits), TFM_OK);
            long before = tu_alloc_count();
            for (int i = 1; i < 12; i++)
                assert_int_equal(tfm_prefill(ws, st[i], toks, 5 + i, logits), TFM_OK);
            for (int step = 0; step < 9; step++) {
                static const int batches[] = {1, 3, 12};
                assert_int_equal(tfm_decode(ws, st, toks, batches[step % 3], logits), TFM_OK);
            }
            tfm_state_reset(st[0]);
            assert_int_equal(tfm_prefill(ws, st[0], toks, 30, logits), TFM_OK);
            assert_int_equal(tu_alloc_count() - before, 0);
            free(logits);
            for (int i = 0; i < 12; i++)
                tfm_state_destroy(st[i]);
            tfm_workspace_destroy(ws);
            tfm_model_destroy(m);
        }
}

/* The counter itself works: otherwise the test above could not fail. */
static void test_noalloc_counter_sees_malloc(void **state)
{
    long before = tu_alloc_count();
    void *volatile p = malloc(16); /* volatile: the pair may not be elided */
    free(p);
    assert_int_equal(tu_alloc_count() - before, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_noalloc_counter_sees_malloc),
        cmocka_unit_test(test_noalloc_decode_and_sample),
        cmocka_unit_test(test_noalloc_sampler_options),
        cmocka_unit_test(test_noalloc_linear_mixer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
