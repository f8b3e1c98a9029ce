/*
 * train_record.c — a training job as JSON and on disk (see train_job.h).
 *
 * A record, <data-dir>/train/<id>/job.json, is what GET /train/{id}
 * answers plus what a restart needs ("history_stride"); its "request" is
 * the normalised request, which srv_train_params_parse reads back, so a
 * job resumes with exactly the spec it was accepted with.  Losses are
 * written as the shortest decimals that read back to the same float.
 * Records are written atomically (temporary file, fsync, rename, fsync of
 * the directory), so a kill -9 or a full disk leaves the previous one or
 * the new one, never half of either, and no temporary file.
 *
 * The reader (srv_train_record_parse) trusts nothing it reads: the start-up
 * scan feeds it whatever is on disk and the fuzz target feeds it anything.
 */
#include "train_job.h"

#include <float.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "datadir.h"
#include "json_guard.h"

typedef srv_train_job job;

/* ---- small helpers ------------------------------------------------------------ */

double srv_train_wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* RFC 3339, UTC, milliseconds: 2024-06-04T12:34:56.789Z */
static json_t *time_json(double t)
{
    if (t <= 0)
        return json_null();
    long long all = llround(t * 1000.0); /* rounded: a record read back prints the same */
    time_t s = (time_t)(all / 1000);
    int ms = (int)(all % 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char buf[64];
    snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
    return json_string(buf);
}

static double time_parse(json_t *v)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int ms = 0;
    if (!json_is_string(v) ||
        sscanf(json_string_value(v), "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon,
               &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (double)timegm(&tm) + ms / 1000.0;
}

int srv_train_mkdir_p(const char *path)
{
    char tmp[PATH_LEN + 8];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0755) && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(tmp, 0755) && errno != EEXIST ? -1 : 0;
}

/* Writes data to path atomically: a temporary file beside it, fsync,
 * rename, fsync of the directory.  0 or -1 (errno set). */
int srv_train_write_atomic(const char *path, const void *data, size_t len)
{
    char tmp[PATH_LEN + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            errno = e;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    int rc = fsync(fd);
    int e = errno;
    if (close(fd) && !rc) { /* NFS and others report a failed write here */
        rc = -1;
        e = errno;
    }
    if (!rc && rename(tmp, path)) {
        rc = -1;
        e = errno;
    }
    if (rc) {
        unlink(tmp);
        errno = e;
        return -1;
    }
    char dir[PATH_LEN + 8];
    snprintf(dir, sizeof dir, "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* The whole file, at most max bytes; NULL with a message. */
unsigned char *srv_train_read_file(const char *path, size_t max, int follow, size_t *len,
                                   char *err, size_t errlen)
{
    char why[256];
    int fd = srv_data_open_regular(path, follow, max, why, sizeof why);
    if (fd < 0) {
        snprintf(err, errlen, "cannot read %s: %s", path, why);
        return NULL;
    }
    struct stat sb;
    unsigned char *buf = NULL;
    if (fstat(fd, &sb) || !(buf = malloc((size_t)sb.st_size + 1))) {
        snprintf(err, errlen, "cannot read %s: %s", path, buf ? strerror(errno) : "out of memory");
        close(fd);
        return NULL;
    }
    size_t got = 0, want = (size_t)sb.st_size;
    while (got < want) {
        ssize_t n = read(fd, buf + got, want - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(err, errlen, "cannot read %s: %s", path, n ? strerror(errno) : "short");
            free(buf);
            close(fd);
            return NULL;
        }
        got += (size_t)n;
    }
    close(fd);
    buf[got] = 0;
    *len = got;
    return buf;
}

void srv_train_job_path(const job *j, const char *file, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", j->dir, file);
}

void srv_train_model_path(const srv_trainer *t, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s.safetensors", t->app->cfg.trained_dir, name);
}

int srv_train_append(job ***arr, int *n, int *cap, job *j)
{
    if (*n == *cap) {
        int c = *cap ? *cap * 2 : 16;
        job **p = realloc(*arr, (size_t)c * sizeof *p);
        if (!p)
            return -1;
        *arr = p;
        *cap = c;
    }
    (*arr)[(*n)++] = j;
    return 0;
}

void srv_train_job_free(job *j)
{
    if (!j)
        return;
    json_decref(j->request);
    pthread_mutex_destroy(&j->io_mu);
    free(j);
}

job *srv_train_job_new(srv_trainer *t, const char *id)
{
    job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->t = t;
    j->refs = 1;
    snprintf(j->id, sizeof j->id, "%s", id);
    if (t)
        snprintf(j->dir, sizeof j->dir, "%s/%s", t->dir, id);
    j->hist_stride = 1;
    j->tokens_per_s = j->eta_s = -1;
    pthread_mutex_init(&j->io_mu, NULL);
    return j;
}


/* ---- the job as JSON (under t->mu) ------------------------------------------------ */

static json_t *num_or_null(int has, double v) { return has ? json_real(v) : json_null(); }

/* s as a JSON string, null when empty; a string that is not UTF-8 (a
 * message cut short mid-character, a path with odd bytes) has its
 * non-ASCII bytes shown as '?' rather than failing the whole object. */
static json_t *str_or_null(const char *s)
{
    if (!s[0])
        return json_null();
    json_t *v = json_string(s);
    if (v)
        return v;
    char buf[1024];
    size_t k = 0;
    for (; s[k] && k + 1 < sizeof buf; k++)
        buf[k] = (unsigned char)s[k] < 0x80 ? s[k] : '?';
    buf[k] = 0;
    return json_string(buf);
}

static json_t *eval_json(const job *j)
{
    if (!j->eval_step)
        return json_null();
    if (j->p.spec.task == TFM_TASK_RECALL)
        return json_pack("{s:i,s:f,s:f,s:f,s:f,s:I}", "step", j->eval_step, "accuracy",
                         j->ev_recall.accuracy, "accuracy_present", j->ev_recall.accuracy_present,
                         "accuracy_absent", j->ev_recall.accuracy_absent, "loss",
                         j->ev_recall.loss, "n_queries", (json_int_t)j->ev_recall.n_queries);
    return json_pack("{s:i,s:f,s:f,s:I}", "step", j->eval_step, "loss", j->ev_text.loss,
                     "bits_per_byte", j->ev_text.bits_per_byte, "n_bytes",
                     (json_int_t)j->ev_text.n_bytes);
}

json_t *srv_train_job_json(const job *j, int what)
{
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:s,s:i,s:i,s:o,s:o,s:o,s:o,s:o,s:o}", "id", j->id, "name", j->p.name,
        "task", j->p.spec.task == TFM_TASK_RECALL ? "recall" : "text", "status",
        srv_train_state_names[j->state], "step", j->step, "steps", j->p.spec.train.steps, "loss",
        j->has_loss ? srv_json_float(j->loss) : json_null(), "model",
        j->state == SUCCEEDED ? json_string(j->p.name) : json_null(), "error",
        str_or_null(j->error), "created_at", time_json(j->created),
        "started_at", time_json(j->started), "finished_at", time_json(j->finished));
    if (!o || what == SRV_TRAIN_SUMMARY)
        return o;
    json_t *hist = json_array();
    for (int i = 0; hist && i < j->n_hist; i++)
        json_array_append_new(hist, json_pack("[i,o]", j->hist_step[i],
                                              srv_json_float(j->hist_loss[i])));
    int live = j->state == RUNNING;
    json_object_set_new(o, "eval", eval_json(j));
    json_object_set_new(o, "loss_history", hist ? hist : json_null());
    json_object_set_new(o, "tokens_per_s", num_or_null(j->tokens_per_s >= 0, j->tokens_per_s));
    json_object_set_new(o, "eta_s", num_or_null(live && j->eta_s >= 0, j->eta_s));
    json_object_set_new(o, "checkpoint_step", json_integer(j->ckpt_step));
    json_object_set_new(o, "threads", json_integer(j->threads));
    json_object_set_new(o, "request", json_incref(j->request));
    json_object_set_new(o, "note", str_or_null(j->note));
    if (what == SRV_TRAIN_RECORD)
        json_object_set_new(o, "history_stride", json_integer(j->hist_stride));
    return o;
}

/* Any thread: writes the job's record (job.json).  0 or -1 (printed once
 * per run of failures, counted every time; errno kept). */
int srv_train_save_record(srv_trainer *t, job *j)
{
    pthread_mutex_lock(&t->mu);
    if (j->removed) { /* retention or a DELETE took it: its dir is going */
        pthread_mutex_unlock(&t->mu);
        return 0;
    }
    json_t *o = srv_train_job_json(j, SRV_TRAIN_RECORD);
    unsigned long seq = ++j->seq;
    pthread_mutex_unlock(&t->mu);
    char *text = o ? json_dumps(o, JSON_INDENT(1) | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    if (!text) {
        fprintf(stderr, "attnd: train %s: out of memory for its record\n", j->id);
        errno = ENOMEM;
        return -1;
    }
    char path[PATH_LEN];
    srv_train_job_path(j, "job.json", path, sizeof path);
    int rc = 0, e = 0;
    pthread_mutex_lock(&j->io_mu);
    if (seq > j->written) {
        rc = srv_train_write_atomic(path, text, strlen(text));
        e = errno;
        if (rc) {
            srv_counter_add(t->app->stats.storage_errors[SRV_STORAGE_RECORD], 1);
            if (!j->write_failing)
                fprintf(stderr, "attnd: train %s: cannot write %s: %s (the last record written "
                        "stays; retried at the next change)\n", j->id, path, strerror(e));
            j->write_failing = 1;
        } else {
            if (j->write_failing)
                fprintf(stderr, "attnd: train %s: %s written again\n", j->id, path);
            j->write_failing = 0;
            j->written = seq;
        }
    }
    pthread_mutex_unlock(&j->io_mu);
    free(text);
    pthread_mutex_lock(&t->mu);
    j->rec_dirty = rc != 0;
    pthread_mutex_unlock(&t->mu);
    errno = e;
    return rc;
}

/* ---- the record reader (pure) ---------------------------------------------------- */

static int state_of(json_t *v)
{
    for (int i = 0; json_is_string(v) && i < SRV_TRAIN_STATES; i++)
        if (!strcmp(json_string_value(v), srv_train_state_names[i]))
            return i;
    return -1;
}

/* A number of the record within [lo, hi], else dflt: never a cast of an
 * out-of-range double (undefined behaviour). */
static double num(json_t *o, const char *key, double lo, double hi, double dflt)
{
    json_t *v = json_object_get(o, key);
    double x = json_is_number(v) ? json_number_value(v) : dflt;
    return isfinite(x) && x >= lo && x <= hi ? x : dflt;
}

static int inum(json_t *o, const char *key, int lo, int hi, int dflt)
{
    return (int)num(o, key, lo, hi, dflt);
}

int srv_train_id_ok(const char *id)
{
    if (strncmp(id, "tr-", 3) || !id[3] || strlen(id) > 23)
        return 0;
    for (const char *p = id + 3; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    return 1;
}

int srv_train_record_parse(const char *bytes, size_t len, const char *id, int default_threads,
                           job **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!srv_train_id_ok(id)) {
        snprintf(err, errlen, "not a job id");
        return -1;
    }
    /* a record nests 4 deep, has 256 history points and short strings; a
     * job.json beyond this is not one of ours, and never reaches jansson */
    srv_json_limits lim = {16, 4096, 64 << 10};
    srv_error ge;
    if (srv_json_guard(bytes, len, &lim, &ge)) {
        snprintf(err, errlen, "%s", ge.message);
        return -1;
    }
    json_error_t je;
    json_t *rec = json_loadb(bytes, len, JSON_REJECT_DUPLICATES, &je);
    if (!rec) {
        snprintf(err, errlen, "not JSON (line %d, column %d): %s", je.line, je.column, je.text);
        return -1;
    }
    job *j = NULL;
    json_t *jid = json_object_get(rec, "id");
    int state = state_of(json_object_get(rec, "status"));
    if (!json_is_object(rec) || !json_is_string(jid) || strcmp(json_string_value(jid), id) ||
        state < 0) {
        snprintf(err, errlen, "not a job record of %s (id, status)", id);
        goto fail;
    }
    if (!(j = srv_train_job_new(NULL, id))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    j->threads = inum(rec, "threads", 1, 256, default_threads >= 1 ? default_threads : 1);
    char field[64], msg[320];
    if (srv_train_params_parse(json_object_get(rec, "request"), 1, j->threads, &j->p, field,
                               sizeof field, msg, sizeof msg)) {
        snprintf(err, errlen, "request: %s", msg);
        goto fail;
    }
    if (!(j->request = srv_train_params_json(&j->p))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    int steps = j->p.spec.train.steps;
    j->state = state;
    j->step = inum(rec, "step", 0, steps, 0);
    j->ckpt_step = inum(rec, "checkpoint_step", 0, j->step, 0);
    json_t *loss = json_object_get(rec, "loss");
    double lv = json_is_number(loss) ? json_number_value(loss) : NAN;
    if ((j->has_loss = isfinite(lv) && fabs(lv) <= FLT_MAX))
        j->loss = (float)lv;
    json_t *ev = json_object_get(rec, "eval");
    if (json_is_object(ev) && (j->eval_step = inum(ev, "step", 1, steps, 0)) > 0) {
        j->ev_recall.accuracy = num(ev, "accuracy", 0, 1, 0);
        j->ev_recall.accuracy_present = num(ev, "accuracy_present", 0, 1, 0);
        j->ev_recall.accuracy_absent = num(ev, "accuracy_absent", 0, 1, 0);
        j->ev_recall.loss = j->ev_text.loss = num(ev, "loss", 0, 1e30, 0);
        j->ev_recall.n_queries = (long)num(ev, "n_queries", 0, 1e15, 0);
        j->ev_text.bits_per_byte = num(ev, "bits_per_byte", 0, 1e30, 0);
        j->ev_text.n_bytes = (long)num(ev, "n_bytes", 0, 1e15, 0);
    }
    json_t *hist = json_object_get(rec, "loss_history"), *pt;
    size_t i;
    json_array_foreach(hist, i, pt)
    {
        json_t *s0 = json_array_get(pt, 0), *l0 = json_array_get(pt, 1);
        double lx = json_is_number(l0) ? json_number_value(l0) : NAN;
        if (j->n_hist == HISTORY_MAX || !json_is_integer(s0) || json_integer_value(s0) < 1 ||
            json_integer_value(s0) > steps || !isfinite(lx) || fabs(lx) > FLT_MAX)
            break;
        j->hist_step[j->n_hist] = (int)json_integer_value(s0);
        j->hist_loss[j->n_hist++] = (float)lx;
    }
    j->hist_stride = inum(rec, "history_stride", 1, 1 << 20, 1);
    j->tokens_per_s = num(rec, "tokens_per_s", 0, 1e15, -1);
    json_t *e = json_object_get(rec, "error");
    if (json_is_string(e))
        snprintf(j->error, sizeof j->error, "%s", json_string_value(e));
    json_t *note = json_object_get(rec, "note");
    if (json_is_string(note))
        snprintf(j->note, sizeof j->note, "%s", json_string_value(note));
    j->created = time_parse(json_object_get(rec, "created_at"));
    j->started = time_parse(json_object_get(rec, "started_at"));
    j->finished = time_parse(json_object_get(rec, "finished_at"));
    json_decref(rec);
    *out = j;
    return 0;
fail:
    srv_train_job_free(j);
    json_decref(rec);
    return -1;
}
