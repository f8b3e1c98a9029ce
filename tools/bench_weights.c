/*
 * bench_weights.c — `attn bench-weights`: the whole model's decode, batched
 * decode and prefill in each weight format (f32, bf16, q8, q4), side by
 * side in one run, as JSON lines on stdout and a summary on stderr.
 *
 * Where `attn bench-quant` times one matrix product, this times what a
 * user gets: tfm_decode over every layer, the classifier and the sampling
 * (greedy), on a random model of the named shape converted to each format
 * with tfm_model_quantize (the weights are the same random f32 weights
 * before conversion).
 *
 * Design notes:
 * - The formats alternate within each round (A B C D, then D C B A, ...),
 *   so a slow moment of this shared machine falls on all of them; each
 *   figure is the median over the rounds, and each format's ratio to f32 is
 *   taken from the medians of the same run.
 * - Every model, workspace and state exists before the first timed call;
 *   one untimed run per (format, threads) pages the weights in.
 * - bytes_per_token is what a decode step reads: every matrix in its
 *   format, the norms, and the classifier (which is the float32 embedding
 *   only for an f32 model with a shared classifier; a converted model has
 *   its own converted classifier, and reads one embedding row).  Dividing
 *   by `attn bench`'s read bandwidth gives the roofline share, which
 *   scripts/bench.sh prints.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "tfm/model.h"
#include "tfm/profile.h"
#include "tfm/quant.h"
#include "tfm/sampler.h"

#define N_FORMATS 4
#define MAX_THREADS 4
#define MAX_ROUNDS 101
#define MAX_B 8
#define BOS 1

enum { M_DECODE, M_BATCH4, M_BATCH8, M_PREFILL, N_METRICS };
static const char *const metric_names[N_METRICS] = {"decode", "batch4", "batch8", "prefill"};
static const int metric_rows[N_METRICS] = {1, 4, 8, 0};

typedef struct {
    char shape[32];
    tfm_config cfg;
    int formats[N_FORMATS], n_formats;
    int threads[MAX_THREADS], n_threads;
    int rounds, decode_tokens, prompt_tokens;
    unsigned only; /* bit k: metric k is measured */
} wopts;

/* One format's model and, per thread count, its workspace and states. */
typedef struct {
    int fmt;
    tfm_model *m;
    double bytes_per_token;
    tfm_workspace *ws;
    tfm_state *st[MAX_B];
    double v[N_METRICS][MAX_ROUNDS]; /* tokens/s per round */
} wmodel;

static void usage(FILE *f)
{
    fputs("usage: attn bench-weights [--shape 15M|110M|DxHxLxNHxKVxVxS] [--formats LIST]\n"
          "                          [--threads LIST] [--rounds N] [--decode-tokens N]\n"
          "                          [--prompt-tokens N] [--only LIST]\n"
          "  decode (1 sequence), batched decode (4 and 8) and prefill tokens/s of a\n"
          "  random model in each weight format, alternated round by round; medians\n"
          "  and the ratio to f32 (defaults: 15M, f32,bf16,q8,q4, 1,2, 5 rounds,\n"
          "  128 decode tokens, 256 prompt tokens; --only any of\n"
          "  decode,batch4,batch8,prefill, default all)\n",
          f);
}

/* Comma-separated list of small ints (kind 0), format names (1) or metric
 * names (2) into out. */
static int parse_list(const char *s, int kind, int *out, int max, int *n)
{
    *n = 0;
    for (const char *p = s;; p++) {
        size_t len = strcspn(p, ",");
        char item[16];
        long v;
        if (*n == max || len == 0 || len >= sizeof item)
            return -1;
        memcpy(item, p, len);
        item[len] = '\0';
        if (kind == 2) {
            int k = 0;
            while (k < N_METRICS && strcmp(item, metric_names[k]))
                k++;
            if (k == N_METRICS)
                return -1;
            out[(*n)++] = k;
        } else if (kind == 1) {
            tfm_wformat f;
            if (tfm_wformat_parse(item, &f) != TFM_OK)
                return -1;
            out[(*n)++] = (int)f;
        } else {
            if (attn_parse_long(item, -1, 1, 64, &v))
                return -1;
            out[(*n)++] = (int)v;
        }
        p += len;
        if (!*p)
            return 0;
    }
}

