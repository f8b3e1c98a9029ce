/*
 * stats.c — the families attnd exports (see stats.h).
 *
 * Latency buckets follow what TGI and vLLM export (time to first token,
 * time per output token, queue wait, end-to-end), exponential so that both
 * a 2 ms decode step and a 30 s generation land in a resolving bucket.  The
 * op counters mirror the core's profile, which is cumulative: each scrape
 * adds the difference since the previous one, under a mutex so concurrent
 * scrapes never add it twice.
 */
#include "stats.h"

#include <stdio.h>
#include <string.h>

static const char *const route_code[] = {"route", "code"};
static const char *const route_only[] = {"route"};
static const char *const class_phase[] = {"class", "phase"};
static const char *const comp_phase[] = {"component", "phase"};
static const char *const phase_ctx[] = {"phase", "kernel", "context_max"};

const char *const srv_train_state_names[SRV_TRAIN_STATES] = {"queued", "running", "succeeded",
                                                              "failed", "cancelled"};

static srv_series *hist(srv_registry *r, const char *name, const char *help, double start,
                        double factor, int n)
{
    double b[32];
    srv_buckets_exponential(start, factor, n, b);
    return srv_metric_series(srv_metrics_histogram(r, name, help, 0, NULL, b, n), NULL);
}

static srv_series *one(srv_metric *m) { return srv_metric_series(m, NULL); }

