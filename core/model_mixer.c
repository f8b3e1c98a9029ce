/*
 * model_mixer.c — which token mixer each layer uses (issue 14): the
 * config's linear_layers bits and feature_dim, their validation and
 * defaults, and the "mixer" spec strings the CLI and the safetensors
 * metadata carry ("softmax", "linear", "linear,softmax,...").
 *
 * A linear layer keeps wq, wk, wv, wo as a softmax layer does (RoPE too,
 * so both kinds run the same projection code) and adds wfeat (f, head_size),
 * which projects each head's q and k to the f dimensions Based's feature
 * map expands (tfm/linear_attn.h).  The layer's weights are stored after
 * the llama2.c arrays, indexed by the layer's ordinal among linear layers,
 * so an all-softmax model's layout is unchanged; the KV cache likewise is
 * indexed by the ordinal among softmax layers (tfm__softmax_ordinal).
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

int tfm_config_layer_linear(const tfm_config *c, int l)
{
    return l >= 0 && l < 64 && (c->linear_layers >> l & 1u);
}

int tfm_config_n_linear(const tfm_config *c)
{
    return __builtin_popcountll(c->linear_layers);
}

int tfm__linear_ordinal(const tfm_config *c, int l)
{
    uint64_t below = l >= 64 ? c->linear_layers : c->linear_layers & ((1ull << l) - 1);
    return __builtin_popcountll(below);
}

int tfm__softmax_ordinal(const tfm_config *c, int l)
{
    return l - tfm__linear_ordinal(c, l);
}

tfm_linattn_shape tfm__linattn_shape(const tfm_config *c)
{
    tfm_linattn_shape sh = {c->n_heads, c->n_kv_heads, c->feature_dim, c->dim / c->n_heads};
    return sh;
}

void tfm__config_mixer_defaults(tfm_config *c)
{
    if (c->linear_layers && c->feature_dim == 0 && c->n_heads > 0) {
        int hs = c->dim / c->n_heads;
        c->feature_dim = hs < 16 ? hs : 16;
    }
}

const char *tfm__config_mixer_check(const tfm_config *c)
{
    if (!c->linear_layers)
        return c->feature_dim < 0 ? "feature_dim must not be negative" : NULL;
    if (c->n_layers > 64)
        return "linear_layers: linear layers need n_layers <= 64";
    if (c->n_layers < 64 && (c->linear_layers >> c->n_layers))
        return "linear_layers: a bit is set past n_layers";
    int hs = c->dim / c->n_heads;
    if (c->feature_dim < 1 || c->feature_dim > hs || c->feature_dim > TFM_LINATTN_MAX_F)
        return "feature_dim must be between 1 and the head size (dim / n_heads) for linear layers";
    tfm_linattn_shape sh = tfm__linattn_shape(c);
    if (tfm_linattn_shape_check(&sh) != TFM_OK)
        return "linear_layers: heads or head size out of the linear mixer's range";
    return NULL;
}

tfm_status tfm_mixer_parse(const char *spec, int n_layers, uint64_t *linear_layers, char *err,
                           size_t errlen)
{
    if (!spec || !linear_layers || n_layers < 1) {
        if (err && errlen)
            snprintf(err, errlen, "mixer: no spec");
        return TFM_E_INVALID;
    }
    int words = 1;
    for (const char *p = spec; *p; p++)
        words += *p == ',';
    uint64_t bits = 0;
    const char *p = spec;
    for (int i = 0; i < words; i++) {
        size_t n = strcspn(p, ",");
        int lin = n == 6 && !strncmp(p, "linear", 6);
        if (!lin && !(n == 7 && !strncmp(p, "softmax", 7))) {
            if (err && errlen)
                snprintf(err, errlen, "mixer: unknown mixer \"%.*s\" (softmax or linear)",
                         (int)(n < 32 ? n : 32), p);
            return TFM_E_INVALID;
        }
        if (lin && (words == 1 ? n_layers : i + 1) > 64) {
            if (err && errlen)
                snprintf(err, errlen, "mixer: linear layers need n_layers <= 64 (have %d)",
                         n_layers);
            return TFM_E_INVALID;
        }
        if (lin)
            bits |= words == 1 ? (n_layers == 64 ? ~0ull : (1ull << n_layers) - 1) : 1ull << i;
        p += n + (p[n] == ',');
    }
    if (words > 1 && words != n_layers) {
        if (err && errlen)
            snprintf(err, errlen, "mixer: %d entries for %d layers", words, n_layers);
        return TFM_E_INVALID;
    }
    *linear_layers = bits;
    return TFM_OK;
}

tfm_status tfm_mixer_format(const tfm_config *c, char *buf, size_t len)
{
    int nl = tfm_config_n_linear(c);
    size_t at = 0;
    if (!buf || !len)
        return TFM_E_RANGE;
    if (nl == 0 || nl == c->n_layers) {
        const char *w = nl ? "linear" : "softmax";
        if (strlen(w) >= len)
            return TFM_E_RANGE;
        strcpy(buf, w);
        return TFM_OK;
    }
    buf[0] = 0;
    for (int l = 0; l < c->n_layers; l++) {
        int n = snprintf(buf + at, len - at, "%s%s", l ? "," : "",
                         tfm_config_layer_linear(c, l) ? "linear" : "softmax");
        if (n < 0 || (size_t)n >= len - at)
            return TFM_E_RANGE;
        at += (size_t)n;
    }
    return TFM_OK;
}
