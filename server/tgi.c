/*
 * tgi.c — Hugging Face text-generation-inference's wire format:
 * POST /generate with TGI's body (generate.c sends a body with a top-level
 * "inputs" here), POST /generate_stream, POST / (TGI's compat route: an
 * array of one answer, or the stream with "stream": true; what
 * @huggingface/inference 3.x posts to an endpointUrl) and GET /info.
 * A top-level "stream": true streams on /generate as well, and "model"
 * picks one of attnd's models (TGI serves one; absent: the default).
 * The contract: api/openapi.yaml; the notes: spec12.
 *
 * A request is one job (no groups) with this file's output hooks
 * (format.h), which run on the engine thread under the job's mutex; the
 * request's options are the job's fmt_ctx.
 *
 * Streams.  TGI's last event is the last token's own, carrying
 * generated_text and details; only the end tells which token was last, so
 * each token's event waits one step: a token's hook writes the event of
 * the token before it, and the end writes the last one as the final event
 * (an end of sequence is a token of its own there, special and with empty
 * text, as TGI sends it).  A token's text in an event is what the engine
 * released with it (a stop string's prefix and an incomplete UTF-8
 * character are held back, so it may be empty); the final event's carries
 * whatever was held back, so the events' texts concatenated are
 * generated_text.  The pending event needs no copy: its text is a range of
 * j->text below j->released, which a stop string never cuts, and its
 * log-probabilities stay in j->lps.  Every token event has a logprob, so a
 * stream always asks the engine for them (j->logprobs >= 0).
 *
 * Details.  A token's text is its decoded piece after the token before it
 * (the prompt's last for the first), invalid UTF-8 replaced; special is
 * true for BOS and EOS; an end of sequence is listed (and counted in
 * generated_tokens) as TGI does.  The prompt's log-probabilities are not
 * computed: prefill entries have logprob null.  finish_reason: attnd's
 * length → "length", eos → "eos_token", stop → "stop_sequence", and a
 * deadline that passed after the first token (timeout) → "length", the
 * nearest of TGI's three (a budget ran out).
 *
 * Validation follows TGI where it is strict (temperature, top_k,
 * repetition_penalty strictly positive; best_of 1; at most 4 stop
 * sequences) and is lenient where clients send extras: unknown members
 * are ignored and a null counts as absent (huggingface_hub sends every
 * parameter, most of them null).  What attnd cannot do is a 422 rather
 * than silently different output: typical_p, truncate, grammar,
 * watermark true, best_of > 1.  Errors are TGI's {"error", "error_type"}
 * (error_type: attnd's code) with attnd's statuses.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "validate.h"

#ifndef ATTND_VERSION
#define ATTND_VERSION "0.1.0"
#endif

#define TGI_MAX_NEW_TOKENS 4096
#define TGI_DEFAULT_NEW_TOKENS 20 /* TGI's default before 2.x raised it */
#define TGI_MAX_TOP_N 5           /* TGI's --max-top-n-tokens default */

enum { TGI_GENERATE, TGI_STREAM, TGI_COMPAT };

typedef struct tgi_ctx {
    int compat;       /* POST /: the plain answer is an array of one */
    int details;      /* details: true */
    int prefill;      /* decoder_input_details: true */
    int full_text;    /* return_full_text: the inputs before the text */
    int sampled;      /* do_sample or a sampling field: the seed is reported */
    int top_n;        /* top_n_tokens: alternatives per token */
    int pend;         /* stream: 1 + the index of the token whose event waits; 0 none */
    size_t pend_from; /* its text: j->text[pend_from, j->released) */
    int index;        /* stream: events written */
} tgi_ctx;

/* ---- output -------------------------------------------------------------- */

static void put(srv_buf *b, const char *s) { srv_buf_append(b, s, strlen(s)); }

/* JSON has no infinity: a token the sampler could not pick is -9999.0. */
static void put_lp(srv_buf *b, float lp)
{
    if (isfinite(lp))
        srv_buf_printf(b, "%.9g", (double)lp);
    else
        put(b, "-9999.0");
}

static int is_special(const srv_job *j, int id)
{
    return id == tfm_tokenizer_bos(j->model->tok) || id == tfm_tokenizer_eos(j->model->tok);
}

