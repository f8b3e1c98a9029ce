/*
 * tfm/train.h — training the transformer the service runs: a forward that
 * keeps what the backward needs, the backward of every layer, cross-entropy
 * over chosen positions, AdamW with global-norm clipping and a warmup +
 * cosine schedule; the two tasks (MQAR associative recall, byte-level text)
 * with their evaluations; and one training loop shared by `attn train` and
 * attnd's background jobs.
 *
 * Shape of the code (llm.c's): every <op>_forward caches its inputs in the
 * trainer's activation buffers, every <op>_backward reads them and
 * accumulates (+=) into the gradients.  All buffers are sized once, by
 * tfm_trainer_create, for batch_size x seq_len rows; a step allocates
 * nothing.  Contractions are sgemm over batch x time rows at once, split
 * over the trainer's own thread pool.
 *
 *     tfm_trainer *t;  tfm_trainer_create(model, B, T, threads, &t);
 *     for (step...) {
 *         tfm_mqar_batch(&task, seed, step, B, in, tgt);
 *         tfm_trainer_step(t, &tc, in, tgt, &loss);  // fwd, bwd, clip, AdamW
 *     }
 *
 * Determinism: for the same model, data, config and thread count every
 * step gives bit-identical weights (no atomics in reductions; each thread
 * sums a fixed slice).  The batch of step s is a pure function of (seed, s),
 * so resuming from a checkpoint taken after step s replays exactly.
 */
#ifndef TFM_TRAIN_H
#define TFM_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "tfm/model.h"
#include "tfm/profile.h"
#include "tfm/status.h"

/* ---- optimiser and schedule --------------------------------------------- */

typedef struct tfm_train_config {
    int steps;            /* total optimiser steps */
    int batch_size;       /* sequences per step (B) */
    int seq_len;          /* tokens per sequence (T) */
    float learning_rate;  /* peak learning rate */
    int warmup_steps;     /* linear warmup from lr/warmup to lr; -1 (the
                           * default): min(100, steps / 10), resolved by
                           * tfm_train_config_validate */
    float min_lr_ratio;   /* cosine decays to learning_rate * min_lr_ratio */
    float weight_decay;   /* AdamW's decoupled decay, on matrices only */
    float grad_clip;      /* clip the global gradient norm to this; 0 = off */
    float beta1, beta2, eps;
    uint64_t seed;        /* initial weights and data */
    tfm_attn_kernel attention; /* the trainer's attention (tfm_trainer_create_attn):
                                * AUTO (the default), NAIVE or TILED */
} tfm_train_config;

/* steps 1000, batch 16, seq_len 64, lr 1e-3, warmup -1, min ratio 0.1,
 * decay 0.1, clip 1.0, betas 0.9/0.95, eps 1e-8, seed 1. */
void tfm_train_config_defaults(tfm_train_config *c);
/* Resolves warmup -1, then names the first bad field in err
 * ("learning_rate must be ..."). */
tfm_status tfm_train_config_validate(tfm_train_config *c, char *err, size_t errlen);
/* The learning rate of step (0-based): lr * (step + 1) / warmup during
 * warmup, then cosine from lr to lr * min_lr_ratio at the last step. */
float tfm_train_lr(const tfm_train_config *c, int step);

/* Initial weights for training: normal with std 1/sqrt(fan-in) for every
 * matrix (the embedding too: 1/sqrt(dim)), the residual projections (wo,
 * w2) also scaled by 1/sqrt(2 n_layers), norm weights 1.  Same seed, same
 * weights.  GPT-2's fixed std 0.02 is far below 1/sqrt(dim) for the small
 * widths trained here: on 2-pair MQAR with 64 keys (d 64) it left
 * attention near uniform and stuck at chance for 1,500 steps, where this
 * reached 96%. */
void tfm_model_init_train(tfm_model *m, uint64_t seed);

/* ---- the trainer --------------------------------------------------------- */

typedef struct tfm_trainer tfm_trainer;

/* Borrows m (its weights are updated in place by tfm_trainer_adamw) for
 * batches up to max_batch sequences of up to max_seq tokens (<= the
 * model's seq_len), computed on n_threads threads.  A model with
 * quantised matrices (tfm_model_quantize, a bf16/q8/q4 file) is
 * TFM_E_UNSUPPORTED: the trainer reads and writes float32. */
tfm_status tfm_trainer_create(tfm_model *m, int max_batch, int max_seq, int n_threads,
                              tfm_trainer **out);

