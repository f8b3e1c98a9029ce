/* test_train.c — the trainer: finite-difference gradients for every weight
 * (through every layer's backward), the training forward against the
 * inference forward, AdamW against hand-computed steps, the schedule, a
 * loss that falls, determinism and resume, and the task generators. */
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
#include "tfm/train.h"

typedef struct region {
    const char *name;
    float *p;
    size_t n;
} region;

static int regions_of(tfm_model *m, region *r)
{
    const tfm_config *c = &m->cfg;
    size_t d = c->dim, h = c->hidden_dim, L = c->n_layers, V = c->vocab_size;
    size_t kv = d / c->n_heads * c->n_kv_heads;
    int n = 0;
    r[n++] = (region){"token_embedding", m->w.token_embedding, V * d};
    r[n++] = (region){"rms_att", m->w.rms_att, L * d};
    r[n++] = (region){"wq", m->w.wq, L * d * d};
    r[n++] = (region){"wk", m->w.wk, L * kv * d};
    r[n++] = (region){"wv", m->w.wv, L * kv * d};
    r[n++] = (region){"wo", m->w.wo, L * d * d};
    r[n++] = (region){"rms_ffn", m->w.rms_ffn, L * d};
    r[n++] = (region){"w1", m->w.w1, L * h * d};
    r[n++] = (region){"w2", m->w.w2, L * d * h};
    r[n++] = (region){"w3", m->w.w3, L * h * d};
    r[n++] = (region){"rms_final", m->w.rms_final, d};
    if (!c->shared_classifier)
        r[n++] = (region){"wcls", m->w.wcls, V * d};
    return n;
}

static void random_batch(int B, int T, int V, uint64_t seed, int *in, int *tg)
{
    uint64_t s = seed;
    for (int i = 0; i < B * T; i++) {
        in[i] = (int)(tu_rng(&s) % (uint64_t)V);
        tg[i] = tu_rng(&s) % 5 == 0 ? -1 : (int)(tu_rng(&s) % (uint64_t)V);
    }
}

static double loss_at(tfm_trainer *t, const int *in, const int *tg, int B, int T)
{
    float loss;
    assert_int_equal(tfm_trainer_forward(t, in, tg, B, T, &loss), TFM_OK);
    return loss;
}

/* For each weight tensor: the derivative of the loss along a random
 * direction, by central differences, against grad . direction; and the
 * single entries with the largest gradients, one by one. */
