/*
 * eval.c — `attn eval`: how much a weight format costs a model, measured
 * through the inference forward (tfm_prefill_rows, tfm_decode), which is
 * what attnd serves with.  One JSON line per weight format.
 *
 *   attn eval --model M [--weights f32,bf16,q8,q4] [--threads N] MODE
 *
 *   --text FILE [--eval-fraction F] [--bytes N] [--ctx T] [--trainer]
 *       bits per byte of a byte-level model on FILE (all of it, or its last
 *       F as `attn train --eval-fraction F` holds it out, the same bytes).
 *       Chunked context, as training's evaluation: consecutive windows of T
 *       bytes (default the model's seq_len), each read from BOS with no
 *       memory of the previous window, every byte of a window predicted
 *       from BOS and the window's bytes before it.  --bytes N stops after
 *       N predicted bytes.  So `--eval-fraction 0.05 --bytes 102400` is
 *       text-kjv's training evaluation (400 windows of 256).
 *   --mqar [--sequences N] [--seed S] [--trainer]
 *       held-out accuracy of a recall model (the task from its metadata):
 *       N fresh sequences of the evaluation stream (stream 1) of seed S,
 *       the answer the argmax over the vocabulary, as training evaluates.
 *   --agree [--tokens N] [--prompt P]
 *       greedy top-1 agreement with float32, teacher-forced: the float32
 *       model decodes greedily from BOS (and P) for N tokens, and each
 *       other format is fed the same tokens and scored, position by
 *       position, on whether its argmax is the token float32 chose.  When
 *       the context fills, every model restarts from BOS and the last
 *       seq_len/2 tokens.  M must be float32; f32 in --weights is the
 *       reference (the others default to bf16,q8,q4).  --feed random feeds
 *       seeded uniform tokens instead of float32's choices (still scoring
 *       each position's argmax against float32's): a random model's greedy
 *       text loops on a few tokens, which says little ("distinct_fed" in
 *       the output counts the tokens fed).
 *
 * --text and --mqar run each window as one prefill (tfm_prefill_rows: a
 * quantised model's weights dequantised in tiles, float32 activations);
 * --decode runs them a token at a time through decode's kernels instead,
 * which also round the activations (bf16, or int8 blocks for q8 and q4):
 * the path generation takes.  --agree always decodes.
 *
 * --trainer (float32 only) also computes the --text and --mqar figures
 * through the trainer's forward (tfm_text_evaluate, tfm_mqar_evaluate):
 * the reference path the inference numbers must equal to rounding.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "internal.h" /* tfm__trainer_create_eval */
#include "tfm/checkpoint.h"
#include "tfm/model.h"
#include "tfm/quant.h"
#include "tfm/sampler.h"
#include "tfm/tokenizer.h"
#include "tfm/train.h"

enum { MODE_NONE, MODE_TEXT, MODE_MQAR, MODE_AGREE };
#define MAX_FORMATS 4
#define ROW_CHUNK 64 /* prefill rows per call: row logits are (ROW_CHUNK, vocab) */

typedef struct opts {
    const char *model, *text, *prompt;
    int mode, n_formats, threads, trainer, ctx, sequences, tokens, decode, feed_random;
    tfm_wformat formats[MAX_FORMATS];
    double eval_fraction; /* 0: the whole text */
    long bytes;           /* 0: all */
    uint64_t seed;
} opts;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: attn eval --model M [--weights f32,bf16,q8,q4] [--threads N] [--decode] MODE\n"
            "  --text FILE [--eval-fraction F] [--bytes N] [--ctx T] [--trainer]\n"
            "      bits per byte of a byte-level model on FILE (its last F, as attn train\n"
            "      holds it out); windows of T bytes from BOS, as training evaluates.\n"
            "  --mqar [--sequences 2000] [--seed 1] [--trainer]\n"
            "      held-out accuracy of a recall model (its task from the metadata).\n"
            "  --agree [--tokens 2000] [--prompt P] [--feed greedy|random] [--seed 1]\n"
            "      greedy top-1 agreement of each format with float32 (teacher-forced on\n"
            "      float32's greedy tokens, or seeded random ones; M must be float32).\n"
            "  --decode: --text and --mqar a token at a time through decode's kernels\n"
            "      (activations rounded as generation rounds them), not as prefills.\n"
            "  --trainer: also through the trainer's forward (float32), the reference.\n"
            "  One JSON line per format.\n");
}

