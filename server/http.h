/*
 * http.h — libmicrohttpd: requests, routing, replies, and the hand-off of
 * generation work to the engine with suspend/resume.
 *
 * A request's life: the first callback picks the route and refuses what it
 * can before any body arrives (404, 405, 415, 413 from Content-Length); the
 * body accumulates up to --max-body-bytes; then the route's handler runs.
 * A handler either replies at once or submits a job to the engine and
 * parks (suspends) the connection.  The engine's news reaches the libuv
 * loop through its inbox, and the loop resumes the parked connection
 * (srv_http_job_ready); libmicrohttpd then calls back, and the reply (or
 * the next stream bytes) goes out.  No connection thread ever waits on
 * compute.
 */
#ifndef SRV_HTTP_H
#define SRV_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "error.h"
#include "json_guard.h"
#include "text.h"

/* Error bodies: attnd's {"error": {"code", "message", "field"}};
 * OpenAI's {"error": {"message", "type", "param", "code"}}; TGI's
 * {"error": message, "error_type": type}. */
enum { SRV_ERR_ATTND = 0, SRV_ERR_OPENAI, SRV_ERR_TGI };

struct srv_req {
    srv_app *app;
    struct MHD_Connection *conn;
    int route;             /* index into the route table; -1 unknown */
    const char *label;     /* route label for metrics and logs */
    char method[8];
    char path[128];
    srv_buf body;
    size_t too_large;      /* bytes beyond the limit, discarded */
    double t0;
    int status;            /* status of the reply queued */
    int responded;
    srv_job *job;          /* referenced while attached */
    uint64_t client;       /* a hash of the API key used, else of the peer's
                            * address: the unit of --max-inflight-per-client */
    size_t uri_len;        /* the request target as sent, query included */
    int routed;            /* the first callback has run */
    int close_after;       /* reply with Connection: close */
    int err_style;         /* the shape of error bodies: SRV_ERR_* (set from
                            * the path: /v1/ is OpenAI's; a handler may
                            * change it) */
};

/* Starts the daemon (its own epoll thread) on cfg->host:cfg->port.
 * Returns 0 or -1 (message printed). */
int srv_http_start(srv_app *app);
/* The route table's paths (metric labels), at most max; returns how many. */
int srv_http_route_paths(const char **out, int max);
/* Stop accepting new connections (shutdown's first step). */
void srv_http_quiesce(srv_app *app);
void srv_http_stop(srv_app *app);
/* Loop thread: a job the engine reported on; resume its connection. */
void srv_http_job_ready(srv_app *app, srv_job *job);
/* Loop thread: cancel the jobs whose client has hung up (a timer). */
void srv_http_watch(srv_app *app);
/* Loop thread: cancel every parked job (the end of the grace period). */
void srv_http_cancel_all(srv_app *app);

/* Replies, from a handler (libmicrohttpd's thread).  The body is copied;
 * ctype may be NULL (a 204 has no body, hence no type). */
void srv_reply(srv_req *r, int status, const char *ctype, const char *body, size_t len);
void srv_reply_json(srv_req *r, int status, const char *json);
/* The same with a Location header (202 Accepted). */
void srv_reply_json_location(srv_req *r, int status, const char *json, const char *location);
void srv_reply_error(srv_req *r, int status, const char *code, const char *field,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The reply for an error described as data (error.h). */
void srv_reply_err(srv_req *r, const srv_error *e);
/* The limits srv_req_json_body applies to a body before parsing it: the
 * route's (a training job's inline text may fill the whole body; a
 * /generate or /recall string may not). */
void srv_req_json_limits(const srv_req *r, srv_json_limits *lim);
/* The request body as JSON (duplicate keys refused, any top-level value),
 * or NULL after replying 400 invalid_json with the parser's position.  The
 * caller owns the result (json_decref).  /generate parses its own: it reads
 * integer literals jansson would round. */
struct json_t *srv_req_json_body(srv_req *r);
/* Attach a submitted job to the request and park until it reports. */
void srv_req_wait(srv_req *r, srv_job *job);
/* A filled job (or group) of the request: its client, its deadline from
 * timeout_ms and r->t0, and its notice set; queued (a group's children,
 * all or none) and waited for, or 503 when the queue has no room.  Takes
 * the caller's reference (generate.c). */
void srv_req_run_job(srv_req *r, srv_job *job);

/* Route handlers (routes.c, generate.c). */
void srv_route_generate(srv_req *r);
void srv_route_recall(srv_req *r);
void srv_route_models(srv_req *r);
void srv_route_healthz(srv_req *r);
void srv_route_readyz(srv_req *r);
void srv_route_metrics(srv_req *r);
/* OpenAI's routes (openai.c). */
void srv_route_v1_completions(srv_req *r);
void srv_route_v1_chat_completions(srv_req *r);
void srv_route_v1_models(srv_req *r);
void srv_route_v1_model(srv_req *r);
/* TGI's routes (tgi.c): /generate with TGI's body (generate.c dispatches
 * a body with a top-level "inputs"), /generate_stream, POST / and GET /info. */
void srv_route_tgi_generate(srv_req *r);
void srv_route_generate_stream(srv_req *r);
void srv_route_tgi_compat(srv_req *r);
void srv_route_info(srv_req *r);
/* llama-server's /tokenize and /detokenize (tokenize.c). */
void srv_route_tokenize(srv_req *r);
void srv_route_detokenize(srv_req *r);

#endif
