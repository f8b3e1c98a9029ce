/*
 * openai_parse.c — the validator of POST /v1/completions and POST
 * /v1/chat/completions (srv_openai_parse, validate.h): raw body bytes to
 * a filled group job, or an srv_error.  No connection: the routes
 * (openai.c) and the fuzz target call the very same function.
 *
 * Every completion request is a group (engine.h), even one choice of one
 * prompt: one child per choice (prompt i, choice j is child i * n + j,
 * sampling with seed + j, and sharing the prefill of the prompt's first
 * choice).  The per-request state the output hooks need (id, created,
 * what was asked) is the group's fmt_ctx (openai.h).
 *
 * Validation differs from attnd's own routes on purpose: clients send
 * fields they do not need (OpenAI's SDKs, LangChain), so unknown fields
 * are ignored, and a member whose value is null counts as absent.  A known
 * field with a bad value is still a 422 naming it (param), malformed JSON
 * a 400.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "openai.h"
#include "validate.h"

#define OAI_MAX_PROMPTS 16
#define OAI_MAX_N 16
#define OAI_MAX_SEQS 64      /* prompts x n */
#define OAI_MAX_MESSAGES 256
#define OAI_MAX_BIAS 1024
#define OAI_MAX_TOKENS 4096
#define OAI_COMPLETION_DEFAULT_TOKENS 16
#define OAI_MAX_LOGPROBS 5   /* /v1/completions' logprobs */

/* splitmix64's finaliser: the request ids' bits */
static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* ---- validation ---------------------------------------------------------------- */
static int fail(const srv_parse_ctx *pc, int status, const char *code, const char *field,
                const char *msg)
{
    srv_error_set(pc->e, status, code, field, "%s", msg);
    return 0;
}

static int field_model(const srv_parse_ctx *pc, json_t *body, const srv_models *models,
                       srv_job *t)
{
    json_t *m = json_object_get(body, "model");
    if (m && !json_is_string(m))
        return fail(pc, 422, "invalid_argument", "model", "model must be a string");
    /* @huggingface/inference 4, given an endpointUrl and no model, sends
     * the URL as the model: the endpoint is the choice, so its default */
    const char *name = m ? json_string_value(m) : NULL;
    if (name && (!strncmp(name, "http://", 7) || !strncmp(name, "https://", 8)) &&
        !srv_models_has(models, name))
        m = NULL;
    t->model = m ? srv_models_get(models, name) : srv_models_get_default(models);
    if (!t->model && !m)
        return fail(pc, 503, "not_ready", NULL, "no text model is loaded");
    if (!t->model || strcmp(t->model->kind, "text")) {
        srv_error_set(pc->e, 404, "model_not_found", "model",
                      t->model ? "model \"%s\" is a recall model; the /v1 routes serve text models"
                               : "The model \"%s\" does not exist",
                      json_string_value(m));
        return 0;
    }
    return 1;
}

/* logit_bias: {"<token id>": bias in [-100, 100]} into t->bias. */
static int field_logit_bias(const srv_parse_ctx *pc, json_t *body, srv_job *t)
{
    json_t *lb = json_object_get(body, "logit_bias");
    if (!lb)
        return 1;
    if (!json_is_object(lb))
        return fail(pc, 422, "invalid_argument", "logit_bias",
                    "logit_bias must be an object mapping token ids to numbers");
    size_t n = json_object_size(lb);
    if (n > OAI_MAX_BIAS) {
        srv_error_set(pc->e, 422, "invalid_argument", "logit_bias",
                      "logit_bias takes at most %d tokens", OAI_MAX_BIAS);
        return 0;
    }
    if (n == 0)
        return 1;
    if (!(t->bias = malloc(n * sizeof *t->bias)))
        return fail(pc, 500, "internal", NULL, "out of memory");
    int vocab = t->model->model->cfg.vocab_size, i = 0;
    const char *key;
    json_t *v;
    json_object_foreach(lb, key, v)
    {
        char *end;
        long id = strtol(key, &end, 10);
        if (!*key || *end || key[0] < '0' || key[0] > '9' || strlen(key) > 9 || id >= vocab) {
            srv_error_set(pc->e, 422, "invalid_argument", "logit_bias",
                          "logit_bias key \"%.40s\" is not a token id of model %s (0 to %d)", key,
                          t->model->name, vocab - 1);
            return 0;
        }
        double d = json_is_number(v) ? json_number_value(v) : NAN;
        if (!(d >= -100 && d <= 100))
            return fail(pc, 422, "invalid_argument", "logit_bias",
                        "each logit_bias value must be a number between -100 and 100");
        t->bias[i].id = (int)id;
        t->bias[i++].bias = (float)d;
    }
    t->sampling.logit_bias = t->bias;
    t->sampling.n_logit_bias = i;
    return 1;
}

