/*
 * tgi_parse.c — the validator of TGI's bodies (srv_tgi_parse,
 * validate.h): raw body bytes to a filled job with TGI's format, or an
 * srv_error.  No connection: the routes (tgi.c) and the fuzz target call
 * the very same function.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tgi.h"
#include "validate.h"

/* ---- validation ----------------------------------------------------------- */

static int fail(const srv_parse_ctx *pc, int status, const char *field, const char *msg)
{
    srv_error_set(pc->e, status, status == 404 ? "model_not_found" : "invalid_argument", field,
                  "%s", msg);
    return 0;
}

/* parameters.seed: any unsigned 64-bit integer.  Beyond int64 jansson has
 * it as a real; then its literal is read from the raw text of the
 * parameters object (srv_field_seed reads a top-level member). */
static int field_seed(const srv_parse_ctx *pc, json_t *params, uint64_t *out)
{
    json_t *s = json_object_get(params, "seed");
    if (json_is_integer(s) && json_integer_value(s) >= 0) {
        *out = (uint64_t)json_integer_value(s);
        return 1;
    }
    const char *p;
    size_t n;
    if (pc->reals && json_is_real(s) && srv_raw_member(pc->raw, pc->raw_len, "parameters", &p, &n) &&
        *p == '{') {
        /* the object's extent: to its closing brace, strings skipped */
        const char *end = pc->raw + pc->raw_len, *q = p;
        int depth = 0;
        for (; q < end; q++) {
            if (*q == '"') {
                for (q++; q < end && *q != '"'; q += *q == '\\' ? 2 : 1)
                    ;
            } else if (*q == '{' || *q == '[') {
                depth++;
            } else if ((*q == '}' || *q == ']') && --depth == 0) {
                break;
            }
        }
        srv_parse_ctx sub = {pc->reals, p, (size_t)(q - p) + (q < end), pc->e};
        return srv_field_seed(&sub, out);
    }
    srv_error_set(pc->e, 422, "invalid_argument", "seed",
                  "seed must be an integer between 0 and 18446744073709551615");
    return 0;
}

/* What TGI has and attnd does not do: refused, not silently ignored. */
static const char *const unsupported[] = {"typical_p", "truncate", "grammar"};

static int parse_parameters(const srv_parse_ctx *pc, json_t *p, int route, srv_job *j,
                            tgi_ctx *c)
{
    srv_json_drop_nulls(p);
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
        if (json_object_get(p, unsupported[i])) {
            srv_error_set(pc->e, 422, "invalid_argument", unsupported[i],
                          "%s is not supported by attnd", unsupported[i]);
            return 0;
        }
    json_int_t mnt = TGI_DEFAULT_NEW_TOKENS, top_k = 0, best_of = 1, top_n = 0;
    double temperature = 1.0, top_p = 1.0, rep = 1.0, freq = 0.0;
    int do_sample = 0, watermark = 0;
    if (!srv_field_integer(pc, p, "max_new_tokens", 1, TGI_MAX_NEW_TOKENS, &mnt) ||
        !srv_field_number(pc, p, "temperature", 0, 100, 1, &temperature) ||
        !srv_field_number(pc, p, "top_p", 0, 1, 1, &top_p) ||
        !srv_field_integer(pc, p, "top_k", 1, 1 << 30, &top_k) ||
        !srv_field_number(pc, p, "repetition_penalty", 0, 10, 1, &rep) ||
        !srv_field_number(pc, p, "frequency_penalty", -2, 2, 0, &freq) ||
        !srv_field_integer(pc, p, "top_n_tokens", 0, TGI_MAX_TOP_N, &top_n) ||
        !srv_field_bool(pc, p, "do_sample", &do_sample) ||
        !srv_field_bool(pc, p, "details", &c->details) ||
        !srv_field_bool(pc, p, "decoder_input_details", &c->prefill) ||
        !srv_field_bool(pc, p, "return_full_text", &c->full_text) ||
        !srv_field_bool(pc, p, "watermark", &watermark))
        return 0;
    if (json_object_get(p, "best_of") &&
        (!srv_field_integer(pc, p, "best_of", 1, 1 << 30, &best_of) || best_of != 1))
        return best_of != 1 ? fail(pc, 422, "best_of",
                                   "best_of must be 1: attnd runs one sequence per request "
                                   "(GET /info: max_best_of)")
                            : 0;
    if (watermark)
        return fail(pc, 422, "watermark", "watermark is not supported by attnd");
    json_t *stop = json_object_get(p, "stop");
    if (stop && !srv_field_stop(pc, stop, j))
        return 0;
    j->max_tokens = (int)mnt;
    /* TGI samples when asked, or when a sampling field is not neutral */
    c->sampled = do_sample || temperature != 1.0 || top_k > 0 || top_p < 1.0;
    j->sampling.temperature = c->sampled ? (float)temperature : 0.0f;
    j->sampling.top_k = c->sampled ? (int)top_k : 0;
    j->sampling.top_p = c->sampled ? srv_top_p(top_p) : 1.0f;
    j->sampling.repetition_penalty = (float)rep;
    j->sampling.frequency_penalty = (float)freq;
    j->sampling.seed = 0;
    if (c->sampled) {
        if (json_object_get(p, "seed")) {
            if (!field_seed(pc, p, &j->sampling.seed))
                return 0;
        } else {
            j->sampling.seed = srv_fresh_seed();
        }
    } else if (json_object_get(p, "seed") && !field_seed(pc, p, &j->sampling.seed)) {
        return 0; /* checked, though greedy decoding does not use it */
    }
    c->top_n = (int)top_n;
    /* a stream's every token has a logprob; a plain answer's only in details */
    j->logprobs = route == TGI_STREAM || j->stream || c->details ? c->top_n : -1;
    j->keep_prompt_ids = c->details || c->top_n > 0;
    /* details.prefill's logprobs (the plain answer's details only) */
    j->prompt_logprobs = c->details && c->prefill && j->logprobs >= 0;
    return 1;
}

