/*
 * http.c — libmicrohttpd with suspend/resume (see http.h).
 *
 * libmicrohttpd runs its own epoll thread; every request callback runs
 * there and owns its srv_req.  The one thing that crosses threads is a
 * parked request: the HTTP thread parks (suspends) the connection for a
 * job, and the loop thread resumes it when the engine reports.  Both do so
 * under the job's mutex, with job->http and job->parked saying whether a
 * connection is attached and suspended right now; libmicrohttpd cannot
 * complete a suspended connection, so a parked job's connection is always
 * alive when the loop resumes it.  Lock order: job->mu, then
 * libmicrohttpd's own.
 *
 * A suspended connection is not polled, so a client that hangs up while its
 * generation runs would go unnoticed; srv_http_watch (a loop timer) peeks
 * at each parked request's socket every 100 ms (recv MSG_PEEK: 0 means the
 * peer closed), cancels the job, freeing its slot, and resumes the
 * connection so that it closes.  A stream's write to a closed socket fails
 * and ends the request through the completion callback, which cancels the
 * job too.
 */
#include "http.h"
#include "auth.h"
#include "conn.h"
#include "models_routes.h"
#include "train.h"
#include "ui.h"

#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* A path is literal, or ends in one "{id}" segment (any text without a
 * slash); method is one method or several as in Allow ("GET, POST"). */
typedef struct route {
    const char *path, *method;
    void (*handler)(srv_req *r);
    int has_body; /* its POST takes a JSON body */
    int engine;   /* it holds the engine or the worker: counted against
                   * --max-inflight-per-client */
} route;

static const route routes[] = {
    {"/generate", "POST", srv_route_generate, 1, 1},
    {"/recall", "POST", srv_route_recall, 1, 1},
    {"/models", "GET", srv_route_models, 0, 0},
    {"/models/reload", "POST", srv_route_models_reload, 0, 0},
    {"/models/{id}", "DELETE", srv_route_model, 0, 0},
    {"/healthz", "GET", srv_route_healthz, 0, 0},
    {"/readyz", "GET", srv_route_readyz, 0, 0},
    {"/metrics", "GET", srv_route_metrics, 0, 0},
    {"/train", "GET, POST", srv_route_train, 1, 0},
    {"/train/{id}", "GET, DELETE", srv_route_train_job, 0, 0},
    {"/v1/completions", "POST", srv_route_v1_completions, 1, 1},
    {"/v1/chat/completions", "POST", srv_route_v1_chat_completions, 1, 1},
    {"/v1/models", "GET", srv_route_v1_models, 0, 0},
    {"/v1/models/{id}", "GET", srv_route_v1_model, 0, 0},
    {"/generate_stream", "POST", srv_route_generate_stream, 1, 1},
    {"/", "GET, HEAD, POST", srv_route_root, 1, 1}, /* the console (ui.c); POST: TGI's */
    {"/ui/{id}", "GET, HEAD", srv_route_ui_asset, 0, 0},
    {"/info", "GET", srv_route_info, 0, 0},
    {"/tokenize", "POST", srv_route_tokenize, 1, 0},
    {"/detokenize", "POST", srv_route_detokenize, 1, 0},
};
#define N_ROUTES ((int)(sizeof routes / sizeof *routes))

int srv_http_route_paths(const char **out, int max)
{
    int n = 0;
    for (; n < N_ROUTES && n < max; n++)
        out[n] = routes[n].path;
    return n;
}

/* ---- replies ---------------------------------------------------------------- */

static void reply(srv_req *r, int status, const char *ctype, const char *body, size_t len,
                  const char *location)
{
    if (r->responded)
        return;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return;
    if (ctype)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (location)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, location);
    if (status == 405 && r->route >= 0)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, routes[r->route].method);
    if (status == 503 || status == 429)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"attnd\"");
    if (r->close_after)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->responded = 1;
}

void srv_reply(srv_req *r, int status, const char *ctype, const char *body, size_t len)
{
    reply(r, status, ctype, body, len, NULL);
}

