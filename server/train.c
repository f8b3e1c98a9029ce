/*
 * train.c — training jobs: the queue, the workers, running a job, and the
 * /train routes (see train.h; a job's JSON and records: train_record.c;
 * the request: train_params.c).
 *
 * Threads.  The HTTP thread validates and records a new job, then queues
 * it; --train-workers worker threads (plain pthreads, at nice 10 so that
 * inference wins the cores) take jobs in FIFO order and run them; the
 * loop thread starts the workers once the models are loaded and asks them
 * to stop on a signal.  One mutex, t->mu, guards the job list, the queue
 * and every job's mutable fields; the training thread takes it once per
 * step (the progress hook), for microseconds.  Cancellation is an atomic
 * flag the core polls before each step.  A job's record is written by
 * whichever thread changed it (the worker, or the HTTP thread for a
 * cancelled job): the JSON is snapshotted under t->mu with a sequence
 * number and written under the job's own io_mu, so an older snapshot never
 * overwrites a newer one and no fsync happens under t->mu.
 *
 * A job pointer found under the mutex is valid until the mutex is
 * released; a thread that keeps it longer (the worker running the job,
 * the HTTP thread recording or cancelling it) holds a reference
 * (train_job.h).  Finished jobs stay listed until --train-keep newer ones
 * have finished, or a DELETE removes them (train_store.c).
 *
 * Limits: at most --train-queue-depth jobs wait (POST /train is 503
 * overloaded beyond, with Retry-After); at most --train-keep finished
 * jobs are kept.
 *
 * Storage faults (a full or read-only data dir) never stop the server: a
 * checkpoint that cannot be written is retried at the next interval while
 * the last good one stays (the note of the job says so); a record that
 * cannot be written is retried at the next change; a model that cannot be
 * saved fails the job with the reason.  Each failure counts in
 * attnd_storage_errors_total{op}.  POST /train answers 507
 * insufficient_storage when the disk is full, 500 internal when the data
 * dir cannot take the job's record otherwise (read-only, unwritable).
 *
 * (The routes: train_routes.c.)
 *
 * A job's life: queued -> running -> succeeded | failed | cancelled.  A
 * DELETE of a running job marks it cancelled at once (GET shows it) and
 * the worker stops at its next step; a job that is already saving its
 * model ("finishing") can no longer be cancelled (409).  Shutdown stops
 * running jobs the same way without changing their state, so their
 * records still say "running" and the next start resumes them from the
 * state file of their last checkpoint (or from step 0 with the same seed
 * when there is none yet).
 */
#define _GNU_SOURCE /* pthread_timedjoin_np */
#include "train.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "datadir.h"
#include "http.h"
#include "tfm/checkpoint.h"
#include "train_job.h"

typedef srv_train_job job;

/* ---- the loss history ------------------------------------------------------------- */

/* Points at multiples of hist_stride; when full, every other one goes and
 * the stride doubles, so the history stays evenly spread over the run. */
static void history_add(job *j, int step, float loss)
{
    if (step % j->hist_stride)
        return;
    if (j->n_hist == HISTORY_MAX) {
        int k = 0;
        for (int i = 0; i < j->n_hist; i++)
            if (j->hist_step[i] % (2 * j->hist_stride) == 0) {
                j->hist_step[k] = j->hist_step[i];
                j->hist_loss[k++] = j->hist_loss[i];
            }
        j->n_hist = k;
        j->hist_stride *= 2;
        if (step % j->hist_stride)
            return;
    }
    j->hist_step[j->n_hist] = step;
    j->hist_loss[j->n_hist++] = loss;
}

/* ---- the training hooks (the worker's thread) ------------------------------------- */

static int hook_cancelled(void *ctx)
{
    job *j = ctx;
    return atomic_load(&j->cancel) != 0;
}