static void gradcheck_kernel(int shared, int heads, int kv_heads, int threads,
                             tfm_attn_kernel kern)
{
    tfm_model *m = tu_random_model(16, 24, 2, heads, kv_heads, 13, 8, shared, 7);
    int B = 3, T = 7;
    tfm_trainer *t;
    assert_int_equal(tfm_trainer_create_attn(m, B, T, threads, kern, &t), TFM_OK);
    int in[21], tg[21];
    random_batch(B, T, 13, 99, in, tg);
    loss_at(t, in, tg, B, T);
    assert_int_equal(tfm_trainer_backward(t), TFM_OK);
    float *g = malloc(m->n_floats * sizeof(float));
    memcpy(g, tfm_trainer_grads(t), m->n_floats * sizeof(float));
    region r[12];
    int nr = regions_of(m, r);
    uint64_t s = 5;
    for (int k = 0; k < nr; k++) {
        size_t off = (size_t)(r[k].p - m->data);
        float *dir = malloc(r[k].n * sizeof(float));
        double gd = 0.0, norm = 0.0;
        for (size_t i = 0; i < r[k].n; i++) {
            dir[i] = tu_uniform(&s);
            norm += (double)dir[i] * dir[i];
        }
        norm = sqrt(norm);
        for (size_t i = 0; i < r[k].n; i++) {
            dir[i] = (float)(dir[i] / norm);
            gd += (double)g[off + i] * dir[i];
        }
        float eps = 1e-2f;
        float *save = malloc(r[k].n * sizeof(float));
        memcpy(save, r[k].p, r[k].n * sizeof(float));
        for (size_t i = 0; i < r[k].n; i++)
            r[k].p[i] = save[i] + eps * dir[i];
        double lp = loss_at(t, in, tg, B, T);
        for (size_t i = 0; i < r[k].n; i++)
            r[k].p[i] = save[i] - eps * dir[i];
        double lm = loss_at(t, in, tg, B, T);
        memcpy(r[k].p, save, r[k].n * sizeof(float));
        double fd = (lp - lm) / (2.0 * eps);
        double rel = fabs(fd - gd) / fmax(fabs(fd) + fabs(gd), 1e-6);
        if (rel > 1e-2)
            fail_msg("%s (shared %d, heads %d/%d): directional fd %.6g vs backward %.6g (rel %.3g)",
                     r[k].name, shared, heads, kv_heads, fd, gd, rel);
        /* the three largest entries */
        for (int rep = 0; rep < 3; rep++) {
            size_t best = 0;
            for (size_t i = 1; i < r[k].n; i++)
                if (fabsf(g[off + i]) > fabsf(g[off + best]) && dir[i] != 0.0f)
                    best = i;
            dir[best] = 0.0f; /* not again */
            float v = r[k].p[best];
            r[k].p[best] = v + eps;
            lp = loss_at(t, in, tg, B, T);
            r[k].p[best] = v - eps;
            lm = loss_at(t, in, tg, B, T);
            r[k].p[best] = v;
            fd = (lp - lm) / (2.0 * eps);
            rel = fabs(fd - g[off + best]) / fmax(fabs(fd) + fabs(g[off + best]), 1e-6);
            if (rel > 1e-2)
                fail_msg("%s[%zu]: fd %.6g vs backward %.6g (rel %.3g)", r[k].name, best, fd,
                         (double)g[off + best], rel);
        }
        free(save);
        free(dir);
    }
    free(g);
    tfm_trainer_destroy(t);
    tfm_model_destroy(m);
}

static void gradcheck(int shared, int heads, int kv_heads, int threads)
{
    gradcheck_kernel(shared, heads, kv_heads, threads, TFM_ATTN_NAIVE);
    /* the tiled kernel (core/train_attn.c; longer sequences in test_train_attn) */
    gradcheck_kernel(shared, heads, kv_heads, threads, TFM_ATTN_TILED);
}

static void test_gradcheck_tied(void **state) { gradcheck(1, 4, 4, 1); }
static void test_gradcheck_gqa_untied(void **state) { gradcheck(0, 4, 2, 2); }
static void test_gradcheck_mqa(void **state) { gradcheck(1, 4, 1, 2); }

/* The trainer's probabilities equal softmax of the inference forward's
 * logits at every position: what training optimises is what attnd serves. */
static void test_forward_matches_inference(void **state)
{
    tfm_model *m = tu_random_model(32, 48, 2, 4, 2, 40, 16, 0, 3);
    int B = 2, T = 12, V = 40;
    int in[24], tg[24];
    random_batch(B, T, V, 4, in, tg);
    tfm_trainer *t;
    assert_int_equal(tfm_trainer_create(m, B, T, 2, &t), TFM_OK);
    float loss;
    assert_int_equal(tfm_trainer_forward(t, in, tg, B, T, &loss), TFM_OK);
    const float *probs = tfm_trainer_probs(t);
    tfm_workspace *ws;
    tfm_state *st;
    assert_int_equal(tfm_workspace_create(m, 4, 1, &ws), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &st), TFM_OK);
    float logits[40];
    double want = 0.0;
    int counted = 0;
    for (int b = 0; b < B; b++) {
        tfm_state_reset(st);
        for (int i = 0; i < T; i++) {
            int tok = in[b * T + i];
            tfm_state *const sts[1] = {st};
            assert_int_equal(tfm_decode(ws, sts, &tok, 1, logits), TFM_OK);
            float mx = logits[0], sum = 0.0f;
            for (int v = 1; v < V; v++)
                mx = fmaxf(mx, logits[v]);
            for (int v = 0; v < V; v++)
                sum += expf(logits[v] - mx);
            float ref[40];
            for (int v = 0; v < V; v++)
                ref[v] = expf(logits[v] - mx) / sum;
            tu_check_tensor("probs", probs + ((size_t)b * T + i) * V, ref, V, 1e-4f);
            if (tg[b * T + i] >= 0) {
                want -= log(ref[tg[b * T + i]]);
                counted++;
            }
        }
    }
    assert_true(fabs(loss - want / counted) < 1e-4 * fabs(want / counted));
    assert_int_equal(tfm_trainer_counted(t), counted);
    tfm_state_destroy(st);
    tfm_workspace_destroy(ws);
    tfm_trainer_destroy(t);
    tfm_model_destroy(m);
}

