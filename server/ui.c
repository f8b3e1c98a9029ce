/*
 * ui.c — the web console's embedded files (see ui.h).
 *
 * A reply here needs headers srv_reply does not set (ETag, Cache-Control,
 * Content-Encoding, Vary, the page's Content-Security-Policy), so it builds
 * its own libmicrohttpd response from the static bytes
 * (MHD_RESPMEM_PERSISTENT: no copy) and marks the request answered as
 * srv_reply would.  Errors go through srv_reply_error: JSON, attnd's shape.
 */
#include "ui.h"
#include "http.h"

#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The page loads only its own files and talks only to this origin; uPlot
 * styles through the CSSOM (element.style), which style-src does not
 * govern.  The icon is an inline data: SVG. */
#define UI_CSP                                                                                     \
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "             \
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

const srv_ui_asset *srv_ui_find(const char *name)
{
    for (int i = 0; i < srv_ui_n_assets; i++)
        if (!strcmp(srv_ui_assets[i].name, name))
            return &srv_ui_assets[i];
    return NULL;
}

int srv_ui_open(const srv_config *cfg, const char *method, const char *path)
{
    if (cfg->no_ui || (strcmp(method, "GET") && strcmp(method, "HEAD")))
        return 0;
    return !strcmp(path, "/") || !strncmp(path, "/ui/", 4);
}

/* Whether an Accept-Encoding value accepts gzip: a "gzip" (or "*") token
 * whose q is not 0. */
static int accepts_gzip(const char *ae)
{
    for (const char *p = ae; p && *p;) {
        p += strspn(p, " ,");
        size_t n = strcspn(p, ",; ");
        const char *end = p + strcspn(p, ",");
        if ((n == 4 && !strncasecmp(p, "gzip", 4)) || (n == 1 && *p == '*')) {
            const char *q = strstr(p, "q=");
            return !(q && q < end && strtod(q + 2, NULL) <= 0.0);
        }
        p = end;
    }
    return 0;
}

/* Whether If-None-Match names the asset's ETag (or is "*"). */
static int not_modified(const char *inm, const char *etag)
{
    if (!inm)
        return 0;
    inm += strspn(inm, " ");
    return strstr(inm, etag) || !strcmp(inm, "*");
}

static void serve(srv_req *r, const srv_ui_asset *a)
{
    if (r->responded)
        return;
    const char *inm = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                  MHD_HTTP_HEADER_IF_NONE_MATCH);
    const char *ae = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_ACCEPT_ENCODING);
    int status = not_modified(inm, a->etag) ? 304 : 200;
    int gz = status == 200 && a->gz && accepts_gzip(ae);
    const void *body = status == 304 ? "" : gz ? (const void *)a->gz : (const void *)a->data;
    size_t len = status == 304 ? 0 : gz ? a->gz_len : a->len;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return;
    if (status == 200)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, a->ctype);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, a->etag);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    if (a->gz)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_VARY, "Accept-Encoding");
    if (gz)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_ENCODING, "gzip");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (!strncmp(a->ctype, "text/html", 9)) {
        MHD_add_response_header(resp, "Content-Security-Policy", UI_CSP);
        MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    }
    if (r->close_after)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->responded = 1;
}

static int console_off(srv_req *r)
{
    if (!r->app->cfg.no_ui)
        return 0;
    srv_reply_error(r, 404, "not_found", NULL, "the web console is off (--no-ui)");
    return 1;
}

void srv_route_root(srv_req *r)
{
    if (!strcmp(r->method, "POST")) { /* http.c set TGI's error style */
        srv_route_tgi_compat(r);
        return;
    }
    if (console_off(r))
        return;
    const srv_ui_asset *a = srv_ui_find("index.html");
    if (!a) {
        srv_reply_error(r, 500, "internal", NULL, "the console was built without index.html");
        return;
    }
    serve(r, a);
}

void srv_route_ui_asset(srv_req *r)
{
    if (console_off(r))
        return;
    const char *name = r->path + strlen("/ui/");
    const srv_ui_asset *a = srv_ui_find(name);
    if (!a) {
        srv_reply_error(r, 404, "not_found", NULL, "no console asset /ui/%s", name);
        return;
    }
    serve(r, a);
}
