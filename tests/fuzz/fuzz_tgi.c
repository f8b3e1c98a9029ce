/*
 * fuzz_tgi.c — TGI's validator, srv_tgi_parse, on raw bytes: the very
 * function /generate (with "inputs"), /generate_stream and POST / call,
 * with the routes' limits and a registry holding a text model "tiny" and
 * a recall model "mqar".  The first byte picks the route (mod 3), the
 * rest is the body.
 *
 * Promises checked (validate.h): no crash, leak or undefined behaviour; a
 * refusal is one of the documented statuses (400, 413, 422, 404, 503)
 * with a code and a message; an accepted request has a text model, the
 * inputs as its prompt, 1..4096 new tokens, at most SRV_MAX_STOP
 * non-empty stop strings, TGI's format, logprobs in -1..5, sampling
 * parameters the sampler accepts, and a prompt that tokenises as the
 * engine will.
 */
#include "fuzz_registry.h"

#include "fuzz_job.h"
#include "tgi.h"
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
    int route = data[0] % 3;
    size--, data++;
    srv_json_limits lim = {cfg.max_json_depth, 65536, cfg.max_body_bytes};
    char *raw = malloc(size ? size : 1); /* its own allocation: reads past it are seen */
    memcpy(raw, data, size);
    srv_job *j = srv_job_create();
    FUZZ_CHECK(j != NULL, "out of memory");
    srv_error e = {0};
    int rc = srv_tgi_parse(raw, size, &lim, &reg, &cfg, route, j, &e);
    if (rc != 0) {
        fuzz_check_refusal(rc, &e);
        srv_job_unref(j);
        free(raw);
        return 0;
    }
    fuzz_check_sequence(j, TGI_MAX_NEW_TOKENS, cfg.request_timeout_s * 1000);
    FUZZ_CHECK(j->fmt == &srv_format_tgi && j->fmt_ctx, "format");
    FUZZ_CHECK(j->logprobs <= TGI_MAX_TOP_N, "logprobs %d", j->logprobs);
    FUZZ_CHECK(route != TGI_STREAM || j->stream, "/generate_stream without a stream");
    FUZZ_CHECK(j->timeout_ms == cfg.request_timeout_s * 1000, "timeout_ms %d", j->timeout_ms);
    srv_job_unref(j);
    free(raw);
    return 0;
}
