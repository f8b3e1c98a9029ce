/*
 * train_routes.c — POST /train, GET /train, GET and DELETE /train/{id}
 * (libmicrohttpd's thread; see train.h and train.c for the jobs).
 *
 * POST validates (train_params.c), refuses what cannot be taken at once
 * (409 a name taken, 503 a full queue, 507 a full registry or data dir),
 * lists the job so that its name is held, writes its record outside
 * t->mu (holding a reference: a DELETE may come meanwhile), then queues
 * it.  DELETE cancels a queued or running job and removes a finished one.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "datadir.h"
#include "http.h"
#include "train_job.h"

typedef srv_train_job job;

/* Under t->mu. */
static job *find_job(srv_trainer *t, const char *id)
{
    for (int i = 0; i < t->n_jobs; i++)
        if (!strcmp(t->jobs[i]->id, id))
            return t->jobs[i];
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
    srv_train_model_path(t, name, path, sizeof path);
    if (srv_models_has(&t->app->models, name))
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
static int record_new(srv_trainer *t, job *j, int *e, char *err, size_t errlen)
{
    char path[PATH_LEN];
    srv_series *failed = t->app->stats.storage_errors[SRV_STORAGE_RECORD];
    if (srv_train_mkdir_p(j->dir)) {
        *e = errno;
        srv_counter_add(failed, 1);
        snprintf(err, errlen, "cannot create %.400s: %s", j->dir, strerror(*e));
        return -1;
    }
    srv_train_job_path(j, "text", path, sizeof path);
    if (j->p.text && srv_train_write_atomic(path, j->p.text, j->p.text_len)) {
        *e = errno;
        srv_counter_add(failed, 1);
        snprintf(err, errlen, "cannot write %.400s: %s", path, strerror(*e));
        j->p.text = NULL;
        return -1;
    }
    j->p.text = NULL; /* it pointed into the request body */
    if (srv_train_save_record(t, j)) {
        *e = errno;
        snprintf(err, errlen, "cannot write %.400s/job.json: %s", j->dir, strerror(*e));
        return -1;
    }
    return 0;
}

/* Under t->mu: jobs waiting for a worker, those being recorded included. */
static int queued_jobs(srv_trainer *t)
{
    int n = 0;
    for (int i = 0; i < t->n_jobs; i++)
        n += t->jobs[i]->state == QUEUED;
    return n;
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
    int waiting = queued_jobs(t);
    if (waiting >= app->cfg.train_queue_depth) {
        pthread_mutex_unlock(&t->mu);
        srv_reply_error(r, 503, "overloaded", NULL,
                        "the training queue is full (%d jobs waiting, --train-queue-depth %d); "
                        "retry later", waiting, app->cfg.train_queue_depth);
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
    srv_train_hold(j); /* a DELETE may come while it is being recorded */
    pthread_mutex_unlock(&t->mu);

    /* listed (so the name is held) but not queued until its record is down */
    int e = 0;
    int rc = record_new(t, j, &e, why, sizeof why);
    pthread_mutex_lock(&t->mu);
    if (rc == 0 && j->state == QUEUED &&
        srv_train_append(&t->queue, &t->n_queue, &t->cap_queue, j)) {
        snprintf(why, sizeof why, "out of memory");
        e = ENOMEM;
        rc = -1;
    }
    if (rc) {
        srv_train_remove(t, j); /* the last release removes what was written */
        pthread_mutex_unlock(&t->mu);
        srv_train_release(t, j);
        srv_train_release(t, j);
        fprintf(stderr, "attnd: train: a new job cannot be recorded: %s\n", why);
        if (srv_data_is_full(e))
            srv_reply_error(r, 507, "insufficient_storage", NULL,
                            "the data dir is full; cannot record the job: %s", why);
        else
            srv_reply_error(r, 500, "internal", NULL, "cannot record the job: %s", why);
        goto out;
    }
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    srv_train_release(t, j);
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
    /* DELETE: a finished job goes, record and directory (its model stays
     * served); a queued or running one is cancelled */
    int state = j->state, finishing = j->finishing;
    if (state >= SUCCEEDED) {
        srv_train_remove(t, j);
        pthread_mutex_unlock(&t->mu);
        fprintf(stderr, "attnd: train %s: removed (DELETE of a %s job)\n", j->id,
                srv_train_state_names[state]);
        srv_train_release(t, j);
        srv_reply(r, 204, NULL, "", 0);
        return;
    }
    if (finishing) {
        pthread_mutex_unlock(&t->mu);
        srv_reply_error(r, 409, "conflict", NULL,
                        "job %s has finished training and is saving its model", id);
        return;
    }
    if (state == QUEUED)
        remove_from(t->queue, &t->n_queue, j);
    j->state = CANCELLED;
    j->finished = srv_train_wall_now();
    j->eta_s = -1;
    atomic_store(&j->cancel, CANCEL_USER); /* a running job stops before its next step */
    srv_train_hold(j);
    pthread_mutex_unlock(&t->mu);
    srv_train_save_record(t, j);
    srv_train_release(t, j);
    srv_reply(r, 204, NULL, "", 0);
    if (state == QUEUED) /* a running one is counted once its worker lets go */
        srv_train_prune(t);
}
