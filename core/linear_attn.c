/*
 * linear_attn.c — causal linear attention with Based's Taylor feature map:
 * chunked prefill, recurrent decode, the double reference, the backward and
 * the op count (see tfm/linear_attn.h for the maths and the API).
 *
 * Design notes.
 *  - Intra-chunk weights come from the closed form: phi(q).phi(k) =
 *    P(q.k) with P(a) = 1 + a/sqrt(f) + a^2/(2f), so the C x C block costs
 *    a C x C x f product plus a polynomial instead of C x C x F (F = 273
 *    for f = 16: 17 times less).  The reference sums over the F features
 *    explicitly, so the tests check this identity as well.
 *  - Only the inter-chunk term needs phi(Q) and phi(K) materialised:
 *    phi(Q) S (C x F x head_dim) and S += phi(K)^T V.
 *  - The state is per kv head; the query heads of a group read it in turn.
 *    Loops run kv head outermost so one head's S stays in cache across
 *    chunks.
 *  - The backward (linear in T) recomputes the forward.  Per chunk c with
 *    Sp, zp the state before it, N = w V + phi(Q) Sp, D = w 1 + phi(Q) zp
 *    + eps, y = N / D:
 *        dN = dy / D,  dD = -rowsum(dy * y) / D
 *        intra:  dw = mask(dN V^T + dD 1^T), da = dw * P'(a),
 *                dq += da K, dk += da^T Q, dv += w^T dN
 *        inter:  dphi(Q) = dN Sp^T + dD zp^T,  dS_c = phi(Q)^T dN,
 *                dz_c = phi(Q)^T dD, reaching every EARLIER chunk's keys:
 *                dphi(K) = V dS^T + 1 dz^T,  dv += phi(K) dS,
 *                with dS, dz summed over the later chunks.
 *    So: a forward sweep over the keys stores (Sp, zp) before each chunk,
 *    then a reverse sweep carries dS, dz.  Chunk order and head order are
 *    fixed: the same inputs give bit-identical gradients.
 *  - Nothing allocates; the state and every scratch belong to the caller.
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tfm/linear_attn.h"

/* ---- shape and feature map ------------------------------------------------ */

tfm_status tfm_linattn_shape_check(const tfm_linattn_shape *sh)
{
    if (!sh || sh->n_heads < 1 || sh->n_heads > TFM_LINATTN_MAX_HEADS || sh->n_kv_heads < 1 ||
        sh->n_kv_heads > sh->n_heads || sh->n_heads % sh->n_kv_heads != 0 || sh->f < 1 ||
        sh->f > TFM_LINATTN_MAX_F || sh->head_dim < 1 || sh->head_dim > TFM_LINATTN_MAX_HEAD_DIM)
        return TFM_E_INVALID;
    return TFM_OK;
}

size_t tfm_linattn_feature_dim(int f)
{
    if (f < 1 || f > TFM_LINATTN_MAX_F)
        return 0;
    return 1 + (size_t)f + (size_t)f * f;
}

/* the map's constants: c1 = f^-1/4 (linear block), c2 = 1/(sqrt 2 sqrt f) */
static float lin_scale(int f) { return (float)pow((double)f, -0.25); }
static float quad_scale(int f) { return (float)(1.0 / (sqrt(2.0) * sqrt((double)f))); }

/* phi of n rows of x (row stride ldx) into out (n, F).  2f + f^2 flops a row. */
static void phi_rows(const float *x, size_t ldx, int n, int f, float *out)
{
    size_t F = tfm_linattn_feature_dim(f);
    float c1 = lin_scale(f), c2 = quad_scale(f);
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *o = out + (size_t)r * F, *quad = o + 1 + f;
        o[0] = 1.0f;
        for (int a = 0; a < f; a++)
            o[1 + a] = xr[a] * c1;
        for (int a = 0; a < f; a++) {
            float ua = xr[a] * c2;
            for (int b = 0; b < f; b++)
                quad[(size_t)a * f + b] = ua * xr[b];
        }
    }
}