void srv_reply_json_location(srv_req *r, int status, const char *json, const char *location)
{
    reply(r, status, "application/json", json, strlen(json), location);
}

void srv_reply_json(srv_req *r, int status, const char *json)
{
    srv_reply(r, status, "application/json", json, strlen(json));
}

void srv_reply_error(srv_req *r, int status, const char *code, const char *field,
                     const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv_buf b = {0};
    if (r->err_style == SRV_ERR_OPENAI) {
        srv_buf_append(&b, "{\"error\":{\"message\":", 20);
        srv_json_string(&b, msg, strlen(msg));
        srv_buf_printf(&b, ",\"type\":\"%s\",\"param\":", srv_openai_error_type(status));
        if (field)
            srv_json_string(&b, field, strlen(field));
        else
            srv_buf_append(&b, "null", 4);
        srv_buf_append(&b, ",\"code\":", 8);
        srv_json_string(&b, code, strlen(code));
        srv_buf_append(&b, "}}", 2);
    } else if (r->err_style == SRV_ERR_TGI) {
        srv_buf_append(&b, "{\"error\":", 9);
        srv_json_string(&b, msg, strlen(msg));
        srv_buf_append(&b, ",\"error_type\":", 14);
        srv_json_string(&b, code, strlen(code));
        srv_buf_append(&b, "}", 1);
    } else {
        srv_buf_printf(&b, "{\"error\":{\"code\":\"%s\",\"message\":", code);
        srv_json_string(&b, msg, strlen(msg));
        if (field) {
            srv_buf_append(&b, ",\"field\":", 9);
            srv_json_string(&b, field, strlen(field));
        }
        srv_buf_append(&b, "}}", 2);
    }
    if (b.p)
        srv_reply(r, status, "application/json", b.p, b.len);
    srv_buf_free(&b);
}

void srv_reply_err(srv_req *r, const srv_error *e)
{
    srv_reply_error(r, e->status, e->code, e->field[0] ? e->field : NULL, "%s", e->message);
}

/* Arrays: the largest any route takes (a /recall's queries or pairs, a
 * stop list); strings: a prompt or key is far below 256 KiB, and only a
 * training job's inline text may fill the whole body. */
#define SRV_JSON_MAX_ARRAY 65536
#define SRV_JSON_MAX_STRING ((size_t)256 << 10)

void srv_req_json_limits(const srv_req *r, srv_json_limits *lim)
{
    lim->max_depth = r->app->cfg.max_json_depth;
    lim->max_array = SRV_JSON_MAX_ARRAY;
    lim->max_string = r->route >= 0 && routes[r->route].handler == srv_route_train
                          ? r->app->cfg.max_body_bytes
                          : SRV_JSON_MAX_STRING;
}