static void hook_progress(void *ctx, const tfm_train_progress *pr)
{
    job *j = ctx;
    srv_trainer *t = j->t;
    srv_stats *s = &t->app->stats;
    double now = tfm_now();
    if (!pr->has_eval) /* an evaluation would count as a slow step */
        srv_histogram_observe(s->train_step_seconds, now - j->step_t0);
    j->step_t0 = now;
    srv_counter_add(s->train_steps, 1);
    srv_counter_add(s->train_tokens,
                    (double)j->p.spec.train.batch_size * (double)j->p.spec.train.seq_len);
    srv_gauge_set(j->loss_series, pr->last.loss);
    tfm_profile *prof = tfm_trainer_profile(j->tr);
    srv_stats_add_profile(s, prof);
    tfm_profile_reset(prof);
    pthread_mutex_lock(&t->mu);
    j->step = pr->step;
    j->loss = pr->last.loss;
    j->has_loss = 1;
    history_add(j, pr->step, pr->last.loss);
    j->tokens_per_s = pr->tokens_per_s;
    int done = pr->step - j->run_start_step;
    j->eta_s = done > 0 ? (pr->steps - pr->step) * pr->seconds / done : -1;
    if (pr->has_eval) {
        j->eval_step = pr->step;
        j->ev_recall = pr->recall;
        j->ev_text = pr->text;
    }
    pthread_mutex_unlock(&t->mu);
    if (pr->has_eval || now - j->last_saved >= SAVE_EVERY) {
        j->last_saved = now;
        srv_train_save_record(t, j);
    }
}

static tfm_status hook_checkpoint(void *ctx, tfm_trainer *tr, int step)
{
    job *j = ctx;
    char path[PATH_LEN];
    srv_train_job_path(j, "state", path, sizeof path);
    tfm_status st = tfm_trainer_save(tr, path, j->ckpt_err, sizeof j->ckpt_err);
    if (st != TFM_OK) {
        /* the previous state file is untouched (the write went to a
         * temporary file, removed): train on, try again at the next one */
        srv_counter_add(j->t->app->stats.storage_errors[SRV_STORAGE_CHECKPOINT], 1);
        pthread_mutex_lock(&j->t->mu);
        int last = j->ckpt_step;
        snprintf(j->note, sizeof j->note, "checkpoint at step %d failed (%.200s); a restart "
                 "resumes from step %d", step, j->ckpt_err, last);
        pthread_mutex_unlock(&j->t->mu);
        if (!j->ckpt_failing)
            fprintf(stderr, "attnd: train %s: checkpoint at step %d failed: %s; the one of step %d "
                    "stays, retrying at the next\n", j->id, step, j->ckpt_err, last);
        j->ckpt_failing = 1;
        j->ckpt_err[0] = 0;
        return TFM_OK;
    }
    pthread_mutex_lock(&j->t->mu);
    j->ckpt_step = step;
    if (j->ckpt_failing)
        j->note[0] = 0;
    pthread_mutex_unlock(&j->t->mu);
    if (j->ckpt_failing)
        fprintf(stderr, "attnd: train %s: checkpoint at step %d written\n", j->id, step);
    j->ckpt_failing = 0;
    j->last_saved = tfm_now();
    srv_train_save_record(j->t, j);
    return TFM_OK;
}

/* ---- running a job (the worker's thread) ----------------------------------------- */

/* The corpus: inline text from <dir>/text, or <data-dir>/corpora/<name>. */
static unsigned char *load_text(srv_trainer *t, job *j, size_t *len, char *err, size_t errlen)
{
    char path[PATH_LEN], why[PATH_LEN + 100];
    if (j->p.corpus[0])
        snprintf(path, sizeof path, "%s/corpora/%s", t->app->cfg.data_dir, j->p.corpus);
    else
        srv_train_job_path(j, "text", path, sizeof path);
    /* a corpus may be a link the operator made; a job's own text may not */
    unsigned char *buf =
        srv_train_read_file(path, SRV_TRAIN_MAX_CORPUS, j->p.corpus[0] != 0, len, why, sizeof why);
    if (!buf)
        snprintf(err, errlen, "%s%.100s%s%.300s", j->p.corpus[0] ? "corpus \"" : "",
                 j->p.corpus, j->p.corpus[0] ? "\": " : "", why);
    return buf;
}

