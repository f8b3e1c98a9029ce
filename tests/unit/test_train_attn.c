/* test_train_attn.c — the trainer's tiled attention (core/train_attn.c):
 * the kernels against a plain double-precision reference, whole trainers
 * tiled against naive (loss, probabilities, every gradient) for MHA, GQA
 * and MQA at lengths that are not multiples of the 64 x 128 tile, finite
 * differences through the tiled backward, repeatability, the op
 * accounting and memory, and a step that allocates nothing.
 *
 * Linked with -Wl,--wrap=malloc,... (CMakeLists.txt) for the last. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc_count.h"
#include "testutil.h"
#include "tfm/train.h"
#include "train_internal.h"

/* ||got - ref||_inf / ||ref||_inf */
static void fill(float *p, size_t n, float amp, uint64_t *s)
{
    for (size_t i = 0; i < n; i++)
        p[i] = amp * tu_uniform(s);
}

/* ---- the kernels against a plain reference ---------------------------------- */

/* One kv head with `group` query heads side by side, rows of width
 * group * hs (q, o, dout, dq) and hs (k, v, dk, dv).  The reference in
 * double: S = q k^T / sqrt(hs) causal, P = softmax, o = P v; dP = dout v^T,
 * dS = P (dP - rowsum(P dP)), dq = dS k s, dk = sum_g dS^T q s,
 * dv = sum_g P^T dout. */
typedef struct ref_case {
    int T, hs, group;
    float *q, *k, *v, *dout, *o, *lse, *dq, *dk, *dv, *scratch;
    double *ro, *rlse, *rdq, *rdk, *rdv;
} ref_case;

static void reference(ref_case *c)
{
    int T = c->T, hs = c->hs, G = c->group, W = G * hs;
    double scale = 1.0 / sqrt((double)hs);
    double *P = calloc((size_t)T * T, sizeof(double)), *dP = calloc((size_t)T * T, sizeof(double));
    memset(c->rdk, 0, (size_t)T * hs * sizeof(double));
    memset(c->rdv, 0, (size_t)T * hs * sizeof(double));
    for (int g = 0; g < G; g++) {
        for (int i = 0; i < T; i++) {
            double mx = -INFINITY, sum = 0.0;
            for (int j = 0; j <= i; j++) {
                double s = 0.0;
                for (int x = 0; x < hs; x++)
                    s += (double)c->q[(size_t)i * W + g * hs + x] * c->k[(size_t)j * hs + x];
                P[(size_t)i * T + j] = s * scale;
                mx = fmax(mx, s * scale);
            }
            for (int j = 0; j <= i; j++)
                sum += (P[(size_t)i * T + j] = exp(P[(size_t)i * T + j] - mx));
            for (int j = 0; j <= i; j++)
                P[(size_t)i * T + j] /= sum;
            c->rlse[(size_t)g * T + i] = mx + log(sum);
            for (int x = 0; x < hs; x++) {
                double o = 0.0;
                for (int j = 0; j <= i; j++)
                    o += P[(size_t)i * T + j] * c->v[(size_t)j * hs + x];
                c->ro[(size_t)i * W + g * hs + x] = o;
            }
        }
        for (int i = 0; i < T; i++) {
            double rs = 0.0;
            for (int j = 0; j <= i; j++) {
                double s = 0.0;
                for (int x = 0; x < hs; x++)
                    s += (double)c->dout[(size_t)i * W + g * hs + x] * c->v[(size_t)j * hs + x];
                dP[(size_t)i * T + j] = s;
                rs += s * P[(size_t)i * T + j];
            }
            for (int j = 0; j <= i; j++)
                dP[(size_t)i * T + j] = P[(size_t)i * T + j] * (dP[(size_t)i * T + j] - rs);
        }
        for (int i = 0; i < T; i++)
            for (int x = 0; x < hs; x++) {
                double a = 0.0;
                for (int j = 0; j <= i; j++)
                    a += dP[(size_t)i * T + j] * c->k[(size_t)j * hs + x];
                c->rdq[(size_t)i * W + g * hs + x] = a * scale;
            }
        for (int j = 0; j < T; j++)
            for (int x = 0; x < hs; x++) {
                double a = 0.0, b = 0.0;
                for (int i = j; i < T; i++) {
                    a += dP[(size_t)i * T + j] * c->q[(size_t)i * W + g * hs + x];
                    b += P[(size_t)i * T + j] * c->dout[(size_t)i * W + g * hs + x];
                }
                c->rdk[(size_t)j * hs + x] += a * scale;
                c->rdv[(size_t)j * hs + x] += b;
            }
    }
    free(P);
    free(dP);
}

