/*
 * test_sampler.c — greedy, temperature, top-k, top-p and min-p sampling,
 * logit_bias, the repetition / presence / frequency penalties and the
 * log-probabilities.
 *
 * Distribution tests draw many samples from small vocabularies and compare
 * frequencies with the exact probabilities; the tolerances are several
 * standard deviations wide, and the seeds are fixed, so they never flake.
 * The options are checked against plain double-precision references
 * (ref_process, ref_probs, ref_logprobs): the processed log-softmax of
 * every token where the vocabulary fits in top_logprobs, the drawn
 * distribution over many seeds, and its support exactly (a token the
 * reference drops is never drawn).
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

/* ---- plain references for the options ---------------------------------------
 * Straightforward double precision: no heaps, no unnormalised tricks. */

typedef struct ref_hist {
    const int *prompt;
    int n_prompt;
    const int *gen; /* the tokens the sampler produced, in order */
    int n_gen;
} ref_hist;

/* logit_bias, repetition penalty (prompt and generated), presence and
 * frequency (generated, per count) — the order of tfm/sampler.h. */
static void ref_process(const tfm_sampler_params *p, const float *logits, int n,
                        const ref_hist *h, double *out)
{
    int *cnt = calloc((size_t)n, sizeof *cnt);
    char *inp = calloc((size_t)n, 1);
    assert_non_null(cnt);
    assert_non_null(inp);
    for (int i = 0; i < n; i++)
        out[i] = logits[i];
    for (int i = 0; i < p->n_logit_bias; i++) {
        int id = p->logit_bias[i].id;
        out[id] = p->logit_bias[i].bias <= -100.0f ? -INFINITY : out[id] + p->logit_bias[i].bias;
    }
    for (int i = 0; h && i < h->n_prompt; i++)
        inp[h->prompt[i]] = 1;
    for (int i = 0; h && i < h->n_gen; i++)
        cnt[h->gen[i]]++;
    double rp = p->repetition_penalty;
    for (int i = 0; i < n; i++) {
        if (rp != 0.0 && rp != 1.0 && (inp[i] || cnt[i]))
            out[i] = out[i] > 0 ? out[i] / rp : out[i] * rp;
        if (cnt[i])
            out[i] -= p->presence_penalty + p->frequency_penalty * cnt[i];
    }
    free(cnt);
    free(inp);
}

/* log-softmax of l / T over the whole vocabulary (T = 1 when greedy). */
static void ref_logprobs(const double *l, int n, double temperature, double *lp)
{
    double T = temperature > 0 ? temperature : 1.0, mx = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++)
        mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < n; i++)
        sum += exp((l[i] - mx) / T);
    for (int i = 0; i < n; i++)
        lp[i] = (l[i] - mx) / T - log(sum);
}

/* The distribution the sampler draws from (T > 0): softmax(l / T), top_k,
 * then the smallest prefix reaching top_p of the top-k mass, then min_p
 * against the most likely, renormalised.  Rank: logit desc, id asc. */
