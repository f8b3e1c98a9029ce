/* test_recall.c — the exact recall engine against a scan oracle, the
 * lecture's A (S X) computed naively, its memory bound, and its statuses. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tfm/recall.h"

/* The oracle: the latest pair whose key is q, or -1. */
static int oracle(const uint32_t *keys, int n, uint32_t q)
{
    for (int j = n - 1; j >= 0; j--)
        if (keys[j] == q)
            return j;
    return -1;
}

/* Runs the engine and checks every answer against the oracle. */
static void check_store(const uint32_t *keys, const uint32_t *vals, int n, const uint32_t *qs,
                        int M, tfm_recall_stats *st_out)
{
    tfm_recall_answer *ans = malloc((M ? M : 1) * sizeof *ans);
    tfm_recall_request rq = {n, keys, vals, M, qs};
    tfm_recall_stats st;
    tfm_status s = tfm_recall_exact(&rq, ans, &st, NULL);
    if (s != TFM_OK)
        fail_msg("n=%d M=%d: %s", n, M, tfm_strerror(s));
    for (int i = 0; i < M; i++) {
        int j = oracle(keys, n, qs[i]);
        if (ans[i].position != j || ans[i].found != (j >= 0) ||
            (j >= 0 && ans[i].value != vals[j]) || ans[i].weight != 1.0f)
            fail_msg("n=%d M=%d query %d (%u): got found %d value %u pos %d w %g, want pos %d", n,
                     M, i, qs[i], ans[i].found, ans[i].value, ans[i].position,
                     (double)ans[i].weight, j);
    }
    if (st_out)
        *st_out = st;
    free(ans);
}

static uint32_t draw(uint64_t *s, uint32_t space) { return (uint32_t)(tu_rng(s) % space); }

/* The lecture's slide, literally: X one-hot over one shared symbol space for
 * the sequence k1 v1 k2 v2 k3 v3 q, A = X X^T, (S X)[i] = X[i+1], output row
 * N-1 of A (S X) over i < N-1 — against the tiled engine. */
static void test_recall_lecture_example(void **state)
{
    enum { A, B, C, ONE, TWO, THREE, D, NSYM };
    const uint32_t keys[] = {A, B, C}, vals[] = {ONE, TWO, THREE};
    const uint32_t qs[] = {B, D, A, C};
    const int want[] = {TWO, -1, ONE, THREE}; /* -1: ⊥ */
    for (int qi = 0; qi < 4; qi++) {
        int seq[7] = {A, ONE, B, TWO, C, THREE, (int)qs[qi]}, N = 7;
        float X[7][NSYM] = {{0}}, SX[7][NSYM] = {{0}}, out[NSYM] = {0};
        for (int i = 0; i < N; i++)
            X[i][seq[i]] = 1;
        for (int i = 0; i + 1 < N; i++)
            memcpy(SX[i], X[i + 1], sizeof SX[i]);
        for (int i = 0; i < N - 1; i++) {
            float a = 0; /* A[N-1, i] = X[N-1,:] · X[i,:] */
            for (int c = 0; c < NSYM; c++)
                a += X[N - 1][c] * X[i][c];
            for (int c = 0; c < NSYM; c++)
                out[c] += a * SX[i][c];
        }
        int lecture = -1;
        for (int c = 0; c < NSYM; c++)
            if (out[c] == 1.0f)
                lecture = c;
        assert_int_equal(lecture, want[qi]);
    }
    tfm_recall_answer ans[4];
    tfm_recall_request rq = {3, keys, vals, 4, qs};
    assert_int_equal(tfm_recall_exact(&rq, ans, NULL, NULL), TFM_OK);
    for (int qi = 0; qi < 4; qi++) {
        assert_int_equal(ans[qi].found, want[qi] >= 0);
        if (want[qi] >= 0)
            assert_int_equal(ans[qi].value, (uint32_t)want[qi]);
        assert_int_equal(ans[qi].position, want[qi] >= 0 ? (int)qs[qi] : -1);
        assert_true(ans[qi].weight == 1.0f);
    }
}

/* Thousands of random stores: sizes across block edges, key spaces from
 * tiny (many repeats: latest wins) to 2^32 (all distinct), values sometimes
 * drawn from the keys' ids, queries present, absent, or value ids. */
