/*
 * engine.c — the scheduler thread: admission, chunked prefill (shared by
 * a group's choices of one prompt), batched decode, sampling and stop
 * conditions (see engine.h; a job's end and output: job.c, format.h).
 *
 * One iteration of the loop:
 *   1. drop queued jobs that were cancelled or whose deadline passed, then
 *      admit queued jobs into free slots of their model, fairly among
 *      clients (below);
 *   2. tokenise newly admitted prompts and check they fit the context;
 *   3. drop cancelled sequences, and end those past their deadline;
 *   4. prefill up to PREFILL_CHUNK prompt rows, oldest prompt first: a long
 *      prompt delays running sequences by one chunk at a time, not by its
 *      whole length (chunked prefill), and several short prompts go in one
 *      iteration;
 *   5. for each model, one batched decode step over its running sequences.
 * All compute happens on this thread; the per-token path allocates nothing
 * but the job's output buffers when they must grow (sized at admission to
 * make that rare).
 *
 * Fair admission: when a model has a free slot and several jobs wait for
 * it, the one admitted is the job whose client (srv_job.client: a hash of
 * the API key, else of the peer's address) has the fewest sequences
 * running on that model, the oldest among equals.  One client that floods
 * the queue therefore cannot keep another's request behind all of its own:
 * the newcomer takes the next slot that frees.  With every job of the same
 * client (or client 0) this is plain FIFO.  A job never waits behind one
 * for another model.  The queue stays bounded (--queue-depth); the scan is
 * O(queue x batch) per admission, a few hundred comparisons, once per step.
 *
 * Deadlines (srv_job.deadline, from timeout_ms and --request-timeout-
 * seconds): read against one tfm_now() per iteration, never per token.  A
 * job still queued, or admitted but without a token yet, is failed with
 * 504 "timeout" (a stream whose events have begun gets its final event
 * instead); one that has produced tokens ends with finish_reason
 * "timeout", its text so far returned as usual.  Either way its slot is
 * free for the next iteration's admission.
 *
 * Models can be registered and unloaded while the engine runs (a finished
 * training job, a rescan, DELETE /models): per-model contexts
 * (engine_ctx.c) live in an array indexed by srv_model.index; when the
 * queue's head is a job whose model has none yet, the next iteration makes
 * it, outside the queue's lock, before admission; once a model is
 * unloaded and no sequence runs or waits on it, its context is dropped,
 * and with it the engine's reference to the model.
 */
#define _GNU_SOURCE /* memmem */
#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "tfm/model.h"
#include "tfm/tokenizer.h"

/* ---- slots ---------------------------------------------------------------- */

