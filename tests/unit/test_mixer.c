/*
 * test_mixer.c — linear-attention layers in the model (issue 14): the
 * config and its mixer specs, whole-model logits of hybrid and all-linear
 * models against a plain double-precision forward written here (linear
 * layers by the quadratic form of Based's kernel, phi(q).phi(k) = 1 +
 * a/sqrt(f) + a^2/(2f) with a = q.k, summed over every earlier position),
 * prefill against decode, prefill in pieces, batched decode, the state
 * (fixed size, reset, copy), safetensors round trips and refusals, the
 * op accounting's kind "linear", and what cannot hold such layers yet
 * (llama2.c files, quantisation, the trainer).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tfm/checkpoint.h"
#include "tfm/linear_attn.h"
#include "tfm/model.h"
#include "tfm/quant.h"
#include "tfm/train.h"

#define ALL_LINEAR 3u  /* two layers, both linear */
#define HYBRID 1u      /* ["linear", "softmax"] */

static tfm_model *mixer_model(int layers, uint64_t linear, int f, int seq_len, int shared,
                              uint64_t seed)
{
    tfm_config c = {.dim = 64, .hidden_dim = 96, .n_layers = layers, .n_heads = 4,
                    .n_kv_heads = 2, .vocab_size = 300, .seq_len = seq_len,
                    .shared_classifier = shared, .linear_layers = linear, .feature_dim = f};
    tfm_config_defaults(&c);
    tfm_model *m = NULL;
    char err[256] = "";
    tfm_status s = tfm_model_create(&c, &m, err, sizeof err);
    if (s != TFM_OK)
        fail_msg("tfm_model_create: %s: %s", tfm_strerror(s), err);
    tfm_model_init_random(m, seed);
    return m;
}

/* ---- the plain reference forward, in double ------------------------------ */

/* y (n, out) = x (n, in) · W^T, W (out, in) float */
static void mm(double *y, const double *x, const float *w, int n, int in, int out)
{
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out; o++) {
            double s = 0;
            for (int i = 0; i < in; i++)
                s += x[(size_t)t * in + i] * (double)w[(size_t)o * in + i];
            y[(size_t)t * out + o] = s;
        }
}

static void rms(double *o, const double *x, const float *w, int n, int d, double eps)
{
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int i = 0; i < d; i++)
            ss += x[(size_t)t * d + i] * x[(size_t)t * d + i];
        double r = 1.0 / sqrt(ss / d + eps);
        for (int i = 0; i < d; i++)
            o[(size_t)t * d + i] = (double)w[i] * x[(size_t)t * d + i] * r;
    }
}

static void rope(const tfm_model *m, double *v, int n, int heads, int hs)
{
    int half = hs / 2;
    for (int t = 0; t < n; t++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++) {
                double cs = m->rope_cos[(size_t)t * half + i], sn = m->rope_sin[(size_t)t * half + i];
                double *p = v + ((size_t)t * heads + h) * hs + 2 * i;
                double a = p[0], b = p[1];
                p[0] = a * cs - b * sn;
                p[1] = a * sn + b * cs;
            }
}

