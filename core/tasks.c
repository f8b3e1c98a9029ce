/*
 * tasks.c — what the trainer learns: MQAR associative recall and byte-level
 * text (data, evaluation, a trained recall model's answers), and the one
 * training loop that `attn train` and attnd's jobs share.
 *
 * The data generators draw from splitmix64 seeded by (seed, stream, index)
 * so a sequence depends on nothing else: batches replay exactly after a
 * resume, and tests/bench/train_torch.py rebuilds the same sequences bit
 * for bit (it carries the same recipe).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tfm/sampler.h"
#include "tfm/tokenizer.h"
#include "tfm/train.h"

/* ---- random numbers ------------------------------------------------------- */

typedef struct rng {
    uint64_t s;
} rng;

static rng rng_for(uint64_t seed, uint64_t stream, uint64_t index)
{
    rng r = {seed * 0x9E3779B97F4A7C15ull ^ stream * 0xC2B2AE3D27D4EB4Full ^
             index * 0x165667B19E3779F9ull};
    return r;
}

static uint64_t next(rng *r) { return tfm__splitmix64(&r->s); }

/* uniform in [0, n) for n < 2^32 */
static uint32_t below(rng *r, uint32_t n)
{
    return (uint32_t)(((next(r) >> 32) * (uint64_t)n) >> 32);
}

static double uniform(rng *r)
{
    return (double)(next(r) >> 40) * (1.0 / 16777216.0);
}

static tfm_status bad(char *err, size_t errlen, const char *fmt, const char *field)
{
    if (err && errlen)
        snprintf(err, errlen, fmt, field);
    return TFM_E_INVALID;
}

/* ---- MQAR ------------------------------------------------------------------ */

#define MQAR_MAX_SYMBOLS 65536

tfm_status tfm_mqar_validate(const tfm_mqar *p, char *err, size_t errlen)
{
    if (p->n_keys < 1 || p->n_keys > MQAR_MAX_SYMBOLS)
        return bad(err, errlen, "%s must be between 1 and 65536", "recall.n_keys");
    if (p->n_values < 1 || p->n_values > MQAR_MAX_SYMBOLS)
        return bad(err, errlen, "%s must be between 1 and 65536", "recall.n_values");
    if (p->n_pairs < 1 || p->n_pairs > p->n_keys)
        return bad(err, errlen, "%s must be between 1 and recall.n_keys", "recall.n_pairs");
    if (!(p->absent_fraction >= 0.0f && p->absent_fraction <= 1.0f))
        return bad(err, errlen, "%s must be in [0, 1]", "recall.absent_fraction");
    if (p->absent_fraction > 0.0f && p->n_pairs == p->n_keys)
        return bad(err, errlen, "%s > 0 needs recall.n_keys > recall.n_pairs (absent keys)",
                   "recall.absent_fraction");
    if (p->min_pairs < 0 || p->min_pairs > p->n_pairs)
        return bad(err, errlen, "%s must be between 0 and recall.n_pairs", "recall.min_pairs");
    if (p->seq_len < 2 * p->n_pairs + 2 || p->seq_len > 65536)
        return bad(err, errlen, "%s must leave room for a query: at least 2 n_pairs + 2",
                   "seq_len");
    return TFM_OK;
}

int tfm_mqar_vocab(const tfm_mqar *p) { return p->n_keys + p->n_values + 2; }
int tfm_mqar_null_token(const tfm_mqar *p) { return p->n_keys + p->n_values; }
int tfm_mqar_pad_token(const tfm_mqar *p) { return p->n_keys + p->n_values + 1; }
int tfm_mqar_n_queries(const tfm_mqar *p) { return (p->seq_len - 2 * p->n_pairs) / 2; }

