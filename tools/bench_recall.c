/*
 * bench_recall.c — `attn bench-recall`: what answering a key-value lookup
 * with attention costs, against the number of pairs, beside the floor a
 * plain hash map sets for the same lookups.
 *
 * For each number of pairs n (64, 128, ... --max-pairs) and each query count
 * q (1 and 64 by default):
 *   attention  tfm_recall_exact (include/tfm/recall.h, the lecture's
 *              one-layer construction, tiled, exact) on n pairs of random
 *              distinct integer keys and values, q queries of which half
 *              are keys and half are not: the median over --runs timed
 *              runs of the wall time per call (a run repeats the call
 *              until it has taken >= 1 ms, so small stores are not lost in
 *              the clock's noise), after a warm-up;
 *   hash       an open-addressing table (linear probing, power-of-two
 *              capacity >= 2n) doing the same work: clear, insert the n
 *              pairs in order (a repeated key overwrites), look the q
 *              queries up.  It is too quick for one clock reading, so a
 *              timed run repeats it until it has taken >= 200 µs and
 *              reports the time per repetition;
 *   ratio      attention time / hash time.
 * Then per q the log-log exponent of attention time against n: the least-
 * squares slope over every size, and the slope between the last two sizes
 * (the asymptote, where fixed costs no longer blur it).  The construction
 * does O(q n (Dk + Dv)) multiply-adds with Dk = Dv = n distinct symbols,
 * plus O(n (Dk + Dv)) to lay out the one-hot key and value tiles for each
 * block of 64 queries: about 2 either way, the lecture's quadratic cost;
 * the hash map's is about 1.
 *
 * Output: one JSON object per line on stdout,
 *   {"bench":"recall","pairs":N,"queries":Q,"median_ms":...,"hash_median_us":...,"ratio":...}
 *   {"bench":"recall_exponent","queries":Q,"exponent":...,"exponent_last_two":...}
 * and a table on stderr.  Every configuration's answers are first checked
 * against the hash map; a mismatch fails the run (exit 1).
 *
 * Design notes: keys are a bijection of their index (an odd multiplier and
 * xor-shifts are invertible on 32 bits), so they are distinct without a
 * check, and absent queries are the images of indices >= n.  Everything a
 * timed call touches is allocated beforehand except the core's own scratch,
 * which it allocates per call by design (and which is thus part of its
 * time); the hash map's table is allocated once and cleared per run.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "tfm/profile.h"
#include "tfm/recall.h"

#define MAX_SIZES 16
#define MAX_QCOUNTS 8
#define HASH_MIN_RUN_S 200e-6 /* a timed hash run repeats the work at least this long */
#define ATTN_MIN_RUN_S 1e-3   /* and an attention run (small stores take microseconds) */
#define WARM_S 0.3            /* busy before the first figure: clocks up, pages mapped */
#define EMPTY_KEY 0xFFFFFFFFu /* never a key: keys are images of indices < 2^31 */

typedef struct {
    int runs, min_pairs, max_pairs;
    int qcounts[MAX_QCOUNTS], n_qcounts;
    uint32_t seed;
} recall_opts;

typedef struct {
    int pairs, queries;
    double median_ms, hash_median_us, ratio;
    double attention_ms, gflops;
    size_t peak_bytes;
} recall_row;

/* ---- arguments ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fputs("usage: attn bench-recall [--runs N] [--min-pairs N] [--max-pairs N]\n"
          "                         [--queries LIST] [--seed S]\n"
          "  --runs N         timed runs per figure, median reported (default 5, at least 5)\n"
          "  --min-pairs N    smallest store (default 64); sizes double from it\n"
          "  --max-pairs N    largest store (default 4096, at most 32768)\n"
          "  --queries LIST   query counts, comma-separated (default 1,64)\n"
          "  --seed S         keys, values and queries (default 1)\n"
          "JSON lines on stdout; a table on stderr.\n",
          f);
}


static int parse_qcounts(const char *s, recall_opts *o)
{
    o->n_qcounts = 0;
    for (const char *p = s;; p++) {
        size_t len = strcspn(p, ",");
        long v;
        if (o->n_qcounts == MAX_QCOUNTS ||
            attn_parse_long(p, (int)len, 1, TFM_RECALL_MAX_QUERIES, &v))
            return -1;
        o->qcounts[o->n_qcounts++] = (int)v;
        p += len;
        if (!*p)
            return 0;
    }
}

/* 0 ok, 1 help wanted, -1 error (message in err).  "--name VALUE" or
 * "--name=VALUE". */
