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
 * Jobs are never freed before srv_trainer_destroy, so a job pointer found
 * under the mutex stays valid; records of finished jobs stay listed.
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
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "tfm/checkpoint.h"
#include "train_job.h"

typedef srv_train_job job;

static void model_path(const srv_trainer *t, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/models/%s.safetensors", t->app->cfg.data_dir, name);
}

/* Under t->mu. */
static job *find_job(srv_trainer *t, const char *id)
{
    for (int i = 0; i < t->n_jobs; i++)
        if (!strcmp(t->jobs[i]->id, id))
            return t->jobs[i];
    return NULL;
}

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
    if (st != TFM_OK)
        return st;
    pthread_mutex_lock(&j->t->mu);
    j->ckpt_step = step;
    pthread_mutex_unlock(&j->t->mu);
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
    unsigned char *buf = srv_train_read_file(path, SRV_TRAIN_MAX_CORPUS, len, why, sizeof why);
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
        st = tfm_trainer_create(*m, c->batch_size, c->seq_len, spec->n_threads, tr);
    if (st != TFM_OK) {
        if (!err[0])
            snprintf(err, errlen, "cannot set up the trainer: %s", tfm_strerror(st));
        return st;
    }
    char path[PATH_LEN], why[256] = "";
    srv_train_job_path(j, "state", path, sizeof path);
    if (access(path, F_OK) == 0) {
        if (tfm_trainer_load(*tr, path, why, sizeof why) == TFM_OK) {
            fprintf(stderr, "attnd: train %s: resuming at step %d\n", j->id,
                    tfm_trainer_step_count(*tr));
            return TFM_OK;
        }
        /* a trainer half loaded is no start: a fresh one, from step 0 */
        fprintf(stderr, "attnd: train %s: cannot resume from %s (%s); starting over\n", j->id,
                path, why);
        tfm_trainer_destroy(*tr);
        *tr = NULL;
        if ((st = tfm_trainer_create(*m, c->batch_size, c->seq_len, spec->n_threads, tr)))
            return st;
    }
    tfm_model_init_train(*m, c->seed);
    return TFM_OK;
}

