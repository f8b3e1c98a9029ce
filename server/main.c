/*
 * main.c — attnd: flags, the libuv loop, the engine's inbox, model loading,
 * signals and graceful shutdown.
 *
 * Start-up listens first and loads models on a libuv worker, so /healthz
 * answers at once and /readyz says 503 until the models are in.  The
 * engine posts jobs with news into a mutex-guarded inbox and wakes the loop
 * with uv_async_send (which coalesces); the loop drains the inbox and lets
 * http.c queue replies.  On SIGINT/SIGTERM the listening socket closes, new
 * work is refused, running requests get --grace-seconds to finish, then
 * whatever is left is cancelled and the process exits 0.  A second signal
 * cuts the grace short.
 */
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "auth.h"
#include "conn.h"
#include "http.h"
#include "models_routes.h"
#include "train.h"

/* ---- the inbox ------------------------------------------------------------- */

void srv_app_post(srv_app *app, srv_job *j)
{
    pthread_mutex_lock(&app->inbox_mu);
    if (app->inbox_closed) { /* shutting down: nobody reads the inbox */
        pthread_mutex_unlock(&app->inbox_mu);
        return;
    }
    if (app->inbox_len == app->inbox_cap) {
        int cap = app->inbox_cap ? app->inbox_cap * 2 : 64;
        srv_job **p = realloc(app->inbox, (size_t)cap * sizeof *p);
        if (!p) { /* the job still finishes; its client waits for the watch timer */
            pthread_mutex_unlock(&app->inbox_mu);
            return;
        }
        app->inbox = p;
        app->inbox_cap = cap;
    }
    srv_job_ref(j);
    app->inbox[app->inbox_len++] = j;
    pthread_mutex_unlock(&app->inbox_mu);
    uv_async_send(&app->inbox_async);
}

/* ---- work for the libuv pool (POST /recall) ------------------------------- */

typedef struct work_req {
    uv_work_t w;
    srv_app *app;
    srv_job *job;
} work_req;

static void work_run(uv_work_t *w)
{
    work_req *wr = w->data;
    /* a client that left while its job waited for the worker costs nothing */
    if (atomic_load(&wr->job->cancelled) == SRV_CANCEL_CLIENT) {
        pthread_mutex_lock(&wr->job->mu);
        wr->job->done = 1;
        pthread_mutex_unlock(&wr->job->mu);
        return;
    }
    wr->job->run(wr->job);
}

static void work_done(uv_work_t *w, int status)
{
    work_req *wr = w->data;
    (void)status;
    atomic_fetch_sub(&wr->app->work_pending, 1);
    srv_http_job_ready(wr->app, wr->job);
    srv_job_unref(wr->job);
    free(wr);
}

int srv_app_submit_work(srv_app *app, srv_job *j)
{
    if (atomic_fetch_add(&app->work_pending, 1) >= app->cfg.queue_depth) {
        atomic_fetch_sub(&app->work_pending, 1);
        return -1;
    }
    srv_app_post(app, j); /* the loop queues it: only it may call uv_queue_work */
    return 0;
}

/* Loop thread: a job in the inbox either has news for its connection or,
 * the first time for work jobs, needs a worker. */
static void dispatch(srv_app *app, srv_job *j)
{
    if (!j->run || j->dispatched) {
        srv_http_job_ready(app, j);
        return;
    }
    j->dispatched = 1;
    work_req *wr = malloc(sizeof *wr);
    if (wr) {
        wr->w.data = wr;
        wr->app = app;
        wr->job = j;
        srv_job_ref(j);
        if (uv_queue_work(app->loop, &wr->w, work_run, work_done) == 0)
            return;
        srv_job_unref(j);
        free(wr);
    }
    /* could not queue: fail the request rather than leave it waiting */
    pthread_mutex_lock(&j->mu);
    srv_buf_printf(&j->out, "{\"error\":{\"code\":\"internal\",\"message\":\"cannot queue work\"}}");
    j->http_status = 500;
    j->done = 1;
    pthread_mutex_unlock(&j->mu);
    atomic_fetch_sub(&app->work_pending, 1);
    srv_http_job_ready(app, j);
}