static void run_case(int T, int hs, int group, uint64_t seed)
{
    ref_case c = {.T = T, .hs = hs, .group = group};
    size_t W = (size_t)group * hs, nw = (size_t)T * W, nk = (size_t)T * hs;
    uint64_t s = seed;
    float **fp[] = {&c.q, &c.dout, &c.o, &c.dq};
    for (size_t i = 0; i < 4; i++)
        *fp[i] = malloc(nw * sizeof(float));
    float **kp[] = {&c.k, &c.v, &c.dk, &c.dv};
    for (size_t i = 0; i < 4; i++)
        *kp[i] = malloc(nk * sizeof(float));
    c.lse = malloc((size_t)group * T * sizeof(float));
    c.scratch = malloc(tfm__flash_scratch(T) * sizeof(float));
    c.ro = malloc(nw * sizeof(double));
    c.rdq = malloc(nw * sizeof(double));
    c.rdk = malloc(nk * sizeof(double));
    c.rdv = malloc(nk * sizeof(double));
    c.rlse = malloc((size_t)group * T * sizeof(double));
    /* scores of a few units: a peaked softmax, as trained models have */
    fill(c.q, nw, 2.0f, &s);
    fill(c.k, nk, 2.0f, &s);
    fill(c.v, nk, 1.0f, &s);
    fill(c.dout, nw, 1.0f, &s);
    /* garbage where the kernels must overwrite */
    fill(c.dq, nw, 9.0f, &s);
    fill(c.dk, nk, 9.0f, &s);
    fill(c.dv, nk, 9.0f, &s);
    reference(&c);
    for (int g = 0; g < group; g++)
        tfm__flash_forward(c.o + (size_t)g * hs, (int)W, c.lse + (size_t)g * T,
                           c.q + (size_t)g * hs, (int)W, c.k, c.v, hs, hs, T, c.scratch);
    tfm__flash_backward(c.dq, (int)W, c.dk, c.dv, hs, c.dout, (int)W, c.o, (int)W, c.lse, c.q,
                        (int)W, c.k, c.v, hs, hs, T, group, c.scratch);
    struct {
        const char *name;
        const float *got;
        const double *ref;
        size_t n;
        double tol;
    } cmp[] = {{"o", c.o, c.ro, nw, 1e-5},     {"lse", c.lse, c.rlse, (size_t)group * T, 1e-5},
               {"dq", c.dq, c.rdq, nw, 1e-4}, {"dk", c.dk, c.rdk, nk, 1e-4},
               {"dv", c.dv, c.rdv, nk, 1e-4}};
    for (size_t i = 0; i < sizeof cmp / sizeof cmp[0]; i++) {
        double r = tu_rel_inf(cmp[i].got, cmp[i].ref, cmp[i].n);
        if (!(r <= cmp[i].tol))
            fail_msg("T %d hs %d group %d: %s off by %.3g relative", T, hs, group, cmp[i].name,
                     r);
    }
    float *fr[] = {c.q, c.k, c.v, c.dout, c.o, c.dq, c.dk, c.dv, c.lse, c.scratch};
    for (size_t i = 0; i < sizeof fr / sizeof fr[0]; i++)
        free(fr[i]);
    double *dr[] = {c.ro, c.rdq, c.rdk, c.rdv, c.rlse};
    for (size_t i = 0; i < sizeof dr / sizeof dr[0]; i++)
        free(dr[i]);
}

/* T across the tile edges: one row, one short of a query block, a key
 * block and a bit, several of each; group 1 (MHA's kv heads), 2 (GQA), 4
 * (MQA of 4 heads). */
static void test_kernels_match_reference(void **state)
{
    static const int Ts[] = {1, 2, 63, 64, 65, 127, 130, 200, 257};
    for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++)
        for (int group = 1; group <= 4; group *= 2)
            run_case(Ts[i], 16, group, 17 + i * 5 + (size_t)group);
    run_case(300, 32, 2, 3);
    run_case(131, 8, 3, 4);
}

/* The executed-FLOP count against a count of the tiles' unmasked work:
 * at least the causal triangle, at most the full square. */