static void test_recall_random_stores(void **state)
{
    uint64_t s = 42;
    enum { MAXN = 600, MAXQ = 160 };
    uint32_t keys[MAXN], vals[MAXN], qs[MAXQ];
    for (int iter = 0; iter < 3000; iter++) {
        int n = (int)(tu_rng(&s) % (iter % 10 == 0 ? MAXN : 300));
        int M = (int)(tu_rng(&s) % MAXQ);
        static const uint32_t spaces[] = {1, 2, 5, 50, 1000, 0xFFFFFFFFu};
        uint32_t kspace = spaces[tu_rng(&s) % 6], vspace = spaces[tu_rng(&s) % 6];
        int shared = tu_rng(&s) % 3 == 0;
        for (int j = 0; j < n; j++) {
            keys[j] = draw(&s, kspace);
            vals[j] = shared ? draw(&s, kspace) : draw(&s, vspace);
        }
        for (int i = 0; i < M; i++) {
            int kind = (int)(tu_rng(&s) % 3);
            if (kind == 0 && n > 0)
                qs[i] = keys[tu_rng(&s) % n];
            else if (kind == 1 && n > 0)
                qs[i] = vals[tu_rng(&s) % n];
            else
                qs[i] = draw(&s, kspace == 0xFFFFFFFFu ? kspace : 2 * kspace);
        }
        check_store(keys, vals, n, qs, M, NULL);
    }
}

static void test_recall_repeated_keys_latest_wins(void **state)
{
    /* one key overwritten across several key blocks, and interleaved keys */
    enum { N = 3 * TFM_RECALL_KEY_BLOCK + 5 };
    uint32_t keys[N], vals[N];
    for (int j = 0; j < N; j++) {
        keys[j] = j % 3 == 0 ? 7u : (uint32_t)(j % 2);
        vals[j] = 1000u + (uint32_t)j;
    }
    const uint32_t qs[] = {7, 0, 1, 2};
    tfm_recall_answer ans[4];
    tfm_recall_request rq = {N, keys, vals, 4, qs};
    assert_int_equal(tfm_recall_exact(&rq, ans, NULL, NULL), TFM_OK);
    for (int i = 0; i < 3; i++) {
        int j = oracle(keys, N, qs[i]);
        assert_int_equal(ans[i].position, j);
        assert_int_equal(ans[i].value, vals[j]);
    }
    assert_int_equal(ans[3].found, 0);
    /* a value overwritten by itself, and the earliest of two keys */
    const uint32_t k2[] = {5, 5, 6}, v2[] = {1, 1, 2}, q2[] = {5};
    tfm_recall_request rq2 = {3, k2, v2, 1, q2};
    assert_int_equal(tfm_recall_exact(&rq2, ans, NULL, NULL), TFM_OK);
    assert_int_equal(ans[0].position, 1);
    assert_int_equal(ans[0].value, 1);
}

static void test_recall_shared_ids(void **state)
{
    /* ids shared by keys and values: a query equal to a value is not a key */
    const uint32_t keys[] = {1, 2, 3}, vals[] = {2, 3, 9};
    const uint32_t qs[] = {9, 2, 3, 1};
    tfm_recall_answer ans[4];
    tfm_recall_request rq = {3, keys, vals, 4, qs};
    assert_int_equal(tfm_recall_exact(&rq, ans, NULL, NULL), TFM_OK);
    assert_int_equal(ans[0].found, 0);
    assert_int_equal(ans[1].value, 3);
    assert_int_equal(ans[2].value, 9);
    assert_int_equal(ans[3].value, 2);
    /* a key that is its own value, and the extreme ids */
    const uint32_t k2[] = {0, UINT32_MAX, 4}, v2[] = {UINT32_MAX, 0, 4}, q2[] = {UINT32_MAX, 0, 4};
    tfm_recall_request rq2 = {3, k2, v2, 3, q2};
    assert_int_equal(tfm_recall_exact(&rq2, ans, NULL, NULL), TFM_OK);
    assert_int_equal(ans[0].value, 0);
    assert_int_equal(ans[1].value, UINT32_MAX);
    assert_int_equal(ans[2].value, 4);
    assert_true(ans[0].found && ans[1].found && ans[2].found);
}

