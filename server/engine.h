/*
 * engine.h — the inference engine: one scheduler thread that owns all
 * inference compute and runs continuous batching.
 *
 * A request becomes a job.  The HTTP side (the libuv loop thread) fills in
 * the job's parameters and submits it; the engine admits it into a free
 * slot of its model when one is free (else it waits in a bounded queue; a
 * full queue is refused at once), tokenises and prefills its
 * prompt in chunks (sgemm), and from then on advances it by one token per
 * step together with every other running sequence of the model (one batched
 * decode).  A sequence leaves the batch the moment it finishes or is
 * cancelled.
 *
 * The job is shared by the two threads and reference counted.  The engine
 * writes its output (the JSON body, or SSE events) into job->out under
 * job->mu and calls job->notify, which must be cheap and thread-safe (the
 * server posts the job to the loop's inbox); the loop reads the output
 * under the same mutex.  Cancelling is an atomic flag the engine polls
 * between steps.
 *
 * Admission is fair among clients: a freed slot goes to the waiting job
 * whose client has the fewest sequences running on that model, the oldest
 * among equals.  A job may carry a deadline: past it, between steps, a job
 * without a token yet is answered 504 "timeout" and one with tokens ends
 * with finish_reason "timeout" (engine.c says how).
 */
#ifndef SRV_ENGINE_H
#define SRV_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"
#include "models.h"
#include "text.h"
#include "tfm/profile.h"
#include "tfm/sampler.h"

#define SRV_MAX_STOP 4
#define SRV_MAX_BATCH 256 /* --max-batch at most */
#define SRV_MAX_STOP_BYTES 256

typedef enum srv_finish {
    SRV_FINISH_NONE = 0,
    SRV_FINISH_LENGTH,
    SRV_FINISH_EOS,
    SRV_FINISH_STOP,
    SRV_FINISH_CANCELLED,
    SRV_FINISH_TIMEOUT, /* the deadline passed after the first token */
    SRV_FINISH_ERROR,
} srv_finish;

/* job->cancelled: why the engine should stop early */
#define SRV_CANCEL_CLIENT 1   /* the client hung up: no reply */
#define SRV_CANCEL_SHUTDOWN 2 /* the grace period ended: reply 503 */

typedef struct srv_job srv_job;
typedef void (*srv_job_notify_fn)(srv_job *job, void *ctx);

struct srv_job {
    atomic_int refs;
    atomic_int cancelled;
    /* work that is not generation (POST /recall): run(job) on a libuv
     * worker fills out and http_status; the loop dispatches it once */
    void (*run)(srv_job *j);
    void (*free_task)(void *task);
    void *task;
    int dispatched;
    /* parameters, set before submit, read-only afterwards */
    const srv_model *model;
    char *prompt; /* owned */
    size_t prompt_len;
    int max_tokens;
    tfm_sampler_params sampling;
    char *stop[SRV_MAX_STOP]; /* owned */
    size_t stop_len[SRV_MAX_STOP];
    int n_stop;
    int stream;
    const srv_format *fmt; /* how the output looks; NULL: attnd's (format.h) */
    int logprobs;      /* -1: none; else the alternatives per token (0 ..
                        * TFM_MAX_TOP_LOGPROBS) kept in lps (and the chosen
                        * token's log-probability, always) */
    int keep_prompt_ids; /* copy the prompt's token ids to prompt_ids */
    int prompt_logprobs; /* compute the prompt's own log-probabilities into
                          * prompt_lps (with keep_prompt_ids) */
    tfm_logit_bias *bias; /* owned; sampling.logit_bias points here */
    void *fmt_ctx;     /* the format's own (owned: freed with free_fmt_ctx) */
    void (*free_fmt_ctx)(void *ctx);
    /* a group: one request of several sequences (OpenAI's n, or several
     * prompts).  The group is a job of its own that is never submitted:
     * the request waits on it, and its children's output goes into its
     * out under its mu (format.h).  It holds a reference to each child;
     * each submitted child holds one on the group until the engine is
     * done with it.  A child's share is an earlier child with the same
     * prompt and model, whose prefill it may copy instead of computing. */
    srv_job *parent;   /* the group, for a child; NULL otherwise */
    int index;         /* a child's place in the group */
    srv_job **children;
    int n_children;
    int pending;       /* group: children not yet ended (under mu) */
    int failed;        /* group: a child failed, its error is the reply
                        * (engine thread only) */
    uint64_t seq;      /* submission order (engine) */
    srv_job *share;
    int ignore_eos;    /* keep generating past EOS (benchmarks) */
    int attention;     /* tfm_attn_kernel for this prompt's prefill; AUTO:
                        * the server's --attention */
    uint64_t client;   /* who asked (srv_req.client: API key, else address),
                        * for fair admission among clients */
    int timeout_ms;    /* the request's, clamped to --request-timeout-seconds */
    double deadline;   /* tfm_now() past which the job times out; 0: none */
    srv_job_notify_fn notify;
    void *notify_ctx;
    /* the HTTP side, under mu: the connection waiting for this job (NULL
     * once the request is over), and whether it is suspended right now */
    void *http;
    int parked;
    int fd;        /* the client's socket, for the disconnect watch */