/* The same with a choice of attention kernel, fixed for the trainer's life:
 *   TFM_ATTN_NAIVE  keeps every head's (T, T) softmax probabilities for
 *                   the backward: layers x max_batch x heads x T^2 floats,
 *                   plus a (T, T) dP per thread.
 *   TFM_ATTN_TILED  FlashAttention (core/train_attn.c): keeps each row's
 *                   log-sum-exp (layers x max_batch x heads x T floats) and
 *                   recomputes the probabilities tile by tile (64 x 128) in
 *                   the backward; scratch two tiles and T floats a thread.
 *                   Same gradients to float rounding (~1e-6 relative).
 *   TFM_ATTN_AUTO   tfm_trainer_attention_pick (what tfm_trainer_create
 *                   does).
 * Both are bit-for-bit repeatable for a seed and thread count.
 * TFM_E_INVALID for another value. */
tfm_status tfm_trainer_create_attn(tfm_model *m, int max_batch, int max_seq, int n_threads,
                                   tfm_attn_kernel attention, tfm_trainer **out);
/* AUTO's rule: TILED for sequences of TFM_TRAIN_AUTO_TILED_SEQ tokens or
 * more (where it is also the faster), or when the naive kernel's stored
 * probabilities and dP would exceed TFM_TRAIN_AUTO_TILED_BYTES; else NAIVE
 * (see core/train.c for the measurements behind it). */
#define TFM_TRAIN_AUTO_TILED_SEQ 512
#define TFM_TRAIN_AUTO_TILED_BYTES ((double)(256 << 20))
tfm_attn_kernel tfm_trainer_attention_pick(const tfm_config *c, int max_batch, int max_seq,
                                           int n_threads);
/* The kernel the trainer runs (NAIVE or TILED). */
tfm_attn_kernel tfm_trainer_attention(const tfm_trainer *t);
/* Bytes of the float buffers the trainer allocated (activations,
 * gradients, AdamW moments, scratch; not the model's weights), and of
 * those, attention's own (probabilities and dP, or log-sum-exp and tiles).
 * Either pointer may be NULL. */
void tfm_trainer_memory(const tfm_trainer *t, size_t *total, size_t *attention);
void tfm_trainer_destroy(tfm_trainer *t); /* NULL is a no-op */
tfm_model *tfm_trainer_model(tfm_trainer *t);

/* Forward over inputs (B, T) row-major; targets (B, T) give the next token
 * to predict at each position, or a negative value for a position that is
 * not counted.  *loss (may be NULL) receives the mean cross-entropy (nats)
 * over counted positions, 0 when none.  Keeps the activations for
 * tfm_trainer_backward.  TFM_E_INVALID: a token or target out of vocab,
 * B or T out of range. */
tfm_status tfm_trainer_forward(tfm_trainer *t, const int *inputs, const int *targets, int B,
                               int T, float *loss);
/* The last forward's next-token probabilities, (B, T, vocab). */
const float *tfm_trainer_probs(const tfm_trainer *t);
/* Number of positions counted by the last forward. */
long tfm_trainer_counted(const tfm_trainer *t);

/* Gradients of the last forward's mean loss, written into the gradient
 * buffer (same layout as model->data, model->n_floats floats).  Zeroes it
 * first.  TFM_E_INVALID without a forward. */
tfm_status tfm_trainer_backward(tfm_trainer *t);
float *tfm_trainer_grads(tfm_trainer *t);
/* Global L2 norm of the gradients; if max_norm > 0 and the norm exceeds
 * it, scales them to max_norm.  Returns the norm before clipping. */
float tfm_trainer_clip(tfm_trainer *t, float max_norm);
/* One AdamW update at learning rate lr (bias-corrected, decoupled decay on
 * every matrix, not on norm weights); counts the step. */
void tfm_trainer_adamw(tfm_trainer *t, const tfm_train_config *c, float lr);
/* Steps taken so far (restored by tfm_trainer_load). */
int tfm_trainer_step_count(const tfm_trainer *t);
/* The trainer's op accounting (tfm/profile.h), enabled from creation:
 * every forward (an evaluation's too), backward, clip and AdamW books its
 * FLOPs and seconds in phase "train" (an evaluation-only trainer, as
 * tfm_mqar_answer's, in "prefill"); attention by the step's sequence
 * length and the trainer's kernel, calls one per sequence and layer, FLOPs
 * as executed.  Kind "naive": full T x T products, a backward twice its
 * forward, peak bytes the kept probabilities.  Kind "tiled": the tiles up
 * to the diagonal, five products a tile in the backward against the
 * forward's two, peak bytes the kept log-sum-exp plus every thread's
 * scratch.  Plain memory written by the training thread: read or reset it
 * between steps. */
tfm_profile *tfm_trainer_profile(tfm_trainer *t);

typedef struct tfm_step_info {
    float loss;
    float grad_norm; /* before clipping */
    float lr;
} tfm_step_info;

/* forward, backward, clip, AdamW at tfm_train_lr(c, step_count). */
tfm_status tfm_trainer_step(tfm_trainer *t, const tfm_train_config *c, const int *inputs,
                            const int *targets, int B, int T, tfm_step_info *info);