static void ref_probs(const tfm_sampler_params *p, const double *l, int n, double *prob)
{
    int order[64] = {0};
    assert_true(n <= 64);
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++) /* insertion sort, stable: ids stay ascending on ties */
        for (int j = i; j > 0 && l[order[j]] > l[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    double q[64], mx = l[order[0]];
    for (int i = 0; i < n; i++)
        q[i] = exp((l[i] - mx) / p->temperature);
    int k = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    double kmass = 0;
    for (int r = 0; r < k; r++)
        kmass += q[order[r]];
    int keep = k;
    if (p->top_p < 1.0f) {
        double cum = 0;
        for (keep = 0; keep < k;) {
            cum += q[order[keep++]];
            if (cum >= p->top_p * kmass)
                break;
        }
    }
    int kept = 0;
    double mass = 0;
    for (int r = 0; r < keep; r++)
        if (q[order[r]] >= p->min_p * q[order[0]]) {
            kept = r + 1;
            mass += q[order[r]];
        }
    for (int i = 0; i < n; i++)
        prob[i] = 0;
    for (int r = 0; r < kept; r++)
        prob[order[r]] = q[order[r]] / mass;
}

/* Samples once with logits forcing token id (the only finite one). */
static void force(tfm_sampler *s, int n, int id)
{
    static float x[64];
    assert_true(n <= 64);
    for (int i = 0; i < n; i++)
        x[i] = -INFINITY;
    x[id] = 0.0f;
    assert_int_equal(tfm_sampler_sample(s, x), id);
}

/* A sampler with params p (seed replaced), the prompt and the forced
 * history of h. */
static void start(tfm_sampler *s, tfm_sampler_params p, uint64_t seed, int n, const ref_hist *h)
{
    p.seed = seed;
    assert_int_equal(tfm_sampler_reset(s, &p), TFM_OK);
    tfm_sampler_set_prompt(s, h->prompt, h->n_prompt);
    for (int i = 0; i < h->n_gen; i++)
        force(s, n, h->gen[i]);
}

/* Draws the logits once per seed after start(): the empirical distribution
 * against ref_probs. */
static void check_against_ref(const tfm_sampler_params *p, const float *logits, int n,
                              const ref_hist *h, int draws, double tol, double *want)
{
    double l[64];
    float x[64];
    int count[64] = {0};
    ref_process(p, logits, n, h, l);
    ref_probs(p, l, n, want);
    tfm_sampler *s = NULL;
    assert_int_equal(tfm_sampler_create(n, p, &s), TFM_OK);
    for (int d = 0; d < draws; d++) {
        start(s, *p, 1000 + (uint64_t)d, n, h);
        memcpy(x, logits, (size_t)n * sizeof *x);
        int id = tfm_sampler_sample(s, x);
        assert_true(id >= 0 && id < n);
        count[id]++;
    }
    for (int i = 0; i < n; i++) {
        if (want[i] == 0 && count[i])
            fail_msg("token %d: drawn %d times, the reference drops it", i, count[i]);
        if (want[i] > 0 && !count[i] && want[i] * draws > 20)
            fail_msg("token %d: never drawn, reference %.4f", i, want[i]);
    }
    check_freq(count, want, n, draws, tol);
    tfm_sampler_destroy(s);
}

/* All-vocabulary logprobs from sample_lp (n <= 20) against ref_logprobs. */
static void check_logprobs_ref(const tfm_sampler_params *p0, const float *logits, int n,
                               const ref_hist *h, double tol)
{
    tfm_sampler_params p = *p0;
    p.top_logprobs = n;
    assert_true(n <= TFM_MAX_TOP_LOGPROBS);
    double l[20], lp[20];
    ref_process(&p, logits, n, h, l);
    ref_logprobs(l, n, p.temperature, lp);
    tfm_sampler *s = NULL;
    assert_int_equal(tfm_sampler_create(n, &p, &s), TFM_OK);
    start(s, p, 5, n, h);
    float x[20];
    tfm_token_logprob out[21];
    memcpy(x, logits, (size_t)n * sizeof *x);
    int id = tfm_sampler_sample_lp(s, x, out);
    assert_int_equal(out[0].id, id);
    if (fabs(out[0].logprob - lp[id]) > tol)
        fail_msg("chosen %d: logprob %.6f, reference %.6f", id, out[0].logprob, lp[id]);
    double sum = 0;
    for (int r = 0; r < n; r++) {
        int t = out[1 + r].id;
        assert_true(t >= 0 && t < n);
        if (isinf(lp[t]))
            assert_true(isinf(out[1 + r].logprob) && out[1 + r].logprob < 0);
        else if (fabs(out[1 + r].logprob - lp[t]) > tol)
            fail_msg("token %d: logprob %.6f, reference %.6f", t, out[1 + r].logprob, lp[t]);
        if (r > 0) { /* the reference order: logprob desc, id asc; values within
                      * tol of each other (ties in exact arithmetic, apart by
                      * float rounding) may come in either order */
            int u = out[r].id;
            if (!(lp[u] > lp[t] || (lp[u] == lp[t] && u < t) || fabs(lp[u] - lp[t]) < tol))
                fail_msg("rank %d: token %d (%.9g) after %d (%.9g)", r, t, lp[t], u, lp[u]);
        }
        sum += exp(out[1 + r].logprob);
    }
    if (fabs(sum - 1.0) > 1e-5)
        fail_msg("exp(logprobs) sums to %.8f", sum);
    tfm_sampler_destroy(s);
}

enum { HV = 12 };
/* positive and negative logits, so the repetition penalty divides some and
 * multiplies others */
static const float hlogits[HV] = {1.2f, 0.8f, -0.3f, 1.5f, 0.2f, 1.0f, -1.0f, 0.5f,
                                  -0.6f, 0.9f, 0.1f, -0.2f};
static const int hprompt[] = {1, 2, 9};
static const int hgen[] = {3, 3, 5, 2, 3, 0};
static const ref_hist hist = {hprompt, 3, hgen, 6};

static void test_sampler_penalties_match_reference(void **state)
{
    (void)state;
    const tfm_logit_bias bias[] = {{4, 1.5f}, {7, -0.7f}, {10, -100.0f}};
    tfm_sampler_params ps[] = {
        {.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.8f},
        {.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 0.6f},
        {.temperature = 1.0f, .top_p = 1.0f, .presence_penalty = 1.2f},
        {.temperature = 1.0f, .top_p = 1.0f, .frequency_penalty = 0.7f},
        {.temperature = 1.0f, .top_p = 1.0f, .presence_penalty = -1.0f,
         .frequency_penalty = -0.4f},
        {.temperature = 0.7f, .top_p = 1.0f, .repetition_penalty = 1.3f,
         .presence_penalty = 0.5f, .frequency_penalty = 0.3f, .logit_bias = bias,
         .n_logit_bias = 3},
    };
    double plain[HV], want[HV], l[HV];
    const tfm_sampler_params off = {.temperature = 1.0f, .top_p = 1.0f};
    ref_process(&off, hlogits, HV, &hist, l);
    ref_probs(&off, l, HV, plain);
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        check_logprobs_ref(&ps[k], hlogits, HV, &hist, 2e-5);
        check_against_ref(&ps[k], hlogits, HV, &hist, 40000, 0.01, want);
        /* and the penalty does change it, by more than the tolerance */
        double d = 0;
        for (int i = 0; i < HV; i++)
            d = fmax(d, fabs(want[i] - plain[i]));
        assert_true(d > 0.03);
    }
}

