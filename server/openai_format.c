/*
 * openai_format.c — OpenAI's output (format.h, openai.h): the hooks the
 * engine calls, on its thread with the group's mutex held, for every /v1
 * completion request.
 *
 * A stream gets OpenAI's chunks as the tokens come: per choice (chat) a
 * first chunk with the role, or (completions with echo) the prompt; one
 * per token with the text released now and, when asked, that token's
 * log-probabilities; one with the finish reason; then, after every choice
 * has ended, the usage chunk (include_usage) and [DONE].  A plain request
 * gets its whole body from group_end, which reads every child's text,
 * tokens and log-probabilities.
 *
 * Log-probabilities: a token's text is its decoded piece after the token
 * before it (the prompt's last for the first generated token, which is
 * why the children keep their prompt ids), made valid UTF-8 for JSON; chat
 * entries carry the raw bytes as well.  A banned token's -inf is written
 * -9999.0, as vLLM does (JSON has no infinity).  With echo and
 * logprobs, a plain answer lists the prompt's own log-probabilities (the
 * engine's prompt_lps; the first token's null, as OpenAI answers); a
 * stream's echo chunk is written before the prefill, so its are null.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "error.h"
#include "openai.h"

void srv_openai_ctx_free(void *p)
{
    srv_openai_ctx *c = p;
    if (c)
        free(c->pos);
    free(c);
}

static srv_openai_ctx *ctx_of(srv_job *j) { return srv_job_out(j)->fmt_ctx; }

/* A token as the logprobs see it: its id, the one before it, its entries
 * (NULL for a prompt token). */
typedef struct tok_ref {
    int id, prev;
    const tfm_token_logprob *lp;
} tok_ref;

static int last_prompt_id(const srv_job *j)
{
    return j->prompt_ids && j->prompt_tokens > 0 ? j->prompt_ids[j->prompt_tokens - 1] : -1;
}

/* Token t of the sequence the logprobs list: the prompt's tokens first
 * when echo, then the generated ones. */
static tok_ref tok_at(const srv_job *j, int echo, int t)
{
    tok_ref r = {0, -1, NULL};
    int np = echo && j->prompt_ids ? j->prompt_tokens : 0;
    if (t < np) {
        r.id = j->prompt_ids[t];
        r.prev = t ? j->prompt_ids[t - 1] : -1;
        /* the first prompt token has none (null, as OpenAI answers) */
        if (t > 0 && j->prompt_lps)
            r.lp = j->prompt_lps + (size_t)t * srv_job_lp_width(j);
        return r;
    }
    int g = t - np;
    r.id = j->tokens[g];
    r.prev = g ? j->tokens[g - 1] : last_prompt_id(j);
    r.lp = j->lps + (size_t)g * srv_job_lp_width(j);
    return r;
}

static void piece_of(const srv_job *j, int prev, int id, const char **p, size_t *n)
{
    if (tfm_tokenizer_decode(j->model->tok, prev, id, p, n) != TFM_OK) {
        *p = "";
        *n = 0;
    }
}

static void put(srv_buf *b, const char *s) { srv_buf_append(b, s, strlen(s)); }

static void put_lp(srv_buf *b, float lp)
{
    if (!isfinite(lp) || lp < -9999.0f)
        put(b, "-9999.0");
    else
        srv_buf_printf(b, "%.9g", (double)lp);
}

/* Completions' top_logprobs entry: {text: logprob} of the alternatives, the
 * first of two with the same text kept. */
static void alt_dict(srv_buf *b, const srv_job *j, int prev, const tfm_token_logprob *lp)
{
    size_t key[TFM_MAX_TOP_LOGPROBS][2];
    int nk = 0;
    put(b, "{");
    for (int a = 1; a <= j->logprobs; a++) {
        const char *p;
        size_t n, mark = b->len;
        piece_of(j, prev, lp[a].id, &p, &n);
        if (nk)
            put(b, ",");
        size_t ks = b->len;
        srv_json_string(b, p, n);
        size_t kl = b->len - ks;
        int dup = 0;
        for (int i = 0; i < nk && !dup; i++)
            dup = key[i][1] == kl && !memcmp(b->p + key[i][0], b->p + ks, kl);
        if (dup) {
            b->len = mark;
            b->p[b->len] = 0;
            continue;
        }
        key[nk][0] = ks;
        key[nk++][1] = kl;
        put(b, ":");
        put_lp(b, lp[a].logprob);
    }
    put(b, "}");
}

