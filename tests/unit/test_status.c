/* test_status.c — every status has a distinct name and message. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "tfm/status.h"

static void test_status_names_and_messages(void **state)
{
    static const tfm_status all[] = {
#define XX(name, val, msg) TFM_##name,
        TFM_STATUS_MAP(XX)
#undef XX
    };
    size_t n = sizeof all / sizeof *all;
    assert_int_equal(TFM_OK, 0);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            assert_true(all[i] < 0);
        assert_string_not_equal(tfm_strerror(all[i]), "unknown status");
        for (size_t j = 0; j < i; j++) {
            assert_int_not_equal(all[i], all[j]);
            assert_string_not_equal(tfm_status_name(all[i]), tfm_status_name(all[j]));
        }
    }
    assert_string_equal(tfm_status_name(TFM_E_RANGE), "E_RANGE");
    assert_string_equal(tfm_strerror((tfm_status)-999), "unknown status");
    assert_string_equal(tfm_status_name((tfm_status)-999), "UNKNOWN");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_names_and_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