static void test_recall_empty_pairs(void **state)
{
    const uint32_t qs[] = {0, 1, UINT32_MAX};
    tfm_recall_answer ans[3];
    tfm_recall_stats st;
    tfm_recall_request rq = {0, NULL, NULL, 3, qs}; /* NULL arrays are fine when empty */
    assert_int_equal(tfm_recall_exact(&rq, ans, &st, NULL), TFM_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ans[i].found, 0);
        assert_int_equal(ans[i].position, -1);
        assert_true(ans[i].weight == 1.0f);
    }
    assert_int_equal(st.key_symbols, 0);
    assert_int_equal(st.value_symbols, 0);
    /* no queries at all: nothing to do, still ok */
    tfm_recall_request none = {0, NULL, NULL, 0, NULL};
    assert_int_equal(tfm_recall_exact(&none, NULL, NULL, NULL), TFM_OK);
}

/* The tour at the top of tfm/recall.h, as written there. */
static void test_recall_header_tour(void **state)
{
    uint32_t keys[] = {1, 2, 3}, values[] = {10, 20, 30}, qs[] = {2, 7};
    tfm_recall_request rq = {3, keys, values, 2, qs};
    tfm_recall_answer ans[2];
    tfm_recall_stats st;
    assert_int_equal(tfm_recall_exact(&rq, ans, &st, NULL), TFM_OK);
    assert_true(ans[0].found == 1 && ans[0].value == 20 && ans[0].position == 1);
    assert_true(ans[1].found == 0 && ans[1].position == -1);
    assert_true(ans[0].weight == 1.0f && ans[1].weight == 1.0f);
    assert_true(st.key_symbols == 3 && st.value_symbols == 3);
}

static void test_recall_single_pair(void **state)
{
    const uint32_t k[] = {42}, v[] = {43}, qs[] = {42, 43, 41};
    check_store(k, v, 1, qs, 3, NULL);
    tfm_recall_answer ans[3];
    tfm_recall_request rq = {1, k, v, 3, qs};
    assert_int_equal(tfm_recall_exact(&rq, ans, NULL, NULL), TFM_OK);
    assert_int_equal(ans[0].found, 1);
    assert_int_equal(ans[0].value, 43);
    assert_int_equal(ans[0].position, 0);
    assert_int_equal(ans[1].found, 0);
    assert_int_equal(ans[2].found, 0);
}

/* Every size across the block edges, for both queries and keys. */
static void test_recall_block_edges(void **state)
{
    enum { KB = TFM_RECALL_KEY_BLOCK, QB = TFM_RECALL_QUERY_BLOCK };
    const int ns[] = {KB - 2, KB - 1, KB, KB + 1, 2 * KB - 1, 2 * KB};
    const int ms[] = {1, QB - 1, QB, QB + 1, 2 * QB + 1};
    uint64_t s = 7;
    uint32_t keys[2 * KB], vals[2 * KB], qs[2 * QB + 1];
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++) {
        for (size_t b = 0; b < sizeof ms / sizeof *ms; b++) {
            int n = ns[a], M = ms[b];
            for (int j = 0; j < n; j++) {
                keys[j] = draw(&s, (uint32_t)n); /* some repeats */
                vals[j] = draw(&s, 1u << 30);
            }
            for (int i = 0; i < M; i++) /* the last key, the sentinel's neighbours */
                qs[i] = i == 0 ? keys[n - 1] : draw(&s, (uint32_t)(2 * n));
            check_store(keys, vals, n, qs, M, NULL);
        }
    }
}

/* The maximum request (4096 pairs, 1024 queries, all symbols distinct):
 * exact, and its scratch within the header's formula and far below one
 * N x N float matrix. */
