/*
 * app.h — the service's shared state (one per process), owned by main.c.
 *
 * Threads: the libuv loop thread owns dispatch — signals, timers, the
 * engine's inbox, resuming parked connections, shutdown; libmicrohttpd's
 * epoll thread does the socket I/O, routing and validation; the engine
 * thread runs inference; a libuv worker loads models at start-up.  Fields
 * are the loop thread's unless marked.
 *
 * (Driving libmicrohttpd 0.9.75 from the loop through its epoll fd was
 * tried first: a reply queued before the request body is read, such as an
 * early 413, leaves its external-epoll mode spinning with no progress, so
 * it runs its own thread and hands over only through resume.)
 */
#ifndef SRV_APP_H
#define SRV_APP_H

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

#include "config.h"
#include "engine.h"
#include "models.h"
#include "stats.h"

struct MHD_Daemon;
typedef struct srv_req srv_req;
struct srv_auth;
struct srv_conns;

typedef struct srv_app {
    srv_config cfg;
    uv_loop_t *loop;
    struct MHD_Daemon *mhd;
    int port;                 /* the bound port */
    int quiesced_fd;          /* listening socket after quiesce; closed at stop, else -1 */
    uv_timer_t watch_timer;   /* client disconnects, draining */
    uv_timer_t grace_timer;   /* shutdown deadline */
    uv_async_t inbox_async;   /* engine -> loop: jobs with news */
    uv_signal_t sigint, sigterm, sighup;
    uv_work_t load_work;
    uv_timer_t poll_timer;    /* --models-poll-seconds (models_routes.c) */
    uv_work_t rescan_work;    /* SIGHUP's and the poll's rescan */
    int rescan_busy;          /* rescan_work is queued or running */
    srv_series *weight_series[SRV_MODELS_MAX]; /* the scrape's: attnd_model_weight_bytes shown */
    int n_weight_series;

    pthread_mutex_t inbox_mu; /* guards inbox (any thread) */
    srv_job **inbox;
    int inbox_len, inbox_cap, inbox_closed;

    srv_models models;        /* thread-safe; changes as jobs finish and rescans run (models.h) */
    atomic_int ready;         /* models loaded and the engine running */
    srv_engine *engine;
    srv_stats stats;          /* thread-safe */
    struct srv_trainer *trainer; /* training jobs (train.h); thread-safe */
    struct srv_auth *auth;    /* API keys (auth.h); thread-safe */
    struct srv_conns *conns;  /* open connections, limits, deadlines (conn.h) */

    pthread_mutex_t wait_mu;  /* guards waiting (loop and HTTP threads) */
    srv_job **waiting;        /* jobs with a connection attached */
    int n_waiting, cap_waiting;
    atomic_int active;        /* requests in progress (HTTP thread counts) */
    atomic_int work_pending;  /* /recall jobs queued or running on the worker */
    atomic_int draining;      /* SIGINT/SIGTERM seen: refuse new work */
    atomic_int stopping;      /* the daemon is stopping: parked requests end now */
    int exit_code;
} srv_app;

/* Any thread: hand a job with news to the loop (the engine's notify). */
void srv_app_post(srv_app *app, srv_job *j);
/* HTTP thread: queue a job with a run function for a libuv worker; -1 when
 * --queue-depth such jobs are already waiting (answer 503). */
int srv_app_submit_work(srv_app *app, srv_job *j);

#endif