/* Builds the model and trainer; resumes from <dir>/state when there is one. */
static tfm_status setup(job *j, const tfm_train_spec *spec, tfm_model **m, tfm_trainer **tr,
                        char *err, size_t errlen)
{
    const tfm_train_config *c = &spec->train;
    tfm_status st = tfm_model_create(&spec->model, m, err, errlen);
    if (st == TFM_OK)
        st = tfm_trainer_create_attn(*m, c->batch_size, c->seq_len, spec->n_threads, c->attention, tr);
    if (st != TFM_OK) {
        if (!err[0])
            snprintf(err, errlen, "cannot set up the trainer: %s", tfm_strerror(st));
        return st;
    }
    char path[PATH_LEN], why[256] = "";
    srv_train_job_path(j, "state", path, sizeof path);
    struct stat sb;
    if (lstat(path, &sb) == 0) {
        /* never a blocking open of a FIFO, never a link out of the dir */
        int fd = srv_data_open_regular(path, 0, 0, why, sizeof why);
        if (fd >= 0) {
            close(fd);
            st = tfm_trainer_load(*tr, path, why, sizeof why);
            if (st == TFM_OK) {
                fprintf(stderr, "attnd: train %s: resuming at step %d\n", j->id,
                        tfm_trainer_step_count(*tr));
                return TFM_OK;
            }
            if (st == TFM_E_NOMEM) { /* the file may be fine: keep it, fail the job */
                snprintf(err, errlen, "out of memory reading the checkpoint %.300s", path);
                return st;
            }
        }
        /* unusable: out of the way (the next checkpoint takes its name),
         * and a trainer half loaded is no start: a fresh one, from step 0 */
        char reason[400];
        snprintf(reason, sizeof reason, "cannot resume from it (%.250s); job %s starts over from "
                 "step 0", why, j->id);
        srv_data_quarantine(j->t->app->cfg.data_dir, path, reason);
        pthread_mutex_lock(&j->t->mu);
        snprintf(j->note, sizeof j->note, "its checkpoint could not be read (%.200s); restarted "
                 "from step 0", why);
        pthread_mutex_unlock(&j->t->mu);
        tfm_trainer_destroy(*tr);
        *tr = NULL;
        if ((st = tfm_trainer_create_attn(*m, c->batch_size, c->seq_len, spec->n_threads, c->attention, tr)))
            return st;
    } else if (j->ckpt_step > 0) {
        pthread_mutex_lock(&j->t->mu);
        snprintf(j->note, sizeof j->note, "its checkpoint of step %d is missing; restarted from "
                 "step 0", j->ckpt_step);
        pthread_mutex_unlock(&j->t->mu);
        fprintf(stderr, "attnd: train %s: %s\n", j->id, j->note);
    }
    tfm_model_init_train(*m, c->seed);
    return TFM_OK;
}