static void test_recall_max_size_and_memory(void **state)
{
    enum { N = 4096, M = 1024 };
    uint32_t *keys = malloc(N * 4), *vals = malloc(N * 4), *qs = malloc(M * 4);
    for (int j = 0; j < N; j++) {
        keys[j] = 0x9E3779B1u * (uint32_t)j + 1; /* distinct: odd multiplier */
        vals[j] = 0x85EBCA6Bu * (uint32_t)j + 2;
    }
    uint64_t s = 99;
    for (int i = 0; i < M; i++)
        qs[i] = i % 2 ? keys[tu_rng(&s) % N] : (uint32_t)tu_rng(&s);
    tfm_recall_stats st;
    check_store(keys, vals, N, qs, M, &st);
    assert_int_equal(st.key_symbols, N);
    assert_int_equal(st.value_symbols, N);

    size_t QB = TFM_RECALL_QUERY_BLOCK, KB = TFM_RECALL_KEY_BLOCK, cap = 2 * N;
    size_t formula = 4 * ((QB + KB) * (N + 1) * 2 + QB * KB + 3 * QB) + 16 * cap + 12 * N + 13 * 64;
    size_t bound = tfm_recall_scratch_bound(N, M);
    print_message("recall %dx%d: peak scratch %zu bytes, bound %zu, formula %zu, N*N*4 %zu; "
                  "%.1f GFLOP in %.3f s (attention %.3f s)\n",
                  N, M, st.peak_scratch_bytes, bound, formula, (size_t)N * N * 4, st.flops / 1e9,
                  st.seconds, st.attention_seconds);
    assert_true(st.peak_scratch_bytes <= bound);
    assert_true(bound <= formula);
    assert_true(st.peak_scratch_bytes * 8 < (size_t)N * N * 4);
    /* linear in the request: half the pairs, about half the memory */
    assert_true(tfm_recall_scratch_bound(N / 2, M) * 2 <= bound + 8 * QB * KB);
    /* independent of the query count beyond one block */
    assert_int_equal(tfm_recall_scratch_bound(N, (int)QB), bound);
    assert_int_equal(tfm_recall_scratch_bound(N, TFM_RECALL_MAX_QUERIES), bound);
    /* the contraction count: every query row against every key row */
    double want = 2.0 * M * (N + 1) * ((N + 1) + (N + 1));
    assert_true(st.flops == want);
    free(keys);
    free(vals);
    free(qs);
}

/* Few distinct symbols need less memory than the worst case. */
static void test_recall_memory_follows_symbols(void **state)
{
    enum { N = 2048 };
    uint32_t *keys = malloc(N * 4), *vals = malloc(N * 4), qs[3] = {1, 2, 3};
    for (int j = 0; j < N; j++) {
        keys[j] = (uint32_t)j % 16;
        vals[j] = (uint32_t)j % 4;
    }
    tfm_recall_stats st;
    check_store(keys, vals, N, qs, 3, &st);
    assert_int_equal(st.key_symbols, 16);
    assert_int_equal(st.value_symbols, 4);
    assert_true(st.peak_scratch_bytes * 10 < tfm_recall_scratch_bound(N, 3));
    free(keys);
    free(vals);
}

static void test_recall_profile(void **state)
{
    const uint32_t k[] = {1, 2, 3}, v[] = {4, 5, 6}, qs[] = {2, 9};
    tfm_recall_answer ans[2];
    tfm_recall_stats st;
    tfm_profile prof = {.enabled = 1};
    tfm_recall_request rq = {3, k, v, 2, qs};
    assert_int_equal(tfm_recall_exact(&rq, ans, &st, &prof), TFM_OK);
    const int P = TFM_PHASE_PREFILL, b = tfm_ctx_bucket(3);
    assert_true(prof.flops[P][TFM_CLASS_CONTRACTION] == st.flops);
    assert_true(st.flops == 2.0 * 2 * 4 * (4 + 4)); /* 2 queries, 4 key rows, dk = dv = 4 */
    assert_true(prof.flops[P][TFM_CLASS_NORMALIZATION] > 0);
    assert_true(prof.attn_flops[P][b] == st.flops);
    assert_int_equal(prof.attn_calls[P][b], 1);
    assert_true(prof.attn_seconds[P][b] > 0 && prof.attn_seconds[P][b] == st.attention_seconds);
    assert_true(prof.comp_seconds[P][TFM_COMP_ATTENTION] > 0);
    assert_true(st.seconds >= st.attention_seconds);
    assert_int_equal(prof.tokens[P], 0);
    /* empty pairs go to the first bucket; a disabled profile is untouched */
    tfm_recall_request empty = {0, NULL, NULL, 2, qs};
    assert_int_equal(tfm_recall_exact(&empty, ans, NULL, &prof), TFM_OK);
    assert_int_equal(prof.attn_calls[P][0], b == 0 ? 2 : 1);
    tfm_profile off = {0};
    assert_int_equal(tfm_recall_exact(&rq, ans, NULL, &off), TFM_OK);
    tfm_profile zero = {0};
    assert_memory_equal(&off, &zero, sizeof off);
}