static void on_inbox(uv_async_t *h)
{
    srv_app *app = h->data;
    for (;;) {
        pthread_mutex_lock(&app->inbox_mu);
        int n = app->inbox_len;
        srv_job *batch[64];
        if (n > 64)
            n = 64;
        memcpy(batch, app->inbox, (size_t)n * sizeof *batch);
        memmove(app->inbox, app->inbox + n, (size_t)(app->inbox_len - n) * sizeof *batch);
        app->inbox_len -= n;
        pthread_mutex_unlock(&app->inbox_mu);
        if (n == 0)
            break;
        for (int i = 0; i < n; i++) {
            dispatch(app, batch[i]);
            srv_job_unref(batch[i]);
        }
    }
}

/* ---- metrics collector: gauges read at each scrape ------------------------- */

static void collect(srv_registry *reg, void *ctx)
{
    srv_app *app = ctx;
    (void)reg;
    srv_gauge_set(app->stats.ready, atomic_load(&app->ready));
    if (!atomic_load(&app->ready)) {
        tfm_profile none;
        memset(&none, 0, sizeof none);
        srv_stats_profile(&app->stats, &none); /* /recall's, before any model */
        return;
    }
    srv_gauge_set(app->stats.models, srv_models_count(&app->models));
    srv_models_collect(app);
    srv_gauge_set(app->stats.queue_depth, srv_engine_queued(app->engine));
    srv_gauge_set(app->stats.running, srv_engine_running(app->engine));
    tfm_profile p;
    srv_engine_profile(app->engine, &p);
    srv_stats_profile(&app->stats, &p);
}

/* ---- start-up: models on a worker ------------------------------------------ */

static int load_result;

static void load_models(uv_work_t *w)
{
    srv_app *app = w->data;
    load_result = srv_models_load(&app->models);
}

static void close_all(srv_app *app);

static void models_loaded(uv_work_t *w, int status)
{
    srv_app *app = w->data;
    (void)status;
    if (load_result < 0) {
        fprintf(stderr, "attnd: a model given with --model could not be loaded\n");
        app->exit_code = 1;
        close_all(app);
        return;
    }
    if (srv_models_count(&app->models) == 0)
        fprintf(stderr, "attnd: no models found (--model or --models-dir); not ready\n");
    srv_engine_hooks hooks = {&app->stats,           srv_stats_queue_wait, srv_stats_first_token,
                              srv_stats_inter_token, srv_stats_batch,      srv_stats_tokens};
    tfm_attn_kernel kern = !strcmp(app->cfg.attention, "naive")   ? TFM_ATTN_NAIVE
                           : !strcmp(app->cfg.attention, "tiled") ? TFM_ATTN_TILED
                                                                  : TFM_ATTN_AUTO;
    app->engine = srv_engine_create(&app->models, app->cfg.max_batch, app->cfg.queue_depth,
                                    app->cfg.threads, kern, &hooks);
    if (!app->engine) {
        app->exit_code = 1;
        close_all(app);
        return;
    }
    if (srv_models_poll_start(app) != 0)
        fprintf(stderr, "attnd: cannot start the --models-poll-seconds timer\n");
    /* training jobs check their names against the models loaded */
    if (!atomic_load(&app->draining) && srv_trainer_start(app->trainer) != 0)
        fprintf(stderr, "attnd: training workers could not start; POST /train stays 503\n");
    if (srv_models_count(&app->models) > 0 && !atomic_load(&app->draining)) {
        atomic_store(&app->ready, 1);
        fprintf(stderr, "attnd: ready: %d model(s), %d threads, batch %d, queue %d\n",
                srv_models_count(&app->models), app->cfg.threads, app->cfg.max_batch, app->cfg.queue_depth);
    }
}

/* ---- shutdown -------------------------------------------------------------- */

static void close_cb(uv_handle_t *h) { (void)h; }

