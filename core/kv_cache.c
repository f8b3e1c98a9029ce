/*
 * kv_cache.c — the per-sequence state and its KV cache in f32, bf16 or q8
 * (formats in tfm/model.h): allocation, copy, the row conversions the
 * forward writes with and the dequantisation prefill's tiles read with.
 *
 * Layout.  Keys and values are two arrays of (layer, max_seq, kv_dim)
 * elements, as the float32 cache has always been, so position p of kv
 * head h of layer l is at ((l * max_seq) + p) * kv_dim + h * hs in every
 * format.  q8 keeps one float32 scale per (layer, position, kv head) in
 * two more arrays (layer, max_seq, n_kv_heads): a head's row of hs values
 * is the unit a query reads in one dot product, so one scale per row costs
 * one multiply per score and works for any head size (the weights' 32-value
 * blocks would not divide 48).  The scale is max|x| / 127 of the row and
 * each value rounds to nearest: the error is at most half a step,
 * max|x| / 254, per element.  bf16 rounds to nearest even (quant.c's
 * conversion): a relative error of at most 2^-9.
 *
 * Bytes per position of one sequence: n_softmax_layers * 2 * kv_dim * (4, 2, 1)
 * plus, in q8, n_softmax_layers * 2 * n_kv_heads * 4 (tfm_kv_bytes_per_token).
 *
 * The float32 format keeps key_cache / value_cache as before (the f32 paths
 * of forward.c and attention.c are the code they were); the others leave
 * them NULL and use kq / vq (and kscale / vscale).
 *
 * Linear layers (model_mixer.c) have no cache: "layer" above is the
 * softmax layer's ordinal among the softmax layers, and each linear layer
 * has a tfm_linattn_state (S, z: a fixed size whatever max_seq is), all of
 * them in one allocation made with the state.  Such a state sums the whole
 * prefix, so a copy can only take all of src's positions.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kv_cache.h"

const char *tfm_kv_format_name(tfm_kv_format f)
{
    static const char *names[] = {"f32", "bf16", "q8"};
    return (unsigned)f <= TFM_KV_Q8 ? names[f] : NULL;
}

tfm_status tfm_kv_format_parse(const char *name, tfm_kv_format *out)
{
    for (int f = TFM_KV_F32; name && f <= TFM_KV_Q8; f++)
        if (strcmp(name, tfm_kv_format_name((tfm_kv_format)f)) == 0) {
            *out = (tfm_kv_format)f;
            return TFM_OK;
        }
    return TFM_E_INVALID;
}

static size_t elem_bytes(tfm_kv_format f)
{
    return f == TFM_KV_F32 ? 4 : f == TFM_KV_BF16 ? 2 : f == TFM_KV_Q8 ? 1 : 0;
}

static size_t kv_dim(const tfm_config *c)
{
    return (size_t)c->dim / (size_t)c->n_heads * (size_t)c->n_kv_heads;
}

static int n_softmax(const tfm_config *c)
{
    return c->n_layers - tfm_config_n_linear(c);
}

size_t tfm_kv_bytes_per_token(const tfm_config *c, tfm_kv_format f)
{
    if (!c || !elem_bytes(f) || c->n_heads < 1)
        return 0;
    size_t row = kv_dim(c) * elem_bytes(f);
    if (f == TFM_KV_Q8)
        row += (size_t)c->n_kv_heads * sizeof(float);
    return (size_t)n_softmax(c) * 2 * row;
}

/* One layer's state bytes rounded up to 64, so that each starts on a line. */
static size_t lin_stride(const tfm_config *c)
{
    tfm_linattn_shape sh = tfm__linattn_shape(c);
    return (tfm_linattn_state_bytes(&sh) + 63) & ~(size_t)63;
}

size_t tfm_linear_state_bytes(const tfm_config *c)
{
    if (!c || !c->linear_layers || c->n_heads < 1)
        return 0;
    return (size_t)tfm_config_n_linear(c) * lin_stride(c);
}

tfm_status tfm_state_create(const tfm_model *m, int max_seq, tfm_state **out)
{
    return tfm_state_create_fmt(m, max_seq, TFM_KV_F32, out);
}

