/*
 * config.h — attnd's settings: command-line flags, each with an ATTND_*
 * environment twin (the flag wins when both are given).
 */
#ifndef SRV_CONFIG_H
#define SRV_CONFIG_H

#include <stddef.h>

#define SRV_MAX_MODELS 32
#define SRV_MAX_API_KEYS 64

typedef struct srv_config {
    char host[256];        /* --host, ATTND_HOST: 127.0.0.1 */
    int port;              /* --port, ATTND_PORT: 8080 (0: ephemeral) */
    char data_dir[1024];   /* --data-dir, ATTND_DATA_DIR: ./data */
    char models_dir[1024]; /* --models-dir, ATTND_MODELS_DIR */
    const char *models[SRV_MAX_MODELS]; /* --model (repeatable), ATTND_MODEL (comma-separated) */
    int n_models;
    char tokenizer[1024];  /* --tokenizer, ATTND_TOKENIZER (llama2.c models) */
    int threads;           /* --threads, ATTND_THREADS: the cores */
    int max_batch;         /* --max-batch, ATTND_MAX_BATCH: 8 */
    int queue_depth;       /* --queue-depth, ATTND_QUEUE_DEPTH: 64 */
    size_t max_body_bytes; /* --max-body-bytes, ATTND_MAX_BODY_BYTES: 1 MiB */
    int grace_seconds;     /* --grace-seconds, ATTND_GRACE_SECONDS: 10 */
    int max_recall_pairs;  /* --max-recall-pairs, ATTND_MAX_RECALL_PAIRS: 4096 */
    int max_recall_queries; /* --max-recall-queries, ATTND_MAX_RECALL_QUERIES: 1024 */
    char attention[16];    /* --attention, ATTND_ATTENTION: auto | naive | tiled */
    int train_workers;     /* --train-workers, ATTND_TRAIN_WORKERS: 1 (jobs at once) */
    int train_threads;     /* --train-threads, ATTND_TRAIN_THREADS: 1 (per job) */
    int quiet;             /* --quiet, ATTND_QUIET: no per-request log lines */
    int no_ui;             /* --no-ui, ATTND_NO_UI: no web console at / and /ui/ (ui.h) */
    char *env_models;      /* owned copy of ATTND_MODEL, split in place */

    /* ---- trust on a network (auth.c, http.c, the limits) ---- */
    const char *api_keys[SRV_MAX_API_KEYS]; /* --api-key (repeatable), ATTND_API_KEY (comma list) */
    int n_api_keys;
    char *env_api_keys;    /* owned copy of ATTND_API_KEY, split in place */
    char api_key_file[1024]; /* --api-key-file, ATTND_API_KEY_FILE: a key a line, re-read on SIGHUP */
    int metrics_public;    /* --metrics-public, ATTND_METRICS_PUBLIC: /metrics without a key */
    int header_timeout_s;  /* --header-timeout-seconds: 10 (a request's headers and body) */
    int idle_timeout_s;    /* --idle-timeout-seconds: 30 (a connection with nothing to do) */
    int max_connections;   /* --max-connections: 1024 */
    int max_conn_per_ip;   /* --max-connections-per-ip: 128 */
    int request_timeout_s; /* --request-timeout-seconds: 600 (caps a request's timeout_ms) */
    int max_inflight_per_client; /* --max-inflight-per-client: 32 (/generate and /recall) */
    int max_json_depth;    /* --max-json-depth: 32 */
    size_t max_header_bytes; /* --max-header-bytes: 16384 (request line and headers) */
    int train_queue_depth; /* --train-queue-depth: 64 (queued jobs before 503) */
    int train_keep;        /* --train-keep: 100 (finished jobs kept, oldest removed) */

    /* ---- the model lifecycle (models.h, models_routes.c) ---- */
    char trained_dir[1024]; /* --trained-models-dir: <data-dir>/models (where POST /train
                             * saves; replicas may share it) */
    int models_poll_s;     /* --models-poll-seconds: 0 (off); rescan every N s */
    char weights[8];       /* --weights: f32 | bf16 | q8 | q4 (converted at load) */
    char kv_cache[8];      /* --kv-cache: f32 | bf16 | q8 (every sequence's KV cache) */
} srv_config;

/* Fills cfg from the environment and argv.  Returns 0 to run, 1 when
 * --help was printed (exit 0), 2 on a bad flag (usage printed; exit 2). */
int srv_config_parse(srv_config *cfg, int argc, char **argv);
void srv_config_deinit(srv_config *cfg);

#endif
