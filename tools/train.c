/*
 * train.c — `attn train` and `attn bench-train`.
 *
 *   attn train --task recall|text --out MODEL.safetensors [options]
 *
 * runs tfm_train_run, the loop attnd's background jobs run, with the same
 * parameters as POST /train's JSON body (flag --learning-rate for
 * "learning_rate", --n-pairs for recall.n_pairs, ...).  It writes
 * the trained model, a loss log (CSV: step, loss, lr, grad_norm,
 * tokens_per_s, seconds since the start, then the evaluation columns on
 * the steps that have one) and, with --state, the resumable training
 * state every checkpoint_every steps: run the same command again after an interruption and it resumes
 * from there.  --dump-batch STEP prints that step's batch instead (one
 * sequence per line: inputs, then targets), to compare the data with
 * another implementation's.
 *
 *   attn bench-train [--threads 1,2] [--steps 10] [--configs mqar,text]
 *                    [--attention auto|naive|tiled|both] [--seq-len T] [--batch B]
 *
 * times training steps (forward, backward, clip, AdamW) for the two
 * benchmark configurations of issue #5, one JSON line per config, thread
 * count and attention kernel, medians, with the trainer's bytes (all, and
 * attention's own) and the process's peak RSS.  --attention both builds a
 * naive and a tiled trainer on the same weights and alternates their steps
 * (naive first in even rounds, tiled first in odd ones), then prints the
 * ratios of the medians; peak RSS is the process's, so for one kernel's
 * RSS run it alone.  --seq-len and --batch replace the configs' T and B
 * (the model's max_seq_len follows T).
 */
#include <math.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "tfm/checkpoint.h"
#include "tfm/train.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: attn train --task recall|text --out FILE [options]\n"
            "  model:  --dim 64 --layers 2 --heads 2 --kv-heads H --hidden 4*dim --max-seq-len T\n"
            "  steps:  --steps 1000 --batch-size 16 --seq-len 64 --learning-rate 1e-3\n"
            "          --warmup-steps min(100,steps/10) --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1\n"
            "          --seed 1 --threads 1 --attention auto|naive|tiled\n"
            "  eval:   --eval-every 0 --eval-sequences N (recall: sequences, text: windows)\n"
            "  recall: --n-pairs 8 --n-keys 64 --n-values 64 --absent-fraction 0.2\n"
            "          --min-pairs 0 (0: every sequence has n_pairs pairs)\n"
            "  text:   --corpus FILE --eval-fraction 0.1\n"
            "  files:  --log FILE (loss log CSV) --state FILE --checkpoint-every N\n"
            "          (resumes from FILE when it exists)\n"
            "  --dump-batch STEP  print that step's batch and exit\n"
            "usage: attn bench-train [--threads 1,2] [--steps 10] [--configs mqar,text]\n"
            "                        [--attention auto|naive|tiled|both] [--seq-len T] [--batch B]\n");
}

typedef struct opts {
    tfm_train_spec s;
    const char *out, *log, *state, *corpus;
    long dump_step;
} opts;

/* "auto", "naive", "tiled" (and "both" when allowed: returns 3); -1 otherwise */
static int parse_attention(const char *v, int both)
{
    static const char *names[] = {"auto", "naive", "tiled", "both"};
    for (int k = 0; k < 3 + both; k++)
        if (!strcmp(v, names[k]))
            return k;
    return -1;
}

