/*
 * tfm/sampler.h — picking the next token from logits.
 *
 * temperature 0 is greedy (argmax, the lowest id on ties, as llama2.c);
 * otherwise softmax(logits / temperature), restricted to the top_k most
 * likely tokens (0: off) and then to the smallest set whose probability
 * reaches top_p (1: off), renormalised, and sampled with a seeded xorshift
 * generator: the same params and seed give the same tokens on every run and
 * machine.  The sampler owns scratch sized to the vocabulary at creation, so
 * sampling never allocates.  One sampler per sequence; not thread-safe.
 */
#ifndef TFM_SAMPLER_H
#define TFM_SAMPLER_H

#include <stdint.h>

#include "tfm/status.h"

typedef struct tfm_sampler_params {
    float temperature; /* >= 0; 0 = greedy */
    int top_k;         /* >= 0; 0 = off */
    float top_p;       /* (0, 1]; 1 = off */
    uint64_t seed;
} tfm_sampler_params;

typedef struct tfm_sampler tfm_sampler;

/* TFM_E_INVALID for vocab_size < 1 or params out of range. */
tfm_status tfm_sampler_create(int vocab_size, const tfm_sampler_params *p, tfm_sampler **out);
/* New params and seed for the next sequence (no allocation). */
tfm_status tfm_sampler_reset(tfm_sampler *s, const tfm_sampler_params *p);
void tfm_sampler_destroy(tfm_sampler *s);

/* Samples a token id from logits (vocab_size floats, overwritten: they are
 * scratch after the call). */
int tfm_sampler_sample(tfm_sampler *s, float *logits);

/* Index of the largest value (the lowest index on ties); n >= 1. */
int tfm_argmax(const float *x, int n);

#endif /* TFM_SAMPLER_H */
