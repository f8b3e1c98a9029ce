/*
 * test_sampler.c — greedy, temperature, top-k and top-p sampling.
 *
 * Distribution tests draw many samples from small vocabularies and compare
 * frequencies with the exact probabilities; the tolerances are several
 * standard deviations wide, and the seeds are fixed, so they never flake.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tfm/sampler.h"

/* The four classic fields; the rest zero, which is "off". */
#define P(t, k, p, s) {.temperature = (t), .top_k = (k), .top_p = (p), .seed = (s)}

static tfm_sampler *make(int vocab, float temperature, int top_k, float top_p, uint64_t seed)
{
    tfm_sampler_params p = P(temperature, top_k, top_p, seed);
    tfm_sampler *s = NULL;
    assert_int_equal(tfm_sampler_create(vocab, &p, &s), TFM_OK);
    assert_non_null(s);
    return s;
}

/* Fills x[0..n) with deterministic pseudo-random logits in [-4, 4). */
static void random_logits(float *x, int n, uint64_t *rng)
{
    for (int i = 0; i < n; i++) {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        x[i] = (float)((*rng >> 40) * (8.0 / 16777216.0)) - 4.0f;
    }
}

/* Samples the (copied) logits `draws` times and counts each id. */
static void histogram(tfm_sampler *s, const float *logits, int n, int draws, int *count)
{
    float scratch[16];
    assert_true(n <= 16);
    memset(count, 0, (size_t)n * sizeof *count);
    for (int d = 0; d < draws; d++) {
        memcpy(scratch, logits, (size_t)n * sizeof *scratch);
        int id = tfm_sampler_sample(s, scratch);
        assert_true(id >= 0 && id < n);
        count[id]++;
    }
}

/* Checks count[i]/draws against want[i] within tol. */
static void check_freq(const int *count, const double *want, int n, int draws, double tol)
{
    for (int i = 0; i < n; i++) {
        double f = (double)count[i] / draws;
        if (fabs(f - want[i]) > tol)
            fail_msg("token %d: frequency %.4f, want %.4f (tol %.3f)", i, f, want[i], tol);
    }
}

static void test_argmax_lowest_index_on_ties(void **state)
{
    (void)state;
    float x[] = {1, 3, 2, 3, -1};
    assert_int_equal(tfm_argmax(x, 5), 1);
    assert_int_equal(tfm_argmax(x, 1), 0);
    float y[] = {NAN, -5, 2, NAN};
    assert_int_equal(tfm_argmax(y, 4), 2);
    float z[] = {-INFINITY, -INFINITY};
    assert_int_equal(tfm_argmax(z, 2), 0);
}

static void test_sampler_temperature_zero_is_argmax(void **state)
{
    (void)state;
    enum { V = 1000 };
    static float logits[V], copy[V];
    uint64_t rng = 3;
    tfm_sampler *s = make(V, 0.0f, 0, 1.0f, 7);
    for (int trial = 0; trial < 50; trial++) {
        random_logits(logits, V, &rng);
        memcpy(copy, logits, sizeof copy);
        assert_int_equal(tfm_sampler_sample(s, copy), tfm_argmax(logits, V));
    }
    tfm_sampler_destroy(s);
}

static void test_sampler_top_k_one_is_greedy(void **state)
{
    (void)state;
    enum { V = 32000 };
    static float logits[V], copy[V];
    uint64_t rng = 11;
    tfm_sampler *s = make(V, 1.5f, 1, 1.0f, 1);
    for (int trial = 0; trial < 20; trial++) {
        random_logits(logits, V, &rng);
        /* a near-tie that expf may round to the same probability */
        int a = trial * 7 % V;
        logits[a] = 100.0f;
        logits[a + 1] = nextafterf(100.0f, 0.0f);
        memcpy(copy, logits, sizeof copy);
        assert_int_equal(tfm_sampler_sample(s, copy), a);
    }
    tfm_sampler_destroy(s);
}

static void test_sampler_tiny_top_p_is_greedy(void **state)
{
    (void)state;
    enum { V = 5000 };
    static float logits[V], copy[V];
    uint64_t rng = 12;
    tfm_sampler *s = make(V, 1.0f, 0, 1e-6f, 2);
    for (int trial = 0; trial < 50; trial++) {
        random_logits(logits, V, &rng);
        memcpy(copy, logits, sizeof copy);
        assert_int_equal(tfm_sampler_sample(s, copy), tfm_argmax(logits, V));
    }
    /* also with every logit equal: the lowest id */
    for (int i = 0; i < V; i++)
        logits[i] = 0.5f;
    assert_int_equal(tfm_sampler_sample(s, logits), 0);
    tfm_sampler_destroy(s);
}

