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

#include "fuzz_job.h"
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
        fuzz_check_refusal(rc, &e);
        srv_job_unref(j);
        free(raw);
        return 0;
    }
    fuzz_check_sequence(j, 4096, cfg.request_timeout_s * 1000);
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

    srv_job_unref(j);
    free(raw);
    return 0;
}