/* Tokenises and checks an admitted job; 0 ok, -1 when it was failed. */
static int start_job(srv_engine *e, mctx *mc, slot *s)
{
    srv_job *j = s->job;
    const tfm_config *c = &mc->m->model->cfg;
    j->t_admit = tfm_now();
    if (e->hooks.queue_wait)
        e->hooks.queue_wait(e->hooks.ctx, j->t_admit - j->t_submit);
    int n = 0;
    tfm_status st = tfm_tokenizer_encode(mc->m->tok, j->prompt, j->prompt_len, 1, 0, s->ids,
                                         c->seq_len, &n);
    if (st != TFM_OK && st != TFM_E_RANGE) {
        srv_job_fail(j, 500, "internal", tfm_strerror(st), NULL);
        return -1;
    }
    if (n >= c->seq_len) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "the prompt is %d tokens; model %s has a context of %d, leaving no room to "
                 "generate",
                 n, mc->m->name, c->seq_len);
        srv_job_fail(j, 422, "invalid_argument", msg, "prompt");
        return -1;
    }
    if (j->logprobs >= 0)
        j->sampling.top_logprobs = j->logprobs;
    if (tfm_sampler_reset(s->smp, &j->sampling) != TFM_OK) {
        srv_job_fail(j, 422, "invalid_argument", "invalid sampling parameters", "temperature");
        return -1;
    }
    if (j->sampling.repetition_penalty != 0.0f && j->sampling.repetition_penalty != 1.0f)
        tfm_sampler_set_prompt(s->smp, s->ids, n);
    srv_job *o = srv_job_out(j);
    size_t per_token = j->logprobs >= 0 ? 96 + 48 * (size_t)j->logprobs : 48;
    j->tokens = malloc((size_t)j->max_tokens * sizeof(int));
    if (j->logprobs >= 0)
        j->lps = malloc((size_t)j->max_tokens * srv_job_lp_width(j) * sizeof *j->lps);
    if (j->keep_prompt_ids && (j->prompt_ids = malloc((size_t)(n ? n : 1) * sizeof(int))))
        memcpy(j->prompt_ids, s->ids, (size_t)n * sizeof(int));
    size_t w = srv_job_lp_width(j);
    if (j->prompt_logprobs &&
        (j->prompt_lps = malloc((size_t)(n ? n : 1) * w * sizeof *j->prompt_lps)))
        for (size_t i = 0; i < (size_t)n * w; i++) /* the first token has none */
            j->prompt_lps[i] = (tfm_token_logprob){-1, NAN};
    pthread_mutex_lock(&o->mu);
    int oom = srv_buf_reserve(&o->out, o->stream ? (size_t)j->max_tokens * per_token + 512 : 256);
    pthread_mutex_unlock(&o->mu);
    if (!j->tokens || (j->logprobs >= 0 && !j->lps) || (j->keep_prompt_ids && !j->prompt_ids) ||
        (j->prompt_logprobs && !j->prompt_lps) ||
        srv_buf_reserve(&j->text, (size_t)j->max_tokens * 8 + 64) || oom) {
        srv_job_fail(j, 500, "internal", "out of memory", NULL);
        return -1;
    }
    j->prompt_tokens = n;
    s->n_ids = n;
    s->prefilled = 0;
    tfm_state_reset(s->st);
    s->phase = SLOT_PREFILL;
    if (o->stream) {
        pthread_mutex_lock(&o->mu);
        int first = !o->started;
        o->started = 1;
        if (first && srv_job_format(j)->begin)
            srv_job_format(j)->begin(j, &o->out);
        pthread_mutex_unlock(&o->mu);
        if (first)
            srv_job_notify(o);
    }
    return 0;
}

/* Longest stop-string-safe, character-complete prefix of the text that a
 * stream may send now. */
static size_t releasable(const srv_job *j)
{
    size_t hold = 0;
    for (int i = 0; i < j->n_stop; i++)
        if (j->stop_len[i] - 1 > hold)
            hold = j->stop_len[i] - 1;
    size_t n = j->text.len > hold ? j->text.len - hold : 0;
    if (n < j->released)
        return j->released;
    return srv_utf8_complete(j->text.p, n);
}

/* A sampled token: stop conditions, text, stream event.  Returns 1 when
 * the sequence finished (and its slot was released). */
