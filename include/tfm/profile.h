/*
 * tfm/profile.h — op accounting: where the FLOPs and the seconds go.
 *
 * Every op of the forward adds its FLOPs and elapsed seconds into a profile,
 * keyed as in the lecture's table (Ivanov et al., "Data movement is all you
 * need"):
 *   class      tensor contraction (every matmul, QK^T and PV included),
 *              statistical normalisation (softmax, RMSNorm),
 *              element-wise (RoPE, SiLU and gating, residual adds);
 *   component  attention, MLP, other (embedding, final norm, classifier);
 *   phase      prefill, decode, train;
 * and attention (the QK^T, softmax, PV part) by context-length bucket, with
 * the peak bytes of scratch its kernel held.
 *
 * A profile is plain memory owned by its caller and written by one thread at
 * a time (the thread running the forward); the server copies it out under its
 * own lock.  Timing uses CLOCK_MONOTONIC (a vDSO call, ~20 ns); with
 * `enabled` false nothing is timed or counted.
 */
#ifndef TFM_PROFILE_H
#define TFM_PROFILE_H

#include <stdint.h>

typedef enum tfm_op_class {
    TFM_CLASS_CONTRACTION = 0, /* matmuls, QK^T, PV */
    TFM_CLASS_NORMALIZATION,   /* softmax, RMSNorm */
    TFM_CLASS_ELEMENTWISE,     /* RoPE, SiLU*gate, residual adds */
    TFM_CLASS_COUNT
} tfm_op_class;

typedef enum tfm_component {
    TFM_COMP_ATTENTION = 0,
    TFM_COMP_MLP,
    TFM_COMP_OTHER,
    TFM_COMP_COUNT
} tfm_component;

typedef enum tfm_phase {
    TFM_PHASE_PREFILL = 0,
    TFM_PHASE_DECODE,
    TFM_PHASE_TRAIN,
    TFM_PHASE_COUNT
} tfm_phase;

/* What computed an attention: the two kernels of the model's forward,
 * recall's exact construction (include/tfm/recall.h), and the linear
 * mixer's layers (tfm/linear_attn.h; its peak scratch is its state). */
typedef enum tfm_attn_kind {
    TFM_ATTN_KIND_NAIVE = 0,
    TFM_ATTN_KIND_TILED,
    TFM_ATTN_KIND_EXACT,
    TFM_ATTN_KIND_LINEAR,
    TFM_ATTN_KIND_COUNT
} tfm_attn_kind;

/* Context-length buckets for attention: bucket b holds contexts of length
 * <= 64 << b (64, 128, ..., 32768); the last bucket also takes longer ones. */
#define TFM_CTX_BUCKETS 10

typedef struct tfm_profile {
    int enabled;
    double seconds[TFM_PHASE_COUNT][TFM_CLASS_COUNT];
    double flops[TFM_PHASE_COUNT][TFM_CLASS_COUNT];
    double comp_seconds[TFM_PHASE_COUNT][TFM_COMP_COUNT];
    /* attention core (scores, softmax, weighted values) by context length */
    double attn_seconds[TFM_PHASE_COUNT][TFM_CTX_BUCKETS];
    double attn_flops[TFM_PHASE_COUNT][TFM_CTX_BUCKETS];
    uint64_t attn_calls[TFM_PHASE_COUNT][TFM_CTX_BUCKETS];
    /* the same three split by what computed them */
    double attn_kind_seconds[TFM_PHASE_COUNT][TFM_ATTN_KIND_COUNT][TFM_CTX_BUCKETS];
    double attn_kind_flops[TFM_PHASE_COUNT][TFM_ATTN_KIND_COUNT][TFM_CTX_BUCKETS];
    uint64_t attn_kind_calls[TFM_PHASE_COUNT][TFM_ATTN_KIND_COUNT][TFM_CTX_BUCKETS];
    /* largest attention scratch in use at once by one call (one layer of a
     * prefill chunk or a decode batch): a kernel's bytes times the threads
     * running it; a peak, so tfm_profile_add takes the max */
    double attn_peak_bytes[TFM_PHASE_COUNT];
    /* whole prompts: prefill attention seconds by the prompt's length
     * bucket (what grows as N^2), their lengths and count */
    double prompt_attn_seconds[TFM_CTX_BUCKETS];
    double prompt_tokens[TFM_CTX_BUCKETS];
    uint64_t prompts[TFM_CTX_BUCKETS];
    uint64_t tokens[TFM_PHASE_COUNT];
} tfm_profile;

const char *tfm_op_class_name(tfm_op_class c);   /* "tensor_contraction", ... */
const char *tfm_component_name(tfm_component c); /* "attention", "mlp", "other" */
const char *tfm_phase_name(tfm_phase p);         /* "prefill", "decode", "train" */
const char *tfm_attn_kind_name(tfm_attn_kind k); /* "naive", "tiled", "exact", "linear" */

/* Upper bound (inclusive) of context bucket b: 64 << b. */
int tfm_ctx_bucket_le(int b);
/* Bucket of a context length n >= 1. */
int tfm_ctx_bucket(int n);

/* Zero every counter; keeps `enabled`. */
void tfm_profile_reset(tfm_profile *p);
/* dst += src, counter by counter; peaks (attn_peak_bytes) by max. */
void tfm_profile_add(tfm_profile *dst, const tfm_profile *src);
/* Sum of seconds (or flops) over all classes for one phase. */
double tfm_profile_total_seconds(const tfm_profile *p, tfm_phase ph);

/* Books one finished prompt: n_tokens long, attn_seconds of prefill
 * attention in all (tfm_state.prefill_attn_seconds).  No-op when disabled. */
void tfm_profile_add_prompt(tfm_profile *p, int n_tokens, double attn_seconds);

/* The fitted exponent k of prefill attention time ~ length^k: least squares
 * on log(mean seconds per prompt) against log(mean length) over the length
 * buckets that have prompts of at least min_tokens.  NaN with fewer than two
 * such buckets.  About 2 once attention dominates: doubling the context
 * quadruples it. */
double tfm_profile_cost_exponent(const tfm_profile *p, int min_tokens);

/* Monotonic clock in seconds. */
double tfm_now(void);

#endif /* TFM_PROFILE_H */