tfm_status tfm_linattn_feature_map(const float *x, int f, float *phi)
{
    if (!x || !phi || f < 1 || f > TFM_LINATTN_MAX_F)
        return TFM_E_INVALID;
    phi_rows(x, (size_t)f, 1, f, phi);
    return TFM_OK;
}

/* dx += J_phi(x)^T dphi for n rows: dx_a += c1 dphi_lin[a]
 * + c2 sum_b (dphi_quad[a][b] + dphi_quad[b][a]) x_b. */
static void phi_rows_backward(const float *x, size_t ldx, const float *dphi, int n, int f,
                              float *dx, size_t lddx)
{
    size_t F = tfm_linattn_feature_dim(f);
    float c1 = lin_scale(f), c2 = quad_scale(f);
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * ldx, *dp = dphi + (size_t)r * F;
        const float *dq = dp + 1 + f;
        float *d = dx + (size_t)r * lddx;
        for (int a = 0; a < f; a++) {
            float s = 0.0f;
            for (int b = 0; b < f; b++)
                s += (dq[(size_t)a * f + b] + dq[(size_t)b * f + a]) * xr[b];
            d[a] += c1 * dp[1 + a] + c2 * s;
        }
    }
}

/* ---- state ---------------------------------------------------------------- */

size_t tfm_linattn_state_bytes(const tfm_linattn_shape *sh)
{
    if (tfm_linattn_shape_check(sh) != TFM_OK)
        return 0;
    return sizeof(float) * (size_t)sh->n_kv_heads * tfm_linattn_feature_dim(sh->f) *
           ((size_t)sh->head_dim + 1);
}

tfm_status tfm_linattn_state_init(tfm_linattn_state *st, const tfm_linattn_shape *sh, void *mem,
                                  size_t bytes)
{
    if (!st || !mem || tfm_linattn_shape_check(sh) != TFM_OK ||
        (uintptr_t)mem % _Alignof(float) != 0)
        return TFM_E_INVALID;
    if (bytes < tfm_linattn_state_bytes(sh))
        return TFM_E_RANGE;
    size_t F = tfm_linattn_feature_dim(sh->f);
    st->shape = *sh;
    st->S = mem;
    st->z = st->S + (size_t)sh->n_kv_heads * F * sh->head_dim;
    tfm_linattn_state_reset(st);
    return TFM_OK;
}

void tfm_linattn_state_reset(tfm_linattn_state *st)
{
    if (!st || !st->S)
        return;
    memset(st->S, 0, tfm_linattn_state_bytes(&st->shape));
    st->n_tokens = 0;
}

static int same_shape(const tfm_linattn_shape *a, const tfm_linattn_shape *b)
{
    return a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads && a->f == b->f &&
           a->head_dim == b->head_dim;
}

tfm_status tfm_linattn_state_copy(tfm_linattn_state *dst, const tfm_linattn_state *src)
{
    if (!dst || !src || !dst->S || !src->S || tfm_linattn_shape_check(&src->shape) != TFM_OK ||
        !same_shape(&dst->shape, &src->shape))
        return TFM_E_INVALID;
    if (dst != src)
        memmove(dst->S, src->S, tfm_linattn_state_bytes(&src->shape));
    dst->n_tokens = src->n_tokens;
    return TFM_OK;
}

/* ---- prefill -------------------------------------------------------------- */

size_t tfm_linattn_prefill_scratch(const tfm_linattn_shape *sh, int chunk)
{
    if (tfm_linattn_shape_check(sh) != TFM_OK || chunk < 1 || chunk > TFM_LINATTN_MAX_CHUNK)
        return 0;
    size_t C = (size_t)chunk, F = tfm_linattn_feature_dim(sh->f);
    return C * (2 * F + C + 1);
}

/* w (n, n) := P(a) on and below the diagonal, 0 above; rowsum into D.
 * 5 flops an entry on the triangle. */
static void poly_mask(float *w, int n, int f, float *D)
{
    float c1 = 1.0f / sqrtf((float)f), c2 = 0.5f / (float)f;
    for (int t = 0; t < n; t++) {
        float *row = w + (size_t)t * n, s = 0.0f;
        for (int u = 0; u <= t; u++) {
            float a = row[u];
            row[u] = 1.0f + a * (c1 + a * c2);
            s += row[u];
        }
        for (int u = t + 1; u < n; u++)
            row[u] = 0.0f;
        D[t] = s;
    }
}