static int parse_formats(const char *s, opts *o)
{
    char buf[64];
    if (strlen(s) >= sizeof buf)
        return -1;
    strcpy(buf, s);
    o->n_formats = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        tfm_wformat f;
        if (o->n_formats == MAX_FORMATS || tfm_wformat_parse(t, &f) != TFM_OK)
            return -1;
        o->formats[o->n_formats++] = f;
    }
    return o->n_formats ? 0 : -1;
}

/* 0 ok, 1 help, -1 bad (err). */
static int parse_args(int argc, char **argv, opts *o, char *err, size_t errlen)
{
    *o = (opts){.threads = 1, .sequences = 2000, .tokens = 2000, .seed = 1, .prompt = ""};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long l;
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return 1;
        if (!strcmp(a, "--mqar") || !strcmp(a, "--agree") || !strcmp(a, "--trainer") ||
            !strcmp(a, "--decode")) {
            if (!strcmp(a, "--trainer") || !strcmp(a, "--decode"))
                *(!strcmp(a, "--trainer") ? &o->trainer : &o->decode) = 1;
            else
                o->mode = !strcmp(a, "--mqar") ? MODE_MQAR : MODE_AGREE;
            continue;
        }
        if (!v) {
            snprintf(err, errlen, "missing value for %s", a);
            return -1;
        }
        i++;
        if (!strcmp(a, "--model"))
            o->model = v;
        else if (!strcmp(a, "--text"))
            o->text = v, o->mode = MODE_TEXT;
        else if (!strcmp(a, "--prompt"))
            o->prompt = v;
        else if (!strcmp(a, "--feed")) {
            if (strcmp(v, "greedy") && strcmp(v, "random")) {
                snprintf(err, errlen, "--feed must be greedy or random");
                return -1;
            }
            o->feed_random = !strcmp(v, "random");
        }
        else if (!strcmp(a, "--weights")) {
            if (parse_formats(v, o) != 0) {
                snprintf(err, errlen, "--weights: a comma-separated list of f32, bf16, q8, q4");
                return -1;
            }
        } else if (!strcmp(a, "--eval-fraction")) {
            char *end;
            errno = 0;
            /* as attn train reads it: a float, applied in double */
            float f = strtof(v, &end);
            if (errno || *end || end == v || !(f > 0.0f && f <= 1.0f)) {
                snprintf(err, errlen, "--eval-fraction must be in (0, 1]");
                return -1;
            }
            o->eval_fraction = f;
        } else {
            int *field = !strcmp(a, "--threads")     ? &o->threads
                         : !strcmp(a, "--ctx")       ? &o->ctx
                         : !strcmp(a, "--sequences") ? &o->sequences
                         : !strcmp(a, "--tokens")    ? &o->tokens
                                                     : NULL;
            if (field) {
                if (attn_parse_long(v, -1, 1, !strcmp(a, "--threads") ? 256 : INT_MAX, &l) != 0) {
                    snprintf(err, errlen, "%s must be a positive integer", a);
                    return -1;
                }
                *field = (int)l;
            } else if (!strcmp(a, "--bytes")) {
                if (attn_parse_long(v, -1, 1, LONG_MAX, &o->bytes) != 0) {
                    snprintf(err, errlen, "--bytes must be a positive integer");
                    return -1;
                }
            } else if (!strcmp(a, "--seed")) {
                if (attn_parse_long(v, -1, 0, LONG_MAX, &l) != 0) {
                    snprintf(err, errlen, "--seed must be a non-negative integer");
                    return -1;
                }
                o->seed = (uint64_t)l;
            } else {
                snprintf(err, errlen, "unknown option %s", a);
                return -1;
            }
        }
    }
    if (!o->model || o->mode == MODE_NONE) {
        snprintf(err, errlen, "--model and one of --text, --mqar, --agree are required");
        return -1;
    }
    return 0;
}

