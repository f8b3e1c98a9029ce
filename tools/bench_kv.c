/*
 * bench_kv.c — `attn bench-kv`: the KV cache in f32, bf16 and q8 side by
 * side: its bytes per 1,000 tokens of context, decode tokens/s at long
 * context, and (with --model) greedy agreement with the f32 cache.  JSON
 * lines on stdout, a summary on stderr.
 *
 *   memory   bytes per token per sequence (tfm_kv_bytes_per_token) for the
 *            15M and 110M shapes, times 1,000, and the bytes a state of
 *            1,000 positions actually allocated (st->kv_bytes, summed from
 *            its allocations), which must agree.
 *   attention  the attention of one decode token alone (every layer and
 *            head, the decode kernel AUTO picks) over a cache of
 *            (--from + --to) / 2 positions of random rows, per format: the
 *            part of decode the cache format changes, without the weights'
 *            traffic.  Calls the core's internals (core/kv_cache.h), as
 *            `attn bench`'s kernel section does.  Alternated, medians.
 *   decode   a random model of --shape with seq_len raised to --to; each
 *            format's state is prefilled once with --from random tokens
 *            (timed once, not alternated: a rough figure); a timed run
 *            copies it (tfm_state_copy, untimed) and decodes greedily from
 *            position --from to --to.  The formats alternate within each
 *            round (A B C, then C B A, ...) so a slow moment of this shared
 *            machine falls on all of them; figures are medians over the
 *            rounds, and each format's ratio to f32 is the median of the
 *            per-round ratios.
 *   agree    --model FILE: greedy tokens from BOS for --agree N steps with
 *            each cache format, against the f32 cache's: the first step
 *            that differs and the share of equal tokens; then the f32
 *            tokens fed to each format (teacher forcing) and the share of
 *            steps whose argmax matches.
 * Nothing is allocated inside a timed loop.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "kv_cache.h" /* core/: the decode kernels, for the attention section */
#include "tfm/checkpoint.h"
#include "tfm/model.h"
#include "tfm/profile.h"
#include "tfm/quant.h"

#define N_KV 3
#define MAX_ROUNDS 51
#define BOS 1

typedef struct {
    char shape[32];
    tfm_config cfg;
    int from, to, rounds, threads, agree;
    const char *weights, *model_path;
} kopts;

static void usage(FILE *f)
{
    fputs("usage: attn bench-kv [--shape 15M|110M|DxHxLxNHxKVxVxS] [--from 2000] [--to 4000]\n"
          "                     [--rounds 3] [--threads 1] [--weights f32|bf16|q8|q4]\n"
          "                     [--model FILE [--agree 300]]\n"
          "  KV cache in f32, bf16 and q8: bytes per 1,000 tokens of context (15M and\n"
          "  110M shapes), decode tokens/s from position --from to --to on a random\n"
          "  model of --shape (seq_len raised to --to; formats alternated per round,\n"
          "  medians), and with --model the greedy agreement of --agree tokens with\n"
          "  the f32 cache.  Also the attention alone at context (--from + --to) / 2.\n"
          "  --rounds 0 skips the decode section (the attention one runs once).\n",
          f);
}