/* The token before generated token t: the one generated before it, or the
 * prompt's last (kept when details or top tokens are asked for). */
static int prev_of(const srv_job *j, int t)
{
    if (t > 0)
        return j->tokens[t - 1];
    return j->prompt_ids && j->prompt_tokens > 0 ? j->prompt_ids[j->prompt_tokens - 1] : -1;
}

/* {"id","text","logprob"[,"special"]}; text NULL: the token's piece after prev. */
static void token_json(srv_buf *b, const srv_job *j, int id, int prev, const char *text, size_t n,
                       const float *lp, int with_special)
{
    if (!text) {
        text = "";
        n = 0;
        tfm_tokenizer_decode(j->model->tok, prev, id, &text, &n);
    }
    srv_buf_printf(b, "{\"id\":%d,\"text\":", id);
    srv_json_string(b, text, n);
    put(b, ",\"logprob\":");
    if (lp)
        put_lp(b, *lp);
    else
        put(b, "null");
    if (with_special)
        put(b, is_special(j, id) ? ",\"special\":true}" : ",\"special\":false}");
    else
        put(b, "}");
}

/* The k alternatives of token t (lp: its entries, the chosen one first). */
static void top_tokens(srv_buf *b, const srv_job *j, int t, const tfm_token_logprob *lp, int k)
{
    put(b, "[");
    for (int i = 1; i <= k; i++) {
        if (i > 1)
            put(b, ",");
        token_json(b, j, lp[i].id, prev_of(j, t), NULL, 0, &lp[i].logprob, 1);
    }
    put(b, "]");
}

/* Token t's entries in lps (t == n_tokens: the end of sequence, which the
 * engine sampled but does not keep in tokens), or NULL. */
static const tfm_token_logprob *lps_of(const srv_job *j, int t)
{
    if (j->logprobs < 0 || !j->lps || t >= j->max_tokens)
        return NULL;
    return j->lps + (size_t)t * (1 + (size_t)j->logprobs);
}

/* The id of the token that ended the sequence (EOS, or BOS for llama2.c). */
static int eos_id(const srv_job *j)
{
    const tfm_token_logprob *lp = lps_of(j, j->n_tokens);
    return lp ? lp->id : tfm_tokenizer_eos(j->model->tok);
}

static const char *finish_name(srv_finish f)
{
    switch (f) {
    case SRV_FINISH_EOS: return "eos_token";
    case SRV_FINISH_STOP: return "stop_sequence";
    default: return "length"; /* length, and timeout (the file's comment) */
    }
}

/* generated_text: the text, after the inputs with return_full_text, as
 * one JSON string (the prompt is valid UTF-8: jansson checked it). */
static void generated_text(srv_buf *b, const srv_job *j, const tgi_ctx *c)
{
    const char *text = j->text.p ? j->text.p : "";
    if (!c->full_text) {
        srv_json_string(b, text, j->text.len);
        return;
    }
    if (srv_json_string(b, j->prompt, j->prompt_len))
        return;
    b->len--; /* the closing quote; the text's opening one goes below */
    size_t q = b->len;
    if (srv_json_string(b, text, j->text.len)) {
        srv_buf_append(b, "\"", 1);
        return;
    }
    memmove(b->p + q, b->p + q + 1, b->len - q - 1);
    b->len--;
}

static void seed_json(srv_buf *b, const srv_job *j, const tgi_ctx *c)
{
    if (c->sampled)
        srv_buf_printf(b, "%llu", (unsigned long long)j->sampling.seed);
    else
        put(b, "null");
}

/* One stream event: token t (id, its text, its entries lp or NULL); the
 * final one has generated_text and details. */
static void event(srv_buf *b, srv_job *j, tgi_ctx *c, int t, int id, const char *text, size_t n,
                  const tfm_token_logprob *lp, srv_finish final)
{
    srv_buf_printf(b, "data: {\"index\":%d,\"token\":", ++c->index);
    token_json(b, j, id, -1, text, n, lp ? &lp->logprob : NULL, 1);
    if (c->top_n > 0 && lp) {
        put(b, ",\"top_tokens\":");
        top_tokens(b, j, t, lp, c->top_n);
    }
    if (final == SRV_FINISH_NONE) {
        put(b, ",\"generated_text\":null,\"details\":null}\n\n");
        return;
    }
    put(b, ",\"generated_text\":");
    generated_text(b, j, c);
    srv_buf_printf(b, ",\"details\":{\"finish_reason\":\"%s\",\"generated_tokens\":%d,\"seed\":",
                   finish_name(final), j->n_tokens + (final == SRV_FINISH_EOS));
    seed_json(b, j, c);
    srv_buf_printf(b, ",\"input_length\":%d}}\n\n", j->prompt_tokens);
}

