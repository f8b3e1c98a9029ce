/*
 * test_forward.c — the forward passes against an independent reference.
 *
 * ref_forward below is written from the architecture's definition, token by
 * token in plain double-precision loops (llama2.c run.c's structure), and
 * shares no code with core/: not the kernels, not the RoPE table.  The fast
 * paths (prefill by sgemm, batched decode, 1 and 2 threads) are checked
 * against it and against each other.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tfm/model.h"

typedef struct {
    const tfm_model *m;
    double *kc, *vc; /* (layer, seq, kv_dim) */
} ref_state;

static void ref_init(ref_state *r, const tfm_model *m)
{
    const tfm_config *c = &m->cfg;
    size_t kv = (size_t)c->dim / c->n_heads * c->n_kv_heads;
    r->m = m;
    r->kc = calloc((size_t)c->n_layers * c->seq_len * kv, sizeof(double));
    r->vc = calloc((size_t)c->n_layers * c->seq_len * kv, sizeof(double));
}

static void ref_free(ref_state *r)
{
    free(r->kc);
    free(r->vc);
}

static void ref_matvec(double *y, const double *x, const float *w, int n, int d)
{
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < d; j++)
            s += (double)w[(size_t)i * d + j] * x[j];
        y[i] = s;
    }
}

static void ref_rmsnorm(double *o, const double *x, const float *w, int n, double eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    double k = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++)
        o[i] = w[i] * x[i] * k;
}

static void ref_rope(double *v, int n, int hs, int pos, double theta)
{
    for (int i = 0; i < n; i += 2) {
        int hd = i % hs;
        double ang = pos / pow(theta, (double)hd / hs);
        double a = v[i], b = v[i + 1];
        v[i] = a * cos(ang) - b * sin(ang);
        v[i + 1] = a * sin(ang) + b * cos(ang);
    }
}

/* logits (vocab) of `token` at position pos */
static void ref_forward(ref_state *r, int token, int pos, float *logits)
{
    const tfm_model *m = r->m;
    const tfm_config *c = &m->cfg;
    int d = c->dim, hid = c->hidden_dim, hs = d / c->n_heads, kv = hs * c->n_kv_heads;
    int grp = c->n_heads / c->n_kv_heads;
    double *x = calloc(d, sizeof(double)), *xb = calloc(d, sizeof(double));
    double *q = calloc(d, sizeof(double)), *att = calloc(pos + 1, sizeof(double));
    double *o = calloc(d, sizeof(double)), *h1 = calloc(hid, sizeof(double));
    double *h3 = calloc(hid, sizeof(double)), *lg = calloc(c->vocab_size, sizeof(double));
    for (int i = 0; i < d; i++)
        x[i] = m->w.token_embedding[(size_t)token * d + i];
    for (int l = 0; l < c->n_layers; l++) {
        double *kc = r->kc + ((size_t)l * c->seq_len + pos) * kv;
        double *vc = r->vc + ((size_t)l * c->seq_len + pos) * kv;
        ref_rmsnorm(xb, x, m->w.rms_att + (size_t)l * d, d, c->norm_eps);
        ref_matvec(q, xb, m->w.wq + (size_t)l * d * d, d, d);
        ref_matvec(kc, xb, m->w.wk + (size_t)l * kv * d, kv, d);
        ref_matvec(vc, xb, m->w.wv + (size_t)l * kv * d, kv, d);
        ref_rope(q, d, hs, pos, c->rope_theta);
        ref_rope(kc, kv, hs, pos, c->rope_theta);
        for (int h = 0; h < c->n_heads; h++) {
            int kh = h / grp;
            double mx = -INFINITY, sum = 0;
            for (int t = 0; t <= pos; t++) {
                const double *k = r->kc + ((size_t)l * c->seq_len + t) * kv + kh * hs;
                double s = 0;
                for (int i = 0; i < hs; i++)
                    s += q[h * hs + i] * k[i];
                att[t] = s / sqrt((double)hs);
                mx = fmax(mx, att[t]);
            }
            for (int t = 0; t <= pos; t++)
                sum += (att[t] = exp(att[t] - mx));
            for (int i = 0; i < hs; i++) {
                double acc = 0;
                for (int t = 0; t <= pos; t++)
                    acc += att[t] / sum * r->vc[((size_t)l * c->seq_len + t) * kv + kh * hs + i];
                xb[h * hs + i] = acc;
            }
        }
        ref_matvec(o, xb, m->w.wo + (size_t)l * d * d, d, d);
        for (int i = 0; i < d; i++)
            x[i] += o[i];
        ref_rmsnorm(xb, x, m->w.rms_ffn + (size_t)l * d, d, c->norm_eps);
        ref_matvec(h1, xb, m->w.w1 + (size_t)l * hid * d, hid, d);
        ref_matvec(h3, xb, m->w.w3 + (size_t)l * hid * d, hid, d);
        for (int i = 0; i < hid; i++)
            h1[i] = h1[i] / (1 + exp(-h1[i])) * h3[i];
        ref_matvec(o, h1, m->w.w2 + (size_t)l * d * hid, d, hid);
        for (int i = 0; i < d; i++)
            x[i] += o[i];
    }
    ref_rmsnorm(xb, x, m->w.rms_final, d, c->norm_eps);
    ref_matvec(lg, xb, m->w.wcls, c->vocab_size, d);
    for (int i = 0; i < c->vocab_size; i++)
        logits[i] = (float)lg[i];
    free(x), free(xb), free(q), free(att), free(o), free(h1), free(h3), free(lg);
}

