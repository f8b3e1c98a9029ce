/* sampler_base.h — the pre-issue-12 sampler under base_* names, for
 * `attn bench-sampler` only (see sampler_base.c). */
#ifndef ATTN_SAMPLER_BASE_H
#define ATTN_SAMPLER_BASE_H

#include "tfm/sampler.h"

typedef struct base_sampler base_sampler;
tfm_status base_sampler_create(int vocab_size, const tfm_sampler_params *p, base_sampler **out);
void base_sampler_destroy(base_sampler *s);
int base_sampler_sample(base_sampler *s, float *logits);

#endif
