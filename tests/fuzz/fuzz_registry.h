/*
 * fuzz_registry.h — the model registry the /generate and /recall
 * validators read, for their fuzz targets (validate.h's harness recipe).
 *
 * Two models made here with seeded random weights, so that nothing is
 * read from the tree: "tiny" (text, byte tokenizer, the name the API
 * examples use) and "mqar" (a recall model: 4 pairs, 16 keys, 16 values).
 * srv_models_add takes a path, so each is saved under a fresh directory
 * in /dev/shm (tmpfs), registered, and the file and directory removed at
 * once: the registry keeps the loaded model, the disk keeps nothing.
 */
#ifndef ATTND_FUZZ_REGISTRY_H
#define ATTND_FUZZ_REGISTRY_H

#include "fuzz_util.h"

#include "config.h"
#include "models.h"
#include "tfm/checkpoint.h"
#include "tfm/train.h"

static void fuzz_save_model(srv_models *reg, const char *dir, const char *name,
                            const tfm_config *c, const tfm_mqar *recall)
{
    tfm_model *m = NULL;
    char path[256], err[512] = "";
    snprintf(path, sizeof path, "%s/%s.safetensors", dir, name);
    if (tfm_model_create(c, &m, err, sizeof err) != TFM_OK)
        goto fail;
    tfm_model_init_random(m, 7);
    if ((recall && tfm_mqar_to_meta(m, recall) != TFM_OK) ||
        tfm_checkpoint_save(m, path, TFM_CKPT_SAFETENSORS, err, sizeof err) != TFM_OK)
        goto fail;
    int rc = srv_models_add(reg, path, err, sizeof err);
    unlink(path);
    if (rc != 0)
        goto fail;
    tfm_model_destroy(m);
    return;
fail:
    fprintf(stderr, "fuzz registry: model %s: %s\n", name, err);
    unlink(path);
    rmdir(dir);
    abort();
}

/* Fills cfg (the server's defaults) and reg; call once per process. */
static void fuzz_registry_init(srv_config *cfg, srv_models *reg)
{
    char *argv[] = {"attnd", "--quiet", NULL};
    if (srv_config_parse(cfg, 2, argv) != 0)
        abort();
    srv_models_init(reg, cfg);
    char dir[] = "/dev/shm/attnd-fuzz-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp /dev/shm");
        abort();
    }
    tfm_config text = {.dim = 8, .hidden_dim = 16, .n_layers = 1, .n_heads = 2,
                       .n_kv_heads = 1, .vocab_size = 258, .seq_len = 64,
                       .shared_classifier = 1};
    tfm_config_defaults(&text);
    fuzz_save_model(reg, dir, "tiny", &text, NULL);
    tfm_mqar p = {.n_pairs = 4, .n_keys = 16, .n_values = 16, .absent_fraction = 0.25f,
                  .seq_len = 24};
    tfm_config rc = {.dim = 8, .hidden_dim = 16, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2,
                     .vocab_size = tfm_mqar_vocab(&p), .seq_len = 24, .shared_classifier = 1};
    tfm_config_defaults(&rc);
    fuzz_save_model(reg, dir, "mqar", &rc, &p);
    rmdir(dir);
}

#endif
