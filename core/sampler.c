/*
 * sampler.c — greedy, temperature, top-k, nucleus and min-p sampling, the
 * logit processors (logit_bias, repetition / presence / frequency
 * penalties) and log-probabilities (see tfm/sampler.h).
 *
 * Design notes:
 * - All scratch is allocated by tfm_sampler_create, sized by vocab_size: the
 *   cand array, a per-token count of generated occurrences, a per-token
 *   prompt flag, and the list of distinct tokens touched (in the prompt or
 *   generated).  Sampling, set_prompt and reset never allocate.
 * - The penalties and reset walk the touched list, not the vocabulary, so
 *   they cost O(distinct tokens seen): a long vocabulary with penalties on
 *   pays nothing per token beyond the tokens already in the sequence.
 * - Plain greedy (temperature 0, no bias, no penalty, no logprobs) is one
 *   argmax, as before these options existed: flags set at create/reset skip
 *   the processors, and the history is kept only when a penalty will read
 *   it (the next reset clears it anyway), so set_prompt is a no-op without
 *   repetition_penalty.
 * - Candidates are ranked by (scaled logit desc, id asc).  Ranking by logit
 *   rather than by probability keeps top_k = 1 and a tiny top_p identical to
 *   argmax even when expf rounds two nearby logits to the same probability,
 *   and the id tie-break makes the order total, so results do not depend on
 *   how the heap happens to be laid out.
 * - Top-k and top-p need only the first few candidates in rank order, so
 *   instead of sorting the vocabulary, the candidates are heapified (O(n))
 *   and popped one at a time (O(log n) each) until k are taken or the
 *   nucleus mass is reached.  With top-p alone, tokens with probability below
 *   (1 - top_p) / (n - 1) are dropped first (llama2.c's cut-off): a token
 *   that small has fewer than n - 1 tokens after it, each no larger, so they
 *   cannot fill the 1 - top_p the nucleus leaves out.  The most likely token
 *   always stays (llama2.c drops everything when top_p <= 1/n).
 * - min_p comes last: the nucleus is in rank order, so it is a prefix cut;
 *   alone, it is one filtering pass (the best token has p = 1).
 * - Probabilities are left unnormalised (exp(l - max) / T, the top one 1.0);
 *   thresholds and the random draw are scaled by the relevant mass instead.
 *   The log-probabilities take the same scaled logits and a log-sum-exp
 *   accumulated in double in the same pass.
 * - RNG: xorshift64* (as llama2.c) seeded through splitmix64, so nearby seeds
 *   give unrelated streams and seed 0 works.  Floats are drawn from 24 bits.
 * - Logits with NaN or infinities cannot make the sampler return an id out of
 *   range: NaN counts as impossible and a degenerate distribution falls back
 *   to argmax.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "tfm/sampler.h"

typedef struct cand {
    float logit; /* scaled by 1/temperature: the rank key */
    float p;     /* unnormalised probability */
    int id;
} cand;

struct tfm_sampler {
    int vocab_size;
    tfm_sampler_params params;
    uint64_t rng;
    cand *cands;           /* (vocab_size) scratch */
    int *count;            /* (vocab_size) occurrences of each token generated */
    unsigned char *prompt; /* (vocab_size) 1: the token is in the prompt */
    int *touched;          /* (vocab_size) distinct ids with count > 0 or prompt set */
    int n_touched;
    int process; /* the params have a bias or a penalty: the greedy fast path is off */
    int history; /* the params have a penalty: the history is kept (else nothing reads it
                  * before the next reset clears it) */
    int plain_greedy; /* temperature 0 and no processing: tfm_sampler_sample is argmax */
};

static int rep_on(const tfm_sampler_params *p)
{
    return p->repetition_penalty != 0.0f && p->repetition_penalty != 1.0f;
}

static int penalties_on(const tfm_sampler_params *p)
{
    return rep_on(p) || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
}