/* The model at path in format wf (converted from float32 at load). */
static tfm_model *load_as(const char *path, tfm_wformat wf)
{
    char err[512] = "";
    tfm_model *m = NULL;
    tfm_status s = tfm_checkpoint_load(path, TFM_CKPT_AUTO, &m, err, sizeof err);
    if (s != TFM_OK) {
        fprintf(stderr, "attn eval: %s: %s: %s\n", path, tfm_strerror(s), err);
        return NULL;
    }
    if (attn_model_weights(m, tfm_wformat_name(wf), err, sizeof err) != 0) {
        fprintf(stderr, "attn eval: %s as %s: %s\n", path, tfm_wformat_name(wf), err);
        tfm_model_destroy(m);
        return NULL;
    }
    return m;
}

/* log p(target) from a row of logits, in double. */
static double log_prob(const float *row, int V, int target)
{
    float mx = row[0];
    for (int i = 1; i < V; i++)
        mx = row[i] > mx ? row[i] : mx;
    double s = 0.0;
    for (int i = 0; i < V; i++)
        s += exp((double)row[i] - mx);
    return (double)row[target] - mx - log(s);
}

/* Runs tokens[0..n) from a reset state in chunks of ROW_CHUNK rows; calls
 * fn on each row's logits.  The prefill appends, so chunks continue the
 * sequence. */
static tfm_status run_rows(tfm_workspace *ws, tfm_state *st, const int *tokens, int n,
                           float *rows, int V, void (*fn)(void *, int, const float *), void *ctx,
                           int decode)
{
    tfm_state_reset(st);
    for (int i = 0; decode && i < n; i++) { /* decode's kernels, one token at a time */
        tfm_status s = tfm_decode(ws, &st, &tokens[i], 1, rows);
        if (s != TFM_OK)
            return s;
        fn(ctx, i, rows);
    }
    for (int at = 0; !decode && at < n; at += ROW_CHUNK) {
        int k = n - at < ROW_CHUNK ? n - at : ROW_CHUNK;
        tfm_status s = tfm_prefill_rows(ws, st, tokens + at, k, rows);
        if (s != TFM_OK)
            return s;
        for (int i = 0; i < k; i++)
            fn(ctx, at + i, rows + (size_t)i * V);
    }
    return TFM_OK;
}

/* ---- bits per byte --------------------------------------------------------- */

typedef struct text_acc {
    const int *targets;
    int V;
    double nats;
} text_acc;

static void text_row(void *ctx, int i, const float *row)
{
    text_acc *a = ctx;
    if (a->targets[i] >= 0)
        a->nats -= log_prob(row, a->V, a->targets[i]);
}