json_t *srv_req_json_body(srv_req *r)
{
    srv_json_limits lim;
    srv_error e;
    srv_req_json_limits(r, &lim);
    if (srv_json_guard(r->body.p ? r->body.p : "", r->body.len, &lim, &e)) {
        srv_reply_err(r, &e);
        return NULL;
    }
    json_error_t err;
    json_t *body = json_loadb(r->body.p ? r->body.p : "", r->body.len,
                              JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
    if (!body)
        srv_reply_error(r, 400, "invalid_json", NULL, "malformed JSON at line %d, column %d: %s",
                        err.line, err.column, err.text);
    return body;
}

static void deliver(srv_req *r);

/* ---- parking ------------------------------------------------------------------ */

/* Whether a job with a deadline is past it. */
static int past_deadline(const srv_job *j) { return j->deadline > 0 && tfm_now() > j->deadline; }

/* Whether the job has something for its connection (under j->mu). */
static int has_news(const srv_req *r, const srv_job *j)
{
    if (j->done || atomic_load(&j->cancelled) == SRV_CANCEL_CLIENT)
        return 1;
    if (!r->responded)
        return j->stream && j->started;
    return j->out_pos < j->out.len;
}

/* Suspends the connection unless the job already has news; 1 if parked.
 * Called on the HTTP thread, from a request callback. */
static int park(srv_req *r)
{
    srv_job *j = r->job;
    pthread_mutex_lock(&j->mu);
    int news = has_news(r, j);
    if (!news) {
        j->parked = 1;
        MHD_suspend_connection(r->conn);
    }
    pthread_mutex_unlock(&j->mu);
    return !news;
}

static void waiting_add(srv_app *app, srv_job *j)
{
    pthread_mutex_lock(&app->wait_mu);
    if (app->n_waiting == app->cap_waiting) {
        int cap = app->cap_waiting ? app->cap_waiting * 2 : 64;
        srv_job **p = realloc(app->waiting, (size_t)cap * sizeof *p);
        if (p) {
            app->waiting = p;
            app->cap_waiting = cap;
        }
    }
    if (app->n_waiting < app->cap_waiting)
        app->waiting[app->n_waiting++] = j; /* else: no disconnect watch for it */
    pthread_mutex_unlock(&app->wait_mu);
}

static void waiting_remove(srv_app *app, srv_job *j)
{
    pthread_mutex_lock(&app->wait_mu);
    for (int i = 0; i < app->n_waiting; i++)
        if (app->waiting[i] == j) {
            app->waiting[i] = app->waiting[--app->n_waiting];
            break;
        }
    pthread_mutex_unlock(&app->wait_mu);
}

void srv_req_wait(srv_req *r, srv_job *j)
{
    srv_job_ref(j);
    r->job = j;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    pthread_mutex_lock(&j->mu);
    j->http = r->conn;
    j->fd = ci ? ci->connect_fd : -1;
    pthread_mutex_unlock(&j->mu);
    waiting_add(r->app, j);
    srv_gauge_add(r->app->stats.in_flight, 1);
    if (!park(r))
        deliver(r);
}

/* Loop thread: resume a parked connection; the HTTP thread takes over. */
static void unpark(srv_job *j)
{
    if (j->http && j->parked) {
        j->parked = 0;
        MHD_resume_connection(j->http);
    }
}

void srv_http_job_ready(srv_app *app, srv_job *j)
{
    (void)app;
    pthread_mutex_lock(&j->mu);
    unpark(j);
    pthread_mutex_unlock(&j->mu);
}

void srv_http_watch(srv_app *app)
{
    pthread_mutex_lock(&app->wait_mu);
    for (int i = 0; i < app->n_waiting; i++) {
        srv_job *j = app->waiting[i];
        pthread_mutex_lock(&j->mu);
        if (j->parked && j->fd >= 0 && !atomic_load(&j->cancelled)) {
            char c;
            ssize_t n = recv(j->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                atomic_store(&j->cancelled, SRV_CANCEL_CLIENT);
                unpark(j);
            }
        }
        /* a /recall still waiting for the worker (or computing on it) past
         * its deadline: its connection answers 504 now (see on_request) */
        if (j->parked && j->run && !j->done && past_deadline(j))
            unpark(j);
        pthread_mutex_unlock(&j->mu);
    }
    pthread_mutex_unlock(&app->wait_mu);
}

void srv_http_cancel_all(srv_app *app)
{
    pthread_mutex_lock(&app->wait_mu);
    for (int i = 0; i < app->n_waiting; i++) {
        int none = 0; /* a client's own cancel stays as it is */
        atomic_compare_exchange_strong(&app->waiting[i]->cancelled, &none, SRV_CANCEL_SHUTDOWN);
    }
    pthread_mutex_unlock(&app->wait_mu);
}

/* ---- delivering a job's output (HTTP thread) ---------------------------------- */

/* The stream's content reader: what the engine produced since the last
 * call, or park until it produces more. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    srv_req *r = cls;
    srv_job *j = r->job;
    (void)pos;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        size_t avail = j->out.len - j->out_pos;
        if (avail > 0) {
            size_t n = avail < max ? avail : max;
            memcpy(buf, j->out.p + j->out_pos, n);
            j->out_pos += n;
            pthread_mutex_unlock(&j->mu);
            return (ssize_t)n;
        }
        int done = j->done, gone = atomic_load(&j->cancelled) == SRV_CANCEL_CLIENT;
        pthread_mutex_unlock(&j->mu);
        if ((gone && !done) || atomic_load(&r->app->stopping))
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (done)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (park(r))
            return 0; /* resumed when the engine has more */
    }
}