static int parse_args(int argc, char **argv, wopts *o, char *err, size_t errlen)
{
    *o = (wopts){.formats = {TFM_WF_F32, TFM_WF_BF16, TFM_WF_Q8, TFM_WF_Q4},
                 .n_formats = 4, .threads = {1, 2}, .n_threads = 2, .rounds = 5,
                 .decode_tokens = 128, .prompt_tokens = 256, .only = (1u << N_METRICS) - 1};
    const char *shape = "15M";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return 1;
        if (!v) {
            snprintf(err, errlen, "%s: unknown or missing its value", a);
            return -1;
        }
        if (!strcmp(a, "--shape"))
            shape = v;
        else if (!strcmp(a, "--formats"))
            bad = parse_list(v, 1, o->formats, N_FORMATS, &o->n_formats);
        else if (!strcmp(a, "--only")) {
            int ks[N_METRICS], nk;
            bad = parse_list(v, 2, ks, N_METRICS, &nk);
            o->only = 0;
            for (int j = 0; !bad && j < nk; j++)
                o->only |= 1u << ks[j];
        } else if (!strcmp(a, "--threads"))
            bad = parse_list(v, 0, o->threads, MAX_THREADS, &o->n_threads);
        else if (!strcmp(a, "--rounds"))
            bad = attn_parse_long(v, -1, 1, MAX_ROUNDS, &n) || !(o->rounds = (int)n);
        else if (!strcmp(a, "--decode-tokens"))
            bad = attn_parse_long(v, -1, 1, 1 << 20, &n) || !(o->decode_tokens = (int)n);
        else if (!strcmp(a, "--prompt-tokens"))
            bad = attn_parse_long(v, -1, 1, 1 << 20, &n) || !(o->prompt_tokens = (int)n);
        else {
            snprintf(err, errlen, "unknown argument '%s'", a);
            return -1;
        }
        if (bad) {
            snprintf(err, errlen, "bad value for %s: '%s'", a, v);
            return -1;
        }
        i++;
    }
    if (attn_bench_shape(shape, &o->cfg, err, errlen))
        return -1;
    snprintf(o->shape, sizeof o->shape, "%s", shape);
    if (o->decode_tokens > o->cfg.seq_len || o->prompt_tokens > o->cfg.seq_len) {
        snprintf(err, errlen, "--decode-tokens and --prompt-tokens are at most seq_len (%d)",
                 o->cfg.seq_len);
        return -1;
    }
    return 0;
}

/* What one decode step reads (see the file's notes). */
static double bytes_per_token(const tfm_model *m)
{
    const tfm_config *c = &m->cfg;
    double b = (double)tfm_model_weight_bytes(m);
    if (m->w.wcls != m->w.token_embedding) /* the embedding: one row a token */
        b -= (double)c->vocab_size * c->dim * sizeof(float);
    return b;
}

/* B sequences, `steps` greedy tokens each from fresh states: seconds. */
static tfm_status run_decode(wmodel *w, int B, int steps, float *logits, double *dt)
{
    int vocab = w->m->cfg.vocab_size, tok[MAX_B];
    for (int i = 0; i < B; i++) {
        tfm_state_reset(w->st[i]);
        tok[i] = (BOS + 7919 * i) % vocab;
    }
    double t0 = tfm_now();
    for (int s = 0; s < steps; s++) {
        tfm_status rc = tfm_decode(w->ws, w->st, tok, B, logits);
        if (rc != TFM_OK)
            return rc;
        for (int i = 0; i < B; i++)
            tok[i] = tfm_argmax(logits + (size_t)i * vocab, vocab);
    }
    *dt = tfm_now() - t0;
    return TFM_OK;
}

static tfm_status run_prefill(wmodel *w, const int *prompt, int n, float *logits, double *dt)
{
    tfm_state_reset(w->st[0]);
    double t0 = tfm_now();
    tfm_status rc = tfm_prefill(w->ws, w->st[0], prompt, n, logits);
    *dt = tfm_now() - t0;
    return rc;
}

/* One measurement of metric k: tokens/s into *tps. */
static tfm_status measure(wmodel *w, const wopts *o, int k, const int *prompt, float *logits,
                          double *tps)
{
    double dt = 0;
    tfm_status rc;
    if (k == M_PREFILL) {
        rc = run_prefill(w, prompt, o->prompt_tokens, logits, &dt);
        *tps = o->prompt_tokens / dt;
    } else {
        rc = run_decode(w, metric_rows[k], o->decode_tokens, logits, &dt);
        *tps = (double)metric_rows[k] * o->decode_tokens / dt;
    }
    return rc;
}

static double median_of(const double *v, int n)
{
    double tmp[MAX_ROUNDS];
    memcpy(tmp, v, (size_t)n * sizeof *tmp);
    return attn_median(tmp, n);
}