static int eval_text(const opts *o, tfm_model *m, const unsigned char *data, size_t n,
                     size_t from, double *bpb_out)
{
    int V = m->cfg.vocab_size, T = o->ctx ? o->ctx : m->cfg.seq_len;
    if (m->tokenizer != TFM_TOKENIZER_BYTE || V < TFM_BYTE_EOS + 1) {
        fprintf(stderr, "attn eval: --text needs a byte-level model\n");
        return -1;
    }
    if (T > m->cfg.seq_len || T < 1) {
        fprintf(stderr, "attn eval: --ctx %d is beyond the model's context (%d)\n", T,
                m->cfg.seq_len);
        return -1;
    }
    size_t total = n - from;
    if (o->bytes && (size_t)o->bytes < total)
        total = (size_t)o->bytes;
    int *in = malloc((size_t)T * sizeof *in), *tg = malloc((size_t)T * sizeof *tg);
    float *rows = malloc((size_t)ROW_CHUNK * V * sizeof *rows);
    tfm_workspace *ws = NULL;
    tfm_state *st = NULL;
    tfm_status s = TFM_E_NOMEM;
    text_acc acc = {tg, V, 0.0};
    double t0 = tfm_now();
    if (!in || !tg || !rows || (s = tfm_workspace_create(m, ROW_CHUNK, o->threads, &ws)) != TFM_OK ||
        (s = tfm_state_create(m, T, &st)) != TFM_OK)
        goto out;
    for (size_t w = 0; w < total && s == TFM_OK; w += (size_t)T) {
        int k = total - w < (size_t)T ? (int)(total - w) : T;
        const unsigned char *p = data + from + w;
        in[0] = TFM_BYTE_BOS;
        for (int i = 0; i < k; i++) {
            if (i > 0)
                in[i] = p[i - 1];
            tg[i] = p[i];
        }
        s = run_rows(ws, st, in, k, rows, V, text_row, &acc, o->decode);
    }
out:
    free(in);
    free(tg);
    free(rows);
    tfm_state_destroy(st);
    tfm_workspace_destroy(ws);
    if (s != TFM_OK) {
        fprintf(stderr, "attn eval: %s\n", tfm_strerror(s));
        return -1;
    }
    double bpb = acc.nats / (double)total / log(2.0);
    printf("{\"mode\":\"text\",\"path\":\"%s\",\"weights\":\"%s\",\"bits_per_byte\":%.6f,\"nats_per_byte\":%.6f,"
           "\"bytes\":%zu,\"from\":%zu,\"ctx\":%d,\"weight_bytes\":%zu,\"seconds\":%.2f",
           o->decode ? "decode" : "prefill", tfm_wformat_name((tfm_wformat)tfm_model_wformat(m)),
           bpb, acc.nats / (double)total,
           total, from, T, tfm_model_weight_bytes(m), tfm_now() - t0);
    *bpb_out = bpb;
    if (o->trainer && tfm_model_wformat(m) == TFM_WF_F32) {
        /* the trainer's windows are whole T-byte windows of [from, n): ask
         * for as many as cover total, then compare when they count the same */
        tfm_trainer *t = NULL;
        tfm_text_eval ev;
        int windows = (int)((total + (size_t)T - 1) / (size_t)T);
        size_t end = from + total; /* the trainer stops at n: cut the text at total */
        if (tfm__trainer_create_eval(m, 8, T, o->threads, &t) != TFM_OK ||
            tfm_text_evaluate(t, data, end, from, T, windows, &ev) != TFM_OK) {
            printf("}\n");
            tfm_trainer_destroy(t);
            fprintf(stderr, "attn eval: the trainer's evaluation failed\n");
            return -1;
        }
        printf(",\"trainer_bits_per_byte\":%.6f,\"trainer_bytes\":%ld", ev.bits_per_byte,
               ev.n_bytes);
        tfm_trainer_destroy(t);
    }
    printf("}\n");
    fflush(stdout);
    return 0;
}

/* ---- MQAR -------------------------------------------------------------------- */

typedef struct mqar_acc {
    const int *targets;
    int V, nul;
    long right, n, right_p, n_p, right_a, n_a;
} mqar_acc;

static void mqar_row(void *ctx, int i, const float *row)
{
    mqar_acc *a = ctx;
    int t = a->targets[i];
    if (t < 0)
        return;
    int ok = tfm_argmax(row, a->V) == t;
    a->right += ok, a->n++;
    if (t == a->nul)
        a->right_a += ok, a->n_a++;
    else
        a->right_p += ok, a->n_p++;
}

