/*
 * fuzz_safetensors.c — tfm_checkpoint_load on arbitrary bytes read as a
 * safetensors file.
 *
 * The reader takes a path, so each input goes to an anonymous in-memory
 * file (fuzz_util.h).  Promises checked: no crash, leak or undefined
 * behaviour on any input (tfm/checkpoint.h: "nothing here aborts on
 * input"); a failure is one of the documented statuses with a message;
 * a model that loads has a valid config, content detection
 * (TFM_CKPT_AUTO) finds the same model when the header starts with '{'
 * as every writer's does, and it can be served (fuzz_serve.h: prefill
 * and decode run on it).  Quantised files (bf16, q8, q4 matrices) take
 * the same path; the corpus has one of each.
 */
#include "fuzz_serve.h"

#include "tfm/checkpoint.h"
#include "tfm/quant.h"

static fuzz_memfile mf;

static int documented(tfm_status st)
{
    return st == TFM_E_TRUNCATED || st == TFM_E_FORMAT || st == TFM_E_SHAPE ||
           st == TFM_E_UNSUPPORTED || st == TFM_E_NOMEM;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_memfile_set(&mf, data, size);
    char err[512] = "";
    tfm_model *m = NULL;
    tfm_status st = tfm_checkpoint_load(path, TFM_CKPT_SAFETENSORS, &m, err, sizeof err);
    if (st != TFM_OK) {
        FUZZ_CHECK(m == NULL, "a failed load returned a model");
        FUZZ_CHECK(documented(st), "status %d (%s)", (int)st, err);
        FUZZ_CHECK(err[0] != 0, "status %d without a message", (int)st);
        return 0;
    }
    char msg[200] = "";
    FUZZ_CHECK(tfm_config_validate(&m->cfg, msg, sizeof msg) == TFM_OK, "%s", msg);
    const tfm_config *c = &m->cfg;
    if (tfm_model_wformat(m) == TFM_WF_F32)
        FUZZ_CHECK(m->n_floats == tfm_config_n_params(c), "n_floats %zu", m->n_floats);
    else /* quantised (checkpoint_quant.c): the embedding and the norms stay float32 */
        FUZZ_CHECK(m->n_floats == (size_t)c->vocab_size * c->dim +
                                      (size_t)c->n_layers * 2 * c->dim + (size_t)c->dim,
                   "quantised n_floats %zu", m->n_floats);
    FUZZ_CHECK(size >= 8 + m->n_floats * sizeof(float), "a model larger than its file");
    if (size >= 9 && data[8] == '{') {
        tfm_model *a = NULL;
        st = tfm_checkpoint_load(path, TFM_CKPT_AUTO, &a, err, sizeof err);
        FUZZ_CHECK(st == TFM_OK, "AUTO did not load a valid safetensors file: %s", err);
        FUZZ_CHECK(memcmp(&a->cfg, &m->cfg, sizeof a->cfg) == 0, "AUTO read another config");
        FUZZ_CHECK(tfm_model_wformat(a) == tfm_model_wformat(m), "AUTO read another format");
        FUZZ_CHECK(memcmp(a->data, m->data, m->n_floats * sizeof(float)) == 0,
                   "AUTO read other weights");
        tfm_model_destroy(a);
    }
    fuzz_serve(m, data, size);
    tfm_model_destroy(m);
    return 0;
}
