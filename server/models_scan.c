/*
 * models_scan.c — finding, loading, naming and registering the served
 * models: the start-up scan, a training job's new model, the rescan and
 * the delete (the registry itself is models.c).
 *
 * A model's name is its file's stem ("models/tiny.safetensors" is "tiny").
 * llama2.c .bin files need a tokenizer.bin: --tokenizer, else one beside the
 * model; a file named tokenizer.bin is never taken for a model.  A model
 * whose metadata says task "recall" (tfm_mqar_from_meta) is a recall model:
 * it has no tokenizer, /generate refuses it and /recall's model engine
 * serves it; any other is a text model with a byte or llama2.c tokenizer.
 *
 * Concurrency (see models.h): a model is loaded outside the registry's
 * lock (that is the slow part), then published under it; readers never
 * lock.  Rescans and deletes hold reload_mu, so that a delete cannot race
 * a rescan that is loading the same file back.
 *
 * The rescan (srv_models_reload) compares the files with what is served,
 * by path and by the file's identity (device, inode, size, modification
 * time), so a model another replica writes into a shared trained-models
 * dir (a temp name, then a rename: never half a file) is loaded, one it
 * deletes is dropped, and one replaced in place is swapped.  A file that
 * fails to load is logged once and skipped until it changes (a copy still
 * growing is retried when it has); the rescan never moves a file.
 * Temporary files are skipped; only those older than STALE_TEMP_S are
 * deleted, at start-up, since in a shared dir a young one is another
 * replica's write in progress.
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
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "datadir.h"
#include "models_internal.h"
#include "tfm/checkpoint.h"
#include "tfm/quant.h"

/* A temporary file older than this is a write that will never finish. */
#define STALE_TEMP_S 600

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

#define entry_destroy srv_model_entry_destroy

/* The identity of the file at path (following links unless nofollow);
 * 0, or -1 when it cannot be stat'ed. */
static int file_id(const char *path, int nofollow, srv_model *e)
{
    struct stat sb;
    if ((nofollow ? lstat(path, &sb) : stat(path, &sb)) != 0)
        return -1;
    e->dev = (unsigned long long)sb.st_dev;
    e->ino = (unsigned long long)sb.st_ino;
    e->size = (unsigned long long)sb.st_size;
    e->mtime_ns = (unsigned long long)sb.st_mtim.tv_sec * 1000000000ull +
                  (unsigned long long)sb.st_mtim.tv_nsec;
    return 0;
}

