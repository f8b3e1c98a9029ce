/*
 * models.c — finding, loading, naming and registering the served models.
 *
 * A model's name is its file's stem ("models/tiny.safetensors" is "tiny").
 * llama2.c .bin files need a tokenizer.bin: --tokenizer, else one beside the
 * model; a file named tokenizer.bin is never taken for a model.  A model
 * whose metadata says task "recall" (tfm_mqar_from_meta) is a recall model:
 * it has no tokenizer, /generate refuses it and /recall's model engine
 * serves it; any other is a text model with a byte or llama2.c tokenizer.
 *
 * Concurrency (see models.h): a model is loaded outside the lock (that is
 * the slow part), then appended under it; readers never lock.  The
 * published count is the release that makes the entry's fields visible to
 * a reader's acquire.  A lookup is a linear scan over at most
 * SRV_MODELS_MAX names, cheap beside any request that uses the model.
 *
 * Hostile files (datadir.h): every model and tokenizer file is opened
 * O_NONBLOCK and checked to be a regular file before the loader reads it,
 * so a FIFO, a directory or a dangling link is skipped, never waited on.
 * In <data-dir>/models (attnd's own) a file that cannot be served — not a
 * regular file, a symlink, a name with control characters, a truncated or
 * corrupt checkpoint — is quarantined, and the leftover temporaries of a
 * save cut short are deleted; in the models dir or a --model file (read
 * only) it is logged and skipped.  A model whose name is taken is skipped
 * in both (it is not broken).
 */
#include "models.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "datadir.h"
#include "tfm/checkpoint.h"

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n > m && !strcmp(s + n - m, suf);
}

static void stem(const char *path, char *out, size_t cap)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    snprintf(out, cap, "%s", base);
    char *dot = strrchr(out, '.');
    if (dot && dot != out)
        *dot = 0;
}

static void entry_destroy(srv_model *e)
{
    if (!e)
        return;
    tfm_tokenizer_destroy(e->tok);
    tfm_model_destroy(e->model);
    free(e);
}

/* Whether a file the loader is about to open is a regular file (following
 * links: a --model or a models dir may link elsewhere); 0 with err. */
static int regular(const char *path, char *err, size_t errlen)
{
    char why[256];
    int fd = srv_data_open_regular(path, 1, 0, why, sizeof why);
    if (fd < 0) {
        snprintf(err, errlen, "%s", why);
        return 0;
    }
    close(fd);
    return 1;
}

/* Loads path into a new entry (not yet registered); NULL with err, and
 * *broken set when the file itself is at fault (not a lack of memory). */
static srv_model *entry_load(const srv_models *reg, const char *path, int *broken, char *err,
                             size_t errlen)
{
    char msg[512] = "";
    *broken = 0;
    if (!regular(path, msg, sizeof msg)) {
        *broken = 1;
        snprintf(err, errlen, "%s", msg);
        return NULL;
    }
    srv_model *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    stem(path, e->name, sizeof e->name);
    snprintf(e->source, sizeof e->source, "%s", path);
    tfm_status s = tfm_checkpoint_load(path, TFM_CKPT_AUTO, &e->model, msg, sizeof msg);
    if (s != TFM_OK) {
        *broken = s != TFM_E_NOMEM;
        snprintf(err, errlen, "%s: %s", tfm_strerror(s), msg);
        goto fail;
    }
    tfm_model *m = e->model;
    s = tfm_mqar_from_meta(m, &e->recall);
    if (s == TFM_OK) { /* its parameters fit its vocabulary and context */
        e->kind = "recall";
        return e;
    }
    if (s != TFM_E_NOTFOUND) {
        *broken = 1;
        snprintf(err, errlen, "task \"recall\" with missing or bad recall.* metadata (or a "
                 "vocabulary or context that does not fit them)");
        goto fail;
    }
    e->kind = "text";
    memset(&e->recall, 0, sizeof e->recall);
    if (m->tokenizer == TFM_TOKENIZER_LLAMA2C) {
        char tpath[2048];
        if (reg->cfg && reg->cfg->tokenizer[0]) {
            snprintf(tpath, sizeof tpath, "%s", reg->cfg->tokenizer);
        } else {
            const char *slash = strrchr(path, '/');
            int dirlen = slash ? (int)(slash - path + 1) : 0;
            snprintf(tpath, sizeof tpath, "%.*stokenizer.bin", dirlen, path);
        }
        if (!regular(tpath, msg, sizeof msg))
            s = TFM_E_IO;
        else
            s = tfm_tokenizer_load_llama2c(tpath, m->cfg.vocab_size, &e->tok, msg, sizeof msg);
        if (s != TFM_OK) {
            snprintf(err, errlen, "tokenizer %s: %s: %s", tpath, tfm_strerror(s), msg);
            goto fail;
        }
    } else {
        tfm_tokenizer_create_byte(&e->tok);
        if (!e->tok || tfm_tokenizer_vocab_size(e->tok) > m->cfg.vocab_size) {
            snprintf(err, errlen, "vocab %d is smaller than the byte tokenizer's %d",
                     m->cfg.vocab_size, TFM_BYTE_VOCAB);
            goto fail;
        }
    }
    return e;
fail:
    entry_destroy(e);
    return NULL;
}