/* presence is subtracted once, frequency per count: token 3 (generated 3
 * times) against token 11 (never seen) in log-probability at T = 1. */
static void test_sampler_presence_once_frequency_per_count(void **state)
{
    (void)state;
    const tfm_sampler_params pres = {.temperature = 1.0f, .top_p = 1.0f,
                                     .presence_penalty = 0.5f, .top_logprobs = HV};
    const tfm_sampler_params freq = {.temperature = 1.0f, .top_p = 1.0f,
                                     .frequency_penalty = 0.5f, .top_logprobs = HV};
    const tfm_sampler_params *ps[] = {&pres, &freq};
    const double want_gap[] = {1.5 - (-0.2) - 0.5, 1.5 - (-0.2) - 3 * 0.5};
    for (int k = 0; k < 2; k++) {
        tfm_sampler *s = NULL;
        assert_int_equal(tfm_sampler_create(HV, ps[k], &s), TFM_OK);
        start(s, *ps[k], 1, HV, &hist);
        float x[HV];
        tfm_token_logprob out[1 + HV];
        memcpy(x, hlogits, sizeof x);
        tfm_sampler_sample_lp(s, x, out);
        double lp3 = NAN, lp11 = NAN;
        for (int r = 1; r <= HV; r++) {
            if (out[r].id == 3)
                lp3 = out[r].logprob;
            if (out[r].id == 11)
                lp11 = out[r].logprob;
        }
        assert_true(fabs((lp3 - lp11) - want_gap[k]) < 1e-5);
        tfm_sampler_destroy(s);
    }
}

static void test_sampler_logit_bias_bans_token(void **state)
{
    (void)state;
    /* token 2 is the argmax by far; banned, it is never drawn */
    const float logits[6] = {0.1f, 0.3f, 9.0f, 0.2f, -0.5f, 0.0f};
    const tfm_logit_bias ban = {2, -100.0f};
    const float temps[] = {0.0f, 0.5f, 1.0f, 2.0f};
    for (size_t k = 0; k < sizeof temps / sizeof temps[0]; k++) {
        tfm_sampler_params p = {.temperature = temps[k], .top_p = 1.0f, .logit_bias = &ban,
                                .n_logit_bias = 1, .top_logprobs = 6};
        tfm_sampler *s = NULL;
        assert_int_equal(tfm_sampler_create(6, &p, &s), TFM_OK);
        for (int d = 0; d < 5000; d++) {
            float x[6];
            tfm_token_logprob out[7];
            memcpy(x, logits, sizeof x);
            int id = d % 2 ? tfm_sampler_sample(s, x) : tfm_sampler_sample_lp(s, x, out);
            assert_int_not_equal(id, 2);
            if (temps[k] == 0.0f)
                assert_int_equal(id, 1); /* the argmax of the rest */
            if (d % 2 == 0) {
                assert_int_equal(out[6].id, 2); /* the last alternative, -inf */
                assert_true(isinf(out[6].logprob) && out[6].logprob < 0);
            }
        }
        tfm_sampler_destroy(s);
    }
    /* a large vocabulary through the top_k / top_p heap paths: the banned
     * argmax of each draw is never returned */
    enum { V = 32000 };
    static float big[V];
    uint64_t rng = 21;
    tfm_logit_bias bans[3];
    const tfm_sampler_params base[] = {P(1.0f, 40, 1.0f, 3), P(1.0f, 0, 0.9f, 4),
                                       P(0.8f, 40, 0.9f, 5)};
    for (size_t k = 0; k < 3; k++) {
        tfm_sampler_params p = base[k];
        p.logit_bias = bans;
        p.n_logit_bias = 3;
        p.min_p = 0.05f;
        for (int i = 0; i < 3; i++)
            bans[i] = (tfm_logit_bias){1000 * (int)k + 17 * i, -150.0f};
        tfm_sampler *s = NULL;
        assert_int_equal(tfm_sampler_create(V, &p, &s), TFM_OK);
        for (int d = 0; d < 200; d++) {
            random_logits(big, V, &rng);
            for (int i = 0; i < 3; i++)
                big[bans[i].id] = 20.0f;
            int id = tfm_sampler_sample(s, big);
            for (int i = 0; i < 3; i++)
                assert_int_not_equal(id, bans[i].id);
        }
        tfm_sampler_destroy(s);
    }
}