    /* results, under mu once submitted */
    pthread_mutex_t mu;
    int done;          /* the engine is finished with it */
    int started;       /* stream: the prompt passed validation, events follow */
    int http_status;   /* 200, or the error's status */
    srv_finish finish;
    srv_buf out;       /* body (non-stream) or SSE bytes (stream) */
    size_t out_pos;    /* stream: bytes of out already handed to the socket */

    /* engine-private progress */
    int *tokens; /* generated ids, max_tokens long */
    tfm_token_logprob *lps; /* logprobs >= 0: (max_tokens, 1 + logprobs) */
    int *prompt_ids;        /* keep_prompt_ids: prompt_tokens ids */
    tfm_token_logprob *prompt_lps; /* prompt_logprobs: (prompt_tokens, 1 +
                                    * max(logprobs, 0)), row t the model's
                                    * log-probabilities of prompt token t
                                    * after the tokens before it (raw logits:
                                    * tfm_sampler_logprobs); row 0 has none
                                    * (logprob NaN) */
    int n_tokens;
    srv_buf text;     /* generated bytes (text.len may drop back to a stop string) */
    size_t released;  /* stream: bytes of text already sent in events */
    int prompt_tokens;
    double t_submit, t_admit, t_prefill_done, t_first, t_last, t_end;
};

/* The job whose output a job's hooks write: its group, else itself. */
static inline srv_job *srv_job_out(srv_job *j) { return j->parent ? j->parent : j; }
/* Whether the output is a stream whose events have begun (under the output
 * job's mu): an error then is an event, not a status. */
static inline int srv_job_began(srv_job *j)
{
    return srv_job_out(j)->stream && srv_job_out(j)->started;
}

/* Entries per token in lps and prompt_lps: the chosen token's, then the
 * j->logprobs alternatives. */
static inline size_t srv_job_lp_width(const srv_job *j)
{
    return 1 + (size_t)(j->logprobs > 0 ? j->logprobs : 0);
}

/* A new job with refs 1 and defaults; NULL when out of memory. */
srv_job *srv_job_create(void);
void srv_job_ref(srv_job *j);
void srv_job_unref(srv_job *j); /* frees at zero */

/* For the engine (job.c): a job's format (attnd's when it names none);
 * whether it should stop (its client left, the server is stopping, or
 * for a child: its group's did, or a sibling failed); its end with the
 * given finish reason, or with an error reply (status, code, message,
 * field); and the notice to the HTTP side.  Engine thread only. */
const srv_format *srv_job_format(const srv_job *j);
int srv_job_cancelled(const srv_job *j);
void srv_job_finish(srv_job *j, srv_finish why);
void srv_job_fail(srv_job *j, int status, const char *code, const char *msg, const char *field);
void srv_job_notify(srv_job *j);
/* A child sharing its leader's prefill takes its prompt log-probabilities
 * too (the same prompt and model, the same request's logprobs). */
void srv_job_copy_prompt_lps(srv_job *f, const srv_job *l);

/* What the engine reports as it runs, for the metrics (called on the
 * engine thread; may be NULL). */
typedef struct srv_engine_hooks {
    void *ctx;
    void (*queue_wait)(void *ctx, double seconds);
    void (*first_token)(void *ctx, double seconds);   /* submit -> first token */
    void (*inter_token)(void *ctx, double seconds);   /* time per output token */
    void (*batch)(void *ctx, int size);               /* one decode step's batch */
    void (*tokens)(void *ctx, int prompt, int completion);
} srv_engine_hooks;

typedef struct srv_engine srv_engine;

/* One engine for every text model: those of reg now get their workspace,
 * slots and KV caches at once; a model registered later (srv_models_add)
 * gets them on the engine thread when its first job reaches the head of
 * the queue.  A job holds a reference to its model (srv_job.model, given
 * back when the job is freed); so does each context, until the model is
 * unloaded and its last sequence has ended.  max_batch sequences per
 * model, queue_depth waiting jobs, n_threads compute threads per model.
 * NULL on failure (message printed). */
srv_engine *srv_engine_create(const srv_models *reg, int max_batch, int queue_depth,
                              int n_threads, tfm_attn_kernel attention,
                              const srv_engine_hooks *hooks);
/* Stops the thread; queued and running jobs finish as cancelled. */
void srv_engine_destroy(srv_engine *e);

/* Queues a job (takes a reference).  Returns 0, or -1 when the queue is
 * full (the job is untouched: answer 503).  Thread-safe. */
int srv_engine_submit(srv_engine *e, srv_job *j);
/* Queues a group's children, all or none (-1: the queue has no room for
 * all of them).  The group's pending count and the children's references
 * on it are set here. */
int srv_engine_submit_group(srv_engine *e, srv_job *group);
/* Makes group a group of n new children (srv_job_create each), linked
 * both ways; 0, or -1 when out of memory. */
int srv_job_make_group(srv_job *group, int n);

/* Any thread: a model was unloaded (wakes the engine to drop its
 * context once nothing uses it). */
void srv_engine_models_changed(srv_engine *e);

/* Jobs waiting for a slot, and sequences running. */
int srv_engine_queued(srv_engine *e);
int srv_engine_running(srv_engine *e);
/* The core's op accounting summed over every model's workspace since
 * start (copied under the engine's lock). */
void srv_engine_profile(srv_engine *e, tfm_profile *out);

#endif
