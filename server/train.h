/*
 * train.h — background training jobs: POST /train, GET /train,
 * GET and DELETE /train/{id}.
 *
 * A job is one tfm_train_run (include/tfm/train.h) on a worker thread of
 * its own — never the HTTP, loop or engine thread — started in FIFO order
 * by --train-workers workers, each computing on --train-threads threads at
 * a lower CPU priority (nice 10) than inference, so /generate keeps its
 * latency while a job runs.
 *
 * Everything about a job lives under <data-dir>/train/<id>/: job.json (its
 * record: what GET /train/{id} shows plus the normalised request, written
 * atomically at every state change, at each checkpoint and every couple
 * of seconds of progress), state (the trainer's weights and AdamW moments,
 * tfm_trainer_save, every checkpoint_every steps; removed when the job
 * ends) and, for inline text, text.  At start-up the records are read back:
 * finished jobs are listed as they were, queued ones queue again, and
 * running ones resume from their last checkpoint — the batch of step s is
 * a pure function of (seed, s), so an interrupted job ends with the same
 * weights and loss as an uninterrupted one (same thread count).  A job that
 * succeeds saves <data-dir>/models/<name>.safetensors and registers it
 * (srv_models_add): /models lists it and /generate or /recall serve it at
 * once.
 *
 * Shutdown (SIGINT/SIGTERM) asks running jobs to stop at their next step
 * without marking them cancelled: their records stay "running" and the
 * next start resumes them.
 */
#ifndef SRV_TRAIN_H
#define SRV_TRAIN_H

struct srv_app;
struct srv_req;
typedef struct srv_trainer srv_trainer;

/* Main thread, before the loop runs: reads the job records under
 * <data-dir>/train (a record that cannot be read is reported and skipped)
 * and registers the metrics collector.  No worker runs yet; GET /train
 * answers from here on, POST /train once started.  NULL when out of
 * memory (printed). */
srv_trainer *srv_trainer_create(struct srv_app *app);
/* Loop thread, once the models are loaded (a job's model name is checked
 * against them): starts the workers; queued and interrupted jobs begin.
 * Returns 0 or -1 (printed). */
int srv_trainer_start(srv_trainer *t);
/* Any thread: take no more jobs; running ones stop at their next step,
 * their records left "running" for the next start to resume. */
void srv_trainer_shutdown(srv_trainer *t);
/* Main thread, after the HTTP daemon has stopped: shuts down, waits for
 * the workers until wait_seconds after the shutdown began (a step in
 * progress finishes first), and frees everything: 0.  -1 when a worker is
 * still in its step: nothing is freed, and the caller must exit without
 * freeing what workers use (the models, the stats).  NULL is a no-op. */
int srv_trainer_destroy(srv_trainer *t, double wait_seconds);

/* Route handlers (libmicrohttpd's thread). */
void srv_route_train(struct srv_req *r);     /* POST /train, GET /train */
void srv_route_train_job(struct srv_req *r); /* GET, DELETE /train/{id} */

#endif
