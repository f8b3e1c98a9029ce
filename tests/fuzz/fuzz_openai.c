/*
 * fuzz_openai.c — the /v1 validator, srv_openai_parse, on raw bytes: the
 * very function POST /v1/completions and POST /v1/chat/completions call,
 * with the route's limits and a registry holding a text model "tiny" and a
 * recall model "mqar".  The first byte picks the route (odd: chat), the
 * rest is the body.
 *
 * Promises checked (validate.h): no crash, leak or undefined behaviour; a
 * refusal is one of the documented statuses (400, 413, 422, 404, 503)
 * with a code and a message; an accepted request is a group of 1..64
 * children, each with the group's text model, a prompt, 1..4096 tokens,
 * at most SRV_MAX_STOP non-empty stop strings, a timeout within
 * --request-timeout-seconds, logprobs in -1..20, OpenAI's format, a share
 * that is an earlier child with the same prompt, and sampling parameters
 * the sampler accepts (tfm_sampler_create: penalties, bias ids, min_p);
 * and each prompt tokenises as the engine will, without error.
 */
#include "fuzz_registry.h"

#include "engine.h"
#include "openai.h"
#include "tfm/sampler.h"
#include "validate.h"

static srv_config cfg;
static srv_models reg;
static int ready;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ready) {
        fuzz_registry_init(&cfg, &reg);
        ready = 1;
    }
    if (size < 1)
        return 0;
    int chat = data[0] & 1;
    size--, data++;
    srv_json_limits lim = {cfg.max_json_depth, 65536, cfg.max_body_bytes};
    char *raw = malloc(size ? size : 1); /* its own allocation: reads past it are seen */
    memcpy(raw, data, size);
    srv_job *g = srv_job_create();
    FUZZ_CHECK(g != NULL, "out of memory");
    srv_error e = {0};
    int rc = srv_openai_parse(raw, size, &lim, &reg, &cfg, chat, g, &e);
    if (rc != 0) {
        FUZZ_CHECK(rc == -1, "returned %d", rc);
        FUZZ_CHECK(e.status == 400 || e.status == 413 || e.status == 422 || e.status == 404 ||
                       e.status == 503,
                   "status %d (%s: %s)", e.status, e.code, e.message);
        FUZZ_CHECK(e.code[0] && e.message[0], "an error without code or message");
        srv_job_unref(g);
        free(raw);
        return 0;
    }
    FUZZ_CHECK(g->n_children >= 1 && g->n_children <= 64, "%d children", g->n_children);
    FUZZ_CHECK(g->model && !strcmp(g->model->kind, "text"), "not a text model");
    FUZZ_CHECK(g->fmt == &srv_format_openai && g->fmt_ctx, "format");
    const tfm_config *c = &g->model->model->cfg;
    int *ids = malloc((size_t)c->seq_len * sizeof *ids);
    for (int i = 0; i < g->n_children; i++) {
        srv_job *j = g->children[i];
        FUZZ_CHECK(j->parent == g && j->index == i, "child %d's links", i);
        FUZZ_CHECK(j->model == g->model, "child %d's model", i);
        FUZZ_CHECK(j->prompt && strlen(j->prompt) <= j->prompt_len, "child %d's prompt", i);
        FUZZ_CHECK(j->max_tokens >= 1 && j->max_tokens <= 4096, "max_tokens %d", j->max_tokens);
        FUZZ_CHECK(j->n_stop >= 0 && j->n_stop <= SRV_MAX_STOP, "%d stop strings", j->n_stop);
        for (int k = 0; k < j->n_stop; k++)
            FUZZ_CHECK(j->stop[k] && j->stop_len[k] > 0, "stop string %d is empty", k);
        FUZZ_CHECK(j->timeout_ms >= 0 && j->timeout_ms <= cfg.request_timeout_s * 1000,
                   "timeout_ms %d", j->timeout_ms);
        FUZZ_CHECK(j->logprobs >= -1 && j->logprobs <= TFM_MAX_TOP_LOGPROBS, "logprobs %d",
                   j->logprobs);
        FUZZ_CHECK(j->fmt == &srv_format_openai, "child %d's format", i);
        if (j->share) {
            FUZZ_CHECK(j->share->parent == g && j->share->index < i, "child %d's share", i);
            FUZZ_CHECK(j->share->prompt_len == j->prompt_len &&
                           !memcmp(j->share->prompt, j->prompt, j->prompt_len),
                       "child %d shares a different prompt", i);
        }
        /* the engine's first steps with it: the sampler takes its params,
         * its prompt tokenises */
        tfm_sampler_params sp = j->sampling;
        if (j->logprobs >= 0)
            sp.top_logprobs = j->logprobs;
        tfm_sampler *smp = NULL;
        FUZZ_CHECK(tfm_sampler_create(c->vocab_size, &sp, &smp) == TFM_OK,
                   "child %d: the sampler refuses its params", i);
        tfm_sampler_destroy(smp);
        int n = 0;
        tfm_status st = tfm_tokenizer_encode(j->model->tok, j->prompt, j->prompt_len, 1, 0, ids,
                                             c->seq_len, &n);
        FUZZ_CHECK(st == TFM_OK || st == TFM_E_RANGE, "encode: %d", (int)st);
    }
    free(ids);
    srv_job_unref(g);
    free(raw);
    return 0;
}