static int eval_mqar(const opts *o, tfm_model *m)
{
    tfm_mqar p;
    if (tfm_mqar_from_meta(m, &p) != TFM_OK) {
        fprintf(stderr, "attn eval: --mqar needs a recall model (task \"recall\" in its metadata)\n");
        return -1;
    }
    int T = p.seq_len, V = m->cfg.vocab_size;
    if (V != tfm_mqar_vocab(&p) || T > m->cfg.seq_len) {
        fprintf(stderr, "attn eval: the model's vocabulary or context does not fit its task\n");
        return -1;
    }
    int *in = malloc((size_t)T * sizeof *in), *tg = malloc((size_t)T * sizeof *tg);
    float *rows = malloc((size_t)ROW_CHUNK * V * sizeof *rows);
    tfm_workspace *ws = NULL;
    tfm_state *st = NULL;
    tfm_status s = TFM_E_NOMEM;
    mqar_acc acc = {.targets = tg, .V = V, .nul = tfm_mqar_null_token(&p)};
    double t0 = tfm_now();
    if (!in || !tg || !rows || (s = tfm_workspace_create(m, ROW_CHUNK, o->threads, &ws)) != TFM_OK ||
        (s = tfm_state_create(m, T, &st)) != TFM_OK)
        goto out;
    for (int i = 0; i < o->sequences && s == TFM_OK; i++) {
        tfm_mqar_sequence(&p, o->seed, 1, (uint64_t)i, in, tg);
        s = run_rows(ws, st, in, T, rows, V, mqar_row, &acc, o->decode);
    }
out:
    free(in);
    free(tg);
    free(rows);
    tfm_state_destroy(st);
    tfm_workspace_destroy(ws);
    if (s != TFM_OK) {
        fprintf(stderr, "attn eval: %s\n", tfm_strerror(s));
        return -1;
    }
    printf("{\"mode\":\"mqar\",\"path\":\"%s\",\"weights\":\"%s\",\"accuracy\":%.6f,\"accuracy_present\":%.6f,"
           "\"accuracy_absent\":%.6f,\"queries\":%ld,\"wrong\":%ld,\"sequences\":%d,\"seed\":%llu,"
           "\"seconds\":%.2f",
           o->decode ? "decode" : "prefill", tfm_wformat_name((tfm_wformat)tfm_model_wformat(m)),
           acc.n ? (double)acc.right / acc.n : 0.0, acc.n_p ? (double)acc.right_p / acc.n_p : 0.0,
           acc.n_a ? (double)acc.right_a / acc.n_a : 0.0, acc.n, acc.n - acc.right, o->sequences,
           (unsigned long long)o->seed, tfm_now() - t0);
    if (o->trainer && tfm_model_wformat(m) == TFM_WF_F32) {
        tfm_trainer *t = NULL;
        tfm_mqar_eval ev;
        if (tfm__trainer_create_eval(m, 64, T, o->threads, &t) != TFM_OK ||
            tfm_mqar_evaluate(t, &p, o->seed, o->sequences, &ev) != TFM_OK) {
            printf("}\n");
            tfm_trainer_destroy(t);
            fprintf(stderr, "attn eval: the trainer's evaluation failed\n");
            return -1;
        }
        printf(",\"trainer_accuracy\":%.6f,\"trainer_queries\":%ld", ev.accuracy, ev.n_queries);
        tfm_trainer_destroy(t);
    }
    printf("}\n");
    fflush(stdout);
    return 0;
}

/* ---- greedy agreement ---------------------------------------------------------- */

typedef struct runner {
    tfm_model *m;
    tfm_workspace *ws;
    tfm_state *st;
    float *logits;
    long agree;
} runner;

