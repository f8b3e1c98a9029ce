/*
 * generate_parse.c — the validator of POST /generate (validate.h): raw
 * body bytes to a filled srv_job, or an srv_error.
 *
 * Every field is checked here, before anything is queued, so a bad request
 * costs no engine time and names its field (422).  What can only be known
 * after tokenising (a prompt longer than the context) is checked by the
 * engine and comes back as the same error shape.  Unknown fields are
 * refused: a typo like "max_token" should not silently fall back to a
 * default, as it does in some servers.
 *
 * Integers: jansson keeps integers as int64 and refuses a body with a
 * larger literal as a whole (numeric overflow).  Such a body is parsed
 * again with integers as reals, so that the field at fault gets its 422;
 * and a seed, which may be any unsigned 64-bit value, is always read from
 * its raw literal.
 */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "validate.h"

#define MAX_TOKENS_LIMIT 4096

static const char *const known[] = {"prompt", "model", "max_tokens", "max_new_tokens",
                                    "temperature", "top_k", "top_p", "seed", "stop", "stream",
                                    "ignore_eos", "attention", "timeout_ms"};

/* The raw text of a top-level member's value in an object that jansson has
 * already accepted.  0 when not found (a key written with escapes is not
 * matched). */
int srv_raw_member(const char *p, size_t n, const char *key, const char **val, size_t *vlen)
{
    size_t klen = strlen(key);
    int depth = 0;
    for (size_t i = 0; i < n;) {
        char c = p[i];
        if (c == '"') {
            size_t start = ++i;
            while (i < n && p[i] != '"')
                i += p[i] == '\\' ? 2 : 1;
            size_t end = i++;
            size_t k = i;
            while (k < n && isspace((unsigned char)p[k]))
                k++;
            if (depth == 1 && k < n && p[k] == ':' && end - start == klen &&
                !memcmp(p + start, key, klen)) {
                k++;
                while (k < n && isspace((unsigned char)p[k]))
                    k++;
                size_t v = k;
                while (k < n && !strchr(",}] \t\r\n", p[k]))
                    k++;
                *val = p + v;
                *vlen = k - v;
                return 1;
            }
            continue;
        }
        if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']')
            depth--;
        i++;
    }
    return 0;
}

int srv_field_seed(const srv_parse_ctx *pc, uint64_t *out)
{
    const char *v;
    size_t n;
    char lit[32];
    if (!srv_raw_member(pc->raw, pc->raw_len, "seed", &v, &n) || n == 0 || n >= sizeof lit)
        goto bad;
    for (size_t i = 0; i < n; i++)
        if (v[i] < '0' || v[i] > '9')
            goto bad;
    memcpy(lit, v, n);
    lit[n] = 0;
    errno = 0;
    unsigned long long s = strtoull(lit, NULL, 10);
    if (errno)
        goto bad;
    *out = s;
    return 1;
bad:
    srv_error_set(pc->e, 422, "invalid_argument", "seed",
                  "seed must be an integer between 0 and 18446744073709551615");
    return 0;
}

/* A number field in [lo, hi]; 1 when absent (out keeps its default). */
int srv_field_bool(const srv_parse_ctx *pc, json_t *o, const char *key, int *out)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 1;
    if (!json_is_boolean(v)) {
        srv_error_set(pc->e, 422, "invalid_argument", key, "%s must be true or false", key);
        return 0;
    }
    *out = json_is_true(v);
    return 1;
}

void srv_json_drop_nulls(json_t *o)
{
    const char *key;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(o, tmp, key, v)
    {
        if (json_is_null(v))
            json_object_del(o, key);
    }
}

/* No seed: a fresh one per request, from the clock and a counter. */
uint64_t srv_fresh_seed(void)
{
    static atomic_ullong counter;
    return (uint64_t)(tfm_now() * 1e9) ^
           ((uint64_t)(atomic_fetch_add(&counter, 1) + 1) * 0x9E3779B97F4A7C15ull);
}

int srv_field_number(const srv_parse_ctx *pc, json_t *body, const char *key, double lo, double hi,
                  int lo_open, double *out)
{
    json_t *v = json_object_get(body, key);
    if (!v)
        return 1;
    if (!json_is_number(v)) {
        srv_error_set(pc->e, 422, "invalid_argument", key, "%s must be a number", key);
        return 0;
    }
    double d = json_number_value(v);
    if (!isfinite(d) || d < lo || d > hi || (lo_open && d == lo)) {
        srv_error_set(pc->e, 422, "invalid_argument", key, "%s must be %s %g and <= %g", key,
                      lo_open ? ">" : ">=", lo, hi);
        return 0;
    }
    *out = d;
    return 1;
}