static int parse_args(int argc, char **argv, kopts *o, char *err, size_t errlen)
{
    *o = (kopts){.from = 2000, .to = 4000, .rounds = 3, .threads = 1, .agree = 300};
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
        else if (!strcmp(a, "--weights"))
            o->weights = v;
        else if (!strcmp(a, "--model"))
            o->model_path = v;
        else if (!strcmp(a, "--from"))
            bad = attn_parse_long(v, -1, 1, 1 << 20, &n) || !(o->from = (int)n);
        else if (!strcmp(a, "--to"))
            bad = attn_parse_long(v, -1, 2, 1 << 20, &n) || !(o->to = (int)n);
        else if (!strcmp(a, "--rounds"))
            bad = attn_parse_long(v, -1, 0, MAX_ROUNDS, &n) || ((o->rounds = (int)n), 0);
        else if (!strcmp(a, "--threads"))
            bad = attn_parse_long(v, -1, 1, 64, &n) || !(o->threads = (int)n);
        else if (!strcmp(a, "--agree"))
            bad = attn_parse_long(v, -1, 1, 1 << 20, &n) || !(o->agree = (int)n);
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
    tfm_wformat wf;
    if (o->weights && tfm_wformat_parse(o->weights, &wf) != TFM_OK) {
        snprintf(err, errlen, "--weights must be f32, bf16, q8 or q4, not '%s'", o->weights);
        return -1;
    }
    if (o->from >= o->to) {
        snprintf(err, errlen, "--from must be below --to");
        return -1;
    }
    if (attn_bench_shape(shape, &o->cfg, err, errlen))
        return -1;
    snprintf(o->shape, sizeof o->shape, "%s", shape);
    o->cfg.seq_len = o->to;
    return 0;
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        b = x[i] > x[b] ? i : b;
    return b;
}

/* ---- memory ----------------------------------------------------------------- */

static int bench_memory(void)
{
    static const char *shapes[] = {"15M", "110M"};
    char err[160];
    for (int s = 0; s < 2; s++) {
        tfm_model stub; /* a state reads only its model's config */
        memset(&stub, 0, sizeof stub);
        if (attn_bench_shape(shapes[s], &stub.cfg, err, sizeof err))
            return 1;
        stub.cfg.seq_len = 1000;
        size_t f32 = 0;
        for (int f = 0; f < N_KV; f++) {
            size_t per = tfm_kv_bytes_per_token(&stub.cfg, (tfm_kv_format)f);
            tfm_state *st;
            tfm_status rc = tfm_state_create_fmt(&stub, 1000, (tfm_kv_format)f, &st);
            if (rc != TFM_OK) {
                fprintf(stderr, "attn bench-kv: state: %s\n", tfm_strerror(rc));
                return 1;
            }
            size_t alloc = st->kv_bytes;
            tfm_state_destroy(st);
            if (f == 0)
                f32 = per;
            printf("{\"bench\":\"kv_memory\",\"shape\":\"%s\",\"kv_cache\":\"%s\","
                   "\"bytes_per_token\":%zu,\"bytes_per_1000_tokens\":%zu,"
                   "\"allocated_1000_tokens\":%zu,\"ratio_to_f32\":%.4f}\n",
                   shapes[s], tfm_kv_format_name((tfm_kv_format)f), per, per * 1000, alloc,
                   (double)per / (double)f32);
            fprintf(stderr, "memory %-4s %-4s  %7zu B/token  %8.3f MiB per 1,000 tokens%s\n",
                    shapes[s], tfm_kv_format_name((tfm_kv_format)f), per,
                    (double)per * 1000 / 1048576.0,
                    alloc == per * 1000 ? "" : "  (allocation differs!)");
            if (alloc != per * 1000)
                return 1;
        }
    }
    return 0;
}

/* ---- attention alone ---------------------------------------------------------- */

