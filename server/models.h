/*
 * models.h — the registry of the models attnd serves, and their lifecycle.
 *
 * Models come from the models dir (or --model files), which attnd only
 * reads ("bundled"), and from the trained-models dir (--trained-models-dir,
 * <data-dir>/models by default), where POST /train saves and which
 * replicas may share ("trained").  They are loaded at start-up, added when
 * a training job finishes (srv_models_add), and rescanned by
 * srv_models_reload (POST /models/reload, SIGHUP, --models-poll-seconds):
 * new files are loaded, removed ones dropped, changed ones replaced.
 * srv_models_delete unloads a trained model and removes its file.
 *
 * Readers never lock.  Entries are published in a fixed table of atomic
 * pointers; a reader finds one inside a read section (two counters, as in
 * sleepable RCU) and takes a reference before it leaves.  A writer
 * unpublishes an entry (the slot becomes NULL, or the replacement), waits
 * until every read section that might have seen it has ended, then drops
 * the registry's reference; the entry is freed by whoever drops the last
 * one — the registry, or a request that was still using it.  So a
 * `const srv_model *` obtained from srv_models_get and not yet put stays
 * valid, across threads, whatever is unloaded meanwhile.  Writers take mu
 * (and reloads, which load files, reload_mu, outside mu).
 */
#ifndef SRV_MODELS_H
#define SRV_MODELS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "tfm/model.h"
#include "tfm/tokenizer.h"
#include "tfm/train.h"

/* Registry capacity: models served, plus unloaded ones still in use. */
#define SRV_MODELS_MAX 256

typedef struct srv_models srv_models;

typedef struct srv_model {
    char name[128];    /* the file's stem */
    char source[1024]; /* the file it came from */
    const char *kind;  /* "text", or "recall" (an MQAR model: its metadata
                        * says task "recall"; /recall's model engine) */
    tfm_mqar recall;   /* kind "recall": the task's parameters */
    tfm_model *model;
    tfm_tokenizer *tok; /* text models; NULL for recall models */
    int index;          /* < SRV_MODELS_MAX, unique among the entries alive
                         * (the engine's per-model contexts) */
    int trained;        /* from the trained-models dir: DELETE may remove it;
                         * else bundled (read only, a default candidate) */
    uint64_t uid;       /* unique for the process: this load of the file */
    /* the file when it was loaded, to see a change */
    unsigned long long dev, ino, size, mtime_ns;
    atomic_int refs;    /* the registry's (while published) and the users' */
    atomic_int removed; /* unpublished: no new user will get it */
    srv_models *reg;
} srv_model;

struct srv_models {
    pthread_mutex_t mu;                 /* writers */
    pthread_mutex_t reload_mu;          /* one rescan or delete at a time */
    const srv_config *cfg;              /* borrowed: dirs, the tokenizer flag */
    char bundled_dir[1100];             /* the models dir found at start-up ("": --model) */
    _Atomic(srv_model *) items[SRV_MODELS_MAX]; /* published entries, NULL holes */
    atomic_int n;                       /* slots of items in use (high-water) */
    atomic_int live;                    /* entries published */
    unsigned char index_used[SRV_MODELS_MAX]; /* under mu: srv_model.index taken */
    atomic_uint epoch;                  /* read sections: which counter */
    atomic_int readers[2];
    atomic_uint removals;               /* entries unpublished so far */
    uint64_t next_uid;                  /* under mu */
    struct srv_reload_memo *memo;       /* under reload_mu: files that failed */
};

/* What a rescan did, for its reply and its log. */
typedef struct srv_reload_result {
    char added[SRV_MODELS_MAX][128], removed[SRV_MODELS_MAX][128],
        replaced[SRV_MODELS_MAX][128];
    int n_added, n_removed, n_replaced;
    struct {
        char file[512], error[256];
    } failed[32];
    int n_failed;
} srv_reload_result;

/* Before any other call; cfg is borrowed and must outlive reg. */
void srv_models_init(srv_models *reg, const srv_config *cfg);
/* Frees every model; no other thread may use reg any more. */
void srv_models_deinit(srv_models *reg);

/* Start-up: --model files, or every *.safetensors / *.bin in the models
 * dir; then every *.safetensors in the trained-models dir.  Errors are
 * printed (one line per file) and the file skipped; returns the number
 * loaded, -1 when a --model named explicitly could not be loaded. */
int srv_models_load(srv_models *reg);

/* Any thread: loads the safetensors checkpoint at path (in the trained-
 * models dir) and registers it under its file stem; visible to /models,
 * /generate and /recall at once.  Returns 0 (also when a rescan has
 * registered this very file already); -1 with a message in err (load
 * failed, or the registry is full); -2 when the name is taken. */
int srv_models_add(srv_models *reg, const char *path, char *err, size_t errlen);

/* Any thread (slow: it loads files): the rescan.  Every file of the dirs
 * not served is loaded, every served model whose file is gone is dropped,
 * every one whose file changed (device, inode, size, mtime) is replaced,
 * atomically for its users.  A file that fails is logged once (until it
 * changes) and skipped.  res may be NULL.  Returns the changes made. */
int srv_models_reload(srv_models *reg, srv_reload_result *res);

/* Any thread: unloads the trained model name and removes its file.
 * 0; -1 unknown (404); -2 bundled, read only (409); -3 the file could not
 * be removed (err says why; the model stays). */
int srv_models_delete(srv_models *reg, const char *name, char *err, size_t errlen);

/* Any thread, lock-free: a reference to the model named name, or NULL.
 * Every reference is given back with srv_model_put. */
const srv_model *srv_models_get(const srv_models *reg, const char *name);
/* The text model /generate serves without "model": the first by name of
 * the bundled ones (a trained model never displaces it), else the first
 * by name of any; NULL when there is no text model.  A reference. */
const srv_model *srv_models_get_default(const srv_models *reg);
/* Up to cap models sorted by name into out, each a reference (give them
 * back with srv_models_put_all); returns how many. */
int srv_models_get_all(const srv_models *reg, const srv_model **out, int cap);
void srv_models_put_all(const srv_model **ms, int n);
/* Another reference to a model the caller holds one to. */
const srv_model *srv_model_hold(const srv_model *m);
/* Gives a reference back (NULL: nothing); the last one frees the model. */
void srv_model_put(const srv_model *m);
/* Any thread, lock-free: whether a model of that name is served. */
int srv_models_has(const srv_models *reg, const char *name);
/* Models served now. */
int srv_models_count(const srv_models *reg);
/* Entries unpublished since start (the engine's cue to drop contexts). */
unsigned srv_models_removals(const srv_models *reg);

#endif