static int parse_num(const char *flag, const char *v, double lo, double hi, double *out,
                     char *err, size_t errlen)
{
    char *end;
    double x = v ? strtod(v, &end) : 0.0;
    if (!v || end == v || *end || !(x >= lo && x <= hi)) {
        snprintf(err, errlen, "%s needs a number in [%g, %g]", flag, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

/* 0 ok, 1 help, -1 bad (err) */
static int parse_args(int argc, char **argv, opts *o, char *err, size_t errlen)
{
    tfm_train_spec *s = &o->s;
    memset(o, 0, sizeof *o);
    o->dump_step = -1;
    tfm_train_config_defaults(&s->train);
    s->model = (tfm_config){.dim = 64, .n_layers = 2, .n_heads = 2};
    s->recall = (tfm_mqar){.n_pairs = 8, .n_keys = 64, .n_values = 64, .absent_fraction = 0.2f};
    s->n_threads = 1;
    s->task = (tfm_task_kind)-1;
    struct {
        const char *flag;
        double lo, hi;
        int is_float;
        void *dst;
    } nums[] = {
        {"--dim", 2, 65536, 0, &s->model.dim},
        {"--layers", 1, 1024, 0, &s->model.n_layers},
        {"--heads", 1, 4096, 0, &s->model.n_heads},
        {"--kv-heads", 1, 4096, 0, &s->model.n_kv_heads},
        {"--hidden", 1, 1 << 20, 0, &s->model.hidden_dim},
        {"--max-seq-len", 1, 1 << 20, 0, &s->model.seq_len},
        {"--steps", 1, 1e8, 0, &s->train.steps},
        {"--batch-size", 1, 65536, 0, &s->train.batch_size},
        {"--seq-len", 2, 65536, 0, &s->train.seq_len},
        {"--learning-rate", 0, 10, 1, &s->train.learning_rate},
        {"--warmup-steps", -1, 1e8, 0, &s->train.warmup_steps},
        {"--min-lr-ratio", 0, 1, 1, &s->train.min_lr_ratio},
        {"--weight-decay", 0, 10, 1, &s->train.weight_decay},
        {"--grad-clip", 0, 1e6, 1, &s->train.grad_clip},
        {"--eval-every", 0, 1e8, 0, &s->eval_every},
        {"--eval-sequences", 0, 1e8, 0, &s->eval_sequences},
        {"--checkpoint-every", 0, 1e8, 0, &s->checkpoint_every},
        {"--threads", 1, 256, 0, &s->n_threads},
        {"--n-pairs", 1, 65536, 0, &s->recall.n_pairs},
        {"--min-pairs", 0, 65536, 0, &s->recall.min_pairs},
        {"--n-keys", 1, 65536, 0, &s->recall.n_keys},
        {"--n-values", 1, 65536, 0, &s->recall.n_values},
        {"--absent-fraction", 0, 1, 1, &s->recall.absent_fraction},
        {"--eval-fraction", 0, 1, 1, &s->eval_fraction},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return 1;
        size_t k = 0;
        for (; k < sizeof nums / sizeof nums[0]; k++)
            if (!strcmp(a, nums[k].flag))
                break;
        if (k < sizeof nums / sizeof nums[0]) {
            double x;
            if (parse_num(a, v, nums[k].lo, nums[k].hi, &x, err, errlen))
                return -1;
            if (nums[k].is_float)
                *(float *)nums[k].dst = (float)x;
            else if (x != floor(x)) {
                snprintf(err, errlen, "%s needs an integer", a);
                return -1;
            } else
                *(int *)nums[k].dst = (int)x;
            i++;
            continue;
        }
        if (!v) {
            snprintf(err, errlen, "%s needs a value", a);
            return -1;
        }
        if (!strcmp(a, "--task")) {
            if (!strcmp(v, "recall"))
                s->task = TFM_TASK_RECALL;
            else if (!strcmp(v, "text"))
                s->task = TFM_TASK_TEXT;
            else {
                snprintf(err, errlen, "--task is recall or text");
                return -1;
            }
        } else if (!strcmp(a, "--seed")) {
            char *end;
            s->train.seed = strtoull(v, &end, 10);
            if (end == v || *end || *v == '-') {
                snprintf(err, errlen, "--seed needs an unsigned integer");
                return -1;
            }
        } else if (!strcmp(a, "--attention")) {
            int kern = parse_attention(v, 0);
            if (kern < 0) {
                snprintf(err, errlen, "--attention is auto, naive or tiled");
                return -1;
            }
            s->train.attention = (tfm_attn_kernel)kern;
        } else if (!strcmp(a, "--dump-batch")) {
            if (attn_parse_long(v, -1, 0, 100000000, &o->dump_step)) {
                snprintf(err, errlen, "--dump-batch needs a step number");
                return -1;
            }
        } else if (!strcmp(a, "--out"))
            o->out = v;
        else if (!strcmp(a, "--log"))
            o->log = v;
        else if (!strcmp(a, "--state"))
            o->state = v;
        else if (!strcmp(a, "--corpus"))
            o->corpus = v;
        else {
            snprintf(err, errlen, "unknown option %s", a);
            return -1;
        }
        i++;
    }
    if ((int)s->task < 0) {
        snprintf(err, errlen, "--task is required");
        return -1;
    }
    if (!o->out && o->dump_step < 0) {
        snprintf(err, errlen, "--out is required");
        return -1;
    }
    if (s->task == TFM_TASK_TEXT && !o->corpus) {
        snprintf(err, errlen, "--corpus is required for --task text");
        return -1;
    }
    return 0;
}

static unsigned char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            unsigned char *nb = realloc(buf, cap ? cap * 2 : 1 << 16);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb, cap = cap ? cap * 2 : 1 << 16;
        }
        size_t k = fread(buf + len, 1, cap - len, f);
        len += k;
        if (k == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    *n = len;
    return buf;
}

typedef struct run_ctx {
    FILE *log;
    const char *state;
    int every; /* progress lines on stderr */
} run_ctx;

static void on_progress(void *ctx, const tfm_train_progress *p)
{
    run_ctx *r = ctx;
    if (r->log) {
        fprintf(r->log, "%d,%.6f,%.6g,%.4f,%.0f,%.3f", p->step, (double)p->last.loss,
                (double)p->last.lr, (double)p->last.grad_norm, p->tokens_per_s, p->seconds);
        if (p->has_eval && p->recall.n_queries)
            fprintf(r->log, ",%.5f,%.5f,%.5f,%.5f", p->recall.accuracy,
                    p->recall.accuracy_present, p->recall.accuracy_absent, p->recall.loss);
        else if (p->has_eval)
            fprintf(r->log, ",%.5f,%.5f", p->text.loss, p->text.bits_per_byte);
        fputc('\n', r->log);
        fflush(r->log);
    }
    if (p->has_eval && p->recall.n_queries)
        fprintf(stderr, "step %d/%d loss %.4f | eval accuracy %.4f (present %.4f, absent %.4f) | %.1f s\n",
                p->step, p->steps, (double)p->last.loss, p->recall.accuracy,
                p->recall.accuracy_present, p->recall.accuracy_absent, p->seconds);
    else if (p->has_eval)
        fprintf(stderr, "step %d/%d loss %.4f | held-out %.4f nats/byte, %.4f bits/byte | %.1f s\n",
                p->step, p->steps, (double)p->last.loss, p->text.loss, p->text.bits_per_byte,
                p->seconds);
    else if (p->step % r->every == 0)
        fprintf(stderr, "step %d/%d loss %.4f lr %.3g | %.0f tok/s\n", p->step, p->steps,
                (double)p->last.loss, (double)p->last.lr, p->tokens_per_s);
}

static tfm_status on_checkpoint(void *ctx, tfm_trainer *t, int step)
{
    run_ctx *r = ctx;
    char err[256];
    tfm_status st = tfm_trainer_save(t, r->state, err, sizeof err);
    if (st != TFM_OK)
        fprintf(stderr, "attn train: %s\n", err);
    return st;
}

static int dump_batch(const opts *o)
{
    const tfm_train_spec *s = &o->s;
    int B = s->train.batch_size, T = s->train.seq_len;
    int *in = malloc((size_t)B * T * sizeof(int)), *tg = malloc((size_t)B * T * sizeof(int));
    if (!in || !tg)
        return 1;
    if (s->task == TFM_TASK_RECALL)
        tfm_mqar_batch(&s->recall, s->train.seed, (int)o->dump_step, B, in, tg);
    else
        tfm_text_batch(s->text, (size_t)((double)s->text_len * (1.0 - s->eval_fraction)), T,
                       s->train.seed, (int)o->dump_step, B, in, tg);
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < T; i++)
            printf("%s%d", i ? " " : "", in[b * T + i]);
        printf(" |");
        for (int i = 0; i < T; i++)
            printf(" %d", tg[b * T + i]);
        printf("\n");
    }
    free(in);
    free(tg);
    return 0;
}

