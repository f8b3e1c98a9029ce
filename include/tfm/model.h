/*
 * tfm/model.h — the Llama-style decoder: config, weights, per-sequence state,
 * and the forward passes (prefill, batched decode).
 *
 * A short tour:
 *
 *     tfm_model *m;      tfm_checkpoint_load("m.bin", TFM_CKPT_AUTO, &m, err, sizeof err);
 *     tfm_workspace *ws; tfm_workspace_create(m, 64, 2, &ws);   // 64 rows, 2 threads
 *     tfm_state *st;     tfm_state_create(m, 0, &st);           // KV cache, seq_len
 *     tfm_prefill(ws, st, prompt, n, logits);                   // sgemm over the prompt
 *     for (;;) { int t = pick(logits); tfm_decode(ws, &st, &t, 1, logits); }
 *
 * The model is immutable once loaded and shared read-only by all threads.
 * A state (one sequence: its KV cache and position) belongs to one sequence;
 * a workspace (scratch for up to max_rows token rows, a thread pool, a
 * profile) belongs to one compute thread at a time.  Both are allocated once:
 * tfm_prefill and tfm_decode never call malloc.
 *
 * Architecture (llama2.c's run.c, which this is compatible with):
 *   x = token_embedding[token]
 *   per layer: x += wo · attn(rope(wq·rms(x)), rope(wk·rms(x)), wv·rms(x))
 *              x += w2 · (silu(w1·rms(x)) * (w3·rms(x)))
 *   logits = wcls · rms(x)
 * A layer may mix by linear attention instead (cfg.linear_layers,
 * forward_linear.c): q and k as above, then per head q_f = wfeat · q_h,
 * k_f = wfeat · k_h (feature_dim each), and attn is Based's causal linear
 * attention (tfm/linear_attn.h) over q_f, k_f, v, read from a recurrent
 * state of fixed size instead of a KV cache.
 * RoPE rotates adjacent pairs (2i, 2i+1) within each head by
 * pos / theta^(2i/head_size); n_kv_heads may divide n_heads (grouped-query
 * attention: query head h reads kv head h / (n_heads / n_kv_heads)).
 * Every matrix is stored row-major as (out, in), as llama2.c stores it.
 */
#ifndef TFM_MODEL_H
#define TFM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "tfm/profile.h"
#include "tfm/status.h"

typedef enum tfm_tokenizer_kind {
    TFM_TOKENIZER_BYTE = 0, /* 256 byte tokens, then BOS (256) and EOS (257) */
    TFM_TOKENIZER_LLAMA2C,  /* llama2.c's tokenizer.bin (SentencePiece BPE) */
} tfm_tokenizer_kind;

typedef struct tfm_config {
    int dim;               /* model width */
    int hidden_dim;        /* SwiGLU inner width */
    int n_layers;
    int n_heads;           /* query heads; head_size = dim / n_heads */
    int n_kv_heads;        /* key/value heads, divides n_heads */
    int vocab_size;
    int seq_len;           /* maximum positions (RoPE table, default KV size) */
    int shared_classifier; /* 1: the output head is the token embedding */
    float norm_eps;        /* RMSNorm epsilon, 1e-5 as llama2.c */
    float rope_theta;      /* 10000 as llama2.c */
    /* The token mixer of each layer (issue 14).  Bit l set: layer l mixes
     * by causal linear attention with Based's feature map (tfm/linear_attn.h)
     * over q and k projected per head to feature_dim by the layer's wfeat;
     * clear: softmax attention.  0 (a zeroed config) is all softmax, the
     * llama2.c model.  Linear layers need n_layers <= 64. */
    uint64_t linear_layers;
    int feature_dim;       /* f of the linear layers, 1 .. head_size; 0 with
                            * linear layers means the default, min(16, head_size) */
} tfm_config;

/* Fills the defaults that a zeroed config lacks (norm_eps, rope_theta, and
 * feature_dim when some layer is linear). */
void tfm_config_defaults(tfm_config *c);

/* Layer l's mixer is linear attention (1) or softmax (0). */
int tfm_config_layer_linear(const tfm_config *c, int l);
/* How many layers are linear. */
int tfm_config_n_linear(const tfm_config *c);

