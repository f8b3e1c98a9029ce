/*
 * openai.c — OpenAI's wire format: POST /v1/completions, POST
 * /v1/chat/completions, GET /v1/models and GET /v1/models/{id}, as the
 * OpenAI API reference gives them and vLLM and llama-server implement
 * them (the contract: api/openapi.yaml).
 *
 * A completion route validates the body into a group (openai_parse.c),
 * submits its children all or none, and parks; the engine writes the
 * answer through srv_format_openai's hooks (openai_format.c).  The error
 * bodies are OpenAI's shape (http.c, by path).
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"
#include "openai.h"
#include "validate.h"

/* The time /v1/models gives as every model's "created": the server's start. */
static long long started;
__attribute__((constructor)) static void note_start(void) { started = (long long)time(NULL); }

static void completion_route(srv_req *r, int chat)
{
    srv_app *app = r->app;
    if (!atomic_load(&app->ready)) {
        srv_reply_error(r, 503, "not_ready", NULL, "models are loading");
        return;
    }
    srv_json_limits lim;
    srv_error e;
    srv_req_json_limits(r, &lim);
    lim.max_string = app->cfg.max_body_bytes; /* a prompt may fill the body */
    srv_job *g = srv_job_create();
    if (!g) {
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    if (srv_openai_parse(r->body.p, r->body.len, &lim, &app->models, &app->cfg, chat, g, &e)) {
        srv_job_unref(g);
        srv_reply_err(r, &e);
        return;
    }
    srv_req_run_job(r, g);
}

void srv_route_v1_completions(srv_req *r) { completion_route(r, 0); }
void srv_route_v1_chat_completions(srv_req *r) { completion_route(r, 1); }

/* ---- models --------------------------------------------------------------------- */

static void reply_jansson(srv_req *r, json_t *v)
{
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    if (s)
        srv_reply_json(r, 200, s);
    else
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
    free(s);
    json_decref(v);
}

static json_t *model_entry(const srv_model *m)
{
    return json_pack("{s:s,s:s,s:I,s:s}", "id", m->name, "object", "model", "created",
                     (json_int_t)started, "owned_by", "attnd");
}

/* Text models only: recall models read MQAR symbols, not text (GET
 * /models lists them). */
void srv_route_v1_models(srv_req *r)
{
    json_t *list = json_array();
    if (atomic_load(&r->app->ready)) {
        const srv_model *ms[SRV_MODELS_MAX];
        int n = srv_models_get_all(&r->app->models, ms, SRV_MODELS_MAX);
        for (int i = 0; i < n; i++)
            if (!strcmp(ms[i]->kind, "text"))
                json_array_append_new(list, model_entry(ms[i]));
        srv_models_put_all(ms, n);
    }
    reply_jansson(r, json_pack("{s:s,s:o}", "object", "list", "data", list));
}

void srv_route_v1_model(srv_req *r)
{
    const char *id = r->path + strlen("/v1/models/");
    const srv_model *m = atomic_load(&r->app->ready) ? srv_models_get(&r->app->models, id) : NULL;
    if (!m || strcmp(m->kind, "text"))
        srv_reply_error(r, 404, "model_not_found", "model", "The model \"%.100s\" does not exist",
                        id);
    else
        reply_jansson(r, model_entry(m));
    srv_model_put(m);
}
