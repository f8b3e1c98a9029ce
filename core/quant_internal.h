/*
 * quant_internal.h — between quant.c (formats, reference, dispatch) and
 * quant_avx512.c (the kernels).
 */
#ifndef TFM_QUANT_INTERNAL_H
#define TFM_QUANT_INTERNAL_H

#include "tfm/quant.h"

/* What this CPU can run (checked once). */
int tfm__cpu_avx512_vnni(void); /* AVX512F, BW, VL, VNNI, F16C */
int tfm__cpu_avx512_bf16(void); /* AVX512F, BW, VL, BF16 */

/* tfm_qmatmul_rows for one format (xq prepared by tfm_qx_prepare). */
void tfm__qrows_ref(const tfm_qmat *w, float *y, int ldy, const float *x, const void *xq, int B,
                    int r0, int r1);
void tfm__qrows_bf16_avx512(const tfm_qmat *w, float *y, int ldy, const void *xq, int B, int r0,
                            int r1);
void tfm__qrows_q8_avx512(const tfm_qmat *w, float *y, int ldy, const void *xq, int B, int r0,
                          int r1);
void tfm__qrows_q4_avx512(const tfm_qmat *w, float *y, int ldy, const void *xq, int B, int r0,
                          int r1);

#endif