void tfm_mqar_sequence(const tfm_mqar *p, uint64_t seed, uint64_t stream, uint64_t index,
                       int *inputs, int *targets)
{
    rng r = rng_for(seed, stream, index);
    int n = p->n_pairs, nk = p->n_keys, nul = tfm_mqar_null_token(p);
    if (stream == 0 && p->min_pairs > 0 && p->min_pairs < p->n_pairs)
        n = p->min_pairs + (int)below(&r, (uint32_t)(p->n_pairs - p->min_pairs + 1));
    /* a partial Fisher-Yates shuffle: perm[0..n) are the store's keys,
     * perm[n..nk) the absent ones */
    int stack_perm[512];
    int *perm = nk <= 512 ? stack_perm : malloc((size_t)nk * sizeof(int));
    int *vals = inputs; /* values live at inputs[2i + 1] */
    if (!perm) { /* out of memory: an all-padding sequence counts nothing */
        for (int i = 0; i < p->seq_len; i++)
            inputs[i] = tfm_mqar_pad_token(p), targets[i] = -1;
        return;
    }
    for (int i = 0; i < nk; i++)
        perm[i] = i;
    for (int i = 0; i < n; i++) {
        int j = i + (int)below(&r, (uint32_t)(nk - i));
        int tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    for (int i = 0; i < n; i++) {
        inputs[2 * i] = perm[i];
        targets[2 * i] = targets[2 * i + 1] = -1;
    }
    for (int i = 0; i < n; i++)
        vals[2 * i + 1] = nk + (int)below(&r, (uint32_t)p->n_values);
    int nq = (p->seq_len - 2 * n) / 2, at = 2 * n;
    for (int q = 0; q < nq; q++, at += 2) {
        double u = uniform(&r);
        int key, ans;
        if (n < nk && u < (double)p->absent_fraction) {
            key = perm[n + (int)below(&r, (uint32_t)(nk - n))];
            ans = nul;
        } else {
            int i = (int)below(&r, (uint32_t)n);
            key = perm[i];
            ans = inputs[2 * i + 1];
        }
        inputs[at] = key;
        inputs[at + 1] = ans;
        targets[at] = ans;
        targets[at + 1] = -1;
    }
    for (; at < p->seq_len; at++)
        inputs[at] = tfm_mqar_pad_token(p), targets[at] = -1;
    if (perm != stack_perm)
        free(perm);
}

void tfm_mqar_batch(const tfm_mqar *p, uint64_t seed, int step, int B, int *inputs,
                    int *targets)
{
    for (int b = 0; b < B; b++)
        tfm_mqar_sequence(p, seed, 0, (uint64_t)step * (uint64_t)B + (uint64_t)b,
                          inputs + (size_t)b * p->seq_len, targets + (size_t)b * p->seq_len);
}

tfm_status tfm_mqar_evaluate(tfm_trainer *t, const tfm_mqar *p, uint64_t seed,
                             int n_sequences, tfm_mqar_eval *out)
{
    memset(out, 0, sizeof *out);
    int T = p->seq_len, Bmax = tfm__trainer_max_batch(t);
    if (T > tfm__trainer_max_seq(t) || n_sequences < 1)
        return TFM_E_INVALID;
    int V = tfm_trainer_model(t)->cfg.vocab_size, nul = tfm_mqar_null_token(p);
    if (V != tfm_mqar_vocab(p))
        return TFM_E_SHAPE;
    int *in = malloc((size_t)Bmax * T * sizeof(int)), *tg = malloc((size_t)Bmax * T * sizeof(int));
    if (!in || !tg) {
        free(in);
        free(tg);
        return TFM_E_NOMEM;
    }
    long right = 0, n = 0, right_p = 0, n_p = 0, right_a = 0, n_a = 0;
    double loss_sum = 0.0;
    tfm_status st = TFM_OK;
    for (int done = 0; done < n_sequences && st == TFM_OK;) {
        int B = n_sequences - done < Bmax ? n_sequences - done : Bmax;
        for (int b = 0; b < B; b++)
            tfm_mqar_sequence(p, seed, 1, (uint64_t)(done + b), in + (size_t)b * T,
                              tg + (size_t)b * T);
        float loss;
        if ((st = tfm_trainer_forward(t, in, tg, B, T, &loss)) != TFM_OK)
            break;
        loss_sum += (double)loss * (double)tfm_trainer_counted(t);
        const float *probs = tfm_trainer_probs(t);
        for (int i = 0; i < B * T; i++) {
            if (tg[i] < 0)
                continue;
            int ok = tfm_argmax(probs + (size_t)i * V, V) == tg[i];
            right += ok, n++;
            if (tg[i] == nul)
                right_a += ok, n_a++;
            else
                right_p += ok, n_p++;
        }
        done += B;
    }
    free(in);
    free(tg);
    if (st != TFM_OK)
        return st;
    out->n_queries = n;
    out->accuracy = n ? (double)right / n : 0.0;
    out->accuracy_present = n_p ? (double)right_p / n_p : 0.0;
    out->accuracy_absent = n_a ? (double)right_a / n_a : 0.0;
    out->loss = n ? loss_sum / n : 0.0;
    return TFM_OK;
}

tfm_status tfm_mqar_to_meta(tfm_model *m, const tfm_mqar *p)
{
    char buf[64];
    tfm_status st = tfm_model_meta_set(m, "task", "recall");
    const char *keys[] = {"recall.n_pairs", "recall.n_keys", "recall.n_values", "recall.seq_len",
                          "recall.min_pairs"};
    int vals[] = {p->n_pairs, p->n_keys, p->n_values, p->seq_len, p->min_pairs};
    for (int i = 0; i < 5 && st == TFM_OK; i++) {
        snprintf(buf, sizeof buf, "%d", vals[i]);
        st = tfm_model_meta_set(m, keys[i], buf);
    }
    if (st == TFM_OK) {
        snprintf(buf, sizeof buf, "%.9g", (double)p->absent_fraction);
        st = tfm_model_meta_set(m, "recall.absent_fraction", buf);
    }
    return st;
}

static int meta_int(const tfm_model *m, const char *key, int *out)
{
    const char *s = tfm_model_meta_get(m, key);
    if (!s)
        return 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < 0 || v > 1 << 20)
        return 0;
    *out = (int)v;
    return 1;
}