static void test_flops_between_triangle_and_square(void **state)
{
    static const int Ts[] = {1, 63, 130, 1000};
    for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
        double T = Ts[i], tri = T * (T + 1) / 2;
        double f = tfm__flash_flops(Ts[i], 16, 0), b = tfm__flash_flops(Ts[i], 16, 1);
        assert_true(f >= 4.0 * 16 * tri && f <= 4.0 * 16 * T * T);
        assert_true(b >= 10.0 * 16 * tri && b <= 10.0 * 16 * T * T);
    }
    /* one tile: exactly it */
    assert_true(tfm__flash_flops(50, 8, 0) == 4.0 * 8 * 50 * 50);
    assert_true(tfm__flash_flops(50, 8, 1) == 10.0 * 8 * 50 * 50);
}

/* ---- whole trainers --------------------------------------------------------- */

static void random_batch(int B, int T, int V, uint64_t seed, int *in, int *tg)
{
    uint64_t s = seed;
    for (int i = 0; i < B * T; i++) {
        in[i] = (int)(tu_rng(&s) % (uint64_t)V);
        tg[i] = tu_rng(&s) % 5 == 0 ? -1 : (int)(tu_rng(&s) % (uint64_t)V);
    }
}

/* The same model and batch through a naive and a tiled trainer: the loss,
 * the next-token probabilities and every gradient. */
static void trainers_agree(int heads, int kv_heads, int B, int T, int threads)
{
    int V = 19;
    tfm_model *m = tu_random_model(32, 40, 2, heads, kv_heads, V, T, 0, 11);
    /* tu_random_model's weights are small: make attention peaked enough
     * that the tiles' online softmax matters */
    for (size_t i = 0; i < (size_t)(m->w.wo - m->w.wq); i++)
        m->w.wq[i] *= 4.0f;
    tfm_trainer *tn, *tt;
    assert_int_equal(tfm_trainer_create_attn(m, B, T, threads, TFM_ATTN_NAIVE, &tn), TFM_OK);
    assert_int_equal(tfm_trainer_create_attn(m, B, T, threads, TFM_ATTN_TILED, &tt), TFM_OK);
    assert_int_equal(tfm_trainer_attention(tn), TFM_ATTN_NAIVE);
    assert_int_equal(tfm_trainer_attention(tt), TFM_ATTN_TILED);
    int *in = malloc((size_t)B * T * sizeof(int)), *tg = malloc((size_t)B * T * sizeof(int));
    random_batch(B, T, V, 5 + (uint64_t)T, in, tg);
    float ln, lt;
    assert_int_equal(tfm_trainer_forward(tn, in, tg, B, T, &ln), TFM_OK);
    assert_int_equal(tfm_trainer_forward(tt, in, tg, B, T, &lt), TFM_OK);
    assert_true(fabs((double)ln - lt) <= 1e-5 * fabs((double)ln));
    double rp = tu_rel_inf_f(tfm_trainer_probs(tt), tfm_trainer_probs(tn), (size_t)B * T * V);
    if (rp > 1e-5)
        fail_msg("heads %d/%d T %d: probabilities off by %.3g", heads, kv_heads, T, rp);
    assert_int_equal(tfm_trainer_backward(tn), TFM_OK);
    assert_int_equal(tfm_trainer_backward(tt), TFM_OK);
    /* every weight tensor, by its own scale */
    const tfm_weights *w = &m->w;
    const float *bounds[] = {w->token_embedding, w->rms_att, w->wq, w->wk, w->wv, w->wo,
                             w->rms_ffn, w->w1, w->w2, w->w3, w->rms_final, w->wcls,
                             m->data + m->n_floats};
    const char *names[] = {"emb", "rms_att", "wq", "wk", "wv", "wo",
                           "rms_ffn", "w1", "w2", "w3", "rms_final", "wcls"};
    for (int r = 0; r < 12; r++) {
        size_t off = (size_t)(bounds[r] - m->data), n = (size_t)(bounds[r + 1] - bounds[r]);
        double rel = tu_rel_inf_f(tfm_trainer_grads(tt) + off, tfm_trainer_grads(tn) + off, n);
        if (!(rel <= 1e-4))
            fail_msg("heads %d/%d B %d T %d: grad %s off by %.3g relative", heads, kv_heads, B,
                     T, names[r], rel);
    }
    free(in);
    free(tg);
    tfm_trainer_destroy(tn);
    tfm_trainer_destroy(tt);
    tfm_model_destroy(m);
}