static int bench_attention(const kopts *o)
{
    const tfm_config *c = &o->cfg;
    int ctx = (o->from + o->to) / 2, hs = c->dim / c->n_heads, group = c->n_heads / c->n_kv_heads;
    int kvd = hs * c->n_kv_heads, iters = 10, rc = 1;
    tfm_model stub; /* states and views read only the config */
    memset(&stub, 0, sizeof stub);
    stub.cfg = *c;
    tfm_state *st[N_KV] = {0};
    float *row = malloc((size_t)kvd * sizeof(float)), *q = malloc((size_t)c->dim * sizeof(float));
    float *out = malloc((size_t)c->dim * sizeof(float)), *scr = malloc((size_t)ctx * sizeof(float));
    if (!row || !q || !out || !scr)
        goto done;
    uint64_t seed = 3;
    for (int i = 0; i < c->dim; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        q[i] = (float)((seed >> 40) % 2001) / 1000.0f - 1.0f;
    }
    for (int f = 0; f < N_KV; f++) {
        if (tfm_state_create_fmt(&stub, ctx, (tfm_kv_format)f, &st[f]) != TFM_OK)
            goto done;
        for (int l = 0; l < c->n_layers; l++)
            for (int p = 0; p < ctx; p++)
                for (int which = 0; which < 2; which++) {
                    for (int i = 0; i < kvd; i++) {
                        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
                        row[i] = (float)((seed >> 40) % 2001) / 1000.0f - 1.0f;
                    }
                    tfm__kv_store(st[f], which, l, p, row);
                }
    }
    double ms[N_KV][MAX_ROUNDS], ratio[N_KV][MAX_ROUNDS];
    int rounds = o->rounds > 0 ? o->rounds : 1;
    tfm_attn_kernel kern = tfm__attn_pick(TFM_ATTN_AUTO, 1, ctx);
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < N_KV; k++) {
            int f = r % 2 ? N_KV - 1 - k : k;
            double t0 = tfm_now();
            for (int it = 0; it < iters; it++)
                for (int l = 0; l < c->n_layers; l++)
                    for (int h = 0; h < c->n_heads; h++) {
                        tfm__kv K = tfm__kv_head(st[f], 0, l, h / group);
                        tfm__kv V = tfm__kv_head(st[f], 1, l, h / group);
                        float *o_h = out + (size_t)h * hs;
                        const float *q_h = q + (size_t)h * hs;
                        if (f == TFM_KV_F32) /* the float32 path as forward.c calls it */
                            tfm__attn_decode(kern, o_h, q_h, K.data, V.data, (int)K.ld, hs, ctx,
                                             scr);
                        else
                            tfm__attn_decode_kv(kern, o_h, q_h, &K, &V, hs, ctx, scr);
                    }
            ms[f][r] = (tfm_now() - t0) / iters * 1e3;
        }
        for (int f = 0; f < N_KV; f++)
            ratio[f][r] = ms[0][r] / ms[f][r];
    }
    fprintf(stderr, "attention alone, %s, context %d, one thread, %d rounds\n", o->shape, ctx,
            rounds);
    for (int f = 0; f < N_KV; f++) {
        double med = attn_median(ms[f], rounds), sp = attn_median(ratio[f], rounds);
        double mb = (double)tfm_kv_bytes_per_token(c, (tfm_kv_format)f) * ctx / 1e6;
        printf("{\"bench\":\"kv_attention\",\"shape\":\"%s\",\"kv_cache\":\"%s\",\"context\":%d,"
               "\"rounds\":%d,\"median_ms_per_token\":%.4f,\"median_speedup_vs_f32\":%.3f,"
               "\"cache_mb_read\":%.2f,\"gb_per_s\":%.2f}\n",
               o->shape, tfm_kv_format_name((tfm_kv_format)f), ctx, rounds, med, sp, mb,
               mb / med);
        fprintf(stderr, "  kv %-4s  %7.3f ms/token  x%.2f faster than f32  (%.1f MB, %.1f GB/s)\n",
                tfm_kv_format_name((tfm_kv_format)f), med, sp, mb, mb / med);
    }
    rc = 0;
done:
    for (int f = 0; f < N_KV; f++)
        tfm_state_destroy(st[f]);
    free(row), free(q), free(out), free(scr);
    return rc;
}

/* ---- decode at long context --------------------------------------------------- */

