/*
 * attn.c — the command-line tool that drives the core.
 *
 *   attn generate --model M [--tokenizer T] --prompt P -n N [--temperature X]
 *                 [--top-k K] [--top-p P] [--seed S] [--threads N] [--print-ids]
 *   attn random   --out F [--dim 288 --hidden 768 --layers 6 --heads 6
 *                 --kv-heads 6 --vocab 32000 --seq-len 256 --seed 1]
 *                 [--untied] [--format llama2c|safetensors]
 *                 [--mixer softmax|linear|LIST] [--feature-dim F]
 *   attn bench    (tools/bench.c)
 *   attn cost     (tools/cost.c)
 *   attn train, attn bench-train (tools/train.c)
 *   attn quantize (tools/quantize.c), attn eval (tools/eval.c)
 *
 * Generation follows llama2.c's run.c: the prompt is encoded with BOS, fed
 * through the model (here as one prefill), and each sampled token is printed
 * as its decoded piece; a llama2.c model stops when it emits BOS, as run.c
 * does, a byte-level one at EOS.  Bad arguments print usage and exit 2.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attn.h"
#include "tfm/checkpoint.h"
#include "tfm/model.h"
#include "tfm/quant.h"
#include "tfm/sampler.h"
#include "tfm/tokenizer.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: attn <command> [options]\n"
            "\n"
            "  attn generate --model FILE [--tokenizer FILE] --prompt TEXT [-n N]\n"
            "                [--temperature X] [--top-k K] [--top-p P] [--seed S]\n"
            "                [--threads N] [--print-ids] [--weights f32|bf16|q8|q4]\n"
            "                [--kv-cache f32|bf16|q8]\n"
            "      prints the generated text (or ids), not the prompt; timings on stderr.\n"
            "      --weights converts a float32 model's matrices as it loads; --kv-cache\n"
            "      stores keys and values in that format (f32).\n"
            "      A llama2.c .bin model needs its tokenizer.bin (default: tokenizer.bin\n"
            "      beside the model).\n"
            "  attn random --out FILE [--dim 288] [--hidden 768] [--layers 6] [--heads 6]\n"
            "              [--kv-heads 6] [--vocab 32000] [--seq-len 256] [--seed 1]\n"
            "              [--untied] [--format llama2c|safetensors] [--tokenizer-kind byte|llama2c]\n"
            "              [--mixer softmax|linear|LIST] [--feature-dim 16]\n"
            "      writes a model with seeded random weights; --mixer picks each layer's token\n"
            "      mixer (LIST: one word a layer, e.g. linear,softmax; linear: Based's linear\n"
            "      attention over q and k projected to --feature-dim, at most the head size).\n"
            "  attn bench [--shape 15M|110M] [--threads 1,2] [--runs 5] ...\n"
            "      decode, prefill and memory-bandwidth benchmarks as JSON lines.\n"
            "  attn bench-recall [--runs 5] ...\n"
            "      exact recall (attention) latency against the number of pairs, beside a\n"
            "      hash map, with the fitted exponent, as JSON lines.\n"
            "  attn bench-sampler [--rounds 21] [--round-ms 20]\n"
            "      greedy sampling against the sampler before the sampling options\n"
            "      (alternated rounds, medians, ratio) and the options path per token.\n"
            "  attn bench-quant [--rounds 9] [--batch 1]\n"
            "      one thread's product with f32, bf16, q8 and q4 weights from memory.\n"
            "  attn bench-weights [--shape 15M|110M] [--threads 1,2] [--rounds 5]\n"
            "      decode, batched decode and prefill tokens/s of a whole model in each\n"
            "      weight format, alternated, with the ratio to f32.\n"
            "  attn bench-kv [--shape 15M] [--from 2000] [--to 4000] [--model FILE]\n"
            "      KV cache in f32, bf16, q8: bytes per 1,000 tokens, decode tokens/s at\n"
            "      long context (alternated, medians), greedy agreement with f32.\n"
            "  attn cost [--out DIR] [--min 128] [--max 8192] [--runs 3] [--threads 1]\n"
            "      prefill attention time and peak memory against N, naive and tiled\n"
            "      kernels: DIR/cost.csv and DIR/cost.md (default DIR build/cost).\n"
            "  attn quantize --in MODEL --out FILE --format bf16|q8|q4\n"
            "      saves a float32 model with its matrices in the format (safetensors).\n"
            "  attn eval --model M [--weights f32,q8,...] --text FILE | --mqar | --agree\n"
            "      bits per byte on a text, held-out MQAR accuracy, or greedy top-1\n"
            "      agreement with float32, per weight format (attn eval --help).\n"
            "  attn train --task recall|text --out FILE [...]   (attn train --help)\n"
            "      trains a model as POST /train does: a checkpoint and a loss log.\n"
            "  attn bench-train [--threads 1,2] [--steps 10] [--attention both] [--seq-len T]\n"
            "      training step time of the two benchmark configurations, JSON lines.\n");
}

static int bad_arg(const char *msg, const char *arg)
{
    fprintf(stderr, "attn: %s%s%s\n\n", msg, arg ? ": " : "", arg ? arg : "");
    usage(stderr);
    return 2;
}

int attn_parse_long(const char *s, int len, long lo, long hi, long *out)
{
    char buf[32];
    if (len < 0)
        len = (int)strlen(s);
    if (len == 0 || len >= (int)sizeof buf)
        return -1;
    memcpy(buf, s, (size_t)len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    long v = strtol(buf, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double attn_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double attn_loglog_slope(const double *x, const double *y, int n)
{
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (!(x[i] > 0) || !(y[i] > 0))
            continue;
        double lx = log(x[i]), ly = log(y[i]);
        sx += lx;
        sy += ly;
        sxx += lx * lx;
        sxy += lx * ly;
        k++;
    }
    double den = k * sxx - sx * sx;
    if (k < 2 || den <= 0)
        return NAN;
    return (k * sxy - sx * sy) / den;
}

int attn_parse_outcome(int pr, const char *cmd, const char *err, void (*usage_fn)(FILE *f))
{
    if (pr == 1) {
        usage_fn(stdout);
        return 0;
    }
    if (pr < 0) {
        fprintf(stderr, "attn %s: %s\n", cmd, err);
        usage_fn(stderr);
        return 2;
    }
    return -1;
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    return attn_parse_long(s, -1, lo, hi, out) == 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s == '-')
        return 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end)
        return 0;
    *out = v;
    return 1;
}

static int parse_float(const char *s, float lo, float hi, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return 0;
    *out = v;
    return 1;
}

/* ---- generate ------------------------------------------------------------- */

