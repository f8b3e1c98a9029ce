/*
 * recall_parse.c — the validator of POST /recall (validate.h): raw body
 * bytes to an srv_recall_task, or an srv_error.
 *
 * Engine "exact": keys (and the queries, which live in the key space) and
 * values each get dense ids, a string and an integer never being the same
 * symbol ("1" is not 1).  The interning is bookkeeping only; the answers
 * come from tfm_recall_exact (recall.c).  Engine "model": the pairs and
 * queries must be the model's integers (keys 0 … n_keys-1, values
 * 0 … n_values-1, at most n_pairs distinct keys); the store the model reads
 * holds each key once, in the order of its first appearance, with its
 * latest value (a store's overwrite, as the exact engine answers).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "validate.h"

#define MAX_SYMBOL_BYTES 256

void srv_recall_task_free(srv_recall_task *t)
{
    if (!t)
        return;
    srv_model_put(t->model);
    json_decref(t->queries);
    json_decref(t->body);
    free(t->keys);
    free(t->values);
    free(t->qids);
    free(t->mkeys);
    free(t->mvalues);
    free(t->mqueries);
    free(t);
}

/* "s:" or "i:" plus the text: the symbol's identity. */
static int symbol_key(json_t *v, char *buf, size_t cap, size_t *len)
{
    if (json_is_string(v)) {
        size_t n = json_string_length(v);
        if (n > MAX_SYMBOL_BYTES)
            return 0;
        buf[0] = 's', buf[1] = ':';
        memcpy(buf + 2, json_string_value(v), n);
        *len = n + 2;
        return 1;
    }
    if (json_is_integer(v)) {
        int n = snprintf(buf, cap, "i:%lld", (long long)json_integer_value(v));
        *len = (size_t)n;
        return 1;
    }
    return 0;
}

/* The id of symbol v in map (a new one when absent). */
static int intern(json_t *map, json_t *v, uint32_t *id, int *next)
{
    char buf[MAX_SYMBOL_BYTES + 32];
    size_t len;
    if (!symbol_key(v, buf, sizeof buf, &len))
        return 0;
    json_t *have = json_object_getn(map, buf, len);
    if (have) {
        *id = (uint32_t)json_integer_value(have);
        return 1;
    }
    *id = (uint32_t)(*next)++;
    return json_object_setn_new_nocheck(map, buf, len, json_integer(*id)) == 0;
}

static const char *symbol_problem(json_t *v)
{
    if (json_is_string(v))
        return json_string_length(v) > MAX_SYMBOL_BYTES ? "longer than 256 bytes" : NULL;
    if (json_is_integer(v))
        return NULL;
    return "not a string or an integer";
}

/* Engine "model": the model named, or the first recall model by name.
 * Fills e and returns 0 when there is none to use. */
static int resolve_model(const srv_models *models, int ready, json_t *model, srv_recall_task *t,
                         srv_error *e)
{
    if (model && (!json_is_string(model) || json_string_length(model) == 0)) {
        srv_error_set(e, 422, "invalid_argument", "model", "model must be a non-empty string");
        return 0;
    }
    if (model) {
        t->model = srv_models_get(models, json_string_value(model)); /* the task's reference */
    } else {
        const srv_model *ms[SRV_MODELS_MAX];
        int n = srv_models_get_all(models, ms, SRV_MODELS_MAX);
        for (int i = 0; i < n && !t->model; i++)
            if (!strcmp(ms[i]->kind, "recall"))
                t->model = srv_model_hold(ms[i]);
        srv_models_put_all(ms, n);
    }
    if (t->model && strcmp(t->model->kind, "recall")) {
        srv_error_set(e, 422, "invalid_argument", "model",
                      "model \"%s\" is a %s model; engine \"model\" needs a recall model "
                      "(GET /models lists their kind)", t->model->name, t->model->kind);
        return 0;
    }
    if (t->model)
        return 1;
    if (!ready)
        srv_error_set(e, 503, "not_ready", NULL, "models are loading");
    else if (model)
        srv_error_set(e, 404, "model_not_found", "model", "no model named \"%s\"",
                      json_string_value(model));
    else
        srv_error_set(e, 422, "invalid_argument", "model",
                      "engine \"model\" needs a recall model and none is loaded");
    return 0;
}

