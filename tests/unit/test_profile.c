/* test_profile.c — buckets, names, reset and accumulation of a profile. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "tfm/profile.h"

static void test_profile_buckets(void **state)
{
    assert_int_equal(tfm_ctx_bucket(1), 0);
    assert_int_equal(tfm_ctx_bucket(64), 0);
    assert_int_equal(tfm_ctx_bucket(65), 1);
    assert_int_equal(tfm_ctx_bucket(128), 1);
    assert_int_equal(tfm_ctx_bucket(32768), TFM_CTX_BUCKETS - 1);
    assert_int_equal(tfm_ctx_bucket(1 << 20), TFM_CTX_BUCKETS - 1);
    assert_int_equal(tfm_ctx_bucket_le(0), 64);
    assert_int_equal(tfm_ctx_bucket_le(TFM_CTX_BUCKETS - 1), 32768);
    for (int n = 1; n < 40000; n += 13) {
        int b = tfm_ctx_bucket(n);
        assert_true(n <= tfm_ctx_bucket_le(b) || b == TFM_CTX_BUCKETS - 1);
        assert_true(b == 0 || n > tfm_ctx_bucket_le(b - 1));
    }
}

static void test_profile_names(void **state)
{
    assert_string_equal(tfm_op_class_name(TFM_CLASS_CONTRACTION), "tensor_contraction");
    assert_string_equal(tfm_op_class_name(TFM_CLASS_NORMALIZATION), "normalization");
    assert_string_equal(tfm_op_class_name(TFM_CLASS_ELEMENTWISE), "elementwise");
    assert_string_equal(tfm_component_name(TFM_COMP_MLP), "mlp");
    assert_string_equal(tfm_phase_name(TFM_PHASE_TRAIN), "train");
    assert_string_equal(tfm_phase_name((tfm_phase)99), "unknown");
}

static void test_profile_reset_and_add(void **state)
{
    tfm_profile a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    a.enabled = 1;
    a.seconds[TFM_PHASE_DECODE][TFM_CLASS_CONTRACTION] = 2.0;
    a.seconds[TFM_PHASE_DECODE][TFM_CLASS_ELEMENTWISE] = 0.5;
    a.attn_calls[TFM_PHASE_PREFILL][3] = 7;
    a.tokens[TFM_PHASE_DECODE] = 5;
    tfm_profile_add(&b, &a);
    tfm_profile_add(&b, &a);
    assert_true(b.seconds[TFM_PHASE_DECODE][TFM_CLASS_CONTRACTION] == 4.0);
    assert_int_equal(b.attn_calls[TFM_PHASE_PREFILL][3], 14);
    assert_int_equal(b.tokens[TFM_PHASE_DECODE], 10);
    assert_true(tfm_profile_total_seconds(&a, TFM_PHASE_DECODE) == 2.5);
    tfm_profile_reset(&a);
    assert_int_equal(a.enabled, 1);
    assert_true(a.seconds[TFM_PHASE_DECODE][TFM_CLASS_CONTRACTION] == 0.0);
    assert_int_equal(a.tokens[TFM_PHASE_DECODE], 0);
    double t0 = tfm_now(), t1 = tfm_now();
    assert_true(t1 >= t0);
}

/* Prompts of length N costing N^2 give exponent 2; one bucket gives NaN;
 * prompts below min_tokens are left out; add carries prompts over. */
static void test_profile_cost_exponent(void **state)
{
    tfm_profile p, q;
    memset(&p, 0, sizeof p);
    memset(&q, 0, sizeof q);
    p.enabled = 1;
    tfm_profile_add_prompt(&p, 100, 1e-8 * 100 * 100);
    assert_true(isnan(tfm_profile_cost_exponent(&p, 64)));
    for (int n = 200; n <= 6400; n *= 2)
        tfm_profile_add_prompt(&p, n, 1e-8 * n * n);
    tfm_profile_add_prompt(&p, 10, 1.0); /* too short to count */
    assert_true(fabs(tfm_profile_cost_exponent(&p, 64) - 2.0) < 1e-9);
    tfm_profile_add(&q, &p);
    assert_true(fabs(tfm_profile_cost_exponent(&q, 64) - 2.0) < 1e-9);
    assert_int_equal(q.prompts[tfm_ctx_bucket(200)], 1);
    p.enabled = 0;
    tfm_profile_add_prompt(&p, 300, 5.0); /* disabled: ignored */
    assert_true(fabs(tfm_profile_cost_exponent(&p, 64) - 2.0) < 1e-9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_profile_buckets),
        cmocka_unit_test(test_profile_names),
        cmocka_unit_test(test_profile_reset_and_add),
        cmocka_unit_test(test_profile_cost_exponent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