/* Appends e under the lock.  0; -1 full; -2 the name is taken. */
static int publish(srv_models *reg, srv_model *e)
{
    pthread_mutex_lock(&reg->mu);
    int n = atomic_load_explicit(&reg->n, memory_order_relaxed); /* writers hold mu */
    int rc = 0;
    if (srv_models_find(reg, e->name))
        rc = -2;
    else if (n >= SRV_MODELS_MAX)
        rc = -1;
    else {
        e->index = n;
        reg->items[n] = e;
        atomic_store_explicit(&reg->n, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&reg->mu);
    return rc;
}

static void log_loaded(const srv_model *e)
{
    if (!strcmp(e->kind, "recall"))
        fprintf(stderr, "attnd: loaded recall model %s (%zu parameters; %d pairs, %d keys, %d "
                "values) from %s\n", e->name, tfm_config_n_params(&e->model->cfg),
                e->recall.n_pairs, e->recall.n_keys, e->recall.n_values, e->source);
    else
        fprintf(stderr, "attnd: loaded model %s (%zu parameters) from %s\n", e->name,
                tfm_config_n_params(&e->model->cfg), e->source);
}

/* Start-up: one file; 1 loaded, 0 skipped (message printed).  data_dir:
 * the file is in <data_dir>/models and quarantined when broken; NULL for
 * the read-only places. */
static int load_one(srv_models *reg, const char *path, const char *data_dir)
{
    char err[1024], shown[1200];
    int broken;
    srv_model *e = entry_load(reg, path, &broken, err, sizeof err);
    if (!e) {
        if (data_dir && broken) {
            srv_data_quarantine(data_dir, path, err);
        } else {
            srv_data_printable(path, shown, sizeof shown);
            fprintf(stderr, "attnd: model %s: %s; skipped\n", shown, err);
        }
        return 0;
    }
    e->startup = 1;
    int rc = publish(reg, e);
    if (rc != 0) {
        if (rc == -2)
            fprintf(stderr, "attnd: model %s: the name \"%s\" is taken, skipped\n", path, e->name);
        else
            fprintf(stderr, "attnd: model %s: the registry is full (%d models), skipped\n", path,
                    SRV_MODELS_MAX);
        entry_destroy(e);
        return 0;
    }
    log_loaded(e);
    return 1;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every model file of dir in name order; .bin too unless only_safetensors.
 * data_dir: dir is <data_dir>/models (see load_one); NULL otherwise. */
static int load_dir(srv_models *reg, const char *dir, int only_safetensors, const char *data_dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    char **names = NULL;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        char path[2200], shown[2400];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (data_dir && srv_data_is_temp(de->d_name)) { /* a save cut short */
            srv_data_printable(path, shown, sizeof shown);
            if (unlink(path) == 0)
                fprintf(stderr, "attnd: data: %s: removed (the temporary file of a write that "
                        "did not finish)\n", shown);
            continue;
        }
        if (de->d_name[0] == '.' || !strcmp(de->d_name, "tokenizer.bin"))
            continue;
        if (!has_suffix(de->d_name, ".safetensors") &&
            (only_safetensors || !has_suffix(de->d_name, ".bin")))
            continue;
        if (!srv_data_name_ok(de->d_name)) { /* its name would be served as is */
            if (data_dir) {
                srv_data_quarantine(data_dir, path, "a name with control characters");
            } else {
                srv_data_printable(path, shown, sizeof shown);
                fprintf(stderr, "attnd: model %s: a name with control characters; skipped\n",
                        shown);
            }
            continue;
        }
        struct stat sb;
        if (data_dir && lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode)) {
            srv_data_quarantine(data_dir, path, "a symbolic link (trained models are files)");
            continue;
        }
        char **nn = realloc(names, (size_t)(n + 1) * sizeof *nn);
        if (!nn)
            break;
        names = nn;
        size_t len = strlen(dir) + strlen(de->d_name) + 2;
        names[n] = malloc(len);
        if (!names[n])
            break;
        snprintf(names[n], len, "%s/%s", dir, de->d_name);
        n++;
    }
    closedir(d);
    if (n > 1)
        qsort(names, (size_t)n, sizeof *names, cmp_str);
    int loaded = 0;
    for (int i = 0; i < n; i++) {
        loaded += load_one(reg, names[i], data_dir);
        free(names[i]);
    }
    free(names);
    return loaded;
}

