/*
 * checkpoint_quant.c — which tensors a quantised model file holds, and the
 * model they load into (tfm/checkpoint.h has the file format).
 *
 * A bf16, q8 or q4 model is saved as safetensors with "weights" in
 * `__metadata__` naming the format.  The embedding and the norms stay F32,
 * as tfm_model_quantize keeps them; each matrix (wq, wk, wv, wo, w1, w2, w3,
 * the classifier) is stored in its format's own bytes:
 *
 *   bf16  dtype BF16, shape [n, d]
 *   q8    dtype I8,   shape [n, d]      and "<name>.scales" F16 [n, d/32]
 *   q4    dtype U8,   shape [n, d/2]    and "<name>.scales" F16 [n, d/32]
 *         (byte i of a block: weight i in the low nibble, i + 16 in the high)
 *
 * Those are exactly the bytes tfm_model_quantize puts in memory, so saving
 * writes them and loading reads them back in place: a quantised file loads
 * into the same model, byte for byte, as converting its float32 original at
 * load time.  A shared classifier is not stored twice: loading quantises it
 * from the embedding, as tfm_model_quantize does.
 *
 * checkpoint.c does the reading (the one file with the JSON parser): it
 * checks each entry's dtype, shape and byte span against tfm__qckpt_plan
 * before any read, and a file too short for the plan's bytes is refused
 * before the model is allocated.  What a shape cannot show is checked here
 * after the read (tfm__qckpt_finish): every scale finite, no q8 value of
 * -128.  A recall model (metadata task "recall") is refused: it answers
 * through the trainer's forward (tfm_mqar_answer), which reads float32
 * matrices, so a quantised one would have none to read.
 */
#include "checkpoint_quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_KINDS 9

/* The layer kinds in checkpoint.c's order, with the matrix each is (-1: a
 * norm, float32). */
static const char *const kind_names[N_KINDS] = {
    "attention_norm.weight",  "attention.wq.weight",    "attention.wk.weight",
    "attention.wv.weight",    "attention.wo.weight",    "ffn_norm.weight",
    "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight",
};
static const int kind_matrix[N_KINDS] = {-1,         TFM__QM_WQ, TFM__QM_WK,
                                         TFM__QM_WV, TFM__QM_WO, -1,
                                         TFM__QM_W1, TFM__QM_W2, TFM__QM_W3};

static const char *data_dtype(tfm_wformat f)
{
    return f == TFM_WF_BF16 ? "BF16" : f == TFM_WF_Q8 ? "I8" : "U8";
}