/* The fields both routes take, into the template job t and the context. */
static int parse_common(const srv_parse_ctx *pc, json_t *body, const srv_models *models,
                        const srv_config *cfg, int chat, srv_job *t, srv_openai_ctx *c)
{
    if (!field_model(pc, body, models, t))
        return 0;
    json_int_t mt = chat ? OAI_MAX_TOKENS : OAI_COMPLETION_DEFAULT_TOKENS, n = 1, top_k = 0;
    if (!srv_field_integer(pc, body, "max_tokens", 1, OAI_MAX_TOKENS, &mt) ||
        (chat && !srv_field_integer(pc, body, "max_completion_tokens", 1, OAI_MAX_TOKENS, &mt)) ||
        !srv_field_integer(pc, body, "n", 1, OAI_MAX_N, &n) ||
        !srv_field_integer(pc, body, "top_k", 0, 1 << 30, &top_k))
        return 0;
    t->max_tokens = (int)mt;
    c->n = (int)n;
    double temperature = 1, top_p = 1, min_p = 0, rep = 0, pres = 0, freq = 0;
    if (!srv_field_number(pc, body, "temperature", 0, 2, 0, &temperature) ||
        !srv_field_number(pc, body, "top_p", 0, 1, 1, &top_p) ||
        !srv_field_number(pc, body, "min_p", 0, 1, 0, &min_p) ||
        !srv_field_number(pc, body, "repetition_penalty", 0, 10, 1, &rep) ||
        !srv_field_number(pc, body, "presence_penalty", -2, 2, 0, &pres) ||
        !srv_field_number(pc, body, "frequency_penalty", -2, 2, 0, &freq))
        return 0;
    tfm_sampler_params *s = &t->sampling;
    s->temperature = (float)temperature;
    s->top_p = srv_top_p(top_p);
    s->top_k = (int)top_k;
    s->min_p = (float)min_p;
    s->repetition_penalty = (float)rep;
    s->presence_penalty = (float)pres;
    s->frequency_penalty = (float)freq;
    if (json_object_get(body, "seed")) {
        if (!srv_field_seed(pc, &s->seed))
            return 0;
    } else {
        s->seed = srv_fresh_seed();
    }
    json_t *stop = json_object_get(body, "stop");
    if (stop && !srv_field_stop(pc, stop, t))
        return 0;
    if (!srv_field_bool(pc, body, "stream", &t->stream) ||
        !srv_field_bool(pc, body, "ignore_eos", &t->ignore_eos))
        return 0;
    json_t *so = json_object_get(body, "stream_options");
    if (so) {
        json_t *iu = json_object_get(so, "include_usage");
        if (!json_is_object(so) || (iu && !json_is_boolean(iu) && !json_is_null(iu)))
            return fail(pc, 422, "invalid_argument", "stream_options",
                        "stream_options must be an object {\"include_usage\": true or false}");
        c->include_usage = t->stream && iu && json_is_true(iu);
    }
    json_t *user = json_object_get(body, "user");
    if (user && !json_is_string(user))
        return fail(pc, 422, "invalid_argument", "user", "user must be a string");
    json_int_t lp = -1;
    if (chat) {
        int want = 0;
        if (!srv_field_bool(pc, body, "logprobs", &want) ||
            !srv_field_integer(pc, body, "top_logprobs", 0, TFM_MAX_TOP_LOGPROBS, &lp))
            return 0;
        if (lp >= 0 && !want)
            return fail(pc, 422, "invalid_argument", "top_logprobs",
                        "top_logprobs needs logprobs set to true");
        if (want && lp < 0)
            lp = 0;
    } else {
        if (!srv_field_integer(pc, body, "logprobs", 0, OAI_MAX_LOGPROBS, &lp) ||
            !srv_field_bool(pc, body, "echo", &c->echo))
            return 0;
    }
    t->logprobs = (int)lp;
    t->keep_prompt_ids = c->echo || lp >= 0;
    t->prompt_logprobs = !chat && c->echo && lp >= 0; /* the echoed prompt's */
    if (!field_logit_bias(pc, body, t))
        return 0;
    return srv_field_timeout_ms(pc, body, cfg, &t->timeout_ms);
}