/* Written so that NaN fails every range test. */
static int params_valid(const tfm_sampler_params *p, int vocab_size)
{
    if (!p || !isfinite(p->temperature) || !(p->temperature >= 0.0f) || p->top_k < 0 ||
        !(p->top_p > 0.0f && p->top_p <= 1.0f) || !(p->min_p >= 0.0f && p->min_p <= 1.0f) ||
        !isfinite(p->repetition_penalty) || !(p->repetition_penalty >= 0.0f) ||
        !(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f) ||
        !(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f) ||
        p->top_logprobs < 0 || p->top_logprobs > TFM_MAX_TOP_LOGPROBS || p->n_logit_bias < 0 ||
        (p->n_logit_bias > 0 && !p->logit_bias))
        return 0;
    for (int i = 0; i < p->n_logit_bias; i++)
        if (p->logit_bias[i].id < 0 || p->logit_bias[i].id >= vocab_size ||
            !isfinite(p->logit_bias[i].bias))
            return 0;
    return 1;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static void seed_rng(tfm_sampler *s, uint64_t seed)
{
    s->rng = splitmix64(seed);
    if (s->rng == 0) /* xorshift's one fixed point */
        s->rng = 0x2545F4914F6CDD1Dull;
}

static uint32_t rng_u32(tfm_sampler *s)
{
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (uint32_t)((s->rng * 0x2545F4914F6CDD1Dull) >> 32);
}

static float rng_f32(tfm_sampler *s) /* [0, 1) */
{
    return (float)(rng_u32(s) >> 8) / 16777216.0f;
}

/* The params and the flags derived from them; the RNG restarts. */
static void set_params(tfm_sampler *s, const tfm_sampler_params *p)
{
    s->params = *p;
    s->process = p->n_logit_bias > 0 || penalties_on(p);
    s->history = penalties_on(p);
    s->plain_greedy = p->temperature == 0.0f && !s->process;
    seed_rng(s, p->seed);
}

tfm_status tfm_sampler_create(int vocab_size, const tfm_sampler_params *p, tfm_sampler **out)
{
    if (!out)
        return TFM_E_INVALID;
    *out = NULL;
    if (vocab_size < 1 || !params_valid(p, vocab_size))
        return TFM_E_INVALID;
    size_t n = (size_t)vocab_size;
    tfm_sampler *s = calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->cands = malloc(n * sizeof *s->cands);
    s->count = calloc(n, sizeof *s->count);
    s->prompt = calloc(n, sizeof *s->prompt);
    s->touched = malloc(n * sizeof *s->touched);
    if (!s->cands || !s->count || !s->prompt || !s->touched)
        goto fail;
    s->vocab_size = vocab_size;
    set_params(s, p);
    *out = s;
    return TFM_OK;
fail:
    tfm_sampler_destroy(s);
    return TFM_E_NOMEM;
}

tfm_status tfm_sampler_reset(tfm_sampler *s, const tfm_sampler_params *p)
{
    if (!s || !params_valid(p, s->vocab_size))
        return TFM_E_INVALID;
    for (int i = 0; i < s->n_touched; i++) {
        int id = s->touched[i];
        s->count[id] = 0;
        s->prompt[id] = 0;
    }
    s->n_touched = 0;
    set_params(s, p);
    return TFM_OK;
}

void tfm_sampler_destroy(tfm_sampler *s)
{
    if (!s)
        return;
    free(s->cands);
    free(s->count);
    free(s->prompt);
    free(s->touched);
    free(s);
}

/* Each id enters the touched list once, when it first gets a count or a
 * prompt flag, so the list never outgrows vocab_size. */
static void touch(tfm_sampler *s, int id)
{
    if (!s->count[id] && !s->prompt[id])
        s->touched[s->n_touched++] = id;
}

void tfm_sampler_set_prompt(tfm_sampler *s, const int *ids, int n)
{
    if (!s || !ids || !rep_on(&s->params))
        return; /* only repetition_penalty reads the prompt */
    for (int i = 0; i < n; i++) {
        int id = ids[i];
        if (id < 0 || id >= s->vocab_size)
            continue;
        touch(s, id);
        s->prompt[id] = 1;
    }
}

static void record(tfm_sampler *s, int id)
{
    if (!s->history || id < 0 || id >= s->vocab_size)
        return;
    touch(s, id);
    if (s->count[id] < INT_MAX)
        s->count[id]++;
}

static int argmax_scalar(const float *x, int n)
{
    int best = 0;
    float bv = x[0];
    for (int i = 1; i < n; i++) {
        /* strict >: the lowest index wins ties; a NaN best is replaced */
        if (x[i] > bv || bv != bv) {
            best = i;
            bv = x[i];
        }
    }
    return best;
}

int tfm_argmax(const float *x, int n)
{
    if (!x || n < 1)
        return -1;
#if defined(__AVX512F__)
    /* Greedy decode scans the whole vocabulary per token (32000 floats):
     * a vector max that skips NaN (MAXPS returns its second operand when
     * the first is NaN), then the first index equal to it: the same answer
     * as the scalar loop, which handles what this cannot (all NaN). */
    if (n >= 64) {
        __m512 m = _mm512_set1_ps(-INFINITY);
        int i = 0;
        for (; i + 16 <= n; i += 16)
            m = _mm512_max_ps(_mm512_loadu_ps(x + i), m);
        float best = _mm512_reduce_max_ps(m);
        for (; i < n; i++)
            best = x[i] > best ? x[i] : best;
        __m512 vb = _mm512_set1_ps(best);
        for (i = 0; i + 16 <= n; i += 16) {
            __mmask16 eq = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), vb, _CMP_EQ_OQ);
            if (eq)
                return i + __builtin_ctz(eq);
        }
        for (; i < n; i++)
            if (x[i] == best)
                return i;
    }
