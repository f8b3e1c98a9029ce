/*
 * cost.c — `attn cost`: what attention costs against the context length.
 *
 *   attn cost [--out DIR (build/cost)] [--min 128] [--max 8192] [--runs 3]
 *             [--threads 1]
 *
 * A random model of the 15M shape (dim 288, hidden 768, 6 layers, 6 heads,
 * 6 kv heads, vocab 32000) with seq_len = max, a workspace of 256 rows (the
 * server's prefill chunk) and one state.  For N = min, 2 min, ... <= max and
 * each kernel (naive, tiled): N pseudo-random tokens prefilled in chunks of
 * 256 through tfm_prefill, --runs times after one warm-up; per run the
 * workspace profile is reset, so each figure is one prompt's:
 *   prefill_s    wall time of the whole prefill (the last chunk with logits,
 *                as the server does);
 *   attention_s  the profile's prefill attention seconds, all buckets (the
 *                QK^T, softmax and PV of every chunk and layer);
 *   peak_bytes   the profile's peak attention scratch (one layer of one
 *                chunk, times the threads running it);
 *   flops_* / seconds_*  the profile's prefill op-class split.
 * Each is the median over the runs, taken separately.  Then, for the naive
 * kernel at the largest N, what one chunk of N rows would need (N*N floats
 * of scores per thread); it is run once, cold, when that is at most 1 GiB.
 *
 * Writes DIR/cost.csv and DIR/cost.md (tables, fitted exponents, tiled/naive
 * ratios, the op-class split beside Ivanov et al.'s).  The plot (cost.png)
 * is drawn from cost.csv by scripts/cost-report.sh with gnuplot.
 * Returns 0, 1 on failure, 2 on bad arguments.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "attn.h"
#include "tfm/model.h"
#include "tfm/profile.h"

#define CHUNK 256
#define MAX_RUNS 100
#define MAX_SIZES 32
#define N_KERNELS 2
#define ONE_CHUNK_LIMIT ((double)(1u << 30)) /* 1 GiB of scores: not run beyond */

static const tfm_attn_kernel KERNELS[N_KERNELS] = {TFM_ATTN_NAIVE, TFM_ATTN_TILED};

/* Ivanov et al., "Data movement is all you need": BERT encoder layer,
 * share of FLOPs and of runtime, percent, by class. */
static const double LECTURE_FLOPS[TFM_CLASS_COUNT] = {99.8, 0.17, 0.03};
static const double LECTURE_TIME[TFM_CLASS_COUNT] = {61.0, 25.5, 13.5};
static const char *const CLASS_LABEL[TFM_CLASS_COUNT] = {"tensor contraction", "normalization",
                                                         "element-wise"};

typedef struct cost_row {
    int n;
    double prefill_s, attn_s, peak;
    double flops[TFM_CLASS_COUNT], secs[TFM_CLASS_COUNT];
} cost_row;

static void cost_usage(FILE *f)
{
    fprintf(f, "usage: attn cost [--out DIR (build/cost)] [--min 128] [--max 8192] [--runs 3]\n"
               "                 [--threads 1]\n"
               "  prefill attention time and memory against N = min, 2 min, ... max for the\n"
               "  naive and tiled kernels on a random 15M-shape model; writes DIR/cost.csv\n"
               "  and DIR/cost.md (scripts/cost-report.sh plots cost.png).\n");
}

static int cost_bad(const char *msg, const char *arg)
{
    fprintf(stderr, "attn cost: %s%s%s\n\n", msg, arg ? ": " : "", arg ? arg : "");
    cost_usage(stderr);
    return 2;
}

