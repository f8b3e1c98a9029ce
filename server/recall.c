/*
 * recall.c — POST /recall: a key-value store answered by attention.
 *
 * The HTTP thread validates the body (srv_recall_parse, recall_parse.c),
 * which also interns its symbols.  The answers come from tfm_recall_exact,
 * the lecture's one-layer attention computed with real matrices (see
 * include/tfm/recall.h).  The computation runs on a libuv worker, never on
 * the HTTP thread: the job goes through the loop's inbox, the loop queues
 * it with uv_queue_work, and the worker writes the reply and reports back
 * like the engine does.  Each answer's value is the JSON value given with
 * the attended pair, so its type survives.
 *
 * Engine "model" asks a transformer trained on MQAR (a registered model of
 * kind "recall") instead, through tfm_mqar_answer on the same worker, one
 * thread.  Its symbols are the model's integers (recall_parse.c).  Each
 * answer carries the model's probability for it; ⊥ is null.  The model
 * gives no attention weights, so `explain` is refused.  Its forward is in
 * the op accounting as phase prefill, attention kind naive (one sequence
 * per query).
 *
 * Deadlines (timeout_ms, capped by --request-timeout-seconds, from the
 * request's arrival): a job that reaches the worker past its deadline is
 * dropped with 504 "timeout" without computing anything.  Engine "exact"
 * runs its queries in blocks of TFM_RECALL_QUERY_BLOCK (queries are
 * independent rows against the same keys, so the answers are the same)
 * and checks the clock between blocks: a recall that runs past its
 * deadline stops there with 504 too.  Engine "model" answers in one call
 * and, once started, finishes.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "tfm/recall.h"
#include "tfm/train.h"
#include "validate.h"

static void free_task(void *p) { srv_recall_task_free(p); }

/* Whether the job's deadline has passed (0: none). */
static int past_deadline(const srv_job *j) { return j->deadline > 0 && tfm_now() > j->deadline; }

/* Under j->mu: the 504 of a recall past its deadline. */
static void timed_out(srv_job *j, const char *when)
{
    j->http_status = 504;
    j->out.len = 0;
    srv_buf_printf(&j->out,
                   "{\"error\":{\"code\":\"timeout\",\"message\":\"the recall %s its deadline "
                   "(timeout_ms %d, capped by --request-timeout-seconds)\"}}",
                   when, ((const srv_recall_task *)j->task)->timeout_ms);
}

/* Exact attention over the queries, a block at a time with the clock
 * checked between blocks; stats summed over the blocks.  *late = 1 when it
 * stopped at the deadline. */
static tfm_status exact_blocks(srv_job *j, tfm_recall_answer *ans, tfm_recall_stats *st,
                               tfm_profile *prof, int *late)
{
    const srv_recall_task *t = j->task;
    int nq = t->n_queries, q0 = 0;
    *late = 0;
    do {
        if (q0 > 0 && past_deadline(j)) {
            *late = 1;
            return TFM_OK;
        }
        int n = nq - q0 < TFM_RECALL_QUERY_BLOCK ? nq - q0 : TFM_RECALL_QUERY_BLOCK;
        tfm_recall_request rq = {t->n_pairs, t->keys, t->values, n, t->qids + q0};
        tfm_recall_stats bs;
        memset(&bs, 0, sizeof bs);
        tfm_status s = tfm_recall_exact(&rq, n ? ans + q0 : NULL, &bs, prof);
        if (s != TFM_OK)
            return s;
        st->flops += bs.flops;
        st->seconds += bs.seconds;
        st->attention_seconds += bs.attention_seconds;
        if (bs.peak_scratch_bytes > st->peak_scratch_bytes)
            st->peak_scratch_bytes = bs.peak_scratch_bytes;
        st->key_symbols = bs.key_symbols;
        st->value_symbols = bs.value_symbols;
        q0 += n;
    } while (q0 < nq);
    return TFM_OK;
}

/* Libuv worker: the attention, then the reply. */
static void run(srv_job *j)
{
    srv_recall_task *t = j->task;
    if (past_deadline(j)) { /* it waited for the worker past its deadline */
        pthread_mutex_lock(&j->mu);
        timed_out(j, "waited for a worker past");
        j->done = 1;
        pthread_mutex_unlock(&j->mu);
        return;
    }
    tfm_recall_answer *ans = calloc((size_t)(t->n_queries ? t->n_queries : 1), sizeof *ans);
    tfm_recall_stats st;
    memset(&st, 0, sizeof st);
    tfm_profile prof;
    memset(&prof, 0, sizeof prof);
    prof.enabled = 1;
    int late = 0;
    double t0 = tfm_now();
    tfm_status s = ans ? exact_blocks(j, ans, &st, &prof, &late) : TFM_E_NOMEM;
    st.seconds = tfm_now() - t0;
    srv_buf *b = &j->out;
    pthread_mutex_lock(&j->mu);
    if (late) {
        timed_out(j, "ran past");
        srv_stats_add_profile(t->stats, &prof); /* the work done still counts */
    } else if (s != TFM_OK) {
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
    srv_recall_task *t = j->task;
    const srv_model *m = t->model;
    int nq = t->n_queries;
    int *ans = malloc((size_t)(nq ? nq : 1) * sizeof *ans);
    float *probs = malloc((size_t)(nq ? nq : 1) * sizeof *probs);
    tfm_profile prof;
    memset(&prof, 0, sizeof prof);
    prof.enabled = 1;
    if (past_deadline(j)) { /* it waited for the worker past its deadline */
        pthread_mutex_lock(&j->mu);
        timed_out(j, "waited for a worker past");
        j->done = 1;
        pthread_mutex_unlock(&j->mu);
        free(ans);
        free(probs);
        return;
    }
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

void srv_route_recall(srv_req *r)
{
    srv_app *app = r->app;
    srv_json_limits lim;
    srv_error e;
    srv_recall_task *t = NULL;
    srv_req_json_limits(r, &lim);
    if (srv_recall_parse(r->body.p, r->body.len, &lim, &app->models, &app->cfg,
                         atomic_load(&app->ready), &t, &e)) {
        srv_reply_err(r, &e);
        return;
    }
    t->stats = &app->stats;
    srv_job *j = srv_job_create();
    if (!j) {
        srv_recall_task_free(t);
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    j->run = t->model ? run_model : run;
    j->task = t;
    j->free_task = free_task;
    j->client = r->client;
    j->timeout_ms = t->timeout_ms;
    j->deadline = r->t0 + t->timeout_ms * 1e-3;
    if (srv_app_submit_work(app, j) != 0)
        srv_reply_error(r, 503, "overloaded", NULL, "too many recall requests in progress (%d)",
                        app->cfg.queue_depth);
    else
        srv_req_wait(r, j);
    srv_job_unref(j);
}