static void test_recall_bad_inputs(void **state)
{
    const uint32_t k[] = {1}, v[] = {2}, q[] = {1};
    tfm_recall_answer ans[1];
    tfm_recall_request rq;
    assert_int_equal(tfm_recall_exact(NULL, ans, NULL, NULL), TFM_E_INVALID);
    rq = (tfm_recall_request){-1, k, v, 1, q};
    assert_int_equal(tfm_recall_exact(&rq, ans, NULL, NULL), TFM_E_INVALID);
    rq = (tfm_recall_request){1, k, v, -1, q};
    assert_int_equal(tfm_recall_exact(&rq, ans, NULL, NULL), TFM_E_INVALID);
    rq = (tfm_recall_request){1, NULL, v, 1, q};
    assert_int_equal(tfm_recall_exact(&rq, ans, NULL, NULL), TFM_E_INVALID);
    rq = (tfm_recall_request){1, k, NULL, 1, q};
    assert_int_equal(tfm_recall_exact(&rq, ans, NULL, NULL), TFM_E_INVALID);
    rq = (tfm_recall_request){1, k, v, 1, NULL};
    assert_int_equal(tfm_recall_exact(&rq, ans, NULL, NULL), TFM_E_INVALID);
    rq = (tfm_recall_request){1, k, v, 1, q};
    assert_int_equal(tfm_recall_exact(&rq, NULL, NULL, NULL), TFM_E_INVALID);
    /* beyond the compile-time limits (the arrays are never read) */
    rq = (tfm_recall_request){TFM_RECALL_MAX_PAIRS + 1, k, v, 1, q};
    assert_int_equal(tfm_recall_exact(&rq, ans, NULL, NULL), TFM_E_RANGE);
    rq = (tfm_recall_request){1, k, v, TFM_RECALL_MAX_QUERIES + 1, q};
    assert_int_equal(tfm_recall_exact(&rq, ans, NULL, NULL), TFM_E_RANGE);
    assert_int_equal(tfm_recall_scratch_bound(-1, 1), 0);
    assert_int_equal(tfm_recall_scratch_bound(TFM_RECALL_MAX_PAIRS + 1, 1), 0);
    /* a failed call leaves stats alone */
    tfm_recall_stats st = {.flops = -1};
    rq = (tfm_recall_request){-5, k, v, 1, q};
    assert_int_equal(tfm_recall_exact(&rq, ans, &st, NULL), TFM_E_INVALID);
    assert_true(st.flops == -1);
}

/* The largest store the core accepts stays exact: scores reach ~3 * 128 n. */
static void test_recall_core_limit_exact(void **state)
{
    enum { N = TFM_RECALL_MAX_PAIRS, M = 8 };
    uint32_t *keys = malloc(N * 4), *vals = malloc(N * 4), qs[M];
    for (int j = 0; j < N; j++) {
        keys[j] = (uint32_t)j % (N / 2); /* every key twice: the later wins */
        vals[j] = (uint32_t)j;
    }
    const uint32_t picks[M] = {0, 1, N / 2 - 1, N / 4, 7, N, N + 1, UINT32_MAX};
    memcpy(qs, picks, sizeof qs);
    check_store(keys, vals, N, qs, M, NULL);
    free(keys);
    free(vals);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recall_lecture_example),
        cmocka_unit_test(test_recall_random_stores),
        cmocka_unit_test(test_recall_repeated_keys_latest_wins),
        cmocka_unit_test(test_recall_shared_ids),
        cmocka_unit_test(test_recall_empty_pairs),
        cmocka_unit_test(test_recall_header_tour),
        cmocka_unit_test(test_recall_single_pair),
        cmocka_unit_test(test_recall_block_edges),
        cmocka_unit_test(test_recall_max_size_and_memory),
        cmocka_unit_test(test_recall_memory_follows_symbols),
        cmocka_unit_test(test_recall_profile),
        cmocka_unit_test(test_recall_bad_inputs),
        cmocka_unit_test(test_recall_core_limit_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
