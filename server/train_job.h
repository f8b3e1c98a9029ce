/*
 * train_job.h — internal to the training files (train.c: queue, workers,
 * routes; train_record.c: a job as JSON, its record on disk, the start-up
 * scan): the job and trainer structures and what the two share.
 *
 * Locking: t->mu guards the job list, the queue and every field of a job
 * marked "under t->mu"; fields fixed once the job is listed are read
 * without it.  See train.c for the threads.
 */
#ifndef SRV_TRAIN_JOB_H
#define SRV_TRAIN_JOB_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>

#include "app.h"
#include "train.h"
#include "train_params.h"

#define PATH_LEN 1400       /* <data-dir> (1024) and what follows */
#define HISTORY_MAX 256    /* loss_history points kept, evenly spaced */
#define SAVE_EVERY 2.0     /* seconds between progress records */
#define TRAIN_NICE 10      /* workers' priority below the engine's */

enum { QUEUED = 0, RUNNING, SUCCEEDED, FAILED, CANCELLED }; /* srv_train_state_names */
#define CANCEL_USER 1
#define CANCEL_SHUTDOWN 2

typedef struct srv_train_job srv_train_job;

struct srv_train_job {
    srv_trainer *t;
    /* fixed once the job is listed */
    char id[32];
    char dir[1200];          /* <data-dir>/train/<id> */
    srv_train_params p;      /* p.text is NULL: inline text lives in <dir>/text */
    json_t *request;         /* the normalised request */
    int threads;             /* compute threads, fixed at creation (determinism) */
    /* under t->mu */
    int state;
    int finishing;           /* saving its model: no more cancelling */
    int step, ckpt_step;
    int has_loss;
    float loss;
    int eval_step;           /* 0: no evaluation yet */
    tfm_mqar_eval ev_recall;
    tfm_text_eval ev_text;
    int hist_step[HISTORY_MAX];
    float hist_loss[HISTORY_MAX];
    int n_hist, hist_stride;
    double tokens_per_s, eta_s; /* < 0: unknown */
    char error[512];
    double created, started, finished; /* unix seconds; 0: not yet */
    unsigned long seq;       /* record snapshots taken */
    atomic_int cancel;       /* CANCEL_USER, CANCEL_SHUTDOWN */
    /* the worker's own while it runs the job */
    double last_saved, step_t0;
    tfm_trainer *tr;       /* while running: its profile goes to the metrics */
    int run_start_step;
    char ckpt_err[256];
    srv_series *loss_series;
    /* record writes */
    pthread_mutex_t io_mu;
    unsigned long written;
};

struct srv_trainer {
    srv_app *app;
    char dir[1100]; /* <data-dir>/train */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    srv_train_job **jobs;  /* oldest first (ids sort by creation) */
    int n_jobs, cap_jobs;
    srv_train_job **queue; /* FIFO */
    int n_queue, cap_queue;
    pthread_t *workers;
    int n_workers;
    int stopping;
    double shutdown_at;
    unsigned long long last_ms; /* the newest id's milliseconds */
    atomic_int accepting;
};

/* What srv_train_job_json shows. */
enum { SRV_TRAIN_SUMMARY = 0, SRV_TRAIN_FULL, SRV_TRAIN_RECORD };

/* ---- train_record.c ------------------------------------------------------- */

double srv_train_wall_now(void); /* unix seconds */
int srv_train_mkdir_p(const char *path);
/* Temporary file beside path, fsync, rename, fsync of the directory.
 * 0 or -1 (errno set). */
int srv_train_write_atomic(const char *path, const void *data, size_t len);
/* The whole file, at most max bytes (malloc'd; the caller frees); NULL
 * with a message. */
unsigned char *srv_train_read_file(const char *path, size_t max, size_t *len, char *err,
                                   size_t errlen);
void srv_train_job_path(const srv_train_job *j, const char *file, char *out, size_t cap);
/* Appends to a growable array of jobs; 0 or -1 (out of memory). */
int srv_train_append(srv_train_job ***arr, int *n, int *cap, srv_train_job *j);
srv_train_job *srv_train_job_new(srv_trainer *t, const char *id); /* NULL: no memory */
void srv_train_job_free(srv_train_job *j);                        /* NULL is a no-op */
/* Under t->mu: the job as GET /train (SUMMARY), GET /train/{id} (FULL)
 * or its record (RECORD) show it.  A new reference, NULL: no memory. */
json_t *srv_train_job_json(const srv_train_job *j, int what);
/* Any thread, without t->mu: writes <dir>/job.json from a snapshot taken
 * now; a newer snapshot already written wins.  0 or -1 (printed). */
int srv_train_save_record(srv_trainer *t, srv_train_job *j);
/* srv_trainer_create: reads every <data-dir>/train/<id>/job.json into
 * t->jobs (sorted by id) and queues the unfinished ones, interrupted
 * ones first. */
void srv_train_load_records(srv_trainer *t);

#endif
