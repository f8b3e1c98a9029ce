/* test_ops.c — every kernel of ops.c and the pool against plain loops. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "testutil.h"

static float *rand_vec(size_t n, uint64_t *s)
{
    float *v = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        v[i] = tu_uniform(s);
    return v;
}

static void test_ops_dot(void **state)
{
    uint64_t s = 1;
    for (int n = 1; n <= 300; n += (n < 70 ? 1 : 37)) {
        float *a = rand_vec(n, &s), *b = rand_vec(n, &s);
        double ref = 0;
        for (int i = 0; i < n; i++)
            ref += (double)a[i] * b[i];
        float got = tfm__dot(a, b, n);
        assert_true(fabs(got - ref) <= 1e-5 * (1 + fabs(ref)) * sqrt(n));
        free(a);
        free(b);
    }
}

static void test_ops_softmax(void **state)
{
    uint64_t s = 2;
    for (int n = 1; n <= 130; n += 3) {
        float *x = rand_vec(n, &s), *ref = malloc(n * sizeof(float));
        for (int i = 0; i < n; i++)
            x[i] *= 30.0f; /* a wide range: large negatives after the max */
        float max = x[0];
        for (int i = 1; i < n; i++)
            max = fmaxf(max, x[i]);
        double sum = 0;
        for (int i = 0; i < n; i++)
            sum += exp((double)x[i] - max);
        for (int i = 0; i < n; i++)
            ref[i] = (float)(exp((double)x[i] - max) / sum);
        tfm__softmax(x, n);
        for (int i = 0; i < n; i++)
            assert_true(fabsf(x[i] - ref[i]) <= 2e-6f * fmaxf(ref[i], 1e-30f) + 1e-12f);
        free(x);
        free(ref);
    }
    /* masked scores far below the max become exact zeros, never NaN */
    float y[3] = {0.0f, -1e30f, -INFINITY};
    tfm__softmax(y, 3);
    assert_true(y[0] == 1.0f && y[1] == 0.0f && y[2] == 0.0f);
}

static void test_ops_rmsnorm(void **state)
{
    uint64_t s = 3;
    int n = 77;
    float *x = rand_vec(n, &s), *w = rand_vec(n, &s), o[77];
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    double scale = 1.0 / sqrt(ss / n + 1e-5);
    tfm__rmsnorm(o, x, w, n, 1e-5f);
    for (int i = 0; i < n; i++)
        assert_true(fabs(o[i] - w[i] * x[i] * scale) < 1e-5);
    free(x);
    free(w);
}

static void test_ops_rope(void **state)
{
    /* two heads of 4: pairs (0,1), (2,3) rotated by their own angles */
    float v[8] = {1, 0, 0, 1, 2, 3, -1, 4};
    float cs[2] = {cosf(0.5f), cosf(0.25f)}, sn[2] = {sinf(0.5f), sinf(0.25f)};
    float ref[8];
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 2; i++) {
            float a = v[h * 4 + 2 * i], b = v[h * 4 + 2 * i + 1];
            ref[h * 4 + 2 * i] = a * cs[i] - b * sn[i];
            ref[h * 4 + 2 * i + 1] = a * sn[i] + b * cs[i];
        }
    tfm__rope(v, 2, 4, cs, sn);
    tu_check_tensor("rope", v, ref, 8, 1e-6f);
    assert_true(fabsf(v[0] - cosf(0.5f)) < 1e-6f && fabsf(v[1] - sinf(0.5f)) < 1e-6f);
}

static void test_ops_swiglu(void **state)
{
    /* vector body and scalar tail, values from -200 to 200 */
    uint64_t s = 9;
    for (int n = 1; n <= 70; n += 23) {
        float *h = rand_vec(n, &s), *g = rand_vec(n, &s), *ref = malloc(n * sizeof(float));
        for (int i = 0; i < n; i++) {
            h[i] *= i % 7 == 0 ? 200.0f : 6.0f;
            ref[i] = (float)(h[i] / (1 + exp(-(double)h[i])) * g[i]);
        }
        tfm__swiglu(h, g, n);
        tu_check_tensor("swiglu", h, ref, n, 1e-6f);
        free(h), free(g), free(ref);
    }
}

static void matmul_ref(float *y, const float *x, const float *w, int B, int d, int n)
{
    for (int b = 0; b < B; b++)
        for (int i = 0; i < n; i++) {
            double acc = 0;
            for (int j = 0; j < d; j++)
                acc += (double)x[(size_t)b * d + j] * w[(size_t)i * d + j];
            y[(size_t)b * n + i] = (float)acc;
        }
}