static tfm_model *gqa_model(int shared)
{
    /* dim 64, 4 heads of 16, 2 kv heads, hidden 96: tails in every kernel */
    return tu_random_model(64, 96, 3, 4, 2, 67, 48, shared, 11);
}

static void prompt_tokens(int *t, int n, int vocab, uint64_t seed)
{
    for (int i = 0; i < n; i++)
        t[i] = (int)(tu_rng(&seed) % (uint64_t)vocab);
}

static void test_forward_decode_matches_reference(void **state)
{
    for (int shared = 0; shared <= 1; shared++)
        for (int threads = 1; threads <= 2; threads++) {
            tfm_model *m = gqa_model(shared);
            int V = m->cfg.vocab_size, n = 40, toks[40];
            prompt_tokens(toks, n, V, 5);
            tfm_workspace *ws;
            tfm_state *st;
            assert_int_equal(tfm_workspace_create(m, 4, threads, &ws), TFM_OK);
            assert_int_equal(tfm_state_create(m, 0, &st), TFM_OK);
            ref_state r;
            ref_init(&r, m);
            float *got = malloc(V * sizeof(float)), *want = malloc(V * sizeof(float));
            for (int p = 0; p < n; p++) {
                assert_int_equal(tfm_decode(ws, &st, &toks[p], 1, got), TFM_OK);
                ref_forward(&r, toks[p], p, want);
                tu_check_tensor("decode logits", got, want, V, 1e-4f);
            }
            assert_int_equal(st->pos, n);
            free(got), free(want);
            ref_free(&r);
            tfm_state_destroy(st);
            tfm_workspace_destroy(ws);
            tfm_model_destroy(m);
        }
}