static int bench_decode(const kopts *o)
{
    tfm_model *m = NULL;
    tfm_workspace *ws = NULL;
    tfm_state *base[N_KV] = {0}, *work[N_KV] = {0};
    float *logits = NULL;
    int *prompt = NULL, rc = 1;
    char err[256];
    if (tfm_model_create(&o->cfg, &m, err, sizeof err) != TFM_OK) {
        fprintf(stderr, "attn bench-kv: %s\n", err);
        return 1;
    }
    tfm_model_init_random(m, 42);
    tfm_wformat wf = TFM_WF_F32;
    if (o->weights && (tfm_wformat_parse(o->weights, &wf) != TFM_OK ||
                       tfm_model_quantize(m, wf, err, sizeof err) != TFM_OK)) {
        fprintf(stderr, "attn bench-kv: --weights %s: %s\n", o->weights, err);
        goto done;
    }
    int V = m->cfg.vocab_size, steps = o->to - o->from;
    logits = malloc((size_t)V * sizeof(float));
    prompt = malloc((size_t)o->from * sizeof(int));
    if (!logits || !prompt || tfm_workspace_create(m, 256, o->threads, &ws) != TFM_OK)
        goto done;
    uint64_t seed = 7;
    for (int i = 0; i < o->from; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        prompt[i] = (int)((seed >> 33) % (uint64_t)V);
    }
    double pre_s[N_KV]; /* each base state's prefill, one run (the tiled kernel over
                         * 256-row chunks: dequantised key blocks in bf16 and q8) */
    for (int f = 0; f < N_KV; f++) {
        if (tfm_state_create_fmt(m, o->to, (tfm_kv_format)f, &base[f]) != TFM_OK ||
            tfm_state_create_fmt(m, o->to, (tfm_kv_format)f, &work[f]) != TFM_OK)
            goto done;
        double t0 = tfm_now();
        if (tfm_prefill(ws, base[f], prompt, o->from, logits) != TFM_OK)
            goto done;
        pre_s[f] = tfm_now() - t0;
    }
    double tps[N_KV][MAX_ROUNDS], ratio[N_KV][MAX_ROUNDS];
    fprintf(stderr, "decode %s (weights %s), positions %d..%d, %d thread(s), %d rounds\n",
            o->shape, tfm_wformat_name(wf), o->from, o->to, o->threads, o->rounds);
    for (int r = 0; r < o->rounds; r++) {
        for (int k = 0; k < N_KV; k++) {
            int f = r % 2 ? N_KV - 1 - k : k;
            tfm_state_copy(work[f], base[f], o->from);
            int tok = prompt[o->from - 1]; /* the same first token for every format */
            double t0 = tfm_now();
            for (int s = 0; s < steps; s++) {
                if (tfm_decode(ws, &work[f], &tok, 1, logits) != TFM_OK)
                    goto done;
                tok = argmax(logits, V);
            }
            tps[f][r] = steps / (tfm_now() - t0);
        }
        for (int f = 0; f < N_KV; f++)
            ratio[f][r] = tps[f][r] / tps[0][r];
    }
    for (int f = 0; f < N_KV; f++) {
        double med = attn_median(tps[f], o->rounds), rat = attn_median(ratio[f], o->rounds);
        double kv_mb = (double)tfm_kv_bytes_per_token(&m->cfg, (tfm_kv_format)f) *
                       (o->from + o->to) / 2.0 / 1e6;
        printf("{\"bench\":\"kv_decode\",\"shape\":\"%s\",\"weights\":\"%s\",\"kv_cache\":\"%s\","
               "\"from\":%d,\"to\":%d,\"threads\":%d,\"rounds\":%d,"
               "\"median_tokens_per_s\":%.2f,\"median_ratio_to_f32\":%.4f,"
               "\"mean_cache_mb_read_per_token\":%.2f,\"prefill_seconds_one_run\":%.3f}\n",
               o->shape, tfm_wformat_name(wf), tfm_kv_format_name((tfm_kv_format)f), o->from,
               o->to, o->threads, o->rounds, med, rat, kv_mb, pre_s[f]);
        fprintf(stderr,
                "  kv %-4s  %8.1f tokens/s  x%.3f of f32  (cache read %.1f MB/token); "
                "prefill of %d: %.2f s (one run)\n",
                tfm_kv_format_name((tfm_kv_format)f), med, rat, kv_mb, o->from, pre_s[f]);
    }
    rc = 0;
done:
    for (int f = 0; f < N_KV; f++) {
        tfm_state_destroy(base[f]);
        tfm_state_destroy(work[f]);
    }
    tfm_workspace_destroy(ws);
    free(logits);
    free(prompt);
    tfm_model_destroy(m);
    return rc;
}