tfm_status tfm_linattn_prefill(tfm_linattn_state *st, int T, int chunk, const float *q,
                               const float *k, const float *v, float *out, float *scratch,
                               size_t scratch_floats)
{
    if (!st || !st->S || tfm_linattn_shape_check(&st->shape) != TFM_OK || T < 0 || chunk < 1 ||
        chunk > TFM_LINATTN_MAX_CHUNK || (T > 0 && (!q || !k || !v || !out || !scratch)))
        return TFM_E_INVALID;
    if (T == 0)
        return TFM_OK;
    const tfm_linattn_shape *sh = &st->shape;
    int C = chunk < T ? chunk : T;
    if (scratch_floats < tfm_linattn_prefill_scratch(sh, C))
        return TFM_E_RANGE;
    int H = sh->n_heads, Hkv = sh->n_kv_heads, G = H / Hkv, f = sh->f, hd = sh->head_dim;
    size_t F = tfm_linattn_feature_dim(f);
    size_t ldq = (size_t)H * f, ldk = (size_t)Hkv * f, ldv = (size_t)Hkv * hd,
           ldo = (size_t)H * hd;
    float *phk = scratch, *phq = phk + (size_t)C * F, *w = phq + (size_t)C * F,
          *D = w + (size_t)C * C;

    for (int g = 0; g < Hkv; g++) {
        float *S = st->S + (size_t)g * F * hd, *z = st->z + (size_t)g * F;
        for (int t0 = 0; t0 < T; t0 += C) {
            int n = T - t0 < C ? T - t0 : C;
            const float *kc = k + (size_t)t0 * ldk + (size_t)g * f;
            const float *vc = v + (size_t)t0 * ldv + (size_t)g * hd;
            phi_rows(kc, ldk, n, f, phk);
            for (int j = 0; j < G; j++) {
                int h = g * G + j;
                const float *qc = q + (size_t)t0 * ldq + (size_t)h * f;
                float *oc = out + (size_t)t0 * ldo + (size_t)h * hd;
                phi_rows(qc, ldq, n, f, phq);
                /* w = P(Q K^T) masked; D = w 1 */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, f, 1.0f, qc, (int)ldq,
                            kc, (int)ldk, 0.0f, w, n);
                poly_mask(w, n, f, D);
                /* out = w V + phi(Q) S;  D += phi(Q) z */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, n, 1.0f, w, n, vc,
                            (int)ldv, 0.0f, oc, (int)ldo);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, (int)F, 1.0f, phq,
                            (int)F, S, hd, 1.0f, oc, (int)ldo);
                cblas_sgemv(CblasRowMajor, CblasNoTrans, n, (int)F, 1.0f, phq, (int)F, z, 1, 1.0f,
                            D, 1);
                for (int t = 0; t < n; t++) {
                    float r = 1.0f / (D[t] + TFM_LINATTN_EPS), *o = oc + (size_t)t * ldo;
                    for (int x = 0; x < hd; x++)
                        o[x] *= r;
                }
            }
            /* S += phi(K)^T V;  z += sum of phi(K)'s rows */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)F, hd, n, 1.0f, phk,
                        (int)F, vc, (int)ldv, 1.0f, S, hd);
            for (int t = 0; t < n; t++) {
                const float *p = phk + (size_t)t * F;
                for (size_t i = 0; i < F; i++)
                    z[i] += p[i];
            }
        }
    }
    st->n_tokens += T;
    return TFM_OK;
}

/* ---- decode --------------------------------------------------------------- */

/* row += s * x over n */
static inline void axpy(float *row, float s, const float *x, int n)
{
    for (int i = 0; i < n; i++)
        row[i] += s * x[i];
}

