/*
 * fuzz_train_params.c — POST /train's validator on raw bytes: the route's
 * srv_json_guard limits, jansson with the route's flags, then
 * srv_train_params_parse as a request body and as a record's request.
 *
 * Promises checked (train_params.h): no crash, leak or undefined
 * behaviour; a refusal names a message (and its field is a short
 * string); an accepted request is within the service's limits; and the
 * normalised request round-trips: written as a record writes it (its
 * JSON text), read back with from_record, normalised again, it is the
 * same JSON value, so a resumed job gets exactly the spec it was
 * accepted with.
 */
#include "fuzz_util.h"

#include <jansson.h>

#include "json_guard.h"
#include "train_params.h"

static void parse_checked(json_t *body, int from_record, srv_train_params *p, int *ok)
{
    char field[64], msg[512];
    msg[0] = 0;
    int r = srv_train_params_parse(body, from_record, 2, p, field, sizeof field, msg, sizeof msg);
    *ok = r == 0;
    if (r != 0) {
        FUZZ_CHECK(r == -1, "returned %d", r);
        FUZZ_CHECK(msg[0], "refused without a message");
        FUZZ_CHECK(strlen(field) < sizeof field, "field");
        return;
    }
    const tfm_train_spec *s = &p->spec;
    FUZZ_CHECK(s->train.steps >= 1 && s->train.steps <= SRV_TRAIN_MAX_STEPS, "steps %d",
               s->train.steps);
    FUZZ_CHECK((long long)s->train.batch_size * s->train.seq_len <= SRV_TRAIN_MAX_TOKENS,
               "tokens a step");
    FUZZ_CHECK(tfm_config_n_params(&s->model) <= SRV_TRAIN_MAX_PARAMS, "parameters");
    FUZZ_CHECK(p->est_bytes <= SRV_TRAIN_MAX_BYTES, "memory %zu", p->est_bytes);
    FUZZ_CHECK(p->text_len <= SRV_TRAIN_MAX_CORPUS, "text of %zu bytes", p->text_len);
    FUZZ_CHECK(s->text == NULL && s->n_threads == 2, "spec text or threads");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* http.c's limits for /train: --max-json-depth 32, SRV_JSON_MAX_ARRAY,
     * strings up to --max-body-bytes (the corpus may come inline) */
    srv_json_limits lim = {32, 65536, (size_t)1 << 20};
    char *raw = malloc(size ? size : 1);
    memcpy(raw, data, size);
    srv_error e;
    if (srv_json_guard(raw, size, &lim, &e) != 0) {
        free(raw);
        return 0;
    }
    json_error_t je;
    json_t *body = json_loadb(raw, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!body) {
        free(raw);
        return 0;
    }
    srv_train_params p, q, r;
    int ok;
    parse_checked(body, 0, &p, &ok);
    if (ok) {
        json_t *norm = srv_train_params_json(&p);
        FUZZ_CHECK(norm != NULL, "no normalised request");
        char *text = json_dumps(norm, JSON_INDENT(1) | JSON_REAL_PRECISION(9));
        FUZZ_CHECK(text != NULL, "dump");
        json_t *back = json_loads(text, JSON_REJECT_DUPLICATES, &je);
        FUZZ_CHECK(back != NULL, "the normalised request is not JSON: %s", je.text);
        parse_checked(back, 1, &q, &ok);
        FUZZ_CHECK(ok, "the normalised request is refused: %s", text);
        json_t *again = srv_train_params_json(&q);
        FUZZ_CHECK(again && json_equal(norm, again), "the record reads back differently: %s",
                   text);
        FUZZ_CHECK(q.text_len == p.text_len && !strcmp(q.name, p.name) &&
                       !strcmp(q.corpus, p.corpus) && q.est_bytes == p.est_bytes,
                   "the record reads back differently");
        json_decref(again), json_decref(back), json_decref(norm);
        free(text);
    }
    /* the same bytes as a record's request: refused or accepted, safely */
    parse_checked(body, 1, &r, &ok);
    json_decref(body);
    free(raw);
    return 0;
}