static void test_trainer_mha(void **state)
{
    trainers_agree(4, 4, 2, 130, 2);
    trainers_agree(4, 4, 3, 1, 1);
}
static void test_trainer_gqa(void **state)
{
    trainers_agree(4, 2, 2, 200, 2);
    trainers_agree(4, 2, 1, 63, 1);
}
static void test_trainer_mqa(void **state)
{
    trainers_agree(4, 1, 2, 257, 3);
    trainers_agree(4, 1, 2, 7, 2);
}

/* Finite differences through the tiled backward, every weight tensor along
 * its gradient's direction mixed with a random one (along the gradient the
 * loss moves most: with a float loss and attention near uniform, a purely
 * random direction in wq moves it by a few ulps), at lengths across the
 * tile edges. */
static double loss_at(tfm_trainer *t, const int *in, const int *tg, int B, int T)
{
    float loss;
    assert_int_equal(tfm_trainer_forward(t, in, tg, B, T, &loss), TFM_OK);
    return loss;
}

static void gradcheck_tiled(int heads, int kv_heads, int T)
{
    int B = 2, V = 13;
    tfm_model *m = tu_random_model(16, 24, 2, heads, kv_heads, V, T, 0, 7);
    tfm_trainer *t;
    assert_int_equal(tfm_trainer_create_attn(m, B, T, 2, TFM_ATTN_TILED, &t), TFM_OK);
    int *in = malloc((size_t)B * T * sizeof(int)), *tg = malloc((size_t)B * T * sizeof(int));
    random_batch(B, T, V, 99, in, tg);
    loss_at(t, in, tg, B, T);
    assert_int_equal(tfm_trainer_backward(t), TFM_OK);
    float *g = malloc(m->n_floats * sizeof(float));
    memcpy(g, tfm_trainer_grads(t), m->n_floats * sizeof(float));
    const tfm_weights *w = &m->w;
    float *bounds[] = {w->token_embedding, w->rms_att, w->wq, w->wk, w->wv, w->wo, w->rms_ffn,
                       w->w1, w->w2, w->w3, w->rms_final, w->wcls, m->data + m->n_floats};
    uint64_t s = 5;
    for (int r = 0; r < 12; r++) {
        float *p = bounds[r];
        size_t n = (size_t)(bounds[r + 1] - p), off = (size_t)(p - m->data);
        float *dir = malloc(n * sizeof(float)), *save = malloc(n * sizeof(float));
        double gd = 0.0, norm = 0.0;
        double gn = 0.0;
        for (size_t i = 0; i < n; i++)
            gn += (double)g[off + i] * g[off + i];
        gn = sqrt(gn) + 1e-30;
        for (size_t i = 0; i < n; i++) {
            dir[i] = (float)(g[off + i] / gn + 0.3 * tu_uniform(&s) / sqrt((double)n));
            norm += (double)dir[i] * dir[i];
        }
        for (size_t i = 0; i < n; i++) {
            dir[i] = (float)(dir[i] / sqrt(norm));
            gd += (double)g[off + i] * dir[i];
        }
        float eps = 3e-2f;
        memcpy(save, p, n * sizeof(float));
        for (size_t i = 0; i < n; i++)
            p[i] = save[i] + eps * dir[i];
        double lp = loss_at(t, in, tg, B, T);
        for (size_t i = 0; i < n; i++)
            p[i] = save[i] - eps * dir[i];
        double lm = loss_at(t, in, tg, B, T);
        memcpy(p, save, n * sizeof(float));
        double fd = (lp - lm) / (2.0 * eps);
        double rel = fabs(fd - gd) / fmax(fabs(fd) + fabs(gd), 1e-6);
        if (rel > 1e-2)
            fail_msg("tensor %d (heads %d/%d, T %d): fd %.6g vs backward %.6g (rel %.3g)", r,
                     heads, kv_heads, T, fd, gd, rel);
        free(dir);
        free(save);
    }
    free(g);
    free(in);
    free(tg);
    tfm_trainer_destroy(t);
    tfm_model_destroy(m);
}

static void test_gradcheck_tiled(void **state)
{
    gradcheck_tiled(4, 4, 150); /* MHA */
    gradcheck_tiled(4, 2, 70);  /* GQA */
    gradcheck_tiled(4, 1, 131); /* MQA */
}