static void start_stream(srv_req *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, r, NULL);
    if (!resp)
        return;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_queue_response(r->conn, 200, resp);
    MHD_destroy_response(resp);
    r->status = 200;
    r->responded = 1;
}

/* The job has news for a request that has no reply yet: the reply, or the
 * start of the stream. */
static void deliver(srv_req *r)
{
    srv_job *j = r->job;
    pthread_mutex_lock(&j->mu);
    int done = j->done, started = j->started, status = j->http_status;
    srv_finish fin = j->finish;
    pthread_mutex_unlock(&j->mu);
    if (j->stream && started && status == 200) {
        start_stream(r);
    } else if (done && fin == SRV_FINISH_CANCELLED) {
        srv_reply_error(r, 503, "overloaded", NULL, "the request was cancelled: the server is shutting down");
    } else if (done) {
        /* the engine is finished with the job: out is no longer written */
        srv_reply(r, status, "application/json", j->out.p ? j->out.p : "{}", j->out.len);
    }
}

/* ---- the request callbacks -------------------------------------------------- */

static int path_matches(const char *tmpl, const char *path)
{
    const char *brace = strchr(tmpl, '{');
    if (!brace)
        return !strcmp(tmpl, path);
    size_t n = (size_t)(brace - tmpl);
    return !strncmp(tmpl, path, n) && path[n] && !strchr(path + n, '/');
}

static int find_route(const char *path)
{
    for (int i = 0; i < N_ROUTES; i++)
        if (path_matches(routes[i].path, path))
            return i;
    return -1;
}

/* Whether method is in the route's list ("GET, POST"). */
static int allows(const char *list, const char *method)
{
    size_t n = strlen(method);
    for (const char *p = list; n && (p = strstr(p, method)); p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == 0 || p[n] == ','))
            return 1;
    return 0;
}

static int is_json(const char *ctype)
{
    if (!ctype)
        return 0;
    while (*ctype == ' ')
        ctype++;
    size_t n = strlen("application/json");
    if (strncasecmp(ctype, "application/json", n))
        return 0;
    char c = ctype[n];
    return c == 0 || c == ';' || c == ' ';
}

/* The connection's guard entry (conn.h), or NULL. */
static srv_conn *conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* A request target longer than this gets 414 (at most --max-header-bytes). */
#define SRV_MAX_URI 8192

/* Limits on the connection and the request's head, then the API key:
 * what is checked before the route is even looked at.  0 to go on. */
static int guard_checks(srv_req *r, srv_conn *c)
{
    srv_app *app = r->app;
    int refused = srv_conn_refused(c);
    if (refused) {
        r->close_after = 1;
        srv_reply_error(r, 503, "overloaded", NULL, "too many connections%s; try again later",
                        refused == SRV_CONN_MAX_PER_IP ? " from this address" : "");
        return -1;
    }
    size_t max_uri = app->cfg.max_header_bytes < SRV_MAX_URI ? app->cfg.max_header_bytes : SRV_MAX_URI;
    if (r->uri_len > max_uri) {
        r->close_after = 1;
        srv_reply_error(r, 414, "uri_too_long", NULL, "the request target is %zu bytes; the limit is %zu",
                        r->uri_len, max_uri);
        return -1;
    }
    const union MHD_ConnectionInfo *hi =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (hi && hi->header_size > app->cfg.max_header_bytes) {
        r->close_after = 1;
        srv_reply_error(r, 431, "request_header_fields_too_large", NULL,
                        "the request line and headers are %zu bytes; the limit is %zu",
                        hi->header_size, app->cfg.max_header_bytes);
        return -1;
    }
    r->client = srv_conn_peer(c);
    int open = (!strcmp(r->method, "GET") &&
                (!strcmp(r->path, "/healthz") || !strcmp(r->path, "/readyz") ||
                 (app->cfg.metrics_public && !strcmp(r->path, "/metrics")))) ||
               srv_ui_open(&app->cfg, r->method, r->path); /* no data there (ui.h) */
    if (open || !srv_auth_enabled(app->auth))
        return 0;
    const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_AUTHORIZATION);
    int why = srv_auth_check(app->auth, h, &r->client);
    if (why == SRV_AUTH_OK)
        return 0;
    /* the key is never logged: the log line shows method, path and 401 */
    srv_counter_add(app->stats.auth_failures[why == SRV_AUTH_MISSING ? 0 : 1], 1);
    srv_reply_error(r, 401, "unauthorized", NULL,
                    why == SRV_AUTH_MISSING ? "this route needs an API key: Authorization: Bearer <key>"
                                            : "the API key is not valid");
    return -1;
}