/* logits (n, vocab) of every position of tokens[0..n) from an empty state */
static void ref_forward(const tfm_model *m, const int *tok, int n, double *logits)
{
    const tfm_config *c = &m->cfg;
    int d = c->dim, hs = d / c->n_heads, nh = c->n_heads, nkv = c->n_kv_heads, kvd = hs * nkv;
    int hid = c->hidden_dim, V = c->vocab_size, f = c->feature_dim, group = nh / nkv;
    double *x = calloc((size_t)n * d, sizeof(double)), *xb = calloc((size_t)n * d, sizeof(double));
    double *q = calloc((size_t)n * d, sizeof(double)), *k = calloc((size_t)n * kvd, sizeof(double));
    double *v = calloc((size_t)n * kvd, sizeof(double)), *att = calloc((size_t)n * d, sizeof(double));
    double *o = calloc((size_t)n * d, sizeof(double)), *h1 = calloc((size_t)n * hid, sizeof(double));
    double *h3 = calloc((size_t)n * hid, sizeof(double));
    double *qf = calloc((size_t)n * nh * (f ? f : 1), sizeof(double));
    double *kf = calloc((size_t)n * nkv * (f ? f : 1), sizeof(double));
    double *sc = calloc((size_t)n, sizeof(double));
    for (int t = 0; t < n; t++)
        for (int i = 0; i < d; i++)
            x[(size_t)t * d + i] = m->w.token_embedding[(size_t)tok[t] * d + i];
    int n_lin = 0;
    for (int l = 0; l < c->n_layers; l++) {
        rms(xb, x, m->w.rms_att + (size_t)l * d, n, d, c->norm_eps);
        mm(q, xb, m->w.wq + (size_t)l * d * d, n, d, d);
        mm(k, xb, m->w.wk + (size_t)l * kvd * d, n, d, kvd);
        mm(v, xb, m->w.wv + (size_t)l * kvd * d, n, d, kvd);
        rope(m, q, n, nh, hs);
        rope(m, k, n, nkv, hs);
        if (c->linear_layers >> l & 1) {
            const float *wf = m->w.wfeat + (size_t)n_lin++ * f * hs;
            mm(qf, q, wf, n * nh, hs, f); /* each head's row of hs */
            mm(kf, k, wf, n * nkv, hs, f);
            for (int t = 0; t < n; t++)
                for (int h = 0; h < nh; h++) {
                    int g = h / group;
                    double den = 0, *out = att + (size_t)t * d + (size_t)h * hs;
                    for (int i = 0; i < hs; i++)
                        out[i] = 0;
                    for (int s = 0; s <= t; s++) {
                        double a = 0;
                        for (int i = 0; i < f; i++)
                            a += qf[((size_t)t * nh + h) * f + i] * kf[((size_t)s * nkv + g) * f + i];
                        double w = 1.0 + a / sqrt((double)f) + a * a / (2.0 * f);
                        den += w;
                        for (int i = 0; i < hs; i++)
                            out[i] += w * v[(size_t)s * kvd + (size_t)g * hs + i];
                    }
                    for (int i = 0; i < hs; i++)
                        out[i] /= den + (double)TFM_LINATTN_EPS;
                }
        } else {
            for (int t = 0; t < n; t++)
                for (int h = 0; h < nh; h++) {
                    int g = h / group;
                    double mx = -INFINITY, sum = 0, *out = att + (size_t)t * d + (size_t)h * hs;
                    for (int s = 0; s <= t; s++) {
                        double a = 0;
                        for (int i = 0; i < hs; i++)
                            a += q[(size_t)t * d + (size_t)h * hs + i] *
                                 k[(size_t)s * kvd + (size_t)g * hs + i];
                        sc[s] = a / sqrt((double)hs);
                        mx = sc[s] > mx ? sc[s] : mx;
                    }
                    for (int i = 0; i < hs; i++)
                        out[i] = 0;
                    for (int s = 0; s <= t; s++) {
                        double w = exp(sc[s] - mx);
                        sum += w;
                        for (int i = 0; i < hs; i++)
                            out[i] += w * v[(size_t)s * kvd + (size_t)g * hs + i];
                    }
                    for (int i = 0; i < hs; i++)
                        out[i] /= sum;
                }
        }
        mm(o, att, m->w.wo + (size_t)l * d * d, n, d, d);
        for (size_t i = 0; i < (size_t)n * d; i++)
            x[i] += o[i];
        rms(xb, x, m->w.rms_ffn + (size_t)l * d, n, d, c->norm_eps);
        mm(h1, xb, m->w.w1 + (size_t)l * hid * d, n, d, hid);
        mm(h3, xb, m->w.w3 + (size_t)l * hid * d, n, d, hid);
        for (size_t i = 0; i < (size_t)n * hid; i++)
            h1[i] = h1[i] / (1.0 + exp(-h1[i])) * h3[i];
        mm(o, h1, m->w.w2 + (size_t)l * d * hid, n, hid, d);
        for (size_t i = 0; i < (size_t)n * d; i++)
            x[i] += o[i];
    }
    rms(xb, x, m->w.rms_final, n, d, c->norm_eps);
    mm(logits, xb, m->w.wcls, n, d, V);
    free(x), free(xb), free(q), free(k), free(v), free(att), free(o), free(h1), free(h3);
    free(qf), free(kf), free(sc);
}

static void tokens_of(int *tok, int n, uint64_t seed)
{
    uint64_t s = seed;
    for (int i = 0; i < n; i++)
        tok[i] = (int)(tu_rng(&s) % 300);
}