void srv_models_init(srv_models *reg, const srv_config *cfg)
{
    memset(reg, 0, sizeof *reg);
    pthread_mutex_init(&reg->mu, NULL);
    reg->cfg = cfg;
    atomic_init(&reg->n, 0);
}

/* The installed models: <prefix>/share/attnd/models beside the running
 * binary's <prefix>/bin (so an installed tree works wherever it is put, as
 * cmake --install --prefix and the image lay it out), else the configured
 * install prefix's. */
static void share_models_dir(char *out, size_t n)
{
    char exe[1024];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            char dir[1100], real[PATH_MAX];
            struct stat sb;
            snprintf(dir, sizeof dir, "%s/../share/attnd/models", exe);
            if (realpath(dir, real) && stat(real, &sb) == 0 && S_ISDIR(sb.st_mode) &&
                strlen(real) < n) {
                snprintf(out, n, "%s", real);
                return;
            }
        }
    }
    snprintf(out, n, "%s", ATTND_SHARE_DIR "/models");
}

int srv_models_load(srv_models *reg)
{
    const srv_config *cfg = reg->cfg;
    int loaded = 0;
    if (cfg->n_models > 0) {
        for (int i = 0; i < cfg->n_models; i++) {
            if (!load_one(reg, cfg->models[i], NULL))
                return -1;
            loaded++;
        }
    } else if (cfg->models_dir[0]) {
        loaded = load_dir(reg, cfg->models_dir, 0, NULL);
    } else {
        struct stat sb;
        if (stat("models", &sb) == 0 && S_ISDIR(sb.st_mode))
            loaded = load_dir(reg, "models", 0, NULL);
        else {
            char dir[1100];
            share_models_dir(dir, sizeof dir);
            loaded = load_dir(reg, dir, 0, NULL);
        }
    }
    /* trained models survive restarts: what the jobs left in the data dir */
    if (cfg->data_dir[0]) {
        char dir[1100];
        snprintf(dir, sizeof dir, "%s/models", cfg->data_dir);
        loaded += load_dir(reg, dir, 1, cfg->data_dir);
    }
    return loaded;
}

int srv_models_add(srv_models *reg, const char *path, char *err, size_t errlen)
{
    char name[128];
    stem(path, name, sizeof name);
    if (srv_models_find(reg, name)) { /* before the load: the cheap refusal */
        snprintf(err, errlen, "the name \"%s\" is taken", name);
        return -2;
    }
    int broken;
    srv_model *e = entry_load(reg, path, &broken, err, errlen);
    if (!e)
        return -1;
    int rc = publish(reg, e);
    if (rc != 0) {
        if (rc == -2)
            snprintf(err, errlen, "the name \"%s\" is taken", e->name);
        else
            snprintf(err, errlen, "the registry is full (%d models)", SRV_MODELS_MAX);
        entry_destroy(e);
        return rc;
    }
    log_loaded(e);
    return 0;
}

void srv_models_deinit(srv_models *reg)
{
    int n = atomic_load(&reg->n);
    for (int i = 0; i < n; i++) {
        entry_destroy(reg->items[i]);
        reg->items[i] = NULL;
    }
    atomic_store(&reg->n, 0);
    pthread_mutex_destroy(&reg->mu);
}

int srv_models_count(const srv_models *reg)
{
    return atomic_load_explicit(&((srv_models *)reg)->n, memory_order_acquire);
}

const srv_model *srv_models_at(const srv_models *reg, int i) { return reg->items[i]; }

static int by_name(const void *a, const void *b)
{
    return strcmp((*(const srv_model *const *)a)->name, (*(const srv_model *const *)b)->name);
}

int srv_models_sorted(const srv_models *reg, const srv_model **out, int cap)
{
    int n = srv_models_count(reg);
    if (n > cap)
        n = cap;
    for (int i = 0; i < n; i++)
        out[i] = reg->items[i];
    if (n > 1)
        qsort(out, (size_t)n, sizeof *out, by_name);
    return n;
}

const srv_model *srv_models_find(const srv_models *reg, const char *name)
{
    int n = srv_models_count(reg);
    for (int i = 0; i < n; i++)
        if (!strcmp(reg->items[i]->name, name))
            return reg->items[i];
    return NULL;
}

const srv_model *srv_models_default(const srv_models *reg)
{
    int n = srv_models_count(reg);
    const srv_model *best = NULL;
    for (int i = 0; i < n; i++) {
        const srv_model *m = reg->items[i];
        if (strcmp(m->kind, "text"))
            continue;
        if (!best || (m->startup && !best->startup) ||
            (m->startup == best->startup && strcmp(m->name, best->name) < 0))
            best = m;
    }
    return best;
}
