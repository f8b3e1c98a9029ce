/*
 * fuzz_job.h — the checks the generation validators' targets share
 * (fuzz_generate.c, fuzz_openai.c, fuzz_tgi.c): what a refusal must be,
 * what every accepted sequence must hold, and the engine's first steps
 * with it (start_job: the sampler takes its params, the prompt
 * tokenises).
 */
#ifndef ATTND_FUZZ_JOB_H
#define ATTND_FUZZ_JOB_H

#include "fuzz_util.h"

#include "engine.h"
#include "error.h"
#include "tfm/sampler.h"
#include "tfm/tokenizer.h"

/* A validator's refusal: -1, one of the documented statuses (400, 413,
 * 422, 404, 503), a code and a message. */
static void fuzz_check_refusal(int rc, const srv_error *e)
{
    FUZZ_CHECK(rc == -1, "returned %d", rc);
    FUZZ_CHECK(e->status == 400 || e->status == 413 || e->status == 422 || e->status == 404 ||
                   e->status == 503,
               "status %d (%s: %s)", e->status, e->code, e->message);
    FUZZ_CHECK(e->code[0] && e->message[0], "an error without code or message");
}

/* An accepted sequence: a text model, its prompt, 1..max_tokens tokens,
 * at most SRV_MAX_STOP non-empty stop strings, a timeout within
 * timeout_cap_ms, logprobs in -1..20; then what the engine does first:
 * the sampler takes the params, the prompt tokenises to ids in range. */
static void fuzz_check_sequence(const srv_job *j, int max_tokens, int timeout_cap_ms)
{
    FUZZ_CHECK(j->model && !strcmp(j->model->kind, "text"), "not a text model");
    FUZZ_CHECK(j->prompt && strlen(j->prompt) <= j->prompt_len, "prompt");
    FUZZ_CHECK(j->max_tokens >= 1 && j->max_tokens <= max_tokens, "max_tokens %d", j->max_tokens);
    FUZZ_CHECK(j->n_stop >= 0 && j->n_stop <= SRV_MAX_STOP, "%d stop strings", j->n_stop);
    for (int i = 0; i < j->n_stop; i++)
        FUZZ_CHECK(j->stop[i] && j->stop_len[i] > 0, "stop string %d is empty", i);
    FUZZ_CHECK(j->timeout_ms >= 0 && j->timeout_ms <= timeout_cap_ms, "timeout_ms %d",
               j->timeout_ms);
    FUZZ_CHECK(j->logprobs >= -1 && j->logprobs <= TFM_MAX_TOP_LOGPROBS, "logprobs %d",
               j->logprobs);
    const tfm_config *c = &j->model->model->cfg;
    tfm_sampler_params sp = j->sampling;
    if (j->logprobs >= 0)
        sp.top_logprobs = j->logprobs;
    tfm_sampler *smp = NULL;
    FUZZ_CHECK(tfm_sampler_create(c->vocab_size, &sp, &smp) == TFM_OK,
               "the sampler refuses the params");
    tfm_sampler_destroy(smp);
    int *ids = malloc((size_t)c->seq_len * sizeof *ids), n = 0;
    FUZZ_CHECK(ids != NULL, "out of memory");
    tfm_status st = tfm_tokenizer_encode(j->model->tok, j->prompt, j->prompt_len, 1, 0, ids,
                                         c->seq_len, &n);
    FUZZ_CHECK(st == TFM_OK || st == TFM_E_RANGE, "encode: %d", (int)st);
    for (int i = 0; i < n && i < c->seq_len; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < c->vocab_size, "token %d", ids[i]);
    free(ids);
}

#endif