static void close_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, close_cb);
}

static void close_all(srv_app *app)
{
    pthread_mutex_lock(&app->inbox_mu);
    app->inbox_closed = 1;
    pthread_mutex_unlock(&app->inbox_mu);
    srv_http_stop(app);
    if (atomic_load(&app->work_pending) > 0) {
        /* a /recall still computes on the libuv worker (it outlived the
         * grace period), on the models and the stats, and the loop would
         * wait for it: its client has had its 503, so leave now */
        srv_trainer_destroy(app->trainer, app->cfg.grace_seconds); /* its workers end first */
        fprintf(stderr, "attnd: stopped with a recall still running\n");
        fflush(stdout);
        _exit(app->exit_code);
    }
    uv_walk(app->loop, close_handle, NULL);
}

static void on_deadline(uv_timer_t *t) { close_all(t->data); }

static void on_grace(uv_timer_t *t)
{
    srv_app *app = t->data;
    fprintf(stderr, "attnd: grace period over, cancelling what is left\n");
    srv_http_cancel_all(app);
    /* the cancelled jobs report back through the inbox; the watch timer
     * closes everything once no request is left, or a second later */
    uv_timer_start(&app->grace_timer, on_deadline, 1000, 0);
}

static void on_signal(uv_signal_t *h, int signum)
{
    srv_app *app = h->data;
    if (atomic_load(&app->draining)) {
        /* Every file attnd writes is replaced whole (temp file, fsync,
         * rename), so stopping mid-write leaves the old one: nothing on
         * disk is torn, and a running job resumes from its checkpoint. */
        fprintf(stderr, "attnd: second signal, exiting now\n");
        fflush(stdout);
        _exit(app->exit_code);
    }
    fprintf(stderr, "attnd: %s, draining (grace %d s)\n", signum == SIGINT ? "SIGINT" : "SIGTERM",
            app->cfg.grace_seconds);
    atomic_store(&app->draining, 1);
    srv_trainer_shutdown(app->trainer); /* running jobs stop at their next step */
    atomic_store(&app->ready, 0);
    srv_http_quiesce(app);
    uv_timer_start(&app->grace_timer, on_grace, (uint64_t)app->cfg.grace_seconds * 1000, 0);
}

static void on_sighup(uv_signal_t *h, int signum)
{
    srv_app *app = h->data;
    (void)signum;
    fprintf(stderr, "attnd: SIGHUP: rescanning the models dirs%s\n",
            app->cfg.api_key_file[0] ? ", re-reading --api-key-file" : "");
    srv_models_rescan_async(app);
    if (app->cfg.api_key_file[0])
        srv_auth_reload(app->auth);
}

static void on_watch(uv_timer_t *t)
{
    srv_app *app = t->data;
    static unsigned ticks;
    srv_http_watch(app);
    if (ticks++ % 2 == 0) /* every 200 ms: deadlines are seconds */
        srv_conns_sweep(app->conns);
    if (atomic_load(&app->draining) && atomic_load(&app->active) == 0)
        close_all(app);
}

