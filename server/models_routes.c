/*
 * models_routes.c — the model lifecycle's triggers: POST /models/reload,
 * DELETE /models/{name}, SIGHUP and --models-poll-seconds (models.h has
 * what a rescan and a delete do).
 *
 * A rescan loads files and may take a while (a big checkpoint), so it
 * never runs on the HTTP thread or the loop: the routes queue a work job
 * for a libuv worker, as /recall does, and answer when it is done; SIGHUP
 * and the poll timer queue a plain uv_work_t from the loop, one at a time
 * (a tick that finds the last rescan still running is skipped, since the
 * next one sees everything anyway).  Rescans and deletes are serialised by
 * the registry (reload_mu).  After anything is unloaded the engine is
 * woken to drop the model's context once its last sequence has ended.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "models_routes.h"
#include "tfm/quant.h"

typedef struct lifecycle_task {
    srv_app *app;
    char name[128]; /* DELETE: the model */
} lifecycle_task;

static void count_changes(srv_app *app, const srv_reload_result *res)
{
    srv_counter_add(app->stats.model_rescans, 1);
    srv_counter_add(app->stats.model_changes[SRV_MODEL_ADDED], (uint64_t)res->n_added);
    srv_counter_add(app->stats.model_changes[SRV_MODEL_REMOVED], (uint64_t)res->n_removed);
    srv_counter_add(app->stats.model_changes[SRV_MODEL_REPLACED], (uint64_t)res->n_replaced);
    srv_counter_add(app->stats.model_changes[SRV_MODEL_FAILED], (uint64_t)res->n_failed);
    if ((res->n_removed || res->n_replaced) && app->engine)
        srv_engine_models_changed(app->engine);
}

static json_t *names(char (*list)[128], int n)
{
    json_t *a = json_array();
    for (int i = 0; a && i < n; i++)
        json_array_append_new(a, json_string(list[i]));
    return a;
}

/* Under j->mu: the reply body into j->out (a 500 when out of memory). */
static void put_reply(srv_job *j, int status, json_t *v)
{
    char *text = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    j->out.len = 0;
    if (text) {
        j->http_status = status;
        srv_buf_append(&j->out, text, strlen(text));
    } else {
        j->http_status = 500;
        srv_buf_printf(&j->out, "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}");
    }
    free(text);
}

static json_t *error_body(const char *code, const char *field, const char *msg)
{
    json_t *e = json_pack("{s:s,s:s}", "code", code, "message", msg);
    if (e && field)
        json_object_set_new(e, "field", json_string(field));
    return e ? json_pack("{s:o}", "error", e) : NULL;
}

/* Libuv worker: the rescan, for POST /models/reload. */
static void run_reload(srv_job *j)
{
    lifecycle_task *t = j->task;
    srv_reload_result *res = malloc(sizeof *res);
    json_t *v = NULL;
    if (res) {
        srv_models_reload(&t->app->models, res);
        count_changes(t->app, res);
        json_t *failed = json_array();
        for (int i = 0; failed && i < res->n_failed; i++)
            json_array_append_new(failed, json_pack("{s:s,s:s}", "file", res->failed[i].file,
                                                    "error", res->failed[i].error));
        v = json_pack("{s:o,s:o,s:o,s:o,s:i}", "added", names(res->added, res->n_added),
                      "removed", names(res->removed, res->n_removed), "replaced",
                      names(res->replaced, res->n_replaced), "failed", failed, "models",
                      srv_models_count(&t->app->models));
        free(res);
    }
    pthread_mutex_lock(&j->mu);
    put_reply(j, 200, v);
    j->done = 1;
    pthread_mutex_unlock(&j->mu);
}

/* Libuv worker: DELETE /models/{name}. */
static void run_delete(srv_job *j)
{
    lifecycle_task *t = j->task;
    char err[1400] = "";
    int rc = srv_models_delete(&t->app->models, t->name, err, sizeof err);
    json_t *v;
    int status = 200;
    if (rc == 0) {
        srv_counter_add(t->app->stats.model_changes[SRV_MODEL_REMOVED], 1);
        if (t->app->engine)
            srv_engine_models_changed(t->app->engine);
        v = json_pack("{s:s,s:i}", "deleted", t->name, "models",
                      srv_models_count(&t->app->models));
    } else if (rc == -1) {
        char msg[256];
        snprintf(msg, sizeof msg, "no model named \"%.128s\"", t->name);
        status = 404, v = error_body("model_not_found", "name", msg);
    } else if (rc == -2) {
        status = 409, v = error_body("conflict", "name", err);
    } else {
        status = 500, v = error_body("internal", NULL, err);
    }
    pthread_mutex_lock(&j->mu);
    put_reply(j, status, v);
    j->done = 1;
    pthread_mutex_unlock(&j->mu);
}