static void test_forward_prefill_equals_decode(void **state)
{
    tfm_model *m = gqa_model(0);
    int V = m->cfg.vocab_size, n = 37, toks[38];
    prompt_tokens(toks, 38, V, 9);
    float *dec = malloc(V * sizeof(float)), *pre = malloc(V * sizeof(float));
    tfm_workspace *w1;
    tfm_state *sd;
    assert_int_equal(tfm_workspace_create(m, 1, 1, &w1), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &sd), TFM_OK);
    for (int p = 0; p < n; p++)
        assert_int_equal(tfm_decode(w1, &sd, &toks[p], 1, dec), TFM_OK);
    /* one chunk, several chunks (with a remainder), one and two threads */
    static const int rows[] = {64, 37, 8, 5, 1};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
        for (int threads = 1; threads <= 2; threads++) {
            tfm_workspace *ws;
            tfm_state *sp;
            assert_int_equal(tfm_workspace_create(m, rows[i], threads, &ws), TFM_OK);
            assert_int_equal(tfm_state_create(m, 0, &sp), TFM_OK);
            assert_int_equal(tfm_prefill(ws, sp, toks, n, pre), TFM_OK);
            assert_int_equal(sp->pos, n);
            tu_check_tensor("prefill logits", pre, dec, V, 1e-4f);
            size_t kv = m->cfg.dim / 2; /* 2 of 4 heads */
            for (int l = 0; l < m->cfg.n_layers; l++) {
                size_t off = (size_t)l * sp->max_seq * kv;
                tu_check_tensor("keys", sp->key_cache + off, sd->key_cache + off, n * kv, 1e-4f);
                tu_check_tensor("values", sp->value_cache + off, sd->value_cache + off, n * kv,
                                1e-4f);
            }
            /* decoding continues identically after a prefill */
            float *a = malloc(V * sizeof(float)), *b = malloc(V * sizeof(float));
            tfm_state *sd2;
            assert_int_equal(tfm_state_create(m, 0, &sd2), TFM_OK);
            for (int p = 0; p <= n; p++)
                assert_int_equal(tfm_decode(w1, &sd2, &toks[p], 1, b), TFM_OK);
            assert_int_equal(tfm_decode(ws, &sp, &toks[n], 1, a), TFM_OK);
            tu_check_tensor("decode after prefill", a, b, V, 1e-4f);
            free(a), free(b);
            tfm_state_destroy(sd2);
            tfm_state_destroy(sp);
            tfm_workspace_destroy(ws);
        }
    /* a prompt in two calls equals one call */
    tfm_workspace *ws;
    tfm_state *sp;
    assert_int_equal(tfm_workspace_create(m, 16, 2, &ws), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &sp), TFM_OK);
    assert_int_equal(tfm_prefill(ws, sp, toks, 20, NULL), TFM_OK);
    assert_int_equal(tfm_prefill(ws, sp, toks + 20, n - 20, pre), TFM_OK);
    tu_check_tensor("prefill in two calls", pre, dec, V, 1e-4f);
    tfm_state_destroy(sp);
    tfm_workspace_destroy(ws);
    free(dec), free(pre);
    tfm_state_destroy(sd);
    tfm_workspace_destroy(w1);
    tfm_model_destroy(m);
}

/* tfm_prefill_rows: every row's logits equal a token-by-token decode's,
 * across chunk boundaries, and the state ends as tfm_prefill leaves it. */
static void test_forward_prefill_rows(void **state)
{
    (void)state;
    tfm_model *m = gqa_model(0);
    int V = m->cfg.vocab_size, n = 21, toks[21];
    prompt_tokens(toks, n, V, 5);
    float *rows = malloc((size_t)n * V * sizeof(float)), *dec = malloc(V * sizeof(float));
    tfm_workspace *ws, *w1;
    tfm_state *sp, *sd;
    assert_int_equal(tfm_workspace_create(m, 8, 2, &ws), TFM_OK); /* chunks of 8, 8, 5 */
    assert_int_equal(tfm_workspace_create(m, 1, 1, &w1), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &sp), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &sd), TFM_OK);
    assert_int_equal(tfm_prefill_rows(ws, sp, toks, n, rows), TFM_OK);
    assert_int_equal(sp->pos, n);
    for (int p = 0; p < n; p++) {
        assert_int_equal(tfm_decode(w1, &sd, &toks[p], 1, dec), TFM_OK);
        tu_check_tensor("row logits", rows + (size_t)p * V, dec, V, 1e-4f);
    }
    tfm_state_destroy(sp), tfm_state_destroy(sd);
    tfm_workspace_destroy(ws), tfm_workspace_destroy(w1);
    free(rows), free(dec);
    tfm_model_destroy(m);
}

