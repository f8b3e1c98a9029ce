/*
 * models.c — finding, loading and naming the served models.
 *
 * A model's name is its file's stem ("models/tiny.safetensors" is "tiny").
 * llama2.c .bin files need a tokenizer.bin: --tokenizer, else one beside the
 * model; a file named tokenizer.bin is never taken for a model.  Loading
 * happens on a libuv worker before the service reports ready.
 */
#include "models.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

static int load_one(srv_models *reg, const char *path, const srv_config *cfg)
{
    char err[512] = "";
    tfm_model *m = NULL;
    tfm_tokenizer *tok = NULL;
    tfm_status s = tfm_checkpoint_load(path, TFM_CKPT_AUTO, &m, err, sizeof err);
    if (s != TFM_OK) {
        fprintf(stderr, "attnd: model %s: %s: %s\n", path, tfm_strerror(s), err);
        return 0;
    }
    if (m->tokenizer == TFM_TOKENIZER_LLAMA2C) {
        char tpath[2048];
        if (cfg->tokenizer[0]) {
            snprintf(tpath, sizeof tpath, "%s", cfg->tokenizer);
        } else {
            const char *slash = strrchr(path, '/');
            int dirlen = slash ? (int)(slash - path + 1) : 0;
            snprintf(tpath, sizeof tpath, "%.*stokenizer.bin", dirlen, path);
        }
        s = tfm_tokenizer_load_llama2c(tpath, m->cfg.vocab_size, &tok, err, sizeof err);
        if (s != TFM_OK) {
            fprintf(stderr, "attnd: model %s: tokenizer %s: %s: %s\n", path, tpath,
                    tfm_strerror(s), err);
            tfm_model_destroy(m);
            return 0;
        }
    } else {
        tfm_tokenizer_create_byte(&tok);
        if (!tok || tfm_tokenizer_vocab_size(tok) > m->cfg.vocab_size) {
            fprintf(stderr, "attnd: model %s: vocab %d is smaller than the byte tokenizer's %d\n",
                    path, m->cfg.vocab_size, TFM_BYTE_VOCAB);
            tfm_tokenizer_destroy(tok);
            tfm_model_destroy(m);
            return 0;
        }
    }
    char name[128];
    stem(path, name, sizeof name);
    if (srv_models_find(reg, name)) {
        fprintf(stderr, "attnd: model %s: the name \"%s\" is taken, skipped\n", path, name);
        tfm_tokenizer_destroy(tok);
        tfm_model_destroy(m);
        return 0;
    }
    srv_model *items = realloc(reg->items, (size_t)(reg->n + 1) * sizeof *items);
    if (!items) {
        tfm_tokenizer_destroy(tok);
        tfm_model_destroy(m);
        return 0;
    }
    reg->items = items;
    srv_model *e = &reg->items[reg->n++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->source, sizeof e->source, "%s", path);
    const char *kind = tfm_model_meta_get(m, "kind");
    e->kind = kind && !strcmp(kind, "recall") ? "recall" : "text";
    e->model = m;
    e->tok = tok;
    fprintf(stderr, "attnd: loaded model %s (%zu parameters) from %s\n", e->name,
            tfm_config_n_params(&m->cfg), path);
    return 1;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const srv_model *)a)->name, ((const srv_model *)b)->name);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int load_dir(srv_models *reg, const char *dir, const srv_config *cfg)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    char **names = NULL;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || !strcmp(de->d_name, "tokenizer.bin"))
            continue;
        if (!has_suffix(de->d_name, ".safetensors") && !has_suffix(de->d_name, ".bin"))
            continue;
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
        loaded += load_one(reg, names[i], cfg);
        free(names[i]);
    }
    free(names);
    return loaded;
}

int srv_models_load(srv_models *reg, const srv_config *cfg)
{
    int loaded = 0;
    if (cfg->n_models > 0) {
        for (int i = 0; i < cfg->n_models; i++) {
            if (!load_one(reg, cfg->models[i], cfg))
                return -1;
            loaded++;
        }
    } else if (cfg->models_dir[0]) {
        loaded = load_dir(reg, cfg->models_dir, cfg);
    } else {
        struct stat sb;
        if (stat("models", &sb) == 0 && S_ISDIR(sb.st_mode))
            loaded = load_dir(reg, "models", cfg);
        else
            loaded = load_dir(reg, ATTND_SHARE_DIR "/models", cfg);
    }
    if (reg->n > 1)
        qsort(reg->items, (size_t)reg->n, sizeof *reg->items, by_name);
    for (int i = 0; i < reg->n; i++)
        reg->items[i].index = i;
    return loaded;
}

void srv_models_deinit(srv_models *reg)
{
    for (int i = 0; i < reg->n; i++) {
        tfm_tokenizer_destroy(reg->items[i].tok);
        tfm_model_destroy(reg->items[i].model);
    }
    free(reg->items);
    reg->items = NULL;
    reg->n = 0;
}

const srv_model *srv_models_find(const srv_models *reg, const char *name)
{
    for (int i = 0; i < reg->n; i++)
        if (!strcmp(reg->items[i].name, name))
            return &reg->items[i];
    return NULL;
}

const srv_model *srv_models_default(const srv_models *reg)
{
    for (int i = 0; i < reg->n; i++)
        if (!strcmp(reg->items[i].kind, "text"))
            return &reg->items[i];
    return NULL;
}