/* An integer field in [lo, hi]; 1 when absent. */
int srv_field_integer(const srv_parse_ctx *pc, json_t *body, const char *key, json_int_t lo,
                   json_int_t hi, json_int_t *out)
{
    json_t *v = json_object_get(body, key);
    if (!v)
        return 1;
    /* a body with an integer beyond int64 was parsed with integers as
     * reals: then an integral real counts as an integer */
    if (pc->reals && json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
        json_real_value(v) >= (double)lo && json_real_value(v) <= (double)hi) {
        *out = (json_int_t)json_real_value(v);
        return 1;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        srv_error_set(pc->e, 422, "invalid_argument", key,
                      "%s must be an integer between %lld and %lld", key, (long long)lo,
                      (long long)hi);
        return 0;
    }
    *out = json_integer_value(v);
    return 1;
}

/* timeout_ms: an integer >= 1 (any size: beyond the cap it is clamped);
 * absent, the cap. */
int srv_field_timeout_ms(const srv_parse_ctx *pc, json_t *body, const srv_config *cfg, int *out)
{
    long long cap = (long long)cfg->request_timeout_s * 1000;
    *out = (int)cap;
    json_t *v = json_object_get(body, "timeout_ms");
    if (!v)
        return 1;
    if (json_is_integer(v) && json_integer_value(v) >= 1) {
        if (json_integer_value(v) < cap)
            *out = (int)json_integer_value(v);
        return 1;
    }
    if (pc->reals && json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
        json_real_value(v) >= 1) {
        if (json_real_value(v) < (double)cap)
            *out = (int)json_real_value(v);
        return 1;
    }
    srv_error_set(pc->e, 422, "invalid_argument", "timeout_ms",
                  "timeout_ms must be an integer >= 1 (milliseconds; "
                  "--request-timeout-seconds %d caps it)",
                  cfg->request_timeout_s);
    return 0;
}

int srv_field_stop(const srv_parse_ctx *pc, json_t *v, srv_job *j)
{
    json_t *one[1] = {v};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > SRV_MAX_STOP) {
            srv_error_set(pc->e, 422, "invalid_argument", "stop", "stop takes at most %d strings",
                          SRV_MAX_STOP);
            return 0;
        }
        items = NULL;
    } else if (!json_is_string(v)) {
        srv_error_set(pc->e, 422, "invalid_argument", "stop",
                      "stop must be a string or an array of strings");
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = items ? items[i] : json_array_get(v, i);
        if (!json_is_string(s) || json_string_length(s) == 0 ||
            json_string_length(s) > SRV_MAX_STOP_BYTES) {
            srv_error_set(pc->e, 422, "invalid_argument", "stop",
                          "each stop string must be a non-empty string of at most %d bytes",
                          SRV_MAX_STOP_BYTES);
            return 0;
        }
        size_t len = json_string_length(s);
        j->stop[j->n_stop] = malloc(len + 1);
        if (!j->stop[j->n_stop]) {
            srv_error_set(pc->e, 500, "internal", NULL, "out of memory");
            return 0;
        }
        memcpy(j->stop[j->n_stop], json_string_value(s), len + 1);
        j->stop_len[j->n_stop++] = len;
    }
    return 1;
}

