/* test_linear_attn.c — the linear-attention kernels (core/linear_attn.c):
 * the feature map, chunked prefill against the double-precision quadratic
 * reference (lengths across chunk boundaries, f 4 and 16, head_dim 8 and
 * 16, MHA and GQA), prefill against token-by-token decode and against
 * itself in two calls, the state size, the backward against finite
 * differences, the FLOP count against a hand count, bad arguments, and
 * that no call allocates.
 *
 * Linked with -Wl,--wrap=malloc,... (CMakeLists.txt) for the last.
 *
 * TFM_LINATTN_BENCH=1 also times decode per token against the context
 * length (linear, and softmax attention's decode for contrast): printed,
 * not asserted. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "alloc_count.h"
#include "testutil.h"
#include "tfm/linear_attn.h"

/* ---- helpers ---------------------------------------------------------------- */

static void fill(float *p, size_t n, float amp, uint64_t *s)
{
    for (size_t i = 0; i < n; i++)
        p[i] = amp * tu_uniform(s);
}

/* ||got - ref||_inf / ||ref||_inf */
/* One problem: inputs, a state over its own memory, prefill scratch. */
typedef struct lcase {
    tfm_linattn_shape sh;
    int T;
    float *q, *k, *v, *out;
    double *ref;
    tfm_linattn_state st;
    void *mem;
    float *scratch;
    size_t nscratch;
} lcase;

static void lcase_init(lcase *c, int H, int Hkv, int f, int hd, int T, int chunk, float amp,
                       uint64_t seed)
{
    memset(c, 0, sizeof *c);
    c->sh = (tfm_linattn_shape){H, Hkv, f, hd};
    c->T = T;
    uint64_t s = seed;
    c->q = malloc(sizeof(float) * (size_t)T * H * f);
    c->k = malloc(sizeof(float) * (size_t)T * Hkv * f);
    c->v = malloc(sizeof(float) * (size_t)T * Hkv * hd);
    c->out = malloc(sizeof(float) * (size_t)T * H * hd);
    c->ref = malloc(sizeof(double) * (size_t)T * H * hd);
    fill(c->q, (size_t)T * H * f, amp, &s);
    fill(c->k, (size_t)T * Hkv * f, amp, &s);
    fill(c->v, (size_t)T * Hkv * hd, 1.0f, &s);
    size_t bytes = tfm_linattn_state_bytes(&c->sh);
    c->mem = malloc(bytes);
    assert_int_equal(tfm_linattn_state_init(&c->st, &c->sh, c->mem, bytes), TFM_OK);
    c->nscratch = tfm_linattn_prefill_scratch(&c->sh, chunk);
    c->scratch = malloc(sizeof(float) * c->nscratch);
}

static void lcase_free(lcase *c)
{
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->out);
    free(c->ref);
    free(c->mem);
    free(c->scratch);
}

/* ---- feature map and state ------------------------------------------------ */

static void test_linattn_feature_map(void **state)
{
    (void)state;
    assert_int_equal(tfm_linattn_feature_dim(16), 273);
    assert_int_equal(tfm_linattn_feature_dim(4), 21);
    assert_int_equal(tfm_linattn_feature_dim(1), 3);
    uint64_t s = 3;
    for (int f = 1; f <= 16; f += 5) {
        float x[16], y[16], px[273], py[273];
        fill(x, (size_t)f, 1.5f, &s);
        fill(y, (size_t)f, 1.5f, &s);
        assert_int_equal(tfm_linattn_feature_map(x, f, px), TFM_OK);
        assert_int_equal(tfm_linattn_feature_map(y, f, py), TFM_OK);
        double dot = 0.0, xy = 0.0;
        for (size_t i = 0; i < tfm_linattn_feature_dim(f); i++)
            dot += (double)px[i] * py[i];
        for (int i = 0; i < f; i++)
            xy += (double)x[i] * y[i];
        /* phi(x).phi(y) = 1 + x.y/sqrt(f) + (x.y)^2/(2f), the Taylor terms of exp */
        double want = 1.0 + xy / sqrt((double)f) + xy * xy / (2.0 * f);
        assert_true(fabs(dot - want) < 1e-5 * fmax(1.0, fabs(want)));
        assert_true(px[0] == 1.0f);
        /* a quadratic entry, by its documented index */
        if (f > 2) {
            double q = (double)x[1] * x[2] / (sqrt(2.0) * sqrt((double)f));
            assert_true(fabs(px[1 + f + 1 * f + 2] - q) < 1e-6);
        }
    }
}