/* Saves and registers the trained model; 0, or -1 with a message. */
static int publish(srv_trainer *t, job *j, const tfm_model *m, char *err, size_t errlen)
{
    srv_app *app = t->app;
    char path[PATH_LEN], dir[PATH_LEN], why[512] = "";
    srv_train_model_path(t, j->p.name, path, sizeof path);
    snprintf(dir, sizeof dir, "%s", app->cfg.trained_dir);
    if (srv_models_has(&app->models, j->p.name)) {
        snprintf(err, errlen, "a model named \"%s\" is served already", j->p.name);
        return -1;
    }
    if (access(path, F_OK) == 0) {
        snprintf(err, errlen, "%.400s exists already", path);
        return -1;
    }
    if (srv_train_mkdir_p(dir)) {
        snprintf(err, errlen, "cannot create %.400s: %s", dir, strerror(errno));
        return -1;
    }
    tfm_status st = tfm_checkpoint_save(m, path, TFM_CKPT_SAFETENSORS, why, sizeof why);
    if (st != TFM_OK) {
        srv_counter_add(app->stats.storage_errors[SRV_STORAGE_MODEL], 1);
        struct stat sb;
        if (lstat(path, &sb) != 0) { /* nothing half-written is left: the write was a temp */
            snprintf(err, errlen, "cannot save %.300s: %.150s", path,
                     why[0] ? why : tfm_strerror(st));
            return -1;
        }
        /* renamed into place, only the directory's fsync failed: it is whole */
        fprintf(stderr, "attnd: train %s: %s: %s\n", j->id, path, why);
    }
    int rc = srv_models_add(&app->models, path, why, sizeof why);
    if (rc) {
        snprintf(err, errlen, "saved %.300s but cannot serve it: %.150s", path,
                 rc == -2 ? "the name is taken" : why);
        return -1;
    }
    return 0;
}

static void run_job(srv_trainer *t, job *j)
{
    srv_app *app = t->app;
    tfm_train_spec spec = j->p.spec;
    spec.n_threads = j->threads;
    unsigned char *text = NULL;
    tfm_model *m = NULL;
    tfm_trainer *tr = NULL;
    char err[512] = "";
    int ok = 0;
    tfm_train_progress fin;
    memset(&fin, 0, sizeof fin);
    j->ckpt_err[0] = 0;
    j->loss_series = srv_metric_series(app->stats.train_loss, (const char *const[]){j->id});
    srv_series_set_hidden(j->loss_series, 0);
    srv_train_save_record(t, j);
    fprintf(stderr, "attnd: train %s: running (%s, model %s, %d steps)\n", j->id,
            spec.task == TFM_TASK_RECALL ? "recall" : "text", j->p.name, spec.train.steps);

    tfm_status st = TFM_OK;
    if (spec.task == TFM_TASK_TEXT) {
        size_t n = 0;
        if (!(text = load_text(t, j, &n, err, sizeof err)))
            goto done;
        spec.text = text;
        spec.text_len = n;
        char why[256] = "";
        if (tfm_train_spec_prepare(&spec, why, sizeof why) != TFM_OK) {
            snprintf(err, sizeof err, "%s%.100s%s(%zu bytes): %.200s",
                     j->p.corpus[0] ? "corpus \"" : "", j->p.corpus,
                     j->p.corpus[0] ? "\" " : "inline text ", n, why);
            goto done;
        }
    }
    if ((st = setup(j, &spec, &m, &tr, err, sizeof err)) != TFM_OK)
        goto done;
    pthread_mutex_lock(&t->mu);
    j->step = j->run_start_step = j->ckpt_step = tfm_trainer_step_count(tr);
    int k = 0; /* the history past the checkpoint is replayed */
    while (k < j->n_hist && j->hist_step[k] <= j->step)
        k++;
    j->n_hist = k;
    if (j->step == 0)
        j->has_loss = 0;
    if (j->eval_step > j->step)
        j->eval_step = 0;
    pthread_mutex_unlock(&t->mu);
    j->step_t0 = j->last_saved = tfm_now();
    j->tr = tr;
    tfm_train_hooks hooks = {j, hook_cancelled, hook_progress, hook_checkpoint};
    st = tfm_train_run(tr, &spec, &hooks, &fin, err, sizeof err);
    if (st != TFM_OK && j->ckpt_err[0])
        snprintf(err, sizeof err, "checkpoint: %s", j->ckpt_err);
    if (st == TFM_OK) {
        pthread_mutex_lock(&t->mu);
        int go = j->state == RUNNING;
        j->finishing = go;
        pthread_mutex_unlock(&t->mu);
        ok = go && publish(t, j, m, err, sizeof err) == 0;
    }
done:
    /* before the state changes: whoever sees the job ended sees no loss */
    srv_series_set_hidden(j->loss_series, 1);
    pthread_mutex_lock(&t->mu);
    if (j->state == RUNNING && !(st == TFM_E_CANCELLED && atomic_load(&j->cancel))) {
        j->state = ok ? SUCCEEDED : FAILED;
        j->finished = srv_train_wall_now();
        if (!ok)
            snprintf(j->error, sizeof j->error, "%s", err[0] ? err : tfm_strerror(st));
        if (fin.has_eval) {
            j->eval_step = fin.step;
            j->ev_recall = fin.recall;
            j->ev_text = fin.text;
        }
        j->eta_s = -1;
    }
    j->finishing = 0;
    int final = j->state != RUNNING, state = j->state;
    double secs = j->finished - j->started;
    pthread_mutex_unlock(&t->mu);
    srv_train_save_record(t, j);
    if (final) {
        char path[PATH_LEN];
        srv_train_job_path(j, "state", path, sizeof path);
        unlink(path); /* weights and moments: three models' worth, no longer needed */
    }
    if (state == SUCCEEDED)
        fprintf(stderr, "attnd: train %s: succeeded in %.1f s, loss %g; serving \"%s\"\n", j->id,
                secs, (double)fin.last.loss, j->p.name);
    else if (state == FAILED)
        fprintf(stderr, "attnd: train %s: failed: %s\n", j->id, err[0] ? err : tfm_strerror(st));
    else if (state == CANCELLED)
        fprintf(stderr, "attnd: train %s: cancelled\n", j->id);
    else
        fprintf(stderr, "attnd: train %s: stopped for shutdown at step %d (checkpoint %d)\n",
                j->id, j->step, j->ckpt_step);
    j->tr = NULL;
    tfm_trainer_destroy(tr);
    tfm_model_destroy(m);
    free(text);
    if (final)
        srv_train_prune(t);
}

