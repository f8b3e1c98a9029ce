/*
 * checkpoint_quant.h — core internals for quantised model files (the
 * safetensors layout of bf16, q8 and q4 models; see checkpoint_quant.c).
 * checkpoint.c owns the file format and the JSON; this describes which
 * tensors a quantised model has, and builds and checks the model.
 */
#ifndef TFM_CHECKPOINT_QUANT_H
#define TFM_CHECKPOINT_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"

/* One tensor of a quantised file: its name, safetensors dtype, shape, and
 * where its bytes live in the model (borrowed: the model's buffers). */
typedef struct tfm__qtensor {
    char name[80];
    const char *dtype; /* "F32", "BF16", "I8", "U8" or "F16" (static) */
    int ndim;
    size_t dims[2];
    void *ptr;
    uint64_t bytes;
} tfm__qtensor;

/* The tensors of quantised model m (m->q set) in file order: the
 * embedding, then each per-layer kind over the layers (the norms F32, a
 * matrix's data followed by its "<name>.scales" for q8 and q4), the final
 * norm, and "output.weight" with its scales unless the classifier is
 * shared (it is then quantised from the embedding on load:
 * tfm__qckpt_finish).  *out is malloc'd (the caller frees it); *n its
 * length.  TFM_E_NOMEM. */
tfm_status tfm__qckpt_plan(const tfm_model *m, tfm__qtensor **out, int *n);

/* Bytes the tensors of a (config, format) take in a file, or 0 for an
 * unusable pair: the loader's bound before it allocates. */
uint64_t tfm__qckpt_bytes(const tfm_config *c, int wformat);

/* After every tensor is read: refuses a recall model (TFM_E_UNSUPPORTED:
 * the trainer's forward it answers through is float32 only), non-finite
 * scales (TFM_E_FORMAT) and q8 values of -128 (outside the format's
 * [-127, 127]), then
 * quantises a shared classifier from the embedding. */
tfm_status tfm__qckpt_finish(tfm_model *m, char *err, size_t errlen);

/* model_quant.c: q laid out for config c in format f (matrices in the
 * order and at the offsets tfm_model_quantize uses), contents not set.
 * TFM_E_INVALID (f32 or unknown), TFM_E_SHAPE (q8/q4 and a dim not a
 * multiple of 32), TFM_E_NOMEM. */
tfm_status tfm__qweights_create(const tfm_config *c, int wformat, tfm_qweights **out, char *err,
                                size_t errlen);
/* model_quant.c: a quantised model with zeroed weights, shaped as
 * tfm_model_quantize leaves one (float32 embedding and norms, m->q in
 * format f, meta "weights"), for the loader to fill.  Caller owns *out. */
tfm_status tfm__model_create_quantized(const tfm_config *c, int wformat, tfm_model **out,
                                       char *err, size_t errlen);

#endif