static void test_linattn_state_size(void **state)
{
    (void)state;
    tfm_linattn_shape sh = {8, 2, 16, 64};
    /* 4 bytes x n_kv_heads x F x (head_dim + 1): S and z */
    assert_int_equal(tfm_linattn_state_bytes(&sh), 4u * 2 * 273 * 65);
    sh = (tfm_linattn_shape){2, 2, 4, 8};
    size_t bytes = tfm_linattn_state_bytes(&sh);
    assert_int_equal(bytes, 4u * 2 * 21 * 9);
    float *mem = malloc(bytes);
    tfm_linattn_state st;
    assert_int_equal(tfm_linattn_state_init(&st, &sh, mem, bytes - 1), TFM_E_RANGE);
    memset(mem, 0x7f, bytes);
    assert_int_equal(tfm_linattn_state_init(&st, &sh, mem, bytes), TFM_OK);
    for (size_t i = 0; i < bytes / 4; i++)
        assert_true(mem[i] == 0.0f);
    assert_ptr_equal(st.S, mem);
    assert_ptr_equal(st.z, mem + 2 * 21 * 8);
    assert_int_equal(st.n_tokens, 0);
    /* the size does not grow with the context: decode 300 tokens in place */
    float q[8], k[8], v[16], o[16];
    uint64_t s = 5;
    for (int t = 0; t < 300; t++) {
        fill(q, 8, 1.0f, &s);
        fill(k, 8, 1.0f, &s);
        fill(v, 16, 1.0f, &s);
        assert_int_equal(tfm_linattn_decode(&st, q, k, v, o), TFM_OK);
    }
    assert_int_equal(st.n_tokens, 300);
    assert_true(st.z[0] == 300.0f); /* z's constant feature counts the tokens */
    assert_true(st.z[21] == 300.0f);
    tfm_linattn_state_reset(&st);
    assert_int_equal(st.n_tokens, 0);
    for (size_t i = 0; i < bytes / 4; i++)
        assert_true(mem[i] == 0.0f);
    free(mem);
}

/* ---- prefill against the reference ------------------------------------------- */

static void test_linattn_prefill_matches_reference(void **state)
{
    (void)state;
    const int Ts[] = {1, 7, 64, 65, 200}, fs[] = {4, 16}, hds[] = {8, 16}, kvs[] = {1, 2};
    const int chunks[] = {TFM_LINATTN_CHUNK, 16, 1};
    double worst = 0.0;
    int cases = 0;
    for (int it = 0; it < 5; it++)
        for (int ifd = 0; ifd < 2; ifd++)
            for (int ih = 0; ih < 2; ih++)
                for (int ik = 0; ik < 2; ik++) {
                    lcase c;
                    int T = Ts[it];
                    lcase_init(&c, 2, kvs[ik], fs[ifd], hds[ih], T, TFM_LINATTN_CHUNK, 1.0f,
                               100 + it * 8 + ifd * 4 + ih * 2 + ik);
                    assert_int_equal(tfm_linattn_reference(&c.sh, T, c.q, c.k, c.v, c.ref), TFM_OK);
                    for (int ic = 0; ic < 3; ic++) {
                        /* the default chunk over every length; the others on fewer */
                        if (ic > 0 && (ih != 0 || it < 2))
                            continue;
                        size_t ns = tfm_linattn_prefill_scratch(&c.sh, chunks[ic]);
                        float *scr = malloc(ns * sizeof(float));
                        tfm_linattn_state_reset(&c.st);
                        assert_int_equal(tfm_linattn_prefill(&c.st, T, chunks[ic], c.q, c.k, c.v,
                                                             c.out, scr, ns),
                                         TFM_OK);
                        assert_int_equal(c.st.n_tokens, T);
                        double e = tu_rel_inf(c.out, c.ref, (size_t)T * 2 * c.sh.head_dim);
                        if (e > 1e-5)
                            print_error("T %d f %d hd %d kv %d chunk %d: rel err %g\n", T,
                                        c.sh.f, c.sh.head_dim, c.sh.n_kv_heads, chunks[ic], e);
                        assert_true(e <= 1e-5);
                        worst = fmax(worst, e);
                        cases++;
                        free(scr);
                    }
                    lcase_free(&c);
                }
    printf("    prefill vs double reference: %d cases, worst rel err %.3g\n", cases, worst);
}

/* Larger q.k (the quadratic term dominates) and more heads per group. */
static void test_linattn_prefill_large_scores(void **state)
{
    (void)state;
    lcase c;
    lcase_init(&c, 4, 1, 16, 16, 150, TFM_LINATTN_CHUNK, 2.5f, 77);
    assert_int_equal(tfm_linattn_reference(&c.sh, c.T, c.q, c.k, c.v, c.ref), TFM_OK);
    assert_int_equal(tfm_linattn_prefill(&c.st, c.T, TFM_LINATTN_CHUNK, c.q, c.k, c.v, c.out,
                                         c.scratch, c.nscratch),
                     TFM_OK);
    double e = tu_rel_inf(c.out, c.ref, (size_t)c.T * 4 * 16);
    printf("    amplitude 2.5, 4 query heads on 1 kv head: rel err %.3g\n", e);
    assert_true(e <= 1e-5);
    lcase_free(&c);
}

/* ---- prefill, decode, and prefill in pieces agree ---------------------------- */