int srv_stats_init(srv_stats *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    srv_registry *r = s->reg = srv_metrics_create();
    if (!r)
        return -1;
    double dur[16];
    srv_buckets_exponential(0.001, 2.5, 14, dur); /* 1 ms .. ~150 s */
    s->requests = srv_metrics_counter(r, "attnd_requests_total",
                                      "HTTP requests answered, by route and status code.", 2,
                                      route_code);
    s->duration = srv_metrics_histogram(r, "attnd_request_duration_seconds",
                                        "End-to-end request duration, by route.", 1, route_only,
                                        dur, 14);
    s->prompt_tokens = one(srv_metrics_counter(r, "attnd_prompt_tokens_total",
                                               "Prompt tokens prefilled.", 0, NULL));
    s->completion_tokens = one(srv_metrics_counter(r, "attnd_completion_tokens_total",
                                                   "Tokens generated.", 0, NULL));
    s->ttft = hist(r, "attnd_time_to_first_token_seconds",
                   "From the request's arrival to its first generated token.", 0.001, 2, 16);
    s->tpot = hist(r, "attnd_time_per_output_token_seconds",
                   "Time between consecutive generated tokens of a sequence.", 0.0005, 2, 14);
    s->queue_wait = hist(r, "attnd_queue_wait_seconds",
                         "Time a request waited for a decode slot.", 0.0005, 2.5, 14);
    double bs[10] = {1, 2, 3, 4, 6, 8, 12, 16, 32, 64};
    s->batch = one(srv_metrics_histogram(r, "attnd_decode_batch_size",
                                         "Sequences advanced by one decode step.", 0, NULL, bs,
                                         10));
    s->in_flight = one(srv_metrics_gauge(r, "attnd_requests_in_flight",
                                         "Generation requests being processed (queued, prefilling or decoding).", 0, NULL));
    s->queue_depth = one(srv_metrics_gauge(r, "attnd_queue_depth",
                                           "Generation requests waiting for a slot.", 0, NULL));
    s->queue_capacity = one(srv_metrics_gauge(r, "attnd_queue_capacity",
                                              "Generation requests that may wait (--queue-depth).",
                                              0, NULL));
    s->running = one(srv_metrics_gauge(r, "attnd_sequences_running",
                                       "Sequences being prefilled or decoded.", 0, NULL));
    s->models = one(srv_metrics_gauge(r, "attnd_models_loaded", "Models being served.", 0, NULL));
    s->ready = one(srv_metrics_gauge(r, "attnd_ready", "1 once the models are loaded.", 0, NULL));
    srv_metric *ops = srv_metrics_counter(
        r, "attnd_op_seconds_total",
        "Compute seconds by op class (tensor contraction, normalization, elementwise) and phase.",
        2, class_phase);
    srv_metric *opf = srv_metrics_counter(r, "attnd_op_flops_total",
                                          "Floating-point operations by op class and phase.", 2,
                                          class_phase);
    srv_metric *comp = srv_metrics_counter(
        r, "attnd_component_seconds_total",
        "Compute seconds by model component (attention, mlp, other) and phase.", 2, comp_phase);
    srv_metric *as = srv_metrics_counter(
        r, "attnd_attention_seconds_total",
        "Attention core seconds (scores, softmax, weighted values) by phase, kernel (naive, "
        "tiled, or exact for /recall) and context-length bucket (context_max: the bucket's "
        "largest context).",
        3, phase_ctx);
    srv_metric *af = srv_metrics_counter(r, "attnd_attention_flops_total",
                                         "Attention core FLOPs by phase, kernel and context-length "
                                         "bucket.",
                                         3, phase_ctx);
    srv_metric *ac = srv_metrics_counter(
        r, "attnd_attention_calls_total",
        "Attention core calls (one per sequence and layer) by phase, kernel and context-length "
        "bucket.",
        3, phase_ctx);
    s->cost_exponent = one(srv_metrics_gauge(
        r, "attnd_attention_cost_exponent",
        "Fitted exponent k of prefill attention time against prompt length (time ~ length^k, "
        "least squares on log-log over the length buckets seen, prompts of 64 tokens or more); "
        "about 2: doubling the context quadruples attention's cost. NaN until two buckets have "
        "prompts.",
        0, NULL));
    static const char *const phase_only[] = {"phase"};
    srv_metric *peak = srv_metrics_gauge(r, "attnd_attention_peak_scratch_bytes",
                                         "Largest attention scratch one call has used, by phase "
                                         "(naive kernel: rows x context; tiled: rows x block).",
                                         1, phase_only);
    for (int ph = 0; ph < TFM_PHASE_COUNT; ph++) {
        const char *v[1] = {tfm_phase_name(ph)};
        s->attn_peak[ph] = srv_metric_series(peak, v);
    }
    s->recall_tokens = one(srv_metrics_counter(
        r, "attnd_recall_tokens_total", "Tokens of /recall requests (2 per pair plus queries).", 0,
        NULL));
    static const char *const engine_only[] = {"engine"};
    srv_metric *rr = srv_metrics_counter(r, "attnd_recall_requests_total",
                                         "/recall requests answered, by engine (exact or model).",
                                         1, engine_only);
    srv_metric *rq = srv_metrics_counter(r, "attnd_recall_queries_total",
                                         "/recall queries answered, by engine (exact or model).", 1,
                                         engine_only);
    for (int k = 0; k < 2; k++) {
        const char *v[1] = {k ? "model" : "exact"};
        s->recall_requests[k] = srv_metric_series(rr, v);
        s->recall_queries[k] = srv_metric_series(rq, v);
    }
    for (int ph = 0; ph < TFM_PHASE_COUNT; ph++) {
        for (int k = 0; k < TFM_ATTN_KIND_COUNT; k++) {
            /* recall's exact attention is a prefill-like pass only */
            if (k == TFM_ATTN_KIND_EXACT && ph != TFM_PHASE_PREFILL)
                continue;
            for (int b = 0; b < TFM_CTX_BUCKETS; b++) {
                char le[16];
                snprintf(le, sizeof le, "%d", tfm_ctx_bucket_le(b));
                const char *v[3] = {tfm_phase_name(ph), tfm_attn_kind_name(k), le};
                s->attn_seconds[ph][k][b] = srv_metric_series(as, v);
                s->attn_flops[ph][k][b] = srv_metric_series(af, v);
                s->attn_calls[ph][k][b] = srv_metric_series(ac, v);
            }
        }
        for (int c = 0; c < TFM_CLASS_COUNT; c++) {
            const char *v[2] = {tfm_op_class_name(c), tfm_phase_name(ph)};
            s->op_seconds[ph][c] = srv_metric_series(ops, v);
            s->op_flops[ph][c] = srv_metric_series(opf, v);
        }
        for (int c = 0; c < TFM_COMP_COUNT; c++) {
            const char *v[2] = {tfm_component_name(c), tfm_phase_name(ph)};
            s->comp_seconds[ph][c] = srv_metric_series(comp, v);
        }
    }
    static const char *const state_only[] = {"state"};
    srv_metric *jobs = srv_metrics_gauge(r, "attnd_train_jobs",
                                         "Training jobs by state (queued, running, succeeded, "
                                         "failed, cancelled); records survive restarts.",
                                         1, state_only);
    for (int i = 0; i < SRV_TRAIN_STATES; i++)
        s->train_jobs[i] = srv_metric_series(jobs, &srv_train_state_names[i]);
    s->train_steps = one(srv_metrics_counter(r, "attnd_train_steps_total",
                                             "Optimiser steps taken by training jobs.", 0, NULL));
    s->train_tokens = one(srv_metrics_counter(
        r, "attnd_train_tokens_total", "Tokens processed by training steps (batch x seq_len).",
        0, NULL));
    s->train_step_seconds = hist(r, "attnd_train_step_seconds",
                                 "Wall time of one training step (forward, backward, AdamW).",
                                 0.001, 2, 16);
    static const char *const job_only[] = {"job_id"};
    s->train_loss = srv_metrics_gauge(r, "attnd_train_loss",
                                      "Training loss (nats) of the last step, per running job.",
                                      1, job_only);
    static const char *const reason_only[] = {"reason"};
    static const char *const auth_reasons[] = {"missing", "invalid"};
    static const char *const conn_reasons[] = {"max_connections", "max_connections_per_ip"};
    srv_metric *auth = srv_metrics_counter(
        r, "attnd_auth_failures_total",
        "Requests refused with 401: no Authorization: Bearer key, or a key not configured.", 1,
        reason_only);
    srv_metric *cr = srv_metrics_counter(
        r, "attnd_connections_refused_total",
        "Connections refused (503, then closed) past --max-connections or "
        "--max-connections-per-ip.",
        1, reason_only);
    for (int i = 0; i < 2; i++) {
        s->auth_failures[i] = srv_metric_series(auth, &auth_reasons[i]);
        s->conn_refused[i] = srv_metric_series(cr, &conn_reasons[i]);
    }
    s->conn_header_timeouts = one(srv_metrics_counter(
        r, "attnd_connections_header_timeouts_total",
        "Connections closed because a request's headers and body did not arrive within "
        "--header-timeout-seconds of its first byte.",
        0, NULL));
    s->conn_open = one(srv_metrics_gauge(r, "attnd_connections_open",
                                         "Client connections open now.", 0, NULL));
    static const char *const op_only[] = {"op"};
    static const char *const storage_ops[SRV_STORAGE_OPS] = {"checkpoint", "record", "model"};
    srv_metric *se = srv_metrics_counter(
        r, "attnd_storage_errors_total",
        "Writes under --data-dir that failed (full or read-only disk), by op: a training "
        "checkpoint (retried at the next one), a job record (retried at the next change), a "
        "trained model (fails the job).",
        1, op_only);
    for (int i = 0; i < SRV_STORAGE_OPS; i++)
        s->storage_errors[i] = srv_metric_series(se, &storage_ops[i]);
    s->data_quarantined = one(srv_metrics_counter(
        r, "attnd_data_quarantined_total",
        "Entries of --data-dir that could not be used (corrupt, truncated, not a regular file, "
        "a symlink, a bad name) and were moved to <data-dir>/quarantine.",
        0, NULL));
    s->model_rescans = one(srv_metrics_counter(
        r, "attnd_model_rescans_total",
        "Rescans of the models dirs (POST /models/reload, SIGHUP, --models-poll-seconds).", 0,
        NULL));
    static const char *const change_only[] = {"change"};
    static const char *const changes[4] = {"added", "removed", "replaced", "failed"};
    srv_metric *mc = srv_metrics_counter(
        r, "attnd_model_changes_total",
        "Models added, removed (a file gone, or DELETE /models), replaced (a file changed) "
        "and files that failed to load, since start.",
        1, change_only);
    for (int i = 0; i < 4; i++)
        s->model_changes[i] = srv_metric_series(mc, &changes[i]);
    static const char *const model_format[] = {"model", "format"};
    s->model_weight_bytes = srv_metrics_gauge(
        r, "attnd_model_weight_bytes",
        "Bytes of each served model's weights in memory, by weight format (--weights).", 2,
        model_format);
    s->seen.enabled = 1;
    return s->requests && s->duration && s->ttft && s->op_seconds[0][0] && s->train_loss &&
                   s->train_step_seconds
               ? 0
               : -1;
}

