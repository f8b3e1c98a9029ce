/*
 * generate.c — POST /generate: validate the body (srv_generate_parse,
 * generate_parse.c), hand a job to the engine, park until it reports.
 *
 * The deadline of timeout_ms runs from the request's arrival (r->t0), so
 * that time spent receiving the body counts; the engine enforces it
 * between steps (engine.h).
 */
#include <stdio.h>

#include "http.h"
#include "validate.h"

static void on_job(srv_job *j, void *ctx);

void srv_route_generate(srv_req *r)
{
    srv_app *app = r->app;
    if (!atomic_load(&app->ready)) {
        srv_reply_error(r, 503, "not_ready", NULL, "models are loading");
        return;
    }
    /* TGI's body ({"inputs", "parameters"}) is told apart by its inputs */
    const char *v;
    size_t n;
    if (srv_raw_member(r->body.p ? r->body.p : "", r->body.len, "inputs", &v, &n)) {
        srv_route_tgi_generate(r);
        return;
    }
    srv_job *j = srv_job_create();
    if (!j) {
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    srv_json_limits lim;
    srv_error e;
    srv_req_json_limits(r, &lim);
    /* a prompt may fill the body: one too long for the model's context is
     * the engine's 422 (field prompt), after tokenising, not a 413 */
    lim.max_string = app->cfg.max_body_bytes;
    if (srv_generate_parse(r->body.p, r->body.len, &lim, &app->models, &app->cfg, j, &e)) {
        srv_job_unref(j);
        srv_reply_err(r, &e);
        return;
    }
    srv_req_run_job(r, j);
}

/* Engine thread: hand the job to the loop (main.c's inbox). */
static void on_job(srv_job *j, void *ctx) { srv_app_post(ctx, j); }

void srv_req_run_job(srv_req *r, srv_job *j)
{
    srv_app *app = r->app;
    j->client = r->client;
    j->deadline = r->t0 + j->timeout_ms * 1e-3;
    j->notify = on_job;
    j->notify_ctx = app;
    for (int i = 0; i < j->n_children; i++) { /* a group's one deadline */
        j->children[i]->client = j->client;
        j->children[i]->timeout_ms = j->timeout_ms;
        j->children[i]->deadline = j->deadline;
    }
    int full = j->n_children ? srv_engine_submit_group(app->engine, j)
                             : srv_engine_submit(app->engine, j);
    if (full) {
        srv_job_unref(j);
        srv_reply_error(r, 503, "overloaded", NULL,
                        "the queue is full (%d waiting); retry shortly", app->cfg.queue_depth);
        return;
    }
    /* the engine may finish before this line, but its notice goes through
     * the loop's inbox, which this thread reads only after returning */
    srv_req_wait(r, j);
    srv_job_unref(j); /* the request and the engine hold it now */
}
