/*
 * bench.c — `attn bench`: decode, batched decode, prefill, memory bandwidth
 * and the matrix-vector kernel; one JSON object per line on stdout, progress
 * and a closing summary table on stderr.
 *
 * Per thread count t (one workspace with t threads; OpenBLAS runs inside
 * them, single-threaded):
 *   decode        greedy tokens from BOS, one tfm_decode per token (B = 1);
 *   decode_batch  4 and 8 sequences advanced together, as continuous
 *                 batching does: aggregate tokens/s;
 *   prefill       one prompt through tfm_prefill in one call (sgemm) against
 *                 the same prompt fed token by token through tfm_decode, as
 *                 llama2.c's run.c does (logits computed at every step);
 *   bandwidth     STREAM-style read, copy and triad over 256 MB arrays on t
 *                 plain pthreads, and the decode roofline they imply;
 *   kernel        tfm__matmul_kernel against tfm__matmul_sgemm on single
 *                 matrices at 1..32 rows, as GB/s of weights streamed.
 *
 * Design notes:
 * - Every figure is the median of --runs timed runs after a warm-up
 *   (token-by-token paths warm up on 32 steps: a full run can take seconds).
 *   Bandwidth also reports the best run, STREAM's convention, and the
 *   roofline uses it: a roofline is an upper bound.
 * - Decode streams every weight once per token, so it is bound by memory
 *   bandwidth: roofline tokens/s = bytes/s / weight bytes per token.  The
 *   roofline line uses triad as asked for, and also the one-stream read
 *   bandwidth, the closer model of a weight stream (triad, counted STREAM's
 *   way, ignores write-allocate traffic and so understates the machine).
 *   A fraction near 1 means better loops cannot help; fewer bytes per weight
 *   or more sequences per weight read can (decode_batch).
 * - Nothing is allocated inside a timed loop: model, workspace, states,
 *   logits, prompt, bandwidth arrays and kernel matrices exist beforehand.
 * - The kernel section calls the core's internals (core/internal.h); the
 *   attn target does not put core/ on its include path, hence the relative
 *   include.
 * - JSON is formatted by hand; a non-finite number is written as null.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "tfm/checkpoint.h"
#include "tfm/model.h"
#include "tfm/profile.h"
#include "tfm/sampler.h"

#include "internal.h" /* core/: the two matmul paths, for the kernel section */

#define BOS 1
#define MAX_THREAD_COUNTS 16
#define MAX_BATCH 8
#define WARM_STEPS 32
#define BW_FLOATS ((size_t)64 << 20)         /* per array: 256 MB, far beyond any cache */
#define KERNEL_RUN_BYTES ((size_t)128 << 20) /* weights streamed per timed kernel run */
#define KERNEL_MAX_B 32
#define N_KMATS 3

enum {
    SEL_DECODE = 1 << 0,
    SEL_BATCH = 1 << 1,
    SEL_PREFILL = 1 << 2,
    SEL_BANDWIDTH = 1 << 3,
    SEL_KERNEL = 1 << 4,
    SEL_ALL = (1 << 5) - 1,
};

static const int batch_sizes[] = {4, 8};
#define N_BATCHES ((int)(sizeof batch_sizes / sizeof batch_sizes[0]))

/* Rows per product in the kernel section: decode (1), the switch to sgemm
 * (TFM__GEMM_MIN_ROWS, 8) and beyond, to show where sgemm starts to win. */
static const int kernel_batches[] = {1, 8, 16, KERNEL_MAX_B};
#define N_KBATCHES ((int)(sizeof kernel_batches / sizeof kernel_batches[0]))

/* (n rows, d columns); `copies` distinct matrices are cycled through so a
 * small one is read from DRAM, not from cache. */
typedef struct {
    const char *name;
    int n, d, copies;
} kernel_matrix;

static const kernel_matrix kmats[N_KMATS] = {
    {"768x768", 768, 768, 1},       /* one 110M projection, cache-resident */
    {"768x768_cold", 768, 768, 64}, /* 64 of them, 151 MB: from DRAM */
    {"32000x288", 32000, 288, 1},   /* the 15M classifier, 37 MB */
};

typedef struct {
    char shape[64]; /* label in every JSON line */
    tfm_config cfg; /* random weights of this shape, unless model_path */
    const char *model_path;
    int threads[MAX_THREAD_COUNTS];
    int n_threads;
    int runs, decode_tokens, prompt_tokens;
    unsigned only; /* SEL_* */
} bench_opts;

/* Per thread count, for the summary table; 0 = not measured. */
typedef struct {
    int threads;
    double decode_tps, batch_tps[N_BATCHES], prefill_tps, tbt_tps;
    double gbs[3]; /* read, copy, triad: best of runs */
    double kernel_gbs[N_KMATS], sgemm_gbs[N_KMATS]; /* B = 1 */
} bench_result;