/* AdamW by hand on chosen gradients, three steps: bias correction,
 * decoupled decay on matrices only. */
static void test_adamw_by_hand(void **state)
{
    tfm_model *m = tu_random_model(8, 16, 1, 2, 2, 10, 4, 1, 11);
    tfm_trainer *t;
    assert_int_equal(tfm_trainer_create(m, 1, 4, 1, &t), TFM_OK);
    tfm_train_config c;
    tfm_train_config_defaults(&c);
    c.weight_decay = 0.5f;
    size_t n = m->n_floats;
    double *p = malloc(n * sizeof(double)), *m1 = calloc(n, sizeof(double)),
           *m2 = calloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++)
        p[i] = m->data[i];
    size_t norm_lo = (size_t)(m->w.rms_att - m->data), norm_hi = norm_lo + 8;
    float lrs[3] = {0.01f, 0.02f, 0.005f};
    for (int step = 1; step <= 3; step++) {
        float *g = tfm_trainer_grads(t);
        for (size_t i = 0; i < n; i++)
            g[i] = (float)(sin((double)i * 0.37 + step) * 0.1);
        tfm_trainer_adamw(t, &c, lrs[step - 1]);
        for (size_t i = 0; i < n; i++) {
            double gi = sin((double)i * 0.37 + step) * 0.1;
            m1[i] = 0.9 * m1[i] + 0.1 * gi;
            m2[i] = 0.95 * m2[i] + 0.05 * gi * gi;
            double mh = m1[i] / (1 - pow(0.9, step)), vh = m2[i] / (1 - pow(0.95, step));
            int decay = !(i >= norm_lo && i < norm_hi) &&
                        !(m->data + i >= m->w.rms_ffn && m->data + i < m->w.rms_ffn + 8) &&
                        !(m->data + i >= m->w.rms_final && m->data + i < m->w.rms_final + 8);
            p[i] -= lrs[step - 1] * (mh / (sqrt(vh) + 1e-8) + (decay ? 0.5 * p[i] : 0.0));
        }
    }
    for (size_t i = 0; i < n; i++)
        if (fabs(m->data[i] - p[i]) > 1e-5 * fmax(1.0, fabs(p[i])))
            fail_msg("param %zu: %.8g vs hand %.8g", i, (double)m->data[i], p[i]);
    assert_int_equal(tfm_trainer_step_count(t), 3);
    free(p);
    free(m1);
    free(m2);
    tfm_trainer_destroy(t);
    tfm_model_destroy(m);
}

static void test_clip(void **state)
{
    tfm_model *m = tu_random_model(8, 16, 1, 2, 2, 10, 4, 1, 11);
    tfm_trainer *t;
    assert_int_equal(tfm_trainer_create(m, 1, 4, 2, &t), TFM_OK);
    float *g = tfm_trainer_grads(t);
    double ss = 0.0;
    for (size_t i = 0; i < m->n_floats; i++) {
        g[i] = (float)(i % 7) - 3.0f;
        ss += (double)g[i] * g[i];
    }
    float norm = tfm_trainer_clip(t, 0.0f);
    assert_true(fabs(norm - sqrt(ss)) < 1e-4 * sqrt(ss));
    assert_true(fabs(tfm_trainer_clip(t, 2.0f) - sqrt(ss)) < 1e-4 * sqrt(ss));
    assert_true(fabs(tfm_trainer_clip(t, 0.0f) - 2.0f) < 1e-4);
    tfm_trainer_destroy(t);
    tfm_model_destroy(m);
}

