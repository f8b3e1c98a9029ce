/*
 * recall.c — POST /recall: a key-value store answered by attention.
 *
 * The HTTP thread validates the body and interns its symbols: keys (and the
 * queries, which live in the key space) and values each get dense ids, a
 * string and an integer never being the same symbol ("1" is not 1).  The
 * interning is bookkeeping only; the answers come from tfm_recall_exact,
 * the lecture's one-layer attention computed with real matrices (see
 * include/tfm/recall.h).  The computation runs on a libuv worker, never on
 * the HTTP thread: the job goes through the loop's inbox, the loop queues
 * it with uv_queue_work, and the worker writes the reply and reports back
 * like the engine does.  Each answer's value is the JSON value given with
 * the attended pair, so its type survives.
 *
 * Engine "model" asks a transformer trained on MQAR (a registered model of
 * kind "recall") instead, through tfm_mqar_answer on the same worker, one
 * thread.  Its symbols are the model's: keys are integers 0 … n_keys-1 and
 * values 0 … n_values-1 of its training parameters, at most n_pairs
 * distinct keys; the store the model reads holds each key once, in the
 * order of its first appearance, with its latest value (a store's
 * overwrite, as the exact engine answers).  Each answer carries the
 * model's probability for it; ⊥ is null.  The model gives no attention
 * weights, so `explain` is refused.  Its forward is in the op accounting
 * as phase prefill, attention kind naive (one sequence per query).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "tfm/recall.h"
#include "tfm/train.h"

#define MAX_SYMBOL_BYTES 256

typedef struct recall_task {
    json_t *body;     /* the parsed request; pair and query values borrowed */
    json_t *pairs;    /* borrowed from body */
    json_t *queries;  /* borrowed from body, or an array of the one query */
    int explain;
    uint32_t *keys, *values, *qids; /* interned ids */
    int n_pairs, n_queries, n_key_symbols, n_value_symbols;
    srv_stats *stats;
    /* engine "model" */
    const srv_model *model;
    int *mkeys, *mvalues, *mqueries; /* the store (distinct keys), the queries */
    int n_store;
} recall_task;