static int is_loopback(const char *host)
{
    struct in_addr a;
    return inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

/* Every connection is a descriptor: take the hard limit of open files, and
 * lower --max-connections if even that cannot hold them with room for the
 * models, the data dir and libmicrohttpd's headroom. */
static void raise_fd_limit(srv_config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    long spare = 256 + SRV_CONN_HEADROOM;
    if (rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur < cfg->max_connections + spare) {
        int n = (long)rl.rlim_cur > spare + 16 ? (int)((long)rl.rlim_cur - spare) : 16;
        fprintf(stderr, "attnd: open files are limited to %ld: --max-connections %d lowered to %d\n",
                (long)rl.rlim_cur, cfg->max_connections, n);
        cfg->max_connections = n;
        if (cfg->max_conn_per_ip > n)
            cfg->max_conn_per_ip = n;
    }
}

int main(int argc, char **argv)
{
    srv_app app;
    memset(&app, 0, sizeof app);
    int rc = srv_config_parse(&app.cfg, argc, argv);
    if (rc)
        return rc == 1 ? 0 : 2;
    signal(SIGPIPE, SIG_IGN);
    if (!(app.auth = srv_auth_create(&app.cfg)))
        return 2;
    if (!srv_auth_enabled(app.auth) && !is_loopback(app.cfg.host))
        fprintf(stderr, "attnd: WARNING: listening on %s without an API key: anyone who can "
                        "reach the port can generate, train and delete (--api-key or "
                        "--api-key-file)\n",
                app.cfg.host);
    raise_fd_limit(&app.cfg);
    /* one libuv worker: model loading, then /recall's attention, one at a
     * time beside the engine thread rather than four threads on two cores */
    setenv("UV_THREADPOOL_SIZE", "1", 0);
    pthread_mutex_init(&app.inbox_mu, NULL);
    pthread_mutex_init(&app.wait_mu, NULL);
    srv_models_init(&app.models, &app.cfg);
    if (srv_stats_init(&app.stats) != 0 || !(app.conns = srv_conns_create(&app.cfg, &app.stats))) {
        fprintf(stderr, "attnd: out of memory\n");
        return 1;
    }
    srv_metrics_on_render(app.stats.reg, collect, &app);
    const char *routes[64];
    srv_stats_routes(&app.stats, routes, srv_http_route_paths(routes, 64));
    srv_gauge_set(app.stats.queue_capacity, app.cfg.queue_depth);
    /* job records are read before the loop runs: GET /train lists them at once */
    if (!(app.trainer = srv_trainer_create(&app)))
        return 1;
    app.loop = uv_default_loop();
    uv_async_init(app.loop, &app.inbox_async, on_inbox);
    app.inbox_async.data = &app;
    uv_signal_init(app.loop, &app.sigint);
    uv_signal_init(app.loop, &app.sigterm);
    app.sigint.data = app.sigterm.data = &app;
    uv_signal_start(&app.sigint, on_signal, SIGINT);
    uv_signal_start(&app.sigterm, on_signal, SIGTERM);
    uv_signal_init(app.loop, &app.sighup);
    app.sighup.data = &app;
    uv_signal_start(&app.sighup, on_sighup, SIGHUP);
    uv_timer_init(app.loop, &app.watch_timer);
    uv_timer_init(app.loop, &app.grace_timer);
    app.watch_timer.data = app.grace_timer.data = &app;
    uv_timer_start(&app.watch_timer, on_watch, 100, 100);

    if (srv_http_start(&app) != 0) {
        app.exit_code = 1;
        close_all(&app);
    } else {
        printf("attnd: listening on http://%s:%d\n", app.cfg.host, app.port);
        fflush(stdout);
        app.load_work.data = &app;
        uv_queue_work(app.loop, &app.load_work, load_models, models_loaded);
    }
    uv_run(app.loop, UV_RUN_DEFAULT);

    srv_engine_destroy(app.engine);
    for (int i = 0; i < app.inbox_len; i++)
        srv_job_unref(app.inbox[i]);
    srv_http_stop(&app);
    if (srv_trainer_destroy(app.trainer, app.cfg.grace_seconds) != 0) {
        /* a training step still runs on the models and the stats: leave
         * them to the exit (its job resumes from its last checkpoint) */
        fprintf(stderr, "attnd: stopped\n");
        fflush(stdout);
        _exit(app.exit_code);
    }
    uv_loop_close(app.loop);
    srv_models_deinit(&app.models);
    srv_stats_deinit(&app.stats);
    srv_conns_destroy(app.conns);
    srv_auth_destroy(app.auth);
    free(app.inbox);
    free(app.waiting);
    pthread_mutex_destroy(&app.inbox_mu);
    pthread_mutex_destroy(&app.wait_mu);
    srv_config_deinit(&app.cfg);
    if (app.exit_code == 0)
        fprintf(stderr, "attnd: stopped\n");
    return app.exit_code;
}