tfm_status tfm_state_create_fmt(const tfm_model *m, int max_seq, tfm_kv_format f,
                                tfm_state **out)
{
    *out = NULL;
    if (!m || !elem_bytes(f))
        return TFM_E_INVALID;
    if (max_seq == 0)
        max_seq = m->cfg.seq_len;
    if (max_seq < 0 || max_seq > m->cfg.seq_len)
        return TFM_E_RANGE;
    tfm_state *s = calloc(1, sizeof *s);
    if (!s)
        return TFM_E_NOMEM;
    const tfm_config *c = &m->cfg;
    size_t rows = (size_t)n_softmax(c) * (size_t)max_seq;
    size_t n = rows * kv_dim(c), nb = n * elem_bytes(f);
    s->model = m;
    s->max_seq = max_seq;
    s->kv_format = f;
    int nl = tfm_config_n_linear(c);
    if (nl) {
        tfm_linattn_shape sh = tfm__linattn_shape(c);
        size_t stride = lin_stride(c);
        s->lin_bytes = tfm_linear_state_bytes(c);
        s->lin = calloc((size_t)nl, sizeof *s->lin);
        s->lin_mem = tfm__alloc(s->lin_bytes);
        if (!s->lin || !s->lin_mem)
            goto fail;
        for (int j = 0; j < nl; j++)
            if (tfm_linattn_state_init(&s->lin[j], &sh, (char *)s->lin_mem + (size_t)j * stride,
                                       stride) != TFM_OK)
                goto fail;
    }
    if (nb == 0) /* every layer linear: no cache */
        ;
    else if (f == TFM_KV_F32) {
        s->key_cache = tfm__alloc(nb);
        s->value_cache = tfm__alloc(nb);
        if (!s->key_cache || !s->value_cache)
            goto fail;
    } else {
        s->kq = tfm__alloc(nb);
        s->vq = tfm__alloc(nb);
        if (!s->kq || !s->vq)
            goto fail;
        if (f == TFM_KV_Q8) {
            size_t ns = rows * (size_t)c->n_kv_heads * sizeof(float);
            s->kscale = tfm__alloc(ns);
            s->vscale = tfm__alloc(ns);
            if (!s->kscale || !s->vscale)
                goto fail;
            nb += ns;
        }
    }
    s->kv_bytes = 2 * nb;
    *out = s;
    return TFM_OK;
fail:
    tfm_state_destroy(s);
    return TFM_E_NOMEM;
}

void tfm_state_reset(tfm_state *s)
{
    if (s) {
        s->pos = 0;
        s->prefill_attn_seconds = 0;
        for (int j = 0, nl = tfm_config_n_linear(&s->model->cfg); j < nl; j++)
            tfm_linattn_state_reset(&s->lin[j]);
    }
}

/* Copies n positions of each layer of one (layer, max_seq, width) array of
 * elements of `size` bytes. */
static void copy_layers(void *dst, int dst_seq, const void *src, int src_seq, int n_layers,
                        int n, size_t width, size_t size)
{
    for (int l = 0; l < n_layers; l++)
        memcpy((char *)dst + (size_t)l * dst_seq * width * size,
               (const char *)src + (size_t)l * src_seq * width * size, (size_t)n * width * size);
}

tfm_status tfm_state_copy(tfm_state *dst, const tfm_state *src, int n)
{
    if (!dst || !src || dst->model != src->model || dst->kv_format != src->kv_format)
        return TFM_E_INVALID;
    if (n < 0 || n > src->pos || n > dst->max_seq)
        return TFM_E_RANGE;
    const tfm_config *c = &src->model->cfg;
    int nl = tfm_config_n_linear(c);
    if (nl && n != src->pos)
        return TFM_E_UNSUPPORTED;
    for (int j = 0; j < nl; j++)
        tfm_linattn_state_copy(&dst->lin[j], &src->lin[j]);
    size_t kv = kv_dim(c), es = elem_bytes(src->kv_format);
    int L = n_softmax(c);
    if (src->kv_format == TFM_KV_F32) {
        copy_layers(dst->key_cache, dst->max_seq, src->key_cache, src->max_seq, L, n, kv, es);
        copy_layers(dst->value_cache, dst->max_seq, src->value_cache, src->max_seq, L, n, kv, es);
    } else {
        copy_layers(dst->kq, dst->max_seq, src->kq, src->max_seq, L, n, kv, es);
        copy_layers(dst->vq, dst->max_seq, src->vq, src->max_seq, L, n, kv, es);
    }
    if (src->kv_format == TFM_KV_Q8) {
        size_t nh = (size_t)c->n_kv_heads;
        copy_layers(dst->kscale, dst->max_seq, src->kscale, src->max_seq, L, n, nh, sizeof(float));
        copy_layers(dst->vscale, dst->max_seq, src->vscale, src->max_seq, L, n, nh, sizeof(float));
    }
    dst->pos = n;
    dst->prefill_attn_seconds = 0;
    return TFM_OK;
}