/* ---- tests ----------------------------------------------------------------- */

static void test_mixer_config(void **state)
{
    (void)state;
    uint64_t bits = 0;
    char err[160], buf[64];
    assert_int_equal(tfm_mixer_parse("linear,softmax,linear", 3, &bits, err, sizeof err), TFM_OK);
    assert_int_equal(bits, 5u);
    assert_int_equal(tfm_mixer_parse("linear", 3, &bits, err, sizeof err), TFM_OK);
    assert_int_equal(bits, 7u);
    assert_int_equal(tfm_mixer_parse("softmax", 3, &bits, err, sizeof err), TFM_OK);
    assert_int_equal(bits, 0u);
    assert_int_equal(tfm_mixer_parse("linear,sofmax,linear", 3, &bits, err, sizeof err),
                     TFM_E_INVALID);
    assert_non_null(strstr(err, "sofmax"));
    assert_int_equal(tfm_mixer_parse("linear,softmax", 3, &bits, err, sizeof err), TFM_E_INVALID);
    assert_non_null(strstr(err, "2 entries for 3 layers"));
    assert_int_equal(tfm_mixer_parse("linear", 65, &bits, err, sizeof err), TFM_E_INVALID);
    assert_int_equal(tfm_mixer_parse("linear,", 2, &bits, err, sizeof err), TFM_E_INVALID);
    tfm_config c = {.dim = 64, .hidden_dim = 96, .n_layers = 3, .n_heads = 4, .n_kv_heads = 2,
                    .vocab_size = 300, .seq_len = 64, .linear_layers = 5};
    tfm_config_defaults(&c);
    assert_int_equal(c.feature_dim, 16); /* the default: head size 16 */
    assert_int_equal(tfm_mixer_format(&c, buf, sizeof buf), TFM_OK);
    assert_string_equal(buf, "linear,softmax,linear");
    assert_int_equal(tfm_mixer_format(&c, buf, 8), TFM_E_RANGE);
    assert_int_equal(tfm_config_n_linear(&c), 2);
    assert_true(tfm_config_layer_linear(&c, 2) && !tfm_config_layer_linear(&c, 1));
    assert_int_equal(tfm_config_validate(&c, err, sizeof err), TFM_OK);
    /* the parameters: two wfeat of (16, 16) on top of the softmax model */
    tfm_config s = c;
    s.linear_layers = 0;
    assert_int_equal(tfm_config_n_params(&c), tfm_config_n_params(&s) + 2 * 16 * 16);
    c.feature_dim = 17;
    assert_int_equal(tfm_config_validate(&c, err, sizeof err), TFM_E_INVALID);
    assert_non_null(strstr(err, "feature_dim"));
    c.feature_dim = 8, c.linear_layers = 8; /* layer 3 of 3 */
    assert_int_equal(tfm_config_validate(&c, err, sizeof err), TFM_E_INVALID);
    assert_non_null(strstr(err, "linear_layers"));
    c.n_layers = 65, c.linear_layers = 1;
    assert_int_equal(tfm_config_validate(&c, err, sizeof err), TFM_E_INVALID);
    assert_non_null(strstr(err, "n_layers <= 64"));
}

/* Every row's logits of a prefill (in chunks of 8 rows, 1 and 2 threads)
 * against the double forward: hybrid, all-linear, softmax-linear-softmax. */
static void test_mixer_matches_reference(void **state)
{
    (void)state;
    struct { int layers; uint64_t lin; int f; int shared; } cases[] = {
        {2, HYBRID, 8, 1}, {2, ALL_LINEAR, 16, 0}, {3, 2u, 4, 1}};
    enum { N = 21 };
    int tok[N];
    tokens_of(tok, N, 11);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        tfm_model *m = mixer_model(cases[ci].layers, cases[ci].lin, cases[ci].f, 64,
                                   cases[ci].shared, 40 + ci);
        int V = m->cfg.vocab_size;
        double *ref = malloc((size_t)N * V * sizeof(double));
        float *reff = malloc((size_t)N * V * sizeof(float)), *got = malloc((size_t)N * V * sizeof(float));
        ref_forward(m, tok, N, ref);
        for (size_t i = 0; i < (size_t)N * V; i++)
            reff[i] = (float)ref[i];
        for (int threads = 1; threads <= 2; threads++) {
            tfm_workspace *ws;
            tfm_state *st;
            assert_int_equal(tfm_workspace_create(m, 8, threads, &ws), TFM_OK);
            assert_int_equal(tfm_state_create(m, 0, &st), TFM_OK);
            assert_int_equal(tfm_prefill_rows(ws, st, tok, N, got), TFM_OK);
            tu_check_tensor("logits vs double reference", got, reff, (size_t)N * V, 1e-4f);
            tfm_state_destroy(st);
            tfm_workspace_destroy(ws);
        }
        free(ref), free(reff), free(got);
        tfm_model_destroy(m);
    }
}

