/*
 * tfm/quant.h — weights in fewer bytes: bf16, q8 and q4 matrices, and the
 * products decode and small batches make with them.
 *
 * Decode streams every weight once per token, so its speed is the memory
 * bandwidth divided by the bytes per weight.  The formats:
 *
 *   bf16  2 bytes a weight: the top half of the float32 (rounded to
 *         nearest even).  Products with vdpbf16ps (AVX512_BF16), the
 *         activations rounded to bf16 too.
 *   q8    blocks of 32 weights: 32 int8 in [-127, 127] and one fp16 scale,
 *         w = scale * q (llama.cpp's Q8_0 values, its scales stored apart):
 *         1.0625 bytes a weight.  The activations are quantised the same
 *         way, block by block, to int8 with a float32 scale, and each
 *         block's integer dot product (vpdpbusd, AVX512_VNNI) is scaled
 *         and summed in float32.
 *   q4    blocks of 32 weights: 16 bytes of 4-bit values (weight i in the
 *         low nibble of byte i, weight i + 16 in its high nibble, as
 *         llama.cpp's Q4_0; q = nibble - 8, in [-8, 7]) and one fp16
 *         scale: 0.5625 bytes a weight; products as q8's.
 *
 * A matrix is W (n rows, d columns), row-major, as every weight matrix of
 * the model: Y (B, n) = X (B, d) · Wᵀ.  q8 and q4 need d % 32 == 0 (a
 * model's other matrices stay as they are).  Each kernel has a plain C
 * reference computing the same integer products (so q8 and q4 agree with
 * it to float rounding of the block sums); the AVX-512 path is chosen at
 * run time when the CPU has AVX512F/BW/VL and VNNI (q8, q4) or BF16
 * (bf16), and TFM_QUANT_ISA=ref in the environment forces the reference.
 * Nothing here allocates: buffers are the caller's.
 */
#ifndef TFM_QUANT_H
#define TFM_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "tfm/status.h"

typedef enum tfm_wformat {
    TFM_WF_F32 = 0,
    TFM_WF_BF16,
    TFM_WF_Q8,
    TFM_WF_Q4,
} tfm_wformat;

/* Weights per block of q8 and q4. */
#define TFM_QK 32

/* A weight matrix in one format (borrowed pointers). */
typedef struct tfm_qmat {
    tfm_wformat fmt;
    int n, d;              /* rows (outputs) and columns (inputs) */
    const void *data;      /* f32: n*d floats; bf16: n*d uint16; q8: n*d int8;
                            * q4: n*d/2 bytes */
    const uint16_t *scale; /* q8, q4: n*d/32 fp16 scales, row by row; else NULL */
} tfm_qmat;

/* "f32", "bf16", "q8", "q4"; NULL for anything else. */
const char *tfm_wformat_name(tfm_wformat f);
/* The format named so; TFM_E_INVALID for another name. */
tfm_status tfm_wformat_parse(const char *name, tfm_wformat *out);

/* Bytes of a matrix's data and of its scales in format f (0 scale bytes
 * for f32 and bf16).  TFM_E_SHAPE when f needs d % 32 == 0 and d is not. */
tfm_status tfm_qmat_bytes(tfm_wformat f, int n, int d, size_t *data_bytes, size_t *scale_bytes);

/* Quantises w (n, d) row-major into data (and scales), sized by
 * tfm_qmat_bytes.  A q8 block's scale is max|w| / 127, a q4 block's the
 * weight of largest magnitude / -8 (llama.cpp's Q4_0), as fp16; each
 * weight rounded to nearest: the round trip's error is at most half a
 * step of its block (plus the scale's fp16 rounding). */
tfm_status tfm_quantize(tfm_wformat f, const float *w, int n, int d, void *data, uint16_t *scale);

/* Rows [r0, r1) of m as float32 into out ((r1 - r0), d). */
void tfm_dequantize_rows(const tfm_qmat *m, int r0, int r1, float *out);

/* ---- products -------------------------------------------------------------
 * tfm_qx_prepare converts the activations once per product (they are
 * shared by every row): bf16 for bf16 weights, int8 blocks with float
 * scales for q8 and q4, nothing for f32.  Then tfm_qmatmul_rows computes
 * the output columns [r0, r1) for all B rows (threads split the rows). */

/* Bytes of prepared activations for B rows of d. */
size_t tfm_qx_bytes(tfm_wformat f, int B, int d);
void tfm_qx_prepare(tfm_wformat f, const float *x, int B, int d, void *xq);
/* y[b * ldy + r] = X[b] · W[r] for r in [r0, r1), b < B; x is the float
 * input (f32 weights) and xq its prepared form (the others). */
void tfm_qmatmul_rows(const tfm_qmat *w, float *y, int ldy, const float *x, const void *xq, int B,
                      int r0, int r1);

/* The instruction set the products use now: "avx512" or "ref". */
const char *tfm_quant_isa(void);
/* Forces the reference (1) or the best the CPU has (0), for tests and
 * benchmarks; returns the previous setting.  Not thread-safe with
 * products running. */
int tfm_quant_force_ref(int on);

/* fp16 and bf16 conversions (round to nearest even). */
uint16_t tfm_f32_to_f16(float f);
float tfm_f16_to_f32(uint16_t h);
uint16_t tfm_f32_to_bf16(float f);
float tfm_bf16_to_f32(uint16_t h);

#endif