static void test_linattn_prefill_equals_decode(void **state)
{
    (void)state;
    const int kvs[] = {1, 2}, fs[] = {4, 16};
    for (int ik = 0; ik < 2; ik++)
        for (int ifd = 0; ifd < 2; ifd++) {
            int T = 200, H = 2, hd = 16, f = fs[ifd], Hkv = kvs[ik];
            lcase c;
            lcase_init(&c, H, Hkv, f, hd, T, TFM_LINATTN_CHUNK, 1.0f, 11 + ik * 2 + ifd);
            assert_int_equal(tfm_linattn_prefill(&c.st, T, TFM_LINATTN_CHUNK, c.q, c.k, c.v,
                                                 c.out, c.scratch, c.nscratch),
                             TFM_OK);
            size_t sb = tfm_linattn_state_bytes(&c.sh);
            void *mem2 = malloc(sb);
            float *dec = malloc(sizeof(float) * (size_t)T * H * hd);
            tfm_linattn_state st2;
            assert_int_equal(tfm_linattn_state_init(&st2, &c.sh, mem2, sb), TFM_OK);
            for (int t = 0; t < T; t++)
                assert_int_equal(tfm_linattn_decode(&st2, c.q + (size_t)t * H * f,
                                                    c.k + (size_t)t * Hkv * f,
                                                    c.v + (size_t)t * Hkv * hd,
                                                    dec + (size_t)t * H * hd),
                                 TFM_OK);
            double e = tu_rel_inf_f(dec, c.out, (size_t)T * H * hd);
            double es = tu_rel_inf_f(st2.S, c.st.S, sb / sizeof(float));
            printf("    decode vs prefill (f %d, kv %d): out %.3g, state %.3g\n", f, Hkv, e, es);
            assert_true(e <= 1e-5);
            assert_true(es <= 1e-5);
            assert_int_equal(st2.n_tokens, c.st.n_tokens);
            free(mem2);
            free(dec);
            lcase_free(&c);
        }
}

static void test_linattn_prefill_in_two_calls(void **state)
{
    (void)state;
    const int splits[][2] = {{64, 136}, {1, 199}, {100, 100}, {199, 1}, {0, 200}};
    int T = 200, H = 2, Hkv = 1, f = 16, hd = 8;
    lcase c;
    lcase_init(&c, H, Hkv, f, hd, T, TFM_LINATTN_CHUNK, 1.0f, 21);
    assert_int_equal(tfm_linattn_prefill(&c.st, T, TFM_LINATTN_CHUNK, c.q, c.k, c.v, c.out,
                                         c.scratch, c.nscratch),
                     TFM_OK);
    float *two = malloc(sizeof(float) * (size_t)T * H * hd);
    size_t sb = tfm_linattn_state_bytes(&c.sh);
    void *mem2 = malloc(sb);
    tfm_linattn_state st2;
    for (int i = 0; i < 5; i++) {
        int T1 = splits[i][0], T2 = splits[i][1];
        assert_int_equal(tfm_linattn_state_init(&st2, &c.sh, mem2, sb), TFM_OK);
        assert_int_equal(tfm_linattn_prefill(&st2, T1, TFM_LINATTN_CHUNK, c.q, c.k, c.v, two,
                                             c.scratch, c.nscratch),
                         TFM_OK);
        assert_int_equal(tfm_linattn_prefill(&st2, T2, TFM_LINATTN_CHUNK,
                                             c.q + (size_t)T1 * H * f, c.k + (size_t)T1 * Hkv * f,
                                             c.v + (size_t)T1 * Hkv * hd,
                                             two + (size_t)T1 * H * hd, c.scratch, c.nscratch),
                         TFM_OK);
        assert_int_equal(st2.n_tokens, T);
        assert_true(tu_rel_inf_f(two, c.out, (size_t)T * H * hd) <= 1e-5);
        assert_true(tu_rel_inf_f(st2.S, c.st.S, sb / sizeof(float)) <= 1e-5);
    }
    /* a forked state continues like the original */
    tfm_linattn_state st3;
    void *mem3 = malloc(sb);
    assert_int_equal(tfm_linattn_state_init(&st3, &c.sh, mem3, sb), TFM_OK);
    assert_int_equal(tfm_linattn_state_copy(&st3, &st2), TFM_OK);
    float o2[16], o3[16];
    assert_int_equal(tfm_linattn_decode(&st2, c.q, c.k, c.v, o2), TFM_OK);
    assert_int_equal(tfm_linattn_decode(&st3, c.q, c.k, c.v, o3), TFM_OK);
    assert_memory_equal(o2, o3, sizeof(float) * H * hd);
    assert_int_equal(st3.n_tokens, T + 1);
    free(mem3);
    free(mem2);
    free(two);
    lcase_free(&c);
}

/* ---- backward --------------------------------------------------------------- */