/* tfm_state_copy: a copy of a prefilled cache decodes exactly as the
 * original; a copy of all but the last position, plus that one row
 * prefilled, gives the prompt's logits; bad arguments are refused. */
static void test_forward_state_copy(void **state)
{
    (void)state;
    tfm_model *m = gqa_model(2);
    int V = m->cfg.vocab_size, n = 29, toks[30];
    prompt_tokens(toks, 30, V, 11);
    float *la = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float));
    tfm_workspace *ws;
    tfm_state *a, *b, *small;
    assert_int_equal(tfm_workspace_create(m, 32, 1, &ws), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &a), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &b), TFM_OK);
    assert_int_equal(tfm_state_create(m, 8, &small), TFM_OK);
    assert_int_equal(tfm_prefill(ws, a, toks, n, la), TFM_OK);
    assert_int_equal(tfm_state_copy(b, a, n), TFM_OK);
    assert_int_equal(b->pos, n);
    assert_int_equal(tfm_decode(ws, &a, &toks[n], 1, la), TFM_OK);
    assert_int_equal(tfm_decode(ws, &b, &toks[n], 1, lb), TFM_OK);
    assert_memory_equal(la, lb, V * sizeof(float));
    /* n - 1 rows copied (from a state that has moved on), the last computed */
    tfm_state_reset(b);
    assert_int_equal(tfm_state_copy(b, a, n - 1), TFM_OK);
    assert_int_equal(tfm_prefill(ws, b, toks + n - 1, 1, lb), TFM_OK);
    tfm_state *c;
    assert_int_equal(tfm_state_create(m, 0, &c), TFM_OK);
    assert_int_equal(tfm_prefill(ws, c, toks, n, la), TFM_OK);
    tu_check_tensor("late copy logits", lb, la, V, 1e-4f);
    /* more than the source holds, more than the destination holds */
    assert_int_equal(tfm_state_copy(b, c, n + 1), TFM_E_RANGE);
    assert_int_equal(tfm_state_copy(small, c, 9), TFM_E_RANGE);
    assert_int_equal(tfm_state_copy(small, c, 8), TFM_OK);
    assert_int_equal(tfm_state_copy(NULL, c, 1), TFM_E_INVALID);
    tfm_state_destroy(a), tfm_state_destroy(b), tfm_state_destroy(c), tfm_state_destroy(small);
    tfm_workspace_destroy(ws);
    free(la), free(lb);
    tfm_model_destroy(m);
}

/* n_seq sequences with prompts of different lengths, decoded together and
 * one by one: the same logits.  n_seq >= 16 exercises the sgemm path. */
static void batch_vs_single(int n_seq, int threads)
{
    tfm_model *m = gqa_model(1);
    int V = m->cfg.vocab_size;
    tfm_workspace *wb, *w1;
    assert_int_equal(tfm_workspace_create(m, n_seq, threads, &wb), TFM_OK);
    assert_int_equal(tfm_workspace_create(m, 8, threads, &w1), TFM_OK);
    tfm_state *sb[24], *s1[24];
    int toks[24][30];
    for (int i = 0; i < n_seq; i++) {
        prompt_tokens(toks[i], 30, V, 100 + i);
        assert_int_equal(tfm_state_create(m, 0, &sb[i]), TFM_OK);
        assert_int_equal(tfm_state_create(m, 0, &s1[i]), TFM_OK);
        int plen = 1 + (i * 7) % 20;
        assert_int_equal(tfm_prefill(w1, sb[i], toks[i], plen, NULL), TFM_OK);
        assert_int_equal(tfm_prefill(w1, s1[i], toks[i], plen, NULL), TFM_OK);
    }
    float *lb = malloc((size_t)n_seq * V * sizeof(float)), *l1 = malloc(V * sizeof(float));
    for (int step = 0; step < 5; step++) {
        int next[24];
        for (int i = 0; i < n_seq; i++)
            next[i] = toks[i][(sb[i]->pos) % 30];
        assert_int_equal(tfm_decode(wb, sb, next, n_seq, lb), TFM_OK);
        for (int i = 0; i < n_seq; i++) {
            assert_int_equal(tfm_decode(w1, &s1[i], &next[i], 1, l1), TFM_OK);
            tu_check_tensor("batched logits", lb + (size_t)i * V, l1, V, 1e-4f);
        }
    }
    for (int i = 0; i < n_seq; i++) {
        tfm_state_destroy(sb[i]);
        tfm_state_destroy(s1[i]);
    }
    free(lb), free(l1);
    tfm_workspace_destroy(wb);
    tfm_workspace_destroy(w1);
    tfm_model_destroy(m);
}