static int parse(const srv_parse_ctx *pc, json_t *body, const srv_models *models, int route,
                 srv_job *j, tgi_ctx *c)
{
    srv_json_drop_nulls(body);
    json_t *inputs = json_object_get(body, "inputs");
    if (!json_is_string(inputs))
        return fail(pc, 422, "inputs", inputs ? "inputs must be a string" : "inputs is required");
    if (json_string_length(inputs) == 0)
        return fail(pc, 422, "inputs", "inputs must not be empty");
    j->prompt_len = json_string_length(inputs);
    if (!(j->prompt = malloc(j->prompt_len + 1))) {
        srv_error_set(pc->e, 500, "internal", NULL, "out of memory");
        return 0;
    }
    memcpy(j->prompt, json_string_value(inputs), j->prompt_len + 1);
    /* attnd's extension: which model (TGI serves one) */
    json_t *m = json_object_get(body, "model");
    if (m && !json_is_string(m))
        return fail(pc, 422, "model", "model must be a string");
    j->model = m ? srv_models_get(models, json_string_value(m)) : srv_models_get_default(models);
    if (!j->model) {
        if (!m) {
            srv_error_set(pc->e, 503, "not_ready", NULL, "no text model is loaded");
            return 0;
        }
        srv_error_set(pc->e, 404, "model_not_found", "model", "no model named \"%s\"",
                      json_string_value(m));
        return 0;
    }
    if (strcmp(j->model->kind, "text")) {
        srv_error_set(pc->e, 422, "invalid_argument", "model",
                      "model \"%s\" is a %s model; text generation needs a text model",
                      j->model->name, j->model->kind);
        return 0;
    }
    /* "stream": TGI's compat route reads it; attnd's /generate too (a client
     * whose endpointUrl is .../generate streams to it) */
    j->stream = route == TGI_STREAM;
    if (route != TGI_STREAM && !srv_field_bool(pc, body, "stream", &j->stream))
        return 0;
    json_t *params = json_object_get(body, "parameters");
    if (params && !json_is_object(params))
        return fail(pc, 422, "parameters", "parameters must be an object");
    json_t *empty = params ? NULL : json_object();
    int ok = parse_parameters(pc, params ? params : empty, route, j, c);
    json_decref(empty);
    return ok;
}

int srv_tgi_parse(const char *raw, size_t len, const srv_json_limits *lim,
                  const srv_models *models, const srv_config *cfg, int route, srv_job *j,
                  srv_error *e)
{
    srv_parse_ctx pc = {0, NULL, 0, e};
    json_t *body = srv_parse_object(raw, len, lim, &pc);
    if (!body)
        return -1;
    tgi_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        json_decref(body);
        srv_error_set(e, 500, "internal", NULL, "out of memory");
        return -1;
    }
    j->fmt = &srv_format_tgi;
    j->fmt_ctx = c;
    j->free_fmt_ctx = free;
    c->compat = route == TGI_COMPAT;
    int ok = parse(&pc, body, models, route, j, c);
    json_decref(body);
    j->timeout_ms = cfg->request_timeout_s * 1000;
    return ok ? 0 : -1;
}