static void test_sampler_logit_bias_positive_is_greedy_choice(void **state)
{
    (void)state;
    enum { V = 1000 };
    static float logits[V];
    uint64_t rng = 31;
    for (int trial = 0; trial < 20; trial++) {
        random_logits(logits, V, &rng); /* in [-4, 4): +8.5 always wins */
        tfm_logit_bias b = {trial * 37 % V, 8.5f};
        tfm_sampler_params p = {.temperature = 0.0f, .top_p = 1.0f, .logit_bias = &b,
                                .n_logit_bias = 1};
        tfm_sampler *s = NULL;
        assert_int_equal(tfm_sampler_create(V, &p, &s), TFM_OK);
        assert_int_equal(tfm_sampler_sample(s, logits), b.id);
        tfm_sampler_destroy(s);
    }
}

/* Greedy reads the processed logits: a repeated argmax is penalised away,
 * at every step the same as the reference's argmax. */
static void test_sampler_greedy_applies_penalties(void **state)
{
    (void)state;
    const tfm_sampler_params ps[] = {
        {.top_p = 1.0f, .repetition_penalty = 1.5f},
        {.top_p = 1.0f, .presence_penalty = 0.6f},
        {.top_p = 1.0f, .frequency_penalty = 0.25f},
    };
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        tfm_sampler *s = NULL;
        assert_int_equal(tfm_sampler_create(HV, &ps[k], &s), TFM_OK);
        tfm_sampler_set_prompt(s, hprompt, 3);
        int gen[40], distinct = 0, seen[HV] = {0};
        for (int step = 0; step < 40; step++) {
            double l[HV];
            ref_hist h = {hprompt, 3, gen, step};
            ref_process(&ps[k], hlogits, HV, &h, l);
            int want = 0;
            for (int i = 1; i < HV; i++)
                if (l[i] > l[want])
                    want = i;
            float x[HV];
            memcpy(x, hlogits, sizeof x);
            gen[step] = tfm_sampler_sample(s, x);
            assert_int_equal(gen[step], want);
            if (!seen[want]++)
                distinct++;
        }
        assert_true(distinct > 1);
        tfm_sampler_destroy(s);
    }
}

