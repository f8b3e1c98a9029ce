/*
 * forward_linear.c — the token mixing of a linear-attention layer in the
 * model's forward (issue 14; the kernels are linear_attn.c's, the config
 * model_mixer.c's).  forward.c runs the layer as any other — norm, wq, wk,
 * wv, RoPE, then wo and the MLP — and calls here for the part between:
 *
 *   q_f = wfeat · q_h, k_f = wfeat · k_h   every head of every row, as one
 *                                           product each: the (R, dim) rows
 *                                           are (R n_heads, head_size) rows
 *   prefill  tfm_linattn_prefill over the chunk's R rows, on the layer's
 *            state of the one sequence (chunked: matrix products)
 *   decode   tfm_linattn_decode per row, each on its own sequence's state
 *            (O(1) in the context length); rows split over the pool
 *
 * The output, (R, n_heads, head_size) = (R, dim), goes where softmax
 * attention writes its own, and wo follows.
 *
 * Threads: the projections go through tfm__matmul (split over the pool);
 * decode splits its rows over the pool; prefill's mixer runs on the
 * calling thread: the kernel walks the kv heads of one state in turn, with
 * its inputs interleaved by head, so a split by head would need copies.
 *
 * Op accounting: kind "linear" (TFM_ATTN_KIND_LINEAR) with the kernels'
 * own FLOP counts (tfm_linattn_flops, tfm_linattn_decode_flops), booked as
 * contraction; the projections as contraction too.  The peak scratch is
 * the state the call works on (R states in decode) plus, in prefill, the
 * kernel's scratch.
 *
 * Nothing allocates: qf, kf and the prefill scratch are the workspace's.
 */
#include <stddef.h>

#include "internal.h"

size_t tfm__linear_ws_floats(const tfm_config *c, int max_rows, int *chunk)
{
    *chunk = 0;
    if (!c->linear_layers)
        return 0;
    tfm_linattn_shape sh = tfm__linattn_shape(c);
    int C = max_rows < TFM_LINATTN_CHUNK ? max_rows : TFM_LINATTN_CHUNK;
    *chunk = C;
    return (size_t)max_rows * (size_t)(c->n_heads + c->n_kv_heads) * (size_t)c->feature_dim +
           tfm_linattn_prefill_scratch(&sh, C);
}

/* q (R, dim) and k (R, kv_dim) of layer l projected by its wfeat into
 * buf: qf (R, n_heads, f) then kf (R, n_kv_heads, f). */
static void project(tfm__pool *pool, const tfm_model *m, int l, int R, const float *q,
                    const float *k, float *buf, double *flops)
{
    const tfm_config *c = &m->cfg;
    int hs = c->dim / c->n_heads, f = c->feature_dim;
    const float *wf = m->w.wfeat + (size_t)tfm__linear_ordinal(c, l) * (size_t)f * hs;
    float *qf = buf, *kf = buf + (size_t)R * c->n_heads * f;
    tfm__matmul(pool, qf, q, wf, R * c->n_heads, hs, f);
    tfm__matmul(pool, kf, k, wf, R * c->n_kv_heads, hs, f);
    *flops = 2.0 * R * (c->n_heads + c->n_kv_heads) * (double)hs * f;
}

static void book(tfm_profile *p, tfm_phase ph, int ctx, double dt, double flops)
{
    tfm__prof_attention(p, ph, TFM_ATTN_KIND_LINEAR, ctx, dt, flops, 1);
    p->seconds[ph][TFM_CLASS_CONTRACTION] += dt;
    p->flops[ph][TFM_CLASS_CONTRACTION] += flops;
    p->comp_seconds[ph][TFM_COMP_ATTENTION] += dt;
}

tfm_status tfm__linear_prefill(tfm__pool *pool, tfm_profile *prof, tfm_phase ph,
                               const tfm_model *m, int l, tfm_state *st, int p0, int R,
                               const float *q, const float *k, const float *v, float *out,
                               float *buf, size_t buf_floats, int chunk)
{
    const tfm_config *c = &m->cfg;
    double t0 = tfm__prof_start(prof), pf;
    size_t proj = (size_t)R * (c->n_heads + c->n_kv_heads) * (size_t)c->feature_dim;
    if (proj > buf_floats)
        return TFM_E_RANGE;
    project(pool, m, l, R, q, k, buf, &pf);
    tfm__prof_op(prof, ph, TFM_CLASS_CONTRACTION, TFM_COMP_ATTENTION, t0, pf);
    t0 = tfm__prof_start(prof);
    tfm_linattn_state *ls = &st->lin[tfm__linear_ordinal(c, l)];
    const float *qf = buf, *kf = buf + (size_t)R * c->n_heads * c->feature_dim;
    tfm_status s = tfm_linattn_prefill(ls, R, chunk, qf, kf, v, out, buf + proj,
                                       buf_floats - proj);
    if (s != TFM_OK || !prof || !prof->enabled)
        return s;
    double dt = tfm_now() - t0;
    st->prefill_attn_seconds += dt;
    book(prof, ph, p0 + R, dt, tfm_linattn_flops(&ls->shape, R, chunk));
    int C = chunk < R ? chunk : R;
    tfm__prof_attn_peak(prof, ph,
                        (double)tfm_linattn_state_bytes(&ls->shape) +
                            4.0 * (double)tfm_linattn_prefill_scratch(&ls->shape, C));
    return TFM_OK;
}

typedef struct {
    const tfm_config *c;
    int lo, R; /* the layer's linear ordinal, rows */
    tfm_state *const *rows_state;
    const float *qf, *kf, *v;
    float *out;
} decode_args;

static void decode_task(void *ctx, int chunk, int n_chunks, int thread)
{
    const decode_args *a = ctx;
    const tfm_config *c = a->c;
    int r0, r1, f = c->feature_dim, kv = c->dim / c->n_heads * c->n_kv_heads;
    (void)thread;
    tfm__split(a->R, chunk, n_chunks, 1, &r0, &r1);
    for (int r = r0; r < r1; r++)
        tfm_linattn_decode(&a->rows_state[r]->lin[a->lo], a->qf + (size_t)r * c->n_heads * f,
                           a->kf + (size_t)r * c->n_kv_heads * f, a->v + (size_t)r * kv,
                           a->out + (size_t)r * c->dim);
}

void tfm__linear_decode(tfm__pool *pool, tfm_profile *prof, tfm_phase ph, const tfm_model *m,
                        int l, tfm_state *const *rows_state, const int *pos, int R, const float *q,
                        const float *k, const float *v, float *out, float *buf)
{
    const tfm_config *c = &m->cfg;
    double t0 = tfm__prof_start(prof), pf;
    project(pool, m, l, R, q, k, buf, &pf);
    tfm__prof_op(prof, ph, TFM_CLASS_CONTRACTION, TFM_COMP_ATTENTION, t0, pf);
    t0 = tfm__prof_start(prof);
    decode_args a = {c, tfm__linear_ordinal(c, l), R, rows_state, buf,
                     buf + (size_t)R * c->n_heads * c->feature_dim, v, out};
    tfm__pool_run(pool, decode_task, &a, tfm__pool_chunks(pool, R, 1));
    if (!prof || !prof->enabled)
        return;
    tfm_linattn_shape sh = tfm__linattn_shape(c);
    double dt = tfm_now() - t0, fl = tfm_linattn_decode_flops(&sh);
    for (int r = 0; r < R; r++) /* equal work a row: equal shares of the time */
        book(prof, ph, pos[r] + 1, dt / R, fl);
    tfm__prof_attn_peak(prof, ph, (double)R * (double)tfm_linattn_state_bytes(&sh));
}
