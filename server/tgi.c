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
 * generated_tokens) as TGI does.  decoder_input_details' prefill entries
 * carry the model's own log-probabilities (the engine's prompt_lps; the
 * first's null, as TGI's).  finish_reason: attnd's
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
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "tgi.h"
#include "validate.h"

#ifndef ATTND_VERSION
#define ATTND_VERSION "0.1.0"
#endif

/* ---- routes --------------------------------------------------------------- */


static void tgi_route(srv_req *r, int route)
{
    srv_app *app = r->app;
    r->err_style = SRV_ERR_TGI;
    if (!atomic_load(&app->ready)) {
        srv_reply_error(r, 503, "not_ready", NULL, "models are loading");
        return;
    }
    srv_json_limits lim;
    srv_error e = {0};
    srv_req_json_limits(r, &lim);
    lim.max_string = app->cfg.max_body_bytes; /* the inputs may fill the body */
    srv_job *j = srv_job_create();
    if (!j) {
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    if (srv_tgi_parse(r->body.p, r->body.len, &lim, &app->models, &app->cfg, route, j, &e)) {
        srv_job_unref(j);
        srv_reply_err(r, &e);
        return;
    }
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
    const srv_model *m = atomic_load(&app->ready) ? srv_models_get_default(&app->models) : NULL;
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
    srv_model_put(m);
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!s) {
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    srv_reply_json(r, 200, s);
    free(s);
}