/* The waiting event, as an ordinary one with its text up to `to`. */
static void flush_pending(srv_buf *b, srv_job *j, tgi_ctx *c, size_t to, srv_finish final)
{
    int t = c->pend - 1;
    c->pend = 0;
    event(b, j, c, t, j->tokens[t], j->text.p + c->pend_from, to - c->pend_from, lps_of(j, t),
          final);
}

static void on_token(srv_job *j, srv_buf *b, int tok, const char *text, size_t n,
                     const tfm_token_logprob *lp)
{
    (void)tok;
    (void)n;
    (void)lp;
    tgi_ctx *c = j->fmt_ctx;
    if (c->pend)
        flush_pending(b, j, c, (size_t)(text - j->text.p), SRV_FINISH_NONE);
    c->pend = j->n_tokens; /* this token is tokens[n_tokens - 1] */
    c->pend_from = (size_t)(text - j->text.p);
}

static void stream_end(srv_job *j, srv_buf *b, tgi_ctx *c, srv_finish why)
{
    size_t end = j->text.len; /* what was held back goes with the last text */
    j->released = end;
    if (why != SRV_FINISH_EOS && c->pend) {
        flush_pending(b, j, c, end, why);
        return;
    }
    if (c->pend)
        flush_pending(b, j, c, end, SRV_FINISH_NONE);
    /* the end of sequence: its own event, the final one */
    int t = j->n_tokens;
    event(b, j, c, t, eos_id(j), "", 0, lps_of(j, t), why);
}

static void details_json(srv_buf *b, srv_job *j, const tgi_ctx *c, srv_finish why)
{
    int eos = why == SRV_FINISH_EOS;
    srv_buf_printf(b, ",\"details\":{\"finish_reason\":\"%s\",\"generated_tokens\":%d,\"seed\":",
                   finish_name(why), j->n_tokens + eos);
    seed_json(b, j, c);
    put(b, ",\"prefill\":[");
    for (int i = 0; c->prefill && j->prompt_ids && i < j->prompt_tokens; i++) {
        if (i)
            put(b, ",");
        token_json(b, j, j->prompt_ids[i], i ? j->prompt_ids[i - 1] : -1, NULL, 0, NULL, 0);
    }
    put(b, "],\"tokens\":[");
    int n = j->n_tokens + eos;
    for (int t = 0; t < n; t++) {
        const tfm_token_logprob *lp = lps_of(j, t);
        if (t)
            put(b, ",");
        if (t < j->n_tokens)
            token_json(b, j, j->tokens[t], prev_of(j, t), NULL, 0, lp ? &lp->logprob : NULL, 1);
        else
            token_json(b, j, eos_id(j), -1, "", 0, lp ? &lp->logprob : NULL, 1);
    }
    put(b, "]");
    if (c->top_n > 0) {
        put(b, ",\"top_tokens\":[");
        for (int t = 0; t < n; t++) {
            const tfm_token_logprob *lp = lps_of(j, t);
            if (t)
                put(b, ",");
            if (lp)
                top_tokens(b, j, t, lp, c->top_n);
            else
                put(b, "[]");
        }
        put(b, "]");
    }
    put(b, "}");
}

static void on_end(srv_job *j, srv_buf *b, srv_finish why)
{
    tgi_ctx *c = j->fmt_ctx;
    if (j->stream) {
        stream_end(j, b, c, why);
        return;
    }
    put(b, c->compat ? "[{\"generated_text\":" : "{\"generated_text\":");
    generated_text(b, j, c);
    if (c->details)
        details_json(b, j, c, why);
    put(b, c->compat ? "}]" : "}");
}

