/*
 * fuzz_llama2c.c — tfm_checkpoint_load on arbitrary bytes read as a
 * llama2.c .bin (seven int32, then the weights in run.c's order).
 *
 * Promises checked: no crash, leak or undefined behaviour on any input;
 * failures are documented statuses with a message; a loaded model has a
 * valid config, the tokenizer kind llama2c and a file of exactly the
 * size its config needs; and content detection (TFM_CKPT_AUTO) reads
 * every valid .bin as the same model (bytes 4..7, hidden_dim, are never
 * zero in one, which is what tells it from safetensors); and the model
 * can be served (fuzz_serve.h: prefill and decode run on it).
 */
#include "fuzz_serve.h"

#include "tfm/checkpoint.h"

static fuzz_memfile mf;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_memfile_set(&mf, data, size);
    char err[512] = "";
    tfm_model *m = NULL;
    tfm_status st = tfm_checkpoint_load(path, TFM_CKPT_LLAMA2C, &m, err, sizeof err);
    if (st != TFM_OK) {
        FUZZ_CHECK(m == NULL, "a failed load returned a model");
        FUZZ_CHECK(st == TFM_E_TRUNCATED || st == TFM_E_FORMAT || st == TFM_E_NOMEM,
                   "status %d (%s)", (int)st, err);
        FUZZ_CHECK(err[0] != 0, "status %d without a message", (int)st);
        return 0;
    }
    char msg[200] = "";
    FUZZ_CHECK(tfm_config_validate(&m->cfg, msg, sizeof msg) == TFM_OK, "%s", msg);
    FUZZ_CHECK(m->tokenizer == TFM_TOKENIZER_LLAMA2C, "tokenizer kind %d", (int)m->tokenizer);
    size_t head = (size_t)(m->cfg.dim / m->cfg.n_heads);
    size_t want = 28 + (m->n_floats + (size_t)m->cfg.seq_len * head) * sizeof(float);
    FUZZ_CHECK(size == want, "file of %zu bytes, config needs %zu", size, want);
    tfm_model *a = NULL;
    st = tfm_checkpoint_load(path, TFM_CKPT_AUTO, &a, err, sizeof err);
    FUZZ_CHECK(st == TFM_OK, "AUTO did not load a valid .bin: %s", err);
    FUZZ_CHECK(memcmp(&a->cfg, &m->cfg, sizeof a->cfg) == 0, "AUTO read another config");
    FUZZ_CHECK(memcmp(a->data, m->data, m->n_floats * sizeof(float)) == 0,
               "AUTO read other weights");
    tfm_model_destroy(a);
    fuzz_serve(m, data, size);
    tfm_model_destroy(m);
    return 0;
}