static void test_forward_batched_equals_single(void **state)
{
    for (int threads = 1; threads <= 2; threads++) {
        batch_vs_single(3, threads);
        batch_vs_single(12, threads);
        batch_vs_single(20, threads); /* sgemm from 16 rows */
    }
}

static void test_forward_rejects_bad_input(void **state)
{
    tfm_model *m = tu_random_model(32, 48, 1, 2, 1, 20, 8, 1, 3);
    tfm_workspace *ws;
    tfm_state *a, *b;
    assert_int_equal(tfm_workspace_create(m, 2, 1, &ws), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &a), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &b), TFM_OK);
    float logits[2 * 20];
    int bad[2] = {20, -1}, good[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    assert_int_equal(tfm_prefill(ws, a, bad, 1, logits), TFM_E_INVALID);
    assert_int_equal(tfm_prefill(ws, a, bad + 1, 1, logits), TFM_E_INVALID);
    assert_int_equal(tfm_prefill(ws, a, good, 9, logits), TFM_E_RANGE); /* seq_len 8 */
    assert_int_equal(a->pos, 0);
    assert_int_equal(tfm_prefill(ws, a, good, -1, logits), TFM_E_INVALID);
    assert_int_equal(tfm_decode(ws, &a, bad, 1, logits), TFM_E_INVALID);
    tfm_state *three[3] = {a, b, a}, *dup[2] = {a, a};
    assert_int_equal(tfm_decode(ws, three, good, 3, logits), TFM_E_RANGE); /* max_rows 2 */
    assert_int_equal(tfm_decode(ws, dup, good, 2, logits), TFM_E_INVALID);
    assert_int_equal(tfm_prefill(ws, a, good, 8, logits), TFM_OK);
    assert_int_equal(tfm_decode(ws, &a, good, 1, logits), TFM_E_RANGE); /* cache full */
    assert_int_equal(a->pos, 8);
    tfm_state_reset(a);
    assert_int_equal(tfm_decode(ws, &a, good, 1, logits), TFM_OK);
    tfm_state *big;
    assert_int_equal(tfm_state_create(m, 9, &big), TFM_E_RANGE);
    tfm_workspace *none = NULL;
    assert_int_equal(tfm_workspace_create(m, 0, 1, &none), TFM_E_INVALID);
    assert_null(none);
    tfm_state_destroy(a);
    tfm_state_destroy(b);
    tfm_workspace_destroy(ws);
    tfm_workspace_destroy(NULL);
    tfm_state_destroy(NULL);
    tfm_model_destroy(m);
}