/* Everything the timed loops touch, allocated beforehand. */
typedef struct {
    const bench_opts *o;
    const tfm_model *m;
    tfm_workspace *ws;
    int t;
    tfm_state *st[MAX_BATCH];
    int tokens[MAX_BATCH];
    float *logits; /* (MAX_BATCH, vocab) */
    int *prompt;   /* (prompt_tokens) */
    double *vals;  /* (max(runs, 3)) per-run figures */
} bench_ctx;

/* ---- arguments ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fputs("usage: attn bench [--shape 15M|110M|DxHxLxNHxKVxVxS] [--model FILE]\n"
          "                  [--threads LIST] [--runs N] [--decode-tokens N]\n"
          "                  [--prompt-tokens N] [--only LIST]\n"
          "  --shape S          random weights: 15M (default), 110M, or\n"
          "                     dim x hidden x layers x heads x kv_heads x vocab x seq_len\n"
          "  --model FILE       a checkpoint instead (safetensors or llama2.c .bin)\n"
          "  --threads LIST     thread counts, comma-separated (default 1,2)\n"
          "  --runs N           timed runs per figure, median reported (default 5)\n"
          "  --decode-tokens N  greedy tokens per decode run (default 256)\n"
          "  --prompt-tokens N  prompt length for prefill (default 256)\n"
          "  --only LIST        any of decode,batch,prefill,bandwidth,kernel (default all)\n"
          "JSON lines on stdout; progress and a summary table on stderr.\n",
          f);
}

/* attn_parse_long for int fields. */
static int parse_int(const char *s, int len, int lo, int hi, int *out)
{
    long v;
    if (attn_parse_long(s, len, lo, hi, &v))
        return -1;
    *out = (int)v;
    return 0;
}

int attn_bench_shape(const char *s, tfm_config *out, char *err, size_t errlen)
{
    tfm_config c = {.n_layers = 0};
    if (strcmp(s, "15M") == 0) {
        c = (tfm_config){.dim = 288, .hidden_dim = 768, .n_layers = 6, .n_heads = 6,
                         .n_kv_heads = 6, .vocab_size = 32000, .seq_len = 256,
                         .shared_classifier = 1};
    } else if (strcmp(s, "110M") == 0) {
        c = (tfm_config){.dim = 768, .hidden_dim = 2048, .n_layers = 12, .n_heads = 12,
                         .n_kv_heads = 12, .vocab_size = 32000, .seq_len = 1024,
                         .shared_classifier = 1};
    } else {
        int v[7];
        const char *p = s;
        for (int i = 0; i < 7; i++) {
            size_t len = strcspn(p, "x");
            if ((p[len] == 'x') != (i < 6) || parse_int(p, (int)len, 1, 1 << 22, &v[i])) {
                snprintf(err, errlen, "--shape %s: expected 15M, 110M or DxHxLxNHxKVxVxS", s);
                return -1;
            }
            p += len + 1;
        }
        c = (tfm_config){.dim = v[0], .hidden_dim = v[1], .n_layers = v[2], .n_heads = v[3],
                         .n_kv_heads = v[4], .vocab_size = v[5], .seq_len = v[6],
                         .shared_classifier = 1};
    }
    tfm_config_defaults(&c);
    char msg[160];
    if (tfm_config_validate(&c, msg, sizeof msg) != TFM_OK) {
        snprintf(err, errlen, "--shape %s: %s", s, msg);
        return -1;
    }
    *out = c;
    return 0;
}

static int parse_shape(const char *s, bench_opts *o, char *err, size_t errlen)
{
    if (attn_bench_shape(s, &o->cfg, err, errlen))
        return -1;
    snprintf(o->shape, sizeof o->shape, "%s", s);
    return 0;
}

/* Comma-separated lists with no empty item: --threads (1..256 each) here,
 * --only in parse_only. */
static int parse_threads(const char *s, bench_opts *o)
{
    o->n_threads = 0;
    for (const char *p = s;; p++) {
        size_t len = strcspn(p, ",");
        if (o->n_threads == MAX_THREAD_COUNTS ||
            parse_int(p, (int)len, 1, 256, &o->threads[o->n_threads++]))
            return -1;
        p += len;
        if (!*p)
            return 0;
    }
}

static int parse_only(const char *s, unsigned *out)
{
    static const char *const names[] = {"decode", "batch", "prefill", "bandwidth", "kernel"};
    *out = 0;
    for (const char *p = s;; p++) {
        size_t len = strcspn(p, ",");
        unsigned bit = 0;
        for (int i = 0; i < 5; i++)
            if (strlen(names[i]) == len && strncmp(p, names[i], len) == 0)
                bit = 1u << i;
        if (!bit)
            return -1;
        *out |= bit;
        p += len;
        if (!*p)
            return 0;
    }
}

/* Matches "--name VALUE" and "--name=VALUE" at argv[*i]: 1 with *val set
 * (NULL when the value is missing), 0 for another argument. */
static int opt_value(int argc, char **argv, int *i, const char *name, const char **val)
{
    size_t len = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, len) != 0 || (a[len] != '=' && a[len] != '\0'))
        return 0;
    if (a[len] == '=')
        *val = a + len + 1;
    else
        *val = *i + 1 < argc ? argv[++*i] : NULL;
    return 1;
}