void srv_stats_routes(srv_stats *s, const char *const *routes, int n)
{
    for (int i = 0; i < n; i++) {
        const char *rc[2] = {routes[i], "200"};
        srv_metric_series(s->requests, rc);
        srv_metric_series(s->duration, &routes[i]);
    }
}

void srv_stats_deinit(srv_stats *s)
{
    srv_metrics_destroy(s->reg);
    s->reg = NULL;
    pthread_mutex_destroy(&s->mu);
}

void srv_stats_request(srv_stats *s, const char *route, int status, double seconds)
{
    char code[8];
    snprintf(code, sizeof code, "%d", status);
    const char *rc[2] = {route, code};
    srv_metric_add(s->requests, rc, 1);
    const char *r1[1] = {route};
    srv_metric_add(s->duration, r1, seconds);
}

void srv_stats_add_profile(srv_stats *s, const tfm_profile *p)
{
    pthread_mutex_lock(&s->mu);
    tfm_profile_add(&s->others, p);
    pthread_mutex_unlock(&s->mu);
}

void srv_stats_recall(srv_stats *s, int tokens, const tfm_profile *p)
{
    srv_counter_add(s->recall_tokens, tokens);
    srv_stats_add_profile(s, p);
}

void srv_stats_recall_engine(srv_stats *s, int model, int queries)
{
    srv_counter_add(s->recall_requests[model ? 1 : 0], 1);
    srv_counter_add(s->recall_queries[model ? 1 : 0], queries);
}