/* First call: route, method and headers, before any body is read. */
static void first_checks(srv_req *r)
{
    srv_app *app = r->app;
    srv_conn *c = conn_of(r->conn);
    if (guard_checks(r, c))
        return;
    if (r->route < 0) {
        srv_reply_error(r, 404, "not_found", NULL, "no route %s %s", r->method, r->path);
        return;
    }
    const route *rt = &routes[r->route];
    if (!allows(rt->method, r->method)) {
        srv_reply_error(r, 405, "method_not_allowed", NULL, "%s takes %s, not %s", rt->path,
                        rt->method, r->method);
        return;
    }
    if (!rt->has_body || strcmp(r->method, "POST"))
        return;
    if (atomic_load(&app->draining)) {
        srv_reply_error(r, 503, "overloaded", NULL, "the server is shutting down");
        return;
    }
    const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!is_json(ct)) {
        srv_reply_error(r, 415, "unsupported_media_type", NULL,
                        "the body must be application/json, not %s", ct ? ct : "(none)");
        return;
    }
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno || end == cl || n > app->cfg.max_body_bytes) {
            srv_reply_error(r, 413, "payload_too_large", NULL,
                            "the body is %s bytes; the limit is %zu", cl,
                            app->cfg.max_body_bytes);
            return;
        }
    }
    /* requests that hold the engine or the worker: a cap per client, so one
     * client cannot queue everything (the engine also admits fairly) */
    if (rt->engine && srv_conn_inflight_acquire(app->conns, c, r->client)) {
        srv_reply_error(r, 429, "too_many_requests", NULL,
                        "this client has %d requests in progress already (the limit)",
                        app->cfg.max_inflight_per_client);
        return;
    }
}

/* A request's state, from the moment its request line is in. */
static srv_req *req_new(srv_app *app, const char *uri)
{
    srv_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->app = app;
    r->t0 = tfm_now();
    r->uri_len = uri ? strlen(uri) : 0;
    atomic_fetch_add(&app->active, 1);
    return r;
}