#endif
    return argmax_scalar(x, n);
}

/* ---- a max-heap of candidates in rank order ------------------------------- */

static int ranks_before(const cand *a, const cand *b)
{
    if (a->logit != b->logit)
        return a->logit > b->logit;
    return a->id < b->id;
}

static void sift_down(cand *h, int n, int i)
{
    cand x = h[i];
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && ranks_before(&h[c + 1], &h[c]))
            c++;
        if (!ranks_before(&h[c], &x))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static void heapify(cand *h, int n)
{
    for (int i = n / 2 - 1; i >= 0; i--)
        sift_down(h, n, i);
}

/* Moves the best of the heap h[0..n) to h[n-1] (heapsort's step), so after
 * k pops h[n-k..n) holds the best k, best last. */
static void heap_pop_to_end(cand *h, int n)
{
    cand top = h[0];
    h[0] = h[n - 1];
    h[n - 1] = top;
    sift_down(h, n - 1, 0);
}

/* Draws from c[0..n) with weights p whose sum is mass. */
static int draw(tfm_sampler *s, const cand *c, int n, float mass)
{
    float r = rng_f32(s) * mass;
    float cdf = 0.0f;
    for (int i = 0; i < n; i++) {
        cdf += c[i].p;
        if (r < cdf)
            return c[i].id;
    }
    /* rounding left r >= cdf: the last token with any weight */
    for (int i = n - 1; i > 0; i--)
        if (c[i].p > 0.0f)
            return c[i].id;
    return c[0].id;
}

/* ---- logit processors ------------------------------------------------------- */

/* logit_bias, then the repetition penalty, then presence and frequency, in
 * place: the order tfm/sampler.h documents.  A ban is -inf, which every
 * later step keeps (-inf * rp, -inf - x). */
static void process(tfm_sampler *s, float *logits)
{
    const tfm_sampler_params *p = &s->params;
    for (int i = 0; i < p->n_logit_bias; i++) {
        const tfm_logit_bias *b = &p->logit_bias[i];
        logits[b->id] = b->bias <= -100.0f ? -INFINITY : logits[b->id] + b->bias;
    }
    if (!penalties_on(p))
        return;
    int rep = rep_on(p);
    float rp = p->repetition_penalty, pres = p->presence_penalty, freq = p->frequency_penalty;
    for (int i = 0; i < s->n_touched; i++) {
        int id = s->touched[i];
        float l = logits[id];
        if (rep) /* the prompt's tokens and the generated ones alike */
            l = l > 0.0f ? l / rp : l * rp;
        int c = s->count[id];
        if (c > 0)
            l -= pres + freq * (float)c;
        logits[id] = l;
    }
}