/* Prefill == token-by-token decode; prefill in two pieces == one. */
static void test_mixer_prefill_decode(void **state)
{
    (void)state;
    enum { N = 30 };
    int tok[N];
    tokens_of(tok, N, 12);
    uint64_t mixes[] = {HYBRID, ALL_LINEAR};
    for (int mi = 0; mi < 2; mi++) {
        tfm_model *m = mixer_model(2, mixes[mi], 8, 64, 1, 50 + mi);
        int V = m->cfg.vocab_size;
        float *rows = malloc((size_t)N * V * sizeof(float)), *one = malloc(V * sizeof(float));
        float *two = malloc(V * sizeof(float));
        tfm_workspace *ws;
        tfm_state *a, *b;
        assert_int_equal(tfm_workspace_create(m, 64, 2, &ws), TFM_OK);
        assert_int_equal(tfm_state_create(m, 0, &a), TFM_OK);
        assert_int_equal(tfm_state_create(m, 0, &b), TFM_OK);
        assert_int_equal(tfm_prefill_rows(ws, a, tok, N, rows), TFM_OK);
        assert_int_equal(tfm_prefill(ws, b, tok, 1, one), TFM_OK);
        tu_check_tensor("decode row 0", one, rows, V, 1e-5f);
        for (int t = 1; t < N; t++) {
            assert_int_equal(tfm_decode(ws, &b, &tok[t], 1, one), TFM_OK);
            tu_check_tensor("decode row", one, rows + (size_t)t * V, V, 1e-4f);
        }
        assert_int_equal(b->pos, N);
        /* two pieces (13, then 17) against one */
        tfm_state_reset(b);
        assert_int_equal(b->lin[0].n_tokens, 0);
        assert_int_equal(tfm_prefill(ws, b, tok, 13, NULL), TFM_OK);
        assert_int_equal(tfm_prefill(ws, b, tok + 13, N - 13, two), TFM_OK);
        tu_check_tensor("two pieces", two, rows + (size_t)(N - 1) * V, V, 1e-5f);
        /* after a reset the state is empty again: the same logits as a fresh
         * state's (bit for bit: the same calls) */
        tfm_state_reset(a);
        assert_int_equal(tfm_prefill(ws, a, tok, N, one), TFM_OK);
        tfm_state_reset(b);
        assert_int_equal(tfm_prefill(ws, b, tok, N, two), TFM_OK);
        assert_memory_equal(one, two, V * sizeof(float));
        free(rows), free(one), free(two);
        tfm_state_destroy(a);
        tfm_state_destroy(b);
        tfm_workspace_destroy(ws);
        tfm_model_destroy(m);
    }
}

/* A batch of sequences at positions 3, 9 and 14 decodes as each alone. */
static void test_mixer_batched_decode(void **state)
{
    (void)state;
    tfm_model *m = mixer_model(2, HYBRID, 8, 64, 1, 60);
    int V = m->cfg.vocab_size, lens[3] = {3, 9, 14}, tok[20], first[3] = {7, 8, 9}, next[3];
    tokens_of(tok, 20, 13);
    tfm_workspace *ws;
    tfm_state *bat[3];
    float *lb = malloc((size_t)3 * V * sizeof(float)), *la = malloc(V * sizeof(float));
    assert_int_equal(tfm_workspace_create(m, 16, 2, &ws), TFM_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tfm_state_create_fmt(m, 0, (tfm_kv_format)i, &bat[i]), TFM_OK);
        assert_int_equal(tfm_prefill(ws, bat[i], tok, lens[i], NULL), TFM_OK);
    }
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < 3; i++)
            next[i] = first[i] + step;
        assert_int_equal(tfm_decode(ws, bat, next, 3, lb), TFM_OK);
        for (int i = 0; i < 3; i++) {
            tfm_state *one;
            assert_int_equal(tfm_state_create_fmt(m, 0, (tfm_kv_format)i, &one), TFM_OK);
            int seq[20];
            memcpy(seq, tok, sizeof(int) * lens[i]);
            for (int s = 0; s < step; s++)
                seq[lens[i] + s] = first[i] + s;
            assert_int_equal(tfm_prefill(ws, one, seq, lens[i] + step, NULL), TFM_OK);
            int t = next[i];
            assert_int_equal(tfm_decode(ws, &one, &t, 1, la), TFM_OK);
            tu_check_tensor("batched vs alone", lb + (size_t)i * V, la, V, 1e-4f);
            tfm_state_destroy(one);
        }
    }
    for (int i = 0; i < 3; i++)
        tfm_state_destroy(bat[i]);
    free(lb), free(la);
    tfm_workspace_destroy(ws);
    tfm_model_destroy(m);
}