/* A chat message's content: a string, or text parts joined by newlines. */
static int message_content(const srv_parse_ctx *pc, json_t *m, int i, srv_buf *out)
{
    json_t *content = json_object_get(m, "content");
    if (json_is_string(content))
        return !srv_buf_append(out, json_string_value(content), json_string_length(content)) ||
               fail(pc, 500, "internal", NULL, "out of memory");
    if (!content || json_is_null(content)) {
        json_t *role = json_object_get(m, "role");
        if (!strcmp(json_string_value(role), "assistant"))
            return 1; /* an assistant turn with tool calls only */
    } else if (json_is_array(content)) {
        size_t k;
        json_t *part;
        json_array_foreach(content, k, part)
        {
            json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
            if (!json_is_object(part) || !json_is_string(type) ||
                strcmp(json_string_value(type), "text") || !json_is_string(text)) {
                srv_error_set(pc->e, 422, "invalid_argument", "messages",
                              "messages[%d].content[%zu]: only {\"type\": \"text\", \"text\": "
                              "string} parts are supported",
                              i, k);
                return 0;
            }
            if (k)
                srv_buf_append(out, "\n", 1);
            srv_buf_append(out, json_string_value(text), json_string_length(text));
        }
        return 1;
    }
    srv_error_set(pc->e, 422, "invalid_argument", "messages",
                  "messages[%d].content must be a string or an array of text parts", i);
    return 0;
}

/* One chat template pattern with {role} and {content} replaced. */
static void render_one(srv_buf *out, const char *tmpl, const char *role, const srv_buf *content)
{
    for (const char *p = tmpl; *p;) {
        if (!strncmp(p, "{role}", 6)) {
            srv_buf_append(out, role, strlen(role));
            p += 6;
        } else if (!strncmp(p, "{content}", 9)) {
            srv_buf_append(out, content->p ? content->p : "", content->len);
            p += 9;
        } else {
            srv_buf_append(out, p++, 1);
        }
    }
}

/* The messages rendered with the model's chat template (its metadata
 * chat_template and chat_generation_prompt), else the plain one:
 * "<role>: <content>\n" per message, then "assistant:". */
static int render_chat(const srv_parse_ctx *pc, json_t *body, const srv_model *m, srv_buf *out)
{
    json_t *msgs = json_object_get(body, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) < 1 ||
        json_array_size(msgs) > OAI_MAX_MESSAGES) {
        srv_error_set(pc->e, 422, "invalid_argument", "messages", "%s",
                      !msgs ? "messages is required"
                            : "messages must be an array of 1 to 256 message objects");
        return 0;
    }
    const char *tmpl = tfm_model_meta_get(m->model, "chat_template");
    const char *gen = tfm_model_meta_get(m->model, "chat_generation_prompt");
    if (!gen)
        gen = tmpl ? "" : "assistant:";
    if (!tmpl)
        tmpl = "{role}: {content}\n";
    static const char *const roles[] = {"system", "developer", "user", "assistant"};
    size_t i;
    json_t *msg;
    json_array_foreach(msgs, i, msg)
    {
        json_t *role = json_is_object(msg) ? json_object_get(msg, "role") : NULL;
        int r = -1;
        for (int k = 0; json_is_string(role) && k < 4; k++)
            if (!strcmp(json_string_value(role), roles[k]))
                r = k;
        if (r < 0) {
            srv_error_set(pc->e, 422, "invalid_argument", "messages",
                          "messages[%zu] must be an object with a role of \"system\", "
                          "\"developer\", \"user\" or \"assistant\"",
                          i);
            return 0;
        }
        srv_buf content = {0};
        int ok = message_content(pc, msg, (int)i, &content);
        if (ok)
            render_one(out, tmpl, r == 1 ? "system" : roles[r], &content);
        srv_buf_free(&content);
        if (!ok)
            return 0;
    }
    srv_buf_append(out, gen, strlen(gen));
    return 1;
}

/* ---- the completion routes ---------------------------------------------------- */


