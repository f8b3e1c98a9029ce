/*
 * config.c — flags and their ATTND_* environment twins.
 *
 * One table describes every setting: its flag, its variable, its kind and
 * where it lands in srv_config, so --help, the environment and the parser
 * cannot disagree.  The environment is read first and flags override it.
 */
#include "config.h"
#include "tfm/model.h"
#include "tfm/quant.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { K_STR, K_INT, K_SIZE, K_MODEL, K_BOOL, K_KEY } kind;

typedef struct {
    const char *flag, *env, *arg, *help;
    kind k;
    size_t off, cap; /* K_STR: capacity */
    long lo, hi;
} opt;

#define F(field) offsetof(srv_config, field)
#define CAP(field) sizeof(((srv_config *)0)->field)
static const opt opts[] = {
    {"--host", "ATTND_HOST", "ADDR", "address to listen on (127.0.0.1)", K_STR, F(host), CAP(host), 0, 0},
    {"--port", "ATTND_PORT", "N", "TCP port, 0 for an ephemeral one (8080)", K_INT, F(port), 0, 0, 65535},
    {"--data-dir", "ATTND_DATA_DIR", "DIR", "job records and checkpoints (./data)", K_STR, F(data_dir), CAP(data_dir), 0, 0},
    {"--model", "ATTND_MODEL", "PATH", "serve this model (repeatable; the name is the file's stem;\n"
     "                          .safetensors or llama2.c .bin); ATTND_MODEL takes a comma list", K_MODEL, 0, 0, 0, 0},
    {"--models-dir", "ATTND_MODELS_DIR", "DIR", "without --model, serve every model here\n"
     "                          (./models, else <prefix>/share/attnd/models)", K_STR, F(models_dir), CAP(models_dir), 0, 0},
    {"--tokenizer", "ATTND_TOKENIZER", "PATH", "tokenizer.bin for llama2.c models (default: beside the model)", K_STR, F(tokenizer), CAP(tokenizer), 0, 0},
    {"--threads", "ATTND_THREADS", "N", "compute threads (the number of cores)", K_INT, F(threads), 0, 1, 256},
    {"--max-batch", "ATTND_MAX_BATCH", "N", "sequences decoded together per model (8)", K_INT, F(max_batch), 0, 1, 256},
    {"--queue-depth", "ATTND_QUEUE_DEPTH", "N", "requests waiting for a slot before 503 (64)", K_INT, F(queue_depth), 0, 1, 100000},
    {"--max-body-bytes", "ATTND_MAX_BODY_BYTES", "N", "largest request body, else 413 (1048576)", K_SIZE, F(max_body_bytes), 0, 1, 1L << 30},
    {"--grace-seconds", "ATTND_GRACE_SECONDS", "N", "on SIGINT/SIGTERM, time to finish in-flight work (10)", K_INT, F(grace_seconds), 0, 0, 3600},
    {"--max-recall-pairs", "ATTND_MAX_RECALL_PAIRS", "N", "largest store a /recall may send (4096)", K_INT, F(max_recall_pairs), 0, 0, 32768},
    {"--max-recall-queries", "ATTND_MAX_RECALL_QUERIES", "N", "most queries per /recall (1024)", K_INT, F(max_recall_queries), 0, 0, 65536},
    {"--attention", "ATTND_ATTENTION", "KERNEL", "attention kernel: auto (the faster for the length), naive\n"
     "                          (N x N scores) or tiled (key blocks, online softmax)", K_STR, F(attention), CAP(attention), 0, 0},
    {"--train-workers", "ATTND_TRAIN_WORKERS", "N", "training jobs run at once, the rest queue (1)", K_INT, F(train_workers), 0, 1, 64},
    {"--train-threads", "ATTND_TRAIN_THREADS", "N", "compute threads of each training job (1)", K_INT, F(train_threads), 0, 1, 256},
    {"--quiet", "ATTND_QUIET", NULL, "no per-request log lines", K_BOOL, F(quiet), 0, 0, 1},
    {"--no-ui", "ATTND_NO_UI", NULL, "no web console at GET / and /ui/ (404 there)", K_BOOL, F(no_ui), 0, 0, 1},
    {"--api-key", "ATTND_API_KEY", "KEY", "require Authorization: Bearer KEY on every route but\n"
     "                          /healthz and /readyz (repeatable; ATTND_API_KEY takes a comma list)", K_KEY, 0, 0, 0, 0},
    {"--api-key-file", "ATTND_API_KEY_FILE", "PATH", "API keys, one a line (# comments), re-read on SIGHUP", K_STR, F(api_key_file), CAP(api_key_file), 0, 0},
    {"--metrics-public", "ATTND_METRICS_PUBLIC", NULL, "serve /metrics without a key (for a scraper)", K_BOOL, F(metrics_public), 0, 0, 1},
    {"--header-timeout-seconds", "ATTND_HEADER_TIMEOUT_SECONDS", "N", "a request's headers and body must arrive within N s (10)", K_INT, F(header_timeout_s), 0, 1, 3600},
    {"--idle-timeout-seconds", "ATTND_IDLE_TIMEOUT_SECONDS", "N", "close a connection idle for N s (30)", K_INT, F(idle_timeout_s), 0, 1, 86400},
    {"--max-connections", "ATTND_MAX_CONNECTIONS", "N", "open connections before new ones get 503 (1024)", K_INT, F(max_connections), 0, 1, 100000},
    {"--max-connections-per-ip", "ATTND_MAX_CONNECTIONS_PER_IP", "N", "open connections of one client address (128)", K_INT, F(max_conn_per_ip), 0, 1, 100000},
    {"--request-timeout-seconds", "ATTND_REQUEST_TIMEOUT_SECONDS", "N", "longest a /generate or /recall may take; caps timeout_ms (600)", K_INT, F(request_timeout_s), 0, 1, 86400},
    {"--max-inflight-per-client", "ATTND_MAX_INFLIGHT_PER_CLIENT", "N", "/generate and /recall requests one client (API key, else\n"
     "                          address) may have in progress before 429 (32)", K_INT, F(max_inflight_per_client), 0, 1, 100000},
    {"--max-json-depth", "ATTND_MAX_JSON_DEPTH", "N", "deepest nesting of a request body's arrays and objects (32)", K_INT, F(max_json_depth), 0, 2, 1000},
    {"--max-header-bytes", "ATTND_MAX_HEADER_BYTES", "N", "request line and headers, else 414 or 431 (16384)", K_SIZE, F(max_header_bytes), 0, 1024, 1L << 20},
    {"--train-queue-depth", "ATTND_TRAIN_QUEUE_DEPTH", "N", "training jobs waiting before POST /train gets 503 (64)", K_INT, F(train_queue_depth), 0, 1, 10000},
    {"--train-keep", "ATTND_TRAIN_KEEP", "N", "finished training jobs kept; older ones are removed (100)", K_INT, F(train_keep), 0, 0, 100000},
    {"--trained-models-dir", "ATTND_TRAINED_MODELS_DIR", "DIR", "where POST /train saves models, served and rescanned with\n"
     "                          the models dir; replicas may share it (<data-dir>/models)", K_STR, F(trained_dir), CAP(trained_dir), 0, 0},
    {"--models-poll-seconds", "ATTND_MODELS_POLL_SECONDS", "N", "rescan the models dirs every N s, as POST /models/reload\n"
     "                          and SIGHUP do (0: only then)", K_INT, F(models_poll_s), 0, 0, 86400},
    {"--weights", "ATTND_WEIGHTS", "FORMAT", "weight matrices as f32, bf16, q8 or q4, converted as each\n"
     "                          model loads (f32)", K_STR, F(weights), CAP(weights), 0, 0},
    {"--kv-cache", "ATTND_KV_CACHE", "FORMAT", "keys and values of every sequence as f32, bf16 (half\n"
     "                          the bytes) or q8 (about a quarter) (f32)", K_STR, F(kv_cache), CAP(kv_cache), 0, 0},
};
#define N_OPTS (sizeof opts / sizeof *opts)