/* Under t->mu (released meanwhile): writes again the records whose last
 * write failed (a full or read-only disk), so that a job that finished
 * while the disk was full has its record once there is room. */
static int retry_records(srv_trainer *t)
{
    int n = 0;
    for (int i = 0; i < t->n_jobs; i++)
        n += t->jobs[i]->rec_dirty;
    if (!n)
        return 0;
    job **js = malloc((size_t)n * sizeof *js);
    if (!js)
        return n;
    int k = 0;
    for (int i = 0; i < t->n_jobs && k < n; i++)
        if (t->jobs[i]->rec_dirty) {
            srv_train_hold(t->jobs[i]);
            js[k++] = t->jobs[i];
        }
    pthread_mutex_unlock(&t->mu);
    for (int i = 0; i < k; i++) {
        srv_train_save_record(t, js[i]);
        srv_train_release(t, js[i]);
    }
    free(js);
    pthread_mutex_lock(&t->mu);
    return k;
}

static void *worker_main(void *arg)
{
    srv_trainer *t = arg;
    /* below the engine: threads created from here (the trainer's pool)
     * inherit the nice value */
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), TRAIN_NICE))
        fprintf(stderr, "attnd: train: setpriority: %s\n", strerror(errno));
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->stopping && t->n_queue == 0) {
            int dirty = 0;
            for (int i = 0; i < t->n_jobs; i++)
                dirty |= t->jobs[i]->rec_dirty;
            if (!dirty) {
                pthread_cond_wait(&t->cv, &t->mu);
                continue;
            }
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += (time_t)SAVE_EVERY;
            if (pthread_cond_timedwait(&t->cv, &t->mu, &until) == ETIMEDOUT && !t->stopping)
                retry_records(t);
        }
        if (t->stopping)
            break;
        job *j = t->queue[0];
        memmove(t->queue, t->queue + 1, (size_t)--t->n_queue * sizeof *t->queue);
        j->state = RUNNING;
        if (!j->started)
            j->started = srv_train_wall_now();
        j->error[0] = 0;
        srv_train_hold(j);
        pthread_mutex_unlock(&t->mu);
        run_job(t, j);
        srv_train_release(t, j);
        pthread_mutex_lock(&t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

static void collect(srv_registry *reg, void *ctx)
{
    srv_trainer *t = ctx;
    int n[SRV_TRAIN_STATES] = {0};
    (void)reg;
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < t->n_jobs; i++)
        n[t->jobs[i]->state]++;
    pthread_mutex_unlock(&t->mu);
    for (int i = 0; i < SRV_TRAIN_STATES; i++)
        srv_gauge_set(t->app->stats.train_jobs[i], n[i]);
}

