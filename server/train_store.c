/*
 * train_store.c — the jobs on disk as a whole: the start-up scan of
 * <data-dir>/train, retention (--train-keep) and the removal of a job
 * (see train_job.h for the reference counts that make removal safe).
 *
 * The scan trusts nothing.  Each entry of <data-dir>/train must be a real
 * directory (not a symlink) named like a job id ("tr-<digits>") holding a
 * regular job.json (not a symlink, a FIFO or a directory) that
 * srv_train_record_parse accepts; anything else is quarantined
 * (datadir.h) with one log line that names it and says why, and the scan
 * goes on.  Leftover temporary files of atomic writes (a kill -9 mid-write)
 * are deleted.  A finished job's leftover state file (a crash between its
 * last record and the unlink) is deleted too.  A job whose record still
 * says queued or running although its model file exists in
 * <data-dir>/models finished before the crash and could not say so: it is
 * marked succeeded with a note, rather than retrained into a name clash.
 *
 * What the scan does not read is each job's `state` checkpoint (three
 * models' worth): the worker reads it when the job resumes, and a state
 * file that cannot be read then is quarantined and the job starts over
 * from step 0 (train.c, setup).
 *
 * Retention: once more than --train-keep jobs have finished, the oldest
 * by finish time go, record and directory; their models stay served.
 */
#include "train_job.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "datadir.h"

typedef srv_train_job job;

static int finished(const job *j) { return j->state >= SUCCEEDED; }

/* ---- lifetime ------------------------------------------------------------------ */

void srv_train_hold(job *j) { j->refs++; }

void srv_train_release(srv_trainer *t, job *j)
{
    pthread_mutex_lock(&t->mu);
    int last = --j->refs == 0;
    pthread_mutex_unlock(&t->mu);
    if (!last)
        return;
    /* only a removed job loses its last reference: the list holds one */
    if (j->dir[0] && srv_data_rmtree(j->dir))
        fprintf(stderr, "attnd: train %s: cannot remove %s: %s\n", j->id, j->dir,
                strerror(errno));
    srv_train_job_free(j);
}

static void take_out(job **arr, int *n, const job *j)
{
    for (int i = 0; i < *n; i++)
        if (arr[i] == j) {
            memmove(arr + i, arr + i + 1, (size_t)(*n - i - 1) * sizeof *arr);
            (*n)--;
            return;
        }
}

void srv_train_remove(srv_trainer *t, job *j)
{
    if (j->removed)
        return;
    take_out(t->jobs, &t->n_jobs, j);
    take_out(t->queue, &t->n_queue, j);
    j->removed = 1;
}

/* ---- retention ------------------------------------------------------------------- */

static int by_finish(const void *a, const void *b)
{
    const job *x = *(job *const *)a, *y = *(job *const *)b;
    if (x->finished != y->finished)
        return x->finished < y->finished ? -1 : 1;
    return strcmp(x->id, y->id);
}

void srv_train_prune(srv_trainer *t)
{
    int keep = t->app->cfg.train_keep;
    pthread_mutex_lock(&t->mu);
    int n = 0;
    for (int i = 0; i < t->n_jobs; i++)
        n += finished(t->jobs[i]);
    if (n <= keep) {
        pthread_mutex_unlock(&t->mu);
        return;
    }
    job **done = malloc((size_t)n * sizeof *done);
    if (!done) { /* next time */
        pthread_mutex_unlock(&t->mu);
        return;
    }
    int k = 0;
    for (int i = 0; i < t->n_jobs; i++)
        if (finished(t->jobs[i]))
            done[k++] = t->jobs[i];
    qsort(done, (size_t)n, sizeof *done, by_finish);
    int gone = n - keep;
    for (int i = 0; i < gone; i++)
        srv_train_remove(t, done[i]);
    pthread_mutex_unlock(&t->mu);
    for (int i = 0; i < gone; i++) {
        fprintf(stderr, "attnd: train %s: removed (%s; more than --train-keep %d finished)\n",
                done[i]->id, srv_train_state_names[done[i]->state], keep);
        srv_train_release(t, done[i]);
    }
    free(done);
}

/* ---- the start-up scan ------------------------------------------------------------ */

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

/* Deletes the temporaries of atomic writes a crash left in dir. */
static void remove_temps(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!srv_data_is_temp(e->d_name))
            continue;
        char path[PATH_LEN + 300], shown[PATH_LEN + 600];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        srv_data_printable(path, shown, sizeof shown);
        if (unlink(path) == 0)
            fprintf(stderr, "attnd: data: %s: removed (the temporary file of a write that did "
                    "not finish)\n", shown);
    }
    closedir(d);
}