static void usage(FILE *f)
{
    fprintf(f, "usage: attnd [options]\n\n"
               "An HTTP inference service for small Llama-style transformers.\n"
               "Every option also reads an environment variable (the flag wins).\n\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", opts[i].flag, opts[i].arg ? " " : "",
                 opts[i].arg ? opts[i].arg : "");
        fprintf(f, "  %-22s  %s\n  %-22s  [%s]\n", left, opts[i].help, "", opts[i].env);
    }
    fprintf(f, "  %-22s  this text\n", "-h, --help");
}

static int set(srv_config *cfg, const opt *o, const char *v, const char *from)
{
    char *base = (char *)cfg;
    char *end;
    long l;
    switch (o->k) {
    case K_STR:
        if (strlen(v) >= o->cap) {
            fprintf(stderr, "attnd: %s: value too long\n", from);
            return 0;
        }
        strcpy(base + o->off, v);
        return 1;
    case K_BOOL:
        *(int *)(base + o->off) = !(v && (!strcmp(v, "0") || !strcmp(v, "false") || !*v));
        return 1;
    case K_INT:
    case K_SIZE:
        errno = 0;
        l = strtol(v, &end, 10);
        if (errno || end == v || *end || l < o->lo || l > o->hi) {
            fprintf(stderr, "attnd: %s: expected an integer between %ld and %ld, got \"%s\"\n",
                    from, o->lo, o->hi, v);
            return 0;
        }
        if (o->k == K_INT)
            *(int *)(base + o->off) = (int)l;
        else
            *(size_t *)(base + o->off) = (size_t)l;
        return 1;
    case K_KEY:
        if (cfg->n_api_keys >= SRV_MAX_API_KEYS) {
            fprintf(stderr, "attnd: %s: at most %d keys\n", from, SRV_MAX_API_KEYS);
            return 0;
        }
        if (!*v) {
            fprintf(stderr, "attnd: %s: an empty key\n", from);
            return 0;
        }
        cfg->api_keys[cfg->n_api_keys++] = v;
        return 1;
    case K_MODEL:
        if (cfg->n_models >= SRV_MAX_MODELS) {
            fprintf(stderr, "attnd: %s: at most %d models\n", from, SRV_MAX_MODELS);
            return 0;
        }
        cfg->models[cfg->n_models++] = v;
        return 1;
    }
    return 0;
}

