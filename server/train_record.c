/*
 * train_record.c — a training job as JSON and on disk (see train_job.h).
 *
 * A record, <data-dir>/train/<id>/job.json, is what GET /train/{id}
 * answers plus what a restart needs ("history_stride"); its "request" is
 * the normalised request, which srv_train_params_parse reads back, so a
 * job resumes with exactly the spec it was accepted with.  Losses are
 * written as the shortest decimals that read back to the same float.
 * Records are written atomically (temporary file, fsync, rename), so a
 * kill -9 leaves the previous one or the new one, never half of either.
 */
#include "train_job.h"

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
        sscanf(json_string_value(v), "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon,
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
    if (fsync(fd) || close(fd) || rename(tmp, path)) {
        int e = errno;
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
unsigned char *srv_train_read_file(const char *path, size_t max, size_t *len, char *err,
                                size_t errlen)
{
    FILE *f = fopen(path, "rb");
    struct stat sb;
    unsigned char *buf = NULL;
    if (!f || fstat(fileno(f), &sb)) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s is not a regular file", path);
        goto out;
    }
    if ((size_t)sb.st_size > max) {
        snprintf(err, errlen, "%s is %lld bytes; at most %zu", path, (long long)sb.st_size, max);
        goto out;
    }
    buf = malloc((size_t)sb.st_size + 1);
    if (!buf) {
        snprintf(err, errlen, "out of memory for %s", path);
        goto out;
    }
    *len = fread(buf, 1, (size_t)sb.st_size, f);
    if (*len != (size_t)sb.st_size) {
        snprintf(err, errlen, "cannot read %s: %s", path, ferror(f) ? strerror(errno) : "short");
        free(buf);
        buf = NULL;
    }
out:
    if (f)
        fclose(f);
    return buf;
}

void srv_train_job_path(const job *j, const char *file, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", j->dir, file);
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
    snprintf(j->id, sizeof j->id, "%s", id);
    snprintf(j->dir, sizeof j->dir, "%s/%s", t->dir, id);
    j->hist_stride = 1;
    j->tokens_per_s = j->eta_s = -1;
    pthread_mutex_init(&j->io_mu, NULL);
    return j;
}


/* ---- the job as JSON (under t->mu) ------------------------------------------------ */

static json_t *num_or_null(int has, double v) { return has ? json_real(v) : json_null(); }

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
        j->error[0] ? json_string(j->error) : json_null(), "created_at", time_json(j->created),
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
    if (what == SRV_TRAIN_RECORD)
        json_object_set_new(o, "history_stride", json_integer(j->hist_stride));
    return o;
}