/* 0 ok, 1 help wanted, -1 error (message in err). */
static int parse_args(int argc, char **argv, bench_opts *o, char *err, size_t errlen)
{
    *o = (bench_opts){.threads = {1, 2}, .n_threads = 2, .runs = 5, .decode_tokens = 256,
                      .prompt_tokens = 256, .only = SEL_ALL};
    const struct {
        const char *name;
        int *dst, max;
    } ints[] = {{"--runs", &o->runs, 10000},
                {"--decode-tokens", &o->decode_tokens, 1 << 20},
                {"--prompt-tokens", &o->prompt_tokens, 1 << 20}};
    const char *shape = NULL;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL, *a = argv[i];
        int bad, k = 0;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
            return 1;
        while (k < 3 && !opt_value(argc, argv, &i, ints[k].name, &v))
            k++;
        if (k < 3)
            bad = !v || parse_int(v, -1, 1, ints[k].max, ints[k].dst);
        else if (opt_value(argc, argv, &i, "--shape", &v))
            bad = (shape = v) == NULL;
        else if (opt_value(argc, argv, &i, "--model", &v))
            bad = (o->model_path = v) == NULL;
        else if (opt_value(argc, argv, &i, "--threads", &v))
            bad = !v || parse_threads(v, o);
        else if (opt_value(argc, argv, &i, "--only", &v))
            bad = !v || parse_only(v, &o->only);
        else {
            snprintf(err, errlen, "unknown argument '%s'", a);
            return -1;
        }
        if (bad) {
            snprintf(err, errlen, "bad or missing value for %s", a);
            return -1;
        }
    }
    if (shape && o->model_path) {
        snprintf(err, errlen, "--shape and --model exclude each other");
        return -1;
    }
    if (o->model_path) { /* lengths are checked against the file's seq_len */
        const char *base = strrchr(o->model_path, '/');
        snprintf(o->shape, sizeof o->shape, "%s", base ? base + 1 : o->model_path);
        return 0;
    }
    if (parse_shape(shape ? shape : "15M", o, err, errlen))
        return -1;
    if (o->decode_tokens > o->cfg.seq_len || o->prompt_tokens > o->cfg.seq_len) {
        snprintf(err, errlen, "--decode-tokens and --prompt-tokens are at most seq_len (%d)",
                 o->cfg.seq_len);
        return -1;
    }
    return 0;
}

/* ---- small helpers -------------------------------------------------------- */

static double best(const double *v, int n)
{
    double b = v[0];
    for (int i = 1; i < n; i++)
        b = v[i] > b ? v[i] : b;
    return b;
}

static void json_num(double v, int prec)
{
    if (isfinite(v))
        printf("%.*f", prec, v);
    else
        fputs("null", stdout);
}