void tfm_state_destroy(tfm_state *s)
{
    if (!s)
        return;
    tfm__free(s->key_cache);
    tfm__free(s->value_cache);
    tfm__free(s->kq);
    tfm__free(s->vq);
    tfm__free(s->kscale);
    tfm__free(s->vscale);
    tfm__free(s->lin_mem);
    free(s->lin);
    free(s);
}

/* ---- rows ------------------------------------------------------------------ */

tfm__kv tfm__kv_head(const tfm_state *st, int values, int l, int h)
{
    const tfm_config *c = &st->model->cfg;
    int hs = c->dim / c->n_heads;
    size_t kv = kv_dim(c), row0 = (size_t)l * (size_t)st->max_seq;
    size_t off = row0 * kv + (size_t)h * (size_t)hs;
    tfm__kv v = {st->kv_format, NULL, NULL, kv, (size_t)c->n_kv_heads};
    switch (st->kv_format) {
    case TFM_KV_BF16:
        v.data = (const uint16_t *)(values ? st->vq : st->kq) + off;
        break;
    case TFM_KV_Q8:
        v.data = (const int8_t *)(values ? st->vq : st->kq) + off;
        v.scale = (values ? st->vscale : st->kscale) + row0 * v.lds + (size_t)h;
        break;
    default:
        v.data = (values ? st->value_cache : st->key_cache) + off;
        break;
    }
    return v;
}

void tfm__kv_store(tfm_state *st, int values, int l, int pos, const float *row)
{
    const tfm_config *c = &st->model->cfg;
    int hs = c->dim / c->n_heads, nh = c->n_kv_heads;
    size_t kv = kv_dim(c), r = (size_t)l * (size_t)st->max_seq + (size_t)pos;
    switch (st->kv_format) {
    case TFM_KV_BF16: {
        uint16_t *d = (uint16_t *)(values ? st->vq : st->kq) + r * kv;
        for (size_t i = 0; i < kv; i++)
            d[i] = tfm_f32_to_bf16(row[i]);
        break;
    }
    case TFM_KV_Q8: {
        int8_t *d = (int8_t *)(values ? st->vq : st->kq) + r * kv;
        float *sc = (values ? st->vscale : st->kscale) + r * (size_t)nh;
        for (int h = 0; h < nh; h++)
            sc[h] = tfm__q8_absmax(row + (size_t)h * hs, hs, d + (size_t)h * hs);
        break;
    }
    default:
        memcpy((values ? st->value_cache : st->key_cache) + r * kv, row, kv * sizeof(float));
        break;
    }
}

void tfm__kv_load_rows(const tfm__kv *v, int p0, int n, int hs, float *out)
{
    for (int j = 0; j < n; j++) {
        size_t p = (size_t)(p0 + j);
        float *o = out + (size_t)j * hs;
        switch (v->fmt) {
        case TFM_KV_BF16: {
            const uint16_t *x = (const uint16_t *)v->data + p * v->ld;
            for (int i = 0; i < hs; i++)
                o[i] = tfm__bf16_f32(x[i]);
            break;
        }
        case TFM_KV_Q8: {
            const int8_t *x = (const int8_t *)v->data + p * v->ld;
            float s = v->scale[p * v->lds];
            for (int i = 0; i < hs; i++)
                o[i] = s * (float)x[i];
            break;
        }
        default:
            memcpy(o, (const float *)v->data + p * v->ld, (size_t)hs * sizeof(float));
            break;
        }
    }
}