/* Completions' logprobs object over tokens [t0, t1) (tok_at), the first at
 * byte offset off of the choice's text. */
static void completion_lps(srv_buf *b, const srv_job *j, int echo, int t0, int t1, size_t off)
{
    const char *p;
    size_t n;
    put(b, "{\"tokens\":[");
    for (int t = t0; t < t1; t++) {
        tok_ref r = tok_at(j, echo, t);
        piece_of(j, r.prev, r.id, &p, &n);
        if (t > t0)
            put(b, ",");
        srv_json_string(b, p, n);
    }
    put(b, "],\"token_logprobs\":[");
    for (int t = t0; t < t1; t++) {
        tok_ref r = tok_at(j, echo, t);
        if (t > t0)
            put(b, ",");
        if (r.lp)
            put_lp(b, r.lp[0].logprob);
        else
            put(b, "null");
    }
    put(b, "],\"top_logprobs\":[");
    for (int t = t0; t < t1; t++) {
        tok_ref r = tok_at(j, echo, t);
        if (t > t0)
            put(b, ",");
        if (r.lp)
            alt_dict(b, j, r.prev, r.lp);
        else
            put(b, "null");
    }
    put(b, "],\"text_offset\":[");
    for (int t = t0; t < t1; t++) {
        tok_ref r = tok_at(j, echo, t);
        piece_of(j, r.prev, r.id, &p, &n);
        srv_buf_printf(b, t > t0 ? ",%zu" : "%zu", off);
        off += n;
    }
    put(b, "]}");
}

/* One chat logprobs entry without its closing brace:
 * {"token", "logprob", "bytes" */
static void chat_entry(srv_buf *b, const char *p, size_t n, float lp)
{
    put(b, "{\"token\":");
    srv_json_string(b, p, n);
    put(b, ",\"logprob\":");
    put_lp(b, lp);
    put(b, ",\"bytes\":[");
    for (size_t i = 0; i < n; i++)
        srv_buf_printf(b, i ? ",%u" : "%u", (unsigned)(unsigned char)p[i]);
    put(b, "]");
}

/* A chat logprobs entry of a generated token, its alternatives inside. */
static void chat_lp(srv_buf *b, const srv_job *j, tok_ref r)
{
    const char *p;
    size_t n;
    piece_of(j, r.prev, r.id, &p, &n);
    chat_entry(b, p, n, r.lp[0].logprob);
    put(b, ",\"top_logprobs\":[");
    for (int a = 1; a <= j->logprobs; a++) {
        piece_of(j, r.prev, r.lp[a].id, &p, &n);
        if (a > 1)
            put(b, ",");
        chat_entry(b, p, n, r.lp[a].logprob);
        put(b, "}");
    }
    put(b, "]}");
}

static const char *finish_name(srv_finish f)
{
    switch (f) {
    case SRV_FINISH_LENGTH: return "length";
    case SRV_FINISH_TIMEOUT: return "timeout";
    default: return "stop"; /* eos and stop strings */
    }
}

/* How many generated tokens a choice's logprobs list: all, but after a
 * stop string only those that begin before the cut. */
static int listed_tokens(const srv_job *j)
{
    if (j->finish != SRV_FINISH_STOP)
        return j->n_tokens;
    size_t off = 0;
    for (int g = 0; g < j->n_tokens; g++) {
        if (off >= j->text.len)
            return g;
        const char *p;
        size_t n;
        piece_of(j, g ? j->tokens[g - 1] : last_prompt_id(j), j->tokens[g], &p, &n);
        off += n;
    }
    return j->n_tokens;
}