/* Queues t's work and waits for it; the reply is the job's. */
static void submit(srv_req *r, void (*run)(srv_job *), lifecycle_task *t)
{
    srv_job *j = srv_job_create();
    if (!j) {
        free(t);
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    j->run = run;
    j->task = t;
    j->free_task = free;
    j->client = r->client;
    if (srv_app_submit_work(r->app, j) != 0)
        srv_reply_error(r, 503, "overloaded", NULL, "too many requests for the workers (%d)",
                        r->app->cfg.queue_depth);
    else
        srv_req_wait(r, j);
    srv_job_unref(j);
}

static lifecycle_task *task_for(srv_req *r)
{
    if (!atomic_load(&r->app->ready)) {
        srv_reply_error(r, 503, "not_ready", NULL, "models are loading");
        return NULL;
    }
    lifecycle_task *t = calloc(1, sizeof *t);
    if (!t)
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
    else
        t->app = r->app;
    return t;
}

void srv_route_models_reload(srv_req *r)
{
    lifecycle_task *t = task_for(r);
    if (t)
        submit(r, run_reload, t);
}

void srv_route_model(srv_req *r)
{
    const char *name = r->path + strlen("/models/");
    if (strlen(name) >= sizeof ((lifecycle_task *)0)->name) {
        srv_reply_error(r, 404, "model_not_found", "name", "no model named \"%.100s...\"", name);
        return;
    }
    lifecycle_task *t = task_for(r);
    if (!t)
        return;
    snprintf(t->name, sizeof t->name, "%s", name);
    submit(r, run_delete, t);
}

/* ---- SIGHUP and the poll: from the loop ------------------------------------ */

static void rescan_work(uv_work_t *w)
{
    srv_app *app = w->data;
    srv_reload_result *res = malloc(sizeof *res);
    if (!res)
        return;
    srv_models_reload(&app->models, res);
    count_changes(app, res);
    free(res);
}

static void rescan_done(uv_work_t *w, int status)
{
    srv_app *app = w->data;
    (void)status;
    app->rescan_busy = 0;
    /* started with no model (an empty shared dir): ready once one comes */
    if (!atomic_load(&app->ready) && app->engine && !atomic_load(&app->draining) &&
        srv_models_count(&app->models) > 0) {
        atomic_store(&app->ready, 1);
        fprintf(stderr, "attnd: ready: %d model(s)\n", srv_models_count(&app->models));
    }
}

void srv_models_rescan_async(srv_app *app)
{
    if (app->rescan_busy || !app->engine || atomic_load(&app->draining))
        return; /* still loading, or the last rescan still runs */
    app->rescan_work.data = app;
    if (uv_queue_work(app->loop, &app->rescan_work, rescan_work, rescan_done) == 0)
        app->rescan_busy = 1;
}

static void on_poll(uv_timer_t *h) { srv_models_rescan_async(h->data); }

void srv_models_collect(srv_app *app)
{
    const srv_model *ms[SRV_MODELS_MAX];
    srv_series *now[SRV_MODELS_MAX];
    int n = srv_models_get_all(&app->models, ms, SRV_MODELS_MAX), k = 0;
    for (int i = 0; i < n; i++) {
        const char *labels[2] = {ms[i]->name,
                                 tfm_wformat_name((tfm_wformat)tfm_model_wformat(ms[i]->model))};
        srv_series *s = srv_metric_series(app->stats.model_weight_bytes, labels);
        if (!s)
            continue;
        srv_series_set_hidden(s, 0);
        srv_gauge_set(s, (double)tfm_model_weight_bytes(ms[i]->model));
        now[k++] = s;
    }
    srv_models_put_all(ms, n);
    for (int i = 0; i < app->n_weight_series; i++) { /* models unloaded since */
        int still = 0;
        for (int j = 0; j < k && !still; j++)
            still = now[j] == app->weight_series[i];
        if (!still)
            srv_series_set_hidden(app->weight_series[i], 1);
    }
    memcpy(app->weight_series, now, (size_t)k * sizeof *now);
    app->n_weight_series = k;
}

int srv_models_poll_start(srv_app *app)
{
    if (app->cfg.models_poll_s <= 0)
        return 0;
    uint64_t ms = (uint64_t)app->cfg.models_poll_s * 1000;
    app->poll_timer.data = app;
    if (uv_timer_init(app->loop, &app->poll_timer) || uv_timer_start(&app->poll_timer, on_poll, ms, ms))
        return -1;
    return 0;
}