int attn_train_main(int argc, char **argv)
{
    opts o;
    char err[512] = "";
    int pr = attn_parse_outcome(parse_args(argc, argv, &o, err, sizeof err), "train", err, usage);
    if (pr >= 0)
        return pr;
    tfm_train_spec *s = &o.s;
    unsigned char *text = NULL;
    if (s->task == TFM_TASK_TEXT) {
        if (!(text = read_file(o.corpus, &s->text_len))) {
            fprintf(stderr, "attn train: cannot read %s\n", o.corpus);
            return 1;
        }
        s->text = text;
    }
    if (tfm_train_spec_prepare(s, err, sizeof err) != TFM_OK) {
        fprintf(stderr, "attn train: %s\n", err);
        free(text);
        return 2;
    }
    if (o.dump_step >= 0) {
        int rc = dump_batch(&o);
        free(text);
        return rc;
    }
    tfm_model *m = NULL;
    tfm_trainer *t = NULL;
    run_ctx rctx = {.state = o.state, .every = s->train.steps >= 20 ? s->train.steps / 20 : 1};
    int rc = 1;
    if (tfm_model_create(&s->model, &m, err, sizeof err) != TFM_OK ||
        tfm_trainer_create_attn(m, s->train.batch_size, s->train.seq_len, s->n_threads,
                                s->train.attention, &t) != TFM_OK) {
        fprintf(stderr, "attn train: %s\n", err[0] ? err : "cannot create the trainer");
        goto out;
    }
    tfm_model_init_train(m, s->train.seed);
    if (o.state) {
        tfm_status st = tfm_trainer_load(t, o.state, err, sizeof err);
        if (st == TFM_OK)
            fprintf(stderr, "attn train: resuming from %s at step %d\n", o.state,
                    tfm_trainer_step_count(t));
        else if (st != TFM_E_NOTFOUND) {
            fprintf(stderr, "attn train: %s\n", err);
            goto out;
        }
    }
    size_t attn_bytes;
    tfm_trainer_memory(t, NULL, &attn_bytes);
    fprintf(stderr, "attn train: %zu parameters, %d steps of %d x %d tokens, %d thread(s), "
            "%s attention (%.1f MiB)\n",
            tfm_config_n_params(&s->model), s->train.steps, s->train.batch_size,
            s->train.seq_len, s->n_threads, tfm_attn_kernel_name(tfm_trainer_attention(t)),
            attn_bytes / 1048576.0);
    if (o.log) {
        int fresh = tfm_trainer_step_count(t) == 0;
        if (!(rctx.log = fopen(o.log, fresh ? "w" : "a"))) {
            fprintf(stderr, "attn train: cannot write %s\n", o.log);
            goto out;
        }
        if (fresh)
            fprintf(rctx.log, s->task == TFM_TASK_RECALL
                                  ? "step,loss,lr,grad_norm,tokens_per_s,seconds,accuracy,"
                                    "accuracy_present,accuracy_absent,eval_loss\n"
                                  : "step,loss,lr,grad_norm,tokens_per_s,seconds,eval_loss,"
                                    "bits_per_byte\n");
    }
    tfm_train_hooks h = {.ctx = &rctx,
                         .progress = on_progress,
                         .checkpoint = o.state ? on_checkpoint : NULL};
    tfm_train_progress fin;
    if (tfm_train_run(t, s, &h, &fin, err, sizeof err) != TFM_OK) {
        fprintf(stderr, "attn train: %s\n", err);
        goto out;
    }
    if (tfm_checkpoint_save(m, o.out, TFM_CKPT_SAFETENSORS, err, sizeof err) != TFM_OK) {
        fprintf(stderr, "attn train: %s\n", err);
        goto out;
    }
    if (s->task == TFM_TASK_RECALL)
        printf("{\"steps\": %d, \"loss\": %.6f, \"accuracy\": %.5f, \"accuracy_present\": %.5f, "
               "\"accuracy_absent\": %.5f, \"seconds\": %.2f, \"model\": \"%s\"}\n",
               fin.step, (double)fin.last.loss, fin.recall.accuracy, fin.recall.accuracy_present,
               fin.recall.accuracy_absent, fin.seconds, o.out);
    else
        printf("{\"steps\": %d, \"loss\": %.6f, \"eval_loss\": %.5f, \"bits_per_byte\": %.5f, "
               "\"seconds\": %.2f, \"model\": \"%s\"}\n",
               fin.step, (double)fin.last.loss, fin.text.loss, fin.text.bits_per_byte,
               fin.seconds, o.out);
    rc = 0;
out:
    if (rctx.log)
        fclose(rctx.log);
    tfm_trainer_destroy(t);
    tfm_model_destroy(m);
    free(text);
    return rc;
}