static void test_sampler_min_p_matches_reference(void **state)
{
    (void)state;
    /* probabilities 0.4, 0.25, 0.15, 0.1, 0.06, 0.04 at T = 1 */
    const float logits[6] = {logf(0.25f), logf(0.06f), logf(0.4f),
                             logf(0.15f), logf(0.04f), logf(0.1f)};
    const ref_hist none = {0};
    double want[6];
    /* min_p 0.3: 0.4 * 0.3 = 0.12 keeps 0.4, 0.25 and 0.15 */
    tfm_sampler_params p = {.temperature = 1.0f, .top_p = 1.0f, .min_p = 0.3f};
    check_against_ref(&p, logits, 6, &none, 40000, 0.01, want);
    assert_true(want[5] == 0 && want[3] > 0 && want[1] == 0);
    /* close to the threshold on both sides: 0.31 stays, 0.28 goes */
    const float close[5] = {logf(0.28f), 0.0f, logf(0.2f), logf(0.31f), logf(0.1f)};
    check_against_ref(&p, close, 5, &none, 40000, 0.01, want);
    assert_true(want[3] > 0 && want[0] == 0);
    /* after top_k 2: 0.4, 0.25 → min_p 0.7 keeps 0.4 only */
    p = (tfm_sampler_params){.temperature = 1.0f, .top_k = 2, .top_p = 1.0f, .min_p = 0.7f};
    check_against_ref(&p, logits, 6, &none, 2000, 0.001, want);
    assert_true(want[2] == 1.0);
    /* after top_p 0.85 (0.4 + 0.25 + 0.15 + 0.1 = 0.9) and min_p 0.2 (0.08): 0.06 drops
     * by top_p, 0.1 stays */
    p = (tfm_sampler_params){.temperature = 1.0f, .top_p = 0.85f, .min_p = 0.2f};
    check_against_ref(&p, logits, 6, &none, 40000, 0.01, want);
    assert_true(want[5] > 0 && want[1] == 0);
    /* top_k 5, top_p 0.95, min_p 0.3 at T = 2: the temperature first */
    p = (tfm_sampler_params){.temperature = 2.0f, .top_k = 5, .top_p = 0.95f, .min_p = 0.3f};
    check_against_ref(&p, logits, 6, &none, 40000, 0.01, want);
    /* min_p 1: the most likely only */
    p = (tfm_sampler_params){.temperature = 1.0f, .top_p = 1.0f, .min_p = 1.0f};
    check_against_ref(&p, logits, 6, &none, 1000, 0.0, want);
    /* a large vocabulary: min_p alone keeps the 10 likely tokens out of 32000 */
    enum { V = 32000 };
    static float big[V];
    p = (tfm_sampler_params){.temperature = 1.0f, .top_p = 1.0f, .min_p = 0.01f, .seed = 3};
    tfm_sampler *s = NULL;
    assert_int_equal(tfm_sampler_create(V, &p, &s), TFM_OK);
    for (int d = 0; d < 500; d++) {
        for (int i = 0; i < V; i++)
            big[i] = (i % 3200 == 17) ? 6.0f : 0.0f; /* e^-6 = 0.0025 < 0.01 */
        assert_int_equal(tfm_sampler_sample(s, big) % 3200, 17);
    }
    tfm_sampler_destroy(s);
}

static void test_sampler_logprobs_match_reference(void **state)
{
    (void)state;
    const ref_hist none = {0};
    /* 20 tokens: every log-probability, their sum, at several T and greedy */
    float logits[20];
    uint64_t rng = 41;
    random_logits(logits, 20, &rng);
    const float temps[] = {0.0f, 0.3f, 1.0f, 1.7f};
    for (size_t k = 0; k < sizeof temps / sizeof temps[0]; k++) {
        tfm_sampler_params p = {.temperature = temps[k], .top_k = 5, .top_p = 0.8f,
                                .min_p = 0.1f}; /* truncation does not change them */
        check_logprobs_ref(&p, logits, 20, &none, 2e-5);
    }
    /* 32000 tokens with everything on: the chosen one and the top 20 in the
     * reference's order */
    enum { V = 32000 };
    static float big[V], x[V];
    static double l[V], lp[V];
    static int gen[64];
    const tfm_logit_bias bias[] = {{5, 3.0f}, {6, -100.0f}, {7, 2.0f}};
    tfm_sampler_params p = {.temperature = 0.8f, .top_k = 50, .top_p = 0.95f, .seed = 9,
                            .min_p = 0.02f, .repetition_penalty = 1.2f,
                            .presence_penalty = 0.4f, .frequency_penalty = 0.3f,
                            .logit_bias = bias, .n_logit_bias = 3, .top_logprobs = 20};
    const int prompt[] = {5, 100, 200, 300};
    tfm_sampler *s = NULL;
    assert_int_equal(tfm_sampler_create(V, &p, &s), TFM_OK);
    tfm_sampler_set_prompt(s, prompt, 4);
    for (int step = 0; step < 64; step++) {
        random_logits(big, V, &rng);
        big[6] = 30.0f; /* banned */
        ref_hist h = {prompt, 4, gen, step};
        ref_process(&p, big, V, &h, l);
        ref_logprobs(l, V, p.temperature, lp);
        tfm_token_logprob out[21];
        memcpy(x, big, sizeof x);
        gen[step] = tfm_sampler_sample_lp(s, x, out);
        assert_int_equal(out[0].id, gen[step]);
        assert_true(fabs(out[0].logprob - lp[gen[step]]) < 2e-5);
        double prev = INFINITY;
        int prev_id = -1;
        for (int r = 1; r <= 20; r++) {
            int t = out[r].id;
            assert_true(t >= 0 && t < V && t != 6);
            assert_true(fabs(out[r].logprob - lp[t]) < 2e-5);
            /* nothing outside the list beats its last entry */
            assert_true(lp[t] < prev || (lp[t] == prev && t > prev_id));
            prev = lp[t];
            prev_id = t;
        }
        int better = 0;
        for (int i = 0; i < V; i++)
            better += lp[i] > prev + 1e-6;
        assert_true(better <= 19);
    }
    tfm_sampler_destroy(s);
}