/* Everything a resume needs in one atomically written file: the config,
 * the step count, the weights and AdamW's two moments.  Load checks that
 * the file's config equals the trainer's model's (TFM_E_SHAPE otherwise). */
tfm_status tfm_trainer_save(const tfm_trainer *t, const char *path, char *err, size_t errlen);
tfm_status tfm_trainer_load(tfm_trainer *t, const char *path, char *err, size_t errlen);

/* ---- the tasks ------------------------------------------------------------ */

/* Multi-query associative recall (Zoology's MQAR).  Vocabulary: key k is
 * token k (0 <= k < n_keys), value v is token n_keys + v, then ⊥ ("not
 * found") and a padding token.  A sequence is
 *     k1 v1 k2 v2 ... kn vn  q1 a1 q2 a2 ...  [pad]
 * with n = n_pairs distinct keys drawn without replacement (see min_pairs
 * below), values drawn
 * with replacement, then (seq_len - 2n) / 2 queries: with probability
 * absent_fraction a key that is not in the store (answer ⊥), else one of
 * the store's keys, uniformly (answer its value).  The target at a query
 * position is its answer; every other target is -1 (not counted).  The
 * answer follows each query in the input (teacher forcing), so a model
 * answers a lone query at position 2n exactly as in training. */
typedef struct tfm_mqar {
    int n_pairs;
    int n_keys;
    int n_values;
    float absent_fraction;
    int seq_len;
    /* 0 (or n_pairs): every sequence holds n_pairs pairs, Zoology's
     * layout.  Else training sequences (stream 0) hold n pairs with n drawn
     * uniformly from [min_pairs, n_pairs] (drawn first), the queries
     * filling the rest: small stores teach the lookup quickly and the model
     * then serves stores of any size in that range.  Evaluation sequences
     * (stream 1) always hold n_pairs. */
    int min_pairs;
} tfm_mqar;

tfm_status tfm_mqar_validate(const tfm_mqar *p, char *err, size_t errlen);
int tfm_mqar_vocab(const tfm_mqar *p);     /* n_keys + n_values + 2 */
int tfm_mqar_null_token(const tfm_mqar *p); /* ⊥ = n_keys + n_values */
int tfm_mqar_pad_token(const tfm_mqar *p);  /* n_keys + n_values + 1 */
int tfm_mqar_n_queries(const tfm_mqar *p);  /* (seq_len - 2 n_pairs) / 2 */
/* Sequence number `index` of stream `stream` for seed: a pure function of
 * the four.  Streams: 0 training, 1 evaluation (held out: disjoint). */
void tfm_mqar_sequence(const tfm_mqar *p, uint64_t seed, uint64_t stream, uint64_t index,
                       int *inputs, int *targets);
/* The B training sequences of step `step`: numbers step*B ... of stream 0. */
void tfm_mqar_batch(const tfm_mqar *p, uint64_t seed, int step, int B, int *inputs,
                    int *targets);

typedef struct tfm_mqar_eval {
    double accuracy;         /* all queries, ⊥ ones included */
    double accuracy_present; /* queries whose key is in the store */
    double accuracy_absent;  /* queries whose answer is ⊥ */
    double loss;             /* mean cross-entropy at query positions */
    long n_queries;
} tfm_mqar_eval;
/* n_sequences fresh sequences of stream 1 through the trainer's model
 * (in batches of the trainer's max_batch); the prediction is the argmax
 * over the whole vocabulary. */
tfm_status tfm_mqar_evaluate(tfm_trainer *t, const tfm_mqar *p, uint64_t seed,
                             int n_sequences, tfm_mqar_eval *out);

/* A trained recall model carries its task in its metadata: "task" is
 * "recall", and "recall.n_pairs", "recall.n_keys", "recall.n_values",
 * "recall.absent_fraction", "recall.seq_len", "recall.min_pairs" hold the
 * parameters (text
 * models have "task" "text").  tfm_train_run writes them; from_meta reads
 * them back (TFM_E_NOTFOUND: not a recall model; TFM_E_FORMAT: bad values). */
tfm_status tfm_mqar_to_meta(tfm_model *m, const tfm_mqar *p);
tfm_status tfm_mqar_from_meta(const tfm_model *m, tfm_mqar *p);