/* ---- bench-train ---------------------------------------------------------------- */

/* The two configurations. */
typedef struct bench_cfg {
    const char *name;
    tfm_config model;
    int B, T;
} bench_cfg;

static const bench_cfg bench_cfgs[] = {
    {"mqar", {.dim = 64, .hidden_dim = 256, .n_layers = 2, .n_heads = 2, .n_kv_heads = 2,
              .vocab_size = 128, .seq_len = 64, .shared_classifier = 1}, 64, 64},
    {"text", {.dim = 128, .hidden_dim = 512, .n_layers = 4, .n_heads = 4, .n_kv_heads = 4,
              .vocab_size = 258, .seq_len = 128, .shared_classifier = 1}, 32, 128},
};

/* One kernel's trainer and its step times. */
typedef struct bench_run {
    tfm_model *m;
    tfm_trainer *t;
    double *ms;
} bench_run;

static void bench_run_free(bench_run *r)
{
    tfm_trainer_destroy(r->t);
    tfm_model_destroy(r->m);
    free(r->ms);
}

static int bench_run_init(bench_run *r, const tfm_config *c, int B, int T, int threads,
                          tfm_attn_kernel k, int steps)
{
    char err[256];
    memset(r, 0, sizeof *r);
    if (tfm_model_create(c, &r->m, err, sizeof err) != TFM_OK) {
        fprintf(stderr, "attn bench-train: %s\n", err);
        return 1;
    }
    tfm_model_init_train(r->m, 1);
    tfm_status st = tfm_trainer_create_attn(r->m, B, T, threads, k, &r->t);
    if (st != TFM_OK || !(r->ms = malloc((size_t)steps * sizeof(double)))) {
        fprintf(stderr, "attn bench-train: cannot create the %s trainer: %s\n",
                tfm_attn_kernel_name(k), tfm_strerror(st));
        bench_run_free(r);
        return 1;
    }
    return 0;
}