/* Greedy reports log-softmax at T = 1; equal logits list the lower id
 * first; past a small vocabulary the entries are {-1, -inf}. */
static void test_sampler_logprobs_greedy_ties_small_vocab(void **state)
{
    (void)state;
    const float logits[4] = {1.0f, 2.0f, 2.0f, 0.0f};
    tfm_sampler_params p = {.temperature = 0.0f, .top_p = 1.0f, .top_logprobs = 6};
    tfm_sampler *s = NULL;
    assert_int_equal(tfm_sampler_create(4, &p, &s), TFM_OK);
    float x[4];
    tfm_token_logprob out[7];
    memcpy(x, logits, sizeof x);
    assert_int_equal(tfm_sampler_sample_lp(s, x, out), 1);
    double z = log(exp(1.0) + 2 * exp(2.0) + 1.0);
    assert_int_equal(out[0].id, 1);
    assert_true(fabs(out[0].logprob - (2.0 - z)) < 1e-6);
    const int ids[6] = {1, 2, 0, 3, -1, -1};
    const double want[4] = {2.0 - z, 2.0 - z, 1.0 - z, 0.0 - z};
    for (int r = 0; r < 6; r++) {
        assert_int_equal(out[1 + r].id, ids[r]);
        if (r < 4)
            assert_true(fabs(out[1 + r].logprob - want[r]) < 1e-6);
        else
            assert_true(isinf(out[1 + r].logprob) && out[1 + r].logprob < 0);
    }
    /* top_logprobs 0: only out[0] is written */
    p.top_logprobs = 0;
    assert_int_equal(tfm_sampler_reset(s, &p), TFM_OK);
    tfm_token_logprob one[2] = {{0, 0}, {77, 7.0f}};
    memcpy(x, logits, sizeof x);
    assert_int_equal(tfm_sampler_sample_lp(s, x, one), 1);
    assert_int_equal(one[1].id, 77);
    tfm_sampler_destroy(s);
}

/* sample_lp draws the same tokens as sample: the RNG is not touched by the
 * log-probabilities. */
static void test_sampler_lp_draws_as_sample(void **state)
{
    (void)state;
    enum { V = 512, N = 200 };
    static float logits[V], x[V];
    const tfm_logit_bias bias[] = {{3, 1.0f}, {4, -100.0f}};
    tfm_sampler_params p = {.temperature = 0.9f, .top_k = 40, .top_p = 0.9f, .seed = 77,
                            .min_p = 0.05f, .repetition_penalty = 1.1f,
                            .presence_penalty = 0.2f, .frequency_penalty = 0.2f,
                            .logit_bias = bias, .n_logit_bias = 2, .top_logprobs = 3};
    tfm_sampler *a = NULL, *b = NULL, *c = NULL;
    assert_int_equal(tfm_sampler_create(V, &p, &a), TFM_OK);
    assert_int_equal(tfm_sampler_create(V, &p, &b), TFM_OK);
    p.seed = 78;
    assert_int_equal(tfm_sampler_create(V, &p, &c), TFM_OK);
    uint64_t rng = 5;
    int same_c = 0;
    for (int i = 0; i < N; i++) {
        random_logits(logits, V, &rng);
        tfm_token_logprob out[4];
        memcpy(x, logits, sizeof x);
        int ia = tfm_sampler_sample(a, x);
        memcpy(x, logits, sizeof x);
        int ib = tfm_sampler_sample_lp(b, x, out);
        memcpy(x, logits, sizeof x);
        same_c += tfm_sampler_sample(c, x) == ia;
        assert_int_equal(ia, ib);
    }
    assert_true(same_c < N);
    tfm_sampler_destroy(a);
    tfm_sampler_destroy(b);
    tfm_sampler_destroy(c);
}

/* Logprobs of the sampler's current state with all of the vocabulary's
 * entries (n <= 20). */
static void all_logprobs(tfm_sampler *s, const float *logits, int n, double *lp)
{
    float x[20];
    tfm_token_logprob out[21];
    memcpy(x, logits, (size_t)n * sizeof *x);
    tfm_sampler_sample_lp(s, x, out);
    for (int r = 1; r <= n; r++)
        lp[out[r].id] = out[r].logprob;
}

