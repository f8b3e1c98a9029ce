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
 *
 * Before that, the logits go through logit_bias and the repetition,
 * presence and frequency penalties, which read the sequence's history: the
 * prompt given to tfm_sampler_set_prompt and every token the sampler has
 * returned since the last reset.  They apply under greedy too (argmax of
 * the processed logits).  A sequence:
 *
 *     tfm_sampler_params p = {.temperature = 0.8f, .top_p = 0.95f, .seed = 7,
 *                             .presence_penalty = 0.5f, .top_logprobs = 5};
 *     tfm_sampler_create(vocab_size, &p, &s);     // or _reset for a new one
 *     tfm_sampler_set_prompt(s, prompt, n_prompt); // for repetition_penalty
 *     for (...) id = tfm_sampler_sample_lp(s, logits, lp); // lp: 1 + 5 entries
 */
#ifndef TFM_SAMPLER_H
#define TFM_SAMPLER_H

#include <stdint.h>

#include "tfm/status.h"

/* A bias added to one token's logit before anything else (OpenAI's
 * logit_bias); a bias of -100 or less bans the token (its logit becomes
 * -inf), as OpenAI documents -100 to do. */
typedef struct tfm_logit_bias {
    int id;
    float bias;
} tfm_logit_bias;

/* A token and its log-probability (natural log). */
typedef struct tfm_token_logprob {
    int id;
    float logprob;
} tfm_token_logprob;

#define TFM_MAX_TOP_LOGPROBS 20

/* Zero-initialised fields past seed are all "off", so {T, k, p, seed}
 * initialisers keep their meaning. */
typedef struct tfm_sampler_params {
    float temperature; /* >= 0; 0 = greedy */
    int top_k;         /* >= 0; 0 = off */
    float top_p;       /* (0, 1]; 1 = off */
    uint64_t seed;
    float min_p;              /* [0, 1]; 0 = off: drop tokens whose probability is
                               * below min_p times the most likely one's */
    float repetition_penalty; /* 0 or 1 = off; else > 0: a token seen in the prompt
                               * (tfm_sampler_set_prompt) or generated so far has
                               * its logit divided by it when positive, multiplied
                               * when negative (CTRL, as Hugging Face and vLLM) */
    float presence_penalty;   /* [-2, 2]; 0 = off: subtracted once from the logit of
                               * each token generated so far (OpenAI) */
    float frequency_penalty;  /* [-2, 2]; 0 = off: subtracted per occurrence of a
                               * token generated so far (OpenAI) */
    const tfm_logit_bias *logit_bias; /* borrowed: must stay valid while sampling;
                                       * an id listed twice gets both biases */
    int n_logit_bias;                 /* >= 0 entries; ids outside the vocabulary, a
                                       * non-finite bias, or NULL with n > 0 are
                                       * TFM_E_INVALID at create/reset */
    int top_logprobs;                 /* [0, TFM_MAX_TOP_LOGPROBS]: alternatives that
                                       * tfm_sampler_sample_lp reports */
} tfm_sampler_params;

typedef struct tfm_sampler tfm_sampler;

/* TFM_E_INVALID for vocab_size < 1 or params out of range; TFM_E_NOMEM.
 * The scratch (about 21 bytes per vocabulary entry) is
 * allocated here, once.  *out is the caller's, freed by _destroy. */
tfm_status tfm_sampler_create(int vocab_size, const tfm_sampler_params *p, tfm_sampler **out);
/* New params and seed for the next sequence, and an empty token history
 * (no allocation; cost proportional to the tokens of the last sequence). */
tfm_status tfm_sampler_reset(tfm_sampler *s, const tfm_sampler_params *p);
void tfm_sampler_destroy(tfm_sampler *s);

/* The prompt's tokens, for repetition_penalty (call after reset; ids out of
 * range are ignored; ids borrowed for the call only; cost O(n), no
 * allocation).  Presence and frequency penalties count generated tokens
 * only, so with repetition_penalty off this has no effect on sampling. */
void tfm_sampler_set_prompt(tfm_sampler *s, const int *ids, int n);

/* Samples a token id from logits (vocab_size floats, overwritten: they are
 * scratch after the call) and records it in the history the penalties
 * read.  The order of the steps: logit_bias, repetition penalty, presence
 * and frequency penalties; then greedy argmax (temperature 0) or
 * softmax(logits / temperature) restricted by top_k, top_p and min_p (in
 * that order) and drawn from. */
int tfm_sampler_sample(tfm_sampler *s, float *logits);

/* The same, and the log-probabilities: out[0] is the chosen token and its
 * log-probability, out[1 .. 1 + top_logprobs) the most likely tokens (the
 * largest first, the lower id first on ties).  The log-probabilities are
 * the log-softmax over the whole vocabulary of the logits the sampler
 * used: after logit_bias and the penalties, divided by the temperature when
 * it is above 0 (greedy: temperature 1), before top_k, top_p and min_p
 * truncate them.  A banned token has -inf.  out holds 1 + top_logprobs
 * entries (caller-owned); when top_logprobs exceeds the vocabulary the
 * entries past it are {-1, -inf}.  Logits without a finite maximum (all
 * NaN, -inf or banned, or a +inf) give the chosen token 0 and the others
 * -inf.  Plain greedy without logprobs stays one argmax: this call, a
 * bias or a penalty add the passes they need. */
int tfm_sampler_sample_lp(tfm_sampler *s, float *logits, tfm_token_logprob *out);

/* The log-probabilities the model gives token id after logits as they are
 * (no bias, no penalty, temperature 1: the model's own distribution, as a
 * prompt's tokens get them): out[0] = {id, its log-probability},
 * out[1 .. 1 + top_logprobs) the most likely, as tfm_sampler_sample_lp
 * orders them.  Reads logits only; records nothing, allocates nothing. */
void tfm_sampler_logprobs(tfm_sampler *s, const float *logits, int id, tfm_token_logprob *out);

/* Index of the largest value (the lowest index on ties); n >= 1. */
int tfm_argmax(const float *x, int n);

#endif /* TFM_SAMPLER_H */