void srv_stats_profile(srv_stats *s, const tfm_profile *engine)
{
    pthread_mutex_lock(&s->mu);
    tfm_profile all = *engine;
    tfm_profile *p = &all;
    tfm_profile_add(p, &s->others);
    for (int ph = 0; ph < TFM_PHASE_COUNT; ph++) {
        for (int c = 0; c < TFM_CLASS_COUNT; c++) {
            srv_counter_add(s->op_seconds[ph][c], p->seconds[ph][c] - s->seen.seconds[ph][c]);
            srv_counter_add(s->op_flops[ph][c], p->flops[ph][c] - s->seen.flops[ph][c]);
        }
        for (int c = 0; c < TFM_COMP_COUNT; c++)
            srv_counter_add(s->comp_seconds[ph][c],
                            p->comp_seconds[ph][c] - s->seen.comp_seconds[ph][c]);
        for (int k = 0; k < TFM_ATTN_KIND_COUNT; k++)
            for (int b = 0; b < TFM_CTX_BUCKETS; b++) { /* NULL series: no-op */
                srv_counter_add(s->attn_seconds[ph][k][b], p->attn_kind_seconds[ph][k][b] -
                                                               s->seen.attn_kind_seconds[ph][k][b]);
                srv_counter_add(s->attn_flops[ph][k][b],
                                p->attn_kind_flops[ph][k][b] - s->seen.attn_kind_flops[ph][k][b]);
                srv_counter_add(s->attn_calls[ph][k][b],
                                (double)(p->attn_kind_calls[ph][k][b] -
                                         s->seen.attn_kind_calls[ph][k][b]));
            }
    }
    s->seen = *p;
    srv_gauge_set(s->cost_exponent, tfm_profile_cost_exponent(p, 64));
    for (int ph = 0; ph < TFM_PHASE_COUNT; ph++)
        srv_gauge_set(s->attn_peak[ph], p->attn_peak_bytes[ph]);
    pthread_mutex_unlock(&s->mu);
}

void srv_stats_queue_wait(void *ctx, double seconds)
{
    srv_histogram_observe(((srv_stats *)ctx)->queue_wait, seconds);
}

void srv_stats_first_token(void *ctx, double seconds)
{
    srv_histogram_observe(((srv_stats *)ctx)->ttft, seconds);
}

void srv_stats_inter_token(void *ctx, double seconds)
{
    srv_histogram_observe(((srv_stats *)ctx)->tpot, seconds);
}

void srv_stats_batch(void *ctx, int size)
{
    srv_histogram_observe(((srv_stats *)ctx)->batch, size);
}

void srv_stats_tokens(void *ctx, int prompt, int completion)
{
    srv_stats *s = ctx;
    if (prompt)
        srv_counter_add(s->prompt_tokens, prompt);
    if (completion)
        srv_counter_add(s->completion_tokens, completion);
}