/* FLOPs booked for one decode step at position 0 equal the analytic count. */
static void test_forward_profile_counts_flops(void **state)
{
    tfm_model *m = gqa_model(0);
    const tfm_config *c = &m->cfg;
    tfm_workspace *ws;
    tfm_state *st;
    assert_int_equal(tfm_workspace_create(m, 4, 1, &ws), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &st), TFM_OK);
    float *logits = malloc(c->vocab_size * sizeof(float));
    int tok = 3;
    tfm_profile *p = tfm_workspace_profile(ws);
    tfm_profile_reset(p);
    assert_int_equal(tfm_decode(ws, &st, &tok, 1, logits), TFM_OK);
    double d = c->dim, h = c->hidden_dim, kv = d / c->n_heads * c->n_kv_heads, L = c->n_layers;
    double weights = L * (2 * d * d + 2 * kv * d + 3 * d * h) + c->vocab_size * d;
    double attn = L * 4 * d * 1; /* one key at position 0 */
    assert_true(fabs(p->flops[TFM_PHASE_DECODE][TFM_CLASS_CONTRACTION] - (2 * weights + attn)) < 1);
    assert_int_equal(p->tokens[TFM_PHASE_DECODE], 1);
    assert_int_equal(p->attn_calls[TFM_PHASE_DECODE][0], (uint64_t)L);
    assert_true(p->seconds[TFM_PHASE_DECODE][TFM_CLASS_CONTRACTION] > 0);
    /* prefill of n tokens: the causal triangle of keys per layer */
    int toks[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    tfm_state_reset(st);
    tfm_profile_reset(p);
    assert_int_equal(tfm_prefill(ws, st, toks, 10, logits), TFM_OK); /* chunks of 4 */
    double keys = 10.0 * 11 / 2;
    double want = 10 * 2 * (weights - c->vocab_size * d) + 2 * c->vocab_size * d + L * 4 * d * keys;
    assert_true(fabs(p->flops[TFM_PHASE_PREFILL][TFM_CLASS_CONTRACTION] - want) < 1);
    /* the per-kernel split adds up to the totals, and names the kernel run */
    for (int ph = 0; ph < TFM_PHASE_COUNT; ph++)
        for (int b = 0; b < TFM_CTX_BUCKETS; b++) {
            uint64_t calls = 0;
            for (int k = 0; k < TFM_ATTN_KIND_COUNT; k++)
                calls += p->attn_kind_calls[ph][k][b];
            assert_int_equal(calls, p->attn_calls[ph][b]);
        }
    tfm_workspace_set_attention(ws, TFM_ATTN_NAIVE);
    tfm_state_reset(st);
    tfm_profile_reset(p);
    assert_int_equal(tfm_prefill(ws, st, toks, 10, logits), TFM_OK);
    assert_int_equal(p->attn_kind_calls[TFM_PHASE_PREFILL][TFM_ATTN_KIND_NAIVE][0], 3 * L);
    assert_int_equal(p->attn_kind_calls[TFM_PHASE_PREFILL][TFM_ATTN_KIND_TILED][0], 0);
    tfm_workspace_set_attention(ws, TFM_ATTN_TILED);
    tfm_profile_reset(p);
    tfm_state_reset(st);
    assert_int_equal(tfm_prefill(ws, st, toks, 10, logits), TFM_OK);
    assert_int_equal(p->attn_kind_calls[TFM_PHASE_PREFILL][TFM_ATTN_KIND_TILED][0], 3 * L);
    /* switched off, nothing is booked */
    p->enabled = 0;
    tfm_profile_reset(p);
    assert_int_equal(tfm_decode(ws, &st, &tok, 1, logits), TFM_OK);
    assert_true(p->flops[TFM_PHASE_DECODE][TFM_CLASS_CONTRACTION] == 0);
    free(logits);
    tfm_state_destroy(st);
    tfm_workspace_destroy(ws);
    tfm_model_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_decode_matches_reference),
        cmocka_unit_test(test_forward_prefill_equals_decode),
        cmocka_unit_test(test_forward_batched_equals_single),
        cmocka_unit_test(test_forward_state_copy),
        cmocka_unit_test(test_forward_prefill_rows),
        cmocka_unit_test(test_forward_rejects_bad_input),
        cmocka_unit_test(test_forward_profile_counts_flops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
