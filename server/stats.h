/*
 * stats.h — attnd's metric families (names, help, buckets) on top of the
 * generic registry in metrics.h.  Updates are lock-free; the core's op
 * profile and the queue gauges are pulled in by a collector at each scrape.
 */
#ifndef SRV_STATS_H
#define SRV_STATS_H

#include <pthread.h>

#include "metrics.h"
#include "tfm/profile.h"

/* Training job states, in the order of srv_train_state_names. */
#define SRV_TRAIN_STATES 5
extern const char *const srv_train_state_names[SRV_TRAIN_STATES];
/* Storage operations whose failures are counted: a job's checkpoint, its
 * record, a trained model (label op of attnd_storage_errors_total). */
enum { SRV_STORAGE_CHECKPOINT = 0, SRV_STORAGE_RECORD, SRV_STORAGE_MODEL, SRV_STORAGE_OPS };

enum { SRV_MODEL_ADDED, SRV_MODEL_REMOVED, SRV_MODEL_REPLACED, SRV_MODEL_FAILED };

typedef struct srv_stats {
    srv_registry *reg;
    srv_metric *requests;  /* {route, code} */
    srv_metric *duration;  /* {route} */
    srv_series *prompt_tokens, *completion_tokens;
    srv_series *ttft, *tpot, *queue_wait, *batch;
    srv_series *in_flight, *queue_depth, *queue_capacity, *running, *models, *ready;
    srv_series *op_seconds[TFM_PHASE_COUNT][TFM_CLASS_COUNT];
    srv_series *op_flops[TFM_PHASE_COUNT][TFM_CLASS_COUNT];
    srv_series *comp_seconds[TFM_PHASE_COUNT][TFM_COMP_COUNT];
    srv_series *attn_seconds[TFM_PHASE_COUNT][TFM_ATTN_KIND_COUNT][TFM_CTX_BUCKETS];
    srv_series *attn_flops[TFM_PHASE_COUNT][TFM_ATTN_KIND_COUNT][TFM_CTX_BUCKETS];
    srv_series *attn_calls[TFM_PHASE_COUNT][TFM_ATTN_KIND_COUNT][TFM_CTX_BUCKETS];
    srv_series *recall_tokens;
    srv_series *recall_requests[2], *recall_queries[2]; /* by engine: exact, model */
    srv_series *cost_exponent;
    srv_series *attn_peak[TFM_PHASE_COUNT];
    /* training (train.c): jobs by state (set by its collector), steps,
     * tokens, step time; loss per running job, a series per job id shown
     * only while the job runs (srv_series_set_hidden) */
    srv_series *train_jobs[SRV_TRAIN_STATES];
    srv_series *train_steps, *train_tokens, *train_step_seconds;
    srv_metric *train_loss; /* {job_id} */
    /* the data dir (train*.c, datadir.c): writes that failed (a full or
     * read-only disk), by op (SRV_STORAGE_*), and entries quarantined */
    srv_series *storage_errors[SRV_STORAGE_OPS];
    srv_series *data_quarantined;
    /* hostile clients (auth.c, conn.c): requests refused for their key
     * (reason missing, invalid), connections refused past a limit (reason
     * max_connections, max_connections_per_ip) or dropped for a request
     * that did not arrive within --header-timeout-seconds, and the open
     * connections */
    srv_series *auth_failures[2];
    srv_series *conn_refused[2];
    srv_series *conn_header_timeouts;
    srv_series *conn_open;
    /* the model lifecycle (models_routes.c): rescans, and what they and
     * DELETE /models changed, by change (added, removed, replaced,
     * failed; SRV_MODEL_*) */
    srv_series *model_rescans;
    srv_series *model_changes[4];
    srv_metric *model_weight_bytes; /* {model, format}: each served model's
                                     * weights, refreshed at each scrape */
    pthread_mutex_t mu; /* guards seen and others */
    tfm_profile seen;   /* what the counters hold so far */
    tfm_profile others; /* /recall's and training's op accounting, summed */
} srv_stats;

int srv_stats_init(srv_stats *s);
/* Series for every route at status 200 (and duration), at zero from the
 * start: rate() over a counter born with its first request misses it. */
void srv_stats_routes(srv_stats *s, const char *const *routes, int n);
void srv_stats_deinit(srv_stats *s);

/* One finished request: counted by route and status, timed by route. */
void srv_stats_request(srv_stats *s, const char *route, int status, double seconds);
/* Brings the op counters up to the engine's cumulative profile plus
 * /recall's and training's (any thread). */
void srv_stats_profile(srv_stats *s, const tfm_profile *engine);
/* One /recall: its tokens (2 per pair + queries) and op accounting. */
void srv_stats_recall(srv_stats *s, int tokens, const tfm_profile *p);
/* Adds op accounting done outside the engine: a training job's since its
 * last report, a /recall's (any thread). */
void srv_stats_add_profile(srv_stats *s, const tfm_profile *p);
/* One answered /recall by engine (0 exact, 1 model) and its queries. */
void srv_stats_recall_engine(srv_stats *s, int model, int queries);

/* Engine hooks (srv_engine_hooks-compatible; ctx is the srv_stats). */
void srv_stats_queue_wait(void *ctx, double seconds);
void srv_stats_first_token(void *ctx, double seconds);
void srv_stats_inter_token(void *ctx, double seconds);
void srv_stats_batch(void *ctx, int size);
void srv_stats_tokens(void *ctx, int prompt, int completion);

#endif
