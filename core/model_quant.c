/*
 * model_quant.c — a model's weight matrices in bf16, q8 or q4
 * (tfm_model_quantize), and the products the forward makes with them
 * (tfm__qmatmul).
 *
 * Quantising keeps what is not a matrix product in float32 — the token
 * embedding (read a row at a time), the norms — in a new, smaller buffer,
 * and frees the float matrices: a q8 model takes a little over a quarter
 * of its float32 bytes.  With a shared classifier the embedding is both:
 * float32 for the lookup and quantised for the product.
 *
 * Products: up to TFM__QBATCH_MAX rows (decode, small batches) go through
 * the kernels of tfm/quant.h, the activations prepared once and the
 * weights' rows split over the pool; more rows (prefill) dequantise
 * TFM__QTILE_ROWS rows of weights at a time into the thread's tile and
 * call sgemm on it, which costs one float32 write and read of the tile on
 * top of the compute-bound product.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_quant.h"
#include "internal.h"

void tfm__qweights_free(tfm_qweights *q)
{
    if (!q)
        return;
    tfm__free(q->buf);
    free(q->layer);
    free(q);
}

int tfm_model_wformat(const tfm_model *m) { return m && m->q ? m->q->fmt : TFM_WF_F32; }

size_t tfm_model_weight_bytes(const tfm_model *m)
{
    if (!m)
        return 0;
    return m->n_floats * sizeof(float) + (m->q ? m->q->bytes : 0);
}

/* Bytes one matrix takes in the buffer: data, then scales, each rounded
 * up to 64 (so every matrix starts on a cache line). */
static size_t need(tfm_wformat f, int n, int d)
{
    size_t db, sb;
    tfm_qmat_bytes(f, n, d, &db, &sb);
    return ((db + 63) & ~(size_t)63) + ((sb + 63) & ~(size_t)63);
}

/* The (rows, cols) of matrix k of a layer (TFM__QM_*). */
static void layer_shape(const tfm_config *c, int k, int *n, int *d)
{
    int dim = c->dim, hid = c->hidden_dim, kv = c->dim / c->n_heads * c->n_kv_heads;
    const int shape[TFM__QM_PER_LAYER][2] = {{dim, dim}, {kv, dim},  {kv, dim}, {dim, dim},
                                             {hid, dim}, {dim, hid}, {hid, dim}};
    *n = shape[k][0], *d = shape[k][1];
}

tfm_status tfm__qweights_create(const tfm_config *c, int wformat, tfm_qweights **out, char *err,
                                size_t errlen)
{
    tfm_wformat f = (tfm_wformat)wformat;
    int d = c->dim, hid = c->hidden_dim, L = c->n_layers, V = c->vocab_size;
    *out = NULL;
    if (!tfm_wformat_name(f) || f == TFM_WF_F32) {
        snprintf(err, errlen, "not a quantised weight format: %d", wformat);
        return TFM_E_INVALID;
    }
    if (c->linear_layers) { /* wfeat is not among the quantised layout's floats */
        snprintf(err, errlen, "a model with linear-attention layers (mixer) cannot be %s yet",
                 tfm_wformat_name(f));
        return TFM_E_UNSUPPORTED;
    }
    if ((f == TFM_WF_Q8 || f == TFM_WF_Q4) && (d % TFM_QK || hid % TFM_QK)) {
        snprintf(err, errlen, "%s needs dim and hidden_dim multiples of %d (they are %d and %d)",
                 tfm_wformat_name(f), TFM_QK, d, hid);
        return TFM_E_SHAPE;
    }
    size_t total = need(f, V, d);
    for (int k = 0; k < TFM__QM_PER_LAYER; k++) {
        int n, cols;
        layer_shape(c, k, &n, &cols);
        total += (size_t)L * need(f, n, cols);
    }
    tfm_qweights *q = calloc(1, sizeof *q);
    if (q) {
        q->layer = calloc((size_t)L * TFM__QM_PER_LAYER, sizeof *q->layer);
        q->buf = tfm__alloc(total);
    }
    if (!q || !q->layer || !q->buf) {
        tfm__qweights_free(q);
        snprintf(err, errlen, "out of memory for the %s weights (%zu bytes)", tfm_wformat_name(f),
                 total);
        return TFM_E_NOMEM;
    }
    q->fmt = f;
    q->bytes = total;
    unsigned char *at = q->buf;
    for (int i = 0; i <= L * TFM__QM_PER_LAYER; i++) {
        int n = V, cols = d;
        if (i < L * TFM__QM_PER_LAYER)
            layer_shape(c, i % TFM__QM_PER_LAYER, &n, &cols);
        size_t db, sb;
        tfm_qmat_bytes(f, n, cols, &db, &sb);
        tfm_qmat *m = i < L * TFM__QM_PER_LAYER ? &q->layer[i] : &q->cls;
        *m = (tfm_qmat){f, n, cols, at, NULL};
        at += (db + 63) & ~(size_t)63;
        m->scale = sb ? (const uint16_t *)at : NULL;
        at += (sb + 63) & ~(size_t)63;
    }
    *out = q;
    return TFM_OK;
}