/* An integer in [0, n) at v, else -1. */
static int index_in(json_t *v, int n)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= n)
        return -1;
    return (int)json_integer_value(v);
}

/* pairs[i] when it is a two-element array [key, value]; otherwise fills e
 * naming it and returns NULL.  field receives "pairs[i]". */
static json_t *pair_at(json_t *pairs, size_t i, char *field, size_t n, srv_error *e)
{
    json_t *p = json_array_get(pairs, i);
    snprintf(field, n, "pairs[%zu]", i);
    if (json_is_array(p) && json_array_size(p) == 2)
        return p;
    srv_error_set(e, 422, "invalid_argument", field,
                  "each pair must be a two-element array [key, value]");
    return NULL;
}

/* Engine "model": the pairs and queries in the model's symbols.  Fills e
 * and returns 0 on a bad one. */
static int model_store(srv_recall_task *t, int single, srv_error *e)
{
    const srv_model *m = t->model;
    const tfm_mqar *p = &m->recall;
    int np = t->n_pairs, nq = t->n_queries, ok = 0;
    int *latest = malloc((size_t)p->n_keys * sizeof *latest); /* key -> store slot */
    char *seen_value = calloc((size_t)p->n_values, 1);
    t->mkeys = malloc((size_t)(np ? np : 1) * sizeof(int));
    t->mvalues = malloc((size_t)(np ? np : 1) * sizeof(int));
    t->mqueries = malloc((size_t)(nq ? nq : 1) * sizeof(int));
    if (!latest || !seen_value || !t->mkeys || !t->mvalues || !t->mqueries) {
        srv_error_set(e, 500, "internal", NULL, "out of memory");
        goto out;
    }
    if (np == 0) {
        srv_error_set(e, 422, "invalid_argument", "pairs",
                      "engine \"model\" needs at least one pair (model %s holds 1 to %d)",
                      m->name, p->n_pairs);
        goto out;
    }
    for (int k = 0; k < p->n_keys; k++)
        latest[k] = -1;
    for (int i = 0; i < np; i++) {
        char field[32];
        json_t *pair = pair_at(t->pairs, (size_t)i, field, sizeof field, e);
        if (!pair)
            goto out;
        int k = index_in(json_array_get(pair, 0), p->n_keys);
        int v = index_in(json_array_get(pair, 1), p->n_values);
        if (k < 0 || v < 0) {
            int n = k < 0 ? p->n_keys : p->n_values;
            srv_error_set(e, 422, "invalid_argument", field,
                          "the pair's %s must be an integer between 0 and %d (model %s has "
                          "%d %s)", k < 0 ? "key" : "value", n - 1, m->name, n,
                          k < 0 ? "keys" : "values");
            goto out;
        }
        if (latest[k] < 0) {
            if (t->n_store == p->n_pairs) {
                srv_error_set(e, 422, "invalid_argument", "pairs",
                              "model %s holds at most %d distinct keys (pairs[%d] adds one "
                              "more)", m->name, p->n_pairs, i);
                goto out;
            }
            latest[k] = t->n_store++;
            t->mkeys[latest[k]] = k;
        }
        t->mvalues[latest[k]] = v; /* a repeated key: the latest value wins */
        if (!seen_value[v]) {
            seen_value[v] = 1;
            t->n_value_symbols++;
        }
    }
    t->n_key_symbols = t->n_store;
    for (int i = 0; i < nq; i++) {
        int q = index_in(json_array_get(t->queries, (size_t)i), p->n_keys);
        if (q < 0) {
            char field[32];
            snprintf(field, sizeof field, single ? "query" : "queries[%d]", i);
            srv_error_set(e, 422, "invalid_argument", field,
                          "the query must be an integer between 0 and %d (model %s's keys)",
                          p->n_keys - 1, m->name);
            goto out;
        }
        t->mqueries[i] = q;
    }
    ok = 1;
out:
    free(latest);
    free(seen_value);
    return ok;
}