/* Draws a sequence of n ids from fresh random logits. */
static void sequence(tfm_sampler *s, int vocab, int n, int *out)
{
    static float logits[512];
    assert_true(vocab <= 512);
    uint64_t rng = 77;
    for (int i = 0; i < n; i++) {
        random_logits(logits, vocab, &rng);
        out[i] = tfm_sampler_sample(s, logits);
    }
}

static void test_sampler_deterministic_per_seed(void **state)
{
    (void)state;
    enum { V = 512, N = 200 };
    static int a[N], b[N], c[N];
    const float tops[][2] = {{0, 1.0f}, {40, 1.0f}, {0, 0.9f}, {40, 0.9f}};
    for (size_t k = 0; k < sizeof tops / sizeof tops[0]; k++) {
        tfm_sampler *s1 = make(V, 1.0f, (int)tops[k][0], tops[k][1], 42);
        tfm_sampler *s2 = make(V, 1.0f, (int)tops[k][0], tops[k][1], 42);
        tfm_sampler *s3 = make(V, 1.0f, (int)tops[k][0], tops[k][1], 43);
        sequence(s1, V, N, a);
        sequence(s2, V, N, b);
        sequence(s3, V, N, c);
        assert_memory_equal(a, b, sizeof a);
        assert_memory_not_equal(a, c, sizeof a);
        /* reset restarts the stream */
        tfm_sampler_params p = P(1.0f, (int)tops[k][0], tops[k][1], 42);
        assert_int_equal(tfm_sampler_reset(s3, &p), TFM_OK);
        sequence(s3, V, N, c);
        assert_memory_equal(a, c, sizeof a);
        tfm_sampler_destroy(s1);
        tfm_sampler_destroy(s2);
        tfm_sampler_destroy(s3);
    }
}

static void test_sampler_seed_zero_works(void **state)
{
    (void)state;
    enum { V = 64, N = 100 };
    int a[N];
    tfm_sampler *s = make(V, 1.0f, 0, 1.0f, 0);
    sequence(s, V, N, a);
    int distinct = 0, seen[V] = {0};
    for (int i = 0; i < N; i++)
        if (!seen[a[i]]++)
            distinct++;
    assert_true(distinct > 10);
    tfm_sampler_destroy(s);
}

static void test_sampler_frequencies_match_softmax(void **state)
{
    (void)state;
    enum { DRAWS = 200000 };
    const float logits[4] = {1.0f, 2.0f, 3.0f, 0.5f};
    const float temps[] = {1.0f, 0.5f, 2.0f};
    for (size_t k = 0; k < sizeof temps / sizeof temps[0]; k++) {
        double want[4], sum = 0;
        for (int i = 0; i < 4; i++)
            sum += want[i] = exp(logits[i] / temps[k]);
        for (int i = 0; i < 4; i++)
            want[i] /= sum;
        tfm_sampler *s = make(4, temps[k], 0, 1.0f, 1234 + k);
        int count[4];
        histogram(s, logits, 4, DRAWS, count);
        check_freq(count, want, 4, DRAWS, 0.006);
        tfm_sampler_destroy(s);
    }
}

static void test_sampler_top_k_renormalises(void **state)
{
    (void)state;
    enum { DRAWS = 100000 };
    const float logits[4] = {1.0f, 2.0f, 3.0f, 0.5f};
    double e1 = exp(2.0), e2 = exp(3.0);
    const double want[4] = {0, e1 / (e1 + e2), e2 / (e1 + e2), 0};
    tfm_sampler *s = make(4, 1.0f, 2, 1.0f, 5);
    int count[4];
    histogram(s, logits, 4, DRAWS, count);
    assert_int_equal(count[0] + count[3], 0);
    check_freq(count, want, 4, DRAWS, 0.008);
    tfm_sampler_destroy(s);
}

