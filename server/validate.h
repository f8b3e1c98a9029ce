/*
 * validate.h — the request validators of POST /generate and POST /recall
 * as pure functions: raw body bytes in, a parsed request or an srv_error
 * out.  No connection, no libmicrohttpd, no libuv: the route handlers
 * (generate.c, recall.c) are thin wrappers that turn the error into the
 * reply (srv_reply_err), and the fuzz targets call the very same
 * functions on arbitrary bytes.
 *
 * Each validator first runs srv_json_guard on the raw bytes (depth, array
 * and string limits; 400 or 413), then parses with jansson (duplicate keys
 * refused; 400 invalid_json with the parser's position), then checks every
 * field (422 naming it; 404 model_not_found; 503 not_ready when there is
 * no model to serve).  The messages are the server's own, word for word.
 *
 * Linking: generate_parse.c and recall_parse.c need engine.c (srv_job),
 * models.c (the registry), text.c, error.c, json_guard.c, the tfm core and
 * jansson; no engine thread is started.  A harness builds a registry with
 * srv_models_init(&reg, &cfg) (cfg from srv_config_parse with argv
 * {"attnd"}, or zeroed with the limits set) and, for one model,
 * srv_models_add(&reg, "tiny.safetensors", err, sizeof err).
 *
 * Thread-safety: both may run on any thread at once; the registry is read
 * lock-free (models.h).
 */
#ifndef SRV_VALIDATE_H
#define SRV_VALIDATE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "engine.h"
#include "error.h"
#include "json_guard.h"
#include "models.h"

/* POST /generate: fills j (from srv_job_create: its defaults are the
 * request's defaults) with the prompt, model, sampling, stop strings,
 * stream, ignore_eos, attention and timeout_ms (clamped to
 * cfg->request_timeout_s; absent: the cap).  Seeds are read from the raw
 * literal (any unsigned 64-bit value).  Returns 0, or -1 with e filled; j
 * may hold partial allocations either way, which srv_job_unref frees.  A
 * prompt longer than the model's context is found later, by the engine.
 * The route passes srv_req_json_limits's limits with max_string raised to
 * --max-body-bytes: a prompt may fill the body (a long one is the engine's
 * 422, field prompt, not a 413). */
int srv_generate_parse(const char *body, size_t len, const srv_json_limits *lim,
                       const srv_models *models, const srv_config *cfg, srv_job *j,
                       srv_error *e);

/* ---- field readers shared by the generation validators -------------------
 * (generate_parse.c; used by openai.c and tgi.c too).  Each reads one
 * member of an object jansson has parsed, returns 1 when it is absent
 * (the output keeps its default) or valid, 0 with pc->e filled (422 naming
 * the field) when not. */

/* One parse: the raw text, whether integers were read as reals (a body
 * with an integer beyond int64 is parsed again so), where the error goes. */
typedef struct srv_parse_ctx {
    int reals;
    const char *raw;
    size_t raw_len;
    srv_error *e;
} srv_parse_ctx;

/* A body as the generation routes read it: srv_json_guard (lim), then
 * jansson with duplicate keys refused and, for a body with an integer
 * beyond int64, integers as reals (pc->reals); the object, or NULL with
 * pc->e filled (400 invalid_json, 422 when not an object).  Sets pc->raw
 * and pc->raw_len; pc->e must be set. */
json_t *srv_parse_object(const char *raw, size_t len, const srv_json_limits *lim,
                         srv_parse_ctx *pc);
/* The raw text of a top-level member's value (for seeds beyond int64). */
int srv_raw_member(const char *p, size_t n, const char *key, const char **val, size_t *vlen);
/* "seed" (must be present): any unsigned 64-bit integer, from the raw text. */
int srv_field_seed(const srv_parse_ctx *pc, uint64_t *out);
/* A boolean. */
int srv_field_bool(const srv_parse_ctx *pc, json_t *o, const char *key, int *out);
/* Removes o's members whose value is null (the client routes count null as
 * absent). */
void srv_json_drop_nulls(json_t *o);
/* A validated top_p in (0, 1] as the sampler's float: a value too small
 * for a float (4e-89) is the smallest one, not 0, which the sampler
 * refuses (found by fuzz_generate). */