static int cmd_generate(int argc, char **argv)
{
    const char *model_path = NULL, *tok_path = NULL, *prompt = NULL, *weights = NULL;
    tfm_kv_format kvf = TFM_KV_F32;
    long n = 256, threads = 1;
    int print_ids = 0, have_seed = 0;
    tfm_sampler_params sp = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long l;
        if (!strcmp(a, "--print-ids")) {
            print_ids = 1;
            continue;
        }
        if (!v)
            return bad_arg("missing value for", a);
        i++;
        if (!strcmp(a, "--model"))
            model_path = v;
        else if (!strcmp(a, "--tokenizer"))
            tok_path = v;
        else if (!strcmp(a, "--prompt"))
            prompt = v;
        else if (!strcmp(a, "--weights")) {
            tfm_wformat wf;
            if (tfm_wformat_parse(v, &wf) != TFM_OK)
                return bad_arg("--weights must be f32, bf16, q8 or q4", v);
            weights = v;
        }
        else if (!strcmp(a, "--kv-cache")) {
            if (tfm_kv_format_parse(v, &kvf) != TFM_OK)
                return bad_arg("--kv-cache must be f32, bf16 or q8", v);
        } else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens")) {
            if (!parse_long(v, 0, INT_MAX, &n))
                return bad_arg("-n must be a non-negative integer", v);
        } else if (!strcmp(a, "--temperature")) {
            if (!parse_float(v, 0.0f, 1e6f, &sp.temperature))
                return bad_arg("--temperature must be >= 0", v);
        } else if (!strcmp(a, "--top-k")) {
            if (!parse_long(v, 0, INT_MAX, &l))
                return bad_arg("--top-k must be >= 0", v);
            sp.top_k = (int)l;
        } else if (!strcmp(a, "--top-p")) {
            if (!parse_float(v, 0.0f, 1.0f, &sp.top_p) || sp.top_p <= 0.0f)
                return bad_arg("--top-p must be in (0, 1]", v);
        } else if (!strcmp(a, "--seed")) {
            if (!parse_u64(v, &sp.seed))
                return bad_arg("--seed must be an unsigned integer", v);
            have_seed = 1;
        } else if (!strcmp(a, "--threads")) {
            if (!parse_long(v, 1, 256, &threads))
                return bad_arg("--threads must be between 1 and 256", v);
        } else
            return bad_arg("unknown option", a);
    }
    if (!model_path)
        return bad_arg("--model is required", NULL);
    if (!prompt)
        prompt = "";
    if (!have_seed)
        sp.seed = (uint64_t)time(NULL);

    int rc = 1;
    char err[512] = "";
    tfm_model *m = NULL;
    tfm_tokenizer *tok = NULL;
    tfm_workspace *ws = NULL;
    tfm_state *st = NULL;
    tfm_sampler *smp = NULL;
    int *ids = NULL, *out_ids = NULL;
    float *logits = NULL;
    tfm_status s = tfm_checkpoint_load(model_path, TFM_CKPT_AUTO, &m, err, sizeof err);
    if (s != TFM_OK) {
        fprintf(stderr, "attn: %s: %s: %s\n", model_path, tfm_strerror(s), err);
        goto out;
    }
    if (weights && attn_model_weights(m, weights, err, sizeof err) != 0) {
        fprintf(stderr, "attn: %s: %s\n", model_path, err);
        goto out;
    }
    if (m->tokenizer == TFM_TOKENIZER_LLAMA2C) {
        char def[4096];
        if (!tok_path) {
            const char *slash = strrchr(model_path, '/');
            int dirlen = slash ? (int)(slash - model_path + 1) : 0;
            snprintf(def, sizeof def, "%.*stokenizer.bin", dirlen, model_path);
            tok_path = def;
        }
        s = tfm_tokenizer_load_llama2c(tok_path, m->cfg.vocab_size, &tok, err, sizeof err);
        if (s != TFM_OK) {
            fprintf(stderr, "attn: tokenizer %s: %s: %s\n", tok_path, tfm_strerror(s), err);
            goto out;
        }
    } else if ((s = tfm_tokenizer_create_byte(&tok)) != TFM_OK) {
        fprintf(stderr, "attn: %s\n", tfm_strerror(s));
        goto out;
    }
    if (tfm_tokenizer_vocab_size(tok) > m->cfg.vocab_size) {
        fprintf(stderr, "attn: tokenizer has %d tokens, model only %d\n",
                tfm_tokenizer_vocab_size(tok), m->cfg.vocab_size);
        goto out;
    }
    int seq = m->cfg.seq_len, n_prompt = 0;
    size_t plen = strlen(prompt);
    int cap = (int)(plen + 3 < (size_t)INT_MAX ? plen + 3 : INT_MAX);
    ids = malloc((size_t)cap * sizeof(int));
    if (!ids)
        goto out;
    s = tfm_tokenizer_encode(tok, prompt, plen, 1, 0, ids, cap, &n_prompt);
    if (s != TFM_OK) {
        fprintf(stderr, "attn: encoding the prompt: %s\n", tfm_strerror(s));
        goto out;
    }
    if (n_prompt >= seq) {
        fprintf(stderr, "attn: the prompt is %d tokens, the model's context is %d\n", n_prompt,
                seq);
        goto out;
    }
    if (n > seq - n_prompt)
        n = seq - n_prompt; /* as run.c clamps its steps to seq_len */
    if ((s = tfm_workspace_create(m, n_prompt, (int)threads, &ws)) != TFM_OK ||
        (s = tfm_state_create_fmt(m, 0, kvf, &st)) != TFM_OK ||
        (s = tfm_sampler_create(m->cfg.vocab_size, &sp, &smp)) != TFM_OK) {
        fprintf(stderr, "attn: %s\n", tfm_strerror(s));
        goto out;
    }
    logits = malloc((size_t)m->cfg.vocab_size * sizeof(float));
    out_ids = malloc(((size_t)n + 1) * sizeof(int));
    if (!logits || !out_ids)
        goto out;

    double t0 = tfm_now();
    if ((s = tfm_prefill(ws, st, ids, n_prompt, logits)) != TFM_OK) {
        fprintf(stderr, "attn: prefill: %s\n", tfm_strerror(s));
        goto out;
    }
    double t1 = tfm_now();
    int stop_id = m->tokenizer == TFM_TOKENIZER_LLAMA2C ? tfm_tokenizer_bos(tok)
                                                        : tfm_tokenizer_eos(tok);
    int prev = ids[n_prompt - 1], produced = 0;
    for (long i = 0; i < n; i++) {
        int next = tfm_sampler_sample(smp, logits);
        if (next == stop_id)
            break;
        out_ids[produced++] = next;
        if (!print_ids) {
            const char *piece;
            size_t len;
            if (tfm_tokenizer_decode(tok, prev, next, &piece, &len) == TFM_OK)
                fwrite(piece, 1, len, stdout);
            fflush(stdout);
        }
        prev = next;
        if (i + 1 < n && (s = tfm_decode(ws, &st, &next, 1, logits)) != TFM_OK) {
            fprintf(stderr, "attn: decode: %s\n", tfm_strerror(s));
            goto out;
        }
    }
    double t2 = tfm_now();
    if (print_ids)
        for (int i = 0; i < produced; i++)
            printf("%d%s", out_ids[i], i + 1 < produced ? " " : "");
    printf("\n");
    fprintf(stderr, "prompt %d tokens in %.1f ms (%.0f tok/s); generated %d tokens in %.1f ms (%.1f tok/s)\n",
            n_prompt, (t1 - t0) * 1e3, n_prompt / fmax(t1 - t0, 1e-9), produced, (t2 - t1) * 1e3,
            produced / fmax(t2 - t1, 1e-9));
    rc = 0;