/* Training steps: tiled twice from the same seed, bit-identical weights;
 * and tiled against naive, close. */
static void train_steps(tfm_attn_kernel k, int threads, int steps, float *out_weights,
                        size_t *n_out)
{
    int B = 2, T = 140, V = 23;
    tfm_model *m = tu_random_model(32, 48, 2, 4, 2, V, T, 1, 3);
    tfm_model_init_train(m, 42);
    tfm_trainer *t;
    assert_int_equal(tfm_trainer_create_attn(m, B, T, threads, k, &t), TFM_OK);
    tfm_train_config c;
    tfm_train_config_defaults(&c);
    c.steps = steps;
    c.warmup_steps = 0;
    c.learning_rate = 3e-3f;
    int in[280], tg[280];
    for (int s = 0; s < steps; s++) {
        random_batch(B, T, V, 1000 + (uint64_t)s, in, tg);
        assert_int_equal(tfm_trainer_step(t, &c, in, tg, B, T, NULL), TFM_OK);
    }
    memcpy(out_weights, m->data, m->n_floats * sizeof(float));
    *n_out = m->n_floats;
    tfm_trainer_destroy(t);
    tfm_model_destroy(m);
}

static void test_repeatable_and_close_to_naive(void **state)
{
    size_t n = 200000, n1, n2, n3;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    float *c = malloc(n * sizeof(float));
    train_steps(TFM_ATTN_TILED, 3, 4, a, &n1);
    assert_true(n1 <= n);
    train_steps(TFM_ATTN_TILED, 3, 4, b, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1 * sizeof(float));
    train_steps(TFM_ATTN_NAIVE, 3, 4, c, &n3);
    assert_int_equal(n1, n3);
    /* after four AdamW steps the runs differ only by rounding */
    double rel = tu_rel_inf_f(a, c, n1);
    if (!(rel <= 1e-3))
        fail_msg("tiled vs naive weights after 4 steps: %.3g relative", rel);
    assert_true(memcmp(a, c, n1 * sizeof(float)) != 0); /* different kernels ran */
    free(a);
    free(b);
    free(c);
}

/* Op accounting and memory: kind tiled, its executed FLOPs, its peak; no
 * (T, T) buffer. */
static void test_profile_and_memory(void **state)
{
    int d = 32, L = 2, nh = 4, nkv = 2, V = 40, B = 2, T = 150, threads = 2, hs = d / nh;
    tfm_model *m = tu_random_model(d, 48, L, nh, nkv, V, T, 0, 3);
    int *in = malloc((size_t)B * T * sizeof(int)), *tg = malloc((size_t)B * T * sizeof(int));
    random_batch(B, T, V, 4, in, tg);
    tfm_trainer *t, *tn;
    assert_int_equal(tfm_trainer_create_attn(m, B, T, threads, TFM_ATTN_TILED, &t), TFM_OK);
    assert_int_equal(tfm_trainer_create_attn(m, B, T, threads, TFM_ATTN_NAIVE, &tn), TFM_OK);
    tfm_profile *p = tfm_trainer_profile(t);
    const int tr = TFM_PHASE_TRAIN, b = tfm_ctx_bucket(T);
    assert_int_equal(tfm_trainer_forward(t, in, tg, B, T, NULL), TFM_OK);
    assert_int_equal(p->attn_kind_calls[tr][TFM_ATTN_KIND_TILED][b], (uint64_t)(B * L));
    assert_int_equal(p->attn_kind_calls[tr][TFM_ATTN_KIND_NAIVE][b], 0u);
    double ff = L * B * nh * tfm__flash_flops(T, hs, 0);
    assert_true(fabs(p->attn_kind_flops[tr][TFM_ATTN_KIND_TILED][b] - ff) < 1.0);
    double peak = ((double)B * nh * T + (double)threads * tfm__flash_scratch(T)) * sizeof(float);
    assert_true(p->attn_peak_bytes[tr] == peak);
    assert_int_equal(tfm_trainer_backward(t), TFM_OK);
    double fb = ff + L * B * nh * tfm__flash_flops(T, hs, 1);
    assert_true(fabs(p->attn_kind_flops[tr][TFM_ATTN_KIND_TILED][b] - fb) < 1.0);
    assert_true(p->attn_peak_bytes[tr] == peak);
    /* memory: lse and the scratch tiles, against the probabilities and dP */
    size_t tot_t, att_t, tot_n, att_n;
    tfm_trainer_memory(t, &tot_t, &att_t);
    tfm_trainer_memory(tn, &tot_n, &att_n);
    assert_int_equal(att_t, ((size_t)L * B * nh * T + threads * tfm__flash_scratch(T)) * 4);
    assert_int_equal(att_n, ((size_t)L * B * nh + threads) * T * T * 4);
    assert_int_equal(tot_n - att_n, tot_t - att_t); /* the rest is the same */
    free(in);
    free(tg);
    tfm_trainer_destroy(t);
    tfm_trainer_destroy(tn);
    tfm_model_destroy(m);
}

