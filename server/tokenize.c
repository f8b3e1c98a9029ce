/*
 * tokenize.c — POST /tokenize and POST /detokenize, in llama-server's
 * shapes, with a text model's own tokenizer (the one /generate uses).
 *
 *   /tokenize   {"content": str, "add_special": bool, "with_pieces": bool,
 *                "model": str}  ->  {"tokens": [id]}, or with pieces
 *               {"tokens": [{"id": id, "piece": str | [byte]}]}
 *   /detokenize {"tokens": [id], "model": str}  ->  {"content": str}
 *
 * add_special (default false, as llama-server) puts the BOS token first,
 * as the engine does for every prompt; the llama2.c tokenizer's
 * dummy-prefix space is part of its encoding either way.  A piece is the
 * token's own bytes, decoded without the token before it (so a llama2.c
 * piece keeps its leading space; BOS and EOS are ""), as a string when
 * those bytes are valid UTF-8 and else as the array of byte values (a byte
 * token inside a multi-byte character), as llama-server does.
 * /detokenize decodes each token after the one before it, exactly as the
 * engine builds a generation's text, and repairs invalid UTF-8 (U+FFFD).
 *
 * These are attnd's own routes: unknown fields are 422, and so is a
 * recall model (it reads MQAR symbols, not text); an unknown model is 404.
 * Both run on libmicrohttpd's thread, like the other small routes: the
 * body limits (256 KiB strings) bound the work.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

static const char *const tokenize_known[] = {"content", "add_special", "with_pieces", "model"};
static const char *const detokenize_known[] = {"tokens", "model"};

/* Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2
                                : (c & 0xF8) == 0xF0 ? 3 : 9;
        if (k == 9 || i + k >= n)
            return 0;
        unsigned cp = k ? c & (0x3F >> k) : c;
        for (size_t t = 1; t <= k; t++) {
            if ((s[i + t] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + t] & 0x3F);
        }
        static const unsigned min[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* The body as an object of known members, or NULL after the reply. */
static json_t *body_of(srv_req *r, const char *const *known, size_t n)
{
    srv_app *app = r->app;
    if (!atomic_load(&app->ready)) {
        srv_reply_error(r, 503, "not_ready", NULL, "models are loading");
        return NULL;
    }
    json_t *body = srv_req_json_body(r);
    if (!body)
        return NULL;
    srv_error e;
    if (!json_is_object(body)) {
        srv_reply_error(r, 422, "invalid_argument", NULL, "the body must be a JSON object");
    } else if (srv_json_known_fields(body, known, n, &e)) {
        srv_reply_err(r, &e);
    } else {
        return body;
    }
    json_decref(body);
    return NULL;
}

/* "model": a text model (absent: the default), a reference; NULL after
 * the reply. */
static const srv_model *model_of(srv_req *r, json_t *body)
{
    json_t *m = json_object_get(body, "model");
    if (m && !json_is_string(m)) {
        srv_reply_error(r, 422, "invalid_argument", "model", "model must be a string");
        return NULL;
    }
    const srv_model *mod = m ? srv_models_get(&r->app->models, json_string_value(m))
                             : srv_models_get_default(&r->app->models);
    if (!mod && m)
        srv_reply_error(r, 404, "model_not_found", "model", "no model named \"%s\"",
                        json_string_value(m));
    else if (!mod)
        srv_reply_error(r, 503, "not_ready", NULL, "no text model is loaded");
    else if (strcmp(mod->kind, "text"))
        srv_reply_error(r, 422, "invalid_argument", "model",
                        "model \"%s\" is a %s model; it has no text tokenizer", mod->name,
                        mod->kind);
    else
        return mod;
    srv_model_put(mod);
    return NULL;
}

static int field_bool(srv_req *r, json_t *body, const char *key, int *out)
{
    json_t *v = json_object_get(body, key);
    if (!v)
        return 1;
    if (!json_is_boolean(v)) {
        srv_reply_error(r, 422, "invalid_argument", key, "%s must be true or false", key);
        return 0;
    }
    *out = json_is_true(v);
    return 1;
}