static int emit(srv_engine *e, mctx *mc, slot *s, int tok)
{
    srv_job *j = s->job;
    double now = tfm_now();
    if (j->n_tokens == 0) {
        j->t_first = now;
        if (e->hooks.first_token)
            e->hooks.first_token(e->hooks.ctx, now - j->t_submit);
    } else if (e->hooks.inter_token) {
        e->hooks.inter_token(e->hooks.ctx, now - j->t_last);
    }
    j->t_last = now;
    if ((tok == mc->eos || tok == mc->stop2) && !j->ignore_eos) {
        srv_job_finish(j, SRV_FINISH_EOS);
        srv_engine_release_slot(e, s);
        return 1;
    }
    int prev = j->n_tokens ? j->tokens[j->n_tokens - 1] : s->ids[s->n_ids - 1];
    const tfm_token_logprob *lp =
        j->logprobs >= 0 ? j->lps + (size_t)j->n_tokens * srv_job_lp_width(j) : NULL;
    j->tokens[j->n_tokens++] = tok;
    if (e->hooks.tokens)
        e->hooks.tokens(e->hooks.ctx, 0, 1);
    const char *piece = "";
    size_t plen = 0;
    tfm_tokenizer_decode(mc->m->tok, prev, tok, &piece, &plen);
    size_t old = j->text.len;
    srv_buf_append(&j->text, piece, plen); /* engine-private: no lock */
    /* a stop string can only end in the new piece: search from just
     * before it, and cut the text at the earliest hit */
    srv_finish fin = SRV_FINISH_NONE;
    size_t cut = j->text.len;
    for (int i = 0; i < j->n_stop; i++) {
        size_t from = old >= j->stop_len[i] ? old - j->stop_len[i] + 1 : 0;
        if (j->text.len < from + j->stop_len[i])
            continue;
        char *hit = memmem(j->text.p + from, j->text.len - from, j->stop[i], j->stop_len[i]);
        if (hit && (size_t)(hit - j->text.p) < cut) {
            cut = (size_t)(hit - j->text.p);
            fin = SRV_FINISH_STOP;
        }
    }
    j->text.len = cut;
    /* the context holds prompt and generated tokens together: stop when
     * they fill it (the token just sampled would need one more position) */
    if (fin == SRV_FINISH_NONE &&
        (j->n_tokens >= j->max_tokens || j->prompt_tokens + j->n_tokens >= s->st->max_seq))
        fin = SRV_FINISH_LENGTH;
    srv_job *o = srv_job_out(j);
    if (o->stream) {
        size_t upto = fin != SRV_FINISH_NONE ? j->text.len : releasable(j);
        if (upto < j->released)
            upto = j->released;
        pthread_mutex_lock(&o->mu);
        if (!o->failed)
            srv_job_format(j)->token(j, &o->out, tok, j->text.p + j->released, upto - j->released, lp);
        j->released = upto;
        pthread_mutex_unlock(&o->mu);
        if (fin == SRV_FINISH_NONE)
            srv_job_notify(o);
    }
    if (fin != SRV_FINISH_NONE) {
        srv_job_finish(j, fin);
        srv_engine_release_slot(e, s);
        return 1;
    }
    s->last = tok;
    return 0;
}

/* Samples the slot's next token from logits, with its log-probabilities
 * into the job's lps when it asked for them. */
static int sample_tok(slot *s, float *logits)
{
    srv_job *j = s->job;
    if (j->logprobs < 0)
        return tfm_sampler_sample(s->smp, logits);
    return tfm_sampler_sample_lp(s->smp, logits,
                                 j->lps + (size_t)j->n_tokens * srv_job_lp_width(j));
}

/* The slot of mc running job j (a group's child), or NULL. */
static slot *slot_of(srv_engine *e, mctx *mc, const srv_job *j)
{
    for (int i = 0; j && i < e->max_batch; i++)
        if (mc->slots[i].phase != SLOT_FREE && mc->slots[i].job == j)
            return &mc->slots[i];
    return NULL;
}

/* A group's children with one prompt share its prefill (srv_job.share):
 * when the first of them has prefilled the whole prompt, those still
 * waiting take a copy of its KV cache and its last logits instead of
 * computing them, and sample their first token now.  Called before the
 * leader samples from mc->logits row 0; the copies go to rows 1.. (there
 * are max_batch rows and the leader holds one slot).  Returns how many
 * followers were started; their slots are in f[]. */