/* Engine "exact": the symbols interned.  Fills e and returns 0 on a bad
 * one. */
static int exact_symbols(srv_recall_task *t, int single, srv_error *e)
{
    size_t np = (size_t)t->n_pairs, nq = (size_t)t->n_queries;
    json_t *kmap = json_object(), *vmap = json_object();
    int ok = 0;
    t->keys = malloc((np ? np : 1) * sizeof(uint32_t));
    t->values = malloc((np ? np : 1) * sizeof(uint32_t));
    t->qids = malloc((nq ? nq : 1) * sizeof(uint32_t));
    if (!kmap || !vmap || !t->keys || !t->values || !t->qids) {
        srv_error_set(e, 500, "internal", NULL, "out of memory");
        goto out;
    }
    int next_key = 0, next_value = 0;
    for (size_t i = 0; i < np; i++) {
        char field[32];
        json_t *p = pair_at(t->pairs, i, field, sizeof field, e);
        if (!p)
            goto out;
        for (int side = 0; side < 2; side++) {
            const char *why = symbol_problem(json_array_get(p, (size_t)side));
            if (why) {
                srv_error_set(e, 422, "invalid_argument", field, "the pair's %s is %s",
                              side ? "value" : "key", why);
                goto out;
            }
        }
        if (!intern(kmap, json_array_get(p, 0), &t->keys[i], &next_key) ||
            !intern(vmap, json_array_get(p, 1), &t->values[i], &next_value)) {
            srv_error_set(e, 500, "internal", NULL, "out of memory");
            goto out;
        }
    }
    t->n_key_symbols = next_key;
    t->n_value_symbols = next_value;
    for (size_t i = 0; i < nq; i++) {
        json_t *q = json_array_get(t->queries, i);
        const char *why = symbol_problem(q);
        if (why) {
            char field[32];
            snprintf(field, sizeof field, single ? "query" : "queries[%zu]", i);
            srv_error_set(e, 422, "invalid_argument", field, "the query is %s", why);
            goto out;
        }
        /* a query that is no key gets an id of its own: it matches nothing */
        if (!intern(kmap, q, &t->qids[i], &next_key)) {
            srv_error_set(e, 500, "internal", NULL, "out of memory");
            goto out;
        }
    }
    ok = 1;
out:
    json_decref(kmap);
    json_decref(vmap);
    return ok;
}

/* timeout_ms: an integer >= 1, clamped to the cap; absent, the cap. */
static int parse_timeout(json_t *body, const srv_config *cfg, int *out, srv_error *e)
{
    long long cap = (long long)cfg->request_timeout_s * 1000;
    json_t *v = json_object_get(body, "timeout_ms");
    *out = (int)cap;
    if (!v)
        return 1;
    if (!json_is_integer(v) || json_integer_value(v) < 1) {
        srv_error_set(e, 422, "invalid_argument", "timeout_ms",
                      "timeout_ms must be an integer >= 1 (milliseconds; "
                      "--request-timeout-seconds %d caps it)",
                      cfg->request_timeout_s);
        return 0;
    }
    if (json_integer_value(v) < cap)
        *out = (int)json_integer_value(v);
    return 1;
}