/* libmicrohttpd has the request line (before the headers): the request's
 * header deadline runs from here, if its first bytes were not seen
 * earlier.  What it returns is the request's *con_cls. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    srv_app *app = cls;
    srv_conn_request_begin(app->conns, conn_of(conn));
    return req_new(app, uri);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    srv_app *app = cls;
    srv_req *r = *con_cls;
    (void)version;
    if (!r && !(*con_cls = r = req_new(app, NULL)))
        return MHD_NO;
    if (!r->routed) {
        r->routed = 1;
        r->conn = conn;
        snprintf(r->method, sizeof r->method, "%s", method);
        snprintf(r->path, sizeof r->path, "%s", url);
        r->route = find_route(url);
        r->label = r->route >= 0 ? routes[r->route].path : "other";
        if (!strncmp(r->path, "/v1/", 4))
            r->err_style = SRV_ERR_OPENAI;
        else if (!strcmp(r->path, "/generate_stream") || !strcmp(r->path, "/info") ||
                 (!strcmp(r->path, "/") && !strcmp(method, "POST")))
            r->err_style = SRV_ERR_TGI; /* TGI's routes (tgi.c) */
        first_checks(r);
        return MHD_YES;
    }
    if (*upload_size) {
        /* A body without Content-Length (chunked) that outgrows the limit
         * stops being buffered at once, and the 413 goes out when the
         * upload ends; a client that keeps sending far beyond the limit is
         * cut off. */
        if (r->too_large || r->body.len + *upload_size > app->cfg.max_body_bytes) {
            r->too_large += *upload_size;
            srv_buf_free(&r->body);
            *upload_size = 0;
            return r->too_large > 4 * app->cfg.max_body_bytes ? MHD_NO : MHD_YES;
        }
        if (!r->responded && srv_buf_append(&r->body, upload_data, *upload_size))
            return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    srv_conn_request_received(app->conns, conn_of(conn)); /* the body is in */
    if (r->responded)
        return MHD_YES;
    if (r->job) { /* resumed: the job has news, or its client is gone */
        if (atomic_load(&r->job->cancelled) == SRV_CANCEL_CLIENT)
            return MHD_NO; /* the client hung up: close */
        if (atomic_load(&app->stopping)) { /* the work outlived the grace period */
            srv_reply_error(r, 503, "overloaded", NULL,
                            "the request was cancelled: the server is shutting down");
            return MHD_YES;
        }
        if (r->job->run && past_deadline(r->job)) {
            pthread_mutex_lock(&r->job->mu);
            int done = r->job->done;
            pthread_mutex_unlock(&r->job->mu);
            if (!done) {
                /* the worker skips it when it gets there (its client is gone) */
                atomic_store(&r->job->cancelled, SRV_CANCEL_CLIENT);
                srv_reply_error(r, 504, "timeout", NULL,
                                "the recall waited or ran past its deadline (timeout_ms)");
                return MHD_YES;
            }
        }
        if (!park(r))
            deliver(r);
        return MHD_YES;
    }
    if (r->too_large) {
        srv_reply_error(r, 413, "payload_too_large", NULL,
                        "the body is over the limit of %zu bytes", app->cfg.max_body_bytes);
        return MHD_YES;
    }
    routes[r->route].handler(r);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode why)
{
    srv_app *app = cls;
    srv_req *r = *con_cls;
    srv_conn *c = conn_of(conn);
    int timed_out = srv_conn_timed_out(app->conns, c);
    srv_conn_request_done(app->conns, c);
    if (!r)
        return;
    double dt = tfm_now() - r->t0;
    if (r->job) {
        srv_job *j = r->job;
        waiting_remove(app, j);
        pthread_mutex_lock(&j->mu);
        j->http = NULL;
        j->parked = 0;
        pthread_mutex_unlock(&j->mu);
        /* finished or not, the engine may stop: nobody is listening */
        atomic_store(&j->cancelled, SRV_CANCEL_CLIENT);
        srv_job_unref(j);
        srv_gauge_add(app->stats.in_flight, -1);
    }
    /* 499: nginx's "client closed request"; 408: the guard closed it */
    int status = r->status ? r->status : timed_out ? 408 : 499;
    if (!r->routed) { /* the request line came, the headers never did */
        snprintf(r->method, sizeof r->method, "-");
        r->label = "other";
    }
    srv_stats_request(&app->stats, r->label ? r->label : "other", status, dt);
    if (!app->cfg.quiet) {
        printf("%s %s %d %.1fms%s\n", r->method, r->routed ? r->path : "-", status, dt * 1e3,
               timed_out ? " (header timeout)"
               : why == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (client gone)");
        fflush(stdout);
    }
    srv_buf_free(&r->body);
    free(r);
    *con_cls = NULL;
    atomic_fetch_sub(&app->active, 1);
}

/* Every connection enters the guard (conn.h) and gets TCP_NODELAY: a
 * reply may leave in two writes (headers, body), and Nagle would hold the
 * second for ~40 ms on a keep-alive connection (PEERS.md measured exactly
 * that on llama-server).  libmicrohttpd reports CLOSED before it closes
 * the socket, which is what lets the guard shut sockets down safely. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode code)
{
    srv_app *app = cls;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        srv_conn_close(app->conns, *socket_ctx);
        *socket_ctx = NULL;
        return;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *ai =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci)
        return;
    int one = 1;
    setsockopt(ci->connect_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *socket_ctx = srv_conn_open(app->conns, ci->connect_fd, ai ? ai->client_addr : NULL);
}

/* ---- the daemon ---------------------------------------------------------------- */

int srv_http_start(srv_app *app)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)app->cfg.port);
    if (inet_pton(AF_INET, app->cfg.host, &sa.sin_addr) != 1) {
        fprintf(stderr, "attnd: --host %s: not an IPv4 address\n", app->cfg.host);
        return -1;
    }
    app->quiesced_fd = -1;
    app->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME |
            MHD_USE_ERROR_LOG,
        0, NULL, NULL, on_request, app, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, app, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, app, MHD_OPTION_URI_LOG_CALLBACK, on_uri, app,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)app->cfg.idle_timeout_s,
        /* the hard stops, a little above the guard's soft limits (conn.h) */
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)app->cfg.max_connections + SRV_CONN_HEADROOM,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)app->cfg.max_conn_per_ip + SRV_CONN_HEADROOM,
        /* room for the head at the limit, so that the guard, not
         * libmicrohttpd, answers 414 and 431 (as JSON) */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(2 * app->cfg.max_header_bytes + 16384),
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_END);
    if (!app->mhd) {
        fprintf(stderr, "attnd: cannot listen on %s:%d: %s\n", app->cfg.host, app->cfg.port,
                strerror(errno));
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(app->mhd, MHD_DAEMON_INFO_BIND_PORT);
    app->port = di ? di->port : app->cfg.port;
    return 0;
}