/* L = sum dout . y in double through the reference */
static double ref_loss(const lcase *c, const float *dout, double *y)
{
    tfm_linattn_reference(&c->sh, c->T, c->q, c->k, c->v, y);
    double L = 0.0;
    for (size_t i = 0; i < (size_t)c->T * c->sh.n_heads * c->sh.head_dim; i++)
        L += (double)dout[i] * y[i];
    return L;
}

/* central differences on every element of x (n floats) against g */
static double fd_check(lcase *c, const float *dout, float *x, const float *g, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i];
        float xp = x0 + 1e-3f, xm = x0 - 1e-3f;
        x[i] = xp;
        double Lp = ref_loss(c, dout, c->ref);
        x[i] = xm;
        double Lm = ref_loss(c, dout, c->ref);
        x[i] = x0;
        double fd = (Lp - Lm) / ((double)xp - (double)xm);
        num = fmax(num, fabs(fd - g[i]));
        den = fmax(den, fabs(fd));
    }
    return num / den;
}

static void test_linattn_backward_finite_differences(void **state)
{
    (void)state;
    const int kvs[] = {1, 2}, chunks[] = {4, 1, 64};
    for (int ik = 0; ik < 2; ik++)
        for (int ic = 0; ic < 3; ic++) {
            int T = 11, H = 2, Hkv = kvs[ik], f = 3, hd = 4, chunk = chunks[ic];
            lcase c;
            lcase_init(&c, H, Hkv, f, hd, T, chunk, 1.0f, 31 + ik);
            size_t nq = (size_t)T * H * f, nk = (size_t)T * Hkv * f, nv = (size_t)T * Hkv * hd,
                   no = (size_t)T * H * hd;
            float *dout = malloc(no * sizeof(float)), *dq = calloc(nq, sizeof(float)),
                  *dk = calloc(nk, sizeof(float)), *dv = calloc(nv, sizeof(float));
            uint64_t s = 99;
            fill(dout, no, 1.0f, &s);
            size_t ns = tfm_linattn_backward_scratch(&c.sh, T, chunk);
            float *scr = malloc(ns * sizeof(float));
            assert_int_equal(tfm_linattn_backward(&c.sh, T, chunk, c.q, c.k, c.v, dout, dq, dk, dv,
                                                  scr, ns),
                             TFM_OK);
            double eq = fd_check(&c, dout, c.q, dq, nq), ek = fd_check(&c, dout, c.k, dk, nk),
                   ev = fd_check(&c, dout, c.v, dv, nv);
            printf("    backward vs finite differences (kv %d, chunk %d): dq %.2g dk %.2g dv %.2g\n",
                   Hkv, chunk, eq, ek, ev);
            assert_true(eq <= 1e-3);
            assert_true(ek <= 1e-3);
            assert_true(ev <= 1e-3);
            /* it accumulates: a second call doubles */
            float *dq1 = malloc(nq * sizeof(float));
            memcpy(dq1, dq, nq * sizeof(float));
            assert_int_equal(tfm_linattn_backward(&c.sh, T, chunk, c.q, c.k, c.v, dout, dq, dk, dv,
                                                  scr, ns),
                             TFM_OK);
            for (size_t i = 0; i < nq; i++)
                assert_true(fabsf(dq[i] - 2.0f * dq1[i]) <= 1e-6f * fmaxf(1.0f, fabsf(dq[i])));
            free(dq1);
            free(scr);
            free(dout);
            free(dq);
            free(dk);
            free(dv);
            lcase_free(&c);
        }
}

/* Longer sequences: chunked backward (f 16, several chunks) against a
 * one-chunk backward (the plain quadratic form, no state) — two different
 * routes to the same gradients. */
static void test_linattn_backward_chunked_vs_quadratic(void **state)
{
    (void)state;
    int T = 150, H = 4, Hkv = 2, f = 16, hd = 16;
    lcase c;
    lcase_init(&c, H, Hkv, f, hd, T, 32, 1.0f, 41);
    size_t nq = (size_t)T * H * f, nk = (size_t)T * Hkv * f, nv = (size_t)T * Hkv * hd,
           no = (size_t)T * H * hd;
    float *dout = malloc(no * sizeof(float));
    float *g[2][3];
    uint64_t s = 7;
    fill(dout, no, 1.0f, &s);
    const int chunks[2] = {32, T};
    for (int r = 0; r < 2; r++) {
        g[r][0] = calloc(nq, sizeof(float));
        g[r][1] = calloc(nk, sizeof(float));
        g[r][2] = calloc(nv, sizeof(float));
        size_t ns = tfm_linattn_backward_scratch(&c.sh, T, chunks[r]);
        float *scr = malloc(ns * sizeof(float));
        assert_int_equal(tfm_linattn_backward(&c.sh, T, chunks[r], c.q, c.k, c.v, dout, g[r][0],
                                              g[r][1], g[r][2], scr, ns),
                         TFM_OK);
        free(scr);
    }
    double eq = tu_rel_inf_f(g[0][0], g[1][0], nq), ek = tu_rel_inf_f(g[0][1], g[1][1], nk),
           ev = tu_rel_inf_f(g[0][2], g[1][2], nv);
    printf("    backward chunk 32 vs one chunk of 150: dq %.2g dk %.2g dv %.2g\n", eq, ek, ev);
    assert_true(eq <= 1e-4 && ek <= 1e-4 && ev <= 1e-4);
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < 3; i++)
            free(g[r][i]);
    free(dout);
    lcase_free(&c);
}

