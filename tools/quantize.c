/*
 * quantize.c — `attn quantize`: a float32 model file saved with its
 * matrices in bf16, q8 or q4 (tfm/checkpoint.h has the layout), and the
 * conversion every subcommand's --weights flag shares (attn_model_weights).
 *
 *   attn quantize --in M --out M2 --format bf16|q8|q4
 *
 * The file it writes loads (in attn and attnd) into exactly the model that
 * `--weights FORMAT` makes of M at load time, so converting once only saves
 * the load-time work and the disk and memory bytes.
 */
#include <stdio.h>
#include <string.h>

#include "attn.h"
#include "tfm/checkpoint.h"
#include "tfm/model.h"
#include "tfm/quant.h"

int attn_model_weights(tfm_model *m, const char *weights, char *err, size_t errlen)
{
    tfm_wformat want, have = (tfm_wformat)tfm_model_wformat(m);
    if (!weights || tfm_wformat_parse(weights, &want) != TFM_OK) {
        snprintf(err, errlen, "--weights must be f32, bf16, q8 or q4, not \"%s\"",
                 weights ? weights : "");
        return -1;
    }
    if (want == have)
        return 0;
    if (have != TFM_WF_F32) {
        snprintf(err, errlen, "the model is %s already; only a float32 model converts",
                 tfm_wformat_name(have));
        return -1;
    }
    tfm_status s = tfm_model_quantize(m, want, err, errlen);
    return s == TFM_OK ? 0 : -1;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: attn quantize --in MODEL --out FILE.safetensors --format bf16|q8|q4\n"
               "  writes MODEL (float32, safetensors or llama2.c) with its weight matrices\n"
               "  in the format; the embedding and the norms stay float32.  q8 and q4 need\n"
               "  dim and hidden_dim multiples of 32.\n");
}

int attn_quantize_main(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *format = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "attn quantize: missing value for %s\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--in"))
            in = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--format"))
            format = v;
        else {
            fprintf(stderr, "attn quantize: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    tfm_wformat wf;
    if (!in || !out || !format || tfm_wformat_parse(format, &wf) != TFM_OK || wf == TFM_WF_F32) {
        fprintf(stderr, "attn quantize: --in, --out and --format bf16|q8|q4 are required\n");
        usage(stderr);
        return 2;
    }
    char err[512] = "";
    tfm_model *m = NULL;
    tfm_status s = tfm_checkpoint_load(in, TFM_CKPT_AUTO, &m, err, sizeof err);
    if (s != TFM_OK) {
        fprintf(stderr, "attn quantize: %s: %s: %s\n", in, tfm_strerror(s), err);
        return 1;
    }
    size_t before = tfm_model_weight_bytes(m);
    int rc = 1;
    if (tfm_model_wformat(m) != TFM_WF_F32) {
        fprintf(stderr, "attn quantize: %s is %s already; quantize a float32 model\n", in,
                tfm_wformat_name((tfm_wformat)tfm_model_wformat(m)));
        goto out;
    }
    const char *task = tfm_model_meta_get(m, "task");
    if (task && !strcmp(task, "recall")) { /* the loader would refuse the file */
        fprintf(stderr, "attn quantize: %s is a recall model: it answers through the trainer's "
                "float32 forward (attn eval --mqar --weights measures a format)\n", in);
        goto out;
    }
    if (attn_model_weights(m, format, err, sizeof err) != 0) {
        fprintf(stderr, "attn quantize: %s: %s\n", in, err);
        goto out;
    }
    if ((s = tfm_checkpoint_save(m, out, TFM_CKPT_AUTO, err, sizeof err)) != TFM_OK) {
        fprintf(stderr, "attn quantize: %s: %s: %s\n", out, tfm_strerror(s), err);
        goto out;
    }
    fprintf(stderr, "%s: %s weights, %zu bytes (float32: %zu, %.3fx)\n", out, format,
            tfm_model_weight_bytes(m), before, (double)tfm_model_weight_bytes(m) / (double)before);
    rc = 0;
out:
    tfm_model_destroy(m);
    return rc;
}
