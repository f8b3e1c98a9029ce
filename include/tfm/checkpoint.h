/*
 * tfm/checkpoint.h — model files: safetensors and llama2.c's legacy .bin.
 *
 * safetensors: an 8-byte little-endian header length, a JSON header (parsed
 * with jansson, the one core file that includes it), then raw little-endian
 * float32 tensors.  Tensor names follow Meta's Llama layout, one tensor per
 * layer: tok_embeddings.weight, layers.{i}.attention_norm.weight,
 * layers.{i}.attention.w{q,k,v,o}.weight, layers.{i}.ffn_norm.weight,
 * layers.{i}.feed_forward.w{1,2,3}.weight, norm.weight, output.weight (absent
 * when the classifier is shared).  `__metadata__` holds the config (dim,
 * hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len,
 * shared_classifier, norm_eps, rope_theta), the tokenizer kind ("byte" or
 * "llama2c") and the model's free-form meta entries, all as strings.
 *
 * Linear-attention layers (tfm_config.linear_layers): "mixer" in the
 * metadata, "softmax" (also when absent), "linear" (every layer) or one
 * word per layer ("linear,softmax"), and "feature_dim"; each linear layer
 * l has a tensor layers.{l}.attn.feature, F32 [feature_dim, head_size].
 * Unknown words, a list of the wrong length, a missing or misshaped
 * feature tensor are refused (TFM_E_FORMAT, TFM_E_SHAPE); a llama2.c file
 * or a quantised model cannot hold such layers (TFM_E_UNSUPPORTED).
 *
 * Quantised models (tfm_model_quantize: bf16, q8, q4) are saved as
 * safetensors too, with "weights" in `__metadata__` naming the format: the
 * embedding and the norms F32, each matrix as BF16 [n, d], I8 [n, d] (q8)
 * or U8 [n, d/2] (q4, two weights a byte), q8 and q4 with a
 * "<name>.scales" F16 tensor [n, d/32] (core/checkpoint_quant.c).  Loading
 * one gives the model tfm_model_quantize makes of the float32 original,
 * byte for byte; every dtype, shape and span is checked before reading and
 * every scale must be finite (TFM_E_UNSUPPORTED for a wrong dtype,
 * TFM_E_SHAPE, TFM_E_FORMAT, TFM_E_TRUNCATED as below).
 *
 * llama2.c .bin: seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size, seq_len; a negative vocab_size means a separate classifier),
 * then the weights in run.c's order, including the unused RoPE tables.
 *
 * Writes are atomic: a temporary file in the same directory, fsync, rename,
 * fsync of the directory.  A truncated, oversized or corrupt file gives
 * TFM_E_TRUNCATED, TFM_E_FORMAT or TFM_E_SHAPE with a message in err naming
 * the problem; nothing here aborts on input.
 */
#ifndef TFM_CHECKPOINT_H
#define TFM_CHECKPOINT_H

#include <stddef.h>

#include "tfm/model.h"
#include "tfm/status.h"

typedef enum tfm_ckpt_format {
    TFM_CKPT_AUTO = 0, /* by content: safetensors header or llama2.c */
    TFM_CKPT_SAFETENSORS,
    TFM_CKPT_LLAMA2C,
} tfm_ckpt_format;

/* Loads a model; the caller owns *out.  A llama2.c file gets tokenizer kind
 * llama2c. */
tfm_status tfm_checkpoint_load(const char *path, tfm_ckpt_format fmt, tfm_model **out,
                               char *err, size_t errlen);

/* Writes m atomically.  TFM_CKPT_AUTO picks by extension (.bin: llama2.c,
 * else safetensors).  llama2.c files cannot carry metadata, norm_eps /
 * rope_theta other than the defaults, or quantised weights
 * (TFM_E_UNSUPPORTED). */
tfm_status tfm_checkpoint_save(const tfm_model *m, const char *path, tfm_ckpt_format fmt,
                               char *err, size_t errlen);

#endif /* TFM_CHECKPOINT_H */
