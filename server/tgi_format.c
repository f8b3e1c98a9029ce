/*
 * tgi_format.c — TGI's answers (format.h hooks; tgi.c tells how they
 * follow TGI): the plain body with details, the array of POST /, and the
 * stream's events, each token's written one step late so that the last is
 * TGI's final event.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "tgi.h"

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
    return j->lps + (size_t)t * srv_job_lp_width(j);
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
        /* the first prompt token has none: null, as TGI answers */
        const tfm_token_logprob *lp =
            i && j->prompt_lps ? j->prompt_lps + (size_t)i * srv_job_lp_width(j) : NULL;
        token_json(b, j, j->prompt_ids[i], i ? j->prompt_ids[i - 1] : -1, NULL, 0,
                   lp ? &lp->logprob : NULL, 0);
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

const srv_format srv_format_tgi = {NULL, on_token, on_end, NULL, on_error};