static void test_sampler_reset_clears_history(void **state)
{
    (void)state;
    tfm_sampler_params p = {.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.5f,
                            .presence_penalty = 0.8f, .frequency_penalty = 0.6f,
                            .top_logprobs = HV};
    tfm_sampler *fresh = NULL, *used = NULL;
    assert_int_equal(tfm_sampler_create(HV, &p, &fresh), TFM_OK);
    assert_int_equal(tfm_sampler_create(HV, &p, &used), TFM_OK);
    double a[HV], b[HV];
    start(used, p, 1, HV, &hist);
    all_logprobs(used, hlogits, HV, b);
    all_logprobs(fresh, hlogits, HV, a);
    assert_memory_not_equal(a, b, sizeof a);
    assert_int_equal(tfm_sampler_reset(used, &p), TFM_OK);
    all_logprobs(used, hlogits, HV, b);
    assert_memory_equal(a, b, sizeof a);
    tfm_sampler_destroy(fresh);
    tfm_sampler_destroy(used);
}

static void test_sampler_set_prompt_only_repetition(void **state)
{
    (void)state;
    const ref_hist with = {hprompt, 3, NULL, 0}, without = {0};
    tfm_sampler_params p = {.temperature = 1.0f, .top_p = 1.0f, .presence_penalty = 1.5f,
                            .frequency_penalty = 1.0f, .top_logprobs = HV};
    double a[HV], b[HV];
    tfm_sampler *s = NULL;
    assert_int_equal(tfm_sampler_create(HV, &p, &s), TFM_OK);
    start(s, p, 1, HV, &with);
    all_logprobs(s, hlogits, HV, a);
    start(s, p, 1, HV, &without);
    all_logprobs(s, hlogits, HV, b);
    assert_memory_equal(a, b, sizeof a); /* presence / frequency ignore the prompt */
    p.repetition_penalty = 2.0f;
    start(s, p, 1, HV, &with);
    all_logprobs(s, hlogits, HV, a);
    start(s, p, 1, HV, &without);
    all_logprobs(s, hlogits, HV, b);
    for (int i = 0; i < HV; i++) { /* only the prompt's tokens move, relatively */
        int in = i == 1 || i == 2 || i == 9;
        double d = (a[i] - a[0]) - (b[i] - b[0]);
        assert_true(in ? fabs(d) > 0.1 : fabs(d) < 1e-6);
    }
    check_logprobs_ref(&p, hlogits, HV, &with, 2e-5);
    /* ids out of range and NULL are ignored */
    int junk[] = {-1, HV, 1 << 30};
    tfm_sampler_set_prompt(s, junk, 3);
    tfm_sampler_set_prompt(s, NULL, 5);
    tfm_sampler_destroy(s);
}

static void test_sampler_options_deterministic_per_seed(void **state)
{
    (void)state;
    enum { V = 512, N = 200 };
    static int a[N], b[N], c[N];
    const tfm_logit_bias bias[] = {{0, 2.0f}, {1, -100.0f}};
    tfm_sampler_params p = {.temperature = 1.0f, .top_k = 40, .top_p = 0.9f, .seed = 42,
                            .min_p = 0.05f, .repetition_penalty = 1.3f,
                            .presence_penalty = 0.5f, .frequency_penalty = 0.5f,
                            .logit_bias = bias, .n_logit_bias = 2};
    tfm_sampler *s1 = NULL, *s2 = NULL;
    assert_int_equal(tfm_sampler_create(V, &p, &s1), TFM_OK);
    assert_int_equal(tfm_sampler_create(V, &p, &s2), TFM_OK);
    sequence(s1, V, N, a);
    sequence(s2, V, N, b);
    assert_memory_equal(a, b, sizeof a);
    assert_int_equal(tfm_sampler_reset(s2, &p), TFM_OK);
    sequence(s2, V, N, c);
    assert_memory_equal(a, c, sizeof a);
    for (int i = 0; i < N; i++)
        assert_int_not_equal(a[i], 1);
    tfm_sampler_destroy(s1);
    tfm_sampler_destroy(s2);
}

static void test_sampler_options_degenerate_logits(void **state)
{
    (void)state;
    const tfm_logit_bias ban[] = {{0, -100.0f}, {1, -100.0f}, {2, -100.0f}, {3, -100.0f}};
    tfm_sampler_params p = {.temperature = 1.0f, .top_p = 0.9f, .min_p = 0.1f,
                            .repetition_penalty = 1.2f, .presence_penalty = 1.0f,
                            .logit_bias = ban, .n_logit_bias = 4, .top_logprobs = 4};
    tfm_sampler *s = NULL;
    assert_int_equal(tfm_sampler_create(4, &p, &s), TFM_OK);
    tfm_token_logprob out[5];
    float a[4] = {1, 2, 3, 4}; /* everything banned: an id in range */
    int id = tfm_sampler_sample_lp(s, a, out);
    assert_true(id >= 0 && id < 4);
    assert_int_equal(out[0].id, id);
    for (int r = 1; r <= 4; r++)
        assert_true(out[r].id >= 0 && out[r].id < 4);
    p.n_logit_bias = 1;
    assert_int_equal(tfm_sampler_reset(s, &p), TFM_OK);
    float b[4] = {NAN, NAN, 0.5f, NAN};
    assert_int_equal(tfm_sampler_sample_lp(s, b, out), 2);
    assert_true(fabs(out[0].logprob) < 1e-6);
    float c[4] = {0.0f, 1.0f, INFINITY, 2.0f};
    assert_int_equal(tfm_sampler_sample_lp(s, c, out), 2);
    assert_true(out[0].logprob == 0.0f && out[1].id == 2);
    tfm_sampler_destroy(s);
}