static int eval_agree(const opts *o, tfm_model *ref)
{
    if (tfm_model_wformat(ref) != TFM_WF_F32) {
        fprintf(stderr, "attn eval: --agree needs a float32 model (the reference)\n");
        return -1;
    }
    runner r[MAX_FORMATS + 1] = {{0}};
    int nr = 1, rc = -1, V = ref->cfg.vocab_size, seq = ref->cfg.seq_len;
    r[0].m = ref;
    for (int i = 0; i < o->n_formats; i++)
        if (o->formats[i] != TFM_WF_F32 && !(r[nr++].m = load_as(o->model, o->formats[i])))
            goto out;
    if (nr == 1) {
        fprintf(stderr, "attn eval: --agree compares bf16, q8 or q4 with f32: name one\n");
        goto out;
    }
    int bos = ref->tokenizer == TFM_TOKENIZER_BYTE ? TFM_BYTE_BOS : 1;
    size_t plen = strlen(o->prompt);
    if (ref->tokenizer != TFM_TOKENIZER_BYTE && plen) {
        fprintf(stderr, "attn eval: --prompt needs a byte-level model\n");
        goto out;
    }
    int keep = seq / 2;
    int *traj = malloc(((size_t)o->tokens + plen + 1) * sizeof *traj);
    int *ctx = malloc(((size_t)seq + 1) * sizeof *ctx);
    tfm_status s = TFM_E_NOMEM;
    if (!traj || !ctx)
        goto fail;
    for (int i = 0; i < nr; i++) {
        r[i].logits = malloc((size_t)V * sizeof(float));
        if (!r[i].logits || (s = tfm_workspace_create(r[i].m, ROW_CHUNK, o->threads, &r[i].ws)) ||
            (s = tfm_state_create(r[i].m, 0, &r[i].st)))
            goto fail;
    }
    /* the prompt: BOS and P's bytes, cut to leave room to generate */
    int n_ctx = 0, len = 0, restarts = 0;
    uint64_t rng = o->seed;
    ctx[n_ctx++] = bos;
    for (size_t i = 0; i < plen && n_ctx < keep; i++)
        ctx[n_ctx++] = (unsigned char)o->prompt[i];
    double t0 = tfm_now();
    for (int done = 0; done < o->tokens;) {
        for (int i = 0; i < nr; i++) {
            tfm_state_reset(r[i].st);
            if ((s = tfm_prefill(r[i].ws, r[i].st, ctx, n_ctx, r[i].logits)) != TFM_OK)
                goto fail;
        }
        for (; done < o->tokens; done++) {
            int top = tfm_argmax(r[0].logits, V), next = top;
            for (int i = 1; i < nr; i++)
                r[i].agree += tfm_argmax(r[i].logits, V) == top;
            if (o->feed_random) /* seeded uniform tokens (splitmix64 of the position) */
                next = (int)(tfm__splitmix64(&rng) % (uint64_t)V);
            traj[len++] = next;
            if (r[0].st->pos >= seq) {
                done++;
                break;
            }
            for (int i = 0; i < nr; i++)
                if ((s = tfm_decode(r[i].ws, &r[i].st, &next, 1, r[i].logits)) != TFM_OK)
                    goto fail;
        }
        /* the context is full: start again from BOS and the last keep tokens */
        n_ctx = 0;
        ctx[n_ctx++] = bos;
        int k = len < keep ? len : keep;
        for (int i = len - k; i < len; i++)
            ctx[n_ctx++] = traj[i];
        restarts += done < o->tokens;
    }
    int distinct = 0; /* how varied the fed tokens are (a random model's greedy text loops) */
    for (int i = 0; i < len; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = traj[j] == traj[i];
        distinct += !seen;
    }
    for (int i = 1; i < nr; i++)
        printf("{\"mode\":\"agree\",\"weights\":\"%s\",\"top1_agreement\":%.6f,\"agree\":%ld,"
               "\"tokens\":%d,\"feed\":\"%s\",\"distinct_fed\":%d,\"restarts\":%d,"
               "\"seconds_all_formats\":%.2f}\n",
               tfm_wformat_name((tfm_wformat)tfm_model_wformat(r[i].m)),
               (double)r[i].agree / o->tokens, r[i].agree, o->tokens,
               o->feed_random ? "random" : "greedy", distinct, restarts, tfm_now() - t0);
    if (ref->tokenizer == TFM_TOKENIZER_BYTE) { /* what float32 wrote, for the record */
        fprintf(stderr, "float32 greedy text (first 200 bytes): ");
        for (int i = 0; i < len && i < 200; i++)
            if (traj[i] < 256)
                fputc(traj[i], stderr);
        fputc('\n', stderr);
    }
    fflush(stdout);
    rc = 0;
fail:
    if (rc)
        fprintf(stderr, "attn eval: %s\n", tfm_strerror(s));
    free(traj);
    free(ctx);
out:
    for (int i = 0; i < nr; i++) {
        free(r[i].logits);
        tfm_state_destroy(r[i].st);
        tfm_workspace_destroy(r[i].ws);
        if (i)
            tfm_model_destroy(r[i].m);
    }
    return rc;
}

