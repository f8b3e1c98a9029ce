/* test_model.c — config validation, layout, random init, metadata, state. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"
#include "tfm/model.h"

static tfm_config base(void)
{
    tfm_config c = {.dim = 64, .hidden_dim = 96, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                    .vocab_size = 50, .seq_len = 16, .shared_classifier = 0};
    tfm_config_defaults(&c);
    return c;
}

static void test_model_config_validation(void **state)
{
    char err[128];
    tfm_config c = base();
    assert_int_equal(tfm_config_validate(&c, err, sizeof err), TFM_OK);
    struct {
        int *field;
        int value;
        const char *word;
    } cases[] = {
        {&c.dim, 0, "dim"},          {&c.hidden_dim, -1, "hidden_dim"},
        {&c.n_layers, 0, "n_layers"}, {&c.n_heads, 5, "n_heads"},
        {&c.n_heads, 64, "head size"}, {&c.n_kv_heads, 3, "n_kv_heads"},
        {&c.n_kv_heads, 8, "n_kv_heads"}, {&c.vocab_size, 0, "vocab_size"},
        {&c.seq_len, -5, "seq_len"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        c = base();
        tfm_config *cp = &c;
        /* re-point the field into this fresh copy */
        size_t off = (size_t)((char *)cases[i].field - (char *)cp);
        *(int *)((char *)cp + off) = cases[i].value;
        err[0] = 0;
        assert_int_equal(tfm_config_validate(&c, err, sizeof err), TFM_E_INVALID);
        assert_non_null(strstr(err, cases[i].word));
    }
    c = base();
    c.norm_eps = -1;
    assert_int_equal(tfm_config_validate(&c, NULL, 0), TFM_E_INVALID);
    assert_int_equal(tfm_config_validate(NULL, NULL, 0), TFM_E_INVALID);
    /* absurd sizes are refused before any allocation */
    c = base();
    c.dim = 65536, c.n_heads = 1, c.n_kv_heads = 1, c.vocab_size = 4000000;
    tfm_model *m = NULL;
    assert_int_not_equal(tfm_model_create(&c, &m, err, sizeof err), TFM_OK);
    assert_null(m);
}

static void test_model_layout_and_params(void **state)
{
    tfm_config c = base();
    size_t d = 64, h = 96, kv = 32, L = 2, V = 50;
    size_t want = V * d + L * d + L * d * d + 2 * L * kv * d + L * d * d + L * d + 3 * L * h * d + d + V * d;
    assert_int_equal(tfm_config_n_params(&c), want);
    tfm_model *m = NULL;
    assert_int_equal(tfm_model_create(&c, &m, NULL, 0), TFM_OK);
    assert_int_equal(m->n_floats, want);
    assert_ptr_equal(m->w.token_embedding, m->data);
    assert_ptr_equal(m->w.wk, m->w.wq + L * d * d);
    assert_ptr_equal(m->w.wcls, m->w.rms_final + d);
    assert_ptr_equal(m->w.wcls + V * d, m->data + want);
    tfm_model_destroy(m);
    c.shared_classifier = 1;
    assert_int_equal(tfm_config_n_params(&c), want - V * d);
    assert_int_equal(tfm_model_create(&c, &m, NULL, 0), TFM_OK);
    assert_ptr_equal(m->w.wcls, m->w.token_embedding);
    tfm_model_destroy(m);
    tfm_model_destroy(NULL);
}

static void test_model_random_is_seeded(void **state)
{
    tfm_model *a = tu_random_model(32, 48, 1, 2, 2, 20, 8, 0, 7);
    tfm_model *b = tu_random_model(32, 48, 1, 2, 2, 20, 8, 0, 7);
    tfm_model *c = tu_random_model(32, 48, 1, 2, 2, 20, 8, 0, 8);
    assert_memory_equal(a->data, b->data, a->n_floats * sizeof(float));
    assert_memory_not_equal(a->data, c->data, a->n_floats * sizeof(float));
    /* norm weights near one, matrices small */
    assert_true(a->w.rms_att[0] > 0.85f && a->w.rms_att[0] < 1.15f);
    assert_true(a->w.wq[0] > -0.2f && a->w.wq[0] < 0.2f);
    tfm_model_destroy(a);
    tfm_model_destroy(b);
    tfm_model_destroy(c);
}

static void test_model_rope_table(void **state)
{
    tfm_model *m = tu_random_model(32, 48, 1, 2, 2, 20, 8, 1, 1);
    int half = 8; /* head 16 */
    /* position 0: no rotation; pair 0 turns by pos radians */
    assert_true(m->rope_cos[0] == 1.0f && m->rope_sin[0] == 0.0f);
    assert_true(m->rope_cos[3 * half] == cosf(3.0f));
    float freq = 1.0f / powf(10000.0f, 2 / 16.0f);
    assert_true(m->rope_sin[5 * half + 1] == sinf(5 * freq));
    tfm_model_destroy(m);
}

static void test_model_meta(void **state)
{
    tfm_model *m = tu_random_model(32, 48, 1, 2, 2, 20, 8, 1, 1);
    assert_null(tfm_model_meta_get(m, "kind"));
    assert_int_equal(tfm_model_meta_set(m, "kind", "text"), TFM_OK);
    assert_int_equal(tfm_model_meta_set(m, "kind", "recall"), TFM_OK);
    assert_string_equal(tfm_model_meta_get(m, "kind"), "recall");
    assert_int_equal(m->n_meta, 1);
    char longkey[100];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[99] = 0;
    assert_int_equal(tfm_model_meta_set(m, longkey, "v"), TFM_E_INVALID);
    assert_int_equal(tfm_model_meta_set(m, "", "v"), TFM_E_INVALID);
    for (int i = 1; i < TFM_META_MAX; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        assert_int_equal(tfm_model_meta_set(m, k, "v"), TFM_OK);
    }
    assert_int_equal(tfm_model_meta_set(m, "one-too-many", "v"), TFM_E_RANGE);
    tfm_model_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_config_validation),
        cmocka_unit_test(test_model_layout_and_params),
        cmocka_unit_test(test_model_random_is_seeded),
        cmocka_unit_test(test_model_rope_table),
        cmocka_unit_test(test_model_meta),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