static int share_prefill(srv_engine *e, mctx *mc, slot *leader, slot **f)
{
    int n = 0, vocab = mc->m->model->cfg.vocab_size;
    for (int i = 0; i < e->max_batch; i++) {
        slot *s = &mc->slots[i];
        if (s == leader || s->phase != SLOT_PREFILL || s->prefilled != 0 ||
            s->job->share != leader->job || s->n_ids != leader->n_ids)
            continue;
        if (tfm_state_copy(s->st, leader->st, leader->n_ids) != TFM_OK)
            continue; /* it prefills its own */
        srv_job_copy_prompt_lps(s->job, leader->job);
        s->prefilled = s->n_ids;
        s->job->t_prefill_done = tfm_now();
        s->phase = SLOT_DECODE;
        memcpy(mc->logits + (size_t)(n + 1) * vocab, mc->logits, (size_t)vocab * sizeof(float));
        f[n++] = s;
    }
    return n;
}

/* A child admitted after its leader finished prefilling: copy all but the
 * prompt's last position from the leader's cache (its logits are gone),
 * so that only that one row is computed. */
static void share_late(srv_engine *e, mctx *mc, slot *s)
{
    slot *l = slot_of(e, mc, s->job->share);
    if (!l || l->phase != SLOT_DECODE || l->n_ids != s->n_ids || s->n_ids < 2)
        return;
    /* a model with linear layers cannot cut a state (TFM_E_UNSUPPORTED): the
     * child then prefills its whole prompt */
    if (tfm_state_copy(s->st, l->st, s->n_ids - 1) != TFM_OK)
        return;
    srv_job_copy_prompt_lps(s->job, l->job);
    s->prefilled = s->n_ids - 1;
}

/* A chunk of a prompt whose own log-probabilities were asked for: every
 * row's logits (mc->row_logits, made on first use), each row giving the
 * next prompt token's entries in the job's prompt_lps, and the last row's
 * logits copied to mc->logits for the first token's sampling. */
static tfm_status prefill_rows(mctx *mc, slot *s, int chunk)
{
    srv_job *j = s->job;
    int vocab = mc->m->model->cfg.vocab_size;
    if (!mc->row_logits &&
        !(mc->row_logits = malloc((size_t)PREFILL_CHUNK * vocab * sizeof(float))))
        return TFM_E_NOMEM;
    tfm_status st = tfm_prefill_rows(mc->ws, s->st, s->ids + s->prefilled, chunk, mc->row_logits);
    if (st != TFM_OK)
        return st;
    size_t w = srv_job_lp_width(j);
    for (int r = 0; r < chunk; r++) {
        int next = s->prefilled + r + 1; /* the prompt token row r predicts */
        if (next < s->n_ids)
            tfm_sampler_logprobs(s->smp, mc->row_logits + (size_t)r * vocab, s->ids[next],
                                 j->prompt_lps + (size_t)next * w);
        else
            memcpy(mc->logits, mc->row_logits + (size_t)r * vocab, (size_t)vocab * sizeof(float));
    }
    return TFM_OK;
}

/* Prefills one chunk (at most `budget` rows) of the oldest prompt still
 * prefilling (in submission order, so a group's first child goes before
 * those that share its prompt); returns the rows done, 0 when none is
 * waiting. */
