/*
 * json_guard.h — limits on a request body checked on its raw bytes before
 * any JSON parser sees it.
 *
 * jansson's parser is recursive; a body of 100,000 '[' must never reach
 * it, and neither should a body whose arrays or strings are larger than
 * any route accepts: the scan below is one pass, iterative, with no
 * allocation, and refuses such a body with 400 (depth) or 413 (sizes)
 * naming the limit.  It does not validate JSON otherwise: whatever it lets
 * through still goes to jansson, which reports syntax errors as before.
 */
#ifndef SRV_JSON_GUARD_H
#define SRV_JSON_GUARD_H

#include <stddef.h>

#include "error.h"

typedef struct srv_json_limits {
    int max_depth;           /* arrays and objects nested (--max-json-depth) */
    size_t max_array;        /* elements of any one array or members of an object */
    size_t max_string;       /* bytes of any one string, escapes as written */
} srv_json_limits;

/* 0 when body is within the limits; -1 with e filled otherwise. */
int srv_json_guard(const char *body, size_t len, const srv_json_limits *lim, srv_error *e);

/* After parsing: 0 when every member of obj is one of the n names of
 * known; -1 with a 422 naming the first unknown field otherwise (attnd's
 * routes refuse what they do not know: a typo must not fall back to a
 * default). */
struct json_t;
int srv_json_known_fields(struct json_t *obj, const char *const *known, size_t n, srv_error *e);

#endif
