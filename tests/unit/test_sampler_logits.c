/*
 * test_sampler_logits.c — the sampler's logit processing and
 * log-probabilities (min_p, repetition / presence / frequency penalties,
 * logit_bias, top_logprobs), each against a plain reference written here in
 * double precision: bias, penalties, softmax(l / T), top-k, top-p, min-p,
 * renormalised.  Distribution tests compare frequencies over many seeded
 * draws with the reference's exact probabilities, several standard
 * deviations wide, so they never flake.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tfm/sampler.h"

#define V 8

static const float base[V] = {1.2f, 0.9f, 0.7f, 0.4f, 0.1f, -0.3f, -0.8f, 2.0f};

/* The history a test gives the sampler: prompt tokens and generated ones. */
typedef struct hist {
    int prompt[4], n_prompt;
    int gen[6], n_gen;
} hist;

/* ---- the reference ------------------------------------------------------- */

static void ref_process(const tfm_sampler_params *p, const hist *h, double *l)
{
    for (int i = 0; i < V; i++)
        l[i] = base[i];
    for (int i = 0; i < p->n_logit_bias; i++)
        l[p->logit_bias[i].id] = p->logit_bias[i].bias <= -100 ? -INFINITY
                                                                : l[p->logit_bias[i].id] +
                                                                      p->logit_bias[i].bias;
    int count[V] = {0}, seen[V] = {0};
    for (int i = 0; i < h->n_gen; i++)
        count[h->gen[i]]++, seen[h->gen[i]] = 1;
    for (int i = 0; i < h->n_prompt; i++)
        seen[h->prompt[i]] = 1;
    double rp = p->repetition_penalty;
    for (int i = 0; i < V; i++) {
        if (rp != 0 && rp != 1 && seen[i])
            l[i] = l[i] > 0 ? l[i] / rp : l[i] * rp;
        if (count[i])
            l[i] -= p->presence_penalty + p->frequency_penalty * count[i];
    }
}