tfm_status tfm_linattn_decode(tfm_linattn_state *st, const float *q, const float *k,
                              const float *v, float *out)
{
    if (!st || !st->S || !q || !k || !v || !out || tfm_linattn_shape_check(&st->shape) != TFM_OK)
        return TFM_E_INVALID;
    const tfm_linattn_shape *sh = &st->shape;
    int H = sh->n_heads, Hkv = sh->n_kv_heads, G = H / Hkv, f = sh->f, hd = sh->head_dim;
    size_t F = tfm_linattn_feature_dim(f);
    float c1 = lin_scale(f), c2 = quad_scale(f);
    /* phi is formed feature by feature as the loops reach it: no scratch */
    for (int g = 0; g < Hkv; g++) {
        float *S = st->S + (size_t)g * F * hd, *z = st->z + (size_t)g * F;
        const float *kg = k + (size_t)g * f, *vg = v + (size_t)g * hd;
        z[0] += 1.0f;
        axpy(S, 1.0f, vg, hd);
        for (int a = 0; a < f; a++) {
            float p = kg[a] * c1;
            z[1 + a] += p;
            axpy(S + (size_t)(1 + a) * hd, p, vg, hd);
        }
        for (int a = 0; a < f; a++) {
            float ua = kg[a] * c2;
            size_t i0 = 1 + (size_t)f + (size_t)a * f;
            for (int b = 0; b < f; b++) {
                float p = ua * kg[b];
                z[i0 + b] += p;
                axpy(S + (i0 + b) * hd, p, vg, hd);
            }
        }
        for (int j = 0; j < G; j++) {
            int h = g * G + j;
            const float *qh = q + (size_t)h * f;
            float *o = out + (size_t)h * hd, den = z[0];
            memcpy(o, S, (size_t)hd * sizeof(float));
            for (int a = 0; a < f; a++) {
                float p = qh[a] * c1;
                den += p * z[1 + a];
                axpy(o, p, S + (size_t)(1 + a) * hd, hd);
            }
            for (int a = 0; a < f; a++) {
                float ua = qh[a] * c2;
                size_t i0 = 1 + (size_t)f + (size_t)a * f;
                for (int b = 0; b < f; b++) {
                    float p = ua * qh[b];
                    den += p * z[i0 + b];
                    axpy(o, p, S + (i0 + b) * hd, hd);
                }
            }
            float r = 1.0f / (den + TFM_LINATTN_EPS);
            for (int x = 0; x < hd; x++)
                o[x] *= r;
        }
    }
    st->n_tokens++;
    return TFM_OK;
}

/* ---- the double reference ------------------------------------------------- */

/* phi(x).phi(y) summed over the F features one by one */
static double phi_dot(const float *x, const float *y, int f)
{
    double c1 = pow((double)f, -0.25), c2 = 1.0 / (sqrt(2.0) * sqrt((double)f));
    double s = 1.0;
    for (int a = 0; a < f; a++)
        s += (c1 * x[a]) * (c1 * y[a]);
    for (int a = 0; a < f; a++)
        for (int b = 0; b < f; b++)
            s += (c2 * x[a] * x[b]) * (c2 * y[a] * y[b]);
    return s;
}

tfm_status tfm_linattn_reference(const tfm_linattn_shape *sh, int T, const float *q,
                                 const float *k, const float *v, double *out)
{
    if (tfm_linattn_shape_check(sh) != TFM_OK || T < 0 || (T > 0 && (!q || !k || !v || !out)))
        return TFM_E_INVALID;
    int H = sh->n_heads, Hkv = sh->n_kv_heads, G = H / Hkv, f = sh->f, hd = sh->head_dim;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            int g = h / G;
            const float *qt = q + ((size_t)t * H + h) * f;
            double *o = out + ((size_t)t * H + h) * hd, den = 0.0;
            for (int x = 0; x < hd; x++)
                o[x] = 0.0;
            for (int s = 0; s <= t; s++) {
                const float *ks = k + ((size_t)s * Hkv + g) * f;
                const float *vs = v + ((size_t)s * Hkv + g) * hd;
                double wts = phi_dot(qt, ks, f);
                den += wts;
                for (int x = 0; x < hd; x++)
                    o[x] += wts * vs[x];
            }
            for (int x = 0; x < hd; x++)
                o[x] /= den + (double)TFM_LINATTN_EPS;
        }
    return TFM_OK;
}