static int same_file(const srv_model *a, const srv_model *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime_ns == b->mtime_ns;
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
    file_id(path, 0, e); /* before the read: a change meanwhile shows at the next rescan */
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
    /* --weights: float32 text models (a recall model answers through the
     * trainer's forward, which needs float32; they are small).  A file saved
     * quantised (attn quantize) is served in its own format. */
    tfm_wformat wf = TFM_WF_F32, stored = (tfm_wformat)tfm_model_wformat(m);
    if (reg->cfg && tfm_wformat_parse(reg->cfg->weights, &wf) == TFM_OK && stored != TFM_WF_F32 &&
        wf != stored)
        fprintf(stderr, "attnd: model %s: served as stored, %s (--weights %s applies to float32 "
                "files)\n", e->name, tfm_wformat_name(stored), tfm_wformat_name(wf));
    else if (wf != TFM_WF_F32 && stored == TFM_WF_F32) {
        s = tfm_model_quantize(m, wf, msg, sizeof msg);
        if (s == TFM_E_NOMEM) {
            snprintf(err, errlen, "%s: %s", tfm_strerror(s), msg);
            goto fail;
        }
        if (s != TFM_OK) /* a shape q8 cannot take: served as it is */
            fprintf(stderr, "attnd: model %s: kept in f32: %s\n", e->name, msg);
    }
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

static void log_loaded(const srv_model *e)
{
    if (!strcmp(e->kind, "recall"))
        fprintf(stderr, "attnd: loaded recall model %s (%zu parameters; %d pairs, %d keys, %d "
                "values) from %s\n", e->name, tfm_config_n_params(&e->model->cfg),
                e->recall.n_pairs, e->recall.n_keys, e->recall.n_values, e->source);
    else
        fprintf(stderr, "attnd: loaded model %s (%zu parameters, %s, %.1f MB) from %s\n", e->name,
                tfm_config_n_params(&e->model->cfg),
                tfm_wformat_name((tfm_wformat)tfm_model_wformat(e->model)),
                (double)tfm_model_weight_bytes(e->model) / 1e6, e->source);
}

/* Start-up: one file; 1 loaded, 0 skipped (message printed).  data_dir:
 * the file is in the trained-models dir and quarantined (into
 * <data_dir>/quarantine) when broken; NULL for the read-only places. */
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
    e->trained = data_dir != NULL;
    int rc = srv_models_publish(reg, e, NULL);
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

typedef struct paths {
    char **p;
    int n;
} paths;

static void paths_free(paths *ps)
{
    for (int i = 0; i < ps->n; i++)
        free(ps->p[i]);
    free(ps->p);
    ps->p = NULL;
    ps->n = 0;
}

static int paths_add(paths *ps, const char *dir, const char *name)
{
    char **nn = realloc(ps->p, (size_t)(ps->n + 1) * sizeof *nn);
    if (!nn)
        return -1;
    ps->p = nn;
    size_t len = (dir ? strlen(dir) + 1 : 0) + strlen(name) + 1;
    if (!(ps->p[ps->n] = malloc(len)))
        return -1;
    snprintf(ps->p[ps->n++], len, "%s%s%s", dir ? dir : "", dir ? "/" : "", name);
    return 0;
}

/* A temporary file of a write that did not finish: removed when it is
 * old enough not to be anyone's write in progress, at start-up only. */
static void stale_temp(const char *path, int startup)
{
    struct stat sb;
    char shown[2400];
    if (!startup || lstat(path, &sb) != 0 || time(NULL) - sb.st_mtime < STALE_TEMP_S)
        return;
    srv_data_printable(path, shown, sizeof shown);
    if (unlink(path) == 0)
        fprintf(stderr, "attnd: data: %s: removed (the temporary file of a write that did not "
                "finish)\n", shown);
}

/* The model files of dir, sorted, appended to out; .bin too unless
 * only_safetensors.  data_dir: dir is the trained-models dir (files there
 * that cannot be served are quarantined into it at start-up; a rescan
 * skips them, quietly); NULL for the read-only models dir.  0, or -1 when
 * dir exists but cannot be read (its models are then not known gone). */
static int list_dir(const char *dir, int only_safetensors, const char *data_dir, int startup,
                    paths *out)
{
    DIR *d = opendir(dir);
    if (!d) /* a dir that is not there has no models; one that cannot be read, unknown */
        return errno == ENOENT ? 0 : -1;
    int first = out->n;
    struct dirent *de;
    while ((de = readdir(d))) {
        char path[2200], shown[2400];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (data_dir && srv_data_is_temp(de->d_name)) {
            stale_temp(path, startup);
            continue;
        }
        if (de->d_name[0] == '.' || !strcmp(de->d_name, "tokenizer.bin"))
            continue;
        if (!has_suffix(de->d_name, ".safetensors") &&
            (only_safetensors || !has_suffix(de->d_name, ".bin")))
            continue;
        if (!srv_data_name_ok(de->d_name)) { /* its name would be served as is */
            if (!startup)
                continue;
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
            if (startup)
                srv_data_quarantine(data_dir, path, "a symbolic link (trained models are files)");
            continue;
        }
        if (paths_add(out, dir, de->d_name))
            break;
    }
    closedir(d);
    if (out->n - first > 1)
        qsort(out->p + first, (size_t)(out->n - first), sizeof *out->p, cmp_str);
    return 0;
}

static int load_dir(srv_models *reg, const char *dir, int only_safetensors, const char *data_dir)
{
    paths ps = {0};
    list_dir(dir, only_safetensors, data_dir, 1, &ps);
    int loaded = 0;
    for (int i = 0; i < ps.n; i++)
        loaded += load_one(reg, ps.p[i], data_dir);
    paths_free(&ps);
    return loaded;
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

static int load_all(srv_models *reg);

int srv_models_load(srv_models *reg)
{
    pthread_mutex_lock(&reg->reload_mu); /* a rescan waits for the start-up scan */
    int loaded = load_all(reg);
    pthread_mutex_unlock(&reg->reload_mu);
    return loaded;
}

static int load_all(srv_models *reg)
{
    const srv_config *cfg = reg->cfg;
    int loaded = 0;
    reg->bundled_dir[0] = 0;
    if (cfg->n_models > 0) {
        for (int i = 0; i < cfg->n_models; i++) {
            if (!load_one(reg, cfg->models[i], NULL))
                return -1;
            loaded++;
        }
    } else {
        struct stat sb;
        if (cfg->models_dir[0])
            snprintf(reg->bundled_dir, sizeof reg->bundled_dir, "%s", cfg->models_dir);
        else if (stat("models", &sb) == 0 && S_ISDIR(sb.st_mode))
            snprintf(reg->bundled_dir, sizeof reg->bundled_dir, "models");
        else
            share_models_dir(reg->bundled_dir, sizeof reg->bundled_dir);
        loaded = load_dir(reg, reg->bundled_dir, 0, NULL);
    }
    /* trained models survive restarts: what the jobs left */
    if (cfg->trained_dir[0])
        loaded += load_dir(reg, cfg->trained_dir, 1, cfg->data_dir);
    return loaded;
}

int srv_models_add(srv_models *reg, const char *path, char *err, size_t errlen)
{
    char name[128];
    stem(path, name, sizeof name);
    const srv_model *had = srv_models_get(reg, name);
    if (had) { /* before the load: the cheap refusal, unless a rescan was first */
        srv_model now;
        int same = !strcmp(had->source, path) && file_id(path, 0, &now) == 0 &&
                   same_file(had, &now);
        srv_model_put(had);
        if (same)
            return 0;
        snprintf(err, errlen, "the name \"%s\" is taken", name);
        return -2;
    }
    int broken;
    srv_model *e = entry_load(reg, path, &broken, err, errlen);
    if (!e)
        return -1;
    e->trained = 1;
    int rc = srv_models_publish(reg, e, NULL);
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

/* ---- the rescan ------------------------------------------------------------ */

/* A file that failed, as it was then: skipped until it changes. */
typedef struct srv_reload_memo {
    struct memo_item {
        char path[1100];
        srv_model id; /* dev, ino, size, mtime_ns */
        int seen;     /* listed by the current rescan */
    } *items;
    int n, cap;
} memo;

void srv_reload_memo_free(srv_models *reg)
{
    if (reg->memo)
        free(reg->memo->items);
    free(reg->memo);
    reg->memo = NULL;
}

/* Whether path failed already as it is now (marks it seen). */
static int memo_known(memo *mm, const char *path, const srv_model *id)
{
    for (int i = 0; mm && i < mm->n; i++)
        if (!strcmp(mm->items[i].path, path)) {
            mm->items[i].seen = 1;
            if (same_file(&mm->items[i].id, id))
                return 1;
            mm->items[i] = mm->items[--mm->n]; /* changed: try again */
            return 0;
        }
    return 0;
}

static void memo_add(srv_models *reg, const char *path, const srv_model *id)
{
    memo *mm = reg->memo;
    if (!mm && !(mm = reg->memo = calloc(1, sizeof *mm)))
        return;
    if (mm->n == mm->cap) {
        int cap = mm->cap ? mm->cap * 2 : 16;
        struct memo_item *it = realloc(mm->items, (size_t)cap * sizeof *it);
        if (!it)
            return;
        mm->items = it, mm->cap = cap;
    }
    struct memo_item *it = &mm->items[mm->n++];
    snprintf(it->path, sizeof it->path, "%s", path);
    it->id = *id;
    it->seen = 1;
}

static void result_name(char (*list)[128], int *n, const char *name)
{
    if (*n < SRV_MODELS_MAX)
        snprintf(list[(*n)++], 128, "%s", name);
}

static void failed(srv_models *reg, srv_reload_result *res, const char *path,
                   const srv_model *id, const char *why)
{
    char shown[1200];
    srv_data_printable(path, shown, sizeof shown);
    fprintf(stderr, "attnd: model %s: %s; skipped (until the file changes)\n", shown, why);
    memo_add(reg, path, id);
    if (res && res->n_failed < (int)(sizeof res->failed / sizeof *res->failed)) {
        snprintf(res->failed[res->n_failed].file, sizeof res->failed[0].file, "%.500s", shown);
        snprintf(res->failed[res->n_failed].error, sizeof res->failed[0].error, "%.250s", why);
        res->n_failed++;
    }
}

/* Loads path as a new entry for the rescan; NULL when it failed (logged). */
static srv_model *rescan_load(srv_models *reg, srv_reload_result *res, const char *path,
                              int trained, const srv_model *id)
{
    char err[1024];
    int broken;
    srv_model *e = entry_load(reg, path, &broken, err, sizeof err);
    if (!e) {
        failed(reg, res, path, id, err);
        return NULL;
    }
    e->trained = trained;
    return e;
}

int srv_models_reload(srv_models *reg, srv_reload_result *res)
{
    const srv_config *cfg = reg->cfg;
    if (res)
        memset(res, 0, sizeof *res);
    pthread_mutex_lock(&reg->reload_mu);
    paths want = {0};
    int n_bundled, bundled_ok = 1, trained_ok = 1;
    if (cfg->n_models > 0)
        for (int i = 0; i < cfg->n_models; i++) {
            struct stat sb;
            if (stat(cfg->models[i], &sb) == 0) /* a --model that is gone is dropped */
                paths_add(&want, NULL, cfg->models[i]);
        }
    else if (reg->bundled_dir[0])
        bundled_ok = list_dir(reg->bundled_dir, 0, NULL, 0, &want) == 0;
    n_bundled = want.n;
    if (cfg->trained_dir[0])
        trained_ok = list_dir(cfg->trained_dir, 1, cfg->data_dir, 0, &want) == 0;
    if (!bundled_ok || !trained_ok)
        fprintf(stderr, "attnd: models: rescan: cannot read %s; its models stay\n",
                !bundled_ok ? reg->bundled_dir : cfg->trained_dir);
    unsigned char *handled = calloc((size_t)want.n + 1, 1);
    const srv_model **had = malloc(SRV_MODELS_MAX * sizeof *had);
    int changes = 0;
    if (!handled || !had) {
        fprintf(stderr, "attnd: models: rescan: out of memory\n");
        goto out;
    }
    for (int i = 0; reg->memo && i < reg->memo->n; i++)
        reg->memo->items[i].seen = 0;
    /* 1. what is served: keep, replace or drop */
    int n_had = srv_models_snapshot(reg, had, SRV_MODELS_MAX);
    for (int h = 0; h < n_had; h++) {
        const srv_model *m = had[h];
        int w = -1;
        for (int i = 0; i < want.n && w < 0; i++)
            if (!strcmp(want.p[i], m->source))
                w = i;
        if (w < 0 && !(m->trained ? trained_ok : bundled_ok))
            continue; /* its dir could not be read this time */
        if (w < 0) {
            if (srv_models_unpublish(reg, m) == 0) {
                fprintf(stderr, "attnd: model %s: its file %s is gone; dropped\n", m->name,
                        m->source);
                if (res)
                    result_name(res->removed, &res->n_removed, m->name);
                changes++;
            }
            continue;
        }
        handled[w] = 1;
        srv_model id = {0};
        if (file_id(m->source, 0, &id) != 0 || same_file(m, &id) ||
            memo_known(reg->memo, m->source, &id))
            continue;
        srv_model *e = rescan_load(reg, res, m->source, w >= n_bundled, &id);
        if (!e)
            continue; /* the served copy stays */
        if (srv_models_publish(reg, e, m) != 0) {
            entry_destroy(e);
            continue;
        }
        fprintf(stderr, "attnd: model %s: its file changed; reloaded\n", e->name);
        if (res)
            result_name(res->replaced, &res->n_replaced, e->name);
        changes++;
    }
    srv_models_put_all(had, n_had);
    /* 2. the new files */
    for (int i = 0; i < want.n; i++) {
        if (handled[i])
            continue;
        srv_model id = {0};
        if (file_id(want.p[i], 0, &id) != 0 || memo_known(reg->memo, want.p[i], &id))
            continue;
        char name[128];
        stem(want.p[i], name, sizeof name);
        if (srv_models_has(reg, name)) {
            failed(reg, res, want.p[i], &id, "its name is taken by another model's file");
            continue;
        }
        srv_model *e = rescan_load(reg, res, want.p[i], i >= n_bundled, &id);
        if (!e)
            continue;
        int rc = srv_models_publish(reg, e, NULL);
        if (rc != 0) {
            failed(reg, res, want.p[i], &id, rc == -2 ? "its name is taken" : "the registry is full");
            entry_destroy(e);
            continue;
        }
        log_loaded(e);
        if (res)
            result_name(res->added, &res->n_added, e->name);
        changes++;
    }
    /* forget the failures of files that are gone */
    for (int i = 0; reg->memo && i < reg->memo->n;)
        if (!reg->memo->items[i].seen)
            reg->memo->items[i] = reg->memo->items[--reg->memo->n];
        else
            i++;
out:
    free(had);
    free(handled);
    paths_free(&want);
    pthread_mutex_unlock(&reg->reload_mu);
    return changes;
}

int srv_models_delete(srv_models *reg, const char *name, char *err, size_t errlen)
{
    pthread_mutex_lock(&reg->reload_mu);
    const srv_model *m = srv_models_get(reg, name);
    int rc = 0;
    if (!m) {
        rc = -1;
    } else if (!m->trained) {
        snprintf(err, errlen, "model \"%s\" is bundled (%s): read only; only trained models "
                 "can be deleted", name, m->source);
        rc = -2;
    } else if (unlink(m->source) != 0 && errno != ENOENT) { /* ENOENT: another replica was first */
        snprintf(err, errlen, "cannot remove %s: %s", m->source, strerror(errno));
        rc = -3;
    } else {
        srv_models_unpublish(reg, m);
        fprintf(stderr, "attnd: model %s: deleted (%s)\n", m->name, m->source);
    }
    srv_model_put(m); /* a request still using it frees it when it ends */
    pthread_mutex_unlock(&reg->reload_mu);
    return rc;
}