static char *dup_bytes(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* The children of g: prompt i's choice k is child i * n + k. */
static int fill_children(srv_job *g, const srv_job *t, const srv_openai_ctx *c,
                         char **prompts, const size_t *lens)
{
    for (int x = 0; x < g->n_children; x++) {
        srv_job *ch = g->children[x];
        int i = x / c->n, k = x % c->n;
        ch->prompt_len = lens[i];
        ch->model = srv_model_hold(t->model); /* each job owns a reference */
        ch->max_tokens = t->max_tokens;
        ch->sampling = t->sampling;
        ch->sampling.seed = t->sampling.seed + (uint64_t)k;
        ch->stream = t->stream;
        ch->fmt = &srv_format_openai;
        ch->logprobs = t->logprobs;
        ch->keep_prompt_ids = t->keep_prompt_ids;
        ch->prompt_logprobs = t->prompt_logprobs;
        ch->ignore_eos = t->ignore_eos;
        ch->timeout_ms = t->timeout_ms;
        ch->share = k ? g->children[i * c->n] : NULL;
        if (!(ch->prompt = dup_bytes(prompts[i], lens[i])))
            return -1;
        if (t->sampling.n_logit_bias) {
            size_t sz = (size_t)t->sampling.n_logit_bias * sizeof *t->bias;
            if (!(ch->bias = malloc(sz)))
                return -1;
            memcpy(ch->bias, t->bias, sz);
            ch->sampling.logit_bias = ch->bias;
        }
        for (int s = 0; s < t->n_stop; s++) {
            if (!(ch->stop[s] = dup_bytes(t->stop[s], t->stop_len[s])))
                return -1;
            ch->stop_len[s] = t->stop_len[s];
            ch->n_stop = s + 1;
        }
    }
    return 0;
}


/* The prompts: completions' prompt (a string or 1..16 strings), or the
 * rendered chat (one, in *rendered).  Borrowed from body or rendered. */
static int parse_prompts(const srv_parse_ctx *pc, json_t *body, int chat, const srv_model *m,
                         srv_buf *rendered, char **prompts, size_t *lens, int *np)
{
    if (chat) {
        if (!render_chat(pc, body, m, rendered))
            return 0;
        prompts[0] = rendered->p ? rendered->p : "";
        lens[0] = rendered->len;
        *np = 1;
        return 1;
    }
    json_t *p = json_object_get(body, "prompt");
    if (json_is_string(p)) {
        prompts[0] = (char *)json_string_value(p);
        lens[0] = json_string_length(p);
        *np = 1;
        return 1;
    }
    size_t n = json_is_array(p) ? json_array_size(p) : 0;
    int ok = n >= 1 && n <= OAI_MAX_PROMPTS;
    for (size_t i = 0; ok && i < n; i++) {
        json_t *s = json_array_get(p, i);
        ok = json_is_string(s);
        prompts[i] = (char *)json_string_value(s);
        lens[i] = json_string_length(s);
    }
    if (!ok)
        return fail(pc, 422, "invalid_argument", "prompt",
                    !p ? "prompt is required"
                       : "prompt must be a string or an array of 1 to 16 strings (token id "
                         "prompts are not supported)");
    *np = (int)n;
    return 1;
}

int srv_openai_parse(const char *raw, size_t len, const srv_json_limits *lim,
                     const srv_models *models, const srv_config *cfg, int chat, srv_job *g,
                     srv_error *e)
{
    srv_parse_ctx pc = {0, NULL, 0, e};
    json_t *body = srv_parse_object(raw, len, lim, &pc);
    if (!body)
        return -1;
    srv_json_drop_nulls(body);
    srv_job *t = srv_job_create();
    srv_openai_ctx *c = calloc(1, sizeof *c);
    srv_buf rendered = {0};
    char *prompts[OAI_MAX_PROMPTS];
    size_t lens[OAI_MAX_PROMPTS];
    int np = 0, ok = 0;
    if (!t || !c)
        goto oom;
    c->chat = chat;
    if (!parse_common(&pc, body, models, cfg, chat, t, c) ||
        !parse_prompts(&pc, body, chat, t->model, &rendered, prompts, lens, &np))
        goto out;
    if (np * c->n > OAI_MAX_SEQS) {
        srv_error_set(e, 422, "invalid_argument", "n",
                      "%d prompts x n %d is %d sequences; the limit is %d", np, c->n, np * c->n,
                      OAI_MAX_SEQS);
        goto out;
    }
    uint64_t a = mix64(srv_fresh_seed()), b = mix64(srv_fresh_seed());
    snprintf(c->id, sizeof c->id, "%s%016llx%016llx", chat ? "chatcmpl-" : "cmpl-",
             (unsigned long long)a, (unsigned long long)b);
    c->created = (long long)time(NULL);
    if (!(c->pos = calloc((size_t)(np * c->n), sizeof *c->pos)))
        goto oom;
    g->model = srv_model_hold(t->model);
    g->stream = t->stream;
    g->fmt = &srv_format_openai;
    g->fmt_ctx = c;
    g->free_fmt_ctx = srv_openai_ctx_free;
    c = NULL; /* the group's now */
    g->timeout_ms = t->timeout_ms;
    if (srv_job_make_group(g, np * ((srv_openai_ctx *)g->fmt_ctx)->n) ||
        fill_children(g, t, g->fmt_ctx, prompts, lens))
        goto oom;
    ok = 1;
    goto out;
oom:
    srv_error_set(e, 500, "internal", NULL, "out of memory");
out:
    srv_buf_free(&rendered);
    srv_openai_ctx_free(c);
    srv_job_unref(t);
    json_decref(body);
    return ok ? 0 : -1;
}