tfm_status tfm_mqar_from_meta(const tfm_model *m, tfm_mqar *p)
{
    const char *task = tfm_model_meta_get(m, "task");
    if (!task || strcmp(task, "recall") != 0)
        return TFM_E_NOTFOUND;
    const char *af = tfm_model_meta_get(m, "recall.absent_fraction");
    char *end = NULL;
    tfm_mqar q = {0};
    if (!meta_int(m, "recall.n_pairs", &q.n_pairs) || !meta_int(m, "recall.n_keys", &q.n_keys) ||
        !meta_int(m, "recall.n_values", &q.n_values) ||
        !meta_int(m, "recall.seq_len", &q.seq_len) || !af)
        return TFM_E_FORMAT;
    if (tfm_model_meta_get(m, "recall.min_pairs") && !meta_int(m, "recall.min_pairs", &q.min_pairs))
        return TFM_E_FORMAT;
    q.absent_fraction = strtof(af, &end);
    if (end == af || *end || tfm_mqar_validate(&q, NULL, 0) != TFM_OK ||
        m->cfg.vocab_size != tfm_mqar_vocab(&q) || m->cfg.seq_len < 2 * q.n_pairs + 1)
        return TFM_E_FORMAT;
    *p = q;
    return TFM_OK;
}

#define ANSWER_BATCH 256

