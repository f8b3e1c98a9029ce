/*
 * json_guard.c — depth, array and string limits on raw JSON bytes (see
 * json_guard.h).
 *
 * Measured on Debian 12's jansson 2.14: its parser recurses once per
 * nesting level and stops itself at JSON_PARSER_MAX_DEPTH (2048) levels,
 * so 100,000 '[' is refused ("maximum parsing depth reached") rather than
 * overflowing the stack; but a 2048-deep value still costs 2048 frames on
 * libmicrohttpd's thread, and an older or rebuilt jansson may have no
 * limit at all.  Values as deep as 32 levels, arrays of more than the
 * largest any route takes, or strings over a route's limit are useless to
 * every route, so they are refused here, before the parser allocates a
 * node for each element.
 *
 * The scan tracks only what it must: inside a string or not (with
 * backslash escapes), the current depth, and for each open container its
 * element count (its commas), kept in a fixed stack as deep as the limit.  Anything
 * that is not a string, bracket, brace or comma passes untouched; the
 * parser that follows judges the syntax.
 */
#include "json_guard.h"

#include <jansson.h>
#include <string.h>

#define GUARD_STACK 1000 /* the deepest --max-json-depth */

int srv_json_guard(const char *body, size_t len, const srv_json_limits *lim, srv_error *e)
{
    size_t count[GUARD_STACK]; /* elements so far in each open container */
    int max_depth = lim->max_depth < GUARD_STACK ? lim->max_depth : GUARD_STACK;
    int depth = 0;
    for (size_t i = 0; i < len; i++) {
        char c = body[i];
        if (c == '"') {
            size_t start = ++i;
            while (i < len && body[i] != '"')
                i += body[i] == '\\' ? 2 : 1;
            size_t n = (i < len ? i : len) - start;
            if (n > lim->max_string)
                return srv_error_set(e, 413, "payload_too_large", NULL,
                                     "a string of %zu bytes at byte %zu; the limit is %zu", n,
                                     start - 1, lim->max_string);
            continue;
        }
        if (c == '[' || c == '{') {
            if (depth >= max_depth)
                return srv_error_set(e, 400, "invalid_json", NULL,
                                     "JSON nested deeper than %d levels at byte %zu", max_depth,
                                     i);
            count[depth++] = 0;
        } else if (c == ']' || c == '}') {
            if (depth > 0)
                depth--;
        } else if (c == ',') {
            if (depth > 0 && ++count[depth - 1] >= lim->max_array)
                return srv_error_set(e, 413, "payload_too_large", NULL,
                                     "an array or object of more than %zu elements",
                                     lim->max_array);
        }
    }
    return 0;
}

int srv_json_known_fields(json_t *obj, const char *const *known, size_t n, srv_error *e)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        size_t i = 0;
        while (i < n && strcmp(key, known[i]))
            i++;
        if (i == n)
            return srv_error_set(e, 422, "invalid_argument", key, "unknown field \"%s\"", key);
    }
    return 0;
}