/* Mixer specs as the CLI and the safetensors metadata write them:
 * "softmax", "linear" (every layer), or one word per layer separated by
 * commas ("linear,softmax").  Parse gives the linear_layers bits for
 * n_layers layers; TFM_E_INVALID with a message in err for an unknown
 * word, a list of another length than n_layers, or linear layers with
 * n_layers > 64.  Format writes the shortest spec ("softmax", "linear" or
 * the list) into buf; TFM_E_RANGE when buf is too small. */
tfm_status tfm_mixer_parse(const char *spec, int n_layers, uint64_t *linear_layers, char *err,
                           size_t errlen);
tfm_status tfm_mixer_format(const tfm_config *c, char *buf, size_t len);

/* Checks every field (positive, head_size even, n_kv_heads divides n_heads,
 * sizes that fit in memory arithmetic).  On error writes a message naming
 * the field into err (may be NULL). */
tfm_status tfm_config_validate(const tfm_config *c, char *err, size_t errlen);

/* Number of parameters (the classifier counted once when shared; the
 * linear layers' wfeat included). */
size_t tfm_config_n_params(const tfm_config *c);

#define TFM_META_MAX 16
typedef struct tfm_meta_entry {
    char key[48];
    char value[208];
} tfm_meta_entry;

typedef struct tfm_weights {
    float *token_embedding; /* (vocab, dim) */
    float *rms_att;         /* (layer, dim) */
    float *wq;              /* (layer, n_heads * head_size, dim) */
    float *wk;              /* (layer, n_kv_heads * head_size, dim) */
    float *wv;              /* (layer, n_kv_heads * head_size, dim) */
    float *wo;              /* (layer, dim, n_heads * head_size) */
    float *rms_ffn;         /* (layer, dim) */
    float *w1;              /* (layer, hidden, dim) */
    float *w2;              /* (layer, dim, hidden) */
    float *w3;              /* (layer, hidden, dim) */
    float *rms_final;       /* (dim) */
    float *wcls;            /* (vocab, dim); == token_embedding when shared */
    float *wfeat;           /* (n_linear, feature_dim, head_size): linear layer
                             * number j's (j-th set bit of linear_layers)
                             * projection of each head's q and k, shared by
                             * the heads; after wcls in data; NULL when no
                             * layer is linear */
} tfm_weights;

struct tfm_qweights;

typedef struct tfm_model {
    tfm_config cfg;
    tfm_weights w; /* quantised models (tfm_model_quantize): the matrices'
                    * pointers are NULL, but token_embedding and the norms */
    struct tfm_qweights *q; /* the matrices in another format, or NULL (f32) */
    float *data;      /* owns every weight, llama2.c's order, then wfeat;
                       * n_floats long */
    size_t n_floats;
    float *rope_cos;  /* (seq_len, head_size / 2) */
    float *rope_sin;  /* (seq_len, head_size / 2) */
    tfm_tokenizer_kind tokenizer;
    int n_meta;
    tfm_meta_entry meta[TFM_META_MAX]; /* free-form strings from checkpoints */
} tfm_model;

/* Allocates a model with zeroed weights for a valid config (validated here).
 * The caller owns *out and frees it with tfm_model_destroy. */
tfm_status tfm_model_create(const tfm_config *c, tfm_model **out, char *err, size_t errlen);
void tfm_model_destroy(tfm_model *m); /* NULL is a no-op */

/* Fills the weights with seeded uniform noise (+-scale/sqrt(in) for matrices,
 * 1 +- 0.1 for norm weights): the same seed gives the same model everywhere. */
void tfm_model_init_random(tfm_model *m, uint64_t seed);

/* Converts the weight matrices (wq, wk, wv, wo, w1, w2, w3 and the
 * classifier) to format f (tfm/quant.h: "bf16", "q8", "q4"; f32 is a
 * no-op) and frees their float32 copies; the embedding and the norms stay
 * float32.  Decode then reads the fewer bytes; prefill dequantises tiles
 * for sgemm.  Once quantised a model cannot be trained, saved or
 * quantised again (TFM_E_UNSUPPORTED); nor can a model with linear
 * layers be quantised (TFM_E_UNSUPPORTED).  q8 and q4 need dim and hidden_dim
 * multiples of 32 (TFM_E_SHAPE, with err). */
