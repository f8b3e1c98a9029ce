/*
 * config.h — attnd's settings: command-line flags, each with an ATTND_*
 * environment twin (the flag wins when both are given).
 */
#ifndef SRV_CONFIG_H
#define SRV_CONFIG_H

#include <stddef.h>

#define SRV_MAX_MODELS 32

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
    char *env_models;      /* owned copy of ATTND_MODEL, split in place */
} srv_config;

/* Fills cfg from the environment and argv.  Returns 0 to run, 1 when
 * --help was printed (exit 0), 2 on a bad flag (usage printed; exit 2). */
int srv_config_parse(srv_config *cfg, int argc, char **argv);
void srv_config_deinit(srv_config *cfg);

#endif