static void chunk_head(srv_buf *b, const srv_openai_ctx *c, const srv_job *j)
{
    srv_buf_printf(b, "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", c->id,
                   c->chat ? "chat.completion.chunk" : "text_completion", c->created);
    srv_json_string(b, j->model->name, strlen(j->model->name));
    put(b, ",\"choices\":[");
}

static void chunk_tail(srv_buf *b, const srv_openai_ctx *c)
{
    put(b, "]");
    if (c->include_usage)
        put(b, ",\"usage\":null");
    put(b, "}\n\n");
}

static void usage(srv_buf *b, const srv_job *g, const srv_openai_ctx *c)
{
    int prompt = 0, completion = 0;
    for (int i = 0; i < g->n_children; i++) {
        const srv_job *j = g->children[i];
        if (i % c->n == 0) /* each prompt once */
            prompt += j->prompt_tokens;
        completion += j->n_tokens;
    }
    srv_buf_printf(b, "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}",
                   prompt, completion, prompt + completion);
}

/* Stream: the first chunk of each choice (chat: the role; completions with
 * echo: the prompt). */
static void on_begin(srv_job *j, srv_buf *b)
{
    srv_job *g = srv_job_out(j);
    srv_openai_ctx *c = ctx_of(j);
    for (int k = 0; k < g->n_children; k++) {
        const srv_job *ch = g->children[k];
        c->pos[k] = c->echo ? ch->prompt_len : 0;
        if (!c->chat && !c->echo)
            continue;
        chunk_head(b, c, j);
        srv_buf_printf(b, "{\"index\":%d,", k);
        if (c->chat) {
            put(b, "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}");
        } else {
            put(b, "\"text\":");
            srv_json_string(b, ch->prompt, ch->prompt_len);
        }
        put(b, ",\"logprobs\":null,\"finish_reason\":null}");
        chunk_tail(b, c);
    }
}

static void on_token(srv_job *j, srv_buf *b, int tok, const char *text, size_t n,
                     const tfm_token_logprob *lp)
{
    (void)tok;
    srv_openai_ctx *c = ctx_of(j);
    if (!j->stream)
        return;
    if (n == 0 && !lp)
        return; /* held back (a possible stop string, a split character) */
    int k = j->index;
    const char *p;
    size_t pn;
    tok_ref r = {tok, j->n_tokens >= 2 ? j->tokens[j->n_tokens - 2] : last_prompt_id(j), lp};
    piece_of(j, r.prev, r.id, &p, &pn);
    chunk_head(b, c, j);
    srv_buf_printf(b, "{\"index\":%d,", k);
    if (c->chat) {
        put(b, "\"delta\":{\"content\":");
        srv_json_string(b, text, n);
        put(b, "},\"logprobs\":");
        if (lp) {
            put(b, "{\"content\":[");
            chat_lp(b, j, r);
            put(b, "]}");
        } else {
            put(b, "null");
        }
    } else {
        put(b, "\"text\":");
        srv_json_string(b, text, n);
        put(b, ",\"logprobs\":");
        if (lp) {
            /* one token: the last generated */
            int t = (c->echo ? j->prompt_tokens : 0) + j->n_tokens - 1;
            completion_lps(b, j, c->echo, t, t + 1, c->pos[k]);
        } else {
            put(b, "null");
        }
    }
    put(b, ",\"finish_reason\":null}");
    chunk_tail(b, c);
    c->pos[k] += pn;
}

static void on_end(srv_job *j, srv_buf *b, srv_finish why)
{
    srv_openai_ctx *c = ctx_of(j);
    if (!j->stream)
        return; /* the body comes from group_end */
    const char *held = j->text.p ? j->text.p + j->released : "";
    size_t n = j->text.len - j->released;
    j->released = j->text.len;
    if (c->chat && n) {
        chunk_head(b, c, j);
        srv_buf_printf(b, "{\"index\":%d,\"delta\":{\"content\":", j->index);
        srv_json_string(b, held, n);
        put(b, "},\"logprobs\":null,\"finish_reason\":null}");
        chunk_tail(b, c);
    }
    chunk_head(b, c, j);
    srv_buf_printf(b, "{\"index\":%d,", j->index);
    if (c->chat) {
        put(b, "\"delta\":{}");
    } else {
        put(b, "\"text\":");
        srv_json_string(b, held, n);
    }
    srv_buf_printf(b, ",\"logprobs\":null,\"finish_reason\":\"%s\"}", finish_name(why));
    chunk_tail(b, c);
}