/* ---- softmax and truncation -------------------------------------------------- */

/* c[i] = {(logits[i] - mx) / T, its exp, i}, NaN counting as impossible.
 * Returns the mass in float (what the draw scales by) and, in *dmass, the
 * same sum in double for the log-sum-exp. */
static float softmax_cands(cand *c, const float *logits, int n, float mx, float T, double *dmass)
{
    float mass = 0.0f;
    double dm = 0.0;
    for (int i = 0; i < n; i++) {
        float l = (logits[i] - mx) / T;
        float p = expf(l);
        if (!(p >= 0.0f)) { /* NaN logit, or inf - inf */
            l = -INFINITY;
            p = 0.0f;
        }
        c[i].logit = l;
        c[i].p = p;
        c[i].id = i;
        mass += p;
        dm += p;
    }
    *dmass = dm;
    return mass;
}

/* Restricts c[0..n) (in id order, mass > 0) by top_k, top_p and min_p and
 * draws from what is left. */
static int pick(tfm_sampler *s, cand *c, int n, float mass, int best)
{
    const tfm_sampler_params *prm = &s->params;
    int k = prm->top_k > 0 && prm->top_k < n ? prm->top_k : n;
    int topp = prm->top_p < 1.0f;
    float minp = prm->min_p;
    if (k == n && !topp) {
        if (!(minp > 0.0f))
            return draw(s, c, n, mass);
        /* min_p alone: the best token has p = 1, so the threshold is min_p */
        int m = 0;
        float kept = 0.0f;
        for (int i = 0; i < n; i++)
            if (c[i].p >= minp || c[i].id == best) {
                kept += c[i].p;
                c[m++] = c[i];
            }
        return draw(s, c, m, kept);
    }

    int m = n;
    if (k == n && n > 1) {
        /* top-p alone: drop what cannot be in the nucleus (see the top) */
        float cutoff = (1.0f - prm->top_p) / (float)(n - 1) * mass;
        m = 0;
        for (int i = 0; i < n; i++)
            if (c[i].p >= cutoff || c[i].id == best)
                c[m++] = c[i];
    }
    heapify(c, m);

    /* Pop in rank order to the end of the array, at most k.  With top_k the
     * nucleus is measured against the top-k mass, so take all k first. */
    int taken = 0;
    float kmass = 0.0f;
    if (k < n) {
        for (; taken < k; taken++) {
            heap_pop_to_end(c, m - taken);
            kmass += c[m - taken - 1].p;
        }
    } else {
        kmass = mass;
    }
    float target = prm->top_p * kmass;
    float cum = 0.0f;
    int nucleus = 0;
    while (nucleus < m && nucleus < k) {
        if (nucleus >= taken) {
            heap_pop_to_end(c, m - taken);
            taken++;
        }
        cum += c[m - nucleus - 1].p;
        nucleus++;
        if (topp && cum >= target)
            break;
    }

    /* The nucleus is c[m-nucleus .. m), worst first: reverse it so the draw
     * walks in rank order. */
    cand *nuc = c + m - nucleus;
    for (int i = 0, j = nucleus - 1; i < j; i++, j--) {
        cand tmp = nuc[i];
        nuc[i] = nuc[j];
        nuc[j] = tmp;
    }
    if (minp > 0.0f) {
        /* in rank order p does not increase: min_p keeps a prefix */
        float thr = minp * nuc[0].p;
        int keep = 1;
        cum = nuc[0].p;
        while (keep < nucleus && nuc[keep].p >= thr)
            cum += nuc[keep++].p;
        nucleus = keep;
    }
    return draw(s, nuc, nucleus, cum);
}

/* ---- log-probabilities ------------------------------------------------------- */

/* top[0..K): the K best of c[0..n) (still in id order) by (logprob desc, id
 * asc), logprob = scaled logit - lse; {-1, -inf} past the vocabulary.  One
 * pass with an insertion into a sorted list of at most 20. */