/* What stays float32 in a quantised model, in this order in its data
 * array: the embedding, rms_att, rms_ffn, rms_final. */
static size_t keep_floats(const tfm_config *c, size_t sizes[4])
{
    size_t d = (size_t)c->dim, L = (size_t)c->n_layers, V = (size_t)c->vocab_size;
    sizes[0] = V * d, sizes[1] = L * d, sizes[2] = L * d, sizes[3] = d;
    return sizes[0] + sizes[1] + sizes[2] + sizes[3];
}

tfm_status tfm__model_create_quantized(const tfm_config *c, int wformat, tfm_model **out,
                                       char *err, size_t errlen)
{
    *out = NULL;
    tfm_status st = tfm_config_validate(c, err, errlen);
    if (st != TFM_OK)
        return st;
    /* tfm_model_create builds the RoPE tables, which depend on seq_len and
     * the head size only; a one-layer, one-token, hidden-1 config keeps its
     * weight array tiny, and the array is replaced below. */
    tfm_config small = *c;
    small.n_layers = 1, small.hidden_dim = 1, small.vocab_size = 1, small.shared_classifier = 1;
    tfm_model *m = NULL;
    tfm_qweights *q = NULL;
    if ((st = tfm__qweights_create(c, wformat, &q, err, errlen)) != TFM_OK ||
        (st = tfm_model_create(&small, &m, err, errlen)) != TFM_OK)
        goto fail;
    size_t sizes[4], keep = keep_floats(c, sizes);
    float *small_data = tfm__alloc(keep * sizeof(float));
    if (!small_data) {
        snprintf(err, errlen, "out of memory for %zu floats", keep);
        st = TFM_E_NOMEM;
        goto fail;
    }
    memset(small_data, 0, keep * sizeof(float));
    tfm__free(m->data);
    m->data = small_data;
    m->n_floats = keep;
    m->cfg = *c;
    m->w = (tfm_weights){0};
    m->w.token_embedding = small_data;
    m->w.rms_att = m->w.token_embedding + sizes[0];
    m->w.rms_ffn = m->w.rms_att + sizes[1];
    m->w.rms_final = m->w.rms_ffn + sizes[2];
    m->q = q;
    tfm_model_meta_set(m, "weights", tfm_wformat_name((tfm_wformat)wformat));
    *out = m;
    return TFM_OK;
fail:
    tfm__qweights_free(q);
    tfm_model_destroy(m);
    return st;
}

