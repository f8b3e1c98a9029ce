/*
 * fuzz_json_guard.c — srv_json_guard on raw bytes, then jansson on what
 * it lets through, as srv_req_json_body does.
 *
 * Input: byte 0 picks the limits (the server's defaults for most inputs:
 * depth 32, 65536 elements, 256 KiB strings; small ones otherwise, so
 * that each limit is reached); the rest is the body.  Promises checked
 * (json_guard.h): the scan itself never reads past the body; a refusal
 * is 400 invalid_json (depth) or 413 payload_too_large (sizes) with a
 * message; and the guard is exact, not just a heuristic: whatever jansson
 * then parses nests no deeper than max_depth, has no array or object
 * with more than max_array elements, and no string or key longer than
 * max_string bytes (escapes only shrink a string).
 */
#include "fuzz_util.h"

#include <jansson.h>

#include "json_guard.h"

static void check_tree(json_t *v, int depth, const srv_json_limits *lim)
{
    if (json_is_array(v) || json_is_object(v)) {
        FUZZ_CHECK(depth + 1 <= lim->max_depth, "depth %d passed a limit of %d", depth + 1,
                   lim->max_depth);
        size_t n = json_is_array(v) ? json_array_size(v) : json_object_size(v);
        FUZZ_CHECK(n <= lim->max_array, "%zu elements passed a limit of %zu", n, lim->max_array);
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) check_tree(e, depth + 1, lim);
    } else if (json_is_object(v)) {
        const char *k;
        json_t *e;
        json_object_foreach(v, k, e) {
            FUZZ_CHECK(strlen(k) <= lim->max_string, "a key of %zu bytes", strlen(k));
            check_tree(e, depth + 1, lim);
        }
    } else if (json_is_string(v)) {
        FUZZ_CHECK(json_string_length(v) <= lim->max_string, "a string of %zu bytes passed %zu",
                   json_string_length(v), lim->max_string);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    srv_json_limits lim = {32, 65536, (size_t)256 << 10};
    unsigned sel = data[0];
    if (sel & 0x80) { /* small limits: depth 2..9, 1..16 elements, 0..15 bytes */
        lim.max_depth = 2 + (int)(sel & 7);
        lim.max_array = 1 + (sel >> 3 & 15);
        lim.max_string = sel & 15;
    } else if (sel & 0x40) {
        lim.max_depth = 1000; /* --max-json-depth's largest */
    }
    /* the body in its own allocation, so ASan sees a read past its end */
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    memcpy(body, data + 1, len);
    srv_error e = {0};
    if (srv_json_guard(body, len, &lim, &e) != 0) {
        FUZZ_CHECK((e.status == 400 && !strcmp(e.code, "invalid_json")) ||
                       (e.status == 413 && !strcmp(e.code, "payload_too_large")),
                   "refused with %d %s", e.status, e.code);
        FUZZ_CHECK(e.message[0], "refused without a message");
        free(body);
        return 0;
    }
    json_error_t je;
    json_t *v = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (v) {
        check_tree(v, 0, &lim);
        char *again = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        FUZZ_CHECK(again != NULL, "dump");
        json_t *w = json_loads(again, JSON_DECODE_ANY, &je);
        FUZZ_CHECK(w && json_equal(v, w), "dump and load changed the value: %s", je.text);
        json_decref(w);
        free(again);
        json_decref(v);
    }
    free(body);
    return 0;
}