/* A linear layer's state does not grow with max_seq; only softmax layers'
 * caches do.  Copies take the whole prefix only. */
static void test_mixer_state(void **state)
{
    (void)state;
    tfm_model *h = mixer_model(2, HYBRID, 8, 1024, 1, 70);
    tfm_model *a = mixer_model(2, ALL_LINEAR, 8, 1024, 1, 71);
    tfm_model *s = mixer_model(2, 0, 0, 1024, 1, 72);
    assert_int_equal(tfm_kv_bytes_per_token(&h->cfg, TFM_KV_F32) * 2,
                     tfm_kv_bytes_per_token(&s->cfg, TFM_KV_F32));
    assert_int_equal(tfm_kv_bytes_per_token(&a->cfg, TFM_KV_Q8), 0);
    tfm_linattn_shape sh = {4, 2, 8, 16};
    size_t one = tfm_linattn_state_bytes(&sh);
    assert_true(tfm_linear_state_bytes(&h->cfg) >= one);
    assert_true(tfm_linear_state_bytes(&a->cfg) >= 2 * one);
    assert_int_equal(tfm_linear_state_bytes(&s->cfg), 0);
    tfm_state *s64, *s1k;
    for (int i = 0; i < 2; i++) {
        tfm_model *m = i ? a : h;
        assert_int_equal(tfm_state_create(m, 64, &s64), TFM_OK);
        assert_int_equal(tfm_state_create(m, 1024, &s1k), TFM_OK);
        assert_int_equal(s64->lin_bytes, s1k->lin_bytes);
        assert_int_equal(s64->kv_bytes, 64 * tfm_kv_bytes_per_token(&m->cfg, TFM_KV_F32));
        assert_int_equal(s1k->kv_bytes, 1024 * tfm_kv_bytes_per_token(&m->cfg, TFM_KV_F32));
        if (m == a)
            assert_true(s64->kv_bytes == 0 && s1k->kv_bytes == 0 && !s1k->key_cache);
        /* copies: the whole prefix only */
        tfm_workspace *ws;
        int tok[12], t = 5;
        tokens_of(tok, 12, 14);
        float *l1 = malloc(300 * sizeof(float)), *l2 = malloc(300 * sizeof(float));
        assert_int_equal(tfm_workspace_create(m, 8, 1, &ws), TFM_OK);
        assert_int_equal(tfm_prefill(ws, s64, tok, 12, NULL), TFM_OK);
        assert_int_equal(tfm_state_copy(s1k, s64, 11), TFM_E_UNSUPPORTED);
        assert_int_equal(tfm_state_copy(s1k, s64, 12), TFM_OK);
        assert_int_equal(tfm_decode(ws, &s64, &t, 1, l1), TFM_OK);
        assert_int_equal(tfm_decode(ws, &s1k, &t, 1, l2), TFM_OK);
        assert_memory_equal(l1, l2, 300 * sizeof(float));
        free(l1), free(l2);
        tfm_workspace_destroy(ws);
        tfm_state_destroy(s64);
        tfm_state_destroy(s1k);
    }
    tfm_model_destroy(h), tfm_model_destroy(a), tfm_model_destroy(s);
}

/* The op accounting books kind "linear": one call a layer and chunk in
 * prefill, one a row in decode, with the kernels' FLOP counts. */
