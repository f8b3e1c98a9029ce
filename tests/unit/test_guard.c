/*
 * test_guard.c — the server's pure guards: srv_json_guard (the body limits
 * checked before jansson) against a plain reference scan, and srv_auth's
 * key matching and key files.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "json_guard.h"

/* ---- srv_json_guard ----------------------------------------------------- */

static const srv_json_limits LIM = {8, 5, 10};

static int guard(const char *s, srv_error *e) { return srv_json_guard(s, strlen(s), &LIM, e); }

static void test_guard_accepts_within_limits(void **state)
{
    (void)state;
    srv_error e;
    const char *ok[] = {"", "{}", "[]", "[1,2,3,4,5]", "{\"a\":[[[[[[[1]]]]]]]}",
                        "\"0123456789\"", "[\"[[[[[[[[[[\"]", "[\"\\\"]]]]]]]\"]",
                        "{\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5}", "[[1,2,3,4,5],[1,2,3,4,5]]",
                        "not json at all", "[\"a,,,,,,,,\"]"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        if (guard(ok[i], &e))
            fail_msg("refused %s: %s", ok[i], e.message);
    }
}

static void test_guard_refuses_past_limits(void **state)
{
    (void)state;
    srv_error e;
    assert_int_equal(guard("[[[[[[[[[1]]]]]]]]]", &e), -1); /* 9 levels */
    assert_int_equal(e.status, 400);
    assert_string_equal(e.code, "invalid_json");
    assert_int_equal(guard("{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":1}}}}}}}}}", &e), -1);
    assert_int_equal(guard("[1,2,3,4,5,6]", &e), -1); /* 6 elements */
    assert_int_equal(e.status, 413);
    assert_int_equal(guard("{\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6}", &e), -1);
    assert_int_equal(guard("[\"01234567890\"]", &e), -1); /* 11 bytes */
    assert_int_equal(e.status, 413);
    assert_string_equal(e.code, "payload_too_large");
    assert_int_equal(guard("\"0123456789a", &e), -1); /* unterminated, too long */
    /* 100,000 levels: refused, and in one pass without recursion */
    size_t n = 100000;
    char *deep = malloc(n + 1);
    assert_non_null(deep);
    memset(deep, '[', n);
    deep[n] = 0;
    srv_json_limits big = {32, 65536, 1 << 20};
    assert_int_equal(srv_json_guard(deep, n, &big, &e), -1);
    assert_int_equal(e.status, 400);
    free(deep);
}

/* A plain reference: the deepest nesting, the widest container and the
 * longest string of a JSON text jansson accepted, from its tree. */
static void measure(json_t *v, int depth, int *max_depth, size_t *max_wide, size_t *max_str)
{
    if (json_is_array(v) || json_is_object(v)) {
        if (depth + 1 > *max_depth)
            *max_depth = depth + 1;
        size_t n = json_is_array(v) ? json_array_size(v) : json_object_size(v);
        if (n > *max_wide)
            *max_wide = n;
    }
    if (json_is_string(v) && json_string_length(v) > *max_str)
        *max_str = json_string_length(v);
    if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) measure(x, depth + 1, max_depth, max_wide, max_str);
    } else if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x)
        {
            if (strlen(k) > *max_str)
                *max_str = strlen(k);
            measure(x, depth + 1, max_depth, max_wide, max_str);
        }
    }
}

/* Random JSON (plain ASCII strings, so written length == decoded length):
 * the guard's verdict equals the reference's on every text. */
static void gen(char *buf, size_t *len, size_t cap, unsigned *seed, int depth)
{
    int kind = (int)(rand_r(seed) % (depth > 10 ? 3 : 5));
    if (*len + 64 >= cap)
        kind = 0;
    if (kind == 0) {
        *len += (size_t)snprintf(buf + *len, cap - *len, "%u", rand_r(seed) % 100);
    } else if (kind <= 2) {
        int n = (int)(rand_r(seed) % 14);
        buf[(*len)++] = '"';
        for (int i = 0; i < n; i++)
            buf[(*len)++] = (char)("ab[]{},:c"[rand_r(seed) % 9]);
        buf[(*len)++] = '"';
    } else {
        int obj = kind == 4, n = (int)(rand_r(seed) % 8);
        buf[(*len)++] = obj ? '{' : '[';
        for (int i = 0; i < n && *len + 64 < cap; i++) {
            if (i)
                buf[(*len)++] = ',';
            if (obj)
                *len += (size_t)snprintf(buf + *len, cap - *len, "\"k%d\":", i);
            gen(buf, len, cap, seed, depth + 1);
        }
        buf[(*len)++] = obj ? '}' : ']';
    }
    buf[*len] = 0;
}