tfm_status tfm_model_quantize(tfm_model *m, int wformat, char *err, size_t errlen);
/* The model's matrix format (a tfm_wformat: 0 is f32) and the bytes all
 * its weights take. */
int tfm_model_wformat(const tfm_model *m);
size_t tfm_model_weight_bytes(const tfm_model *m);

/* Metadata: keys up to 47 bytes, values up to 207; set replaces. */
const char *tfm_model_meta_get(const tfm_model *m, const char *key);
tfm_status tfm_model_meta_set(tfm_model *m, const char *key, const char *value);

/* ---- per-sequence state ------------------------------------------------ */

/* The KV cache's element format (core/kv_cache.c), chosen per state:
 *   f32   4 bytes an element, as computed (the default).
 *   bf16  2 bytes: the float's top half, rounded to nearest even.
 *   q8    1 byte: each kv head's row of head_size values at one position
 *         (one key or value vector of one head) is int8 in [-127, 127]
 *         with one float32 scale, max|x| / 127, stored apart: head_size
 *         + 4 bytes a row, for any head_size.  Per head row, not per
 *         32-block as the q8 weights, since head sizes (48 in the 15M
 *         model) need not be multiples of 32.
 * New keys and values are converted as the forward writes them; the
 * attention kernels read the cache in its format (decode: dot products
 * and sums on the fly; prefill: one key block at a time dequantised into
 * the workspace's scratch), never a dequantised copy of the whole cache. */
typedef enum tfm_kv_format {
    TFM_KV_F32 = 0,
    TFM_KV_BF16,
    TFM_KV_Q8,
} tfm_kv_format;

/* "f32", "bf16", "q8"; NULL outside the enum.  Static storage. */
const char *tfm_kv_format_name(tfm_kv_format f);
/* The format named so; TFM_E_INVALID (and *out untouched) otherwise. */
tfm_status tfm_kv_format_parse(const char *name, tfm_kv_format *out);
/* Bytes one position of context takes in one sequence's cache: keys and
 * values of every softmax layer (linear layers keep no cache), scales
 * included.  0 for a bad format. */
size_t tfm_kv_bytes_per_token(const tfm_config *c, tfm_kv_format f);
/* Bytes of one sequence's recurrent state for all linear layers (S and z,
 * tfm_linattn_state_bytes per layer): independent of the context length;
 * 0 without linear layers. */
size_t tfm_linear_state_bytes(const tfm_config *c);

struct tfm_linattn_state;

typedef struct tfm_state {
    const tfm_model *model; /* borrowed */
    int pos;                /* tokens already in the cache */
    int max_seq;            /* capacity in positions */
    /* The cache has one layer per softmax layer, indexed by the layer's
     * ordinal among them (= the layer for an all-softmax model); NULL
     * arrays when every layer is linear. */
    float *key_cache;       /* f32: (softmax layer, max_seq, kv_dim); else NULL */
    float *value_cache;     /* f32: (softmax layer, max_seq, kv_dim); else NULL */
    tfm_kv_format kv_format;
    void *kq, *vq;          /* bf16: uint16_t, q8: int8_t (softmax layer, max_seq,
                             * kv_dim); f32: NULL */
    float *kscale, *vscale; /* q8: (softmax layer, max_seq, n_kv_heads); else NULL */
    size_t kv_bytes;        /* bytes the cache holds (max_seq positions) */
    struct tfm_linattn_state *lin; /* (n_linear) each linear layer's state, by
                                    * ordinal; their S and z in lin_mem */
    void *lin_mem;
    size_t lin_bytes;       /* bytes of lin_mem (tfm_linear_state_bytes) */
    double prefill_attn_seconds; /* attention time of this sequence's prefill
                                  * so far (all chunks, all layers); reset by
                                  * tfm_state_reset; see tfm_profile_add_prompt */
} tfm_state;

/* max_seq 0 means cfg.seq_len; larger than cfg.seq_len is TFM_E_RANGE.
 * The cache is float32 (tfm_state_create_fmt with TFM_KV_F32). */
tfm_status tfm_state_create(const tfm_model *m, int max_seq, tfm_state **out);
/* The same with the cache in format f (TFM_E_INVALID outside the enum).
 * The caller owns *out (tfm_state_destroy). */
