/*
 * fuzz_recall.c — POST /recall's validator, srv_recall_parse, on raw
 * bytes, with the route's limits and a registry holding "tiny" (text) and
 * "mqar" (recall: 4 pairs, 16 keys, 16 values), then the answer the
 * worker would compute.
 *
 * Promises checked (validate.h, tfm/recall.h): no crash, leak or
 * undefined behaviour; a refusal is a documented status with a code and
 * a message, and leaves *out NULL; an accepted task is within
 * --max-recall-pairs and --max-recall-queries, its interned ids are below
 * their symbol counts, and a model task's store holds distinct keys in
 * the model's range.  Then the answer itself: the exact engine must give,
 * for every query, the latest pair whose key it is, or ⊥ when none is
 * (a key-value store), checked against a plain scan for requests up to
 * 64k pair-query products; the model engine must run on the store the
 * validator built.
 */
#include "fuzz_registry.h"

#include <jansson.h>

#include "tfm/recall.h"
#include "validate.h"

static srv_config cfg;
static srv_models reg;
static int ready;

static void check_exact(const srv_recall_task *t)
{
    for (int i = 0; i < t->n_pairs; i++)
        FUZZ_CHECK(t->keys[i] < (uint32_t)t->n_key_symbols &&
                       t->values[i] < (uint32_t)t->n_value_symbols,
                   "pair %d: ids %u %u of %d %d symbols", i, t->keys[i], t->values[i],
                   t->n_key_symbols, t->n_value_symbols);
    if ((long long)t->n_pairs * t->n_queries > 65536 || t->n_queries == 0)
        return;
    tfm_recall_request rq = {t->n_pairs, t->keys, t->values, t->n_queries, t->qids};
    tfm_recall_answer *ans = calloc((size_t)t->n_queries, sizeof *ans);
    tfm_status st = tfm_recall_exact(&rq, ans, NULL, NULL);
    FUZZ_CHECK(st == TFM_OK, "tfm_recall_exact: %d", (int)st);
    for (int q = 0; q < t->n_queries; q++) {
        int pos = -1;
        for (int i = 0; i < t->n_pairs; i++)
            if (t->keys[i] == t->qids[q])
                pos = i;
        FUZZ_CHECK(ans[q].found == (pos >= 0) && ans[q].position == pos,
                   "query %d: attended %d (found %d), the store says %d", q, ans[q].position,
                   ans[q].found, pos);
        if (pos >= 0)
            FUZZ_CHECK(ans[q].value == t->values[pos] && ans[q].weight == 1.0f,
                       "query %d: value %u weight %g, want %u", q, ans[q].value,
                       (double)ans[q].weight, t->values[pos]);
    }
    free(ans);
}

static void check_model(const srv_recall_task *t)
{
    const tfm_mqar *p = &t->model->recall;
    FUZZ_CHECK(t->n_store >= 1 && t->n_store <= p->n_pairs, "a store of %d", t->n_store);
    for (int i = 0; i < t->n_store; i++) {
        FUZZ_CHECK(t->mkeys[i] >= 0 && t->mkeys[i] < p->n_keys && t->mvalues[i] >= 0 &&
                       t->mvalues[i] < p->n_values,
                   "store entry %d: %d -> %d", i, t->mkeys[i], t->mvalues[i]);
        for (int k = 0; k < i; k++)
            FUZZ_CHECK(t->mkeys[k] != t->mkeys[i], "key %d twice in the store", t->mkeys[i]);
    }
    for (int q = 0; q < t->n_queries; q++)
        FUZZ_CHECK(t->mqueries[q] >= 0 && t->mqueries[q] < p->n_keys, "query %d", t->mqueries[q]);
    if (t->n_queries == 0 || t->n_queries > 64)
        return;
    int *ans = malloc((size_t)t->n_queries * sizeof *ans);
    float *probs = malloc((size_t)t->n_queries * sizeof *probs);
    tfm_status st = tfm_mqar_answer(t->model->model, p, t->mkeys, t->mvalues, t->n_store,
                                    t->mqueries, t->n_queries, 1, ans, probs, NULL);
    FUZZ_CHECK(st == TFM_OK, "tfm_mqar_answer: %d", (int)st);
    for (int q = 0; q < t->n_queries; q++)
        FUZZ_CHECK(ans[q] >= -1 && ans[q] < p->n_values, "answer %d", ans[q]);
    free(ans);
    free(probs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ready) {
        fuzz_registry_init(&cfg, &reg);
        ready = 1;
    }
    srv_json_limits lim = {cfg.max_json_depth, 65536, (size_t)256 << 10};
    char *raw = malloc(size ? size : 1);
    memcpy(raw, data, size);
    srv_recall_task *t = (srv_recall_task *)&t; /* must come back NULL on error */
    srv_error e = {0};
    int rc = srv_recall_parse(raw, size, &lim, &reg, &cfg, 1, &t, &e);
    if (rc != 0) {
        FUZZ_CHECK(rc == -1 && t == NULL, "returned %d, task %p", rc, (void *)t);
        FUZZ_CHECK(e.status == 400 || e.status == 413 || e.status == 422 || e.status == 404 ||
                       e.status == 503,
                   "status %d (%s: %s)", e.status, e.code, e.message);
        FUZZ_CHECK(e.code[0] && e.message[0], "an error without code or message");
        free(raw);
        return 0;
    }
    FUZZ_CHECK(t != NULL && t->body != NULL, "no task");
    FUZZ_CHECK(t->n_pairs >= 0 && t->n_pairs <= cfg.max_recall_pairs, "%d pairs", t->n_pairs);
    FUZZ_CHECK(t->n_queries >= 0 && t->n_queries <= cfg.max_recall_queries, "%d queries",
               t->n_queries);
    FUZZ_CHECK(t->timeout_ms >= 0 && t->timeout_ms <= cfg.request_timeout_s * 1000,
               "timeout_ms %d", t->timeout_ms);
    if (t->model)
        check_model(t);
    else
        check_exact(t);
    srv_recall_task_free(t);
    free(raw);
    return 0;
}