static void report(const wopts *o, wmodel *wm, int t)
{
    double f32med[N_METRICS] = {0};
    for (int i = 0; i < o->n_formats; i++)
        if (wm[i].fmt == TFM_WF_F32)
            for (int k = 0; k < N_METRICS; k++)
                f32med[k] = median_of(wm[i].v[k], o->rounds);
    fprintf(stderr, "\n%s, %d thread%s, medians of %d alternated rounds (tokens/s; x f32)\n",
            o->shape, t, t > 1 ? "s" : "", o->rounds);
    fprintf(stderr, "%-6s %10s %16s %16s %16s %16s\n", "format", "MB/token", "decode",
            "batch 4", "batch 8", "prefill");
    for (int i = 0; i < o->n_formats; i++) {
        wmodel *w = &wm[i];
        const char *name = tfm_wformat_name((tfm_wformat)w->fmt);
        fprintf(stderr, "%-6s %10.1f", name, w->bytes_per_token / 1e6);
        printf("{\"bench\":\"weights\",\"shape\":\"%s\",\"threads\":%d,\"format\":\"%s\","
               "\"bytes_per_token\":%.0f",
               o->shape, t, name, w->bytes_per_token);
        for (int k = 0; k < N_METRICS; k++) {
            if (!(o->only & (1u << k))) {
                fprintf(stderr, " %16s", "-");
                continue;
            }
            double med = median_of(w->v[k], o->rounds);
            double x = f32med[k] > 0 ? med / f32med[k] : 0;
            fprintf(stderr, " %9.1f", med);
            if (x > 0)
                fprintf(stderr, " %5.2fx", x);
            else
                fprintf(stderr, " %6s", "");
            printf(",\"%s_tokens_per_s\":%.2f,\"%s_runs\":[", metric_names[k], med,
                   metric_names[k]);
            for (int r = 0; r < o->rounds; r++)
                printf("%s%.2f", r ? "," : "", w->v[k][r]);
            putchar(']');
            if (x > 0)
                printf(",\"%s_vs_f32\":%.3f", metric_names[k], x);
        }
        fputc('\n', stderr);
        puts("}");
    }
    fflush(stdout);
}

static int bench_threads(const wopts *o, wmodel *wm, int t, const int *prompt, float *logits)
{
    int max_rows = o->prompt_tokens > MAX_B ? o->prompt_tokens : MAX_B;
    int ok = 0;
    for (int i = 0; i < o->n_formats; i++) {
        wmodel *w = &wm[i];
        if (tfm_workspace_create(w->m, max_rows, t, &w->ws) != TFM_OK)
            goto out;
        for (int b = 0; b < MAX_B; b++)
            if (tfm_state_create(w->m, 0, &w->st[b]) != TFM_OK)
                goto out;
    }
    for (int i = 0; i < o->n_formats; i++) /* page in, warm the pools */
        for (int k = 0; k < N_METRICS; k++) {
            double tps;
            if ((o->only & (1u << k)) && measure(&wm[i], o, k, prompt, logits, &tps) != TFM_OK)
                goto out;
        }
    for (int r = 0; r < o->rounds; r++) {
        fprintf(stderr, "[%s t=%d] round %d/%d\r", o->shape, t, r + 1, o->rounds);
        for (int j = 0; j < o->n_formats; j++) {
            wmodel *w = &wm[r % 2 ? o->n_formats - 1 - j : j];
            for (int k = 0; k < N_METRICS; k++)
                if ((o->only & (1u << k)) && measure(w, o, k, prompt, logits, &w->v[k][r]) != TFM_OK)
                    goto out;
        }
    }
    report(o, wm, t);
    ok = 1;
out:
    if (!ok)
        fprintf(stderr, "attn bench-weights: a forward pass failed at %d threads\n", t);
    for (int i = 0; i < o->n_formats; i++) {
        for (int b = 0; b < MAX_B; b++) {
            tfm_state_destroy(wm[i].st[b]);
            wm[i].st[b] = NULL;
        }
        tfm_workspace_destroy(wm[i].ws);
        wm[i].ws = NULL;
    }
    return ok ? 0 : -1;
}

int attn_bench_weights_main(int argc, char **argv)
{
    wopts o;
    char err[256] = "";
    int pr = parse_args(argc, argv, &o, err, sizeof err), code;
    if ((code = attn_parse_outcome(pr, "bench-weights", err, usage)) >= 0)
        return code;

    wmodel wm[N_FORMATS] = {{0}};
    int *prompt = malloc((size_t)o.prompt_tokens * sizeof *prompt);
    float *logits = malloc((size_t)MAX_B * o.cfg.vocab_size * sizeof *logits);
    int rc = 1;
    if (!prompt || !logits) {
        fprintf(stderr, "attn bench-weights: out of memory\n");
        goto out;
    }
    for (int i = 0; i < o.prompt_tokens; i++)
        prompt[i] = (int)((BOS + 104729u * (unsigned)i) % (unsigned)o.cfg.vocab_size);
    for (int i = 0; i < o.n_formats; i++) {
        wmodel *w = &wm[i];
        w->fmt = o.formats[i];
        if (tfm_model_create(&o.cfg, &w->m, err, sizeof err) != TFM_OK)
            goto fail;
        tfm_model_init_random(w->m, 1);
        if (tfm_model_quantize(w->m, w->fmt, err, sizeof err) != TFM_OK)
            goto fail;
        w->bytes_per_token = bytes_per_token(w->m);
    }
    rc = 0;
    for (int ti = 0; ti < o.n_threads && rc == 0; ti++)
        rc = bench_threads(&o, wm, o.threads[ti], prompt, logits) ? 1 : 0;
    goto out;
fail:
    fprintf(stderr, "attn bench-weights: %s\n", err);
out:
    for (int i = 0; i < N_FORMATS; i++)
        tfm_model_destroy(wm[i].m);
    free(prompt);
    free(logits);
    return rc;
}