static void test_schedule(void **state)
{
    tfm_train_config c;
    tfm_train_config_defaults(&c);
    c.steps = 110, c.warmup_steps = 10, c.learning_rate = 1.0f, c.min_lr_ratio = 0.1f;
    assert_true(fabsf(tfm_train_lr(&c, 0) - 0.1f) < 1e-6f);
    assert_true(fabsf(tfm_train_lr(&c, 9) - 1.0f) < 1e-6f);
    assert_true(fabsf(tfm_train_lr(&c, 10) - 1.0f) < 1e-6f);
    assert_true(fabsf(tfm_train_lr(&c, 109) - 0.1f) < 1e-6f);
    float mid = tfm_train_lr(&c, 10 + 99 / 2);
    assert_true(mid > 0.5f && mid < 0.6f); /* cos at ~half way: (1 + 0.1) / 2 */
    for (int s = 10; s < 109; s++)
        assert_true(tfm_train_lr(&c, s + 1) <= tfm_train_lr(&c, s));
    c.warmup_steps = 0;
    assert_true(fabsf(tfm_train_lr(&c, 0) - 1.0f) < 1e-6f);
    char err[128];
    c.learning_rate = -1;
    assert_int_equal(tfm_train_config_validate(&c, err, sizeof err), TFM_E_INVALID);
    assert_non_null(strstr(err, "learning_rate"));
}

/* A tiny model learns one fixed batch by heart. */
static void test_loss_falls(void **state)
{
    tfm_config cfg = {.dim = 32, .hidden_dim = 64, .n_layers = 2, .n_heads = 4, .n_kv_heads = 4,
                      .vocab_size = 20, .seq_len = 16, .shared_classifier = 1};
    tfm_config_defaults(&cfg);
    tfm_model *m;
    assert_int_equal(tfm_model_create(&cfg, &m, NULL, 0), TFM_OK);
    tfm_model_init_train(m, 1);
    tfm_trainer *t;
    assert_int_equal(tfm_trainer_create(m, 4, 16, 2, &t), TFM_OK);
    int in[64], tg[64];
    random_batch(4, 16, 20, 8, in, tg);
    tfm_train_config c;
    tfm_train_config_defaults(&c);
    c.steps = 150, c.warmup_steps = 10, c.learning_rate = 1e-2f, c.weight_decay = 0.0f;
    tfm_step_info first, info;
    for (int s = 0; s < c.steps; s++) {
        assert_int_equal(tfm_trainer_step(t, &c, in, tg, 4, 16, &info), TFM_OK);
        if (s == 0)
            first = info;
    }
    /* near uniform at init: logits of std ~1 add about var/2 to ln V */
    assert_true(fabsf(first.loss - logf(20.0f)) < 1.0f);
    if (!(info.loss < 0.1f * first.loss))
        fail_msg("loss %g -> %g", (double)first.loss, (double)info.loss);
    tfm_trainer_destroy(t);
    tfm_model_destroy(m);
}

/* Same seed, same threads: bit-identical.  Save after 4 steps, load into a
 * fresh model and trainer, continue: bit-identical to not stopping. */
/* The small MQAR run both halves of the resume test share, prepared. */
static tfm_train_spec small_spec(void)
{
    tfm_train_spec s = {.task = TFM_TASK_RECALL,
                        .model = {.dim = 32, .hidden_dim = 64, .n_layers = 2, .n_heads = 2,
                                  .n_kv_heads = 2},
                        .recall = {.n_pairs = 4, .n_keys = 16, .n_values = 16,
                                   .absent_fraction = 0.25f},
                        .eval_sequences = 50,
                        .n_threads = 2};
    tfm_train_config_defaults(&s.train);
    s.train.steps = 8, s.train.batch_size = 8, s.train.seq_len = 24, s.train.warmup_steps = 2;
    char err[256] = "";
    assert_int_equal(tfm_train_spec_prepare(&s, err, sizeof err), TFM_OK);
    assert_int_equal(s.model.vocab_size, 34);
    return s;
}

/* A fresh model (the spec's initial weights) and its trainer. */
static void run_mqar(const tfm_train_spec *s, tfm_model **mout, tfm_trainer **tout)
{
    char err[256] = "";
    assert_int_equal(tfm_model_create(&s->model, mout, err, sizeof err), TFM_OK);
    tfm_model_init_train(*mout, s->train.seed);
    assert_int_equal(tfm_trainer_create(*mout, s->train.batch_size, s->train.seq_len,
                                        s->n_threads, tout),
                     TFM_OK);
}

