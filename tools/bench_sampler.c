/*
 * bench_sampler.c — `attn bench-sampler`: plain greedy sampling
 * (temperature 0, no option) of today's sampler against the one before
 * issue 12's options (tools/sampler_base.c), and the per-token cost of the
 * full options path, as JSON lines.
 *
 * Greedy: each round times `calls` tfm_sampler_sample calls on one
 * implementation, over 8 rows of random logits in turn (so the argmax is
 * not always at the same place); the implementations alternate round by
 * round (ABBA), and the figures are the medians over the rounds, in ns per
 * call, with their ratio today / base (1.00: no change).  Greedy never
 * writes the logits without options, so the rows are reused as they are.
 *
 * Options: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, the three
 * penalties, 3 logit biases (one ban) and 5 top logprobs, through
 * tfm_sampler_sample_lp, a sequence of 512 tokens after a 128-token prompt
 * (reset and set_prompt included), each call on a fresh copy of a row,
 * beside the base sampler at the same temperature, top_k and top_p without
 * the options (what the options add is the difference); the copy is timed
 * alone too, and subtracted from both.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "sampler_base.h"
#include "tfm/profile.h"
#include "tfm/sampler.h"

enum { ROWS = 8, SEQ = 512, PROMPT = 128 };

typedef struct opts {
    long rounds;
    double round_ms;
} opts;

static void usage(FILE *f)
{
    fprintf(f, "usage: attn bench-sampler [--rounds 21] [--round-ms 20]\n"
               "  greedy sampling today vs before the sampling options (32000 and 258\n"
               "  entries, alternated rounds, medians, ratio), and the options path per\n"
               "  token, as JSON lines.\n");
}

static int parse_args(int argc, char **argv, opts *o, char *err, size_t errlen)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long l;
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return 1;
        if (!v) {
            snprintf(err, errlen, "missing value for %s", a);
            return -1;
        }
        i++;
        if (!strcmp(a, "--rounds") && !attn_parse_long(v, -1, 1, 1001, &l))
            o->rounds = l;
        else if (!strcmp(a, "--round-ms") && !attn_parse_long(v, -1, 1, 10000, &l))
            o->round_ms = (double)l;
        else {
            snprintf(err, errlen, "bad option or value: %s %s", a, v);
            return -1;
        }
    }
    return 0;
}

static void fill(float *x, size_t n, uint64_t *rng)
{
    for (size_t i = 0; i < n; i++) {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        x[i] = (float)(*rng >> 40) * (8.0f / 16777216.0f) - 4.0f;
    }
}

static volatile int sink;

/* ns per call of `calls` greedy samples; which: 0 base, 1 today */
static double greedy_round(int which, base_sampler *b, tfm_sampler *t, float *rows, int V,
                           long calls)
{
    int acc = 0;
    double t0 = tfm_now();
    for (long i = 0; i < calls; i++) {
        float *x = rows + (size_t)(i % ROWS) * V;
        acc += which ? tfm_sampler_sample(t, x) : base_sampler_sample(b, x);
    }
    double dt = tfm_now() - t0;
    sink = acc;
    return dt * 1e9 / (double)calls;
}

/* ns per token of a 512-token sequence with every option, of the base
 * sampler with the same temperature, top_k and top_p (no option), and of
 * the copy alone (subtracted from both) */
static void options_round(tfm_sampler *t, base_sampler *b, const tfm_sampler_params *p,
                          const float *rows, float *x, const int *prompt, int V, double *ns,
                          double *base_ns, double *copy_ns)
{
    tfm_token_logprob lp[1 + 5];
    int acc = 0;
    double t0 = tfm_now();
    tfm_sampler_reset(t, p);
    tfm_sampler_set_prompt(t, prompt, PROMPT);
    for (int i = 0; i < SEQ; i++) {
        memcpy(x, rows + (size_t)(i % ROWS) * V, (size_t)V * sizeof *x);
        acc += tfm_sampler_sample_lp(t, x, lp);
    }
    double t1 = tfm_now();
    for (int i = 0; i < SEQ; i++) {
        memcpy(x, rows + (size_t)(i % ROWS) * V, (size_t)V * sizeof *x);
        acc += (int)x[i % V];
    }
    double t2 = tfm_now();
    for (int i = 0; i < SEQ; i++) {
        memcpy(x, rows + (size_t)(i % ROWS) * V, (size_t)V * sizeof *x);
        acc += base_sampler_sample(b, x);
    }
    double t3 = tfm_now();
    sink = acc;
    *copy_ns = (t2 - t1) * 1e9 / SEQ;
    *ns = (t1 - t0) * 1e9 / SEQ - *copy_ns;
    *base_ns = (t3 - t2) * 1e9 / SEQ - *copy_ns;
}

