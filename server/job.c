/*
 * job.c — a job's lifetime and its end (engine.h): creation, references,
 * groups, and the two ways a job ends, srv_job_finish and srv_job_fail,
 * which write the output through the job's format (format.h) into its
 * output job (the group, for a child) under that job's mutex, and tell
 * the HTTP side.
 *
 * A group is done when its last child has ended; its first failure is its
 * reply, and srv_job_cancelled then stops the siblings.  A child's hold on
 * its group (taken at srv_engine_submit_group) is dropped once it ends, so
 * the group outlives every child the engine still runs.
 */
#include <stdlib.h>
#include <string.h>

#include "engine.h"

srv_job *srv_job_create(void)
{
    srv_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    atomic_init(&j->refs, 1);
    atomic_init(&j->cancelled, 0);
    pthread_mutex_init(&j->mu, NULL);
    j->max_tokens = 128;
    j->sampling.temperature = 1.0f;
    j->sampling.top_p = 1.0f;
    j->http_status = 200;
    j->logprobs = -1;
    return j;
}

int srv_job_make_group(srv_job *g, int n)
{
    g->children = calloc((size_t)n, sizeof *g->children);
    if (!g->children)
        return -1;
    for (int i = 0; i < n; i++) {
        srv_job *c = srv_job_create();
        if (!c)
            return -1; /* the children made so far go with the group */
        c->parent = g;
        c->index = i;
        g->children[g->n_children++] = c;
    }
    return 0;
}

void srv_job_ref(srv_job *j) { atomic_fetch_add(&j->refs, 1); }

void srv_job_unref(srv_job *j)
{
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1)
        return;
    srv_model_put(j->model);
    free(j->prompt);
    for (int i = 0; i < j->n_stop; i++)
        free(j->stop[i]);
    free(j->tokens);
    free(j->lps);
    free(j->prompt_ids);
    free(j->prompt_lps);
    free(j->bias);
    if (j->free_fmt_ctx)
        j->free_fmt_ctx(j->fmt_ctx);
    for (int i = 0; i < j->n_children; i++)
        srv_job_unref(j->children[i]);
    free(j->children);
    srv_buf_free(&j->text);
    srv_buf_free(&j->out);
    if (j->free_task)
        j->free_task(j->task);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

void srv_job_notify(srv_job *j)
{
    if (j->notify)
        j->notify(j, j->notify_ctx);
}

const srv_format *srv_job_format(const srv_job *j) { return j->fmt ? j->fmt : &srv_format_attnd; }

/* Whether the engine should stop a job: its client left or the server is
 * shutting down (for a child: its group's), or a sibling failed. */
int srv_job_cancelled(const srv_job *j)
{
    if (atomic_load(&j->cancelled))
        return 1;
    return j->parent && (atomic_load(&j->parent->cancelled) || j->parent->failed);
}

/* With o->mu held: one job of o ended; o is done when all have.  Returns
 * with the lock held. */
static void ended(srv_job *j, srv_job *o)
{
    j->done = 1;
    if (o == j)
        return;
    if (--o->pending > 0)
        return;
    if (!o->failed && o->finish != SRV_FINISH_CANCELLED && srv_job_format(o)->group_end)
        srv_job_format(o)->group_end(o, &o->out);
    o->done = 1;
}

/* After ended(), outside the lock: tell the HTTP side, and drop a child's
 * hold on its group. */
static void ended_notify(srv_job *j, srv_job *o)
{
    srv_job_notify(o);
    if (o != j)
        srv_job_unref(o);
}

/* Ends a job with an error reply (status, code, message, field).  In a
 * group the first error is the reply; the siblings are cancelled. */
void srv_job_fail(srv_job *j, int status, const char *code, const char *msg, const char *field)
{
    srv_job *o = srv_job_out(j);
    pthread_mutex_lock(&o->mu);
    j->finish = SRV_FINISH_ERROR;
    j->t_end = tfm_now();
    if (j != o)
        j->http_status = status;
    if (!o->failed) {
        o->failed = 1;
        if (!srv_job_began(j)) {
            o->out.len = 0;
            o->http_status = status;
        }
        o->finish = SRV_FINISH_ERROR;
        srv_job_format(j)->error(j, &o->out, status, code, msg, field);
    }
    ended(j, o);
    pthread_mutex_unlock(&o->mu);
    ended_notify(j, o);
}

/* The final output: the whole body, or the stream's last events. */
void srv_job_finish(srv_job *j, srv_finish why)
{
    srv_job *o = srv_job_out(j);
    pthread_mutex_lock(&o->mu);
    j->finish = why;
    j->t_end = tfm_now();
    if (!o->failed) {
        if (why == SRV_FINISH_CANCELLED)
            o->finish = why; /* no reply: the client left, or 503 at shutdown */
        else
            srv_job_format(j)->end(j, &o->out, why);
        if (o != j && o->finish != SRV_FINISH_CANCELLED)
            o->finish = why;
    }
    ended(j, o);
    pthread_mutex_unlock(&o->mu);
    ended_notify(j, o);
}


void srv_job_copy_prompt_lps(srv_job *f, const srv_job *l)
{
    if (f->prompt_lps && l->prompt_lps && f->logprobs == l->logprobs)
        memcpy(f->prompt_lps, l->prompt_lps,
               (size_t)f->prompt_tokens * srv_job_lp_width(f) * sizeof *f->prompt_lps);
}