static int stop_at_4(void *ctx) { return tfm_trainer_step_count(ctx) >= 4; }

static void test_determinism_and_resume(void **state)
{
    tfm_model *a, *b, *c;
    tfm_trainer *ta, *tb, *tc;
    tfm_train_spec s = small_spec();
    char err[256] = "";
    run_mqar(&s, &a, &ta);
    run_mqar(&s, &b, &tb);
    tfm_train_progress pa, pb, pc;
    assert_int_equal(tfm_train_run(ta, &s, NULL, &pa, err, sizeof err), TFM_OK);
    tfm_train_hooks h = {.ctx = tb, .cancelled = stop_at_4};
    assert_int_equal(tfm_train_run(tb, &s, &h, &pb, err, sizeof err), TFM_E_CANCELLED);
    assert_int_equal(tfm_trainer_step_count(tb), 4);
    assert_int_equal(tfm_trainer_save(tb, tu_path("state.ckpt"), err, sizeof err), TFM_OK);
    run_mqar(&s, &c, &tc);
    assert_int_equal(tfm_trainer_load(tc, tu_path("state.ckpt"), err, sizeof err), TFM_OK);
    assert_int_equal(tfm_trainer_step_count(tc), 4);
    assert_int_equal(tfm_train_run(tc, &s, NULL, &pc, err, sizeof err), TFM_OK);
    assert_int_equal(pa.step, 8);
    assert_int_equal(pc.step, 8);
    assert_memory_equal(&pa.last.loss, &pc.last.loss, sizeof(float));
    assert_memory_equal(a->data, c->data, a->n_floats * sizeof(float));
    assert_true(pa.has_eval && pa.recall.n_queries > 0);
    assert_string_equal(tfm_model_meta_get(a, "task"), "recall");
    tfm_mqar back;
    assert_int_equal(tfm_mqar_from_meta(a, &back), TFM_OK);
    assert_int_equal(back.n_pairs, 4);
    assert_int_equal(back.n_keys, 16);
    assert_int_equal(back.seq_len, 24);
    /* a corrupt state file is refused, not loaded */
    FILE *f = fopen(tu_path("state.ckpt"), "r+b");
    fseek(f, 200, SEEK_SET);
    fputc(0x5A, f);
    fclose(f);
    assert_int_equal(tfm_trainer_load(tc, tu_path("state.ckpt"), err, sizeof err), TFM_E_FORMAT);
    assert_int_equal(tfm_trainer_load(tc, tu_path("missing.ckpt"), err, sizeof err),
                     TFM_E_NOTFOUND);
    tfm_trainer_destroy(ta);
    tfm_trainer_destroy(tb);
    tfm_trainer_destroy(tc);
    tfm_model_destroy(a);
    tfm_model_destroy(b);
    tfm_model_destroy(c);
}