void srv_route_tokenize(srv_req *r)
{
    json_t *body = body_of(r, tokenize_known, sizeof tokenize_known / sizeof *tokenize_known);
    if (!body)
        return;
    int add_special = 0, with_pieces = 0, *ids = NULL;
    srv_buf b = {0};
    json_t *content = json_object_get(body, "content");
    const srv_model *m = model_of(r, body);
    if (!m || !field_bool(r, body, "add_special", &add_special) ||
        !field_bool(r, body, "with_pieces", &with_pieces))
        goto done;
    if (!json_is_string(content)) {
        srv_reply_error(r, 422, "invalid_argument", "content", "%s",
                        content ? "content must be a string" : "content is required");
        goto done;
    }
    const char *text = json_string_value(content);
    size_t len = json_string_length(content);
    /* at most one id per byte, BOS and the dummy prefix */
    int cap = (int)len + 3, n = 0;
    ids = malloc((size_t)cap * sizeof *ids);
    tfm_status st = ids ? tfm_tokenizer_encode(m->tok, text, len, add_special, 0, ids, cap, &n)
                        : TFM_E_NOMEM;
    if (st != TFM_OK) {
        srv_reply_error(r, 500, "internal", NULL, "tokenizing failed: %s", tfm_strerror(st));
        goto done;
    }
    srv_buf_append(&b, "{\"tokens\":[", 11);
    for (int i = 0; i < n; i++) {
        if (i)
            srv_buf_append(&b, ",", 1);
        if (!with_pieces) {
            srv_buf_printf(&b, "%d", ids[i]);
            continue;
        }
        const char *p = "";
        size_t pn = 0;
        tfm_tokenizer_decode(m->tok, -1, ids[i], &p, &pn);
        srv_buf_printf(&b, "{\"id\":%d,\"piece\":", ids[i]);
        if (valid_utf8((const unsigned char *)p, pn)) {
            srv_json_string(&b, p, pn);
        } else {
            srv_buf_append(&b, "[", 1);
            for (size_t k = 0; k < pn; k++)
                srv_buf_printf(&b, k ? ",%u" : "%u", (unsigned char)p[k]);
            srv_buf_append(&b, "]", 1);
        }
        srv_buf_append(&b, "}", 1);
    }
    if (srv_buf_append(&b, "]}", 2))
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
    else
        srv_reply(r, 200, "application/json", b.p, b.len);
done:
    srv_model_put(m);
    free(ids);
    srv_buf_free(&b);
    json_decref(body);
}

void srv_route_detokenize(srv_req *r)
{
    json_t *body =
        body_of(r, detokenize_known, sizeof detokenize_known / sizeof *detokenize_known);
    if (!body)
        return;
    srv_buf text = {0}, b = {0};
    json_t *tokens = json_object_get(body, "tokens");
    const srv_model *m = model_of(r, body);
    if (!m)
        goto done;
    if (!json_is_array(tokens)) {
        srv_reply_error(r, 422, "invalid_argument", "tokens", "%s",
                        tokens ? "tokens must be an array of token ids" : "tokens is required");
        goto done;
    }
    int vocab = tfm_tokenizer_vocab_size(m->tok), prev = -1;
    for (size_t i = 0; i < json_array_size(tokens); i++) {
        json_t *v = json_array_get(tokens, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= vocab) {
            srv_reply_error(r, 422, "invalid_argument", "tokens",
                            "tokens[%zu] must be a token id between 0 and %d (model %s)", i,
                            vocab - 1, m->name);
            goto done;
        }
        int id = (int)json_integer_value(v);
        const char *p = "";
        size_t pn = 0;
        tfm_tokenizer_decode(m->tok, prev, id, &p, &pn);
        srv_buf_append(&text, p, pn);
        prev = id;
    }
    srv_buf_append(&b, "{\"content\":", 11);
    srv_json_string(&b, text.p ? text.p : "", text.len);
    if (srv_buf_append(&b, "}", 1))
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
    else
        srv_reply(r, 200, "application/json", b.p, b.len);
done:
    srv_model_put(m);
    srv_buf_free(&text);
    srv_buf_free(&b);
    json_decref(body);
}