static void free_task(void *p)
{
    recall_task *t = p;
    if (!t)
        return;
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

/* The id of symbol v in map (a new one when absent and `add`). */
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

/* Libuv worker: the attention, then the reply. */
static void run(srv_job *j)
{
    recall_task *t = j->task;
    tfm_recall_request rq = {t->n_pairs, t->keys, t->values, t->n_queries, t->qids};
    tfm_recall_answer *ans = calloc((size_t)(t->n_queries ? t->n_queries : 1), sizeof *ans);
    tfm_recall_stats st;
    memset(&st, 0, sizeof st);
    tfm_profile prof;
    memset(&prof, 0, sizeof prof);
    prof.enabled = 1;
    tfm_status s = ans ? tfm_recall_exact(&rq, ans, &st, &prof) : TFM_E_NOMEM;
    srv_buf *b = &j->out;
    pthread_mutex_lock(&j->mu);
    if (s != TFM_OK) {
        j->http_status = 500;
        srv_buf_printf(b, "{\"error\":{\"code\":\"internal\",\"message\":\"recall: %s\"}}",
                       tfm_strerror(s));
    } else {
        json_t *answers = json_array();
        for (int i = 0; i < t->n_queries; i++) {
            json_t *q = json_array_get(t->queries, (size_t)i);
            json_t *value = json_null();
            if (ans[i].found) /* the attended pair's own value */
                value = json_incref(json_array_get(json_array_get(t->pairs, (size_t)ans[i].position), 1));
            json_t *a = json_pack("{s:O,s:o,s:b}", "query", q, "value", value, "found",
                                  ans[i].found);
            if (t->explain)
                json_object_set_new(a, "attention",
                                    json_pack("[{s:i,s:f}]", "position", ans[i].position,
                                              "weight", (double)ans[i].weight));
            json_array_append_new(answers, a);
        }
        json_t *reply = json_pack(
            "{s:s,s:o,s:{s:i,s:i},s:{s:f,s:f}}", "engine", "exact", "answers", answers, "usage",
            "tokens", 2 * t->n_pairs + t->n_queries, "symbols",
            t->n_key_symbols + t->n_value_symbols, "timings", "total_ms", st.seconds * 1e3,
            "attention_ms", st.attention_seconds * 1e3);
        char *text = reply ? json_dumps(reply, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
        if (text)
            srv_buf_append(b, text, strlen(text));
        else {
            j->http_status = 500;
            srv_buf_printf(b, "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}");
        }
        free(text);
        json_decref(reply);
        srv_stats_recall(t->stats, 2 * t->n_pairs + t->n_queries, &prof);
        srv_stats_recall_engine(t->stats, 0, t->n_queries);
    }
    j->done = 1;
    pthread_mutex_unlock(&j->mu);
    free(ans);
}

/* The reply body (JSON text) into j->out, or a 500. */
static void put_reply(srv_job *j, json_t *reply)
{
    char *text = reply ? json_dumps(reply, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    if (text)
        srv_buf_append(&j->out, text, strlen(text));
    else {
        j->http_status = 500;
        srv_buf_printf(&j->out, "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}");
    }
    free(text);
    json_decref(reply);
}

/* Libuv worker: engine "model" — the trained model's forward, then the
 * reply. */
static void run_model(srv_job *j)
{
    recall_task *t = j->task;
    const srv_model *m = t->model;
    int nq = t->n_queries;
    int *ans = malloc((size_t)(nq ? nq : 1) * sizeof *ans);
    float *probs = malloc((size_t)(nq ? nq : 1) * sizeof *probs);
    tfm_profile prof;
    memset(&prof, 0, sizeof prof);
    prof.enabled = 1;
    double t0 = tfm_now();
    tfm_status s = ans && probs ? TFM_OK : TFM_E_NOMEM;
    if (s == TFM_OK && nq > 0)
        s = tfm_mqar_answer(m->model, &m->recall, t->mkeys, t->mvalues, t->n_store, t->mqueries,
                            nq, 1, ans, probs, &prof);
    double seconds = tfm_now() - t0;
    pthread_mutex_lock(&j->mu);
    if (s != TFM_OK) { /* the store was checked here: a bug or no memory */
        char msg[256];
        snprintf(msg, sizeof msg, "recall model %s: %s", m->name, tfm_strerror(s));
        j->http_status = 500;
        srv_buf_printf(&j->out, "{\"error\":{\"code\":\"internal\",\"message\":");
        srv_json_string(&j->out, msg, strlen(msg));
        srv_buf_append(&j->out, "}}", 2);
    } else {
        json_t *answers = json_array();
        for (int i = 0; i < nq; i++) {
            int found = ans[i] >= 0;
            json_array_append_new(
                answers, json_pack("{s:O,s:o,s:b,s:f}", "query",
                                   json_array_get(t->queries, (size_t)i), "value",
                                   found ? json_integer(ans[i]) : json_null(), "found", found,
                                   "probability", (double)probs[i]));
        }
        put_reply(j, json_pack("{s:s,s:s,s:o,s:{s:i,s:i},s:{s:f}}", "engine", "model", "model",
                               m->name, "answers", answers, "usage", "tokens",
                               2 * t->n_pairs + nq, "symbols",
                               t->n_key_symbols + t->n_value_symbols, "timings", "total_ms",
                               seconds * 1e3));
        if (j->http_status == 200) {
            srv_stats_recall(t->stats, 2 * t->n_pairs + nq, &prof);
            srv_stats_recall_engine(t->stats, 1, nq);
        }
    }
    j->done = 1;
    pthread_mutex_unlock(&j->mu);
    free(ans);
    free(probs);
}

/* Engine "model": the model named, or the first recall model by name.
 * Replies and returns 0 when there is none to use. */
static int resolve_model(srv_req *r, json_t *model, recall_task *t)
{
    srv_app *app = r->app;
    if (model && (!json_is_string(model) || json_string_length(model) == 0)) {
        srv_reply_error(r, 422, "invalid_argument", "model", "model must be a non-empty string");
        return 0;
    }
    if (model) {
        t->model = srv_models_find(&app->models, json_string_value(model));
    } else {
        const srv_model *ms[SRV_MODELS_MAX];
        int n = srv_models_sorted(&app->models, ms, SRV_MODELS_MAX);
        for (int i = 0; i < n && !t->model; i++)
            if (!strcmp(ms[i]->kind, "recall"))
                t->model = ms[i];
    }
    if (t->model && strcmp(t->model->kind, "recall")) {
        srv_reply_error(r, 422, "invalid_argument", "model",
                        "model \"%s\" is a %s model; engine \"model\" needs a recall model "
                        "(GET /models lists their kind)", t->model->name, t->model->kind);
        return 0;
    }
    if (t->model)
        return 1;
    if (!atomic_load(&app->ready))
        srv_reply_error(r, 503, "not_ready", NULL, "models are loading");
    else if (model)
        srv_reply_error(r, 404, "model_not_found", "model", "no model named \"%s\"",
                        json_string_value(model));
    else
        srv_reply_error(r, 422, "invalid_argument", "model",
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

/* pairs[i] when it is a two-element array [key, value]; otherwise replies
 * 422 naming it and returns NULL.  field receives "pairs[i]". */
static json_t *pair_at(srv_req *r, json_t *pairs, size_t i, char *field, size_t n)
{
    json_t *p = json_array_get(pairs, i);
    snprintf(field, n, "pairs[%zu]", i);
    if (json_is_array(p) && json_array_size(p) == 2)
        return p;
    srv_reply_error(r, 422, "invalid_argument", field,
                    "each pair must be a two-element array [key, value]");
    return NULL;
}

/* Engine "model": the pairs and queries in the model's symbols.  Replies
 * and returns 0 on a bad one. */
static int model_store(srv_req *r, recall_task *t, int single)
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
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    if (np == 0) {
        srv_reply_error(r, 422, "invalid_argument", "pairs",
                        "engine \"model\" needs at least one pair (model %s holds 1 to %d)",
                        m->name, p->n_pairs);
        goto out;
    }
    for (int k = 0; k < p->n_keys; k++)
        latest[k] = -1;
    for (int i = 0; i < np; i++) {
        char field[32];
        json_t *pair = pair_at(r, t->pairs, (size_t)i, field, sizeof field);
        if (!pair)
            goto out;
        int k = index_in(json_array_get(pair, 0), p->n_keys);
        int v = index_in(json_array_get(pair, 1), p->n_values);
        if (k < 0 || v < 0) {
            int n = k < 0 ? p->n_keys : p->n_values;
            srv_reply_error(r, 422, "invalid_argument", field,
                            "the pair's %s must be an integer between 0 and %d (model %s has "
                            "%d %s)", k < 0 ? "key" : "value", n - 1, m->name, n,
                            k < 0 ? "keys" : "values");
            goto out;
        }
        if (latest[k] < 0) {
            if (t->n_store == p->n_pairs) {
                srv_reply_error(r, 422, "invalid_argument", "pairs",
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
            srv_reply_error(r, 422, "invalid_argument", field,
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

void srv_route_recall(srv_req *r)
{
    srv_app *app = r->app;
    json_t *body = srv_req_json_body(r);
    if (!body)
        return;
    recall_task *t = calloc(1, sizeof *t);
    json_t *kmap = json_object(), *vmap = json_object();
    srv_job *j = NULL;
    if (!t || !kmap || !vmap) {
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    t->body = body;
    body = NULL;
    t->stats = &app->stats;
    if (!json_is_object(t->body)) {
        srv_reply_error(r, 422, "invalid_argument", NULL, "the body must be a JSON object");
        goto out;
    }
    static const char *const known[] = {"pairs", "queries", "query", "engine", "explain", "model"};
    const char *key;
    json_t *v;
    json_object_foreach(t->body, key, v)
    {
        int ok = 0;
        for (size_t i = 0; i < sizeof known / sizeof *known && !ok; i++)
            ok = !strcmp(key, known[i]);
        if (!ok) {
            srv_reply_error(r, 422, "invalid_argument", key, "unknown field \"%s\"", key);
            goto out;
        }
    }
    json_t *engine = json_object_get(t->body, "engine");
    if (engine && !json_is_string(engine)) {
        srv_reply_error(r, 422, "invalid_argument", "engine", "engine must be a string");
        goto out;
    }
    int use_model = engine && !strcmp(json_string_value(engine), "model");
    if (engine && !use_model && strcmp(json_string_value(engine), "exact")) {
        srv_reply_error(r, 422, "invalid_argument", "engine",
                        "engine must be \"exact\" or \"model\" (got \"%s\")",
                        json_string_value(engine));
        goto out;
    }
    json_t *model = json_object_get(t->body, "model");
    if (model && !use_model) {
        srv_reply_error(r, 422, "invalid_argument", "model",
                        "model applies to engine \"model\" only; add \"engine\": \"model\"");
        goto out;
    }
    if (use_model && !resolve_model(r, model, t))
        goto out;
    json_t *explain = json_object_get(t->body, "explain");
    if (explain && !json_is_boolean(explain)) {
        srv_reply_error(r, 422, "invalid_argument", "explain", "explain must be true or false");
        goto out;
    }
    t->explain = explain && json_is_true(explain);
    if (use_model && t->explain) {
        srv_reply_error(r, 422, "invalid_argument", "explain",
                        "explain is served by engine \"exact\" only: a trained model gives no "
                        "attention weights per pair");
        goto out;
    }

    t->pairs = json_object_get(t->body, "pairs");
    if (!t->pairs || !json_is_array(t->pairs)) {
        srv_reply_error(r, 422, "invalid_argument", "pairs",
                        t->pairs ? "pairs must be an array of [key, value]" : "pairs is required");
        goto out;
    }
    size_t np = json_array_size(t->pairs);
    if (np > (size_t)app->cfg.max_recall_pairs) {
        srv_reply_error(r, 422, "invalid_argument", "pairs", "at most %d pairs (got %zu)",
                        app->cfg.max_recall_pairs, np);
        goto out;
    }
    json_t *queries = json_object_get(t->body, "queries"), *query = json_object_get(t->body, "query");
    if (queries && query) {
        srv_reply_error(r, 422, "invalid_argument", "query", "give queries or query, not both");
        goto out;
    }
    if (query) {
        t->queries = json_pack("[O]", query);
    } else if (queries && json_is_array(queries)) {
        t->queries = json_incref(queries);
    } else {
        srv_reply_error(r, 422, "invalid_argument", queries ? "queries" : "queries",
                        queries ? "queries must be an array" : "queries (or query) is required");
        goto out;
    }
    size_t nq = json_array_size(t->queries);
    if (nq > (size_t)app->cfg.max_recall_queries) {
        srv_reply_error(r, 422, "invalid_argument", "queries", "at most %d queries (got %zu)",
                        app->cfg.max_recall_queries, nq);
        goto out;
    }
    t->n_pairs = (int)np;
    t->n_queries = (int)nq;
    if (use_model) {
        if (!model_store(r, t, query != NULL))
            goto out;
        goto submit;
    }
    t->keys = malloc((np ? np : 1) * sizeof(uint32_t));
    t->values = malloc((np ? np : 1) * sizeof(uint32_t));
    t->qids = malloc((nq ? nq : 1) * sizeof(uint32_t));
    if (!t->keys || !t->values || !t->qids) {
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    int next_key = 0, next_value = 0;
    for (size_t i = 0; i < np; i++) {
        char field[32];
        json_t *p = pair_at(r, t->pairs, i, field, sizeof field);
        if (!p)
            goto out;
        for (int side = 0; side < 2; side++) {
            const char *why = symbol_problem(json_array_get(p, (size_t)side));
            if (why) {
                srv_reply_error(r, 422, "invalid_argument", field, "the pair's %s is %s",
                                side ? "value" : "key", why);
                goto out;
            }
        }
        if (!intern(kmap, json_array_get(p, 0), &t->keys[i], &next_key) ||
            !intern(vmap, json_array_get(p, 1), &t->values[i], &next_value)) {
            srv_reply_error(r, 500, "internal", NULL, "out of memory");
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
            snprintf(field, sizeof field, query ? "query" : "queries[%zu]", i);
            srv_reply_error(r, 422, "invalid_argument", field, "the query is %s", why);
            goto out;
        }
        /* a query that is no key gets an id of its own: it matches nothing */
        if (!intern(kmap, q, &t->qids[i], &next_key)) {
            srv_reply_error(r, 500, "internal", NULL, "out of memory");
            goto out;
        }
    }

submit:
    j = srv_job_create();
    if (!j) {
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    j->run = use_model ? run_model : run;
    j->task = t;
    j->free_task = free_task;
    t = NULL; /* the job owns it */
    if (srv_app_submit_work(app, j) != 0) {
        srv_reply_error(r, 503, "overloaded", NULL, "too many recall requests in progress (%d)",
                        app->cfg.queue_depth);
        goto out;
    }
    srv_req_wait(r, j);
out:
    srv_job_unref(j);
    free_task(t);
    json_decref(kmap);
    json_decref(vmap);
    json_decref(body);
}
