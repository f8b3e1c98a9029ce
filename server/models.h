/*
 * models.h — the registry of the models attnd serves.
 *
 * Models come from three places: the models dir (or --model files) and
 * the .safetensors files of <data-dir>/models at start-up, and finished
 * training jobs at run time (srv_models_add).  Every thread reads the
 * registry without a lock: entries live in a fixed array of pointers, are
 * appended and never moved or freed before srv_models_deinit, and the
 * count is published with release/acquire, so a reader that sees n sees n
 * complete entries.  Writers (the start-up loader, training workers) take
 * the mutex.
 *
 * A model is immutable once registered, and so is its entry: a
 * `const srv_model *` stays valid until shutdown, which is what lets a job
 * hold one across threads.
 */
#ifndef SRV_MODELS_H
#define SRV_MODELS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "config.h"
#include "tfm/model.h"
#include "tfm/tokenizer.h"
#include "tfm/train.h"

/* Registry capacity: models loaded at start-up plus those trained since. */
#define SRV_MODELS_MAX 256

typedef struct srv_model {
    char name[128];    /* the file's stem */
    char source[1024]; /* the file it came from */
    const char *kind;  /* "text", or "recall" (an MQAR model: its metadata
                        * says task "recall"; /recall's model engine) */
    tfm_mqar recall;   /* kind "recall": the task's parameters */
    tfm_model *model;
    tfm_tokenizer *tok; /* text models; NULL for recall models */
    int index;          /* slot in the registry: stable, < SRV_MODELS_MAX */
    int startup;        /* loaded at start-up (a default candidate) */
} srv_model;

typedef struct srv_models {
    pthread_mutex_t mu;                /* writers */
    const srv_config *cfg;             /* borrowed, for the tokenizer flag */
    srv_model *items[SRV_MODELS_MAX];  /* registration order; owned */
    atomic_int n;                      /* published entries */
} srv_models;

/* Before any other call; cfg is borrowed and must outlive reg. */
void srv_models_init(srv_models *reg, const srv_config *cfg);
/* Frees every model; no other thread may use reg any more. */
void srv_models_deinit(srv_models *reg);

/* Start-up: --model files, or every *.safetensors / *.bin in the models
 * dir; then every *.safetensors in <data-dir>/models (trained models).
 * Errors are printed (one line per file) and the file skipped; returns the
 * number loaded, -1 when a --model named explicitly could not be loaded. */
int srv_models_load(srv_models *reg);

/* Any thread: loads the safetensors checkpoint at path and registers it
 * under its file stem; visible to /models, /generate and /recall at once.
 * Returns 0; -1 with a message in err (load failed, or the registry is
 * full); -2 when the name is taken. */
int srv_models_add(srv_models *reg, const char *path, char *err, size_t errlen);

/* Any thread, lock-free.  The registered models, count then entry i in
 * registration order (i < the count read). */
int srv_models_count(const srv_models *reg);
const srv_model *srv_models_at(const srv_models *reg, int i);
/* Up to cap entries sorted by name into out; returns how many. */
int srv_models_sorted(const srv_models *reg, const srv_model **out, int cap);
const srv_model *srv_models_find(const srv_models *reg, const char *name);
/* The text model /generate serves without "model": the first by name of
 * those loaded at start-up (a model trained later never displaces it),
 * else the first by name of any; NULL when there is no text model. */
const srv_model *srv_models_default(const srv_models *reg);

#endif