tfm_status tfm_mqar_answer(const tfm_model *m, const tfm_mqar *p, const int *keys,
                           const int *values, int n, const int *queries, int nq,
                           int n_threads, int *answers, float *probs, tfm_profile *prof)
{
    if (n < 1 || n > p->n_pairs || nq < 0 || m->cfg.vocab_size != tfm_mqar_vocab(p))
        return TFM_E_INVALID;
    for (int i = 0; i < n; i++) {
        if (keys[i] < 0 || keys[i] >= p->n_keys || values[i] < 0 || values[i] >= p->n_values)
            return TFM_E_INVALID;
        for (int j = 0; j < i; j++)
            if (keys[j] == keys[i])
                return TFM_E_INVALID;
    }
    for (int j = 0; j < nq; j++)
        if (queries[j] < 0 || queries[j] >= p->n_keys)
            return TFM_E_INVALID;
    if (nq == 0)
        return TFM_OK;
    /* the smallest store the model was trained on */
    int least = p->min_pairs > 0 ? p->min_pairs : p->n_pairs, np = n > least ? n : least;
    int T = 2 * np + 1, V = m->cfg.vocab_size, nul = tfm_mqar_null_token(p);
    int Bmax = nq < ANSWER_BATCH ? nq : ANSWER_BATCH;
    tfm_trainer *t;
    tfm_status st = tfm__trainer_create_eval(m, Bmax, T, n_threads, &t);
    if (st != TFM_OK)
        return st;
    int *in = malloc((size_t)Bmax * T * sizeof(int));
    if (!in) {
        tfm_trainer_destroy(t);
        return TFM_E_NOMEM;
    }
    /* the store, repeated cyclically up to np pairs */
    for (int b = 0; b < Bmax; b++)
        for (int i = 0; i < np; i++) {
            in[(size_t)b * T + 2 * i] = keys[i % n];
            in[(size_t)b * T + 2 * i + 1] = p->n_keys + values[i % n];
        }
    for (int done = 0; done < nq && st == TFM_OK;) {
        int B = nq - done < Bmax ? nq - done : Bmax;
        for (int b = 0; b < B; b++)
            in[(size_t)b * T + T - 1] = queries[done + b];
        if ((st = tfm_trainer_forward(t, in, NULL, B, T, NULL)) != TFM_OK)
            break;
        const float *pr = tfm_trainer_probs(t);
        for (int b = 0; b < B; b++) {
            const float *row = pr + ((size_t)b * T + T - 1) * V;
            int best = tfm_argmax(row, V);
            answers[done + b] =
                best >= p->n_keys && best < nul ? best - p->n_keys : -1;
            probs[done + b] = row[best];
        }
        done += B;
    }
    free(in);
    if (prof)
        tfm_profile_add(prof, tfm_trainer_profile(t));
    tfm_trainer_destroy(t);
    return st;
}

/* ---- text --------------------------------------------------------------------- */

tfm_status tfm_text_check(size_t n, size_t n_train, int seq_len, char *err, size_t errlen)
{
    if (seq_len < 2)
        return bad(err, errlen, "%s must be at least 2", "seq_len");
    if (n_train < (size_t)seq_len + 1)
        return bad(err, errlen, "%s: the training part is shorter than seq_len + 1 bytes",
                   "text");
    if (n_train >= n)
        return bad(err, errlen, "%s: nothing is left for evaluation", "text");
    return TFM_OK;
}

void tfm_text_batch(const unsigned char *data, size_t n_train, int seq_len, uint64_t seed,
                    int step, int B, int *inputs, int *targets)
{
    int T = seq_len;
    for (int b = 0; b < B; b++) {
        rng r = rng_for(seed, 0, (uint64_t)step * (uint64_t)B + (uint64_t)b);
        size_t span = n_train - (size_t)T + 1, o;
        o = span < (1ull << 32) ? below(&r, (uint32_t)span) : (size_t)(next(&r) % span);
        int *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T;
        in[0] = TFM_BYTE_BOS;
        for (int i = 1; i < T; i++)
            in[i] = data[o + i - 1];
        for (int i = 0; i < T; i++)
            tg[i] = data[o + i];
    }
}