static int bench_vocab(int V, const opts *o)
{
    const tfm_sampler_params greedy = {.temperature = 0.0f, .top_p = 1.0f};
    const tfm_logit_bias bias[] = {{1, 2.0f}, {2, -100.0f}, {V - 1, -1.0f}};
    const tfm_sampler_params all = {
        .temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 1, .min_p = 0.05f,
        .repetition_penalty = 1.1f, .presence_penalty = 0.5f, .frequency_penalty = 0.5f,
        .logit_bias = bias, .n_logit_bias = 3, .top_logprobs = 5};
    int rc = 1;
    base_sampler *b = NULL, *b_all = NULL;
    tfm_sampler *t = NULL, *t_all = NULL;
    float *rows = malloc((size_t)ROWS * V * sizeof *rows), *x = malloc((size_t)V * sizeof *x);
    double *bn = malloc((size_t)o->rounds * sizeof *bn), *tn = malloc((size_t)o->rounds * sizeof *tn);
    double *on = malloc((size_t)o->rounds * sizeof *on), *cn = malloc((size_t)o->rounds * sizeof *cn);
    double *obn = malloc((size_t)o->rounds * sizeof *obn);
    int prompt[PROMPT];
    if (!rows || !x || !bn || !tn || !on || !cn || !obn ||
        base_sampler_create(V, &greedy, &b) != TFM_OK ||
        base_sampler_create(V, &all, &b_all) != TFM_OK ||
        tfm_sampler_create(V, &greedy, &t) != TFM_OK ||
        tfm_sampler_create(V, &all, &t_all) != TFM_OK) {
        fprintf(stderr, "attn bench-sampler: out of memory\n");
        goto out;
    }
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    fill(rows, (size_t)ROWS * V, &rng);
    for (int i = 0; i < PROMPT; i++)
        prompt[i] = (int)((i * 7919L) % V);

    /* calls per round from a calibration on the base, then a warm-up of both */
    long calls = 1000;
    double ns = greedy_round(0, b, t, rows, V, calls);
    calls = (long)(o->round_ms * 1e6 / (ns > 1 ? ns : 1));
    calls = calls < 100 ? 100 : calls;
    greedy_round(0, b, t, rows, V, calls);
    greedy_round(1, b, t, rows, V, calls);
    for (long r = 0; r < o->rounds; r++) {
        int first = (int)(r % 4 == 1 || r % 4 == 2); /* ABBA */
        double a = greedy_round(first, b, t, rows, V, calls);
        double c = greedy_round(!first, b, t, rows, V, calls);
        bn[r] = first ? c : a;
        tn[r] = first ? a : c;
        /* the greedy history grows without bound here: reset as a new
         * sequence would, outside the timing */
        tfm_sampler_reset(t, &greedy);
        options_round(t_all, b_all, &all, rows, x, prompt, V, &on[r], &obn[r], &cn[r]);
    }
    double mb = attn_median(bn, (int)o->rounds), mt = attn_median(tn, (int)o->rounds);
    printf("{\"bench\": \"sampler_greedy\", \"vocab\": %d, \"rounds\": %ld, \"calls_per_round\": "
           "%ld, \"base_median_ns\": %.1f, \"today_median_ns\": %.1f, \"ratio\": %.3f}\n",
           V, o->rounds, calls, mb, mt, mt / mb);
    printf("{\"bench\": \"sampler_options\", \"vocab\": %d, \"rounds\": %ld, \"tokens_per_round\": "
           "%d, \"median_ns_per_token\": %.1f, \"base_same_sampling_median_ns\": %.1f, "
           "\"copy_median_ns\": %.1f, \"greedy_median_ns\": %.1f}\n",
           V, o->rounds, SEQ, attn_median(on, (int)o->rounds), attn_median(obn, (int)o->rounds),
           attn_median(cn, (int)o->rounds), mt);
    fflush(stdout);
    rc = 0;
out:
    base_sampler_destroy(b);
    base_sampler_destroy(b_all);
    tfm_sampler_destroy(t);
    tfm_sampler_destroy(t_all);
    free(rows);
    free(x);
    free(bn);
    free(tn);
    free(on);
    free(cn);
    free(obn);
    return rc;
}

int attn_bench_sampler_main(int argc, char **argv)
{
    opts o = {.rounds = 21, .round_ms = 20};
    char err[160] = "";
    int pr = attn_parse_outcome(parse_args(argc, argv, &o, err, sizeof err), "bench-sampler", err,
                                usage);
    if (pr >= 0)
        return pr;
    if (bench_vocab(32000, &o) || bench_vocab(258, &o))
        return 1;
    return 0;
}