static int prefill_step(srv_engine *e, int budget)
{
    mctx *best_mc = NULL;
    slot *best = NULL;
    for (int m = 0; m < e->n_live; m++)
        for (int i = 0; i < e->max_batch; i++) {
            slot *s = &e->live[m]->slots[i];
            if (s->phase == SLOT_PREFILL && (!best || s->job->seq < best->job->seq))
                best = s, best_mc = e->live[m];
        }
    if (!best)
        return 0;
    slot *s = best;
    mctx *mc = best_mc;
    srv_job *j = s->job;
    if (s->prefilled == 0 && j->share)
        share_late(e, mc, s);
    int chunk = s->n_ids - s->prefilled;
    if (chunk > budget)
        chunk = budget;
    int last = s->prefilled + chunk == s->n_ids;
    if (j->attention != TFM_ATTN_AUTO) /* the request's own kernel */
        tfm_workspace_set_attention(mc->ws, (tfm_attn_kernel)j->attention);
    tfm_status st = j->prompt_lps ? prefill_rows(mc, s, chunk)
                                  : tfm_prefill(mc->ws, s->st, s->ids + s->prefilled, chunk,
                                                last ? mc->logits : NULL);
    tfm_workspace_set_attention(mc->ws, mc->attention);
    if (st != TFM_OK) {
        srv_job_fail(j, 500, "internal", tfm_strerror(st), NULL);
        srv_engine_release_slot(e, s);
        return chunk;
    }
    s->prefilled += chunk;
    if (!last)
        return chunk;
    j->t_prefill_done = tfm_now();
    tfm_profile_add_prompt(tfm_workspace_profile(mc->ws), s->n_ids, s->st->prefill_attn_seconds);
    if (e->hooks.tokens)
        e->hooks.tokens(e->hooks.ctx, j->prompt_tokens, 0);
    s->phase = SLOT_DECODE;
    slot *followers[SRV_MAX_BATCH];
    int n_f = share_prefill(e, mc, s, followers);
    int vocab = mc->m->model->cfg.vocab_size;
    emit(e, mc, s, sample_tok(s, mc->logits));
    for (int k = 0; k < n_f; k++)
        emit(e, mc, followers[k], sample_tok(followers[k], mc->logits + (size_t)(k + 1) * vocab));
    return chunk;
}

static void decode_step(srv_engine *e, mctx *mc)
{
    int B = 0;
    for (int i = 0; i < e->max_batch; i++) {
        slot *s = &mc->slots[i];
        if (s->phase != SLOT_DECODE)
            continue;
        mc->bst[B] = s->st;
        mc->btok[B] = s->last;
        mc->bslot[B] = i;
        B++;
    }
    if (B == 0)
        return;
    if (e->hooks.batch)
        e->hooks.batch(e->hooks.ctx, B);
    tfm_status st = tfm_decode(mc->ws, mc->bst, mc->btok, B, mc->logits);
    int vocab = mc->m->model->cfg.vocab_size;
    for (int b = 0; b < B; b++) {
        slot *s = &mc->slots[mc->bslot[b]];
        if (st != TFM_OK) {
            srv_job_fail(s->job, 500, "internal", tfm_strerror(st), NULL);
            srv_engine_release_slot(e, s);
            continue;
        }
        emit(e, mc, s, sample_tok(s, mc->logits + (size_t)b * vocab));
    }
}

/* ---- the queue: deadlines and fair admission -------------------------------- */

static int past(const srv_job *j, double now) { return j->deadline > 0 && now > j->deadline; }

/* A job past its deadline: tokens so far with finish_reason "timeout",
 * else a 504 (a stream that has begun cannot change its status: its final
 * event says "timeout"). */
static void time_out(srv_job *j, double now)
{
    srv_job *o = srv_job_out(j);
    pthread_mutex_lock(&o->mu);
    int begun = j->n_tokens > 0 || srv_job_began(j);
    pthread_mutex_unlock(&o->mu);
    if (begun) {
        srv_job_finish(j, SRV_FINISH_TIMEOUT);
        return;
    }
    char msg[256];
    snprintf(msg, sizeof msg,
             "no token within the request's deadline (timeout_ms %d, capped by "
             "--request-timeout-seconds): %s for %.0f ms",
             j->timeout_ms, j->t_admit > 0 ? "admitted, prefilling" : "queued",
             (now - j->t_submit) * 1e3);
    srv_job_fail(j, 504, "timeout", msg, NULL);
}

/* With e->mu held: removes the i-th queued job (order kept). */
static void queue_remove(srv_engine *e, int i)
{
    memmove(e->q + i, e->q + i + 1, (size_t)(e->q_len - i - 1) * sizeof *e->q);
    e->q_len--;
}

/* With e->mu held: admits one queued job into a free slot of its model,
 * the one whose client has the fewest sequences running on that model,
 * the oldest among equals.  Returns 0 when no queued job can be admitted
 * (no free slot for any, or their contexts are not made yet). */