static int parse_args(int argc, char **argv, recall_opts *o, char *err, size_t errlen)
{
    *o = (recall_opts){.runs = 5, .min_pairs = 64, .max_pairs = 4096, .qcounts = {1, 64},
                       .n_qcounts = 2, .seed = 1};
    long seed = 1;
    const struct {
        const char *name;
        int *dst;
        long *ldst, lo, hi;
    } ints[] = {{"--runs", &o->runs, NULL, 5, 10000},
                {"--min-pairs", &o->min_pairs, NULL, 1, TFM_RECALL_MAX_PAIRS},
                {"--max-pairs", &o->max_pairs, NULL, 1, TFM_RECALL_MAX_PAIRS},
                {"--seed", NULL, &seed, 0, 0x7FFFFFFF}};
    const int n_ints = (int)(sizeof ints / sizeof ints[0]);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return 1;
        size_t len = strcspn(a, "=");
        if (a[len] == '=')
            v = a + len + 1;
        else if (i + 1 < argc)
            v = argv[i + 1];
        int k = 0, bad;
        while (k < n_ints && (strlen(ints[k].name) != len || strncmp(a, ints[k].name, len)))
            k++;
        if (k < n_ints) {
            long x = 0;
            bad = !v || attn_parse_long(v, -1, ints[k].lo, ints[k].hi, &x);
            if (!bad && ints[k].dst)
                *ints[k].dst = (int)x;
            else if (!bad)
                *ints[k].ldst = x;
        } else if (len == 9 && !strncmp(a, "--queries", len)) {
            bad = !v || parse_qcounts(v, o);
        } else {
            snprintf(err, errlen, "unknown argument '%s'", a);
            return -1;
        }
        if (bad) {
            snprintf(err, errlen, "bad or missing value for %.*s", (int)len, a);
            return -1;
        }
        if (a[len] != '=')
            i++; /* the value was the next argument */
    }
    o->seed = (uint32_t)seed;
    if (o->min_pairs > o->max_pairs) {
        snprintf(err, errlen, "--min-pairs is above --max-pairs");
        return -1;
    }
    return 0;
}

/* ---- data ----------------------------------------------------------------- */

/* A bijection of 32-bit words (each step is invertible): distinct inputs,
 * distinct outputs. */
static uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

/* Symbol i of a store under a salt < 2^30: distinct for distinct i < 2^30
 * (mix32 is a bijection and i + salt stays below 2^31), and never
 * EMPTY_KEY, whose one preimage, if it is reached, is traded for the image
 * of 2^31, an input no symbol uses. */