static double bench_step(bench_run *r, const tfm_train_config *tc, const int *in, const int *tg,
                         int B, int T)
{
    double t0 = tfm_now();
    tfm_trainer_step(r->t, tc, in, tg, B, T, NULL);
    return (tfm_now() - t0) * 1e3;
}

/* which: 0 auto, 1 naive, 2 tiled, 3 both (alternated) */
static int bench_one(const bench_cfg *bc, int threads, int steps, int which, int B, int T)
{
    tfm_config c = bc->model;
    if (T > c.seq_len)
        c.seq_len = T;
    tfm_config_defaults(&c);
    int nk = which == 3 ? 2 : 1;
    tfm_attn_kernel kern[2] = {which == 3 ? TFM_ATTN_NAIVE : (tfm_attn_kernel)which,
                               TFM_ATTN_TILED};
    bench_run run[2];
    for (int k = 0; k < nk; k++)
        if (bench_run_init(&run[k], &c, B, T, threads, kern[k], steps)) {
            while (k-- > 0)
                bench_run_free(&run[k]);
            return 1;
        }
    int N = B * T;
    int *in = malloc((size_t)N * sizeof(int)), *tg = malloc((size_t)N * sizeof(int));
    uint64_t r = 12345;
    for (int i = 0; i < N; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        in[i] = (int)((r >> 33) % (uint64_t)c.vocab_size);
        tg[i] = (int)((r >> 13) % (uint64_t)c.vocab_size);
    }
    tfm_train_config tc;
    tfm_train_config_defaults(&tc);
    tc.steps = steps + 2;
    for (int k = 0; k < nk; k++) { /* two warm-up steps */
        bench_step(&run[k], &tc, in, tg, B, T);
        bench_step(&run[k], &tc, in, tg, B, T);
        tfm_profile_reset(tfm_trainer_profile(run[k].t));
    }
    double *ratio = malloc((size_t)steps * sizeof(double));
    for (int s = 0; s < steps; s++) {
        for (int j = 0; j < nk; j++) { /* alternate which kernel goes first */
            int k = (s & 1) ? nk - 1 - j : j;
            run[k].ms[s] = bench_step(&run[k], &tc, in, tg, B, T);
        }
        if (nk == 2)
            ratio[s] = run[1].ms[s] / run[0].ms[s];
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    size_t total[2], attn[2];
    for (int k = 0; k < nk; k++) {
        tfm_profile *prof = tfm_trainer_profile(run[k].t);
        double med = attn_median(run[k].ms, steps);
        /* where the timed steps went (the trainer's op accounting) */
        double secs = tfm_profile_total_seconds(prof, TFM_PHASE_TRAIN), flops = 0.0, at = 0.0;
        for (int i = 0; i < TFM_CLASS_COUNT; i++)
            flops += prof->flops[TFM_PHASE_TRAIN][i];
        for (int b = 0; b < TFM_CTX_BUCKETS; b++)
            at += prof->attn_seconds[TFM_PHASE_TRAIN][b];
        tfm_trainer_memory(run[k].t, &total[k], &attn[k]);
        printf("{\"bench\": \"train_step\", \"config\": \"%s\", \"threads\": %d, \"batch\": %d, "
               "\"seq_len\": %d, \"params\": %zu, \"attention\": \"%s\", \"steps\": %d, "
               "\"step_ms_median\": %.2f, \"tokens_per_s\": %.0f, \"gflops_per_step\": %.3f, "
               "\"gflop_per_s\": %.1f, \"attention_share\": %.3f, \"trainer_mib\": %.1f, "
               "\"attention_mib\": %.2f, \"attn_peak_mib\": %.2f, \"process_peak_rss_mib\": %.1f}\n",
               bc->name, threads, B, T, tfm_config_n_params(&c),
               tfm_attn_kernel_name(tfm_trainer_attention(run[k].t)), steps, med,
               N / (med * 1e-3), flops / steps * 1e-9, secs > 0 ? flops / secs * 1e-9 : 0.0,
               secs > 0 ? at / secs : 0.0, total[k] / 1048576.0, attn[k] / 1048576.0,
               prof->attn_peak_bytes[TFM_PHASE_TRAIN] / 1048576.0, ru.ru_maxrss / 1024.0);
    }
    if (nk == 2)
        printf("{\"bench\": \"train_attention\", \"config\": \"%s\", \"threads\": %d, "
               "\"batch\": %d, \"seq_len\": %d, \"rounds\": %d, \"tiled_over_naive_step\": %.3f, "
               "\"tiled_over_naive_step_per_round_median\": %.3f, "
               "\"naive_over_tiled_attention_bytes\": %.1f, \"naive_over_tiled_trainer_bytes\": "
               "%.2f}\n",
               bc->name, threads, B, T, steps,
               attn_median(run[1].ms, steps) / attn_median(run[0].ms, steps),
               attn_median(ratio, steps), (double)attn[0] / (double)attn[1],
               (double)total[0] / (double)total[1]);
    fflush(stdout);
    free(ratio);
    free(in);
    free(tg);
    for (int k = 0; k < nk; k++)
        bench_run_free(&run[k]);
    return 0;
}

int attn_bench_train_main(int argc, char **argv)
{
    const char *threads = "1,2", *configs = "mqar,text";
    long steps = 10, seq_len = 0, batch = 0;
    int which = 0;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "attn bench-train: %s needs a value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--threads"))
            threads = v;
        else if (!strcmp(argv[i], "--configs"))
            configs = v;
        else if (!strcmp(argv[i], "--steps")) {
            if (attn_parse_long(v, -1, 1, 100000, &steps)) {
                fprintf(stderr, "attn bench-train: --steps needs 1..100000\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "--seq-len")) {
            if (attn_parse_long(v, -1, 2, 65536, &seq_len)) {
                fprintf(stderr, "attn bench-train: --seq-len needs 2..65536\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "--batch")) {
            if (attn_parse_long(v, -1, 1, 65536, &batch)) {
                fprintf(stderr, "attn bench-train: --batch needs 1..65536\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "--attention")) {
            if ((which = parse_attention(v, 1)) < 0) {
                fprintf(stderr, "attn bench-train: --attention is auto, naive, tiled or both\n");
                return 2;
            }
        } else {
            fprintf(stderr, "attn bench-train: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
        i++;
    }
    for (size_t k = 0; k < sizeof bench_cfgs / sizeof bench_cfgs[0]; k++) {
        if (!strstr(configs, bench_cfgs[k].name))
            continue;
        for (const char *p = threads; *p;) {
            const char *comma = strchr(p, ',');
            int len = comma ? (int)(comma - p) : (int)strlen(p);
            long th;
            if (attn_parse_long(p, len, 1, 256, &th)) {
                fprintf(stderr, "attn bench-train: bad --threads\n");
                return 2;
            }
            if (bench_one(&bench_cfgs[k], (int)th, (int)steps, which,
                          batch ? (int)batch : bench_cfgs[k].B,
                          seq_len ? (int)seq_len : bench_cfgs[k].T))
                return 1;
            p += len + (comma != NULL);
        }
    }
    return 0;
}
