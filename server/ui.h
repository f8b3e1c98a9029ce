/*
 * ui.h — the web console: static files from ui/, embedded into attnd at
 * build time (cmake/embed.cmake writes <build>/ui_assets.c), served at
 * GET / (index.html) and GET /ui/{name}.
 *
 * Nothing is read from disk at run time and nothing comes from a CDN: the
 * page, its script, its style and the vendored chart library (uPlot, see
 * ui/vendor/README.md) are const arrays in the binary.  Each is served
 * with its Content-Type, a strong ETag (If-None-Match answers 304),
 * Cache-Control: no-cache (revalidate: the names carry no version) and,
 * when the client accepts it, the gzip copy made at build time.  HEAD gets
 * the same headers without a body (libmicrohttpd drops it).
 *
 * Keys: the page and its assets hold no data, so GET/HEAD of / and of
 * /ui/{name} are open without an API key (srv_ui_open, asked by http.c's guard);
 * the page asks for the key and sends it on every data route, which keep
 * their rules.  --no-ui (ATTND_NO_UI) turns all of it off: those paths are
 * then ordinary closed routes that answer 404.
 *
 * Thread-safety: everything here is read-only data; the handlers run on
 * libmicrohttpd's thread like every handler.
 */
#ifndef SRV_UI_H
#define SRV_UI_H

#include <stddef.h>

#include "config.h"

typedef struct srv_ui_asset {
    const char *name;        /* under /ui/: the file's base name */
    const char *ctype;       /* Content-Type */
    const char *etag;        /* "\"<16 hex>\"", quotes included */
    const unsigned char *data; /* (len) the file as it is in ui/ */
    size_t len;
    const unsigned char *gz; /* (gz_len) gzip -9 of data, or NULL */
    size_t gz_len;
} srv_ui_asset;

/* The generated table (ui_assets.c). */
extern const srv_ui_asset srv_ui_assets[];
extern const int srv_ui_n_assets;

/* The asset called name, or NULL. */
const srv_ui_asset *srv_ui_find(const char *name);

/* Whether a request needs no API key: GET or HEAD of / or /ui/..., with
 * the console on. */
int srv_ui_open(const srv_config *cfg, const char *method, const char *path);

struct srv_req;
/* "/": GET and HEAD serve the console's index.html; POST is TGI's
 * compatibility route (srv_route_tgi_compat). */
void srv_route_root(struct srv_req *r);
/* "/ui/{name}": one embedded asset, else 404 JSON. */
void srv_route_ui_asset(struct srv_req *r);

#endif