tfm_status tfm_text_evaluate(tfm_trainer *t, const unsigned char *data, size_t n,
                             size_t n_train, int seq_len, int max_windows, tfm_text_eval *out)
{
    memset(out, 0, sizeof *out);
    int T = seq_len, Bmax = tfm__trainer_max_batch(t);
    if (n_train >= n || T < 2 || T > tfm__trainer_max_seq(t))
        return TFM_E_INVALID;
    /* windows of T targets each; the last may be short */
    size_t tail = n - n_train;
    long windows = (long)((tail + (size_t)T - 1) / (size_t)T);
    if (max_windows > 0 && windows > max_windows)
        windows = max_windows;
    int *in = malloc((size_t)Bmax * T * sizeof(int)), *tg = malloc((size_t)Bmax * T * sizeof(int));
    if (!in || !tg) {
        free(in);
        free(tg);
        return TFM_E_NOMEM;
    }
    double sum = 0.0;
    long count = 0;
    tfm_status st = TFM_OK;
    for (long w = 0; w < windows && st == TFM_OK;) {
        int B = windows - w < Bmax ? (int)(windows - w) : Bmax;
        for (int b = 0; b < B; b++) {
            size_t o = n_train + (size_t)(w + b) * (size_t)T;
            int *ib = in + (size_t)b * T, *tb = tg + (size_t)b * T;
            ib[0] = TFM_BYTE_BOS;
            for (int i = 0; i < T; i++) {
                size_t at = o + (size_t)i;
                if (i > 0)
                    ib[i] = at - 1 < n ? data[at - 1] : TFM_BYTE_EOS;
                tb[i] = at < n ? data[at] : -1;
            }
        }
        float loss;
        if ((st = tfm_trainer_forward(t, in, tg, B, T, &loss)) != TFM_OK)
            break;
        sum += (double)loss * (double)tfm_trainer_counted(t);
        count += tfm_trainer_counted(t);
        w += B;
    }
    free(in);
    free(tg);
    if (st != TFM_OK)
        return st;
    out->n_bytes = count;
    out->loss = count ? sum / count : 0.0;
    out->bits_per_byte = out->loss / log(2.0);
    return TFM_OK;
}

/* ---- one run ------------------------------------------------------------------- */

static tfm_status prefixed(tfm_status st, const char *prefix, char *err, size_t errlen)
{
    if (st != TFM_OK && err && errlen) {
        char tmp[256];
        snprintf(tmp, sizeof tmp, "%s", err);
        snprintf(err, errlen, "%s%s", prefix, tmp);
    }
    return st;
}

tfm_status tfm_train_spec_prepare(tfm_train_spec *s, char *err, size_t errlen)
{
    tfm_status st;
    if (s->task != TFM_TASK_RECALL && s->task != TFM_TASK_TEXT)
        return bad(err, errlen, "%s must be \"recall\" or \"text\"", "task");
    if ((st = tfm_train_config_validate(&s->train, err, errlen)) != TFM_OK)
        return prefixed(st, "train.", err, errlen);
    if (s->eval_every < 0)
        return bad(err, errlen, "%s must be >= 0", "eval_every");
    if (s->checkpoint_every < 0)
        return bad(err, errlen, "%s must be >= 0", "checkpoint_every");
    if (s->eval_sequences < 0)
        return bad(err, errlen, "%s must be >= 0", "eval_sequences");
    if (s->n_threads < 1 || s->n_threads > 256)
        return bad(err, errlen, "%s must be between 1 and 256", "threads");
    if (s->task == TFM_TASK_RECALL) {
        s->recall.seq_len = s->train.seq_len;
        if ((st = tfm_mqar_validate(&s->recall, err, errlen)) != TFM_OK)
            return st;
        s->model.vocab_size = tfm_mqar_vocab(&s->recall);
        if (s->eval_sequences == 0)
            s->eval_sequences = 1000;
    } else {
        if (s->eval_fraction == 0.0f)
            s->eval_fraction = 0.1f;
        if (!(s->eval_fraction > 0.0f && s->eval_fraction < 1.0f))
            return bad(err, errlen, "%s must be in (0, 1)", "text.eval_fraction");
        if (!s->text)
            return bad(err, errlen, "%s is missing", "text");
        size_t n_train = (size_t)((double)s->text_len * (1.0 - s->eval_fraction));
        if ((st = tfm_text_check(s->text_len, n_train, s->train.seq_len, err, errlen)) != TFM_OK)
            return st;
        s->model.vocab_size = TFM_TEXT_VOCAB;
    }
    if (s->model.seq_len < s->train.seq_len)
        s->model.seq_len = s->train.seq_len;
    if (s->model.n_kv_heads == 0)
        s->model.n_kv_heads = s->model.n_heads;
    if (s->model.hidden_dim == 0)
        s->model.hidden_dim = 4 * s->model.dim;
    s->model.shared_classifier = 1;
    tfm_config_defaults(&s->model);
    if ((st = tfm_config_validate(&s->model, err, errlen)) != TFM_OK)
        return prefixed(st, "model.", err, errlen);
    return TFM_OK;
}