static void test_sampler_rejects_invalid_options(void **state)
{
    (void)state;
    const tfm_logit_bias out_of_range[] = {{10, 1.0f}}, negative[] = {{-1, 1.0f}},
                         inf_bias[] = {{3, INFINITY}}, nan_bias[] = {{3, NAN}},
                         ok_bias[] = {{9, -1e30f}, {0, 50.0f}};
#define B(...) {.temperature = 1.0f, .top_p = 1.0f, __VA_ARGS__}
    const tfm_sampler_params bad[] = {
        B(.min_p = -0.01f),          B(.min_p = 1.01f),
        B(.min_p = NAN),             B(.repetition_penalty = -1.0f),
        B(.repetition_penalty = INFINITY), B(.repetition_penalty = NAN),
        B(.presence_penalty = 2.01f), B(.presence_penalty = -2.01f),
        B(.presence_penalty = NAN),  B(.frequency_penalty = 2.5f),
        B(.frequency_penalty = -3.0f), B(.frequency_penalty = NAN),
        B(.n_logit_bias = -1),       B(.n_logit_bias = 1),
        B(.logit_bias = out_of_range, .n_logit_bias = 1),
        B(.logit_bias = negative, .n_logit_bias = 1),
        B(.logit_bias = inf_bias, .n_logit_bias = 1),
        B(.logit_bias = nan_bias, .n_logit_bias = 1),
        B(.top_logprobs = -1),       B(.top_logprobs = TFM_MAX_TOP_LOGPROBS + 1),
    };
    const tfm_sampler_params good[] = {
        B(.min_p = 1.0f), B(.repetition_penalty = 0.0f), B(.repetition_penalty = 1e-3f),
        B(.repetition_penalty = 100.0f), B(.presence_penalty = -2.0f, .frequency_penalty = 2.0f),
        B(.logit_bias = ok_bias, .n_logit_bias = 2), B(.logit_bias = ok_bias, .n_logit_bias = 0),
        B(.top_logprobs = TFM_MAX_TOP_LOGPROBS),
    };
#undef B
    tfm_sampler *s = NULL, *r = NULL;
    const tfm_sampler_params ok = P(0.8f, 40, 0.95f, 1);
    assert_int_equal(tfm_sampler_create(10, &ok, &r), TFM_OK);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s = (tfm_sampler *)&s;
        if (tfm_sampler_create(10, &bad[i], &s) != TFM_E_INVALID)
            fail_msg("bad[%zu] accepted by create", i);
        assert_null(s);
        if (tfm_sampler_reset(r, &bad[i]) != TFM_E_INVALID)
            fail_msg("bad[%zu] accepted by reset", i);
    }
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (tfm_sampler_create(10, &good[i], &s) != TFM_OK)
            fail_msg("good[%zu] refused", i);
        tfm_sampler_destroy(s);
        assert_int_equal(tfm_sampler_reset(r, &good[i]), TFM_OK);
    }
    tfm_sampler_destroy(r);
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
        cmocka_unit_test(test_sampler_penalties_match_reference),
        cmocka_unit_test(test_sampler_presence_once_frequency_per_count),
        cmocka_unit_test(test_sampler_logit_bias_bans_token),
        cmocka_unit_test(test_sampler_logit_bias_positive_is_greedy_choice),
        cmocka_unit_test(test_sampler_greedy_applies_penalties),
        cmocka_unit_test(test_sampler_min_p_matches_reference),
        cmocka_unit_test(test_sampler_logprobs_match_reference),
        cmocka_unit_test(test_sampler_logprobs_greedy_ties_small_vocab),
        cmocka_unit_test(test_sampler_lp_draws_as_sample),
        cmocka_unit_test(test_sampler_reset_clears_history),
        cmocka_unit_test(test_sampler_set_prompt_only_repetition),
        cmocka_unit_test(test_sampler_options_deterministic_per_seed),
        cmocka_unit_test(test_sampler_options_degenerate_logits),
        cmocka_unit_test(test_sampler_rejects_invalid_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