srv_trainer *srv_trainer_create(srv_app *app)
{
    srv_trainer *t = calloc(1, sizeof *t);
    if (!t) {
        fprintf(stderr, "attnd: out of memory\n");
        return NULL;
    }
    t->app = app;
    snprintf(t->dir, sizeof t->dir, "%s/train", app->cfg.data_dir);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    srv_data_init(app->stats.data_quarantined);
    srv_train_load_records(t);
    if (srv_metrics_on_render(app->stats.reg, collect, t)) {
        fprintf(stderr, "attnd: out of memory\n");
        srv_trainer_destroy(t, 0);
        return NULL;
    }
    return t;
}

int srv_trainer_start(srv_trainer *t)
{
    srv_config *cfg = &t->app->cfg;
    if (!(t->workers = calloc((size_t)cfg->train_workers, sizeof *t->workers))) {
        fprintf(stderr, "attnd: train: out of memory\n");
        return -1;
    }
    pthread_mutex_lock(&t->mu);
    for (int i = 0; !t->stopping && i < cfg->train_workers; i++) {
        int e = pthread_create(&t->workers[t->n_workers], NULL, worker_main, t);
        if (e)
            fprintf(stderr, "attnd: train: cannot start a worker: %s\n", strerror(e));
        else
            t->n_workers++;
    }
    int started = t->n_workers, stopping = t->stopping, queued = t->n_queue;
    pthread_mutex_unlock(&t->mu);
    if (stopping)
        return 0;
    if (!started)
        return -1;
    atomic_store(&t->accepting, 1);
    fprintf(stderr, "attnd: training: %d worker(s) of %d thread(s), %d job(s) waiting\n", started,
            cfg->train_threads, queued);
    return 0;
}

void srv_trainer_shutdown(srv_trainer *t)
{
    if (!t)
        return;
    atomic_store(&t->accepting, 0);
    pthread_mutex_lock(&t->mu);
    if (!t->stopping) {
        t->stopping = 1;
        t->shutdown_at = tfm_now();
        for (int i = 0; i < t->n_jobs; i++)
            if (t->jobs[i]->state == RUNNING) {
                int none = 0; /* a DELETE's cancel stays what it is */
                atomic_compare_exchange_strong(&t->jobs[i]->cancel, &none, CANCEL_SHUTDOWN);
            }
        pthread_cond_broadcast(&t->cv);
    }
    pthread_mutex_unlock(&t->mu);
}

int srv_trainer_destroy(srv_trainer *t, double wait_seconds)
{
    if (!t)
        return 0;
    srv_trainer_shutdown(t);
    pthread_mutex_lock(&t->mu);
    double left = t->shutdown_at + wait_seconds - tfm_now();
    pthread_mutex_unlock(&t->mu);
    if (left < 0.1)
        left = 0.1;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)left;
    until.tv_nsec += (long)((left - (double)(time_t)left) * 1e9);
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    int busy = 0;
    for (int i = 0; i < t->n_workers; i++)
        busy += pthread_timedjoin_np(t->workers[i], NULL, &until) != 0;
    if (busy) {
        fprintf(stderr, "attnd: train: %d worker(s) still in a step after %.0f s; not waiting\n",
                busy, wait_seconds);
        return -1;
    }
    for (int i = 0; i < t->n_jobs; i++)
        srv_train_job_free(t->jobs[i]);
    free(t->jobs);
    free(t->queue);
    free(t->workers);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
    return 0;
}