static void test_mixer_profile(void **state)
{
    (void)state;
    tfm_model *m = mixer_model(2, HYBRID, 8, 64, 1, 80);
    tfm_workspace *ws;
    tfm_state *st;
    int tok[20], t = 3;
    tokens_of(tok, 20, 15);
    float *lg = malloc(300 * sizeof(float));
    assert_int_equal(tfm_workspace_create(m, 8, 2, &ws), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &st), TFM_OK);
    tfm_profile *p = tfm_workspace_profile(ws);
    assert_int_equal(tfm_prefill(ws, st, tok, 20, lg), TFM_OK); /* chunks 8, 8, 4 */
    assert_int_equal(tfm_decode(ws, &st, &t, 1, lg), TFM_OK);
    assert_string_equal(tfm_attn_kind_name(TFM_ATTN_KIND_LINEAR), "linear");
    tfm_linattn_shape sh = {4, 2, 8, 16};
    double want = 2 * tfm_linattn_flops(&sh, 8, 8) + tfm_linattn_flops(&sh, 4, 8);
    assert_int_equal(p->attn_kind_calls[TFM_PHASE_PREFILL][TFM_ATTN_KIND_LINEAR][0], 3);
    assert_true(want > 0);
    assert_true(fabs(p->attn_kind_flops[TFM_PHASE_PREFILL][TFM_ATTN_KIND_LINEAR][0] - want) < 1);
    assert_int_equal(p->attn_kind_calls[TFM_PHASE_DECODE][TFM_ATTN_KIND_LINEAR][0], 1);
    assert_true(fabs(p->attn_kind_flops[TFM_PHASE_DECODE][TFM_ATTN_KIND_LINEAR][0] -
                     tfm_linattn_decode_flops(&sh)) < 1);
    /* the softmax layer is still booked as its kernel */
    assert_int_equal(p->attn_kind_calls[TFM_PHASE_PREFILL][TFM_ATTN_KIND_TILED][0] +
                         p->attn_kind_calls[TFM_PHASE_PREFILL][TFM_ATTN_KIND_NAIVE][0],
                     3);
    assert_true(p->attn_peak_bytes[TFM_PHASE_DECODE] >= (double)tfm_linattn_state_bytes(&sh));
    assert_true(p->attn_peak_bytes[TFM_PHASE_PREFILL] >= (double)tfm_linattn_state_bytes(&sh));
    free(lg);
    tfm_state_destroy(st);
    tfm_workspace_destroy(ws);
    tfm_model_destroy(m);
}

/* ---- files ----------------------------------------------------------------- */

/* Copies src to dst with the first `from` in the JSON header replaced by
 * `to` (the header's length rewritten). */