static void test_guard_matches_reference(void **state)
{
    (void)state;
    static char buf[1 << 16];
    unsigned seed = 12345;
    int refused = 0, accepted = 0;
    for (int t = 0; t < 3000; t++) {
        size_t len = 0;
        gen(buf, &len, sizeof buf, &seed, 0);
        json_error_t je;
        json_t *v = json_loadb(buf, len, JSON_DECODE_ANY, &je);
        if (!v)
            fail_msg("generator made invalid JSON: %s (%s)", buf, je.text);
        int d = 0;
        size_t w = 0, s = 0;
        measure(v, 0, &d, &w, &s);
        json_decref(v);
        int want = d > LIM.max_depth || w > LIM.max_array || s > LIM.max_string;
        srv_error e;
        int got = srv_json_guard(buf, len, &LIM, &e) != 0;
        if (got != want)
            fail_msg("guard %d, reference %d (depth %d, width %zu, string %zu) on %s", got, want, d, w,
                     s, buf);
        refused += got;
        accepted += !got;
    }
    assert_true(refused > 100 && accepted > 100); /* both verdicts exercised */
}

/* ---- srv_auth ----------------------------------------------------------- */

static void test_auth_matches_exactly(void **state)
{
    (void)state;
    srv_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.api_keys[0] = "alpha-key";
    cfg.api_keys[1] = "beta";
    cfg.n_api_keys = 2;
    srv_auth *a = srv_auth_create(&cfg);
    assert_non_null(a);
    assert_true(srv_auth_enabled(a));
    uint64_t c1 = 0, c2 = 0, c3 = 0;
    assert_int_equal(srv_auth_check(a, "Bearer alpha-key", &c1), SRV_AUTH_OK);
    assert_int_equal(srv_auth_check(a, "bearer  alpha-key ", &c2), SRV_AUTH_OK);
    assert_true(c1 == c2 && c1 == srv_hash64("alpha-key", 9));
    assert_int_equal(srv_auth_check(a, "Bearer beta", &c3), SRV_AUTH_OK);
    assert_true(c3 != c1);
    const char *invalid[] = {"Bearer alpha", "Bearer alpha-key2", "Bearer Alpha-key", "Bearer bet",
                             "Bearer betaa", "Bearer alpha-keybeta", "Bearer x"};
    for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++)
        assert_int_equal(srv_auth_check(a, invalid[i], &c1), SRV_AUTH_INVALID);
    const char *missing[] = {"", "Bearer", "Bearer   ", "Basic alpha-key", "alpha-key", "Bearerbeta"};
    for (size_t i = 0; i < sizeof missing / sizeof *missing; i++)
        assert_int_equal(srv_auth_check(a, missing[i], &c1), SRV_AUTH_MISSING);
    assert_int_equal(srv_auth_check(a, NULL, &c1), SRV_AUTH_MISSING);
    srv_auth_destroy(a);

    memset(&cfg, 0, sizeof cfg);
    a = srv_auth_create(&cfg);
    assert_non_null(a);
    assert_false(srv_auth_enabled(a));
    srv_auth_destroy(a);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_auth_key_file_and_reload(void **state)
{
    (void)state;
    char path[] = "/tmp/attnd-test-keys-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_file(path, "# comment\n\n  one  \r\ntwo\n#three\n");
    srv_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.api_key_file, sizeof cfg.api_key_file, "%s", path);
    srv_auth *a = srv_auth_create(&cfg);
    assert_non_null(a);
    uint64_t c;
    assert_int_equal(srv_auth_count(a), 2);
    assert_int_equal(srv_auth_check(a, "Bearer one", &c), SRV_AUTH_OK);
    assert_int_equal(srv_auth_check(a, "Bearer two", &c), SRV_AUTH_OK);
    assert_int_equal(srv_auth_check(a, "Bearer #three", &c), SRV_AUTH_INVALID);
    write_file(path, "three\n");
    assert_int_equal(srv_auth_reload(a), 0);
    assert_int_equal(srv_auth_check(a, "Bearer one", &c), SRV_AUTH_INVALID);
    assert_int_equal(srv_auth_check(a, "Bearer three", &c), SRV_AUTH_OK);
    unlink(path);
    assert_int_equal(srv_auth_reload(a), -1); /* the keys in use stay */
    assert_int_equal(srv_auth_check(a, "Bearer three", &c), SRV_AUTH_OK);
    srv_auth_destroy(a);
    /* a named file that holds no key locks everything */
    write_file(path, "# none\n");
    a = srv_auth_create(&cfg);
    assert_non_null(a);
    assert_true(srv_auth_enabled(a));
    assert_int_equal(srv_auth_check(a, "Bearer # none", &c), SRV_AUTH_INVALID);
    srv_auth_destroy(a);
    unlink(path);
    assert_null(srv_auth_create(&cfg)); /* missing at start: refuse to start */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_guard_accepts_within_limits),
        cmocka_unit_test(test_guard_refuses_past_limits),
        cmocka_unit_test(test_guard_matches_reference),
        cmocka_unit_test(test_auth_matches_exactly),
        cmocka_unit_test(test_auth_key_file_and_reload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
