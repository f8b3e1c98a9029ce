/*
 * fuzz_serve.h — for the checkpoint targets: a model that loads must be
 * servable.  Runs what the engine runs on a freshly loaded model, at a
 * small size: a state of at most 4 positions, a one-thread workspace, a
 * prefill of up to 3 tokens and one decode step.  Weights may be NaN or
 * huge (the loader does not judge values); nothing may crash, and both
 * calls must succeed.
 */
#ifndef ATTND_FUZZ_SERVE_H
#define ATTND_FUZZ_SERVE_H

#include "fuzz_util.h"

#include "tfm/model.h"

static void fuzz_serve(const tfm_model *m, const uint8_t *data, size_t size)
{
    const tfm_config *c = &m->cfg;
    int max_seq = c->seq_len < 4 ? c->seq_len : 4;
    tfm_state *st = NULL;
    tfm_workspace *ws = NULL;
    FUZZ_CHECK(tfm_state_create(m, max_seq, &st) == TFM_OK, "state");
    FUZZ_CHECK(tfm_workspace_create(m, 4, 1, &ws) == TFM_OK, "workspace");
    int tok[4];
    for (int i = 0; i < 4; i++)
        tok[i] = (int)((size > (size_t)i ? data[size - 1 - i] : i) % (unsigned)c->vocab_size);
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    int n = max_seq - 1 < 3 ? max_seq - 1 : 3;
    if (n > 0)
        FUZZ_CHECK(tfm_prefill(ws, st, tok, n, logits) == TFM_OK, "prefill of %d", n);
    tfm_state *const states[1] = {st};
    FUZZ_CHECK(tfm_decode(ws, states, &tok[3], 1, logits) == TFM_OK, "decode at %d", st->pos);
    FUZZ_CHECK(st->pos == n + 1, "position %d after %d tokens", st->pos, n + 1);
    free(logits);
    tfm_workspace_destroy(ws);
    tfm_state_destroy(st);
}

#endif