static void test_sampler_top_p_smallest_nucleus(void **state)
{
    (void)state;
    enum { DRAWS = 100000 };
    /* probabilities 0.15, 0.5, 0.05, 0.3 */
    const float logits[4] = {logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f)};
    /* top_p 0.7: 0.5 is short, 0.5 + 0.3 reaches it */
    const double want[4] = {0, 0.5 / 0.8, 0, 0.3 / 0.8};
    tfm_sampler *s = make(4, 1.0f, 0, 0.7f, 6);
    int count[4];
    histogram(s, logits, 4, DRAWS, count);
    assert_int_equal(count[0] + count[2], 0);
    check_freq(count, want, 4, DRAWS, 0.008);
    tfm_sampler_destroy(s);

    /* with top_k 3 first (0.5, 0.3, 0.15 → 0.526, 0.316, 0.158), top_p 0.85
     * needs all three */
    const double want3[4] = {0.15 / 0.95, 0.5 / 0.95, 0, 0.3 / 0.95};
    s = make(4, 1.0f, 3, 0.85f, 7);
    histogram(s, logits, 4, DRAWS, count);
    assert_int_equal(count[2], 0);
    check_freq(count, want3, 4, DRAWS, 0.008);
    tfm_sampler_destroy(s);

    /* top_p 1 is off: the whole distribution */
    const double want_all[4] = {0.15, 0.5, 0.05, 0.3};
    s = make(4, 1.0f, 0, 1.0f, 8);
    histogram(s, logits, 4, DRAWS, count);
    check_freq(count, want_all, 4, DRAWS, 0.008);
    tfm_sampler_destroy(s);
}

static void test_sampler_top_p_large_vocab_stays_in_nucleus(void **state)
{
    (void)state;
    /* 32000 tokens: 10 likely ones and a flat tail; top_p 0.9 must only
     * pick among the likely ones (they hold 98%) */
    enum { V = 32000 };
    static float logits[V];
    tfm_sampler *s = make(V, 1.0f, 0, 0.9f, 9);
    for (int d = 0; d < 2000; d++) {
        for (int i = 0; i < V; i++)
            logits[i] = (i % 3200 == 17) ? 12.0f : 0.0f;
        int id = tfm_sampler_sample(s, logits);
        assert_int_equal(id % 3200, 17);
    }
    tfm_sampler_destroy(s);
}

static void test_sampler_degenerate_logits(void **state)
{
    (void)state;
    tfm_sampler *s = make(4, 1.0f, 0, 0.9f, 10);
    float a[4] = {NAN, 1.0f, NAN, 0.0f};
    int id = tfm_sampler_sample(s, a);
    assert_true(id == 1 || id == 3);
    float b[4] = {0.0f, INFINITY, 1.0f, 2.0f};
    assert_int_equal(tfm_sampler_sample(s, b), 1);
    float c[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    id = tfm_sampler_sample(s, c);
    assert_true(id >= 0 && id < 4);
    tfm_sampler_destroy(s);
}

static void test_sampler_rejects_invalid_params(void **state)
{
    (void)state;
    const tfm_sampler_params bad[] = {
        P(-0.1f, 0, 1.0f, 1),   P(NAN, 0, 1.0f, 1), P(INFINITY, 0, 1.0f, 1),
        P(1.0f, -1, 1.0f, 1),   P(1.0f, 0, 0.0f, 1), P(1.0f, 0, -0.5f, 1),
        P(1.0f, 0, 1.0001f, 1), P(1.0f, 0, NAN, 1),
    };
    tfm_sampler *s = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s = (tfm_sampler *)&s;
        assert_int_equal(tfm_sampler_create(10, &bad[i], &s), TFM_E_INVALID);
        assert_null(s);
    }
    const tfm_sampler_params ok = P(0.8f, 40, 0.95f, 1);
    assert_int_equal(tfm_sampler_create(0, &ok, &s), TFM_E_INVALID);
    assert_int_equal(tfm_sampler_create(10, NULL, &s), TFM_E_INVALID);
    assert_int_equal(tfm_sampler_create(10, &ok, NULL), TFM_E_INVALID);
    assert_int_equal(tfm_sampler_create(10, &ok, &s), TFM_OK);
    assert_int_equal(tfm_sampler_reset(s, &bad[0]), TFM_E_INVALID);
    assert_int_equal(tfm_sampler_reset(s, &ok), TFM_OK);
    tfm_sampler_destroy(s);
    tfm_sampler_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_argmax_lowest_index_on_ties),
        cmocka_unit_test(test_sampler_temperature_zero_is_argmax),
        cmocka_unit_test(test_sampler_top_k_one_is_greedy),
        cmocka_unit_test(test_sampler_tiny_top_p_is_greedy),
        cmocka_unit_test(test_sampler_deterministic_per_seed),
        cmocka_unit_test(test_sampler_seed_zero_works),
        cmocka_unit_test(test_sampler_frequencies_match_softmax),
        cmocka_unit_test(test_sampler_top_k_renormalises),
        cmocka_unit_test(test_sampler_top_p_smallest_nucleus),
        cmocka_unit_test(test_sampler_top_p_large_vocab_stays_in_nucleus),
        cmocka_unit_test(test_sampler_degenerate_logits),
        cmocka_unit_test(test_sampler_rejects_invalid_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