/* ---- agreement with the f32 cache on a real model ------------------------------ */

static int bench_agree(const kopts *o)
{
    char err[512] = "";
    tfm_model *m = NULL;
    tfm_workspace *ws = NULL;
    tfm_state *st = NULL;
    float *logits = NULL;
    int *ref = NULL, *got = NULL, rc = 1;
    tfm_status s = tfm_checkpoint_load(o->model_path, TFM_CKPT_AUTO, &m, err, sizeof err);
    if (s != TFM_OK) {
        fprintf(stderr, "attn bench-kv: %s: %s: %s\n", o->model_path, tfm_strerror(s), err);
        return 1;
    }
    int V = m->cfg.vocab_size, n = o->agree < m->cfg.seq_len - 1 ? o->agree : m->cfg.seq_len - 1;
    logits = malloc((size_t)V * sizeof(float));
    ref = malloc(((size_t)n + 1) * sizeof(int));
    got = malloc(((size_t)n + 1) * sizeof(int));
    if (!logits || !ref || !got || tfm_workspace_create(m, 1, o->threads, &ws) != TFM_OK)
        goto done;
    for (int f = 0; f < N_KV; f++) {
        int *seq = f == 0 ? ref : got, same = 0, first = -1, forced = 0;
        if (tfm_state_create_fmt(m, 0, (tfm_kv_format)f, &st) != TFM_OK)
            goto done;
        seq[0] = BOS;
        for (int p = 0; p < n; p++) { /* free-running greedy */
            if (tfm_decode(ws, &st, &seq[p], 1, logits) != TFM_OK)
                goto done;
            seq[p + 1] = argmax(logits, V);
        }
        for (int p = 1; p <= n; p++) {
            same += seq[p] == ref[p];
            if (first < 0 && seq[p] != ref[p])
                first = p - 1;
        }
        tfm_state_reset(st);
        for (int p = 0; p < n; p++) { /* fed f32's tokens */
            if (tfm_decode(ws, &st, &ref[p], 1, logits) != TFM_OK)
                goto done;
            forced += argmax(logits, V) == ref[p + 1];
        }
        tfm_state_destroy(st);
        st = NULL;
        printf("{\"bench\":\"kv_agree\",\"model\":\"%s\",\"kv_cache\":\"%s\",\"tokens\":%d,"
               "\"greedy_equal\":%d,\"first_difference\":%d,\"teacher_forced_top1\":%d}\n",
               o->model_path, tfm_kv_format_name((tfm_kv_format)f), n, same, first, forced);
        fprintf(stderr, "agree kv %-4s  greedy %d/%d equal (first difference at step %d), "
                        "teacher-forced top-1 %d/%d\n",
                tfm_kv_format_name((tfm_kv_format)f), same, n, first, forced, n);
    }
    rc = 0;
done:
    tfm_state_destroy(st);
    tfm_workspace_destroy(ws);
    free(logits);
    free(ref);
    free(got);
    tfm_model_destroy(m);
    return rc;
}

int attn_bench_kv_main(int argc, char **argv)
{
    kopts o;
    char err[256] = "";
    int code, pr = parse_args(argc, argv, &o, err, sizeof err);
    if ((code = attn_parse_outcome(pr, "bench-kv", err, usage)) >= 0)
        return code;
    if (bench_memory())
        return 1;
    if (bench_attention(&o))
        return 1;
    if (o.rounds > 0 && bench_decode(&o))
        return 1;
    if (o.model_path && bench_agree(&o))
        return 1;
    return 0;
}
