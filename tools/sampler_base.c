/*
 * sampler_base.c — the sampler as it was before issue 12's options (commit
 * 12e3009, core/sampler.c, verbatim below the renames), kept only so that
 * `attn bench-sampler` can time today's greedy path against it in the same
 * binary.  Its public names become base_* (tools/sampler_base.h); it reads
 * only the first four fields of tfm_sampler_params.  Not used by attnd.
 */
#define tfm_sampler base_sampler
#define tfm_sampler_create base_sampler_create
#define tfm_sampler_reset base_sampler_reset
#define tfm_sampler_destroy base_sampler_destroy
#define tfm_sampler_sample base_sampler_sample
#define tfm_sampler_sample_lp base_sampler_sample_lp
#define tfm_sampler_set_prompt base_sampler_set_prompt
#define tfm_argmax base_argmax
#include "sampler_base.h"

/* ---- 12e3009:core/sampler.c ------------------------------------------------ */
/*
 * sampler.c — greedy, temperature, top-k and nucleus sampling (see
 * tfm/sampler.h).
 *
 * Design notes:
 * - The only scratch is one cand array of vocab_size entries, allocated by
 *   tfm_sampler_create; tfm_sampler_sample never allocates.
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
 * - Probabilities are left unnormalised (exp(l - max) / T, the top one 1.0);
 *   thresholds and the random draw are scaled by the relevant mass instead.
 * - RNG: xorshift64* (as llama2.c) seeded through splitmix64, so nearby seeds
 *   give unrelated streams and seed 0 works.  Floats are drawn from 24 bits.
 * - Logits with NaN or infinities cannot make the sampler return an id out of
 *   range: NaN counts as impossible and a degenerate distribution falls back
 *   to argmax.
 */
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
    cand *cands; /* (vocab_size) scratch */
};

static int params_valid(const tfm_sampler_params *p)
{
    return p && isfinite(p->temperature) && p->temperature >= 0.0f && p->top_k >= 0 &&
           p->top_p > 0.0f && p->top_p <= 1.0f; /* NaN top_p fails both */
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

tfm_status tfm_sampler_create(int vocab_size, const tfm_sampler_params *p, tfm_sampler **out)
{
    if (!out)
        return TFM_E_INVALID;
    *out = NULL;
    if (vocab_size < 1 || !params_valid(p))
        return TFM_E_INVALID;
    tfm_sampler *s = calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->cands = malloc((size_t)vocab_size * sizeof *s->cands);
    if (!s->cands)
        goto fail;
    s->vocab_size = vocab_size;
    s->params = *p;
    seed_rng(s, p->seed);
    *out = s;
    return TFM_OK;
fail:
    tfm_sampler_destroy(s);
    return TFM_E_NOMEM;
}

tfm_status tfm_sampler_reset(tfm_sampler *s, const tfm_sampler_params *p)
{
    if (!s || !params_valid(p))
        return TFM_E_INVALID;
    s->params = *p;
    seed_rng(s, p->seed);
    return TFM_OK;
}

void tfm_sampler_destroy(tfm_sampler *s)
{
    if (!s)
        return;
    free(s->cands);
    free(s);
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

int tfm_sampler_sample(tfm_sampler *s, float *logits)
{
    const tfm_sampler_params *prm = &s->params;
    int n = s->vocab_size;
    int best = tfm_argmax(logits, n);
    if (prm->temperature == 0.0f)
        return best;

    /* softmax(logits / T), unnormalised: the best token gets p = 1 */
    cand *c = s->cands;
    float mx = logits[best];
    float mass = 0.0f;
    for (int i = 0; i < n; i++) {
        float l = (logits[i] - mx) / prm->temperature;
        float p = expf(l);
        if (!(p >= 0.0f)) { /* NaN logit, or inf - inf */
            l = -INFINITY;
            p = 0.0f;
        }
        c[i].logit = l;
        c[i].p = p;
        c[i].id = i;
        mass += p;
    }
    if (!(mass > 0.0f) || !isfinite(mass))
        return best;

    int k = prm->top_k > 0 && prm->top_k < n ? prm->top_k : n;
    int topp = prm->top_p < 1.0f;
    if (k == n && !topp)
        return draw(s, c, n, mass);

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
    return draw(s, nuc, nucleus, cum);
}