/* Saves and registers the trained model; 0, or -1 with a message. */
static int publish(srv_trainer *t, job *j, const tfm_model *m, char *err, size_t errlen)
{
    srv_app *app = t->app;
    char path[PATH_LEN], dir[PATH_LEN], why[512] = "";
    model_path(t, j->p.name, path, sizeof path);
    snprintf(dir, sizeof dir, "%s/models", app->cfg.data_dir);
    if (srv_models_find(&app->models, j->p.name)) {
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
        snprintf(err, errlen, "cannot save %.300s: %.150s", path, why[0] ? why : tfm_strerror(st));
        return -1;
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
    j->step = j->run_start_step = tfm_trainer_step_count(tr);
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
        while (!t->stopping && t->n_queue == 0)
            pthread_cond_wait(&t->cv, &t->mu);
        if (t->stopping)
            break;
        job *j = t->queue[0];
        memmove(t->queue, t->queue + 1, (size_t)--t->n_queue * sizeof *t->queue);
        j->state = RUNNING;
        if (!j->started)
            j->started = srv_train_wall_now();
        j->error[0] = 0;
        pthread_mutex_unlock(&t->mu);
        run_job(t, j);
        pthread_mutex_lock(&t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* ---- routes (libmicrohttpd's thread) ---------------------------------------------- */

static void reply_value(srv_req *r, int status, json_t *v, const char *location)
{
    char *s = v ? json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(v);
    if (!s) {
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    if (location)
        srv_reply_json_location(r, status, s, location);
    else
        srv_reply_json(r, status, s);
    free(s);
}

/* Under t->mu: why name cannot be a new job's model, or NULL. */
/* Models the registry would hold once every queued and running job has
 * published one (under t->mu). */
static int models_promised(srv_trainer *t)
{
    int n = srv_models_count(&t->app->models);
    for (int i = 0; i < t->n_jobs; i++)
        n += t->jobs[i]->state == QUEUED || t->jobs[i]->state == RUNNING;
    return n;
}

static const char *name_taken(srv_trainer *t, const char *name, char *why, size_t n)
{
    char path[PATH_LEN];
    model_path(t, name, path, sizeof path);
    if (srv_models_find(&t->app->models, name))
        snprintf(why, n, "a model named \"%s\" is served already", name);
    else if (access(path, F_OK) == 0)
        snprintf(why, n, "%.400s exists already", path);
    else {
        for (int i = 0; i < t->n_jobs; i++) {
            const job *j = t->jobs[i];
            if ((j->state == QUEUED || j->state == RUNNING) && !strcmp(j->p.name, name)) {
                snprintf(why, n, "job %s (%s) is training a model named \"%s\"", j->id,
                         srv_train_state_names[j->state], name);
                return why;
            }
        }
        return NULL;
    }
    return why;
}

/* Under t->mu: a new id, "tr-" and the creation time in milliseconds
 * (unique and sortable: a second job in the same millisecond takes the
 * next one). */
static void next_id(srv_trainer *t, char *id, size_t n)
{
    unsigned long long ms = (unsigned long long)(srv_train_wall_now() * 1000.0);
    if (ms <= t->last_ms)
        ms = t->last_ms + 1;
    t->last_ms = ms;
    snprintf(id, n, "tr-%llu", ms);
}

static void remove_from(job **arr, int *n, const job *j)
{
    for (int i = 0; i < *n; i++)
        if (arr[i] == j) {
            memmove(arr + i, arr + i + 1, (size_t)(*n - i - 1) * sizeof *arr);
            (*n)--;
            return;
        }
}

/* Records a new job (its directory, inline text, job.json); 0 or -1 with
 * a message. */
static int record_new(srv_trainer *t, job *j, char *err, size_t errlen)
{
    char path[PATH_LEN];
    if (srv_train_mkdir_p(j->dir)) {
        snprintf(err, errlen, "cannot create %.400s: %s", j->dir, strerror(errno));
        return -1;
    }
    srv_train_job_path(j, "text", path, sizeof path);
    if (j->p.text && srv_train_write_atomic(path, j->p.text, j->p.text_len)) {
        snprintf(err, errlen, "cannot write %.400s: %s", path, strerror(errno));
        return -1;
    }
    j->p.text = NULL; /* it pointed into the request body */
    if (srv_train_save_record(t, j)) {
        snprintf(err, errlen, "cannot write the job's record under %.400s", j->dir);
        return -1;
    }
    return 0;
}

static void create_job(srv_req *r, srv_trainer *t)
{
    srv_app *app = r->app;
    json_t *body = srv_req_json_body(r);
    if (!body)
        return;
    srv_train_params p;
    char field[64], msg[400], why[1300];
    if (srv_train_params_parse(body, 0, app->cfg.train_threads, &p, field, sizeof field, msg,
                               sizeof msg)) {
        srv_reply_error(r, 422, "invalid_argument", field[0] ? field : NULL, "%s", msg);
        json_decref(body);
        return;
    }
    json_t *req = srv_train_params_json(&p);
    pthread_mutex_lock(&t->mu);
    job *j = NULL;
    if (name_taken(t, p.name, why, sizeof why)) {
        pthread_mutex_unlock(&t->mu);
        srv_reply_error(r, 409, "conflict", "name", "%s", why);
        goto out;
    }
    /* refused now rather than failed at the end of its training */
    int promised = models_promised(t);
    if (promised >= SRV_MODELS_MAX) {
        pthread_mutex_unlock(&t->mu);
        srv_reply_error(r, 507, "insufficient_storage", NULL,
                        "the registry holds at most %d models, and the models served and the "
                        "queued or running jobs already make %d",
                        SRV_MODELS_MAX, promised);
        goto out;
    }
    char id[32];
    next_id(t, id, sizeof id);
    if (!req || !(j = srv_train_job_new(t, id))) {
        pthread_mutex_unlock(&t->mu);
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    j->p = p;
    j->request = req;
    req = NULL;
    j->threads = app->cfg.train_threads;
    j->state = QUEUED;
    j->created = srv_train_wall_now();
    if (srv_train_append(&t->jobs, &t->n_jobs, &t->cap_jobs, j)) {
        pthread_mutex_unlock(&t->mu);
        srv_train_job_free(j);
        srv_reply_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    pthread_mutex_unlock(&t->mu);

    /* listed (so the name is held) but not queued until its record is down */
    int rc = record_new(t, j, why, sizeof why);
    pthread_mutex_lock(&t->mu);
    if (rc == 0 && srv_train_append(&t->queue, &t->n_queue, &t->cap_queue, j)) {
        snprintf(why, sizeof why, "out of memory");
        rc = -1;
    }
    if (rc) {
        remove_from(t->jobs, &t->n_jobs, j);
        pthread_mutex_unlock(&t->mu);
        fprintf(stderr, "attnd: train %s: %s\n", j->id, why);
        srv_reply_error(r, 500, "internal", NULL, "cannot record the job: %s", why);
        srv_train_job_free(j);
        goto out;
    }
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    char location[64];
    snprintf(location, sizeof location, "/train/%s", id);
    reply_value(r, 202, json_pack("{s:s,s:s}", "id", id, "status", "queued"), location);
out:
    json_decref(req);
    json_decref(body);
}

void srv_route_train(srv_req *r)
{
    srv_trainer *t = r->app->trainer;
    if (!strcmp(r->method, "GET")) {
        json_t *list = json_array();
        if (t) {
            pthread_mutex_lock(&t->mu);
            for (int i = t->n_jobs - 1; list && i >= 0; i--) /* newest first */
                json_array_append_new(list, srv_train_job_json(t->jobs[i], SRV_TRAIN_SUMMARY));
            pthread_mutex_unlock(&t->mu);
        }
        reply_value(r, 200, list ? json_pack("{s:o}", "jobs", list) : NULL, NULL);
        return;
    }
    if (!t || !atomic_load(&t->accepting)) {
        srv_reply_error(r, 503, "not_ready", NULL, "training starts once the models are loaded");
        return;
    }
    create_job(r, t);
}

void srv_route_train_job(srv_req *r)
{
    srv_trainer *t = r->app->trainer;
    const char *id = r->path + strlen("/train/");
    if (!t) {
        srv_reply_error(r, 404, "not_found", NULL, "no training job \"%s\"", id);
        return;
    }
    pthread_mutex_lock(&t->mu);
    job *j = find_job(t, id);
    if (!j) {
        pthread_mutex_unlock(&t->mu);
        srv_reply_error(r, 404, "not_found", NULL, "no training job \"%s\"", id);
        return;
    }
    if (!strcmp(r->method, "GET")) {
        json_t *o = srv_train_job_json(j, SRV_TRAIN_FULL);
        pthread_mutex_unlock(&t->mu);
        reply_value(r, 200, o, NULL);
        return;
    }
    /* DELETE */
    int state = j->state, finishing = j->finishing;
    if (state == QUEUED)
        remove_from(t->queue, &t->n_queue, j);
    if (state == QUEUED || (state == RUNNING && !finishing)) {
        j->state = CANCELLED;
        j->finished = srv_train_wall_now();
        j->eta_s = -1;
        atomic_store(&j->cancel, CANCEL_USER); /* a running job stops before its next step */
    }
    pthread_mutex_unlock(&t->mu);
    if (state == QUEUED || (state == RUNNING && !finishing)) {
        srv_train_save_record(t, j);
        srv_reply(r, 204, NULL, "", 0);
    } else if (finishing) {
        srv_reply_error(r, 409, "conflict", NULL,
                        "job %s has finished training and is saving its model", id);
    } else {
        srv_reply_error(r, 409, "conflict", NULL, "job %s has %s already", id,
                        srv_train_state_names[state]);
    }
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