static void completion_choice(srv_buf *b, const srv_job *j, const srv_openai_ctx *c)
{
    srv_buf_printf(b, "{\"index\":%d,\"text\":", j->index);
    if (c->echo) {
        /* one string: the prompt, then the text */
        srv_buf tmp = {0};
        srv_buf_append(&tmp, j->prompt, j->prompt_len);
        srv_buf_append(&tmp, j->text.p ? j->text.p : "", j->text.len);
        srv_json_string(b, tmp.p ? tmp.p : "", tmp.len);
        srv_buf_free(&tmp);
    } else {
        srv_json_string(b, j->text.p ? j->text.p : "", j->text.len);
    }
    put(b, ",\"logprobs\":");
    if (j->logprobs >= 0) {
        int np = c->echo && j->prompt_ids ? j->prompt_tokens : 0;
        completion_lps(b, j, c->echo, 0, np + listed_tokens(j), 0);
    } else {
        put(b, "null");
    }
    srv_buf_printf(b, ",\"finish_reason\":\"%s\"}", finish_name(j->finish));
}

static void chat_choice(srv_buf *b, const srv_job *j)
{
    srv_buf_printf(b, "{\"index\":%d,\"message\":{\"role\":\"assistant\",\"content\":", j->index);
    srv_json_string(b, j->text.p ? j->text.p : "", j->text.len);
    put(b, "},\"logprobs\":");
    if (j->logprobs >= 0) {
        put(b, "{\"content\":[");
        int nt = listed_tokens(j);
        for (int t = 0; t < nt; t++) {
            if (t)
                put(b, ",");
            chat_lp(b, j, tok_at(j, 0, t));
        }
        put(b, "]}");
    } else {
        put(b, "null");
    }
    srv_buf_printf(b, ",\"finish_reason\":\"%s\"}", finish_name(j->finish));
}

static void on_group_end(srv_job *g, srv_buf *b)
{
    srv_openai_ctx *c = g->fmt_ctx;
    if (g->stream) {
        if (c->include_usage) {
            chunk_head(b, c, g);
            put(b, "],");
            usage(b, g, c);
            put(b, "}\n\n");
        }
        put(b, "data: [DONE]\n\n");
        return;
    }
    srv_buf_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", c->id,
                   c->chat ? "chat.completion" : "text_completion", c->created);
    srv_json_string(b, g->model->name, strlen(g->model->name));
    put(b, ",\"choices\":[");
    for (int k = 0; k < g->n_children; k++) {
        if (k)
            put(b, ",");
        if (c->chat)
            chat_choice(b, g->children[k]);
        else
            completion_choice(b, g->children[k], c);
    }
    put(b, "],");
    usage(b, g, c);
    put(b, "}");
}

static void on_error(srv_job *j, srv_buf *b, int status, const char *code, const char *msg,
                     const char *field)
{
    srv_openai_ctx *c = ctx_of(j);
    int began = srv_job_began(j);
    if (c && c->chat && field && !strcmp(field, "prompt"))
        field = "messages"; /* the rendered prompt is the messages' */
    if (began)
        put(b, "data: ");
    put(b, "{\"error\":{\"message\":");
    srv_json_string(b, msg, strlen(msg));
    srv_buf_printf(b, ",\"type\":\"%s\",\"param\":", srv_openai_error_type(status));
    if (field)
        srv_json_string(b, field, strlen(field));
    else
        put(b, "null");
    put(b, ",\"code\":");
    srv_json_string(b, code, strlen(code));
    put(b, "}}");
    if (began)
        put(b, "\n\ndata: [DONE]\n\n");
}

const srv_format srv_format_openai = {on_begin, on_token, on_end, on_group_end, on_error};