static inline float srv_top_p(double top_p)
{
    return top_p < 1.17549435e-38 ? 1.17549435e-38f : (float)top_p;
}
/* A seed for a request without one: the clock and a counter. */
uint64_t srv_fresh_seed(void);
/* A number in [lo, hi] (lo excluded when lo_open). */
int srv_field_number(const srv_parse_ctx *pc, json_t *body, const char *key, double lo,
                     double hi, int lo_open, double *out);
/* An integer in [lo, hi]. */
int srv_field_integer(const srv_parse_ctx *pc, json_t *body, const char *key, json_int_t lo,
                      json_int_t hi, json_int_t *out);
/* "timeout_ms": >= 1, clamped to --request-timeout-seconds (absent: the cap). */
int srv_field_timeout_ms(const srv_parse_ctx *pc, json_t *body, const srv_config *cfg, int *out);
/* A stop value v (a string or up to SRV_MAX_STOP strings) into j->stop. */
int srv_field_stop(const srv_parse_ctx *pc, json_t *v, srv_job *j);

/* POST /v1/completions (chat 0) and /v1/chat/completions (chat 1),
 * openai.c: fills g (from srv_job_create) as the request's group, one
 * child per prompt and choice, their prompts, sampling, stop strings,
 * logprobs and OpenAI's output format (openai.h).  Unknown fields are
 * ignored and null members count as absent; a bad value is a 422 naming
 * it.  Returns 0, or -1 with e filled (g may hold partial allocations,
 * which srv_job_unref frees).  Links openai_format.c and job.c. */
int srv_openai_parse(const char *body, size_t len, const srv_json_limits *lim,
                     const srv_models *models, const srv_config *cfg, int chat, srv_job *g,
                     srv_error *e);

/* TGI's bodies (tgi_parse.c): route TGI_GENERATE (/generate with
 * "inputs"), TGI_STREAM (/generate_stream) or TGI_COMPAT (POST /), tgi.h.
 * Fills j (from srv_job_create) with the inputs, model, parameters and
 * TGI's output format; timeout_ms is --request-timeout-seconds.  Unknown
 * members are ignored and nulls count as absent; what attnd cannot do
 * (typical_p, truncate, grammar, watermark, best_of > 1) is a 422.
 * Returns 0, or -1 with e filled.  Links tgi_format.c and job.c. */
int srv_tgi_parse(const char *body, size_t len, const srv_json_limits *lim,
                  const srv_models *models, const srv_config *cfg, int route, srv_job *j,
                  srv_error *e);

/* A validated /recall: the symbols interned (engine "exact") or mapped to
 * the model's integers (engine "model"). */
typedef struct srv_recall_task {
    json_t *body;     /* the parsed request, owned; pair and query values borrowed */
    json_t *pairs;    /* borrowed from body */
    json_t *queries;  /* owned: the body's array, or an array of the one query */
    int explain;
    int timeout_ms;   /* clamped to the cap */
    uint32_t *keys, *values, *qids; /* engine exact: interned ids, n_pairs / n_queries */
    int n_pairs, n_queries, n_key_symbols, n_value_symbols;
    struct srv_stats *stats; /* set by the route, for the worker; NULL in a harness */
    /* engine "model" (NULL for exact) */
    const srv_model *model;
    int *mkeys, *mvalues, *mqueries; /* the store (distinct keys), the queries */
    int n_store;
} srv_recall_task;

/* POST /recall: *out receives a new task (the caller owns it:
 * srv_recall_task_free).  ready: whether start-up has finished loading
 * models; engine "model" with no recall model to use is a 503 not_ready
 * while it has not (a harness passes 1).  Returns 0, or -1 with e filled
 * and *out NULL. */
int srv_recall_parse(const char *body, size_t len, const srv_json_limits *lim,
                     const srv_models *models, const srv_config *cfg, int ready,
                     srv_recall_task **out, srv_error *e);
/* NULL is a no-op. */
void srv_recall_task_free(srv_recall_task *t);

#endif
