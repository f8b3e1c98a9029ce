/*
 * model.c — config validation, weight allocation and layout, random init,
 * metadata, per-sequence state.  The forward passes are in forward.c.
 *
 * All weights live in one allocation laid out in llama2.c's order
 * (embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls),
 * so a llama2.c file body maps onto it in order and a safetensors file's
 * per-layer tensors are slices of the stacked arrays.  The linear layers'
 * feature projections (wfeat, model_mixer.c) come last, so a model without
 * linear layers has exactly llama2.c's layout.
 */
#include "tfm/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void tfm_config_defaults(tfm_config *c)
{
    if (c->norm_eps == 0.0f)
        c->norm_eps = 1e-5f;
    if (c->rope_theta == 0.0f)
        c->rope_theta = 10000.0f;
    tfm__config_mixer_defaults(c);
}

/* Upper limits that keep every size product far from overflow and every
 * allocation plausible; beyond them a file is corrupt, not a model. */
#define MAX_DIM (1 << 16)
#define MAX_LAYERS 1024
#define MAX_VOCAB (1 << 22)
#define MAX_SEQ (1 << 20)
#define MAX_PARAMS ((size_t)1 << 34) /* 64 GiB of float32 */

static tfm_status bad(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return TFM_E_INVALID;
}

tfm_status tfm_config_validate(const tfm_config *c, char *err, size_t errlen)
{
    if (!c)
        return bad(err, errlen, "config is NULL");
    if (c->dim <= 0 || c->dim > MAX_DIM)
        return bad(err, errlen, "dim must be between 1 and 65536");
    if (c->hidden_dim <= 0 || c->hidden_dim > 4 * MAX_DIM)
        return bad(err, errlen, "hidden_dim must be between 1 and 262144");
    if (c->n_layers <= 0 || c->n_layers > MAX_LAYERS)
        return bad(err, errlen, "n_layers must be between 1 and 1024");
    if (c->n_heads <= 0 || c->dim % c->n_heads != 0)
        return bad(err, errlen, "n_heads must be positive and divide dim");
    if ((c->dim / c->n_heads) % 2 != 0)
        return bad(err, errlen, "head size (dim / n_heads) must be even for RoPE");
    if (c->n_kv_heads <= 0 || c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0)
        return bad(err, errlen, "n_kv_heads must be positive and divide n_heads");
    if (c->vocab_size <= 0 || c->vocab_size > MAX_VOCAB)
        return bad(err, errlen, "vocab_size must be between 1 and 4194304");
    if (c->seq_len <= 0 || c->seq_len > MAX_SEQ)
        return bad(err, errlen, "seq_len must be between 1 and 1048576");
    if (!(c->norm_eps > 0.0f && c->norm_eps < 1.0f))
        return bad(err, errlen, "norm_eps must be in (0, 1)");
    if (!(c->rope_theta > 1.0f && isfinite(c->rope_theta)))
        return bad(err, errlen, "rope_theta must be > 1");
    const char *mix = tfm__config_mixer_check(c);
    if (mix)
        return bad(err, errlen, mix);
    if (tfm_config_n_params(c) > MAX_PARAMS)
        return bad(err, errlen, "model too large");
    return TFM_OK;
}

#define N_REGIONS 13

/* Float counts of each region, in llama2.c's order, then wfeat. */
static void layout(const tfm_config *c, size_t sz[N_REGIONS])
{
    size_t d = (size_t)c->dim, h = (size_t)c->hidden_dim, L = (size_t)c->n_layers;
    size_t kv = d / (size_t)c->n_heads * (size_t)c->n_kv_heads;
    size_t V = (size_t)c->vocab_size;
    sz[0] = V * d;      /* token_embedding */
    sz[1] = L * d;      /* rms_att */
    sz[2] = L * d * d;  /* wq */
    sz[3] = L * kv * d; /* wk */
    sz[4] = L * kv * d; /* wv */
    sz[5] = L * d * d;  /* wo */
    sz[6] = L * d;      /* rms_ffn */
    sz[7] = L * h * d;  /* w1 */
    sz[8] = L * d * h;  /* w2 */
    sz[9] = L * h * d;  /* w3 */
    sz[10] = d;         /* rms_final */
    sz[11] = c->shared_classifier ? 0 : V * d; /* wcls */
    /* wfeat: n_linear x (f, head_size); a stray feature_dim of a config
     * without linear layers counts nothing */
    sz[12] = c->linear_layers && c->feature_dim > 0
                 ? (size_t)tfm_config_n_linear(c) * (size_t)c->feature_dim * (d / (size_t)c->n_heads)
                 : 0;
}

size_t tfm_config_n_params(const tfm_config *c)
{
    size_t sz[N_REGIONS], n = 0;
    layout(c, sz);
    for (int i = 0; i < N_REGIONS; i++)
        n += sz[i];
    return n;
}

static void point_weights(tfm_model *m)
{
    size_t sz[N_REGIONS];
    layout(&m->cfg, sz);
    float *p = m->data;
    float **dst[N_REGIONS] = {&m->w.token_embedding, &m->w.rms_att, &m->w.wq, &m->w.wk,
                              &m->w.wv, &m->w.wo, &m->w.rms_ffn, &m->w.w1,
                              &m->w.w2, &m->w.w3, &m->w.rms_final, &m->w.wcls, &m->w.wfeat};
    for (int i = 0; i < N_REGIONS; i++) {
        *dst[i] = p;
        p += sz[i];
    }
    if (m->cfg.shared_classifier)
        m->w.wcls = m->w.token_embedding;
    if (!sz[12])
        m->w.wfeat = NULL;
}