/* ,"key":v */
static void json_kv(const char *key, double v, int prec)
{
    printf(",\"%s\":", key);
    json_num(v, prec);
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

/* {"bench":NAME,"shape":...,"threads":t — the caller adds fields, then
 * json_end closes the line. */
static void json_head(const char *bench, const char *shape, int t)
{
    printf("{\"bench\":\"%s\",\"shape\":", bench);
    json_str(shape);
    printf(",\"threads\":%d", t);
}

static void json_runs(const double *v, int n)
{
    fputs(",\"runs\":[", stdout);
    for (int i = 0; i < n; i++) {
        if (i)
            putchar(',');
        json_num(v[i], 2);
    }
    putchar(']');
}

static void json_end(void)
{
    puts("}");
    fflush(stdout);
}

/* Bytes of weights one decode step reads: every layer matrix and norm, the
 * final norm and the classifier (once, shared or not; the embedding row is
 * negligible). */
static double weight_bytes_per_token(const tfm_config *c)
{
    double d = c->dim, h = c->hidden_dim, kv = (double)c->dim / c->n_heads * c->n_kv_heads;
    double layer = 2.0 * d * d + 2.0 * kv * d + 3.0 * h * d + 2.0 * d;
    return 4.0 * (c->n_layers * layer + d + (double)c->vocab_size * d);
}

static int fail_status(const char *what, tfm_status rc)
{
    fprintf(stderr, "\nattn bench: %s: %s\n", what, tfm_strerror(rc));
    return -1;
}

/* ---- decode, batched decode, prefill ---------------------------------------- */

/* One timed job: `arg` is a batch size or a prefill mode, n its tokens. */
typedef tfm_status (*timed_fn)(bench_ctx *c, int arg, int n, double *dt);

/* B sequences from fresh states, `steps` greedy tokens each. */
static tfm_status decode_steps(bench_ctx *c, int B, int steps, double *dt)
{
    int vocab = c->m->cfg.vocab_size;
    for (int i = 0; i < B; i++) {
        tfm_state_reset(c->st[i]);
        c->tokens[i] = (BOS + 7919 * i) % vocab; /* distinct sequences */
    }
    double t0 = tfm_now();
    for (int s = 0; s < steps; s++) {
        tfm_status rc = tfm_decode(c->ws, c->st, c->tokens, B, c->logits);
        if (rc != TFM_OK)
            return rc;
        for (int i = 0; i < B; i++)
            c->tokens[i] = tfm_argmax(c->logits + (size_t)i * vocab, vocab);
    }
    *dt = tfm_now() - t0;
    return TFM_OK;
}

/* The prompt's first n tokens into st[0]: one tfm_prefill call (mode 0) or
 * one tfm_decode per token (mode 1). */
static tfm_status prefill_once(bench_ctx *c, int mode, int n, double *dt)
{
    tfm_state *st = c->st[0];
    tfm_status rc = TFM_OK;
    tfm_state_reset(st);
    double t0 = tfm_now();
    if (mode == 0)
        rc = tfm_prefill(c->ws, st, c->prompt, n, c->logits);
    else
        for (int i = 0; i < n && rc == TFM_OK; i++)
            rc = tfm_decode(c->ws, &st, &c->prompt[i], 1, c->logits);
    *dt = tfm_now() - t0;
    return rc;
}

/* A warm-up of `warm` tokens, then --runs runs of n; c->vals gets tokens/s
 * (tokens_per_run / seconds) per run, *med their median.  Progress on
 * stderr under `label`. */
static int timed_runs(bench_ctx *c, const char *label, timed_fn fn, int arg, int n, int warm,
                      double tokens_per_run, double *med)
{
    const bench_opts *o = c->o;
    double dt;
    fprintf(stderr, "[%s t=%d] %s x %d runs:", o->shape, c->t, label, o->runs);
    tfm_status rc = fn(c, arg, warm, &dt);
    tfm_profile_reset(tfm_workspace_profile(c->ws));
    for (int run = 0; run < o->runs && rc == TFM_OK; run++) {
        rc = fn(c, arg, n, &dt);
        c->vals[run] = tokens_per_run / dt;
        fprintf(stderr, " %.1f", c->vals[run]);
    }
    if (rc != TFM_OK)
        return fail_status(label, rc);
    double *sorted = c->vals + o->runs; /* the runs stay in order for the JSON */
    memcpy(sorted, c->vals, (size_t)o->runs * sizeof *sorted);
    *med = attn_median(sorted, o->runs);
    fprintf(stderr, " -> median %.1f tok/s\n", *med);
    return 0;
}

static int bench_decode(bench_ctx *c, bench_result *r)
{
    const bench_opts *o = c->o;
    int n = o->decode_tokens;
    char label[64];
    snprintf(label, sizeof label, "decode %d tokens", n);
    if (timed_runs(c, label, decode_steps, 1, n, n, n, &r->decode_tps))
        return -1;
    json_head("decode", o->shape, c->t);
    printf(",\"tokens\":%d", n);
    json_runs(c->vals, o->runs);
    json_kv("median_tokens_per_s", r->decode_tps, 2);
    json_kv("ms_per_token", 1e3 / r->decode_tps, 4);
    /* where the time goes, from the workspace's profile of the timed runs */
    const tfm_profile *prof = tfm_workspace_profile(c->ws);
    double total = tfm_profile_total_seconds(prof, TFM_PHASE_DECODE);
    fputs(",\"time_split\":{", stdout);
    for (int k = 0; k < TFM_COMP_COUNT; k++) {
        printf("%s\"%s\":", k ? "," : "", tfm_component_name((tfm_component)k));
        json_num(total > 0 ? prof->comp_seconds[TFM_PHASE_DECODE][k] / total : NAN, 3);
    }
    putchar('}');
    json_end();
    return 0;
}

static int bench_batch(bench_ctx *c, bench_result *r)
{
    const bench_opts *o = c->o;
    int n = o->decode_tokens, warm = n < WARM_STEPS ? n : WARM_STEPS;
    for (int bi = 0; bi < N_BATCHES; bi++) {
        int B = batch_sizes[bi];
        char label[64];
        snprintf(label, sizeof label, "decode_batch %d x %d tokens", B, n);
        if (timed_runs(c, label, decode_steps, B, n, warm, (double)B * n, &r->batch_tps[bi]))
            return -1;
        json_head("decode_batch", o->shape, c->t);
        printf(",\"batch\":%d,\"tokens\":%d", B, n);
        json_runs(c->vals, o->runs);
        json_kv("median_tokens_per_s", r->batch_tps[bi], 2);
        json_kv("ms_per_step", 1e3 * B / r->batch_tps[bi], 4);
        json_kv("speedup_vs_single", r->batch_tps[bi] / r->decode_tps, 3);
        json_end();
    }
    return 0;
}

static int bench_prefill(bench_ctx *c, bench_result *r)
{
    const bench_opts *o = c->o;
    int n = o->prompt_tokens;
    static const char *const modes[2] = {"sgemm", "token_by_token"};
    double *out[2] = {&r->prefill_tps, &r->tbt_tps};
    for (int mode = 0; mode < 2; mode++) {
        char label[64];
        snprintf(label, sizeof label, "prefill %s %d tokens", modes[mode], n);
        int warm = mode == 0 || n < WARM_STEPS ? n : WARM_STEPS;
        if (timed_runs(c, label, prefill_once, mode, n, warm, n, out[mode]))
            return -1;
        json_head("prefill", o->shape, c->t);
        printf(",\"mode\":\"%s\",\"tokens\":%d", modes[mode], n);
        json_runs(c->vals, o->runs);
        json_kv("median_tokens_per_s", *out[mode], 2);
        json_kv("ms_total", 1e3 * n / *out[mode], 3);
        json_end();
    }
    json_head("prefill_speedup", o->shape, c->t);
    printf(",\"tokens\":%d", n);
    json_kv("ratio", r->prefill_tps / r->tbt_tps, 3);
    json_end();
    return 0;
}

/* ---- memory bandwidth on plain pthreads ------------------------------------- */

enum { OP_READ, OP_COPY, OP_TRIAD, OP_INIT };
static const char *const op_names[3] = {"read", "copy", "triad"};
/* bytes moved per element, as STREAM counts them (no write-allocate) */
static const double op_bytes[3] = {4.0, 8.0, 12.0};

typedef struct {
    float *a, *b, *c; /* (n) each */
    size_t n;
    int nt, op;
} stream_job;

typedef struct {
    const stream_job *job;
    int index;
    pthread_t thread;
    float sum; /* OP_READ's result, so the reads are not optimised away */
} stream_worker;

static void *stream_worker_main(void *arg)
{
    stream_worker *w = arg;
    const stream_job *j = w->job;
    size_t lo = j->n * (size_t)w->index / (size_t)j->nt;
    size_t hi = j->n * (size_t)(w->index + 1) / (size_t)j->nt;
    float *restrict a = j->a, *restrict b = j->b, *restrict c = j->c;
    switch (j->op) {
    case OP_INIT: /* first touch by the thread of the same slice */
        for (size_t i = lo; i < hi; i++) {
            a[i] = 1.0f;
            b[i] = 2.0f;
            c[i] = 0.5f;
        }
        break;
    case OP_READ: /* one stream through a dot product, as decode reads weights
                   * (the second operand is the same address: an L1 hit) */
        w->sum = tfm__dot(b + lo, b + lo, (int)(hi - lo));
        break;
    case OP_COPY:
        for (size_t i = lo; i < hi; i++)
            c[i] = a[i];
        break;
    default:
        for (size_t i = lo; i < hi; i++)
            a[i] = b[i] + 0.5f * c[i];
    }
    return NULL;
}

/* Runs op on nt fresh threads, each on its slice: seconds from the first
 * start to the last join (thread start-up, tens of microseconds, is noise
 * against the ~10 ms an op takes), or -1 if a thread cannot start. */
static double stream_op(stream_job *j, stream_worker *ws, int op)
{
    j->op = op;
    int started = 0;
    double t0 = tfm_now();
    for (; started < j->nt; started++) {
        ws[started] = (stream_worker){.job = j, .index = started};
        if (pthread_create(&ws[started].thread, NULL, stream_worker_main, &ws[started]) != 0)
            break;
    }
    for (int i = 0; i < started; i++)
        pthread_join(ws[i].thread, NULL);
    double dt = tfm_now() - t0;
    return started == j->nt ? dt : -1.0;
}

static int bench_bandwidth(bench_ctx *c, float *arrays, bench_result *r)
{
    const bench_opts *o = c->o;
    int t = c->t, runs = o->runs < 3 ? 3 : o->runs;
    stream_job job = {.a = arrays, .b = arrays + BW_FLOATS, .c = arrays + 2 * BW_FLOATS,
                      .n = BW_FLOATS, .nt = t};
    stream_worker *ws = calloc((size_t)t, sizeof *ws);
    double *g = calloc(3 * (size_t)runs, sizeof *g); /* (op, run) GB/s */
    int ok = 0;
    if (!ws || !g) {
        fprintf(stderr, "attn bench: out of memory\n");
        goto out;
    }
    fprintf(stderr, "[%s t=%d] bandwidth 3 x 256 MB x %d runs:", o->shape, t, runs);
    for (int op = OP_INIT; op >= 0; op--) /* first touch, then a warm-up of each */
        if (stream_op(&job, ws, op) < 0)
            goto nothreads;
    for (int run = 0; run < runs; run++)
        for (int op = 0; op < 3; op++) {
            double dt = stream_op(&job, ws, op);
            if (dt < 0)
                goto nothreads;
            g[op * runs + run] = op_bytes[op] * BW_FLOATS / dt / 1e9;
        }
    volatile float sink = job.a[BW_FLOATS / 2] + ws[0].sum; /* the results are used */
    (void)sink;
    json_head("bandwidth", o->shape, t);
    printf(",\"array_mb\":%zu", BW_FLOATS * sizeof(float) >> 20);
    for (int op = 0; op < 3; op++) {
        char key[32];
        r->gbs[op] = best(g + op * runs, runs);
        snprintf(key, sizeof key, "%s_gbs", op_names[op]);
        json_kv(key, r->gbs[op], 3);
        snprintf(key, sizeof key, "%s_gbs_median", op_names[op]);
        json_kv(key, attn_median(g + op * runs, runs), 3);
    }
    json_end();
    fprintf(stderr, " read %.1f, copy %.1f, triad %.1f GB/s (best)\n", r->gbs[0], r->gbs[1],
            r->gbs[2]);
    ok = 1;
    goto out;
nothreads:
    fprintf(stderr, "\nattn bench: cannot start %d threads\n", t);
out:
    free(ws);
    free(g);
    return ok ? 0 : -1;
}

static void print_roofline(const bench_ctx *c, const bench_result *r)
{
    double bpt = weight_bytes_per_token(&c->m->cfg);
    double triad_tps = r->gbs[OP_TRIAD] * 1e9 / bpt, read_tps = r->gbs[OP_READ] * 1e9 / bpt;
    double dec = r->decode_tps > 0 ? r->decode_tps : NAN;
    json_head("roofline", c->o->shape, c->t);
    printf(",\"bytes_per_token\":%.0f", bpt);
    json_kv("tokens_per_s", triad_tps, 2);
    json_kv("decode_fraction_of_roofline", dec / triad_tps, 3);
    json_kv("read_tokens_per_s", read_tps, 2);
    json_kv("decode_fraction_of_read_roofline", dec / read_tps, 3);
    json_end();
}

/* ---- the matrix-vector kernel against sgemm --------------------------------- */

typedef void (*matmul_fn)(tfm__pool *, float *, const float *, const float *, int, int, int);

static double kernel_run(matmul_fn fn, tfm__pool *pool, const kernel_matrix *km, int B, int reps,
                         const float *w, const float *x, float *y)
{
    size_t stride = (size_t)km->n * km->d;
    double t0 = tfm_now();
    for (int i = 0; i < reps; i++)
        fn(pool, y, x, w + (size_t)(i % km->copies) * stride, B, km->d, km->n);
    return tfm_now() - t0;
}

static int bench_kernel(bench_ctx *c, const float *w, const float *x, float *y, bench_result *r)
{
    static const matmul_fn fns[2] = {tfm__matmul_kernel, tfm__matmul_sgemm};
    static const char *const names[2] = {"kernel", "sgemm"};
    const bench_opts *o = c->o;
    tfm__pool *pool = tfm__pool_create(c->t);
    if (!pool) {
        fprintf(stderr, "attn bench: cannot create a pool of %d threads\n", c->t);
        return -1;
    }
    for (int k = 0; k < N_KMATS; k++) {
        const kernel_matrix *km = &kmats[k];
        double mat_bytes = (double)km->n * km->d * sizeof(float);
        int reps = (int)ceil(KERNEL_RUN_BYTES / mat_bytes);
        reps = (reps + km->copies - 1) / km->copies * km->copies;
        for (int bi = 0; bi < N_KBATCHES; bi++) {
            int B = kernel_batches[bi];
            double gbs[2];
            json_head("kernel", o->shape, c->t);
            printf(",\"matrix\":\"%s\",\"rows\":%d,\"cols\":%d,\"copies\":%d,\"batch\":%d",
                   km->name, km->n, km->d, km->copies, B);
            for (int f = 0; f < 2; f++) {
                char key[32];
                kernel_run(fns[f], pool, km, B, reps, w, x, y); /* warm-up */
                for (int run = 0; run < o->runs; run++)
                    c->vals[run] =
                        reps * mat_bytes / kernel_run(fns[f], pool, km, B, reps, w, x, y) / 1e9;
                gbs[f] = attn_median(c->vals, o->runs);
                snprintf(key, sizeof key, "%s_gbs", names[f]);
                json_kv(key, gbs[f], 3);
                snprintf(key, sizeof key, "%s_gflops", names[f]); /* 2 flops per 4 bytes per row */
                json_kv(key, gbs[f] / 2.0 * B, 2);
            }
            json_kv("kernel_over_sgemm", gbs[0] / gbs[1], 3);
            json_end();
            if (bi == 0) {
                r->kernel_gbs[k] = gbs[0];
                r->sgemm_gbs[k] = gbs[1];
            }
            fprintf(stderr, "[%s t=%d] matmul %s B=%d: kernel %.1f GB/s, sgemm %.1f GB/s\n",
                    o->shape, c->t, km->name, B, gbs[0], gbs[1]);
        }
    }
    tfm__pool_destroy(pool);
    return 0;
}

/* ---- summary ---------------------------------------------------------------- */

static void cell(double v, int width, int prec, const char *unit)
{
    if (v > 0 && isfinite(v))
        fprintf(stderr, " %*.*f%s", width - (int)strlen(unit), prec, v, unit);
    else
        fprintf(stderr, " %*s", width, "-");
}

static void print_summary(const bench_opts *o, const tfm_model *m, const bench_result *res, int n)
{
    double bpt = weight_bytes_per_token(&m->cfg);
    fprintf(stderr, "\n%s: %.1fM params, %.1f MB of weights read per decoded token\n", o->shape,
            tfm_config_n_params(&m->cfg) / 1e6, bpt / 1e6);
    fprintf(stderr, "%7s %8s %6s %8s %8s %8s %8s %7s %6s %6s %8s %6s %6s\n", "threads", "decode",
            "ms/tok", "batch4", "batch8", "prefill", "tok-by-", "prefill", "read", "triad",
            "roofline", "of", "of");
    fprintf(stderr, "%7s %8s %6s %8s %8s %8s %8s %7s %6s %6s %8s %6s %6s\n", "", "tok/s", "",
            "tok/s", "tok/s", "tok/s", "tok tok/s", "speedup", "GB/s", "GB/s", "tok/s", "roof",
            "read");
    for (int i = 0; i < n; i++) {
        const bench_result *r = &res[i];
        double dec = r->decode_tps;
        double roof = r->gbs[OP_TRIAD] * 1e9 / bpt, read_roof = r->gbs[OP_READ] * 1e9 / bpt;
        fprintf(stderr, "%7d", r->threads);
        cell(dec, 8, 1, "");
        cell(dec > 0 ? 1e3 / dec : 0, 6, 2, "");
        cell(r->batch_tps[0], 8, 1, "");
        cell(r->batch_tps[1], 8, 1, "");
        cell(r->prefill_tps, 8, 1, "");
        cell(r->tbt_tps, 8, 1, "");
        cell(r->tbt_tps > 0 ? r->prefill_tps / r->tbt_tps : 0, 7, 1, "x");
        cell(r->gbs[OP_READ], 6, 1, "");
        cell(r->gbs[OP_TRIAD], 6, 1, "");
        cell(roof, 8, 1, "");
        cell(roof > 0 ? 100 * dec / roof : 0, 6, 0, "%");
        cell(read_roof > 0 ? 100 * dec / read_roof : 0, 6, 0, "%");
        fputc('\n', stderr);
    }
    if (!(o->only & SEL_KERNEL))
        return;
    fprintf(stderr, "matrix-vector (B=1), GB/s of weights, kernel / sgemm:\n");
    for (int i = 0; i < n; i++) {
        fprintf(stderr, "%7d", res[i].threads);
        for (int k = 0; k < N_KMATS; k++)
            fprintf(stderr, "   %s %.1f / %.1f", kmats[k].name, res[i].kernel_gbs[k],
                    res[i].sgemm_gbs[k]);
        fputc('\n', stderr);
    }
}

/* ---- main ------------------------------------------------------------------- */

static int bench_threads(bench_ctx *c, float *bw, const float *kw, const float *kx, float *ky,
                         bench_result *r)
{
    const bench_opts *o = c->o;
    int rows = o->prompt_tokens > MAX_BATCH ? o->prompt_tokens : MAX_BATCH;
    /* the workspace first: it also sets OpenBLAS to one thread */
    tfm_status rc = tfm_workspace_create(c->m, rows, c->t, &c->ws);
    if (rc != TFM_OK)
        return fail_status("workspace", rc);
    int err = 0;
    if (!err && (o->only & SEL_BANDWIDTH))
        err = bench_bandwidth(c, bw, r);
    if (!err && (o->only & SEL_KERNEL))
        err = bench_kernel(c, kw, kx, ky, r);
    if (!err && (o->only & SEL_DECODE))
        err = bench_decode(c, r);
    if (!err && (o->only & SEL_BANDWIDTH))
        print_roofline(c, r);
    if (!err && (o->only & SEL_BATCH))
        err = bench_batch(c, r);
    if (!err && (o->only & SEL_PREFILL))
        err = bench_prefill(c, r);
    tfm_workspace_destroy(c->ws);
    c->ws = NULL;
    return err;
}

/* The largest matrix set, input and output of the kernel section. */
static void kernel_sizes(size_t *nw, size_t *nx, size_t *ny)
{
    *nw = *nx = *ny = 0;
    for (int k = 0; k < N_KMATS; k++) {
        size_t w = (size_t)kmats[k].n * kmats[k].d * kmats[k].copies;
        *nw = w > *nw ? w : *nw;
        *nx = (size_t)kmats[k].d > *nx ? (size_t)kmats[k].d : *nx;
        *ny = (size_t)kmats[k].n > *ny ? (size_t)kmats[k].n : *ny;
    }
    *nx *= KERNEL_MAX_B;
    *ny *= KERNEL_MAX_B;
}

int attn_bench_main(int argc, char **argv)
{
    bench_opts o;
    char err[256] = "";
    int exit_code = attn_parse_outcome(parse_args(argc, argv, &o, err, sizeof err), "bench", err,
                                       usage);
    if (exit_code >= 0)
        return exit_code;

    int ret = 1;
    tfm_model *m = NULL;
    bench_ctx c = {.o = &o};
    bench_result res[MAX_THREAD_COUNTS] = {{0}};
    float *bw = NULL, *kw = NULL, *kx = NULL, *ky = NULL;
    tfm_status rc;
    if (o.model_path) {
        fprintf(stderr, "attn bench: loading %s\n", o.model_path);
        rc = tfm_checkpoint_load(o.model_path, TFM_CKPT_AUTO, &m, err, sizeof err);
    } else {
        fprintf(stderr, "attn bench: random %s model\n", o.shape);
        rc = tfm_model_create(&o.cfg, &m, err, sizeof err);
        if (rc == TFM_OK)
            tfm_model_init_random(m, 1);
    }
    if (rc != TFM_OK) {
        fprintf(stderr, "attn bench: %s: %s\n", o.model_path ? o.model_path : o.shape,
                err[0] ? err : tfm_strerror(rc));
        goto done;
    }
    const tfm_config *cfg = &m->cfg;
    if (o.decode_tokens > cfg->seq_len || o.prompt_tokens > cfg->seq_len) {
        fprintf(stderr, "attn bench: --decode-tokens and --prompt-tokens are at most seq_len (%d)\n",
                cfg->seq_len);
        usage(stderr);
        ret = 2;
        goto done;
    }

    /* everything the timed loops touch */
    c.m = m;
    int max_seq = o.decode_tokens > o.prompt_tokens ? o.decode_tokens : o.prompt_tokens;
    for (int i = 0; i < MAX_BATCH; i++)
        if ((rc = tfm_state_create(m, max_seq, &c.st[i])) != TFM_OK) {
            fail_status("state", rc);
            goto done;
        }
    c.logits = malloc((size_t)MAX_BATCH * cfg->vocab_size * sizeof(float));
    c.prompt = malloc((size_t)o.prompt_tokens * sizeof(int));
    c.vals = malloc(2 * (size_t)(o.runs < 3 ? 3 : o.runs) * sizeof(double));
    if (!c.logits || !c.prompt || !c.vals)
        goto nomem;
    uint64_t rng = 0x9E3779B97F4A7C15ull; /* xorshift64: the same prompt every time */
    c.prompt[0] = BOS % cfg->vocab_size;
    for (int i = 1; i < o.prompt_tokens; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        c.prompt[i] = (int)(rng % (uint64_t)cfg->vocab_size);
    }
    /* 768 MB, first touched by the threads that use it */
    if ((o.only & SEL_BANDWIDTH) && !(bw = tfm__alloc(3 * BW_FLOATS * sizeof(float))))
        goto nomem;
    if (o.only & SEL_KERNEL) {
        size_t nw, nx, ny;
        kernel_sizes(&nw, &nx, &ny);
        kw = tfm__alloc(nw * sizeof(float));
        kx = tfm__alloc(nx * sizeof(float));
        ky = tfm__alloc(ny * sizeof(float));
        if (!kw || !kx || !ky)
            goto nomem;
        for (size_t i = 0; i < nw; i++)
            kw[i] = (float)((int)(i % 17) - 8) * 0.01f;
        for (size_t i = 0; i < nx; i++)
            kx[i] = (float)((int)(i % 5) - 2) * 0.1f;
    }

    printf("{\"bench\":\"config\",\"shape\":");
    json_str(o.shape);
    printf(",\"dim\":%d,\"hidden_dim\":%d,\"n_layers\":%d,\"n_heads\":%d,\"n_kv_heads\":%d,"
           "\"vocab_size\":%d,\"seq_len\":%d,\"shared_classifier\":%d,\"params\":%zu,"
           "\"runs\":%d,\"decode_tokens\":%d,\"prompt_tokens\":%d,\"threads\":[",
           cfg->dim, cfg->hidden_dim, cfg->n_layers, cfg->n_heads, cfg->n_kv_heads,
           cfg->vocab_size, cfg->seq_len, cfg->shared_classifier, tfm_config_n_params(cfg), o.runs,
           o.decode_tokens, o.prompt_tokens);
    for (int i = 0; i < o.n_threads; i++)
        printf("%s%d", i ? "," : "", o.threads[i]);
    putchar(']');
    json_end();

    for (int i = 0; i < o.n_threads; i++) {
        c.t = res[i].threads = o.threads[i];
        if (bench_threads(&c, bw, kw, kx, ky, &res[i]))
            goto done;
    }
    print_summary(&o, m, res, o.n_threads);
    ret = 0;
    goto done;
nomem:
    fprintf(stderr, "attn bench: out of memory\n");
done:
    tfm__free(bw);
    tfm__free(kw);
    tfm__free(kx);
    tfm__free(ky);
    free(c.logits);
    free(c.prompt);
    free(c.vals);
    for (int i = 0; i < MAX_BATCH; i++)
        tfm_state_destroy(c.st[i]);
    tfm_model_destroy(m);
    return ret;
}