/* ---- backward ------------------------------------------------------------- */

size_t tfm_linattn_backward_scratch(const tfm_linattn_shape *sh, int T, int chunk)
{
    if (tfm_linattn_shape_check(sh) != TFM_OK || T < 1 || chunk < 1 ||
        chunk > TFM_LINATTN_MAX_CHUNK)
        return 0;
    size_t C = (size_t)(chunk < T ? chunk : T), F = tfm_linattn_feature_dim(sh->f),
           hd = (size_t)sh->head_dim, nch = ((size_t)T + C - 1) / C;
    return nch * F * (hd + 1) + F * (hd + 1) + C * (3 * F + 3 * C + 2 * hd + 2);
}

tfm_status tfm_linattn_backward(const tfm_linattn_shape *sh, int T, int chunk, const float *q,
                                const float *k, const float *v, const float *dout, float *dq,
                                float *dk, float *dv, float *scratch, size_t scratch_floats)
{
    if (tfm_linattn_shape_check(sh) != TFM_OK || T < 0 || chunk < 1 ||
        chunk > TFM_LINATTN_MAX_CHUNK ||
        (T > 0 && (!q || !k || !v || !dout || !dq || !dk || !dv || !scratch)))
        return TFM_E_INVALID;
    if (T == 0)
        return TFM_OK;
    if (scratch_floats < tfm_linattn_backward_scratch(sh, T, chunk))
        return TFM_E_RANGE;
    int H = sh->n_heads, Hkv = sh->n_kv_heads, G = H / Hkv, f = sh->f, hd = sh->head_dim;
    int C = chunk < T ? chunk : T, nch = (T + C - 1) / C;
    size_t F = tfm_linattn_feature_dim(f), FS = F * (size_t)(hd + 1);
    size_t ldq = (size_t)H * f, ldk = (size_t)Hkv * f, ldv = (size_t)Hkv * hd,
           ldo = (size_t)H * hd;
    float *states = scratch;                  /* nch x (S (F, hd), z (F)) */
    float *dS = states + (size_t)nch * FS;    /* (F, hd) */
    float *dz = dS + F * hd;                  /* (F) */
    float *phk = dz + F, *phq = phk + (size_t)C * F, *dph = phq + (size_t)C * F; /* (C, F) */
    float *a = dph + (size_t)C * F, *w = a + (size_t)C * C, *dw = w + (size_t)C * C; /* (C, C) */
    float *N = dw + (size_t)C * C, *dN = N + (size_t)C * hd; /* (C, hd) */
    float *D = dN + (size_t)C * hd, *dD = D + C;           /* (C) */
    float c1 = 1.0f / sqrtf((float)f), c2 = 0.5f / (float)f;

    for (int g = 0; g < Hkv; g++) {
        /* forward sweep over the keys: the state before each chunk */
        memset(states, 0, FS * sizeof(float));
        for (int c = 0; c + 1 < nch; c++) {
            int t0 = c * C, n = T - t0 < C ? T - t0 : C;
            const float *kc = k + (size_t)t0 * ldk + (size_t)g * f;
            const float *vc = v + (size_t)t0 * ldv + (size_t)g * hd;
            float *S = states + (size_t)(c + 1) * FS, *z = S + F * hd;
            memcpy(S, S - FS, FS * sizeof(float));
            phi_rows(kc, ldk, n, f, phk);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)F, hd, n, 1.0f, phk, (int)F,
                        vc, (int)ldv, 1.0f, S, hd);
            for (int t = 0; t < n; t++)
                for (size_t i = 0; i < F; i++)
                    z[i] += phk[(size_t)t * F + i];
        }
        /* reverse sweep */
        memset(dS, 0, FS * sizeof(float));
        for (int c = nch - 1; c >= 0; c--) {
            int t0 = c * C, n = T - t0 < C ? T - t0 : C;
            const float *kc = k + (size_t)t0 * ldk + (size_t)g * f;
            const float *vc = v + (size_t)t0 * ldv + (size_t)g * hd;
            float *dkc = dk + (size_t)t0 * ldk + (size_t)g * f;
            float *dvc = dv + (size_t)t0 * ldv + (size_t)g * hd;
            const float *Sp = states + (size_t)c * FS, *zp = Sp + F * hd;
            phi_rows(kc, ldk, n, f, phk);
            /* this chunk's keys as seen by later chunks' queries */
            if (c + 1 < nch) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)F, hd, 1.0f, vc,
                            (int)ldv, dS, hd, 0.0f, dph, (int)F);
                for (int t = 0; t < n; t++)
                    for (size_t i = 0; i < F; i++)
                        dph[(size_t)t * F + i] += dz[i];
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, (int)F, 1.0f, phk,
                            (int)F, dS, hd, 1.0f, dvc, (int)ldv);
                phi_rows_backward(kc, ldk, dph, n, f, dkc, ldk);
            }
            for (int j = 0; j < G; j++) {
                int h = g * G + j;
                const float *qc = q + (size_t)t0 * ldq + (size_t)h * f;
                const float *dyc = dout + (size_t)t0 * ldo + (size_t)h * hd;
                float *dqc = dq + (size_t)t0 * ldq + (size_t)h * f;
                phi_rows(qc, ldq, n, f, phq);
                /* the forward of this chunk: a, w, N, D, y (= N / D, into N) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, f, 1.0f, qc, (int)ldq,
                            kc, (int)ldk, 0.0f, a, n);
                memcpy(w, a, (size_t)n * n * sizeof(float));
                poly_mask(w, n, f, D);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, n, 1.0f, w, n, vc,
                            (int)ldv, 0.0f, N, hd);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, (int)F, 1.0f, phq,
                            (int)F, Sp, hd, 1.0f, N, hd);
                cblas_sgemv(CblasRowMajor, CblasNoTrans, n, (int)F, 1.0f, phq, (int)F, zp, 1,
                            1.0f, D, 1);
                for (int t = 0; t < n; t++) {
                    float r = 1.0f / (D[t] + TFM_LINATTN_EPS), s = 0.0f;
                    const float *dy = dyc + (size_t)t * ldo;
                    for (int x = 0; x < hd; x++) {
                        float y = N[(size_t)t * hd + x] * r;
                        dN[(size_t)t * hd + x] = dy[x] * r;
                        s += dy[x] * y;
                    }
                    dD[t] = -s * r;
                }
                /* intra: dw = mask(dN V^T + dD), da = dw P'(a) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, hd, 1.0f, dN, hd, vc,
                            (int)ldv, 0.0f, dw, n);
                for (int t = 0; t < n; t++) {
                    float *row = dw + (size_t)t * n;
                    const float *ar = a + (size_t)t * n;
                    for (int u = 0; u <= t; u++)
                        row[u] = (row[u] + dD[t]) * (c1 + 2.0f * c2 * ar[u]);
                    for (int u = t + 1; u < n; u++)
                        row[u] = 0.0f;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, f, n, 1.0f, dw, n, kc,
                            (int)ldk, 1.0f, dqc, (int)ldq);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, f, n, 1.0f, dw, n, qc,
                            (int)ldq, 1.0f, dkc, (int)ldk);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, hd, n, 1.0f, w, n, dN, hd,
                            1.0f, dvc, (int)ldv);
                /* inter: through the state before the chunk */
                if (c > 0) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)F, hd, 1.0f, dN,
                                hd, Sp, hd, 0.0f, dph, (int)F);
                    for (int t = 0; t < n; t++)
                        for (size_t i = 0; i < F; i++)
                            dph[(size_t)t * F + i] += dD[t] * zp[i];
                    phi_rows_backward(qc, ldq, dph, n, f, dqc, ldq);
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)F, hd, n, 1.0f, phq,
                                (int)F, dN, hd, 1.0f, dS, hd);
                    cblas_sgemv(CblasRowMajor, CblasTrans, n, (int)F, 1.0f, phq, (int)F, dD, 1,
                                1.0f, dz, 1);
                }
            }
        }
    }
    return TFM_OK;
}