static uint32_t key_of(uint32_t i, uint32_t salt)
{
    uint32_t k = mix32((i + salt) & 0x7FFFFFFFu);
    return k == EMPTY_KEY ? mix32(0x80000000u) : k;
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* n pairs with distinct keys and distinct values; q queries, even ones
 * present (a random key), odd ones absent (a key of an index >= n). */
static void make_request(int n, int q, uint32_t seed, uint32_t *keys, uint32_t *vals,
                         uint32_t *qs)
{
    uint32_t salt = seed * 0x9E3779B1u & 0x3FFFFFFFu;
    for (int i = 0; i < n; i++) {
        keys[i] = key_of((uint32_t)i, salt);
        vals[i] = key_of((uint32_t)i, salt ^ 0x15555555u); /* distinct too */
    }
    uint64_t s = 0x9E3779B97F4A7C15ull ^ seed;
    for (int i = 0; i < q; i++) {
        uint32_t r = (uint32_t)(rng_next(&s) >> 33);
        qs[i] = i % 2 == 0 ? keys[r % (uint32_t)n] : key_of((uint32_t)n + r % 1000000u, salt);
    }
}

/* ---- the floor: open addressing, linear probing ------------------------------- */

typedef struct {
    uint32_t key, value;
} hslot;

typedef struct {
    hslot *slots; /* (cap) */
    uint32_t mask; /* cap - 1 */
} hmap;

static uint32_t hash32(uint32_t k) { return (k * 0x9E3779B1u) ^ (k >> 15); }

/* Clear, insert n pairs (later ones overwrite), look q queries up: found
 * values, or EMPTY_KEY, into out; returns a checksum. */
static uint32_t hash_run(hmap *h, const uint32_t *keys, const uint32_t *vals, int n,
                         const uint32_t *qs, int q, uint32_t *out)
{
    memset(h->slots, 0xFF, ((size_t)h->mask + 1) * sizeof *h->slots);
    for (int i = 0; i < n; i++) {
        uint32_t j = hash32(keys[i]) & h->mask;
        while (h->slots[j].key != EMPTY_KEY && h->slots[j].key != keys[i])
            j = (j + 1) & h->mask;
        h->slots[j].key = keys[i];
        h->slots[j].value = vals[i];
    }
    uint32_t sum = 0;
    for (int i = 0; i < q; i++) {
        uint32_t j = hash32(qs[i]) & h->mask, v = EMPTY_KEY;
        for (; h->slots[j].key != EMPTY_KEY; j = (j + 1) & h->mask)
            if (h->slots[j].key == qs[i]) {
                v = h->slots[j].value;
                break;
            }
        out[i] = v;
        sum = sum * 31u + v;
    }
    return sum;
}

/* ---- helpers -------------------------------------------------------------- */

static void json_num(const char *key, double v, int prec)
{
    printf(",\"%s\":", key);
    if (isfinite(v))
        printf("%.*f", prec, v);
    else
        fputs("null", stdout);
}

/* ---- one configuration ------------------------------------------------------ */

typedef struct {
    const recall_opts *o;
    uint32_t *keys, *vals, *qs, *hash_out; /* (max_pairs), (max_pairs), (max q) x2 */
    tfm_recall_answer *ans;                /* (max q) */
    double *times;                         /* (runs) */
    hmap h;
} bench_ctx;

static int bench_one(bench_ctx *c, int n, int q, recall_row *row)
{
    const recall_opts *o = c->o;
    make_request(n, q, o->seed, c->keys, c->vals, c->qs);
    tfm_recall_request rq = {n, c->keys, c->vals, q, c->qs};
    tfm_recall_stats st;

    /* warm-up, and the check against the floor */
    tfm_status rc = tfm_recall_exact(&rq, c->ans, &st, NULL);
    if (rc != TFM_OK) {
        fprintf(stderr, "attn bench-recall: %d pairs, %d queries: %s\n", n, q, tfm_strerror(rc));
        return -1;
    }
    hash_run(&c->h, c->keys, c->vals, n, c->qs, q, c->hash_out);
    for (int i = 0; i < q; i++) {
        int found = c->hash_out[i] != EMPTY_KEY;
        if (c->ans[i].found != found || (found && c->ans[i].value != c->hash_out[i])) {
            fprintf(stderr, "attn bench-recall: %d pairs, %d queries: answer %d differs from the "
                            "hash map (found %d value %u, want %d %u)\n",
                    n, q, i, c->ans[i].found, c->ans[i].value, found, c->hash_out[i]);
            return -1;
        }
    }

    double attn = 0;
    long calls = 0;
    for (int r = 0; r < o->runs; r++) {
        long reps = 0;
        double t0 = tfm_now(), dt;
        do {
            rc = tfm_recall_exact(&rq, c->ans, &st, NULL);
            if (rc != TFM_OK) {
                fprintf(stderr, "attn bench-recall: %s\n", tfm_strerror(rc));
                return -1;
            }
            attn += st.attention_seconds;
            reps++;
        } while ((dt = tfm_now() - t0) < ATTN_MIN_RUN_S);
        c->times[r] = dt / (double)reps;
        calls += reps;
    }
    row->median_ms = attn_median(c->times, o->runs) * 1e3;
    row->attention_ms = attn / (double)calls * 1e3;
    row->gflops = st.flops / (row->median_ms * 1e-3) * 1e-9;
    row->peak_bytes = st.peak_scratch_bytes;

    volatile uint32_t sink = 0;
    for (int r = 0; r < o->runs; r++) {
        long reps = 0;
        double t0 = tfm_now(), dt;
        do {
            sink += hash_run(&c->h, c->keys, c->vals, n, c->qs, q, c->hash_out);
            reps++;
        } while ((dt = tfm_now() - t0) < HASH_MIN_RUN_S);
        c->times[r] = dt / (double)reps;
    }
    (void)sink;
    row->hash_median_us = attn_median(c->times, o->runs) * 1e6;
    row->ratio = row->median_ms * 1e3 / row->hash_median_us;
    row->pairs = n;
    row->queries = q;

    printf("{\"bench\":\"recall\",\"pairs\":%d,\"queries\":%d", n, q);
    json_num("median_ms", row->median_ms, 4);
    json_num("hash_median_us", row->hash_median_us, 4);
    json_num("ratio", row->ratio, 1);
    json_num("attention_ms", row->attention_ms, 4);
    json_num("gflops", row->gflops, 2);
    printf(",\"peak_scratch_bytes\":%zu,\"runs\":%d}\n", row->peak_bytes, o->runs);
    fflush(stdout);
    return 0;
}

int attn_bench_recall_main(int argc, char **argv)
{
    recall_opts o;
    char err[256] = "";
    int rc = attn_parse_outcome(parse_args(argc, argv, &o, err, sizeof err), "bench-recall", err, usage);
    if (rc >= 0)
        return rc;

    int sizes[MAX_SIZES], n_sizes = 0, max_q = 0;
    for (long n = o.min_pairs; n <= o.max_pairs && n_sizes < MAX_SIZES; n *= 2)
        sizes[n_sizes++] = (int)n;
    for (int i = 0; i < o.n_qcounts; i++)
        max_q = o.qcounts[i] > max_q ? o.qcounts[i] : max_q;

    int ret = 1;
    size_t cap = 2;
    while (cap < 2 * (size_t)o.max_pairs)
        cap *= 2;
    bench_ctx c = {.o = &o};
    recall_row *rows = calloc((size_t)n_sizes * o.n_qcounts, sizeof *rows);
    c.keys = malloc((size_t)o.max_pairs * sizeof *c.keys);
    c.vals = malloc((size_t)o.max_pairs * sizeof *c.vals);
    c.qs = malloc((size_t)max_q * sizeof *c.qs);
    c.hash_out = malloc((size_t)max_q * sizeof *c.hash_out);
    c.ans = malloc((size_t)max_q * sizeof *c.ans);
    c.times = malloc((size_t)o.runs * sizeof *c.times);
    c.h.slots = malloc(cap * sizeof *c.h.slots);
    if (!rows || !c.keys || !c.vals || !c.qs || !c.hash_out || !c.ans || !c.times || !c.h.slots) {
        fprintf(stderr, "attn bench-recall: out of memory\n");
        goto done;
    }

    fprintf(stderr, "attn bench-recall: tfm_recall_exact against a hash map, median of %d runs\n",
            o.runs);
    { /* warm up: the first figure should not pay for clock ramp-up and first faults */
        int n = o.max_pairs < 512 ? o.max_pairs : 512, q = max_q < 64 ? max_q : 64;
        make_request(n, q, o.seed, c.keys, c.vals, c.qs);
        tfm_recall_request rq = {n, c.keys, c.vals, q, c.qs};
        for (double t0 = tfm_now(); tfm_now() - t0 < WARM_S;)
            if (tfm_recall_exact(&rq, c.ans, NULL, NULL) != TFM_OK)
                break;
    }
    for (int qi = 0; qi < o.n_qcounts; qi++)
        for (int si = 0; si < n_sizes; si++) {
            size_t hc = 2;
            while (hc < 2 * (size_t)sizes[si])
                hc *= 2;
            c.h.mask = (uint32_t)(hc - 1);
            fprintf(stderr, "  %5d pairs, %3d queries ...", sizes[si], o.qcounts[qi]);
            recall_row *row = &rows[qi * n_sizes + si];
            if (bench_one(&c, sizes[si], o.qcounts[qi], row))
                goto done;
            fprintf(stderr, " %.3f ms\n", row->median_ms);
        }

    /* the exponents, and the table */
    fprintf(stderr, "\n  pairs  queries  attention ms    hash us      ratio   GFLOP/s  scratch KiB\n");
    for (int qi = 0; qi < o.n_qcounts; qi++) {
        double x[MAX_SIZES], y[MAX_SIZES], yh[MAX_SIZES];
        for (int si = 0; si < n_sizes; si++) {
            const recall_row *r = &rows[qi * n_sizes + si];
            x[si] = r->pairs;
            y[si] = r->median_ms;
            yh[si] = r->hash_median_us;
            fprintf(stderr, "  %5d  %7d  %12.3f  %9.3f  %8.0fx  %8.2f  %11.1f\n", r->pairs, r->queries,
                    r->median_ms, r->hash_median_us, r->ratio, r->gflops, r->peak_bytes / 1024.0);
        }
        double fit = n_sizes >= 2 ? attn_loglog_slope(x, y, n_sizes) : NAN;
        double last = n_sizes >= 2 ? attn_loglog_slope(x + n_sizes - 2, y + n_sizes - 2, 2) : NAN;
        double hfit = n_sizes >= 2 ? attn_loglog_slope(x, yh, n_sizes) : NAN;
        double hlast = n_sizes >= 2 ? attn_loglog_slope(x + n_sizes - 2, yh + n_sizes - 2, 2) : NAN;
        printf("{\"bench\":\"recall_exponent\",\"queries\":%d,\"min_pairs\":%d,\"max_pairs\":%d",
               o.qcounts[qi], sizes[0], sizes[n_sizes - 1]);
        json_num("exponent", fit, 3);
        json_num("exponent_last_two", last, 3);
        json_num("hash_exponent", hfit, 3);
        json_num("hash_exponent_last_two", hlast, 3);
        puts("}");
        fflush(stdout);
        fprintf(stderr, "  exponent (time ~ pairs^k), %d queries: k = %.2f over %d..%d, %.2f over the "
                        "last two sizes; hash map %.2f, %.2f\n\n",
                o.qcounts[qi], fit, sizes[0], sizes[n_sizes - 1], last, hfit, hlast);
    }
    ret = 0;
done:
    free(rows);
    free(c.keys);
    free(c.vals);
    free(c.qs);
    free(c.hash_out);
    free(c.ans);
    free(c.times);
    free(c.h.slots);
    return ret;
}