static int check(srv_recall_task *t, const srv_models *models, const srv_config *cfg, int ready,
                 srv_error *e)
{
    if (!json_is_object(t->body)) {
        srv_error_set(e, 422, "invalid_argument", NULL, "the body must be a JSON object");
        return 0;
    }
    static const char *const known[] = {"pairs", "queries", "query", "engine",
                                        "explain", "model", "timeout_ms"};
    if (srv_json_known_fields(t->body, known, sizeof known / sizeof *known, e))
        return 0;
    json_t *engine = json_object_get(t->body, "engine");
    if (engine && !json_is_string(engine)) {
        srv_error_set(e, 422, "invalid_argument", "engine", "engine must be a string");
        return 0;
    }
    int use_model = engine && !strcmp(json_string_value(engine), "model");
    if (engine && !use_model && strcmp(json_string_value(engine), "exact")) {
        srv_error_set(e, 422, "invalid_argument", "engine",
                      "engine must be \"exact\" or \"model\" (got \"%s\")",
                      json_string_value(engine));
        return 0;
    }
    json_t *model = json_object_get(t->body, "model");
    if (model && !use_model) {
        srv_error_set(e, 422, "invalid_argument", "model",
                      "model applies to engine \"model\" only; add \"engine\": \"model\"");
        return 0;
    }
    if (use_model && !resolve_model(models, ready, model, t, e))
        return 0;
    json_t *explain = json_object_get(t->body, "explain");
    if (explain && !json_is_boolean(explain)) {
        srv_error_set(e, 422, "invalid_argument", "explain", "explain must be true or false");
        return 0;
    }
    t->explain = explain && json_is_true(explain);
    if (use_model && t->explain) {
        srv_error_set(e, 422, "invalid_argument", "explain",
                      "explain is served by engine \"exact\" only: a trained model gives no "
                      "attention weights per pair");
        return 0;
    }

    t->pairs = json_object_get(t->body, "pairs");
    if (!t->pairs || !json_is_array(t->pairs)) {
        srv_error_set(e, 422, "invalid_argument", "pairs", "%s",
                      t->pairs ? "pairs must be an array of [key, value]" : "pairs is required");
        return 0;
    }
    size_t np = json_array_size(t->pairs);
    if (np > (size_t)cfg->max_recall_pairs) {
        srv_error_set(e, 422, "invalid_argument", "pairs", "at most %d pairs (got %zu)",
                      cfg->max_recall_pairs, np);
        return 0;
    }
    json_t *queries = json_object_get(t->body, "queries"), *query = json_object_get(t->body, "query");
    if (queries && query) {
        srv_error_set(e, 422, "invalid_argument", "query", "give queries or query, not both");
        return 0;
    }
    if (query) {
        t->queries = json_pack("[O]", query);
    } else if (queries && json_is_array(queries)) {
        t->queries = json_incref(queries);
    } else {
        srv_error_set(e, 422, "invalid_argument", "queries", "%s",
                      queries ? "queries must be an array" : "queries (or query) is required");
        return 0;
    }
    if (!t->queries) {
        srv_error_set(e, 500, "internal", NULL, "out of memory");
        return 0;
    }
    size_t nq = json_array_size(t->queries);
    if (nq > (size_t)cfg->max_recall_queries) {
        srv_error_set(e, 422, "invalid_argument", "queries", "at most %d queries (got %zu)",
                      cfg->max_recall_queries, nq);
        return 0;
    }
    t->n_pairs = (int)np;
    t->n_queries = (int)nq;
    if (!(use_model ? model_store(t, query != NULL, e) : exact_symbols(t, query != NULL, e)))
        return 0;
    return parse_timeout(t->body, cfg, &t->timeout_ms, e);
}

int srv_recall_parse(const char *raw, size_t len, const srv_json_limits *lim,
                     const srv_models *models, const srv_config *cfg, int ready,
                     srv_recall_task **out, srv_error *e)
{
    *out = NULL;
    raw = raw ? raw : "";
    if (srv_json_guard(raw, len, lim, e))
        return -1;
    json_error_t err;
    json_t *body = json_loadb(raw, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
    if (!body)
        return srv_error_set(e, 400, "invalid_json", NULL,
                             "malformed JSON at line %d, column %d: %s", err.line, err.column,
                             err.text);
    srv_recall_task *t = calloc(1, sizeof *t);
    if (!t) {
        json_decref(body);
        return srv_error_set(e, 500, "internal", NULL, "out of memory");
    }
    t->body = body;
    if (!check(t, models, cfg, ready, e)) {
        srv_recall_task_free(t);
        return -1;
    }
    *out = t;
    return 0;
}
