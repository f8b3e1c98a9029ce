/*
 * fuzz_generate.c — POST /generate's validator, srv_generate_parse, on
 * raw bytes: the very function the route calls, with the route's limits
 * (depth --max-json-depth, 65536 elements, strings up to the body size)
 * and a registry holding a text model "tiny" and a recall model "mqar".
 *
 * Promises checked (validate.h): no crash, leak or undefined behaviour;
 * a refusal is one of the documented statuses (400, 413, 422, 404, 503)
 * with a code and a message; an accepted request has a text model, a
 * prompt of the stated length, 1..4096 tokens, at most SRV_MAX_STOP
 * non-empty stop strings, a timeout within --request-timeout-seconds,
 * and a seed equal to the body's, read from the raw literal; and the
 * prompt tokenises as the engine will (start_job) without error.
 */
#include "fuzz_registry.h"

#include <jansson.h>

#include "engine.h"
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
    srv_json_limits lim = {cfg.max_json_depth, 65536, cfg.max_body_bytes};
    char *raw = malloc(size ? size : 1); /* its own allocation: reads past it are seen */
    memcpy(raw, data, size);
    srv_job *j = srv_job_create();
    FUZZ_CHECK(j != NULL, "out of memory");
    srv_error e = {0};
    int rc = srv_generate_parse(raw, size, &lim, &reg, &cfg, j, &e);
    if (rc != 0) {
        FUZZ_CHECK(rc == -1, "returned %d", rc);
        FUZZ_CHECK(e.status == 400 || e.status == 413 || e.status == 422 || e.status == 404 ||
                       e.status == 503,
                   "status %d (%s: %s)", e.status, e.code, e.message);
        FUZZ_CHECK(e.code[0] && e.message[0], "an error without code or message");
        srv_job_unref(j);
        free(raw);
        return 0;
    }
    FUZZ_CHECK(j->model && !strcmp(j->model->kind, "text"), "not a text model");
    FUZZ_CHECK(j->prompt && strlen(j->prompt) <= j->prompt_len, "prompt");
    FUZZ_CHECK(j->max_tokens >= 1 && j->max_tokens <= 4096, "max_tokens %d", j->max_tokens);
    FUZZ_CHECK(j->n_stop >= 0 && j->n_stop <= SRV_MAX_STOP, "%d stop strings", j->n_stop);
    for (int i = 0; i < j->n_stop; i++)
        FUZZ_CHECK(j->stop[i] && j->stop_len[i] > 0, "stop string %d is empty", i);
    FUZZ_CHECK(j->timeout_ms >= 0 && j->timeout_ms <= cfg.request_timeout_s * 1000,
               "timeout_ms %d", j->timeout_ms);
    FUZZ_CHECK(j->sampling.temperature >= 0 && j->sampling.top_p >= 0 &&
                   j->sampling.top_p <= 1 && j->sampling.top_k >= 0,
               "sampling");

    /* the seed is the body's, to the last bit */
    json_error_t je;
    json_t *body = json_loadb(raw, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    json_t *seed = body ? json_object_get(body, "seed") : NULL;
    if (json_is_integer(seed))
        FUZZ_CHECK(j->sampling.seed == (uint64_t)json_integer_value(seed), "seed %llu, body %lld",
                   (unsigned long long)j->sampling.seed, (long long)json_integer_value(seed));
    json_decref(body);

    /* what the engine does first with it */
    const tfm_config *c = &j->model->model->cfg;
    int *ids = malloc((size_t)c->seq_len * sizeof *ids), n = 0;
    tfm_status st = tfm_tokenizer_encode(j->model->tok, j->prompt, j->prompt_len, 1, 0, ids,
                                         c->seq_len, &n);
    FUZZ_CHECK(st == TFM_OK || st == TFM_E_RANGE, "encode: %d", (int)st);
    for (int i = 0; i < n && i < c->seq_len; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < c->vocab_size, "token %d", ids[i]);
    free(ids);
    srv_job_unref(j);
    free(raw);
    return 0;
}