tfm_status tfm_model_quantize(tfm_model *m, int wformat, char *err, size_t errlen)
{
    tfm_wformat f = (tfm_wformat)wformat;
    const tfm_config *c = &m->cfg;
    if (!tfm_wformat_name(f)) {
        snprintf(err, errlen, "unknown weight format %d", wformat);
        return TFM_E_INVALID;
    }
    if (f == TFM_WF_F32)
        return TFM_OK;
    if (m->q) {
        snprintf(err, errlen, "the model is %s already", tfm_wformat_name((tfm_wformat)m->q->fmt));
        return TFM_E_UNSUPPORTED;
    }
    int L = c->n_layers, V = c->vocab_size, d = c->dim;
    tfm_qweights *q;
    tfm_status st = tfm__qweights_create(c, f, &q, err, errlen);
    if (st != TFM_OK)
        return st;
    size_t sizes[4], keep = keep_floats(c, sizes);
    float *small = tfm__alloc(keep * sizeof(float));
    if (!small) {
        tfm__qweights_free(q);
        snprintf(err, errlen, "out of memory for the %s weights", tfm_wformat_name(f));
        return TFM_E_NOMEM;
    }
    float *const base[TFM__QM_PER_LAYER] = {m->w.wq, m->w.wk, m->w.wv, m->w.wo,
                                            m->w.w1, m->w.w2, m->w.w3};
    for (int l = 0; l < L; l++)
        for (int k = 0; k < TFM__QM_PER_LAYER; k++) {
            tfm_qmat *qm = &q->layer[(size_t)l * TFM__QM_PER_LAYER + k];
            tfm_quantize(f, base[k] + (size_t)l * qm->n * qm->d, qm->n, qm->d, (void *)qm->data,
                         (uint16_t *)qm->scale);
        }
    tfm_quantize(f, m->w.wcls, V, d, (void *)q->cls.data, (uint16_t *)q->cls.scale);
    /* the float32 that stays, in a buffer of its own */
    float *p = small;
    float **keepers[4] = {&m->w.token_embedding, &m->w.rms_att, &m->w.rms_ffn, &m->w.rms_final};
    for (int i = 0; i < 4; i++) {
        memcpy(p, *keepers[i], sizes[i] * sizeof(float));
        *keepers[i] = p;
        p += sizes[i];
    }
    tfm__free(m->data);
    m->data = small;
    m->n_floats = keep;
    m->w.wq = m->w.wk = m->w.wv = m->w.wo = m->w.w1 = m->w.w2 = m->w.w3 = m->w.wcls = NULL;
    m->q = q;
    char fmt[8];
    snprintf(fmt, sizeof fmt, "%s", tfm_wformat_name(f));
    tfm_model_meta_set(m, "weights", fmt);
    return TFM_OK;
}

/* ---- products --------------------------------------------------------------------- */

typedef struct qmm_args {
    float *y;
    const float *x;
    const tfm_qmat *w;
    int B;
    const void *xq;
    float *tiles;
} qmm_args;

static void kernel_task(void *ctx, int chunk, int n_chunks, int thread)
{
    const qmm_args *a = ctx;
    int lo, hi;
    (void)thread;
    tfm__split(a->w->n, chunk, n_chunks, 16, &lo, &hi);
    if (lo < hi)
        tfm_qmatmul_rows(a->w, a->y, a->w->n, a->x, a->xq, a->B, lo, hi);
}

static void tile_task(void *ctx, int chunk, int n_chunks, int thread)
{
    const qmm_args *a = ctx;
    int lo, hi, d = a->w->d, n = a->w->n;
    tfm__split(n, chunk, n_chunks, TFM__QTILE_ROWS, &lo, &hi);
    float *tile = a->tiles + (size_t)thread * TFM__QTILE_ROWS * d;
    for (int r = lo; r < hi; r += TFM__QTILE_ROWS) {
        int rows = hi - r < TFM__QTILE_ROWS ? hi - r : TFM__QTILE_ROWS;
        tfm_dequantize_rows(a->w, r, r + rows, tile);
        /* Y[:, r:r+rows] = X · tileᵀ */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, a->B, rows, d, 1.0f, a->x, d, tile,
                    d, 0.0f, a->y + r, n);
    }
}

void tfm__qmatmul(tfm__pool *pool, float *y, const float *x, const tfm_qmat *w, int B, void *xq,
                  float *tiles)
{
    qmm_args a = {y, x, w, B, xq, tiles};
    if (B <= TFM__QBATCH_MAX) {
        tfm_qx_prepare(w->fmt, x, B, w->d, xq);
        if ((size_t)B * w->n * w->d < (1u << 14))
            kernel_task(&a, 0, 1, 0);
        else
            tfm__pool_run(pool, kernel_task, &a,
                          tfm__pool_chunks(pool, (w->n + 15) / 16,
                                           (size_t)w->n * w->d < (1 << 20) ? 2 : 4));
    } else {
        tfm__pool_run(pool, tile_task, &a,
                      tfm__pool_chunks(pool, (w->n + TFM__QTILE_ROWS - 1) / TFM__QTILE_ROWS, 2));
    }
}