/* ---- op accounting ---------------------------------------------------------- */

static void test_linattn_flops_hand_count(void **state)
{
    (void)state;
    /* H 2, Hkv 1, f 2, head_dim 3, T 5, chunk 2: F = 7, chunks of 2, 2, 1;
     * phi of a row 2f + f^2 = 8.
     * chunk of n = 2:  phi(K) 2*8 = 16
     *   per query head: phi(Q) 16, Q K^T 2*2*2*2 = 16, P(a) 5 * 3 entries
     *   = 15, w V 2*2*2*3 = 24, phi(Q) S 2*2*7*3 = 84, phi(Q) z 2*2*7 = 28,
     *   eps/1/D/scale 2*(3+2) = 10: 193, two heads 386
     *   S += phi(K)^T V 2*7*2*3 = 84, z 7*2 = 14:          16 + 386 + 98 = 500
     * chunk of n = 1:  phi(K) 8; per head 8 + 4 + 5 + 6 + 42 + 14 + 5 = 84,
     *   two 168; S 42, z 7:                                 8 + 168 + 49 = 225
     * total 500 + 500 + 225 = 1225 */
    tfm_linattn_shape sh = {2, 1, 2, 3};
    assert_true(tfm_linattn_flops(&sh, 5, 2) == 1225.0);
    assert_true(tfm_linattn_flops(&sh, 0, 2) == 0.0);
    /* two kv heads do the whole thing twice, each with one query head:
     * per chunk of 2: 16 + 193 + 98 = 307, of 1: 8 + 84 + 49 = 141 */
    sh.n_kv_heads = 2;
    assert_true(tfm_linattn_flops(&sh, 5, 2) == 2.0 * (307 + 307 + 141));
    /* decode, H 2, Hkv 1: per kv head phi 8 + S 2*7*3 = 42 + z 7 = 57; per
     * query head phi 8 + 2*6*(3+1) = 48 + 2 + 3 = 61: 57 + 2*61 = 179 */
    sh.n_kv_heads = 1;
    assert_true(tfm_linattn_decode_flops(&sh) == 179.0);
    /* linear in T at a fixed chunk: twice the chunks, twice the FLOPs */
    tfm_linattn_shape big = {8, 8, 16, 64};
    assert_true(tfm_linattn_flops(&big, 8192, 64) == 2.0 * tfm_linattn_flops(&big, 4096, 64));
    assert_true(tfm_linattn_flops(&sh, 5, 0) < 0.0);
    /* backward, H 2, Hkv 1, f 2, hd 3, T 5, chunk 2 (chunks c0 2, c1 2, c2 1
     * tokens); J_phi^T a row 3f^2 + 4f = 20.
     * forward sweep (c0, c1): 16 + S 84 + z 14 = 114 each:            228
     * per query head, n = 2: phi(Q) 16, a 16, w 15, w V 24, phi(Q) Sp 84,
     *   phi(Q) zp 28, y/dN/dD 2*(3 + 4*3) = 30, dw 24, da 15, dq 16, dk 16,
     *   dv 24: 308; after the first chunk also dphi(Q) 84, dD zp 28, J 40,
     *   dS 84, dz 28: 264.  n = 1: 8+4+5+6+42+14+15+6+5+4+4+6 = 119, +132.
     * keys through later queries, n = 2: 84 + 14 + 84 + 40 = 222
     * c2: phi(K) 8 + 2 * 251 = 510;  c1: 16 + 222 + 2 * 572 = 1382;
     * c0: 16 + 222 + 2 * 308 = 854.  Total 228 + 510 + 1382 + 854 = 2974 */
    assert_true(tfm_linattn_backward_flops(&sh, 5, 2) == 2974.0);
    assert_true(tfm_linattn_backward_flops(&sh, 0, 2) == 0.0);
    assert_true(tfm_linattn_backward_flops(&sh, 5, 0) < 0.0);
}

/* ---- errors --------------------------------------------------------------------- */