/* ---- main ------------------------------------------------------------------------ */

static unsigned char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    unsigned char *buf = NULL;
    size_t cap = 0, len = 0;
    for (;;) {
        if (len == cap) {
            unsigned char *nb = realloc(buf, cap = cap ? 2 * cap : 1 << 20);
            if (!nb)
                break;
            buf = nb;
        }
        size_t k = fread(buf + len, 1, cap - len, f);
        len += k;
        if (k == 0)
            break;
    }
    int bad = ferror(f) || len == 0;
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    *n = len;
    return buf;
}

int attn_eval_main(int argc, char **argv)
{
    opts o;
    char err[256] = "";
    int pr = parse_args(argc, argv, &o, err, sizeof err), rc;
    if ((rc = attn_parse_outcome(pr, "eval", err, usage)) >= 0)
        return rc;
    unsigned char *data = NULL;
    size_t n = 0, from = 0;
    if (o.mode == MODE_TEXT) {
        if (!(data = read_file(o.text, &n))) {
            fprintf(stderr, "attn eval: %s: cannot read, or empty\n", o.text);
            return 1;
        }
        /* the held-out tail exactly as attn train computes it */
        if (o.eval_fraction > 0)
            from = (size_t)((double)n * (1.0 - o.eval_fraction));
        if (from >= n) {
            fprintf(stderr, "attn eval: nothing left to evaluate\n");
            free(data);
            return 1;
        }
    }
    tfm_model *f32 = NULL;
    if (o.n_formats == 0) { /* the file's own format, or all against f32 */
        if (o.mode == MODE_AGREE) {
            const tfm_wformat all[4] = {TFM_WF_F32, TFM_WF_BF16, TFM_WF_Q8, TFM_WF_Q4};
            memcpy(o.formats, all, sizeof all);
            o.n_formats = 4;
        } else {
            o.n_formats = 1;
            o.formats[0] = (tfm_wformat)-1;
        }
    }
    rc = 0;
    double bpb[MAX_FORMATS];
    int have_f32 = -1;
    if (o.mode == MODE_AGREE) {
        f32 = load_as(o.model, TFM_WF_F32);
        rc = !f32 || eval_agree(&o, f32) != 0;
        tfm_model_destroy(f32);
        free(data);
        return rc;
    }
    for (int i = 0; i < o.n_formats && rc == 0; i++) {
        tfm_model *m;
        if ((int)o.formats[i] < 0) {
            char e[512];
            tfm_status s = tfm_checkpoint_load(o.model, TFM_CKPT_AUTO, &m, e, sizeof e);
            if (s != TFM_OK) {
                fprintf(stderr, "attn eval: %s: %s: %s\n", o.model, tfm_strerror(s), e);
                m = NULL;
            }
        } else
            m = load_as(o.model, o.formats[i]);
        if (!m) {
            rc = 1;
            break;
        }
        if (o.mode == MODE_TEXT) {
            rc = eval_text(&o, m, data, n, from, &bpb[i]) != 0;
            if (!rc && tfm_model_wformat(m) == TFM_WF_F32)
                have_f32 = i;
            if (!rc && have_f32 >= 0 && i != have_f32)
                fprintf(stderr, "%s: %+.3f%% bits per byte against f32\n",
                        tfm_wformat_name(o.formats[i]), 100.0 * (bpb[i] / bpb[have_f32] - 1.0));
        } else
            rc = eval_mqar(&o, m) != 0;
        tfm_model_destroy(m);
    }
    free(data);
    return rc;
}