static int admit_one(srv_engine *e)
{
    int best = -1, best_load = 0;
    slot *best_slot = NULL;
    for (int i = 0; i < e->q_len; i++) {
        srv_job *j = e->q[i];
        mctx *mc = e->mc[j->model->index];
        if (!mc)
            continue; /* made at the next iteration's start */
        slot *free_slot = NULL;
        int load = 0;
        for (int k = 0; k < e->max_batch; k++) {
            slot *s = &mc->slots[k];
            if (s->phase == SLOT_FREE) {
                if (!free_slot)
                    free_slot = s;
            } else if (s->job->client == j->client) {
                load++;
            }
        }
        if (free_slot && (best < 0 || load < best_load)) {
            best = i, best_load = load, best_slot = free_slot;
            if (load == 0)
                break; /* no one can do better; the oldest wins */
        }
    }
    if (best < 0)
        return 0;
    best_slot->job = e->q[best];
    best_slot->phase = SLOT_ADMITTED;
    atomic_fetch_add(&e->running, 1);
    queue_remove(e, best);
    return 1;
}

static void *engine_main(void *arg)
{
    srv_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->stopping && e->q_len == 0 && atomic_load(&e->running) == 0 &&
               srv_models_removals(e->reg) == e->removals_seen)
            pthread_cond_wait(&e->cv, &e->mu);
        if (!e->stopping) {
            srv_engine_ctx_collect(e);
            srv_engine_ctx_make_queued(e);
        }
        if (e->stopping) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        /* 1. drop what can no longer be admitted, then admit fairly */
        double now = tfm_now();
        srv_job *dropped[16];
        int n_dropped = 0;
        for (int i = 0; i < e->q_len && n_dropped < 16;) {
            srv_job *j = e->q[i];
            if (srv_job_cancelled(j) || past(j, now) || srv_engine_ctx_failed(e, j)) {
                dropped[n_dropped++] = j;
                queue_remove(e, i);
            } else {
                i++;
            }
        }
        while (admit_one(e))
            ;
        pthread_mutex_unlock(&e->mu);
        for (int i = 0; i < n_dropped; i++) {
            srv_job *j = dropped[i];
            if (srv_job_cancelled(j))
                srv_job_finish(j, SRV_FINISH_CANCELLED);
            else if (past(j, now))
                time_out(j, now);
            else if (strcmp(j->model->kind, "text"))
                srv_job_fail(j, 422, "invalid_argument", "the model is not a text model", "model");
            else
                srv_job_fail(j, 500, "internal", "out of memory for the model's batch slots", NULL);
            srv_job_unref(j);
        }
        /* 2, 3: start new jobs, drop cancelled ones, end those past their
         * deadline */
        for (int m = 0; m < e->n_live; m++)
            for (int i = 0; i < e->max_batch; i++) {
                slot *s = &e->live[m]->slots[i];
                if (s->phase == SLOT_ADMITTED && start_job(e, e->live[m], s) != 0) {
                    srv_engine_release_slot(e, s);
                } else if (s->phase != SLOT_FREE && srv_job_cancelled(s->job)) {
                    srv_job_finish(s->job, SRV_FINISH_CANCELLED);
                    srv_engine_release_slot(e, s);
                } else if (s->phase != SLOT_FREE && past(s->job, now)) {
                    time_out(s->job, now);
                    srv_engine_release_slot(e, s);
                }
            }
        /* 4, 5: up to PREFILL_CHUNK prompt rows — one long prompt's chunk,
         * or several short prompts, so a burst of small requests is not
         * served one per decode step — then one decode step per model */
        for (int budget = PREFILL_CHUNK, done; budget > 0; budget -= done)
            if ((done = prefill_step(e, budget)) == 0)
                break;
        for (int m = 0; m < e->n_live; m++)
            decode_step(e, e->live[m]);
        /* publish the op accounting for /metrics */
        pthread_mutex_lock(&e->mu);
        tfm_profile_reset(&e->prof);
        tfm_profile_add(&e->prof, &e->prof_dropped);
        for (int m = 0; m < e->n_live; m++)
            tfm_profile_add(&e->prof, tfm_workspace_profile(e->live[m]->ws));
        pthread_mutex_unlock(&e->mu);
    }
    return NULL;
}