static void top_alternatives(const cand *c, int n, double lse, int K, tfm_token_logprob *top)
{
    if (K <= 0)
        return;
    int have = 0;
    float worst = -INFINITY; /* the scaled logit of top[K-1] once the list is full */
    for (int i = 0; i < n; i++) {
        /* logprob is non-decreasing in the logit: most tokens stop here */
        if (have == K && c[i].logit < worst)
            continue;
        float lp = (float)((double)c[i].logit - lse);
        /* ids ascend: an equal logprob already listed has the lower id */
        if (have == K && !(lp > top[K - 1].logprob))
            continue;
        int j = have < K ? have++ : K - 1;
        for (; j > 0 && lp > top[j - 1].logprob; j--)
            top[j] = top[j - 1];
        top[j] = (tfm_token_logprob){c[i].id, lp};
        if (have == K)
            worst = c[top[K - 1].id].logit; /* c is in id order */
    }
    for (; have < K; have++)
        top[have] = (tfm_token_logprob){-1, -INFINITY};
}

/* No finite maximum (every logit NaN, -inf or banned, or a +inf): the
 * chosen token is certain, the others impossible. */
static void degenerate_logprobs(tfm_token_logprob *out, int id, int n, int K)
{
    out[0] = (tfm_token_logprob){id, 0.0f};
    if (K <= 0)
        return;
    out[1] = out[0];
    for (int i = 0, j = 1; j < K; i++, j++) {
        if (i == id)
            i++;
        out[1 + j] = (tfm_token_logprob){i < n ? i : -1, -INFINITY};
    }
}

/* ---- sampling ---------------------------------------------------------------- */

static int sample(tfm_sampler *s, float *logits, tfm_token_logprob *out)
{
    const tfm_sampler_params *prm = &s->params;
    int n = s->vocab_size;
    if (s->process)
        process(s, logits);
    int best = tfm_argmax(logits, n);
    int greedy = prm->temperature == 0.0f;
    if (greedy && !out) {
        record(s, best);
        return best;
    }

    /* softmax(logits / T), unnormalised: the best token gets p = 1.  The
     * log-probabilities use T = 1 under greedy. */
    float T = greedy ? 1.0f : prm->temperature;
    float mx = logits[best];
    double dmass;
    float mass = softmax_cands(s->cands, logits, n, mx, T, &dmass);
    double lse = log(dmass); /* of the scaled logits minus mx / T */
    int K = prm->top_logprobs;
    if (out && dmass > 0.0)
        top_alternatives(s->cands, n, lse, K, out + 1);

    int id = best;
    if (!greedy && mass > 0.0f && isfinite(mass))
        id = pick(s, s->cands, n, mass, best);

    if (out) {
        if (dmass > 0.0) {
            float l = (logits[id] - mx) / T; /* as softmax_cands computed it */
            out[0] = (tfm_token_logprob){id, isnan(l) ? -INFINITY : (float)((double)l - lse)};
        } else {
            degenerate_logprobs(out, id, n, K);
        }
    }
    record(s, id);
    return id;
}

int tfm_sampler_sample(tfm_sampler *s, float *logits)
{
    if (s->plain_greedy) /* the hot path of greedy decode: nothing but the argmax */
        return tfm_argmax(logits, s->vocab_size);
    return sample(s, logits, NULL);
}

int tfm_sampler_sample_lp(tfm_sampler *s, float *logits, tfm_token_logprob *out)
{
    return sample(s, logits, out);
}

void tfm_sampler_logprobs(tfm_sampler *s, const float *logits, int id, tfm_token_logprob *out)
{
    int n = s->vocab_size, K = s->params.top_logprobs;
    if (id < 0 || id >= n) {
        degenerate_logprobs(out, 0, n, K);
        out[0] = (tfm_token_logprob){id, -INFINITY};
        return;
    }
    float mx = logits[tfm_argmax(logits, n)];
    double dmass;
    softmax_cands(s->cands, logits, n, mx, 1.0f, &dmass);
    if (!(dmass > 0.0)) {
        degenerate_logprobs(out, id, n, K);
        return;
    }
    double lse = log(dmass);
    top_alternatives(s->cands, n, lse, K, out + 1);
    float l = s->cands[id].logit;
    out[0] = (tfm_token_logprob){id, isinf(l) ? -INFINITY : (float)((double)l - lse)};
}