/* The RoPE angles exactly as run.c computes them (float powf/cosf/sinf), so
 * that imported llama2.c models produce the same logits. */
static void fill_rope(tfm_model *m)
{
    int hs = m->cfg.dim / m->cfg.n_heads, half = hs / 2;
    for (int pos = 0; pos < m->cfg.seq_len; pos++) {
        for (int i = 0; i < half; i++) {
            int head_dim = 2 * i;
            float freq = 1.0f / powf(m->cfg.rope_theta, head_dim / (float)hs);
            float val = (float)pos * freq;
            m->rope_cos[(size_t)pos * half + i] = cosf(val);
            m->rope_sin[(size_t)pos * half + i] = sinf(val);
        }
    }
}

tfm_status tfm_model_create(const tfm_config *c, tfm_model **out, char *err, size_t errlen)
{
    *out = NULL;
    tfm_status st = tfm_config_validate(c, err, errlen);
    if (st != TFM_OK)
        return st;
    tfm_model *m = calloc(1, sizeof *m);
    if (!m)
        goto fail;
    m->cfg = *c;
    m->n_floats = tfm_config_n_params(c);
    m->data = tfm__alloc(m->n_floats * sizeof(float));
    size_t rope = (size_t)c->seq_len * (size_t)(c->dim / c->n_heads / 2);
    m->rope_cos = tfm__alloc(rope * sizeof(float));
    m->rope_sin = tfm__alloc(rope * sizeof(float));
    if (!m->data || !m->rope_cos || !m->rope_sin)
        goto fail;
    memset(m->data, 0, m->n_floats * sizeof(float));
    point_weights(m);
    fill_rope(m);
    m->tokenizer = TFM_TOKENIZER_BYTE;
    *out = m;
    return TFM_OK;
fail:
    tfm_model_destroy(m);
    if (err && errlen)
        snprintf(err, errlen, "out of memory for %zu parameters", tfm_config_n_params(c));
    return TFM_E_NOMEM;
}

void tfm_model_destroy(tfm_model *m)
{
    if (!m)
        return;
    tfm__qweights_free(m->q);
    tfm__free(m->data);
    tfm__free(m->rope_cos);
    tfm__free(m->rope_sin);
    free(m);
}

static void fill_uniform(float *p, size_t n, float scale, float center, uint64_t *s)
{
    for (size_t i = 0; i < n; i++) {
        float u = (float)((tfm__splitmix64(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
        p[i] = center + scale * u;
    }
}

void tfm_model_init_random(tfm_model *m, uint64_t seed)
{
    const tfm_config *c = &m->cfg;
    size_t d = (size_t)c->dim, h = (size_t)c->hidden_dim, L = (size_t)c->n_layers;
    size_t kv = d / (size_t)c->n_heads * (size_t)c->n_kv_heads;
    uint64_t s = seed;
    float sd = 1.0f / sqrtf((float)d), sh = 1.0f / sqrtf((float)h);
    fill_uniform(m->w.token_embedding, (size_t)c->vocab_size * d, 1.0f, 0.0f, &s);
    fill_uniform(m->w.rms_att, L * d, 0.1f, 1.0f, &s);
    fill_uniform(m->w.wq, L * d * d, sd, 0.0f, &s);
    fill_uniform(m->w.wk, L * kv * d, sd, 0.0f, &s);
    fill_uniform(m->w.wv, L * kv * d, sd, 0.0f, &s);
    fill_uniform(m->w.wo, L * d * d, sd, 0.0f, &s);
    fill_uniform(m->w.rms_ffn, L * d, 0.1f, 1.0f, &s);
    fill_uniform(m->w.w1, L * h * d, sd, 0.0f, &s);
    fill_uniform(m->w.w2, L * d * h, sh, 0.0f, &s);
    fill_uniform(m->w.w3, L * h * d, sd, 0.0f, &s);
    fill_uniform(m->w.rms_final, d, 0.1f, 1.0f, &s);
    if (!c->shared_classifier)
        fill_uniform(m->w.wcls, (size_t)c->vocab_size * d, sd, 0.0f, &s);
    if (m->w.wfeat) { /* drawn last: softmax models keep their values */
        size_t hs = d / (size_t)c->n_heads;
        fill_uniform(m->w.wfeat, (size_t)tfm_config_n_linear(c) * (size_t)c->feature_dim * hs,
                     1.0f / sqrtf((float)hs), 0.0f, &s);
    }
}

const char *tfm_model_meta_get(const tfm_model *m, const char *key)
{
    for (int i = 0; i < m->n_meta; i++)
        if (strcmp(m->meta[i].key, key) == 0)
            return m->meta[i].value;
    return NULL;
}

tfm_status tfm_model_meta_set(tfm_model *m, const char *key, const char *value)
{
    if (!key || !value || !*key || strlen(key) >= sizeof m->meta[0].key ||
        strlen(value) >= sizeof m->meta[0].value)
        return TFM_E_INVALID;
    for (int i = 0; i < m->n_meta; i++) {
        if (strcmp(m->meta[i].key, key) == 0) {
            strcpy(m->meta[i].value, value);
            return TFM_OK;
        }
    }
    if (m->n_meta >= TFM_META_MAX)
        return TFM_E_RANGE;
    strcpy(m->meta[m->n_meta].key, key);
    strcpy(m->meta[m->n_meta].value, value);
    m->n_meta++;
    return TFM_OK;
}

/* The per-sequence state and its KV cache: kv_cache.c. */