/* Choice and bad input. */
static void test_choice(void **state)
{
    tfm_model *m = tu_random_model(16, 24, 1, 2, 2, 11, 32, 1, 1);
    tfm_trainer *t = (tfm_trainer *)1;
    assert_int_equal(tfm_trainer_create_attn(m, 1, 8, 1, (tfm_attn_kernel)7, &t),
                     TFM_E_INVALID);
    assert_null(t);
    assert_int_equal(tfm_trainer_create_attn(m, 1, 8, 1, (tfm_attn_kernel)-1, &t),
                     TFM_E_INVALID);
    /* small: AUTO is naive, as tfm_trainer_create has always been */
    assert_int_equal(tfm_trainer_create(m, 1, 8, 1, &t), TFM_OK);
    assert_int_equal(tfm_trainer_attention(t), TFM_ATTN_NAIVE);
    tfm_trainer_destroy(t);
    /* the rule's edge: naive's bytes just over the threshold */
    tfm_config c = m->cfg;
    c.n_layers = 4;
    c.n_heads = 4;
    assert_int_equal(tfm_trainer_attention_pick(&c, 16, 256, 1), TFM_ATTN_NAIVE); /* 65 MiB */
    assert_int_equal(tfm_trainer_attention_pick(&c, 64, 256, 1), TFM_ATTN_TILED); /* 256+ MiB */
    assert_int_equal(tfm_trainer_attention_pick(&c, 1, 511, 1), TFM_ATTN_NAIVE);
    assert_int_equal(tfm_trainer_attention_pick(&c, 1, 512, 1), TFM_ATTN_TILED);
    tfm_model_destroy(m);
}

/* A tiled step allocates nothing (after warm-up steps: OpenBLAS sets up a
 * thread's buffers on that thread's first call, and which pool thread runs
 * which chunk first varies; the naive trainer shows the same). */
static void test_noalloc_step(void **state)
{
    int B = 2, T = 150, V = 17;
    tfm_model *m = tu_random_model(32, 48, 2, 4, 2, V, T, 1, 9);
    tfm_trainer *t;
    assert_int_equal(tfm_trainer_create_attn(m, B, T, 2, TFM_ATTN_TILED, &t), TFM_OK);
    tfm_train_config c;
    tfm_train_config_defaults(&c);
    int in[300], tg[300];
    random_batch(B, T, V, 8, in, tg);
    for (int w = 0; w < 3; w++)
        for (int s = 0; s < 3; s++)
            assert_int_equal(tfm_trainer_step(t, &c, in, tg, B, T - s * 40, NULL), TFM_OK);
    long before = tu_alloc_count();
    for (int s = 0; s < 3; s++)
        assert_int_equal(tfm_trainer_step(t, &c, in, tg, B, T - s * 40, NULL), TFM_OK);
    assert_int_equal(tu_alloc_count(), before);
    void *volatile probe = malloc(8); /* the counter counts (volatile: not elided) */
    free(probe);
    assert_int_equal(tu_alloc_count() - before, 2);
    tfm_trainer_destroy(t);
    tfm_model_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels_match_reference),
        cmocka_unit_test(test_flops_between_triangle_and_square),
        cmocka_unit_test(test_trainer_mha),
        cmocka_unit_test(test_trainer_gqa),
        cmocka_unit_test(test_trainer_mqa),
        cmocka_unit_test(test_gradcheck_tiled),
        cmocka_unit_test(test_repeatable_and_close_to_naive),
        cmocka_unit_test(test_profile_and_memory),
        cmocka_unit_test(test_choice),
        cmocka_unit_test(test_noalloc_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