static int fill_job(const srv_parse_ctx *pc, json_t *body, const srv_models *models,
                    const srv_config *cfg, srv_job *j)
{
    srv_error *e = pc->e;
    if (srv_json_known_fields(body, known, sizeof known / sizeof *known, e))
        return 0;
    json_t *prompt = json_object_get(body, "prompt");
    if (!prompt || !json_is_string(prompt)) {
        srv_error_set(e, 422, "invalid_argument", "prompt", "%s",
                      prompt ? "prompt must be a string" : "prompt is required");
        return 0;
    }
    j->prompt_len = json_string_length(prompt);
    j->prompt = malloc(j->prompt_len + 1);
    if (!j->prompt) {
        srv_error_set(e, 500, "internal", NULL, "out of memory");
        return 0;
    }
    memcpy(j->prompt, json_string_value(prompt), j->prompt_len + 1);

    json_t *model = json_object_get(body, "model");
    if (model && !json_is_string(model)) {
        srv_error_set(e, 422, "invalid_argument", "model", "model must be a string");
        return 0;
    }
    j->model = model ? srv_models_get(models, json_string_value(model)) /* the job's reference */
                     : srv_models_get_default(models);
    if (!j->model) {
        if (model)
            srv_error_set(e, 404, "model_not_found", "model", "no model named \"%s\"",
                          json_string_value(model));
        else
            srv_error_set(e, 503, "not_ready", NULL, "no text model is loaded");
        return 0;
    }
    if (strcmp(j->model->kind, "text")) {
        srv_error_set(e, 422, "invalid_argument", "model",
                      "model \"%s\" is a %s model; /generate needs a text model", j->model->name,
                      j->model->kind);
        return 0;
    }

    json_int_t mt = 128, mnt = 0, top_k = 0;
    if (!srv_field_integer(pc, body, "max_tokens", 1, MAX_TOKENS_LIMIT, &mt) ||
        !srv_field_integer(pc, body, "max_new_tokens", 1, MAX_TOKENS_LIMIT, &mnt))
        return 0;
    if (json_object_get(body, "max_new_tokens")) {
        if (json_object_get(body, "max_tokens") && mt != mnt) {
            srv_error_set(e, 422, "invalid_argument", "max_new_tokens",
                          "max_tokens and its alias max_new_tokens disagree");
            return 0;
        }
        mt = mnt;
    }
    j->max_tokens = (int)mt;
    double temperature = 1.0, top_p = 1.0;
    if (!srv_field_number(pc, body, "temperature", 0, 100, 0, &temperature) ||
        !srv_field_number(pc, body, "top_p", 0, 1, 1, &top_p) ||
        !srv_field_integer(pc, body, "top_k", 0, 1 << 30, &top_k))
        return 0;
    j->sampling.temperature = (float)temperature;
    j->sampling.top_p = srv_top_p(top_p);
    j->sampling.top_k = (int)top_k;
    if (json_object_get(body, "seed")) {
        if (!srv_field_seed(pc, &j->sampling.seed))
            return 0;
    } else {
        j->sampling.seed = srv_fresh_seed();
    }
    json_t *stop = json_object_get(body, "stop");
    if (stop && !json_is_null(stop) && !srv_field_stop(pc, stop, j))
        return 0;
    if (!srv_field_bool(pc, body, "stream", &j->stream) ||
        !srv_field_bool(pc, body, "ignore_eos", &j->ignore_eos))
        return 0;
    json_t *attention = json_object_get(body, "attention");
    if (attention) {
        const char *k = json_is_string(attention) ? json_string_value(attention) : "";
        if (!strcmp(k, "naive"))
            j->attention = TFM_ATTN_NAIVE;
        else if (!strcmp(k, "tiled"))
            j->attention = TFM_ATTN_TILED;
        else if (strcmp(k, "auto")) {
            srv_error_set(e, 422, "invalid_argument", "attention",
                          "attention must be \"naive\", \"tiled\" or \"auto\"");
            return 0;
        }
    }
    return srv_field_timeout_ms(pc, body, cfg, &j->timeout_ms);
}

json_t *srv_parse_object(const char *raw, size_t len, const srv_json_limits *lim,
                         srv_parse_ctx *pc)
{
    raw = raw ? raw : "";
    pc->raw = raw;
    pc->raw_len = len;
    pc->reals = 0;
    if (srv_json_guard(raw, len, lim, pc->e))
        return NULL;
    json_error_t err;
    size_t flags = JSON_REJECT_DUPLICATES | JSON_DECODE_ANY;
    json_t *body = json_loadb(raw, len, flags, &err);
    if (!body && json_error_code(&err) == json_error_numeric_overflow) {
        /* valid JSON with an integer beyond int64: parse again with
         * integers as reals, so that the field gets its 422 (or, for a
         * seed, its exact value from the raw text) */
        pc->reals = 1;
        body = json_loadb(raw, len, flags | JSON_DECODE_INT_AS_REAL, &err);
    }
    if (!body) {
        srv_error_set(pc->e, 400, "invalid_json", NULL, "malformed JSON at line %d, column %d: %s",
                      err.line, err.column, err.text);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        srv_error_set(pc->e, 422, "invalid_argument", NULL, "the body must be a JSON object");
        return NULL;
    }
    return body;
}

int srv_generate_parse(const char *raw, size_t len, const srv_json_limits *lim,
                       const srv_models *models, const srv_config *cfg, srv_job *j,
                       srv_error *e)
{
    srv_parse_ctx pc = {0, NULL, 0, e};
    json_t *body = srv_parse_object(raw, len, lim, &pc);
    if (!body)
        return -1;
    int ok = fill_job(&pc, body, models, cfg, j);
    json_decref(body);
    return ok ? 0 : -1;
}