static void on_error(srv_job *j, srv_buf *b, int status, const char *code, const char *msg,
                     const char *field)
{
    (void)status;
    (void)field;
    tgi_ctx *c = j->fmt_ctx;
    int began = srv_job_began(j);
    if (began && c->pend)
        flush_pending(b, j, c, j->released, SRV_FINISH_NONE);
    if (began)
        put(b, "data: ");
    put(b, "{\"error\":");
    srv_json_string(b, msg, strlen(msg));
    put(b, ",\"error_type\":");
    srv_json_string(b, code, strlen(code));
    put(b, began ? "}\n\n" : "}");
}

static const srv_format tgi_format = {NULL, on_token, on_end, NULL, on_error};

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
    j->sampling.top_p = c->sampled ? (float)top_p : 1.0f;
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
    j->model = m ? srv_models_find(models, json_string_value(m)) : srv_models_default(models);
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

/* The body as the generation routes read it (srv_parse_object); NULL
 * with pc->e filled. */
static json_t *load_body(srv_req *r, srv_parse_ctx *pc)
{
    srv_json_limits lim;
    srv_req_json_limits(r, &lim);
    lim.max_string = r->app->cfg.max_body_bytes; /* the inputs may fill the body */
    return srv_parse_object(r->body.p, r->body.len, &lim, pc);
}

/* ---- routes --------------------------------------------------------------- */


static void tgi_route(srv_req *r, int route)
{
    srv_app *app = r->app;
    r->err_style = SRV_ERR_TGI;
    if (!atomic_load(&app->ready)) {
        srv_reply_error(r, 503, "not_ready", NULL, "models are loading");
        return;
    }
    srv_error e = {0};
    srv_parse_ctx pc = {0, NULL, 0, &e};
    json_t *body = load_body(r, &pc);
    if (!body) {
        srv_reply_err(r, &e);
        return;
    }
    srv_job *j = srv_job_create();
    tgi_ctx *c = calloc(1, sizeof *c);
    if (!j || !c) {
        free(c);
        srv_job_unref(j);
        json_decref(body);
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    j->fmt = &tgi_format;
    j->fmt_ctx = c;
    j->free_fmt_ctx = free;
    c->compat = route == TGI_COMPAT;
    int ok = parse(&pc, body, &app->models, route, j, c);
    json_decref(body);
    if (!ok) {
        srv_job_unref(j);
        srv_reply_err(r, &e);
        return;
    }
    j->timeout_ms = app->cfg.request_timeout_s * 1000;
    srv_req_run_job(r, j);
}

void srv_route_tgi_generate(srv_req *r) { tgi_route(r, TGI_GENERATE); }
void srv_route_generate_stream(srv_req *r) { tgi_route(r, TGI_STREAM); }
void srv_route_tgi_compat(srv_req *r) { tgi_route(r, TGI_COMPAT); }

/* GET /info: TGI's fields for the default text model (what /generate
 * serves without "model"). */
void srv_route_info(srv_req *r)
{
    srv_app *app = r->app;
    r->err_style = SRV_ERR_TGI;
    const srv_model *m = atomic_load(&app->ready) ? srv_models_default(&app->models) : NULL;
    if (!m) {
        srv_reply_error(r, 503, "not_ready", NULL,
                        atomic_load(&app->ready) ? "no text model is loaded" : "models are loading");
        return;
    }
    int seq = m->model->cfg.seq_len;
    const srv_config *cfg = &app->cfg;
    json_t *v = json_pack(
        "{s:s,s:n,s:s,s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:I,s:i,s:i,s:s,s:s,s:n,s:n}",
        "model_id", m->name, "model_sha", "model_dtype", "float32", "model_device_type", "cpu",
        "model_pipeline_tag", "text-generation", "max_concurrent_requests",
        cfg->max_batch + cfg->queue_depth, "max_best_of", 1, "max_stop_sequences", SRV_MAX_STOP,
        "max_input_tokens", seq - 1, "max_input_length", seq - 1, "max_total_tokens", seq,
        "max_batch_size", cfg->max_batch, "max_batch_total_tokens",
        (json_int_t)cfg->max_batch * seq, "max_client_batch_size", 1, "max_top_n_tokens",
        TGI_MAX_TOP_N, "router", "attnd", "version", ATTND_VERSION, "sha", "docker_label");
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!s) {
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    srv_reply_json(r, 200, s);
    free(s);
}