tfm_status tfm_state_create_fmt(const tfm_model *m, int max_seq, tfm_kv_format f,
                                tfm_state **out);
void tfm_state_reset(tfm_state *s); /* forget the sequence: pos = 0 */
/* Makes dst hold src's first n positions (dst->pos = n): the KV cache rows
 * a prefill of the same n tokens would compute, copied.  Both states are
 * of the same model and cache format (else TFM_E_INVALID); n <= src->pos
 * and n <= dst->max_seq, else TFM_E_RANGE.  A linear layer's state sums
 * the whole prefix and cannot be cut: with linear layers only n ==
 * src->pos can be copied (else TFM_E_UNSUPPORTED). */
tfm_status tfm_state_copy(tfm_state *dst, const tfm_state *src, int n);
void tfm_state_destroy(tfm_state *s);

/* ---- workspace: scratch, threads, profile ------------------------------ */

typedef struct tfm_workspace tfm_workspace;

/* Scratch for up to max_rows token rows per call (a prefill chunk or a
 * decode batch) and n_threads compute threads (the caller's plus
 * n_threads - 1 workers).  The model is borrowed and must outlive it.
 * Not thread-safe: one caller thread at a time.  OpenBLAS is set to one
 * thread process-wide: products are split over the workspace's own threads,
 * so two workspaces (the engine's, a trainer's) never oversubscribe through
 * a hidden second pool. */
tfm_status tfm_workspace_create(const tfm_model *m, int max_rows, int n_threads,
                                tfm_workspace **out);
void tfm_workspace_destroy(tfm_workspace *ws);
int tfm_workspace_max_rows(const tfm_workspace *ws);
int tfm_workspace_threads(const tfm_workspace *ws);
/* The profile the forward writes into; owned by the workspace, enabled at
 * creation. */
tfm_profile *tfm_workspace_profile(tfm_workspace *ws);

/* Attention kernels (core/attention.c).  NAIVE materialises each head's
 * scores over the whole context, (rows, ctx) floats per thread; TILED walks
 * the keys in blocks with a running max and sum per query row
 * (FlashAttention's online softmax), (rows, block) floats per thread.  Both
 * give the same result to float rounding.  AUTO, the default, picks the
 * faster as measured (attention.c has the numbers): tiled for prefill,
 * the single-row naive path for decode. */
typedef enum tfm_attn_kernel {
    TFM_ATTN_AUTO = 0,
    TFM_ATTN_NAIVE,
    TFM_ATTN_TILED
} tfm_attn_kernel;

/* Selects the kernel for this workspace's later prefill and decode calls;
 * values outside the enum mean AUTO.  Same threading rule as the forward. */
void tfm_workspace_set_attention(tfm_workspace *ws, tfm_attn_kernel k);
/* "auto", "naive", "tiled"; "unknown" outside the enum.  Static storage. */
const char *tfm_attn_kernel_name(tfm_attn_kernel k);

/* Runs the prompt tokens[0..n) through the model at positions st->pos ...,
 * as matrix-matrix products in chunks of max_rows, appending to the KV cache
 * (st->pos += n).  logits (vocab), if not NULL, receives the last token's.
 * Errors: TFM_E_INVALID (token out of vocab, n < 0), TFM_E_RANGE (no room in
 * the cache); on error the state is unchanged. */
tfm_status tfm_prefill(tfm_workspace *ws, tfm_state *st, const int *tokens, int n,
                       float *logits);
/* The same, with the logits of every row: row_logits (n, vocab) receives
 * token i's at row i (what the model predicts after it), for a prompt's
 * own log-probabilities.  The classifier then costs n rows, not one. */
tfm_status tfm_prefill_rows(tfm_workspace *ws, tfm_state *st, const int *tokens, int n,
                            float *row_logits);

/* Advances n_seq sequences by one token each (tokens[i] at states[i]->pos),
 * one matmul per weight matrix over the batch.  logits is (n_seq, vocab).
 * n_seq <= max_rows; states must be distinct and of this model. */
tfm_status tfm_decode(tfm_workspace *ws, tfm_state *const *states, const int *tokens,
                      int n_seq, float *logits);

#endif /* TFM_MODEL_H */