static void edit_header(const char *src, const char *dst, const char *from, const char *to)
{
    size_t n;
    unsigned char *b = tu_slurp(src, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | b[i];
    char *hdr = calloc(hl + 1, 1);
    memcpy(hdr, b + 8, hl);
    char *at = strstr(hdr, from);
    if (!at)
        fail_msg("'%s' not in the header", from);
    size_t nl = hl - strlen(from) + strlen(to);
    FILE *f = fopen(dst, "wb");
    unsigned char lb[8];
    for (int i = 0; i < 8; i++)
        lb[i] = (unsigned char)(nl >> (8 * i));
    fwrite(lb, 1, 8, f);
    fwrite(hdr, 1, (size_t)(at - hdr), f);
    fwrite(to, 1, strlen(to), f);
    fwrite(at + strlen(from), 1, hl - (size_t)(at - hdr) - strlen(from), f);
    fwrite(b + 8 + hl, 1, n - 8 - hl, f);
    fclose(f);
    free(hdr), free(b);
}

static void expect_refused(const char *path, tfm_status want, const char *msg)
{
    tfm_model *m = NULL;
    char err[256] = "";
    tfm_status s = tfm_checkpoint_load(path, TFM_CKPT_SAFETENSORS, &m, err, sizeof err);
    if (s != want || !strstr(err, msg))
        fail_msg("%s: got %s '%s', want %s '%s'", path, tfm_strerror(s), err, tfm_strerror(want),
                 msg);
    assert_null(m);
}

static void test_mixer_checkpoint(void **state)
{
    (void)state;
    tfm_model *m = mixer_model(2, HYBRID, 8, 64, 1, 90);
    char err[256] = "";
    const char *good = tu_path("mix.safetensors"), *bad = tu_path("bad.safetensors");
    assert_int_equal(tfm_checkpoint_save(m, good, TFM_CKPT_SAFETENSORS, err, sizeof err), TFM_OK);
    tfm_model *l = NULL;
    assert_int_equal(tfm_checkpoint_load(good, TFM_CKPT_AUTO, &l, err, sizeof err), TFM_OK);
    assert_int_equal(l->cfg.linear_layers, HYBRID);
    assert_int_equal(l->cfg.feature_dim, 8);
    assert_int_equal(l->n_floats, m->n_floats);
    assert_memory_equal(l->data, m->data, m->n_floats * sizeof(float));
    assert_null(tfm_model_meta_get(l, "mixer")); /* config, not free meta */
    /* identical logits */
    int tok[10];
    tokens_of(tok, 10, 16);
    float *a = malloc(300 * sizeof(float)), *b = malloc(300 * sizeof(float));
    tfm_model *ms[2] = {m, l};
    float *out[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        tfm_workspace *ws;
        tfm_state *st;
        assert_int_equal(tfm_workspace_create(ms[i], 8, 1, &ws), TFM_OK);
        assert_int_equal(tfm_state_create(ms[i], 0, &st), TFM_OK);
        assert_int_equal(tfm_prefill(ws, st, tok, 10, out[i]), TFM_OK);
        tfm_state_destroy(st);
        tfm_workspace_destroy(ws);
    }
    assert_memory_equal(a, b, 300 * sizeof(float));
    free(a), free(b);
    tfm_model_destroy(l);
    /* refusals */
    edit_header(good, bad, "\"linear,softmax\"", "\"linear,sofmax\"");
    expect_refused(bad, TFM_E_FORMAT, "unknown mixer");
    edit_header(good, bad, "\"linear,softmax\"", "\"linear,softmax,softmax\"");
    expect_refused(bad, TFM_E_FORMAT, "3 entries for 2 layers");
    edit_header(good, bad, "\"linear,softmax\"", "\"linear,linear\"");
    expect_refused(bad, TFM_E_TRUNCATED, "the config needs"); /* no data for layer 1's */
    edit_header(good, bad, "\"linear,softmax\"", "\"softmax\"");
    expect_refused(bad, TFM_E_FORMAT, "unknown tensor layers.0.attn.feature");
    edit_header(good, bad, "\"layers.0.attn.feature\"", "\"layers.0.attn.featurX\"");
    expect_refused(bad, TFM_E_FORMAT, "unknown tensor layers.0.attn.featurX");
    edit_header(good, bad, "[8,16]", "[16,8]");
    expect_refused(bad, TFM_E_SHAPE, "layers.0.attn.feature: shape [16, 8], expected [8, 16]");
    edit_header(good, bad, "\"feature_dim\"", "\"feature_dxm\"");
    expect_refused(bad, TFM_E_FORMAT, "feature_dim");
    edit_header(good, bad, "\"feature_dim\":\"8\"", "\"feature_dim\":\"32\"");
    expect_refused(bad, TFM_E_FORMAT, "feature_dim must be between 1 and the head size");
    edit_header(good, bad, "\"linear,softmax\"", "7");
    expect_refused(bad, TFM_E_FORMAT, "'mixer'");
    /* what cannot hold linear layers yet */
    assert_int_equal(tfm_checkpoint_save(m, tu_path("mix.bin"), TFM_CKPT_LLAMA2C, err, sizeof err),
                     TFM_E_UNSUPPORTED);
    assert_non_null(strstr(err, "linear"));
    assert_int_equal(tfm_model_quantize(m, TFM_WF_Q8, err, sizeof err), TFM_E_UNSUPPORTED);
    assert_non_null(strstr(err, "linear"));
    assert_non_null(m->w.wq); /* untouched */
    tfm_trainer *tr = NULL;
    assert_int_equal(tfm_trainer_create(m, 1, 8, 1, &tr), TFM_E_UNSUPPORTED);
    assert_null(tr);
    tfm_model_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixer_config),
        cmocka_unit_test(test_mixer_matches_reference),
        cmocka_unit_test(test_mixer_prefill_decode),
        cmocka_unit_test(test_mixer_batched_decode),
        cmocka_unit_test(test_mixer_state),
        cmocka_unit_test(test_mixer_profile),
        cmocka_unit_test(test_mixer_checkpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