out:
    free(ids);
    free(out_ids);
    free(logits);
    tfm_sampler_destroy(smp);
    tfm_state_destroy(st);
    tfm_workspace_destroy(ws);
    tfm_tokenizer_destroy(tok);
    tfm_model_destroy(m);
    return rc;
}

/* ---- random --------------------------------------------------------------- */

static int cmd_random(int argc, char **argv)
{
    tfm_config c = {.dim = 288, .hidden_dim = 768, .n_layers = 6, .n_heads = 6, .n_kv_heads = 6,
                    .vocab_size = 32000, .seq_len = 256, .shared_classifier = 1};
    const char *out = NULL, *format = NULL, *tk = NULL, *mixer = NULL;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--untied")) {
            c.shared_classifier = 0;
            continue;
        }
        if (!v)
            return bad_arg("missing value for", a);
        i++;
        long l;
        int *field = !strcmp(a, "--dim")        ? &c.dim
                     : !strcmp(a, "--hidden")   ? &c.hidden_dim
                     : !strcmp(a, "--layers")   ? &c.n_layers
                     : !strcmp(a, "--heads")    ? &c.n_heads
                     : !strcmp(a, "--kv-heads") ? &c.n_kv_heads
                     : !strcmp(a, "--vocab")    ? &c.vocab_size
                     : !strcmp(a, "--seq-len")  ? &c.seq_len
                     : !strcmp(a, "--feature-dim") ? &c.feature_dim
                                                : NULL;
        if (field) {
            if (!parse_long(v, 1, INT_MAX, &l))
                return bad_arg("expected a positive integer for", a);
            *field = (int)l;
        } else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--format"))
            format = v;
        else if (!strcmp(a, "--tokenizer-kind"))
            tk = v;
        else if (!strcmp(a, "--mixer"))
            mixer = v;
        else if (!strcmp(a, "--seed")) {
            if (!parse_u64(v, &seed))
                return bad_arg("--seed must be an unsigned integer", v);
        } else
            return bad_arg("unknown option", a);
    }
    if (!out)
        return bad_arg("--out is required", NULL);
    tfm_ckpt_format fmt = TFM_CKPT_AUTO;
    if (format && !strcmp(format, "llama2c"))
        fmt = TFM_CKPT_LLAMA2C;
    else if (format && !strcmp(format, "safetensors"))
        fmt = TFM_CKPT_SAFETENSORS;
    else if (format)
        return bad_arg("--format must be llama2c or safetensors", format);
    if (tk && strcmp(tk, "byte") && strcmp(tk, "llama2c"))
        return bad_arg("--tokenizer-kind must be byte or llama2c", tk);
    char err[512] = "";
    if (mixer && tfm_mixer_parse(mixer, c.n_layers, &c.linear_layers, err, sizeof err) != TFM_OK)
        return bad_arg(err, NULL);
    tfm_config_defaults(&c);
    tfm_model *m = NULL;
    tfm_status s = tfm_model_create(&c, &m, err, sizeof err);
    if (s != TFM_OK)
        return bad_arg(err, NULL);
    tfm_model_init_random(m, seed);
    int llama = fmt == TFM_CKPT_LLAMA2C ||
                (fmt == TFM_CKPT_AUTO && strlen(out) > 4 && !strcmp(out + strlen(out) - 4, ".bin"));
    m->tokenizer = (tk ? !strcmp(tk, "llama2c") : llama) ? TFM_TOKENIZER_LLAMA2C
                                                         : TFM_TOKENIZER_BYTE;
    s = tfm_checkpoint_save(m, out, fmt, err, sizeof err);
    tfm_model_destroy(m);
    if (s != TFM_OK) {
        fprintf(stderr, "attn: %s: %s: %s\n", out, tfm_strerror(s), err);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return bad_arg("missing command", NULL);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "generate"))
        return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "random"))
        return cmd_random(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench"))
        return attn_bench_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench-recall"))
        return attn_bench_recall_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench-sampler"))
        return attn_bench_sampler_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench-quant"))
        return attn_bench_quant_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench-weights"))
        return attn_bench_weights_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench-kv"))
        return attn_bench_kv_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "cost"))
        return attn_cost_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "quantize"))
        return attn_quantize_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval"))
        return attn_eval_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "train"))
        return attn_train_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench-train"))
        return attn_bench_train_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    return bad_arg("unknown command", cmd);
}
