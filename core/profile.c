/*
 * profile.c — op accounting tables (see tfm/profile.h).
 *
 * The forward code records into a profile through tfm__prof_* (internal.h),
 * which are static inline so that a disabled profile costs one branch.
 */
#include "tfm/profile.h"

#include <math.h>
#include <string.h>
#include <time.h>

const char *tfm_op_class_name(tfm_op_class c)
{
    static const char *names[] = {"tensor_contraction", "normalization", "elementwise"};
    return (unsigned)c < TFM_CLASS_COUNT ? names[c] : "unknown";
}

const char *tfm_component_name(tfm_component c)
{
    static const char *names[] = {"attention", "mlp", "other"};
    return (unsigned)c < TFM_COMP_COUNT ? names[c] : "unknown";
}

const char *tfm_phase_name(tfm_phase p)
{
    static const char *names[] = {"prefill", "decode", "train"};
    return (unsigned)p < TFM_PHASE_COUNT ? names[p] : "unknown";
}

const char *tfm_attn_kind_name(tfm_attn_kind k)
{
    static const char *names[] = {"naive", "tiled", "exact", "linear"};
    return (unsigned)k < TFM_ATTN_KIND_COUNT ? names[k] : "unknown";
}

int tfm_ctx_bucket_le(int b) { return 64 << b; }

int tfm_ctx_bucket(int n)
{
    int b = 0;
    while (b < TFM_CTX_BUCKETS - 1 && n > (64 << b))
        b++;
    return b;
}

void tfm_profile_reset(tfm_profile *p)
{
    int en = p->enabled;
    memset(p, 0, sizeof *p);
    p->enabled = en;
}

void tfm_profile_add(tfm_profile *dst, const tfm_profile *src)
{
    for (int ph = 0; ph < TFM_PHASE_COUNT; ph++) {
        for (int c = 0; c < TFM_CLASS_COUNT; c++) {
            dst->seconds[ph][c] += src->seconds[ph][c];
            dst->flops[ph][c] += src->flops[ph][c];
        }
        for (int c = 0; c < TFM_COMP_COUNT; c++)
            dst->comp_seconds[ph][c] += src->comp_seconds[ph][c];
        for (int b = 0; b < TFM_CTX_BUCKETS; b++) {
            dst->attn_seconds[ph][b] += src->attn_seconds[ph][b];
            dst->attn_flops[ph][b] += src->attn_flops[ph][b];
            dst->attn_calls[ph][b] += src->attn_calls[ph][b];
            for (int k = 0; k < TFM_ATTN_KIND_COUNT; k++) {
                dst->attn_kind_seconds[ph][k][b] += src->attn_kind_seconds[ph][k][b];
                dst->attn_kind_flops[ph][k][b] += src->attn_kind_flops[ph][k][b];
                dst->attn_kind_calls[ph][k][b] += src->attn_kind_calls[ph][k][b];
            }
        }
        dst->tokens[ph] += src->tokens[ph];
        if (src->attn_peak_bytes[ph] > dst->attn_peak_bytes[ph])
            dst->attn_peak_bytes[ph] = src->attn_peak_bytes[ph];
    }
    for (int b = 0; b < TFM_CTX_BUCKETS; b++) {
        dst->prompt_attn_seconds[b] += src->prompt_attn_seconds[b];
        dst->prompt_tokens[b] += src->prompt_tokens[b];
        dst->prompts[b] += src->prompts[b];
    }
}

double tfm_profile_total_seconds(const tfm_profile *p, tfm_phase ph)
{
    double s = 0;
    for (int c = 0; c < TFM_CLASS_COUNT; c++)
        s += p->seconds[ph][c];
    return s;
}

void tfm_profile_add_prompt(tfm_profile *p, int n_tokens, double attn_seconds)
{
    if (!p || !p->enabled || n_tokens < 1)
        return;
    int b = tfm_ctx_bucket(n_tokens);
    p->prompt_attn_seconds[b] += attn_seconds;
    p->prompt_tokens[b] += n_tokens;
    p->prompts[b] += 1;
}

double tfm_profile_cost_exponent(const tfm_profile *p, int min_tokens)
{
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int n = 0;
    for (int b = 0; b < TFM_CTX_BUCKETS; b++) {
        if (!p->prompts[b] || p->prompt_attn_seconds[b] <= 0)
            continue;
        double len = p->prompt_tokens[b] / (double)p->prompts[b];
        if (len < min_tokens)
            continue;
        double x = log(len), y = log(p->prompt_attn_seconds[b] / (double)p->prompts[b]);
        sx += x, sy += y, sxx += x * x, sxy += x * y;
        n++;
    }
    double den = n * sxx - sx * sx;
    if (n < 2 || den <= 0)
        return NAN;
    return (n * sxy - sx * sy) / den;
}

double tfm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
