/*
 * fuzz_train_record.c — the job-record reader, srv_train_record_parse,
 * on raw bytes: what the start-up scan does with whatever job.json it
 * finds under <data-dir>/train.
 *
 * Promises checked (train_job.h): no crash, leak or undefined behaviour
 * ("any input is safe"); a refusal gives a reason and no job; a job read
 * back has a known state, steps and checkpoint step within its request,
 * at most HISTORY_MAX history points; and records round-trip: the record
 * the server would write for that job (srv_train_job_json, RECORD,
 * printed as srv_train_save_record prints it) reads back to a job whose
 * record prints byte for byte the same.  (Not the input itself: values
 * are clamped and doubles printed at 9 digits on the first write.)
 * The directory name is "tr-1"; an input whose first byte ends in three
 * 1 bits is read as "tr-2"'s, so that a record whose id differs from its
 * directory is refused.
 */
#include "fuzz_util.h"

#include <jansson.h>

#include "train_job.h"

static void check_job(const srv_train_job *j)
{
    FUZZ_CHECK(j->state >= QUEUED && j->state <= CANCELLED, "state %d", j->state);
    FUZZ_CHECK(j->step >= 0 && j->step <= j->p.spec.train.steps, "step %d of %d", j->step,
               j->p.spec.train.steps);
    FUZZ_CHECK(j->ckpt_step >= 0 && j->ckpt_step <= j->step, "checkpoint step %d", j->ckpt_step);
    FUZZ_CHECK(j->n_hist >= 0 && j->n_hist <= HISTORY_MAX, "%d history points", j->n_hist);
    FUZZ_CHECK(j->threads >= 1 && j->request != NULL && j->t == NULL && !j->dir[0],
               "threads, request, trainer or dir");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *id = size > 0 && (data[0] & 7) == 7 ? "tr-2" : "tr-1";
    char *raw = malloc(size ? size : 1);
    memcpy(raw, data, size);
    srv_train_job *j = (srv_train_job *)&j;
    char err[512] = "";
    if (srv_train_record_parse(raw, size, id, 2, &j, err, sizeof err) != 0) {
        FUZZ_CHECK(j == NULL, "a refused record gave a job");
        FUZZ_CHECK(err[0], "refused without a reason");
        free(raw);
        return 0;
    }
    check_job(j);
    json_t *rec = srv_train_job_json(j, SRV_TRAIN_RECORD);
    FUZZ_CHECK(rec != NULL, "the job read back has no record (srv_train_job_json NULL)");
    char *text = json_dumps(rec, JSON_INDENT(1) | JSON_REAL_PRECISION(9));
    FUZZ_CHECK(text != NULL, "its record does not print");
    srv_train_job *k = NULL;
    FUZZ_CHECK(srv_train_record_parse(text, strlen(text), id, 2, &k, err, sizeof err) == 0,
               "its own record is refused: %s\n%s", err, text);
    check_job(k);
    json_t *again = srv_train_job_json(k, SRV_TRAIN_RECORD);
    char *text2 = again ? json_dumps(again, JSON_INDENT(1) | JSON_REAL_PRECISION(9)) : NULL;
    FUZZ_CHECK(text2 && !strcmp(text, text2),
               "the record reads back differently:\nwritten %s\nread back %s", text,
               text2 ? text2 : "(null)");
    free(text2);
    json_decref(again);
    srv_train_job_free(k);
    free(text);
    json_decref(rec);
    srv_train_job_free(j);
    free(raw);
    return 0;
}