static int mkdir_p(const char *path)
{
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static double attn_prefill_seconds(const tfm_profile *p)
{
    double s = 0;
    for (int b = 0; b < TFM_CTX_BUCKETS; b++)
        s += p->attn_seconds[TFM_PHASE_PREFILL][b];
    return s;
}

/* One prompt of n tokens from position 0, in chunks of the workspace's
 * rows; the profile is reset first.  Returns the wall seconds, or -1. */
static double prefill_once(tfm_workspace *ws, tfm_state *st, const int *ids, int n,
                           float *logits)
{
    int rows = tfm_workspace_max_rows(ws);
    tfm_state_reset(st);
    tfm_profile_reset(tfm_workspace_profile(ws));
    double t0 = tfm_now();
    for (int off = 0; off < n; off += rows) {
        int len = n - off < rows ? n - off : rows;
        if (tfm_prefill(ws, st, ids + off, len, off + len == n ? logits : NULL) != TFM_OK)
            return -1;
    }
    return tfm_now() - t0;
}

static const char *fmt_bytes(double b, char *buf, size_t len)
{
    if (b >= 1024.0 * 1024 * 1024)
        snprintf(buf, len, "%.2f GiB", b / (1024.0 * 1024 * 1024));
    else if (b >= 1024.0 * 1024)
        snprintf(buf, len, "%.2f MiB", b / (1024.0 * 1024));
    else
        snprintf(buf, len, "%.1f KiB", b / 1024.0);
    return buf;
}

static const char *fmt_k(double k, char *buf, size_t len)
{
    if (isnan(k))
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%.2f", k);
    return buf;
}

static double pct(double part, const double *all)
{
    double s = 0;
    for (int c = 0; c < TFM_CLASS_COUNT; c++)
        s += all[c];
    return s > 0 ? 100.0 * part / s : NAN;
}

typedef struct one_chunk {
    int n, threads, ran;
    double bytes_per_thread, bytes, prefill_s, attn_s, peak;
    char why[128];
} one_chunk;

static void write_md(FILE *f, cost_row (*rows)[N_KERNELS], int n_sizes, int runs, int threads,
                     const tfm_profile *agg, const one_chunk *oc)
{
    char b1[32], b2[32], b3[32];
    double xs[MAX_SIZES], ys[MAX_SIZES];
    fprintf(f, "# Attention cost against context length\n\n");
    fprintf(f,
            "`attn cost`: a random model of the 15M shape (dim 288, hidden 768, 6 layers, "
            "6 heads, 6 kv heads, vocab 32000) with seq_len %d; prompts of N pseudo-random "
            "tokens prefilled in chunks of %d rows (the server's prefill chunk) on %d "
            "thread%s; each figure is the median of %d run%s after a warm-up.  Attention is "
            "the QK^T, softmax and PV of every chunk and layer, from the workspace profile; "
            "peak memory is the profile's largest attention scratch held at once (one layer "
            "of one chunk, all threads).\n\n",
            rows[n_sizes - 1][0].n, CHUNK, threads, threads > 1 ? "s" : "", runs,
            runs > 1 ? "s" : "");

    fprintf(f, "## Measurements\n\n");
    fprintf(f, "| N | naive prefill ms | naive attention ms | naive attention share "
               "| tiled prefill ms | tiled attention ms | tiled attention share "
               "| attention time tiled/naive | prefill time tiled/naive "
               "| naive peak | tiled peak | peak naive/tiled |\n");
    fprintf(f, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < n_sizes; i++) {
        const cost_row *nv = &rows[i][0], *tl = &rows[i][1];
        fprintf(f,
                "| %d | %.2f | %.2f | %.1f%% | %.2f | %.2f | %.1f%% | %.2f | %.2f | %s | %s "
                "| %.1fx |\n",
                nv->n, nv->prefill_s * 1e3, nv->attn_s * 1e3, 100 * nv->attn_s / nv->prefill_s,
                tl->prefill_s * 1e3, tl->attn_s * 1e3, 100 * tl->attn_s / tl->prefill_s,
                tl->attn_s / nv->attn_s, tl->prefill_s / nv->prefill_s,
                fmt_bytes(nv->peak, b1, sizeof b1), fmt_bytes(tl->peak, b2, sizeof b2),
                tl->peak > 0 ? nv->peak / tl->peak : NAN);
    }

    fprintf(f, "\n## Fitted exponent k of attention time ~ N^k\n\n");
    fprintf(f, "Least squares on log-log.  \"Within 1.8–2.2 from N\" is the smallest N "
               "such that the fit over [N', %d] is within 1.8–2.2 for every N' >= N "
               "(at least two points).  The last column is the server's gauge "
               "(`tfm_profile_cost_exponent`, mean attention seconds per prompt by length "
               "bucket) over the same timed prompts.\n\n",
            rows[n_sizes - 1][0].n);
    fprintf(f, "| kernel | all N | N >= 1024 | within 1.8–2.2 from N | server gauge |\n");
    fprintf(f, "|---|---:|---:|---:|---:|\n");
    double tail[N_KERNELS][MAX_SIZES];
    for (int k = 0; k < N_KERNELS; k++) {
        for (int i = 0; i < n_sizes; i++) {
            xs[i] = rows[i][k].n;
            ys[i] = rows[i][k].attn_s;
        }
        double all = attn_loglog_slope(xs, ys, n_sizes);
        int i1024 = 0;
        while (i1024 < n_sizes && rows[i1024][k].n < 1024)
            i1024++;
        double big = attn_loglog_slope(xs + i1024, ys + i1024, n_sizes - i1024);
        int from = -1;
        for (int i = n_sizes - 2; i >= 0; i--) {
            tail[k][i] = attn_loglog_slope(xs + i, ys + i, n_sizes - i);
            if (tail[k][i] >= 1.8 && tail[k][i] <= 2.2 && (from == i + 1 || i == n_sizes - 2))
                from = i;
        }
        tail[k][n_sizes - 1] = NAN;
        char fb[32];
        if (from >= 0)
            snprintf(fb, sizeof fb, "%d", rows[from][k].n);
        else
            snprintf(fb, sizeof fb, "never");
        fprintf(f, "| %s | %s | %s | %s | %s |\n", tfm_attn_kernel_name(KERNELS[k]),
                fmt_k(all, b1, sizeof b1), fmt_k(big, b2, sizeof b2), fb,
                fmt_k(tfm_profile_cost_exponent(&agg[k], 0), b3, sizeof b3));
    }
    fprintf(f, "\nThe fit over [N, %d] by its starting N:\n\n| from N |", rows[n_sizes - 1][0].n);
    for (int k = 0; k < N_KERNELS; k++)
        fprintf(f, " %s |", tfm_attn_kernel_name(KERNELS[k]));
    fprintf(f, "\n|---:|---:|---:|\n");
    for (int i = 0; i + 1 < n_sizes; i++) {
        fprintf(f, "| %d |", rows[i][0].n);
        for (int k = 0; k < N_KERNELS; k++)
            fprintf(f, " %s |", fmt_k(tail[k][i], b1, sizeof b1));
        fprintf(f, "\n");
    }

    fprintf(f, "\n## Peak attention memory\n\n");
    const cost_row *nl = &rows[n_sizes - 1][0], *tlast = &rows[n_sizes - 1][1];
    fprintf(f,
            "Prefill in %d-row chunks bounds the naive kernel's scores to %d x N floats per "
            "thread, linear in N; the tiled kernel holds one block of keys per query row, "
            "constant in N.  At N = %d: naive %s, tiled %s (%.0fx).\n\n",
            CHUNK, CHUNK, nl->n, fmt_bytes(nl->peak, b1, sizeof b1),
            fmt_bytes(tlast->peak, b2, sizeof b2), tlast->peak > 0 ? nl->peak / tlast->peak : NAN);
    fprintf(f,
            "One chunk of all N = %d rows (max_rows = N, as a server without chunking would) "
            "with the naive kernel needs N x N x 4 = %s of scores per thread, %s on %d "
            "thread%s",
            oc->n, fmt_bytes(oc->bytes_per_thread, b1, sizeof b1),
            fmt_bytes(oc->bytes, b2, sizeof b2), oc->threads, oc->threads > 1 ? "s" : "");
    if (oc->ran)
        fprintf(f,
                "; run once (cold): prefill %.2f ms, attention %.2f ms, measured peak %s "
                "(%.0fx the tiled kernel's).\n",
                oc->prefill_s * 1e3, oc->attn_s * 1e3, fmt_bytes(oc->peak, b3, sizeof b3),
                tlast->peak > 0 ? oc->peak / tlast->peak : NAN);
    else
        fprintf(f, "; not run (%s).\n", oc->why);

    fprintf(f, "\n## Op-class split of the whole prefill, beside the lecture's\n\n");
    fprintf(f, "Lecture: Ivanov et al., \"Data movement is all you need\" (BERT encoder "
               "layer).  Measured: shares of the profile's prefill FLOPs and seconds by "
               "class.  The attention core (QK^T, softmax, PV) runs fused per head, so its "
               "time is booked as tensor contraction while its softmax FLOPs count as "
               "normalization: the seconds of normalization here are RMSNorm's only.\n\n");
    struct {
        int i, k;
    } cols[3] = {{0, 1}, {n_sizes - 1, 0}, {n_sizes - 1, 1}};
    fprintf(f, "| class | lecture FLOPs | lecture runtime |");
    for (int c = 0; c < 3; c++)
        fprintf(f, " %s N=%d FLOPs | %s N=%d time |", tfm_attn_kernel_name(KERNELS[cols[c].k]),
                rows[cols[c].i][0].n, tfm_attn_kernel_name(KERNELS[cols[c].k]),
                rows[cols[c].i][0].n);
    fprintf(f, "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int cl = 0; cl < TFM_CLASS_COUNT; cl++) {
        fprintf(f, "| %s | %.2f%% | %.1f%% |", CLASS_LABEL[cl], LECTURE_FLOPS[cl],
                LECTURE_TIME[cl]);
        for (int c = 0; c < 3; c++) {
            const cost_row *r = &rows[cols[c].i][cols[c].k];
            fprintf(f, " %.2f%% | %.1f%% |", pct(r->flops[cl], r->flops),
                    pct(r->secs[cl], r->secs));
        }
        fprintf(f, "\n");
    }
    fprintf(f, "\n![attention time and peak attention memory against N](cost.png)\n");
}

int attn_cost_main(int argc, char **argv)
{
    const char *out = "build/cost";
    long nmin = 128, nmax = 8192, runs = 3, threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            cost_usage(stdout);
            return 0;
        }
        if (!v)
            return cost_bad("missing value for", a);
        i++;
        if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--min")) {
            if (attn_parse_long(v, -1, 1, 1 << 20, &nmin))
                return cost_bad("--min must be between 1 and 1048576", v);
        } else if (!strcmp(a, "--max")) {
            if (attn_parse_long(v, -1, 1, 1 << 20, &nmax))
                return cost_bad("--max must be between 1 and 1048576", v);
        } else if (!strcmp(a, "--runs")) {
            if (attn_parse_long(v, -1, 1, MAX_RUNS, &runs))
                return cost_bad("--runs must be between 1 and 100", v);
        } else if (!strcmp(a, "--threads")) {
            if (attn_parse_long(v, -1, 1, 256, &threads))
                return cost_bad("--threads must be between 1 and 256", v);
        } else
            return cost_bad("unknown option", a);
    }
    if (nmin > nmax)
        return cost_bad("--min must not exceed --max", NULL);
    int sizes[MAX_SIZES], n_sizes = 0;
    for (long n = nmin; n <= nmax && n_sizes < MAX_SIZES; n *= 2)
        sizes[n_sizes++] = (int)n;
    if (n_sizes < 2)
        return cost_bad("need at least two sizes: --max >= 2 x --min", NULL);
    int nbig = sizes[n_sizes - 1];

    if (mkdir_p(out) != 0) {
        fprintf(stderr, "attn cost: cannot create %s: %s\n", out, strerror(errno));
        return 1;
    }

    tfm_config c = {.dim = 288, .hidden_dim = 768, .n_layers = 6, .n_heads = 6, .n_kv_heads = 6,
                    .vocab_size = 32000, .seq_len = (int)nmax, .shared_classifier = 1};
    tfm_config_defaults(&c);
    int rc = 1;
    char err[512] = "", path[4200];
    tfm_model *m = NULL;
    tfm_workspace *ws = NULL, *ws1 = NULL;
    tfm_state *st = NULL;
    int *ids = NULL;
    float *logits = NULL;
    FILE *csv = NULL, *md = NULL;
    cost_row rows[MAX_SIZES][N_KERNELS];
    tfm_profile agg[N_KERNELS];
    memset(rows, 0, sizeof rows);
    memset(agg, 0, sizeof agg);
    one_chunk oc = {.n = nbig, .threads = (int)(threads < c.n_heads ? threads : c.n_heads)};

    tfm_status s = tfm_model_create(&c, &m, err, sizeof err);
    if (s != TFM_OK) {
        fprintf(stderr, "attn cost: model: %s: %s\n", tfm_strerror(s), err);
        goto done;
    }
    tfm_model_init_random(m, 1);
    if ((s = tfm_workspace_create(m, CHUNK, (int)threads, &ws)) != TFM_OK ||
        (s = tfm_state_create(m, 0, &st)) != TFM_OK) {
        fprintf(stderr, "attn cost: %s\n", tfm_strerror(s));
        goto done;
    }
    ids = malloc((size_t)nmax * sizeof *ids);
    logits = malloc((size_t)c.vocab_size * sizeof *logits);
    if (!ids || !logits) {
        fprintf(stderr, "attn cost: out of memory\n");
        goto done;
    }
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (long i = 0; i < nmax; i++)
        ids[i] = (int)(xorshift(&seed) % (uint64_t)c.vocab_size);

    tfm_profile *prof = tfm_workspace_profile(ws);
    double t_start = tfm_now();
    for (int k = 0; k < N_KERNELS; k++)
        agg[k].enabled = 1;
    for (int i = 0; i < n_sizes; i++) {
        for (int k = 0; k < N_KERNELS; k++) {
            int n = sizes[i];
            double pre[MAX_RUNS], att[MAX_RUNS], peak[MAX_RUNS];
            double fl[TFM_CLASS_COUNT][MAX_RUNS], sc[TFM_CLASS_COUNT][MAX_RUNS];
            tfm_workspace_set_attention(ws, KERNELS[k]);
            if (prefill_once(ws, st, ids, n, logits) < 0) { /* warm-up */
                fprintf(stderr, "attn cost: prefill of %d tokens failed\n", n);
                goto done;
            }
            for (int r = 0; r < runs; r++) {
                pre[r] = prefill_once(ws, st, ids, n, logits);
                if (pre[r] < 0) {
                    fprintf(stderr, "attn cost: prefill of %d tokens failed\n", n);
                    goto done;
                }
                att[r] = attn_prefill_seconds(prof);
                peak[r] = prof->attn_peak_bytes[TFM_PHASE_PREFILL];
                for (int cl = 0; cl < TFM_CLASS_COUNT; cl++) {
                    fl[cl][r] = prof->flops[TFM_PHASE_PREFILL][cl];
                    sc[cl][r] = prof->seconds[TFM_PHASE_PREFILL][cl];
                }
                tfm_profile_add_prompt(&agg[k], n, st->prefill_attn_seconds);
            }
            cost_row *row = &rows[i][k];
            row->n = n;
            row->prefill_s = attn_median(pre, (int)runs);
            row->attn_s = attn_median(att, (int)runs);
            row->peak = attn_median(peak, (int)runs);
            for (int cl = 0; cl < TFM_CLASS_COUNT; cl++) {
                row->flops[cl] = attn_median(fl[cl], (int)runs);
                row->secs[cl] = attn_median(sc[cl], (int)runs);
            }
            fprintf(stderr, "attn cost: N %5d %-5s prefill %9.2f ms  attention %9.2f ms  peak %.0f B\n",
                    n, tfm_attn_kernel_name(KERNELS[k]), row->prefill_s * 1e3, row->attn_s * 1e3,
                    row->peak);
        }
    }

    /* one chunk of nbig rows, naive: computed, run once if small enough */
    oc.bytes_per_thread = (double)nbig * nbig * sizeof(float);
    oc.bytes = oc.bytes_per_thread * oc.threads;
    if (oc.bytes > ONE_CHUNK_LIMIT) {
        snprintf(oc.why, sizeof oc.why, "more than 1 GiB");
    } else if (tfm_workspace_create(m, nbig, (int)threads, &ws1) != TFM_OK) {
        snprintf(oc.why, sizeof oc.why, "the workspace could not be allocated");
    } else {
        tfm_workspace_set_attention(ws1, TFM_ATTN_NAIVE);
        oc.prefill_s = prefill_once(ws1, st, ids, nbig, logits);
        if (oc.prefill_s < 0) {
            snprintf(oc.why, sizeof oc.why, "the prefill failed");
        } else {
            tfm_profile *p1 = tfm_workspace_profile(ws1);
            oc.ran = 1;
            oc.attn_s = attn_prefill_seconds(p1);
            oc.peak = p1->attn_peak_bytes[TFM_PHASE_PREFILL];
            fprintf(stderr, "attn cost: N %5d naive, one chunk: prefill %.2f ms, peak %.0f B\n",
                    nbig, oc.prefill_s * 1e3, oc.peak);
        }
    }

    snprintf(path, sizeof path, "%s/cost.csv", out);
    if (!(csv = fopen(path, "w"))) {
        fprintf(stderr, "attn cost: %s: %s\n", path, strerror(errno));
        goto done;
    }
    fprintf(csv, "N,kernel,prefill_s,attention_s,attention_share,peak_bytes");
    for (int cl = 0; cl < TFM_CLASS_COUNT; cl++)
        fprintf(csv, ",flops_%s", tfm_op_class_name((tfm_op_class)cl));
    for (int cl = 0; cl < TFM_CLASS_COUNT; cl++)
        fprintf(csv, ",seconds_%s", tfm_op_class_name((tfm_op_class)cl));
    fprintf(csv, "\n");
    for (int k = 0; k < N_KERNELS; k++) { /* grouped by kernel: one line each to plot */
        for (int i = 0; i < n_sizes; i++) {
            const cost_row *r = &rows[i][k];
            fprintf(csv, "%d,%s,%.6g,%.6g,%.4f,%.0f", r->n, tfm_attn_kernel_name(KERNELS[k]),
                    r->prefill_s, r->attn_s, r->attn_s / r->prefill_s, r->peak);
            for (int cl = 0; cl < TFM_CLASS_COUNT; cl++)
                fprintf(csv, ",%.6g", r->flops[cl]);
            for (int cl = 0; cl < TFM_CLASS_COUNT; cl++)
                fprintf(csv, ",%.6g", r->secs[cl]);
            fprintf(csv, "\n");
        }
    }
    if (fclose(csv) != 0) {
        csv = NULL;
        fprintf(stderr, "attn cost: writing %s failed\n", path);
        goto done;
    }
    csv = NULL;

    snprintf(path, sizeof path, "%s/cost.md", out);
    if (!(md = fopen(path, "w"))) {
        fprintf(stderr, "attn cost: %s: %s\n", path, strerror(errno));
        goto done;
    }
    write_md(md, rows, n_sizes, (int)runs, (int)threads, agg, &oc);
    if (fclose(md) != 0) {
        md = NULL;
        fprintf(stderr, "attn cost: writing %s failed\n", path);
        goto done;
    }
    md = NULL;
    fprintf(stderr, "attn cost: wrote %s/cost.csv and %s/cost.md in %.1f s\n", out, out,
            tfm_now() - t_start);
    rc = 0;
done:
    if (csv)
        fclose(csv);
    if (md)
        fclose(md);
    free(ids);
    free(logits);
    tfm_state_destroy(st);
    tfm_workspace_destroy(ws1);
    tfm_workspace_destroy(ws);
    tfm_model_destroy(m);
    return rc;
}