/* Any thread: writes the job's record (job.json).  0 or -1 (printed). */
int srv_train_save_record(srv_trainer *t, job *j)
{
    pthread_mutex_lock(&t->mu);
    json_t *o = srv_train_job_json(j, SRV_TRAIN_RECORD);
    unsigned long seq = ++j->seq;
    pthread_mutex_unlock(&t->mu);
    char *text = o ? json_dumps(o, JSON_INDENT(1) | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    if (!text) {
        fprintf(stderr, "attnd: train %s: out of memory for its record\n", j->id);
        return -1;
    }
    char path[PATH_LEN];
    srv_train_job_path(j, "job.json", path, sizeof path);
    int rc = 0;
    pthread_mutex_lock(&j->io_mu);
    if (seq > j->written) {
        rc = srv_train_write_atomic(path, text, strlen(text));
        if (rc)
            fprintf(stderr, "attnd: train %s: cannot write %s: %s\n", j->id, path,
                    strerror(errno));
        else
            j->written = seq;
    }
    pthread_mutex_unlock(&j->io_mu);
    free(text);
    return rc;
}

/* ---- records at start-up ----------------------------------------------------------- */

static int state_of(json_t *v)
{
    for (int i = 0; json_is_string(v) && i < SRV_TRAIN_STATES; i++)
        if (!strcmp(json_string_value(v), srv_train_state_names[i]))
            return i;
    return -1;
}

static double num(json_t *o, const char *key, double dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

/* A job from its record; NULL with a message. */
static job *job_from_record(srv_trainer *t, const char *id, json_t *rec, char *err,
                            size_t errlen)
{
    json_t *jid = json_object_get(rec, "id");
    int state = state_of(json_object_get(rec, "status"));
    if (!json_is_string(jid) || strcmp(json_string_value(jid), id) || state < 0) {
        snprintf(err, errlen, "not a job record of %s (id, status)", id);
        return NULL;
    }
    job *j = srv_train_job_new(t, id);
    if (!j) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int threads = (int)num(rec, "threads", 0);
    j->threads = threads >= 1 && threads <= 256 ? threads : t->app->cfg.train_threads;
    char field[64], msg[320];
    if (srv_train_params_parse(json_object_get(rec, "request"), 1, j->threads, &j->p, field,
                               sizeof field, msg, sizeof msg)) {
        snprintf(err, errlen, "request: %s", msg);
        srv_train_job_free(j);
        return NULL;
    }
    if (!(j->request = srv_train_params_json(&j->p))) {
        snprintf(err, errlen, "out of memory");
        srv_train_job_free(j);
        return NULL;
    }
    int steps = j->p.spec.train.steps;
    j->state = state;
    j->step = (int)num(rec, "step", 0);
    j->ckpt_step = (int)num(rec, "checkpoint_step", 0);
    if (j->step < 0 || j->step > steps)
        j->step = 0;
    json_t *loss = json_object_get(rec, "loss");
    if ((j->has_loss = json_is_number(loss)))
        j->loss = (float)json_number_value(loss);
    json_t *ev = json_object_get(rec, "eval");
    if (json_is_object(ev) && (j->eval_step = (int)num(ev, "step", 0)) > 0) {
        j->ev_recall.accuracy = num(ev, "accuracy", 0);
        j->ev_recall.accuracy_present = num(ev, "accuracy_present", 0);
        j->ev_recall.accuracy_absent = num(ev, "accuracy_absent", 0);
        j->ev_recall.loss = j->ev_text.loss = num(ev, "loss", 0);
        j->ev_recall.n_queries = (long)num(ev, "n_queries", 0);
        j->ev_text.bits_per_byte = num(ev, "bits_per_byte", 0);
        j->ev_text.n_bytes = (long)num(ev, "n_bytes", 0);
    }
    json_t *hist = json_object_get(rec, "loss_history"), *pt;
    size_t i;
    json_array_foreach(hist, i, pt)
    {
        if (j->n_hist == HISTORY_MAX || !json_is_integer(json_array_get(pt, 0)) ||
            !json_is_number(json_array_get(pt, 1)))
            break;
        j->hist_step[j->n_hist] = (int)json_integer_value(json_array_get(pt, 0));
        j->hist_loss[j->n_hist++] = (float)json_number_value(json_array_get(pt, 1));
    }
    int stride = (int)num(rec, "history_stride", 1);
    j->hist_stride = stride >= 1 && stride <= (1 << 20) ? stride : 1;
    j->tokens_per_s = num(rec, "tokens_per_s", -1);
    json_t *e = json_object_get(rec, "error");
    if (json_is_string(e))
        snprintf(j->error, sizeof j->error, "%s", json_string_value(e));
    j->created = time_parse(json_object_get(rec, "created_at"));
    j->started = time_parse(json_object_get(rec, "started_at"));
    j->finished = time_parse(json_object_get(rec, "finished_at"));
    return j;
}

static unsigned long long id_ms(const char *id)
{
    unsigned long long ms = 0;
    return sscanf(id, "tr-%llu", &ms) == 1 ? ms : 0;
}

static int by_id(const void *a, const void *b)
{
    const job *x = *(job *const *)a, *y = *(job *const *)b;
    unsigned long long mx = id_ms(x->id), my = id_ms(y->id);
    return mx != my ? (mx < my ? -1 : 1) : strcmp(x->id, y->id);
}

/* Reads <data-dir>/train/<id>/job.json: finished jobs as they were,
 * interrupted ones first in the queue (they resume), then queued ones. */
void srv_train_load_records(srv_trainer *t)
{
    DIR *d = opendir(t->dir);
    if (!d) {
        if (errno != ENOENT)
            fprintf(stderr, "attnd: train: cannot read %s: %s\n", t->dir, strerror(errno));
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || strlen(e->d_name) >= sizeof(((job *)0)->id))
            continue;
        char path[PATH_LEN], err[400];
        snprintf(path, sizeof path, "%s/%s/job.json", t->dir, e->d_name);
        json_error_t je;
        json_t *rec = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
        job *j = NULL;
        if (!rec)
            snprintf(err, sizeof err, "%s", je.text);
        else
            j = job_from_record(t, e->d_name, rec, err, sizeof err);
        json_decref(rec);
        if (!j || srv_train_append(&t->jobs, &t->n_jobs, &t->cap_jobs, j)) {
            fprintf(stderr, "attnd: train: %s: %s; skipped\n", path, j ? "out of memory" : err);
            srv_train_job_free(j);
            continue;
        }
        if (id_ms(j->id) > t->last_ms)
            t->last_ms = id_ms(j->id);
    }
    closedir(d);
    qsort(t->jobs, (size_t)t->n_jobs, sizeof *t->jobs, by_id);
    int n_resume = 0;
    for (int pass = RUNNING; pass >= QUEUED; pass--)
        for (int i = 0; i < t->n_jobs; i++)
            if (t->jobs[i]->state == pass) {
                if (srv_train_append(&t->queue, &t->n_queue, &t->cap_queue, t->jobs[i])) {
                    t->jobs[i]->state = FAILED;
                    snprintf(t->jobs[i]->error, sizeof t->jobs[i]->error, "out of memory");
                    continue;
                }
                n_resume += pass == RUNNING;
            }
    for (int i = 0; i < t->n_queue; i++)
        t->queue[i]->state = QUEUED;
    if (t->n_jobs)
        fprintf(stderr, "attnd: train: %d job record(s), %d to resume, %d queued\n", t->n_jobs,
                n_resume, t->n_queue - n_resume);
}