static void test_mqar_layout(void **state)
{
    tfm_mqar p = {.n_pairs = 8, .n_keys = 64, .n_values = 64, .absent_fraction = 0.25f,
                  .seq_len = 65};
    assert_int_equal(tfm_mqar_validate(&p, NULL, 0), TFM_OK);
    assert_int_equal(tfm_mqar_vocab(&p), 130);
    assert_int_equal(tfm_mqar_n_queries(&p), 24);
    int in[65], tg[65], in2[65], tg2[65];
    long absent = 0, queries = 0;
    for (int seq = 0; seq < 400; seq++) {
        tfm_mqar_sequence(&p, 42, 0, (uint64_t)seq, in, tg);
        tfm_mqar_sequence(&p, 42, 0, (uint64_t)seq, in2, tg2);
        assert_memory_equal(in, in2, sizeof in);
        assert_memory_equal(tg, tg2, sizeof tg);
        tfm_mqar_sequence(&p, 42, 1, (uint64_t)seq, in2, tg2);
        assert_memory_not_equal(in, in2, sizeof in); /* the held-out stream differs */
        int value_of[64];
        for (int k = 0; k < 64; k++)
            value_of[k] = -1;
        for (int i = 0; i < 8; i++) {
            assert_in_range(in[2 * i], 0, 63);
            assert_in_range(in[2 * i + 1], 64, 127);
            assert_int_equal(value_of[in[2 * i]], -1); /* distinct keys */
            value_of[in[2 * i]] = in[2 * i + 1];
            assert_int_equal(tg[2 * i], -1);
            assert_int_equal(tg[2 * i + 1], -1);
        }
        for (int q = 0; q < 24; q++) {
            int at = 16 + 2 * q, key = in[at];
            assert_in_range(key, 0, 63);
            int want = value_of[key] >= 0 ? value_of[key] : tfm_mqar_null_token(&p);
            assert_int_equal(tg[at], want);
            assert_int_equal(in[at + 1], want); /* the answer follows */
            assert_int_equal(tg[at + 1], -1);
            absent += want == tfm_mqar_null_token(&p);
            queries++;
        }
        assert_int_equal(in[64], tfm_mqar_pad_token(&p));
        assert_int_equal(tg[64], -1);
    }
    double share = (double)absent / queries;
    assert_true(share > 0.22 && share < 0.28);
    /* batches are sequence numbers step * B ... of stream 0 */
    int bi[3 * 65], bt[3 * 65];
    tfm_mqar_batch(&p, 42, 5, 3, bi, bt);
    tfm_mqar_sequence(&p, 42, 0, 16, in, tg);
    assert_memory_equal(bi + 65, in, sizeof in);
    /* min_pairs: training stores vary in size, evaluation stores do not */
    p.min_pairs = 1;
    int seen[9] = {0};
    for (int seq = 0; seq < 400; seq++) {
        tfm_mqar_sequence(&p, 42, 0, (uint64_t)seq, in, tg);
        int n = 0; /* pairs: the first query is the first position with a target */
        while (tg[2 * n] < 0)
            n++;
        assert_in_range(n, 1, 8);
        seen[n]++;
        for (int i = 2 * n; i + 1 < 65 - (65 - 2 * n) % 2; i += 2)
            assert_true(tg[i] >= 0); /* queries fill the rest */
        tfm_mqar_sequence(&p, 42, 1, (uint64_t)seq, in, tg);
        assert_int_equal(tg[15], -1);
        assert_true(tg[16] >= 0);
    }
    for (int n = 1; n <= 8; n++)
        assert_true(seen[n] > 20); /* ~50 each */
    p.min_pairs = 0;
    char err[128];
    p.n_pairs = 40;
    assert_int_equal(tfm_mqar_validate(&p, err, sizeof err), TFM_E_INVALID);
    assert_non_null(strstr(err, "seq_len"));
    p.n_pairs = 64;
    p.seq_len = 200;
    assert_int_equal(tfm_mqar_validate(&p, err, sizeof err), TFM_E_INVALID);
    assert_non_null(strstr(err, "absent_fraction"));
}

static void test_text_batch(void **state)
{
    unsigned char data[300];
    for (int i = 0; i < 300; i++)
        data[i] = (unsigned char)(i * 7 + 3);
    int in[4 * 16], tg[4 * 16];
    assert_int_equal(tfm_text_check(300, 270, 16, NULL, 0), TFM_OK);
    assert_int_equal(tfm_text_check(300, 300, 16, NULL, 0), TFM_E_INVALID);
    assert_int_equal(tfm_text_check(300, 10, 16, NULL, 0), TFM_E_INVALID);
    tfm_text_batch(data, 270, 16, 9, 3, 4, in, tg);
    for (int b = 0; b < 4; b++) {
        assert_int_equal(in[b * 16], 256); /* BOS */
        for (int i = 1; i < 16; i++)
            assert_int_equal(in[b * 16 + i], tg[b * 16 + i - 1]);
        /* the targets are a window of the training part */
        int found = 0;
        for (int o = 0; o + 16 <= 270 && !found; o++)
            found = (int)data[o] == tg[b * 16] && (int)data[o + 15] == tg[b * 16 + 15] &&
                    (int)data[o + 7] == tg[b * 16 + 7];
        assert_true(found);
    }
    /* held-out evaluation counts every byte of the tail once */
    tfm_model *m = tu_random_model(16, 32, 1, 2, 2, 258, 16, 1, 2);
    tfm_trainer *t;
    assert_int_equal(tfm_trainer_create(m, 4, 16, 1, &t), TFM_OK);
    tfm_text_eval ev;
    assert_int_equal(tfm_text_evaluate(t, data, 300, 270, 16, 0, &ev), TFM_OK);
    assert_int_equal(ev.n_bytes, 30);
    assert_true(ev.bits_per_byte > 0 && fabs(ev.bits_per_byte - ev.loss / log(2.0)) < 1e-9);
    tfm_trainer_destroy(t);
    tfm_model_destroy(m);
}

