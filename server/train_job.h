/*
 * train_job.h — internal to the training files (train.c: queue, workers,
 * routes; train_record.c: a job as JSON, its record on disk and the
 * record parser; train_store.c: the start-up scan, retention and removal):
 * the job and trainer structures and what they share.
 *
 * Locking: t->mu guards the job list, the queue and every field of a job
 * marked "under t->mu"; fields fixed once the job is listed are read
 * without it.  See train.c for the threads.
 *
 * Lifetime: a job is reference-counted under t->mu.  The list holds one
 * reference; whoever uses a job outside t->mu (a worker running it, the
 * HTTP thread recording or cancelling it) takes one with srv_train_hold
 * before unlocking and drops it with srv_train_release.  Removing a job
 * (retention, DELETE of a finished job) takes it off the list at once and
 * marks it removed (no more record writes); the last release deletes its
 * directory and frees it, so no thread ever writes into a directory that
 * is being deleted or touches a freed job.
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
#define SRV_TRAIN_MAX_RECORD ((size_t)4 << 20) /* a job.json is a few KiB */

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
    char note[320];          /* what happened to it beyond its state (a checkpoint
                              * that could not be read or written); "" none */
    double created, started, finished; /* unix seconds; 0: not yet */
    unsigned long seq;       /* record snapshots taken */
    atomic_int cancel;       /* CANCEL_USER, CANCEL_SHUTDOWN */
    int refs;                /* under t->mu: the list's and every holder's */
    int removed;             /* under t->mu: off the list; no more record writes */
    int rec_dirty;           /* under t->mu: its last record write failed; an idle
                              * worker retries it every SAVE_EVERY seconds */
    /* the worker's own while it runs the job */
    double last_saved, step_t0;
    tfm_trainer *tr;       /* while running: its profile goes to the metrics */
    int run_start_step;
    char ckpt_err[256];
    srv_series *loss_series;
    /* record writes */
    pthread_mutex_t io_mu;
    unsigned long written;
    int write_failing;       /* under io_mu: the last record write failed (logged once) */
    int ckpt_failing;        /* the worker's: the last checkpoint failed (logged once) */
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
/* The whole file, at most max bytes (malloc'd, NUL-terminated; the caller
 * frees); NULL with a message.  Never blocks on a FIFO; follow: 0 refuses
 * a symbolic link (files of a job's dir), 1 follows it (corpora). */
unsigned char *srv_train_read_file(const char *path, size_t max, int follow, size_t *len,
                                   char *err, size_t errlen);
void srv_train_job_path(const srv_train_job *j, const char *file, char *out, size_t cap);
/* <data-dir>/models/<name>.safetensors: where a job's model goes. */
void srv_train_model_path(const srv_trainer *t, const char *name, char *out, size_t cap);
/* Appends to a growable array of jobs; 0 or -1 (out of memory). */
int srv_train_append(srv_train_job ***arr, int *n, int *cap, srv_train_job *j);
/* A job with one reference (the list's); t may be NULL (then dir is ""
 * until the caller sets it).  NULL: no memory. */
srv_train_job *srv_train_job_new(srv_trainer *t, const char *id);
void srv_train_job_free(srv_train_job *j);                        /* NULL is a no-op */
/* Under t->mu: the job as GET /train (SUMMARY), GET /train/{id} (FULL)
 * or its record (RECORD) show it.  A new reference, NULL: no memory. */
json_t *srv_train_job_json(const srv_train_job *j, int what);
/* Any thread, without t->mu: writes <dir>/job.json from a snapshot taken
 * now; a newer snapshot already written wins.  0 or -1 (printed). */
int srv_train_save_record(srv_trainer *t, srv_train_job *j);
/* Whether id is one of ours: "tr-" and 1 to 20 digits. */
int srv_train_id_ok(const char *id);

/* The job-record reader, pure (no trainer, no file, no global state: the
 * fuzz target calls it on raw bytes).  bytes[0..len) is a job.json (need
 * not be NUL-terminated), id the name of its directory, default_threads
 * the compute threads of a record that names none (or a bad number).
 * Returns 0 and a new job in *out (t NULL, dir "", one reference; free it
 * with srv_train_job_free), or -1 with the reason in err.  Any input is
 * safe: the bytes pass srv_json_guard before jansson parses them, numbers
 * out of range are clamped or refused, never cast blindly. */
int srv_train_record_parse(const char *bytes, size_t len, const char *id, int default_threads,
                           srv_train_job **out, char *err, size_t errlen);

/* ---- train_store.c -------------------------------------------------------- */

/* srv_trainer_create: scans <data-dir>/train (see train_store.c): every
 * <id>/job.json that reads back becomes a job in t->jobs (sorted by id);
 * what does not is quarantined; the unfinished are queued, interrupted
 * ones first; finished ones beyond --train-keep are removed. */
void srv_train_load_records(srv_trainer *t);
/* Under t->mu: one more reference to a listed job. */
void srv_train_hold(srv_train_job *j);
/* Not under t->mu: drops a reference; the last one of a removed job
 * deletes its directory and frees it. */
void srv_train_release(srv_trainer *t, srv_train_job *j);
/* Under t->mu: takes j off the list and the queue and marks it removed;
 * the caller then drops the list's reference with srv_train_release
 * (after unlocking). */
void srv_train_remove(srv_trainer *t, srv_train_job *j);
/* Not under t->mu: removes the oldest finished jobs (by finish time)
 * beyond --train-keep, records and directories (their models stay). */
void srv_train_prune(srv_trainer *t);

#endif