/* ---- lifetime ------------------------------------------------------------- */

srv_engine *srv_engine_create(const srv_models *reg, int max_batch, int queue_depth,
                              int n_threads, tfm_attn_kernel attention,
                              const srv_engine_hooks *hooks)
{
    srv_engine *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    atomic_init(&e->running, 0);
    e->max_batch = max_batch;
    e->n_threads = n_threads;
    e->attention = attention;
    e->q_cap = queue_depth > 0 ? queue_depth : 1;
    e->q = calloc((size_t)e->q_cap, sizeof *e->q);
    e->prof.enabled = 1;
    if (hooks)
        e->hooks = *hooks;
    if (!e->q)
        goto fail;
    /* the models there are now get their contexts at once, so that a
     * first request does not pay for them; later ones on first use */
    e->reg = reg;
    e->removals_seen = srv_models_removals(reg);
    const srv_model *ms[SRV_MODELS_MAX];
    int n = srv_models_get_all(reg, ms, SRV_MODELS_MAX), ok = 1;
    for (int i = 0; i < n && ok; i++)
        ok = strcmp(ms[i]->kind, "text") || srv_engine_ctx_create(e, ms[i]);
    srv_models_put_all(ms, n);
    if (!ok)
        goto fail;
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0)
        goto fail;
    e->thread_started = 1;
    return e;
fail:
    fprintf(stderr, "attnd: engine: out of memory\n");
    srv_engine_destroy(e);
    return NULL;
}

void srv_engine_destroy(srv_engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->stopping = 1;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (e->thread_started)
        pthread_join(e->thread, NULL);
    for (int i = 0; i < e->q_len; i++) {
        srv_job_finish(e->q[i], SRV_FINISH_CANCELLED);
        srv_job_unref(e->q[i]);
    }
    e->q_len = 0;
    srv_engine_ctx_destroy_all(e);
    free(e->q);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

int srv_engine_submit(srv_engine *e, srv_job *j)
{
    pthread_mutex_lock(&e->mu);
    if (e->stopping || e->q_len >= e->q_cap) {
        pthread_mutex_unlock(&e->mu);
        return -1;
    }
    srv_job_ref(j);
    j->t_submit = tfm_now();
    j->seq = ++e->seq;
    e->q[e->q_len++] = j;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

int srv_engine_submit_group(srv_engine *e, srv_job *g)
{
    pthread_mutex_lock(&e->mu);
    if (e->stopping || g->n_children < 1 || e->q_len + g->n_children > e->q_cap) {
        pthread_mutex_unlock(&e->mu);
        return -1;
    }
    double now = tfm_now();
    pthread_mutex_lock(&g->mu);
    g->pending = g->n_children;
    pthread_mutex_unlock(&g->mu);
    g->t_submit = now;
    for (int i = 0; i < g->n_children; i++) {
        srv_job *c = g->children[i];
        srv_job_ref(c); /* the engine's */
        srv_job_ref(g); /* the child's hold on its group, until it ends */
        c->t_submit = now;
        c->seq = ++e->seq;
        e->q[e->q_len++] = c;
    }
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

int srv_engine_queued(srv_engine *e)
{
    pthread_mutex_lock(&e->mu);
    int n = e->q_len;
    pthread_mutex_unlock(&e->mu);
    return n;
}

int srv_engine_running(srv_engine *e) { return atomic_load(&e->running); }

void srv_engine_models_changed(srv_engine *e)
{
    pthread_mutex_lock(&e->mu);
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void srv_engine_profile(srv_engine *e, tfm_profile *out)
{
    pthread_mutex_lock(&e->mu);
    *out = e->prof;
    pthread_mutex_unlock(&e->mu);
}