/* ---- op accounting -------------------------------------------------------- */

double tfm_linattn_flops(const tfm_linattn_shape *sh, int T, int chunk)
{
    if (tfm_linattn_shape_check(sh) != TFM_OK || T < 0 || chunk < 1 ||
        chunk > TFM_LINATTN_MAX_CHUNK)
        return -1.0;
    double f = sh->f, hd = sh->head_dim, F = (double)tfm_linattn_feature_dim(sh->f);
    double G = sh->n_heads / sh->n_kv_heads, phi = 2.0 * f + f * f, total = 0.0;
    for (int t0 = 0; t0 < T; t0 += chunk) {
        double n = T - t0 < chunk ? T - t0 : chunk;
        double head = n * phi                 /* phi(Q) */
                      + 2.0 * n * n * f       /* Q K^T */
                      + 5.0 * n * (n + 1) / 2 /* P(a) on the triangle, row sums */
                      + 2.0 * n * n * hd      /* w V */
                      + 2.0 * n * F * hd      /* phi(Q) S */
                      + 2.0 * n * F           /* phi(Q) z */
                      + n * (hd + 2.0);       /* + eps, 1/D, scale */
        total += n * phi                      /* phi(K) */
                 + G * head + 2.0 * F * n * hd /* S += phi(K)^T V */
                 + F * n;                     /* z += sum phi(K) */
    }
    return total * sh->n_kv_heads;
}