static void add_f32(tfm__qtensor *t, int *n, const char *name, float *p, size_t rows,
                    size_t cols)
{
    tfm__qtensor *e = &t[(*n)++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->dtype = "F32";
    e->ndim = cols ? 2 : 1;
    e->dims[0] = rows, e->dims[1] = cols;
    e->ptr = p;
    e->bytes = (uint64_t)rows * (cols ? cols : 1) * sizeof(float);
}

/* A matrix: its data tensor, then its scales (q8, q4). */
static void add_matrix(tfm__qtensor *t, int *n, const char *name, const tfm_qmat *m)
{
    size_t db, sb;
    tfm_qmat_bytes(m->fmt, m->n, m->d, &db, &sb);
    tfm__qtensor *e = &t[(*n)++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->dtype = data_dtype(m->fmt);
    e->ndim = 2;
    e->dims[0] = (size_t)m->n;
    e->dims[1] = m->fmt == TFM_WF_Q4 ? (size_t)m->d / 2 : (size_t)m->d;
    e->ptr = (void *)m->data;
    e->bytes = db;
    if (!sb)
        return;
    e = &t[(*n)++];
    snprintf(e->name, sizeof e->name, "%s.scales", name);
    e->dtype = "F16";
    e->ndim = 2;
    e->dims[0] = (size_t)m->n, e->dims[1] = (size_t)m->d / TFM_QK;
    e->ptr = (void *)m->scale;
    e->bytes = sb;
}

tfm_status tfm__qckpt_plan(const tfm_model *m, tfm__qtensor **out, int *n)
{
    const tfm_config *c = &m->cfg;
    size_t d = (size_t)c->dim, L = (size_t)c->n_layers, V = (size_t)c->vocab_size;
    /* at most: embedding, 9 kinds x 2 per layer, final norm, classifier x 2 */
    tfm__qtensor *t = calloc(1 + 2 * N_KINDS * L + 3, sizeof *t);
    *out = NULL, *n = 0;
    if (!t)
        return TFM_E_NOMEM;
    int k = 0;
    char name[64];
    add_f32(t, &k, "tok_embeddings.weight", m->w.token_embedding, V, d);
    for (int kind = 0; kind < N_KINDS; kind++)
        for (size_t l = 0; l < L; l++) {
            snprintf(name, sizeof name, "layers.%zu.%s", l, kind_names[kind]);
            if (kind_matrix[kind] < 0)
                add_f32(t, &k, name, (kind == 0 ? m->w.rms_att : m->w.rms_ffn) + l * d, d, 0);
            else
                add_matrix(t, &k, name, &m->q->layer[l * TFM__QM_PER_LAYER + kind_matrix[kind]]);
        }
    add_f32(t, &k, "norm.weight", m->w.rms_final, d, 0);
    if (!c->shared_classifier)
        add_matrix(t, &k, "output.weight", &m->q->cls);
    *out = t, *n = k;
    return TFM_OK;
}

uint64_t tfm__qckpt_bytes(const tfm_config *c, int wformat)
{
    tfm_wformat f = (tfm_wformat)wformat;
    uint64_t d = (uint64_t)c->dim, L = (uint64_t)c->n_layers, V = (uint64_t)c->vocab_size;
    uint64_t h = (uint64_t)c->hidden_dim, kv = d / (uint64_t)c->n_heads * (uint64_t)c->n_kv_heads;
    uint64_t total = (V * d + 2 * L * d + d) * sizeof(float);
    const uint64_t rows[7] = {d, kv, kv, d, h, d, h}, cols[7] = {d, d, d, d, d, h, d};
    for (int i = 0; i < 8; i++) {
        uint64_t n = i < 7 ? rows[i] : V, cc = i < 7 ? cols[i] : d, times = i < 7 ? L : 1;
        size_t db, sb;
        if (i == 7 && c->shared_classifier)
            break;
        if (n > INT32_MAX || cc > INT32_MAX || tfm_qmat_bytes(f, (int)n, (int)cc, &db, &sb) != TFM_OK)
            return 0;
        total += times * (db + sb);
    }
    return total;
}

tfm_status tfm__qckpt_finish(tfm_model *m, char *err, size_t errlen)
{
    /* A recall model answers through the trainer's forward (tfm_mqar_answer),
     * which reads the float32 matrices a quantised model does not have. */
    const char *task = tfm_model_meta_get(m, "task");
    if (task && !strcmp(task, "recall")) {
        snprintf(err, errlen, "a recall model (task \"recall\") answers through the trainer's "
                 "float32 forward: it cannot be %s", tfm_wformat_name((tfm_wformat)m->q->fmt));
        return TFM_E_UNSUPPORTED;
    }
    tfm__qtensor *t;
    int n;
    if (tfm__qckpt_plan(m, &t, &n) != TFM_OK) {
        snprintf(err, errlen, "out of memory");
        return TFM_E_NOMEM;
    }
    tfm_status st = TFM_OK;
    for (int i = 0; i < n && st == TFM_OK; i++) {
        if (!strcmp(t[i].dtype, "F16")) {
            const uint16_t *h = t[i].ptr;
            for (uint64_t j = 0; j < t[i].bytes / 2; j++)
                if (!isfinite(tfm_f16_to_f32(h[j]))) {
                    snprintf(err, errlen, "tensor %s: scale %llu is not finite (0x%04x)",
                             t[i].name, (unsigned long long)j, h[j]);
                    st = TFM_E_FORMAT;
                    break;
                }
        } else if (!strcmp(t[i].dtype, "I8")) {
            const int8_t *v = t[i].ptr;
            for (uint64_t j = 0; j < t[i].bytes; j++)
                if (v[j] == -128) {
                    snprintf(err, errlen, "tensor %s: value -128 at %llu (q8 is -127..127)",
                             t[i].name, (unsigned long long)j);
                    st = TFM_E_FORMAT;
                    break;
                }
        }
    }
    free(t);
    tfm_qweights *q = m->q;
    if (st == TFM_OK && m->cfg.shared_classifier)
        tfm_quantize(q->cls.fmt, m->w.token_embedding, q->cls.n, q->cls.d, (void *)q->cls.data,
                     (uint16_t *)q->cls.scale);
    return st;
}