void srv_http_quiesce(srv_app *app)
{
    if (!app->mhd)
        return;
    MHD_socket s = MHD_quiesce_daemon(app->mhd);
    if (s == MHD_INVALID_SOCKET)
        return;
    /* Refuse new connections now, but close the descriptor only after
     * MHD_stop_daemon has joined the daemon's thread: that thread may still be
     * in an epoll_ctl on it, and a closed number can be reused at once. */
    shutdown(s, SHUT_RDWR);
    app->quiesced_fd = s;
}

/* Resumes every parked connection so that it ends (503, or a stream cut
 * short) and waits, at most about two seconds, until libmicrohttpd has
 * sent those replies and finished them all: it refuses to stop (it aborts the process) while a
 * connection is suspended, and work such as a long /recall on the worker
 * can outlive the grace period.  0 when none is left. */
static int end_parked(srv_app *app)
{
    atomic_store(&app->stopping, 1);
    for (int tries = 0; tries < 200; tries++) {
        pthread_mutex_lock(&app->wait_mu);
        int left = app->n_waiting; /* a request leaves once its reply is out */
        for (int i = 0; i < app->n_waiting; i++) {
            srv_job *j = app->waiting[i];
            pthread_mutex_lock(&j->mu);
            unpark(j);
            pthread_mutex_unlock(&j->mu);
        }
        pthread_mutex_unlock(&app->wait_mu);
        if (!left)
            return 0;
        usleep(10000);
    }
    return -1;
}

void srv_http_stop(srv_app *app)
{
    if (!app->mhd)
        return;
    if (end_parked(app)) {
        /* every file on disk is replaced whole, so leaving now tears none */
        fprintf(stderr, "attnd: connections still suspended at shutdown; exiting now\n");
        fflush(stdout);
        _exit(app->exit_code);
    }
    MHD_stop_daemon(app->mhd);
    app->mhd = NULL;
    if (app->quiesced_fd >= 0) {
        close(app->quiesced_fd);
        app->quiesced_fd = -1;
    }
}