double tfm_linattn_decode_flops(const tfm_linattn_shape *sh)
{
    if (tfm_linattn_shape_check(sh) != TFM_OK)
        return -1.0;
    double f = sh->f, hd = sh->head_dim, F = (double)tfm_linattn_feature_dim(sh->f);
    double phi = 2.0 * f + f * f; /* on the fly: c1 x_a, c2 x_a, then the f^2 products */
    /* per kv head: phi(k), S += phi(k) v^T, z += phi(k); per query head:
     * phi(q), the F - 1 feature rows after row 0 (copied) into the output
     * and the denominator, + eps, 1/den, the scale */
    return sh->n_kv_heads * (phi + 2.0 * F * hd + F) +
           sh->n_heads * (phi + 2.0 * (F - 1) * (hd + 1) + 2.0 + hd);
}

double tfm_linattn_backward_flops(const tfm_linattn_shape *sh, int T, int chunk)
{
    if (tfm_linattn_shape_check(sh) != TFM_OK || T < 0 || chunk < 1 ||
        chunk > TFM_LINATTN_MAX_CHUNK)
        return -1.0;
    if (T == 0)
        return 0.0;
    int C = chunk < T ? chunk : T, nch = (T + C - 1) / C;
    double f = sh->f, hd = sh->head_dim, F = (double)tfm_linattn_feature_dim(sh->f);
    double G = sh->n_heads / sh->n_kv_heads, phi = 2.0 * f + f * f;
    double phib = 3.0 * f * f + 4.0 * f; /* J_phi^T dphi, a row */
    double total = 0.0;
    for (int c = 0; c < nch; c++) {
        double n = T - c * C < C ? T - c * C : C;
        if (c + 1 < nch)                  /* the forward sweep's state */
            total += n * phi + 2.0 * F * n * hd + F * n;
        total += n * phi;                 /* phi(K) again */
        if (c + 1 < nch)                  /* keys through later queries */
            total += 2.0 * n * hd * F + n * F + 2.0 * n * F * hd + n * phib;
        double head = n * phi + 2.0 * n * n * f + 5.0 * n * (n + 1) / 2 /* phi(Q), a, w */
                      + 2.0 * n * n * hd + 2.0 * n * F * hd + 2.0 * n * F /* N, D */
                      + n * (3.0 + 4.0 * hd)                             /* y, dN, dD */
                      + 2.0 * n * n * hd + 5.0 * n * (n + 1) / 2         /* dw, da */
                      + 4.0 * n * n * f + 2.0 * n * n * hd;              /* dq, dk, dv */
        if (c > 0)                        /* queries through the earlier state */
            head += 2.0 * n * hd * F + 2.0 * n * F + n * phib + 2.0 * F * n * hd + 2.0 * F * n;
        total += G * head;
    }
    return total * sh->n_kv_heads;
}
