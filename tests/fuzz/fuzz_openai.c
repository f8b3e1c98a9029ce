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

#include "fuzz_job.h"
#include "openai.h"
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
        fuzz_check_refusal(rc, &e);
        srv_job_unref(g);
        free(raw);
        return 0;
    }
    FUZZ_CHECK(g->n_children >= 1 && g->n_children <= 64, "%d children", g->n_children);
    FUZZ_CHECK(g->model && !strcmp(g->model->kind, "text"), "not a text model");
    FUZZ_CHECK(g->fmt == &srv_format_openai && g->fmt_ctx, "format");
    for (int i = 0; i < g->n_children; i++) {
        srv_job *j = g->children[i];
        FUZZ_CHECK(j->parent == g && j->index == i, "child %d's links", i);
        FUZZ_CHECK(j->model == g->model, "child %d's model", i);
        fuzz_check_sequence(j, 4096, cfg.request_timeout_s * 1000);
        FUZZ_CHECK(j->fmt == &srv_format_openai, "child %d's format", i);
        if (j->share) {
            FUZZ_CHECK(j->share->parent == g && j->share->index < i, "child %d's share", i);
            FUZZ_CHECK(j->share->prompt_len == j->prompt_len &&
                           !memcmp(j->share->prompt, j->prompt, j->prompt_len),
                       "child %d shares a different prompt", i);
        }
    }
    srv_job_unref(g);
    free(raw);
    return 0;
}