/* One entry of <data-dir>/train: a job, or NULL when quarantined. */
static job *scan_one(srv_trainer *t, const char *name)
{
    const char *data = t->app->cfg.data_dir;
    char path[PATH_LEN], rec[PATH_LEN + 16], why[600];
    snprintf(path, sizeof path, "%s/%s", t->dir, name);
    if (!srv_data_name_ok(name) || !srv_train_id_ok(name)) {
        srv_data_quarantine(data, path, "not a job id (tr-<digits>)");
        return NULL;
    }
    struct stat sb;
    if (lstat(path, &sb)) {
        fprintf(stderr, "attnd: data: %s: %s; skipped\n", path, strerror(errno));
        return NULL;
    }
    if (!S_ISDIR(sb.st_mode)) {
        srv_data_quarantine(data, path, S_ISLNK(sb.st_mode) ? "a symbolic link, not a job directory"
                                                           : "not a job directory");
        return NULL;
    }
    remove_temps(path);
    snprintf(rec, sizeof rec, "%s/job.json", path);
    size_t len = 0;
    char err[500];
    job *j = NULL;
    unsigned char *buf = NULL;
    int fd = srv_data_open_regular(rec, 0, SRV_TRAIN_MAX_RECORD, err, sizeof err);
    if (fd < 0 && errno == ENOENT) {
        snprintf(why, sizeof why, "no job.json");
    } else if (fd < 0) {
        snprintf(why, sizeof why, "job.json: %.500s", err);
    } else {
        close(fd); /* a regular file: read as such */
        if (!(buf = srv_train_read_file(rec, SRV_TRAIN_MAX_RECORD, 0, &len, err, sizeof err)))
            snprintf(why, sizeof why, "%.500s", err);
        else if (srv_train_record_parse((const char *)buf, len, name, t->app->cfg.train_threads,
                                        &j, err, sizeof err))
            snprintf(why, sizeof why, "job.json: %.500s", err);
    }
    free(buf);
    if (!j) {
        srv_data_quarantine(data, path, why);
        return NULL;
    }
    j->t = t;
    snprintf(j->dir, sizeof j->dir, "%s/%s", t->dir, name);
    return j;
}

/* After a crash: a finished job's state file goes; an unfinished job whose
 * model is on disk had finished. */
static void tidy(srv_trainer *t, job *j)
{
    char state[PATH_LEN], model[PATH_LEN];
    srv_train_job_path(j, "state", state, sizeof state);
    struct stat sb;
    if (finished(j)) {
        if (lstat(state, &sb) == 0 && srv_data_rmtree(state) == 0)
            fprintf(stderr, "attnd: train %s: removed the checkpoint of a finished job\n", j->id);
        return;
    }
    snprintf(model, sizeof model, "%s/models/%s.safetensors", t->app->cfg.data_dir, j->p.name);
    if (lstat(model, &sb) == 0 && S_ISREG(sb.st_mode)) {
        j->state = SUCCEEDED;
        j->step = j->p.spec.train.steps;
        j->finished = sb.st_mtime;
        snprintf(j->note, sizeof j->note, "its model %.200s was saved before a stop the record could "
                 "not follow; marked succeeded at start-up", model);
        fprintf(stderr, "attnd: train %s: %s\n", j->id, j->note);
        srv_data_rmtree(state);
        srv_train_save_record(t, j);
    }
}

void srv_train_load_records(srv_trainer *t)
{
    const char *data = t->app->cfg.data_dir;
    struct stat sb;
    if (lstat(t->dir, &sb)) {
        if (errno != ENOENT)
            fprintf(stderr, "attnd: train: cannot read %s: %s\n", t->dir, strerror(errno));
        return;
    }
    if (!S_ISDIR(sb.st_mode)) {
        srv_data_quarantine(data, t->dir, "not a directory");
        return;
    }
    int fd = open(t->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        fprintf(stderr, "attnd: train: cannot read %s: %s\n", t->dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    /* names first: quarantining renames entries out of the dir being read */
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (n == cap) {
            int c = cap ? 2 * cap : 64;
            char **p = realloc(names, (size_t)c * sizeof *p);
            if (!p)
                break;
            names = p;
            cap = c;
        }
        if (!(names[n] = strdup(e->d_name)))
            break;
        n++;
    }
    closedir(d);
    for (int i = 0; i < n; i++) {
        job *j = scan_one(t, names[i]);
        free(names[i]);
        if (!j)
            continue;
        if (srv_train_append(&t->jobs, &t->n_jobs, &t->cap_jobs, j)) {
            fprintf(stderr, "attnd: train %s: out of memory; skipped\n", j->id);
            srv_train_job_free(j);
            continue;
        }
        if (id_ms(j->id) > t->last_ms)
            t->last_ms = id_ms(j->id);
    }
    free(names);
    qsort(t->jobs, (size_t)t->n_jobs, sizeof *t->jobs, by_id);
    for (int i = 0; i < t->n_jobs; i++)
        tidy(t, t->jobs[i]);
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
    srv_train_prune(t);
}