/* tfm_mqar_answer reads the same probabilities as the training forward on
 * the sequence "store, query". */
static void test_mqar_answer(void **state)
{
    tfm_mqar p = {.n_pairs = 4, .n_keys = 16, .n_values = 16, .absent_fraction = 0.25f,
                  .seq_len = 24};
    tfm_model *m = tu_random_model(16, 32, 1, 2, 2, tfm_mqar_vocab(&p), 24, 1, 5);
    assert_int_equal(tfm_mqar_to_meta(m, &p), TFM_OK);
    int keys[3] = {3, 9, 1}, vals[3] = {0, 15, 7}, qs[5] = {3, 9, 1, 4, 15};
    int ans[5];
    float probs[5];
    assert_int_equal(tfm_mqar_answer(m, &p, keys, vals, 3, qs, 5, 1, ans, probs, NULL), TFM_OK);
    tfm_trainer *t;
    assert_int_equal(tfm_trainer_create(m, 1, 9, 1, &t), TFM_OK);
    for (int j = 0; j < 5; j++) {
        int in[9] = {3, 16 + 0, 9, 16 + 15, 1, 16 + 7, 3, 16 + 0, qs[j]};
        assert_int_equal(tfm_trainer_forward(t, in, NULL, 1, 9, NULL), TFM_OK);
        const float *row = tfm_trainer_probs(t) + 8 * 34;
        int best = 0;
        for (int v = 1; v < 34; v++)
            if (row[v] > row[best])
                best = v;
        assert_true(fabsf(row[best] - probs[j]) < 1e-6f);
        assert_int_equal(ans[j], best >= 16 && best < 32 ? best - 16 : -1);
    }
    int dup[2] = {3, 3}, big[1] = {16};
    assert_int_equal(tfm_mqar_answer(m, &p, dup, vals, 2, qs, 1, 1, ans, probs, NULL), TFM_E_INVALID);
    assert_int_equal(tfm_mqar_answer(m, &p, big, vals, 1, qs, 1, 1, ans, probs, NULL), TFM_E_INVALID);
    assert_int_equal(tfm_mqar_answer(m, &p, keys, vals, 3, big, 1, 1, ans, probs, NULL), TFM_E_INVALID);
    tfm_trainer_destroy(t);
    tfm_model_destroy(m);
}

/* The trainer's op accounting: contraction FLOPs counted by hand for the
 * forward, a backward twice its forward, attention in phase train by
 * sequence length; an evaluation-only trainer (tfm_mqar_answer) books
 * phase prefill. */