static void test_linattn_bad_arguments(void **state)
{
    (void)state;
    tfm_linattn_shape sh = {2, 1, 4, 8};
    size_t sb = tfm_linattn_state_bytes(&sh);
    float *mem = malloc(sb + 8);
    tfm_linattn_state st;
    float q[64], k[64], v[64], o[64], scr[4096], phi[32];
    memset(q, 0, sizeof q);
    memset(k, 0, sizeof k);
    memset(v, 0, sizeof v);
    const tfm_linattn_shape bad[] = {
        {0, 1, 4, 8}, {2, 0, 4, 8}, {3, 2, 4, 8}, {2, 4, 4, 8}, {2, 1, 0, 8},
        {2, 1, TFM_LINATTN_MAX_F + 1, 8}, {2, 1, 4, 0}, {2, 1, 4, TFM_LINATTN_MAX_HEAD_DIM + 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(tfm_linattn_shape_check(&bad[i]), TFM_E_INVALID);
        assert_int_equal(tfm_linattn_state_bytes(&bad[i]), 0);
        assert_int_equal(tfm_linattn_state_init(&st, &bad[i], mem, sb), TFM_E_INVALID);
        assert_int_equal(tfm_linattn_prefill_scratch(&bad[i], 8), 0);
        assert_int_equal(tfm_linattn_backward_scratch(&bad[i], 8, 8), 0);
        assert_true(tfm_linattn_flops(&bad[i], 8, 8) < 0.0);
        assert_true(tfm_linattn_decode_flops(&bad[i]) < 0.0);
        assert_true(tfm_linattn_backward_flops(&bad[i], 8, 8) < 0.0);
        double r[64];
        assert_int_equal(tfm_linattn_reference(&bad[i], 1, q, k, v, r), TFM_E_INVALID);
        float g[64];
        assert_int_equal(tfm_linattn_backward(&bad[i], 1, 8, q, k, v, o, g, g, g, scr, 4096),
                         TFM_E_INVALID);
    }
    assert_int_equal(tfm_linattn_shape_check(NULL), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_feature_dim(0), 0);
    assert_int_equal(tfm_linattn_feature_dim(TFM_LINATTN_MAX_F + 1), 0);
    assert_int_equal(tfm_linattn_feature_map(NULL, 4, phi), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_feature_map(q, 0, phi), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_feature_map(q, 4, NULL), TFM_E_INVALID);

    assert_int_equal(tfm_linattn_state_init(NULL, &sh, mem, sb), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_state_init(&st, &sh, NULL, sb), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_state_init(&st, &sh, (char *)mem + 1, sb), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_state_init(&st, &sh, mem, sb - 4), TFM_E_RANGE);
    assert_int_equal(tfm_linattn_state_init(&st, &sh, mem, sb), TFM_OK);

    size_t ns = tfm_linattn_prefill_scratch(&sh, 8);
    assert_int_equal(ns, 8 * (2 * 21 + 8 + 1));
    assert_int_equal(tfm_linattn_prefill_scratch(&sh, 0), 0);
    assert_int_equal(tfm_linattn_prefill_scratch(&sh, TFM_LINATTN_MAX_CHUNK + 1), 0);
    assert_int_equal(tfm_linattn_prefill(NULL, 2, 8, q, k, v, o, scr, ns), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_prefill(&st, -1, 8, q, k, v, o, scr, ns), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_prefill(&st, 2, 0, q, k, v, o, scr, ns), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_prefill(&st, 2, TFM_LINATTN_MAX_CHUNK + 1, q, k, v, o, scr, ns),
                     TFM_E_INVALID);
    assert_int_equal(tfm_linattn_prefill(&st, 2, 8, NULL, k, v, o, scr, ns), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_prefill(&st, 2, 8, q, NULL, v, o, scr, ns), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_prefill(&st, 2, 8, q, k, NULL, o, scr, ns), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_prefill(&st, 2, 8, q, k, v, NULL, scr, ns), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_prefill(&st, 2, 8, q, k, v, o, NULL, ns), TFM_E_INVALID);
    /* the scratch a chunk of 8 needs is too small for chunks of 8 over 8+ tokens,
     * and enough for a call of 2 tokens (its chunk is min(chunk, T)) */
    assert_int_equal(tfm_linattn_prefill(&st, 8, 8, q, k, v, o, scr, ns - 1), TFM_E_RANGE);
    assert_int_equal(st.n_tokens, 0); /* untouched on error */
    assert_int_equal(tfm_linattn_prefill(&st, 0, 8, NULL, NULL, NULL, NULL, NULL, 0), TFM_OK);
    assert_int_equal(tfm_linattn_prefill(&st, 2, 8, q, k, v, o, scr, ns), TFM_OK);
    assert_int_equal(st.n_tokens, 2);

    assert_int_equal(tfm_linattn_decode(NULL, q, k, v, o), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_decode(&st, NULL, k, v, o), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_decode(&st, q, NULL, v, o), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_decode(&st, q, k, NULL, o), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_decode(&st, q, k, v, NULL), TFM_E_INVALID);
    tfm_linattn_state blank;
    memset(&blank, 0, sizeof blank);
    assert_int_equal(tfm_linattn_decode(&blank, q, k, v, o), TFM_E_INVALID);

    assert_int_equal(tfm_linattn_reference(&sh, -1, q, k, v, NULL), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_reference(&sh, 1, q, k, v, NULL), TFM_E_INVALID);

    size_t nb = tfm_linattn_backward_scratch(&sh, 2, 8);
    float g[64];
    assert_int_equal(tfm_linattn_backward_scratch(&sh, 0, 8), 0);
    assert_int_equal(tfm_linattn_backward(&sh, -1, 8, q, k, v, o, g, g, g, scr, nb),
                     TFM_E_INVALID);
    assert_int_equal(tfm_linattn_backward(&sh, 2, 0, q, k, v, o, g, g, g, scr, nb),
                     TFM_E_INVALID);
    assert_int_equal(tfm_linattn_backward(&sh, 2, 8, q, k, v, NULL, g, g, g, scr, nb),
                     TFM_E_INVALID);
    assert_int_equal(tfm_linattn_backward(&sh, 2, 8, q, k, v, o, g, NULL, g, scr, nb),
                     TFM_E_INVALID);
    assert_int_equal(tfm_linattn_backward(&sh, 2, 8, q, k, v, o, g, g, g, scr, nb - 1),
                     TFM_E_RANGE);

    tfm_linattn_shape other = {2, 2, 4, 8};
    size_t sb2 = tfm_linattn_state_bytes(&other);
    float *mem2 = malloc(sb2);
    tfm_linattn_state st2;
    assert_int_equal(tfm_linattn_state_init(&st2, &other, mem2, sb2), TFM_OK);
    assert_int_equal(tfm_linattn_state_copy(&st2, &st), TFM_E_INVALID);
    assert_int_equal(tfm_linattn_state_copy(NULL, &st), TFM_E_INVALID);
    tfm_linattn_state_reset(NULL); /* a no-op */
    free(mem2);
    free(mem);
}

/* ---- no allocation ------------------------------------------------------------ */

static void test_linattn_noalloc(void **state)
{
    (void)state;
    int T = 150, H = 4, Hkv = 2, f = 16, hd = 16;
    lcase c;
    lcase_init(&c, H, Hkv, f, hd, T, TFM_LINATTN_CHUNK, 1.0f, 51);
    size_t no = (size_t)T * H * hd, nb = tfm_linattn_backward_scratch(&c.sh, T, 64);
    float *dout = calloc(no, sizeof(float)), *bscr = malloc(nb * sizeof(float));
    float *dq = calloc((size_t)T * H * f, sizeof(float)), *dk = calloc((size_t)T * Hkv * f, 4),
          *dv = calloc((size_t)T * Hkv * hd, 4);
    float tmp[64];
    /* warm-up: OpenBLAS sets up its buffers on a thread's first calls */
    for (int w = 0; w < 2; w++) {
        tfm_linattn_state_reset(&c.st);
        assert_int_equal(tfm_linattn_prefill(&c.st, T, 64, c.q, c.k, c.v, c.out, c.scratch,
                                             c.nscratch),
                         TFM_OK);
        assert_int_equal(tfm_linattn_backward(&c.sh, T, 64, c.q, c.k, c.v, dout, dq, dk, dv, bscr,
                                              nb),
                         TFM_OK);
    }
    long before = tu_alloc_count();
    tfm_linattn_state_reset(&c.st);
    assert_int_equal(tfm_linattn_prefill(&c.st, T - 10, 64, c.q, c.k, c.v, c.out, c.scratch,
                                         c.nscratch),
                     TFM_OK);
    for (int t = 0; t < 10; t++)
        assert_int_equal(tfm_linattn_decode(&c.st, c.q, c.k, c.v, c.out), TFM_OK);
    assert_int_equal(tfm_linattn_feature_map(c.q, f, c.out), TFM_OK);
    assert_int_equal(tfm_linattn_backward(&c.sh, T, 64, c.q, c.k, c.v, dout, dq, dk, dv, bscr, nb),
                     TFM_OK);
    assert_int_equal(tfm_linattn_reference(&c.sh, 3, c.q, c.k, c.v, c.ref), TFM_OK);
    (void)tmp;
    assert_int_equal(tu_alloc_count(), before);
    void *volatile probe = malloc(8); /* the counter counts (volatile: not elided) */
    free(probe);
    assert_int_equal(tu_alloc_count() - before, 2);
    free(dout);
    free(bscr);
    free(dq);
    free(dk);
    free(dv);
    lcase_free(&c);
}

/* ---- the timing loop (TFM_LINATTN_BENCH=1) ------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Per-token decode of one layer after a prefix of L tokens: linear
 * attention (state fixed in size) and softmax attention's decode kernel
 * (tiled, core/attention.c) over an L-row cache, same heads and head_dim.
 * Medians of 15 batches of 16 tokens (short batches: a preemption on a
 * shared machine spoils one batch, not the median); prefill, median of 3. */
static void bench_decode(int H, int Hkv, int f, int hd)
{
    tfm_linattn_shape sh = {H, Hkv, f, hd};
    enum { LMAX = 8192, STEPS = 16, ROUNDS = 15, PROUNDS = 3 };
    const size_t N = LMAX + STEPS * ROUNDS;
    uint64_t s = 1;
    size_t sb = tfm_linattn_state_bytes(&sh), ns = tfm_linattn_prefill_scratch(&sh, 64);
    float *q = malloc(sizeof(float) * N * H * f), *k = malloc(sizeof(float) * N * Hkv * f);
    float *v = malloc(sizeof(float) * N * Hkv * hd), *out = malloc(sizeof(float) * N * H * hd);
    float *scr = malloc(ns * sizeof(float)), *mem = malloc(sb);
    /* softmax side: a cache of keys of width hd; v doubles as its values */
    float *sk = malloc(sizeof(float) * N * Hkv * hd), *sq = malloc(sizeof(float) * H * hd);
    float *sscr = malloc(tfm__attn_scratch(TFM_ATTN_TILED, 1, (int)N) * sizeof(float) + 64);
    fill(q, N * H * f, 1.0f, &s);
    fill(k, N * Hkv * f, 1.0f, &s);
    fill(v, N * Hkv * hd, 1.0f, &s);
    fill(sk, N * Hkv * hd, 1.0f, &s);
    fill(sq, (size_t)H * hd, 1.0f, &s);
    tfm_linattn_state st;
    tfm_linattn_state_init(&st, &sh, mem, sb);
    tfm_linattn_prefill(&st, 512, 64, q, k, v, out, scr, ns); /* warm-up */
    for (int i = 0; i < 64; i++)
        tfm_linattn_decode(&st, q, k, v, out);
    printf("    decode per token, H %d, kv %d, f %d, head_dim %d (state %zu bytes, %.0f flops):\n",
           H, Hkv, f, hd, sb, tfm_linattn_decode_flops(&sh));
    printf("    %8s %14s %16s %14s %14s\n", "context", "linear us/tok", "softmax us/tok",
           "prefill tok/s", "prefill GF/s");
    for (int L = 256; L <= LMAX; L *= 2) {
        double tl[ROUNDS], ts[ROUNDS], tp[PROUNDS];
        for (int r = 0; r < PROUNDS; r++) {
            tfm_linattn_state_reset(&st);
            double t0 = now_s();
            tfm_linattn_prefill(&st, L, 64, q, k, v, out, scr, ns);
            tp[r] = now_s() - t0;
        }
        for (int r = 0; r < ROUNDS; r++) {
            double t0 = now_s();
            for (int i = 0; i < STEPS; i++) {
                size_t t = (size_t)L + (size_t)r * STEPS + i;
                tfm_linattn_decode(&st, q + t * H * f, k + t * Hkv * f, v + t * Hkv * hd, out);
            }
            tl[r] = (now_s() - t0) / STEPS * 1e6;
            t0 = now_s();
            for (int i = 0; i < STEPS; i++)
                for (int h = 0; h < H; h++) {
                    int g = h / (H / Hkv);
                    tfm__attn_decode(TFM_ATTN_TILED, out + (size_t)h * hd, sq + (size_t)h * hd,
                                     sk + (size_t)g * hd, v + (size_t)g * hd, Hkv * hd, hd,
                                     L + r * STEPS + i + 1, sscr);
                }
            ts[r] = (now_s() - t0) / STEPS * 1e6;
        }
        qsort(tl, ROUNDS, sizeof(double), cmp_double);
        qsort(ts, ROUNDS, sizeof(double), cmp_double);
        qsort(tp, PROUNDS, sizeof(double), cmp_double);
        printf("    %8d %14.2f %16.2f %14.0f %14.1f\n", L, tl[ROUNDS / 2], ts[ROUNDS / 2],
               L / tp[PROUNDS / 2], tfm_linattn_flops(&sh, L, 64) / tp[PROUNDS / 2] * 1e-9);
    }
    free(q);
    free(k);
    free(v);
    free(out);
    free(scr);
    free(mem);
    free(sk);
    free(sq);
    free(sscr);
}

static void test_linattn_bench(void **state)
{
    (void)state;
    const char *e = getenv("TFM_LINATTN_BENCH");
    if (!e || strcmp(e, "1") != 0)
        skip();
    bench_decode(8, 8, 16, 64);
    bench_decode(8, 2, 16, 64);
    bench_decode(4, 4, 16, 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linattn_feature_map),
        cmocka_unit_test(test_linattn_state_size),
        cmocka_unit_test(test_linattn_prefill_matches_reference),
        cmocka_unit_test(test_linattn_prefill_large_scores),
        cmocka_unit_test(test_linattn_prefill_equals_decode),
        cmocka_unit_test(test_linattn_prefill_in_two_calls),
        cmocka_unit_test(test_linattn_backward_finite_differences),
        cmocka_unit_test(test_linattn_backward_chunked_vs_quadratic),
        cmocka_unit_test(test_linattn_flops_hand_count),
        cmocka_unit_test(test_linattn_bad_arguments),
        cmocka_unit_test(test_linattn_noalloc),
        cmocka_unit_test(test_linattn_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