static tfm_status evaluate(tfm_trainer *t, const tfm_train_spec *s, size_t n_train,
                           tfm_train_progress *p)
{
    p->has_eval = 1;
    if (s->task == TFM_TASK_RECALL)
        return tfm_mqar_evaluate(t, &s->recall, s->train.seed, s->eval_sequences, &p->recall);
    return tfm_text_evaluate(t, s->text, s->text_len, n_train, s->train.seq_len,
                             s->eval_sequences, &p->text);
}

tfm_status tfm_train_run(tfm_trainer *t, const tfm_train_spec *s, const tfm_train_hooks *h,
                         tfm_train_progress *final, char *err, size_t errlen)
{
    static const tfm_train_hooks none = {0};
    if (!h)
        h = &none;
    const tfm_train_config *c = &s->train;
    int B = c->batch_size, T = c->seq_len;
    if (B > tfm__trainer_max_batch(t) || T > tfm__trainer_max_seq(t))
        return bad(err, errlen, "%s: the trainer was made for smaller batches", "batch_size");
    size_t n_train = s->task == TFM_TASK_TEXT
                         ? (size_t)((double)s->text_len * (1.0 - s->eval_fraction))
                         : 0;
    int *in = malloc((size_t)B * T * sizeof(int)), *tg = malloc((size_t)B * T * sizeof(int));
    if (!in || !tg) {
        free(in);
        free(tg);
        return TFM_E_NOMEM;
    }
    tfm_train_progress p = {.step = tfm_trainer_step_count(t), .steps = c->steps};
    tfm_status st = TFM_OK;
    double t0 = tfm_now();
    long tokens = 0;
    while (p.step < c->steps) {
        if (h->cancelled && h->cancelled(h->ctx)) {
            st = TFM_E_CANCELLED;
            if (err && errlen)
                snprintf(err, errlen, "cancelled at step %d", p.step);
            break;
        }
        if (s->task == TFM_TASK_RECALL)
            tfm_mqar_batch(&s->recall, c->seed, p.step, B, in, tg);
        else
            tfm_text_batch(s->text, n_train, T, c->seed, p.step, B, in, tg);
        if ((st = tfm_trainer_step(t, c, in, tg, B, T, &p.last)) != TFM_OK) {
            if (err && errlen)
                snprintf(err, errlen, "step %d: %s", p.step, tfm_strerror(st));
            break;
        }
        if (!isfinite(p.last.loss)) {
            st = TFM_E_RANGE;
            if (err && errlen)
                snprintf(err, errlen, "step %d: the loss is not finite (learning rate too high?)",
                         p.step);
            break;
        }
        p.step = tfm_trainer_step_count(t);
        tokens += (long)B * T;
        p.seconds = tfm_now() - t0;
        p.tokens_per_s = p.seconds > 0 ? tokens / p.seconds : 0.0;
        p.has_eval = 0;
        if (p.step == c->steps || (s->eval_every > 0 && p.step % s->eval_every == 0)) {
            if ((st = evaluate(t, s, n_train, &p)) != TFM_OK) {
                if (err && errlen)
                    snprintf(err, errlen, "evaluation at step %d: %s", p.step, tfm_strerror(st));
                break;
            }
        }
        if (h->progress)
            h->progress(h->ctx, &p);
        if (h->checkpoint && s->checkpoint_every > 0 && p.step < c->steps &&
            p.step % s->checkpoint_every == 0) {
            if ((st = h->checkpoint(h->ctx, t, p.step)) != TFM_OK) {
                if (err && errlen && !err[0])
                    snprintf(err, errlen, "checkpoint at step %d failed", p.step);
                break;
            }
        }
    }
    free(in);
    free(tg);
    if (st == TFM_OK && !p.has_eval && c->steps > 0)
        st = evaluate(t, s, n_train, &p); /* resumed at the end: evaluate anyway */
    if (st == TFM_OK) {
        tfm_model *m = tfm_trainer_model(t);
        st = s->task == TFM_TASK_RECALL ? tfm_mqar_to_meta(m, &s->recall)
                                        : tfm_model_meta_set(m, "task", "text");
    }
    if (final)
        *final = p;
    return st;
}