static void test_ops_matmul_paths_agree(void **state)
{
    static const int Bs[] = {1, 2, 3, 7, 8, 9, 16};
    static const int ds[] = {1, 7, 16, 17, 64, 288};
    static const int ns[] = {1, 5, 33, 64, 200};
    uint64_t s = 4;
    for (int threads = 1; threads <= 2; threads++) {
        tfm__pool *pool = tfm__pool_create(threads);
        assert_non_null(pool);
        for (size_t bi = 0; bi < sizeof Bs / sizeof *Bs; bi++)
            for (size_t di = 0; di < sizeof ds / sizeof *ds; di++)
                for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
                    int B = Bs[bi], d = ds[di], n = ns[ni];
                    float *x = rand_vec((size_t)B * d, &s), *w = rand_vec((size_t)n * d, &s);
                    float *ref = malloc((size_t)B * n * sizeof(float));
                    float *y1 = malloc((size_t)B * n * sizeof(float));
                    float *y2 = malloc((size_t)B * n * sizeof(float));
                    float *y3 = malloc((size_t)B * n * sizeof(float));
                    matmul_ref(ref, x, w, B, d, n);
                    tfm__matmul_kernel(pool, y1, x, w, B, d, n);
                    tfm__matmul_sgemm(pool, y2, x, w, B, d, n);
                    tfm__matmul(pool, y3, x, w, B, d, n);
                    tu_check_tensor("kernel", y1, ref, (size_t)B * n, 1e-5f);
                    tu_check_tensor("sgemm", y2, ref, (size_t)B * n, 1e-5f);
                    tu_check_tensor("matmul", y3, ref, (size_t)B * n, 1e-5f);
                    free(x), free(w), free(ref), free(y1), free(y2), free(y3);
                }
        tfm__pool_destroy(pool);
    }
}

typedef struct {
    atomic_int chunk_hits[100];
    atomic_int thread_hits[4];
    atomic_int bad;
} pool_probe;

static void probe_task(void *ctx, int chunk, int n_chunks, int thread)
{
    pool_probe *p = ctx;
    if (chunk < 0 || chunk >= n_chunks || thread < 0 || thread >= 4)
        atomic_fetch_add(&p->bad, 1);
    else {
        atomic_fetch_add(&p->chunk_hits[chunk], 1);
        atomic_fetch_add(&p->thread_hits[thread], 1);
    }
}

/* Every chunk runs exactly once per job, on a valid thread, whatever the
 * number of threads and chunks.  (Jobs of 1, 2, 3, 17 and 100 chunks in
 * turn: this caught a late worker claiming a chunk of the next job's
 * count under the previous job's generation.) */
static void test_ops_pool_runs_every_chunk_once(void **state)
{
    static const int chunks[] = {1, 2, 3, 17, 100};
    for (int threads = 1; threads <= 4; threads++) {
        tfm__pool *pool = tfm__pool_create(threads);
        assert_int_equal(tfm__pool_size(pool), threads);
        pool_probe p;
        memset(&p, 0, sizeof p);
        int jobs = 3000;
        for (int job = 0; job < jobs; job++) {
            int n = chunks[job % 5];
            tfm__pool_run(pool, probe_task, &p, n);
        }
        assert_int_equal(atomic_load(&p.bad), 0);
        for (int c = 0; c < 100; c++) {
            int want = 0;
            for (int k = 0; k < 5; k++)
                want += c < chunks[k] ? jobs / 5 : 0;
            assert_int_equal(atomic_load(&p.chunk_hits[c]), want);
        }
        assert_int_equal(tfm__pool_chunks(pool, 1000, 4), threads == 1 ? 1 : 4 * threads);
        assert_int_equal(tfm__pool_chunks(pool, 3, 4), threads == 1 ? 1 : 3);
        tfm__pool_destroy(pool);
    }
    tfm__pool_destroy(NULL);
}

static void test_ops_split_covers(void **state)
{
    for (int n = 0; n < 100; n += 7)
        for (int nt = 1; nt <= 5; nt++)
            for (int align = 1; align <= 16; align *= 4) {
                int next = 0;
                for (int i = 0; i < nt; i++) {
                    int lo, hi;
                    tfm__split(n, i, nt, align, &lo, &hi);
                    assert_int_equal(lo, next);
                    assert_true(hi >= lo);
                    next = hi;
                }
                assert_int_equal(next, n);
            }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ops_dot),
        cmocka_unit_test(test_ops_softmax),
        cmocka_unit_test(test_ops_rmsnorm),
        cmocka_unit_test(test_ops_rope),
        cmocka_unit_test(test_ops_swiglu),
        cmocka_unit_test(test_ops_matmul_paths_agree),
        cmocka_unit_test(test_ops_pool_runs_every_chunk_once),
        cmocka_unit_test(test_ops_split_covers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