/* Looks keys up in a store with a trained MQAR model, as the service's
 * `/recall` with engine "model" does.  The store is keys[i] -> values[i],
 * 0 < n <= p->n_pairs pairs with distinct keys in [0, n_keys) and values in
 * [0, n_values) (TFM_E_INVALID otherwise; the caller keeps the latest value
 * of a repeated key).  Each query is its own sequence "k1 v1 ... kn vn q"
 * (a store smaller than the model's min_pairs, or than n_pairs when it was
 * trained on full stores only, is repeated cyclically up to that size, a
 * layout it was trained on), all run as one batch.  answers[j]
 * is the value index the model predicts for queries[j], or -1 for ⊥ (also
 * when it predicts a token that is neither a value nor ⊥); probs[j] its
 * probability.  A query key outside [0, n_keys) is TFM_E_INVALID.
 * Allocates its scratch per call; thread-safe (the model is read-only).
 * prof (may be NULL) gains the forward's op accounting, phase prefill. */
tfm_status tfm_mqar_answer(const tfm_model *m, const tfm_mqar *p, const int *keys,
                           const int *values, int n, const int *queries, int nq,
                           int n_threads, int *answers, float *probs, tfm_profile *prof);

/* Byte-level text.  The corpus's first n_train bytes are for training, the
 * rest held out.  A training sequence is BOS then seq_len - 1 bytes from a
 * random offset; the targets are those bytes and the next one, so the model
 * learns to continue text from BOS, as /generate feeds it.  Vocabulary 258
 * (the byte tokenizer's). */
#define TFM_TEXT_VOCAB 258
/* TFM_E_INVALID when the training part is shorter than seq_len + 1 bytes
 * or the held-out part is empty. */
tfm_status tfm_text_check(size_t n, size_t n_train, int seq_len, char *err, size_t errlen);
void tfm_text_batch(const unsigned char *data, size_t n_train, int seq_len, uint64_t seed,
                    int step, int B, int *inputs, int *targets);

typedef struct tfm_text_eval {
    double loss;          /* nats per byte on the held-out part */
    double bits_per_byte; /* loss / ln 2 */
    long n_bytes;
} tfm_text_eval;
/* Consecutive windows of the held-out part (at most max_windows of the
 * trainer's seq_len, 0 = all), each starting with BOS. */
tfm_status tfm_text_evaluate(tfm_trainer *t, const unsigned char *data, size_t n,
                             size_t n_train, int seq_len, int max_windows, tfm_text_eval *out);

/* ---- one training run ---------------------------------------------------- */

typedef enum tfm_task_kind { TFM_TASK_RECALL = 0, TFM_TASK_TEXT } tfm_task_kind;

typedef struct tfm_train_spec {
    tfm_task_kind task;
    tfm_config model;       /* vocab_size and seq_len are set by the task */
    tfm_train_config train;
    tfm_mqar recall;        /* TFM_TASK_RECALL */
    const unsigned char *text; /* TFM_TASK_TEXT: the corpus, borrowed */
    size_t text_len;
    float eval_fraction;    /* held-out share of the corpus, default 0.1 */
    int eval_every;         /* steps between evaluations; 0: only at the end */
    int eval_sequences;     /* recall: sequences per evaluation, default 1000;
                             * text: windows per evaluation, 0 = the whole tail */
    int checkpoint_every;   /* steps between checkpoints; 0: none */
    int n_threads;
} tfm_train_spec;

/* Fills defaults and completes the model config for the task (vocab,
 * seq_len = max(model.seq_len, train.seq_len)); then validates all of it,
 * naming the field ("model.dim", "recall.n_keys", "train.learning_rate"). */
tfm_status tfm_train_spec_prepare(tfm_train_spec *s, char *err, size_t errlen);

typedef struct tfm_train_progress {
    int step;             /* steps done */
    int steps;
    tfm_step_info last;   /* the step just taken */
    double tokens_per_s;  /* over this run so far */
    double seconds;       /* wall time of this run so far */
    int has_eval;         /* an evaluation just ran: */
    tfm_mqar_eval recall;
    tfm_text_eval text;
} tfm_train_progress;

/* Callbacks of a run; any may be NULL.  Called on the training thread. */
typedef struct tfm_train_hooks {
    void *ctx;
    /* polled before every step; non-zero stops the run with
     * TFM_E_CANCELLED */
    int (*cancelled)(void *ctx);
    /* after every step (and its evaluation, if any) */
    void (*progress)(void *ctx, const tfm_train_progress *p);
    /* every checkpoint_every steps and never at the final step: save
     * (tfm_trainer_save) and record; a failure stops the run */
    tfm_status (*checkpoint)(void *ctx, tfm_trainer *t, int step);
} tfm_train_hooks;

/* Trains t's model from t's step count to s->train.steps, evaluating at the
 * end (and every eval_every steps).  The final evaluation is in *final (may
 * be NULL).  The model is the caller's: save it afterwards. */
tfm_status tfm_train_run(tfm_trainer *t, const tfm_train_spec *s, const tfm_train_hooks *h,
                         tfm_train_progress *final, char *err, size_t errlen);

#endif /* TFM_TRAIN_H */