static void test_profile(void **state)
{
    int d = 32, H = 48, L = 2, nh = 4, nkv = 2, V = 40, B = 2, T = 12, N = B * T;
    tfm_model *m = tu_random_model(d, H, L, nh, nkv, V, 16, 0, 3);
    int in[24], tg[24];
    random_batch(B, T, V, 4, in, tg);
    tfm_trainer *t;
    assert_int_equal(tfm_trainer_create(m, B, T, 2, &t), TFM_OK);
    tfm_profile *p = tfm_trainer_profile(t);
    assert_true(p->enabled);
    assert_int_equal(tfm_trainer_forward(t, in, tg, B, T, NULL), TFM_OK);
    const int tr = TFM_PHASE_TRAIN, b = tfm_ctx_bucket(T);
    double E = d + 2.0 * (d / nh) * nkv;
    double want = L * (2.0 * N * d * (E + d + 2.0 * H + H) + 4.0 * d * T * T * B) +
                  2.0 * N * d * V;
    double fwd = p->flops[tr][TFM_CLASS_CONTRACTION];
    assert_true(fabs(fwd - want) <= 1e-9 * want);
    assert_true(p->seconds[tr][TFM_CLASS_CONTRACTION] > 0.0);
    assert_true(p->comp_seconds[tr][TFM_COMP_ATTENTION] > 0.0);
    assert_true(p->comp_seconds[tr][TFM_COMP_MLP] > 0.0);
    assert_int_equal(p->attn_calls[tr][b], (uint64_t)(B * L));
    assert_int_equal(p->attn_kind_calls[tr][TFM_ATTN_KIND_NAIVE][b], (uint64_t)(B * L));
    assert_true(fabs(p->attn_flops[tr][b] - L * 4.0 * d * T * T * B) < 1.0);
    assert_true(p->attn_peak_bytes[tr] == (double)B * nh * T * T * sizeof(float));
    assert_int_equal(p->tokens[tr], (uint64_t)N);
    assert_int_equal(tfm_trainer_backward(t), TFM_OK);
    assert_true(fabs(p->flops[tr][TFM_CLASS_CONTRACTION] - 3.0 * fwd) <= 1e-9 * fwd);
    assert_true(fabs(p->attn_flops[tr][b] - 3.0 * L * 4.0 * d * T * T * B) < 1.0);
    assert_int_equal(p->attn_calls[tr][b], (uint64_t)(B * L)); /* calls: forwards only */
    double ew = p->flops[tr][TFM_CLASS_ELEMENTWISE];
    tfm_train_config c;
    tfm_train_config_defaults(&c);
    tfm_trainer_clip(t, 0.0f);
    tfm_trainer_adamw(t, &c, 1e-3f);
    assert_true(fabs(p->flops[tr][TFM_CLASS_ELEMENTWISE] - ew - 16.0 * m->n_floats) < 1.0);
    for (int ph = 0; ph < TFM_PHASE_COUNT; ph++)
        if (ph != tr)
            assert_true(tfm_profile_total_seconds(p, ph) == 0.0 && p->tokens[ph] == 0);
    tfm_trainer_destroy(t);
    tfm_model_destroy(m);

    tfm_mqar q = {.n_pairs = 4, .n_keys = 16, .n_values = 16, .absent_fraction = 0.25f,
                  .seq_len = 24};
    m = tu_random_model(16, 32, 1, 2, 2, tfm_mqar_vocab(&q), 24, 1, 5);
    assert_int_equal(tfm_mqar_to_meta(m, &q), TFM_OK);
    int keys[3] = {3, 9, 1}, vals[3] = {0, 15, 7}, qs[5] = {3, 9, 1, 4, 15}, ans[5];
    float probs[5];
    tfm_profile prof;
    memset(&prof, 0, sizeof prof);
    prof.enabled = 1;
    assert_int_equal(tfm_mqar_answer(m, &q, keys, vals, 3, qs, 5, 1, ans, probs, &prof), TFM_OK);
    int Tq = 2 * 4 + 1; /* the store repeated up to n_pairs, then the query */
    assert_int_equal(prof.tokens[TFM_PHASE_PREFILL], (uint64_t)(5 * Tq));
    assert_int_equal(prof.attn_calls[TFM_PHASE_PREFILL][tfm_ctx_bucket(Tq)], 5u);
    assert_true(prof.flops[TFM_PHASE_PREFILL][TFM_CLASS_CONTRACTION] > 0.0);
    assert_true(tfm_profile_total_seconds(&prof, TFM_PHASE_TRAIN) == 0.0);
    tfm_model_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradcheck_tied),
        cmocka_unit_test(test_gradcheck_gqa_untied),
        cmocka_unit_test(test_gradcheck_mqa),
        cmocka_unit_test(test_forward_matches_inference),
        cmocka_unit_test(test_adamw_by_hand),
        cmocka_unit_test(test_clip),
        cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_loss_falls),
        cmocka_unit_test(test_determinism_and_resume),
        cmocka_unit_test(test_mqar_layout),
        cmocka_unit_test(test_text_batch),
        cmocka_unit_test(test_mqar_answer),
        cmocka_unit_test(test_profile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