/* The exact distribution the sampler should draw from. */
static void ref_probs(const tfm_sampler_params *p, const hist *h, double *prob)
{
    double l[V];
    ref_process(p, h, l);
    int order[V];
    for (int i = 0; i < V; i++)
        order[i] = i;
    for (int i = 1; i < V; i++) /* rank: logit desc, id asc */
        for (int j = i; j > 0 && (l[order[j]] > l[order[j - 1]] ||
                                  (l[order[j]] == l[order[j - 1]] && order[j] < order[j - 1]));
             j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    double q[V], mass = 0;
    for (int i = 0; i < V; i++)
        mass += q[i] = exp((l[i] - l[order[0]]) / p->temperature);
    int keep = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    double kmass = 0;
    for (int r = 0; r < keep; r++)
        kmass += q[order[r]];
    if (p->top_p < 1) {
        double cum = 0;
        for (int r = 0; r < keep; r++)
            if ((cum += q[order[r]]) >= p->top_p * kmass) {
                keep = r + 1;
                break;
            }
    }
    while (keep > 1 && q[order[keep - 1]] < p->min_p) /* q of the best is 1 */
        keep--;
    memset(prob, 0, V * sizeof *prob);
    double z = 0;
    for (int r = 0; r < keep; r++)
        z += q[order[r]];
    for (int r = 0; r < keep; r++)
        prob[order[r]] = q[order[r]] / z;
}

/* ---- driving the sampler ------------------------------------------------- */

/* A sampler reset for one draw: the history fed (generated tokens by
 * sampling logits that make them certain), the seed the draw's. */
static void prepare(tfm_sampler *s, tfm_sampler_params p, const hist *h, uint64_t seed)
{
    p.seed = seed;
    assert_int_equal(tfm_sampler_reset(s, &p), TFM_OK);
    tfm_sampler_set_prompt(s, h->prompt, h->n_prompt);
    for (int i = 0; i < h->n_gen; i++) {
        float x[V];
        for (int k = 0; k < V; k++)
            x[k] = k == h->gen[i] ? 1000.0f : -1000.0f;
        assert_int_equal(tfm_sampler_sample(s, x), h->gen[i]);
    }
}

static void check_distribution(tfm_sampler_params p, const hist *h, int draws)
{
    double want[V];
    ref_probs(&p, h, want);
    tfm_sampler *s;
    assert_int_equal(tfm_sampler_create(V, &p, &s), TFM_OK);
    int count[V] = {0};
    for (int d = 0; d < draws; d++) {
        prepare(s, p, h, 1000 + (uint64_t)d);
        float x[V];
        memcpy(x, base, sizeof x);
        int id = tfm_sampler_sample(s, x);
        assert_true(id >= 0 && id < V);
        count[id]++;
    }
    for (int i = 0; i < V; i++) {
        double f = (double)count[i] / draws, sd = sqrt(want[i] * (1 - want[i]) / draws);
        if (fabs(f - want[i]) > 5 * sd + 1e-3)
            fail_msg("token %d: frequency %.4f, reference %.4f", i, f, want[i]);
    }
    tfm_sampler_destroy(s);
}

static tfm_sampler_params params(float t) { return (tfm_sampler_params){.temperature = t, .top_p = 1.0f}; }

static const hist none = {{0}, 0, {0}, 0};
static const hist some = {{1, 2}, 2, {7, 7, 0}, 3};

/* ---- tests ------------------------------------------------------------------ */

static void test_penalties_match_reference(void **state)
{
    (void)state;
    tfm_sampler_params p = params(1.0f);
    check_distribution(p, &some, 20000); /* a history but no penalty: plain */
    p.repetition_penalty = 1.8f;
    check_distribution(p, &some, 20000);
    p = params(0.7f);
    p.presence_penalty = 0.9f;
    check_distribution(p, &some, 20000);
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 0.6f;
    check_distribution(p, &some, 20000);
    p.presence_penalty = -0.5f; /* negative: encourages */
    p.repetition_penalty = 0.8f;
    check_distribution(p, &some, 20000);
}

static void test_min_p_and_truncation_match_reference(void **state)
{
    (void)state;
    tfm_sampler_params p = params(1.0f);
    p.min_p = 0.5f;
    check_distribution(p, &none, 20000);
    p.top_k = 3;
    check_distribution(p, &none, 20000);
    p.top_k = 0;
    p.top_p = 0.8f;
    p.min_p = 0.3f;
    check_distribution(p, &none, 20000);
    p.frequency_penalty = 1.0f;
    check_distribution(p, &some, 20000);
}

static void test_logit_bias(void **state)
{
    (void)state;
    /* -100 bans the argmax (token 7), under greedy and sampling */
    tfm_logit_bias ban[] = {{7, -100.0f}};
    tfm_sampler_params p = params(0.0f);
    p.logit_bias = ban;
    p.n_logit_bias = 1;
    tfm_sampler *s;
    assert_int_equal(tfm_sampler_create(V, &p, &s), TFM_OK);
    float x[V];
    memcpy(x, base, sizeof x);
    assert_int_equal(tfm_sampler_sample(s, x), 0);
    p.temperature = 2.0f;
    for (int d = 0; d < 5000; d++) {
        prepare(s, p, &none, (uint64_t)d);
        memcpy(x, base, sizeof x);
        assert_int_not_equal(tfm_sampler_sample(s, x), 7);
    }
    /* a positive bias makes a token greedy's choice; the distribution
     * follows the reference */
    tfm_logit_bias push[] = {{4, 2.5f}, {0, -0.5f}};
    p = params(0.0f);
    p.logit_bias = push;
    p.n_logit_bias = 2;
    prepare(s, p, &none, 1);
    memcpy(x, base, sizeof x);
    assert_int_equal(tfm_sampler_sample(s, x), 4);
    p.temperature = 1.0f;
    check_distribution(p, &none, 20000);
    tfm_sampler_destroy(s);
}

static void test_greedy_penalised_is_reference_argmax(void **state)
{
    (void)state;
    tfm_sampler_params p = params(0.0f);
    p.repetition_penalty = 3.0f; /* 7's 2.0 becomes 0.67 < 1.2 */
    hist h = {{7}, 1, {0}, 0};
    tfm_sampler *s;
    assert_int_equal(tfm_sampler_create(V, &p, &s), TFM_OK);
    prepare(s, p, &h, 1);
    float x[V];
    memcpy(x, base, sizeof x);
    assert_int_equal(tfm_sampler_sample(s, x), 0);
    /* the same history under presence only: prompt tokens do not count */
    p = params(0.0f);
    p.presence_penalty = 2.0f;
    prepare(s, p, &h, 1);
    memcpy(x, base, sizeof x);
    assert_int_equal(tfm_sampler_sample(s, x), 7);
    /* ... generated ones do: 7 twice, 0 once */
    hist g = {{0}, 0, {7, 7, 0}, 3};
    prepare(s, p, &g, 1);
    memcpy(x, base, sizeof x);
    assert_int_equal(tfm_sampler_sample(s, x), 1);
    /* and the sampler records what it samples: greedy with a frequency
     * penalty walks down the ranking instead of repeating */
    p = params(0.0f);
    p.frequency_penalty = 2.0f;
    prepare(s, p, &none, 1);
    int seen[V] = {0};
    for (int t = 0; t < 4; t++) {
        memcpy(x, base, sizeof x);
        int id = tfm_sampler_sample(s, x);
        assert_int_equal(seen[id], 0);
        seen[id] = 1;
    }
    /* reset forgets the history */
    prepare(s, p, &none, 1);
    memcpy(x, base, sizeof x);
    assert_int_equal(tfm_sampler_sample(s, x), 7);
    tfm_sampler_destroy(s);
}

static void test_logprobs(void **state)
{
    (void)state;
    enum { N = 16 };
    float logits[N];
    for (int i = 0; i < N; i++)
        logits[i] = (float)((i * 7) % N) * 0.3f - 2.0f;
    logits[5] = logits[9]; /* a tie: the lower id first */
    static const float temps[] = {0.0f, 0.5f, 1.0f, 1.7f};
    for (size_t ti = 0; ti < sizeof temps / sizeof *temps; ti++) {
        tfm_logit_bias ban[] = {{3, -100.0f}};
        tfm_sampler_params p = params(temps[ti]);
        p.top_logprobs = N;
        p.top_k = 4; /* truncation does not change the log-probabilities */
        p.logit_bias = ban;
        p.n_logit_bias = 1;
        p.seed = ti;
        tfm_sampler *s;
        assert_int_equal(tfm_sampler_create(N, &p, &s), TFM_OK);
        tfm_token_logprob out[1 + N];
        float x[N];
        memcpy(x, logits, sizeof x);
        int tok = tfm_sampler_sample_lp(s, x, out);
        assert_int_equal(out[0].id, tok);
        double t = temps[ti] > 0 ? temps[ti] : 1.0, mx = -INFINITY, z = 0, sum = 0;
        for (int i = 0; i < N; i++)
            if (i != 3 && logits[i] > mx)
                mx = logits[i];
        for (int i = 0; i < N; i++)
            if (i != 3)
                z += exp((logits[i] - mx) / t);
        for (int r = 0; r < N; r++) {
            const tfm_token_logprob *e = &out[1 + r];
            if (r > 0) /* rank order, ties by id */
                assert_true(e->logprob < out[r].logprob ||
                            (e->logprob == out[r].logprob && e->id > out[r].id));
            if (e->id == 3) {
                assert_true(isinf(e->logprob) && e->logprob < 0);
                continue;
            }
            double want = (logits[e->id] - mx) / t - log(z);
            assert_true(fabs(e->logprob - want) < 1e-5);
            sum += exp(e->logprob);
        }
        assert_true(fabs(sum - 1.0) < 1e-5);
        assert_true(fabs(out[0].logprob - ((logits[tok] - mx) / t - log(z))) < 1e-5);
        if (temps[ti] == 0.0f)
            assert_int_equal(tok, out[1].id); /* greedy picks the top one */
        tfm_sampler_destroy(s);
    }
}

/* tfm_sampler_logprobs: the raw log-softmax of the logits (no bias, no
 * penalty, temperature 1), of any token, the logits untouched, the
 * history unchanged. */
static void test_logprobs_of_a_given_token(void **state)
{
    (void)state;
    tfm_logit_bias ban[] = {{7, -100.0f}};
    tfm_sampler_params p = params(0.5f);
    p.logit_bias = ban;
    p.n_logit_bias = 1;
    p.frequency_penalty = 2.0f;
    p.top_logprobs = 3;
    tfm_sampler *s;
    assert_int_equal(tfm_sampler_create(V, &p, &s), TFM_OK);
    double z = 0;
    for (int i = 0; i < V; i++)
        z += exp(base[i] - 2.0);
    for (int id = 0; id < V; id++) {
        float x[V];
        memcpy(x, base, sizeof x);
        tfm_token_logprob out[4];
        tfm_sampler_logprobs(s, x, id, out);
        assert_memory_equal(x, base, sizeof x);
        assert_int_equal(out[0].id, id);
        assert_true(fabs(out[0].logprob - (base[id] - 2.0 - log(z))) < 1e-5);
        assert_int_equal(out[1].id, 7); /* 2.0, then 1.2, 0.9: the raw ranking */
        assert_int_equal(out[2].id, 0);
        assert_int_equal(out[3].id, 1);
    }
    /* nothing was recorded: greedy with the frequency penalty still
     * starts at the argmax of what bias leaves (7 banned: 0) */
    p.temperature = 0.0f;
    assert_int_equal(tfm_sampler_reset(s, &p), TFM_OK);
    float x[V];
    memcpy(x, base, sizeof x);
    tfm_token_logprob out[4];
    tfm_sampler_logprobs(s, x, 3, out);
    memcpy(x, base, sizeof x);
    assert_int_equal(tfm_sampler_sample(s, x), 0);
    tfm_sampler_destroy(s);
}

static void test_invalid_params(void **state)
{
    (void)state;
    tfm_logit_bias out_of_range[] = {{V, 1.0f}}, nan_bias[] = {{1, NAN}};
    tfm_sampler_params bad[10];
    for (int i = 0; i < 10; i++)
        bad[i] = params(1.0f);
    bad[0].min_p = -0.1f;
    bad[1].min_p = 1.5f;
    bad[2].repetition_penalty = -1.0f;
    bad[3].repetition_penalty = INFINITY;
    bad[4].presence_penalty = 2.5f;
    bad[5].frequency_penalty = NAN;
    bad[6].logit_bias = out_of_range, bad[6].n_logit_bias = 1;
    bad[7].logit_bias = nan_bias, bad[7].n_logit_bias = 1;
    bad[8].n_logit_bias = 2; /* no array */
    bad[9].top_logprobs = TFM_MAX_TOP_LOGPROBS + 1;
    tfm_sampler *s = NULL;
    tfm_sampler_params ok = params(1.0f);
    assert_int_equal(tfm_sampler_create(V, &ok, &s), TFM_OK);
    for (int i = 0; i < 10; i++) {
        tfm_sampler *t = (tfm_sampler *)1;
        assert_int_equal(tfm_sampler_create(V, &bad[i], &t), TFM_E_INVALID);
        assert_null(t);
        assert_int_equal(tfm_sampler_reset(s, &bad[i]), TFM_E_INVALID);
    }
    tfm_sampler_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_penalties_match_reference),
        cmocka_unit_test(test_min_p_and_truncation_match_reference),
        cmocka_unit_test(test_logit_bias),
        cmocka_unit_test(test_greedy_penalised_is_reference_argmax),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_logprobs_of_a_given_token),
        cmocka_unit_test(test_invalid_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
