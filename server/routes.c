/*
 * routes.c — the small routes: /models, /healthz, /readyz, /metrics.
 * Each runs on the loop thread and replies at once.
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "tfm/quant.h"

static void reply_jansson(srv_req *r, int status, json_t *v)
{
    char *s = v ? json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    if (s)
        srv_reply_json(r, status, s);
    else
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
    free(s);
    json_decref(v);
}

static json_t *model_info(const srv_model *m, const srv_config *sc)
{
    const tfm_config *c = &m->model->cfg;
    json_t *cfg = json_pack("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:b,s:f,s:f}", "dim", c->dim,
                            "hidden_dim", c->hidden_dim, "n_layers", c->n_layers, "n_heads",
                            c->n_heads, "n_kv_heads", c->n_kv_heads, "vocab_size", c->vocab_size,
                            "seq_len", c->seq_len, "shared_classifier", c->shared_classifier,
                            "norm_eps", (double)c->norm_eps, "rope_theta", (double)c->rope_theta);
    char mixer[512];
    if (cfg && tfm_mixer_format(c, mixer, sizeof mixer) == TFM_OK) {
        json_object_set_new(cfg, "mixer", json_string(mixer));
        if (c->linear_layers)
            json_object_set_new(cfg, "feature_dim", json_integer(c->feature_dim));
    }
    int recall = !strcmp(m->kind, "recall");
    /* a recall model reads MQAR tokens (keys, values, ⊥, padding), not text */
    const char *tok = recall                                        ? "mqar"
                      : m->model->tokenizer == TFM_TOKENIZER_LLAMA2C ? "llama2c"
                                                                     : "byte";
    json_t *e = json_pack("{s:s,s:s,s:I,s:o,s:s,s:s}", "name", m->name, "kind", m->kind,
                          "parameters", (json_int_t)tfm_config_n_params(c), "config", cfg,
                          "tokenizer", tok, "source", m->source);
    if (e) {
        json_object_set_new(e, "origin", json_string(m->trained ? "trained" : "bundled"));
        json_object_set_new(e, "weights",
                            json_pack("{s:s,s:I}", "format",
                                      tfm_wformat_name((tfm_wformat)tfm_model_wformat(m->model)),
                                      "bytes", (json_int_t)tfm_model_weight_bytes(m->model)));
    }
    tfm_kv_format kvf = TFM_KV_F32; /* --kv-cache, validated at startup; text models */
    if (e && !recall && tfm_kv_format_parse(sc->kv_cache, &kvf) == TFM_OK)
        json_object_set_new(e, "kv_cache",
                            json_pack("{s:s,s:I,s:I}", "format", tfm_kv_format_name(kvf),
                                      "bytes_per_token",
                                      (json_int_t)tfm_kv_bytes_per_token(c, kvf), "state_bytes",
                                      (json_int_t)tfm_linear_state_bytes(c)));
    /* the float's decimal as trained (0.1, not 0.100000001) */
    double absent = round((double)m->recall.absent_fraction * 1e6) / 1e6;
    if (e && recall)
        json_object_set_new(e, "recall",
                            json_pack("{s:i,s:i,s:i,s:f}", "n_pairs", m->recall.n_pairs, "n_keys",
                                      m->recall.n_keys, "n_values", m->recall.n_values,
                                      "absent_fraction", absent));
    return e;
}

/* Sorted by name at each request: the registry grows while the service
 * runs (trained models), in registration order. */
void srv_route_models(srv_req *r)
{
    srv_app *app = r->app;
    json_t *list = json_array();
    if (atomic_load(&app->ready)) {
        const srv_model *ms[SRV_MODELS_MAX];
        int n = srv_models_get_all(&app->models, ms, SRV_MODELS_MAX);
        for (int i = 0; i < n; i++)
            json_array_append_new(list, model_info(ms[i], &app->cfg));
        srv_models_put_all(ms, n);
    }
    reply_jansson(r, 200, json_pack("{s:o}", "models", list));
}

void srv_route_healthz(srv_req *r) { srv_reply_json(r, 200, "{\"status\":\"ok\"}"); }

void srv_route_readyz(srv_req *r)
{
    srv_app *app = r->app;
    if (!atomic_load(&app->ready) || atomic_load(&app->draining)) {
        srv_reply_error(r, 503, "not_ready", NULL,
                        atomic_load(&app->draining) ? "the server is shutting down" : "models are loading");
        return;
    }
    reply_jansson(r, 200, json_pack("{s:s,s:i}", "status", "ready", "models",
                                    srv_models_count(&app->models)));
}

void srv_route_metrics(srv_req *r)
{
    size_t len = 0;
    char *text = srv_metrics_render(r->app->stats.reg, &len);
    if (!text) {
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    srv_reply(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}