int srv_config_parse(srv_config *cfg, int argc, char **argv)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->host, sizeof cfg->host, "127.0.0.1");
    cfg->port = 8080;
    snprintf(cfg->data_dir, sizeof cfg->data_dir, "./data");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->threads = ncpu > 0 ? (int)(ncpu < 256 ? ncpu : 256) : 1;
    cfg->max_batch = 8;
    cfg->queue_depth = 64;
    cfg->max_body_bytes = 1 << 20;
    cfg->grace_seconds = 10;
    cfg->max_recall_pairs = 4096;
    cfg->max_recall_queries = 1024;
    snprintf(cfg->attention, sizeof cfg->attention, "auto");
    snprintf(cfg->weights, sizeof cfg->weights, "f32");
    snprintf(cfg->kv_cache, sizeof cfg->kv_cache, "f32");
    cfg->train_workers = 1;
    cfg->train_threads = 1;
    cfg->header_timeout_s = 10;
    cfg->idle_timeout_s = 30;
    cfg->max_connections = 1024;
    cfg->max_conn_per_ip = 128;
    cfg->request_timeout_s = 600;
    cfg->max_inflight_per_client = 32;
    cfg->max_json_depth = 32;
    cfg->max_header_bytes = 16384;
    cfg->train_queue_depth = 64;
    cfg->train_keep = 100;

    for (size_t i = 0; i < N_OPTS; i++) {
        const char *v = getenv(opts[i].env);
        if (!v || !*v)
            continue;
        if (opts[i].k == K_MODEL || opts[i].k == K_KEY) {
            char **copy = opts[i].k == K_MODEL ? &cfg->env_models : &cfg->env_api_keys;
            free(*copy);
            if (!(*copy = strdup(v)))
                return 2;
            for (char *save = NULL, *tok = strtok_r(*copy, ",", &save); tok;
                 tok = strtok_r(NULL, ",", &save))
                if (!set(cfg, &opts[i], tok, opts[i].env))
                    return 2;
        } else if (!set(cfg, &opts[i], v, opts[i].env)) {
            return 2;
        }
    }
    int env_models = cfg->n_models, cli_models = 0;
    int env_keys = cfg->n_api_keys, cli_keys = 0;
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "-h") || !strcmp(argv[a], "--help")) {
            usage(stdout);
            return 1;
        }
        const opt *o = NULL;
        const char *val = NULL;
        for (size_t i = 0; i < N_OPTS && !o; i++) {
            size_t fl = strlen(opts[i].flag);
            if (!strcmp(argv[a], opts[i].flag))
                o = &opts[i];
            else if (!strncmp(argv[a], opts[i].flag, fl) && argv[a][fl] == '=')
                o = &opts[i], val = argv[a] + fl + 1;
        }
        if (!o) {
            fprintf(stderr, "attnd: unknown option %s\n\n", argv[a]);
            usage(stderr);
            return 2;
        }
        if (o->k == K_BOOL && !val)
            val = "1";
        if (!val) {
            if (a + 1 >= argc) {
                fprintf(stderr, "attnd: %s needs a value\n\n", o->flag);
                usage(stderr);
                return 2;
            }
            val = argv[++a];
        }
        if (o->k == K_MODEL && cli_models++ == 0)
            cfg->n_models -= env_models; /* flags replace the environment's list */
        if (o->k == K_KEY && cli_keys++ == 0)
            cfg->n_api_keys -= env_keys;
        if (!set(cfg, o, val, o->flag)) {
            usage(stderr);
            return 2;
        }
    }
    if (strcmp(cfg->attention, "auto") && strcmp(cfg->attention, "naive") &&
        strcmp(cfg->attention, "tiled")) {
        fprintf(stderr, "attnd: --attention must be auto, naive or tiled, not \"%s\"\n\n",
                cfg->attention);
        usage(stderr);
        return 2;
    }
    tfm_wformat wf;
    if (tfm_wformat_parse(cfg->weights, &wf) != TFM_OK) {
        fprintf(stderr, "attnd: --weights must be f32, bf16, q8 or q4, not \"%s\"\n\n", cfg->weights);
        usage(stderr);
        return 2;
    }
    tfm_kv_format kvf;
    if (tfm_kv_format_parse(cfg->kv_cache, &kvf) != TFM_OK) {
        fprintf(stderr, "attnd: --kv-cache must be f32, bf16 or q8, not \"%s\"\n\n", cfg->kv_cache);
        usage(stderr);
        return 2;
    }
    if (!cfg->trained_dir[0] &&
        snprintf(cfg->trained_dir, sizeof cfg->trained_dir, "%s/models", cfg->data_dir) >=
            (int)sizeof cfg->trained_dir) {
        fprintf(stderr, "attnd: --data-dir: value too long\n");
        return 2;
    }
    return 0;
}

void srv_config_deinit(srv_config *cfg)
{
    free(cfg->env_models);
    cfg->env_models = NULL;
    free(cfg->env_api_keys);
    cfg->env_api_keys = NULL;
}
