/*
 * recall.c — the `exact` recall engine: associative recall as one layer of
 * attention over one-hot symbols, tiled (see tfm/recall.h for the
 * construction and why it is exact).
 *
 * Design notes:
 * - Encoding.  Keys and values are re-encoded one-hot over the request's
 *   distinct symbols; two small open-addressing tables assign the columns
 *   (the tokenizer's job: id -> column).  They never produce an answer: the
 *   key table is also how a query finds its one-hot column, and a query that
 *   is no key gets an all-zero row, which matches nothing in Q K^T.
 * - One-hot blocks are zeroed once, then only the entries a block sets are
 *   written and cleared again, so building a block costs O(rows), not
 *   O(rows x symbols); the sgemm reads the whole block regardless.
 * - Loop order: query blocks outside, key blocks inside, so the
 *   accumulators are (query block x value symbols) and nothing scales with
 *   n_queries.  Key/value blocks are rebuilt for every query block, which at
 *   O(rows) is cheap.
 * - The hard softmax is the ordinary online softmax (running max, running
 *   sum, accumulator rescaled by e^(m_old - m_new)); with every score gap
 *   >= ~126 those exponentials underflow to exactly 0, so no special case is
 *   needed for exactness — it falls out of float arithmetic, and the decode
 *   step checks it.
 * - Scratch is two allocations per call (interning, then blocks, sized by
 *   the actual symbol counts); their sum is the reported peak.
 */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "internal.h"
#include "tfm/recall.h"

void openblas_set_num_threads(int num_threads);

#define QB TFM_RECALL_QUERY_BLOCK
#define KB TFM_RECALL_KEY_BLOCK
/* β / (2n): the scaled gap between neighbouring scores (see recall.h). */
#define SCORE_GAP 128.0f

/* ---- symbol interning (id -> one-hot column) ------------------------------ */

typedef struct {
    uint32_t id;
    int32_t col; /* -1: empty */
} slot;

typedef struct {
    slot *s;
    uint32_t mask;
    int n; /* columns handed out */
} symtab;

static uint32_t hash32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

/* The smallest power of two >= max(2n, 2): load factor <= 1/2. */
static size_t table_cap(int n)
{
    size_t cap = 2;
    while (cap < 2 * (size_t)n)
        cap <<= 1;
    return cap;
}

static void symtab_init(symtab *t, slot *mem, size_t cap)
{
    t->s = mem;
    t->mask = (uint32_t)(cap - 1);
    t->n = 0;
    for (size_t i = 0; i < cap; i++)
        t->s[i].col = -1;
}

/* Column of id, or -1 if absent. */
static int32_t symtab_find(const symtab *t, uint32_t id)
{
    for (uint32_t h = hash32(id) & t->mask;; h = (h + 1) & t->mask) {
        if (t->s[h].col < 0 || t->s[h].id == id)
            return t->s[h].col;
    }
}

/* Column of id, a new one if absent (the table never fills: cap >= 2n). */
static int32_t symtab_intern(symtab *t, uint32_t id, uint32_t *ids /* (cap) col -> id, or NULL */)
{
    uint32_t h = hash32(id) & t->mask;
    while (t->s[h].col >= 0 && t->s[h].id != id)
        h = (h + 1) & t->mask;
    if (t->s[h].col < 0) {
        t->s[h].id = id;
        t->s[h].col = t->n;
        if (ids)
            ids[t->n] = id;
        t->n++;
    }
    return t->s[h].col;
}

/* ---- scratch layout -------------------------------------------------------- */

/* Bytes of one buffer as tfm__alloc rounds it (a whole cache line). */
static size_t line(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

/* Interning: two tables, key and value columns per pair, value ids by
 * column. */
static size_t intern_bytes(int n)
{
    size_t cap = table_cap(n);
    return 2 * line(cap * sizeof(slot)) + 3 * line((size_t)n * 4);
}

/* Blocks for Dk key and Dv value symbols. */
static size_t block_bytes(int n, int n_queries, int Dk, int Dv)
{
    if (n_queries == 0)
        return 0;
    size_t qb = n_queries < QB ? (size_t)n_queries : QB;
    size_t kb = n + 1 < KB ? (size_t)n + 1 : KB;
    size_t dk = (size_t)Dk + 1, dv = (size_t)Dv + 1;
    return line(qb * dk * 4) + line(kb * dk * 4) + line(kb * dv * 4) + line(qb * kb * 4) +
           line(qb * dv * 4) + 3 * line(qb * 4);
}

size_t tfm_recall_scratch_bound(int n_pairs, int n_queries)
{
    if (n_pairs < 0 || n_queries < 0 || n_pairs > TFM_RECALL_MAX_PAIRS ||
        n_queries > TFM_RECALL_MAX_QUERIES)
        return 0;
    return intern_bytes(n_pairs) + block_bytes(n_pairs, n_queries, n_pairs, n_pairs);
}

/* ---- the attention ----------------------------------------------------------- */

typedef struct {
    int n, Dk, Dv;
    int dk, dv;      /* columns: Dk + 1 (position), Dv + 1 (⊥) */
    float beta;      /* sharpening: 2n * SCORE_GAP */
    symtab keys;     /* key id -> column; also encodes the queries */
    const uint32_t *queries;
    int32_t *key_col; /* (n) */
    int32_t *val_col; /* (n) */
    uint32_t *val_id; /* (Dv) column -> value id */
    float *Q;   /* (qb, dk) β one-hot of the queries + β position column */
    float *K;   /* (kb, dk) one-hot keys + position bias; row 0 of the request: sentinel */
    float *V;   /* (kb, dv) one-hot values (S X at key rows); sentinel: ⊥ */
    float *S;   /* (qb, kb) scores, then probabilities */
    float *acc; /* (qb, dv) running Σ p_j V_j */
    float *m;   /* (qb) running max score */
    float *l;   /* (qb) running Σ p_j */
    int *arg;   /* (qb) key row of the running max */
} recall;

/* Writes (on) or clears (!on) key rows t0 .. t0 + kb - 1 into K and V.  Key
 * row 0 is the sentinel (∅, ⊥); row t >= 1 is pair t - 1. */
static void kv_block(recall *r, int t0, int kb, int on)
{
    for (int i = 0; i < kb; i++) {
        int t = t0 + i;
        float *k = r->K + (size_t)i * r->dk, *v = r->V + (size_t)i * r->dv;
        if (t == 0) {
            k[r->Dk] = on ? 0.5f : 0.0f;
            v[r->Dv] = (float)on;
        } else {
            int j = t - 1;
            k[r->key_col[j]] = (float)on;
            k[r->Dk] = on ? (float)j / (float)(2 * r->n) : 0.0f; /* < 0.5 */
            v[r->val_col[j]] = (float)on;
        }
    }
}

/* Writes or clears the Q rows of queries q0 .. q0 + qb - 1. */
static void q_block(recall *r, int q0, int qb, int on)
{
    float b = on ? r->beta : 0.0f;
    for (int i = 0; i < qb; i++) {
        float *q = r->Q + (size_t)i * r->dk;
        int32_t c = symtab_find(&r->keys, r->queries[q0 + i]);
        if (c >= 0)
            q[c] = b;
        q[r->Dk] = b;
    }
}

/* Online softmax over one (qb, kb) block of scores at key rows t0...: folds
 * the block into each row's running max and sum, rescaling the accumulator
 * when the max moves, and leaves e^(s - m) in S for P V. */
static void softmax_block(recall *r, int qb, int kb, int t0)
{
    for (int i = 0; i < qb; i++) {
        float *s = r->S + (size_t)i * kb;
        int a = 0;
        for (int j = 1; j < kb; j++)
            a = s[j] > s[a] ? j : a;
        if (s[a] > r->m[i]) {
            float alpha = expf(r->m[i] - s[a]); /* 0 on the first block (m = -inf) */
            if (r->l[i] > 0.0f)
                tfm__scale(r->acc + (size_t)i * r->dv, alpha, r->dv);
            r->l[i] *= alpha;
            r->m[i] = s[a];
            r->arg[i] = t0 + a;
        }
        float sum = 0.0f, mi = r->m[i];
        for (int j = 0; j < kb; j++) {
            s[j] = expf(s[j] - mi);
            sum += s[j];
        }
        r->l[i] += sum;
    }
}

/* Decodes the output rows of queries q0...: acc / l is exactly one-hot; its
 * column is the answer, and must be the value of the attended key row. */
static tfm_status decode_block(const recall *r, int q0, int qb, tfm_recall_answer *out)
{
    for (int i = 0; i < qb; i++) {
        const float *o = r->acc + (size_t)i * r->dv;
        int col = -1, nonzero = 0;
        for (int c = 0; c < r->dv; c++) {
            if (o[c] != 0.0f) {
                nonzero++;
                col = c;
            }
        }
        int t = r->arg[i];
        int want = t == 0 ? r->Dv : r->val_col[t - 1];
        if (nonzero != 1 || r->l[i] != 1.0f || o[col] != 1.0f || col != want)
            return TFM_E_INTERNAL;
        tfm_recall_answer *a = &out[q0 + i];
        a->found = col != r->Dv;
        a->value = a->found ? r->val_id[col] : 0;
        a->position = t - 1; /* the sentinel is -1 */
        a->weight = 1.0f / r->l[i];
    }
    return TFM_OK;
}

static void book_attention(tfm_profile *p, int n, double dt, double flops)
{
    if (!p || !p->enabled)
        return;
    tfm__prof_attention(p, TFM_PHASE_PREFILL, TFM_ATTN_KIND_EXACT, n > 0 ? n : 1, dt, flops, 1);
}

/* The tiled attention over all queries; returns the contraction FLOPs. */
static tfm_status attend(recall *r, int M, tfm_recall_answer *out, tfm_profile *prof,
                         double *flops)
{
    const tfm_phase ph = TFM_PHASE_PREFILL;
    const tfm_component at = TFM_COMP_ATTENTION;
    int rows = r->n + 1; /* key rows, the sentinel included */
    *flops = 0;
    for (int q0 = 0; q0 < M; q0 += QB) {
        int qb = M - q0 < QB ? M - q0 : QB;
        q_block(r, q0, qb, 1);
        for (int i = 0; i < qb; i++) {
            r->m[i] = -INFINITY;
            r->l[i] = 0.0f;
            r->arg[i] = -1;
        }
        memset(r->acc, 0, (size_t)qb * r->dv * sizeof(float));
        for (int t0 = 0; t0 < rows; t0 += KB) {
            int kb = rows - t0 < KB ? rows - t0 : KB;
            kv_block(r, t0, kb, 1);
            /* S (qb, kb) = Q (qb, dk) · K (kb, dk)^T: β (X X^T + bias) */
            double t = tfm__prof_start(prof), f = 2.0 * qb * kb * r->dk;
            tfm__matmul_sgemm(NULL, r->S, r->Q, r->K, qb, r->dk, kb);
            tfm__prof_op(prof, ph, TFM_CLASS_CONTRACTION, at, t, f);
            *flops += f;
            t = tfm__prof_start(prof);
            softmax_block(r, qb, kb, t0);
            tfm__prof_op(prof, ph, TFM_CLASS_NORMALIZATION, at, t, 5.0 * qb * kb);
            /* acc (qb, dv) += P (qb, kb) · V (kb, dv): A (S X) */
            t = tfm__prof_start(prof);
            f = 2.0 * qb * kb * r->dv;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, qb, r->dv, kb, 1.0f, r->S, kb,
                        r->V, r->dv, 1.0f, r->acc, r->dv);
            tfm__prof_op(prof, ph, TFM_CLASS_CONTRACTION, at, t, f);
            *flops += f;
            kv_block(r, t0, kb, 0);
        }
        q_block(r, q0, qb, 0);
        tfm_status st = decode_block(r, q0, qb, out);
        if (st != TFM_OK)
            return st;
    }
    return TFM_OK;
}

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single(void) { openblas_set_num_threads(1); }

tfm_status tfm_recall_exact(const tfm_recall_request *req, tfm_recall_answer *out,
                            tfm_recall_stats *stats, tfm_profile *prof)
{
    double t_start = tfm_now();
    if (!req || req->n_pairs < 0 || req->n_queries < 0)
        return TFM_E_INVALID;
    int n = req->n_pairs, M = req->n_queries;
    if ((n > 0 && (!req->keys || !req->values)) || (M > 0 && (!req->queries || !out)))
        return TFM_E_INVALID;
    if (n > TFM_RECALL_MAX_PAIRS || M > TFM_RECALL_MAX_QUERIES)
        return TFM_E_RANGE;
    pthread_once(&blas_once, blas_single);

    /* Encode: one-hot columns for the distinct keys and values. */
    recall r = {.n = n, .queries = req->queries};
    size_t cap = table_cap(n), ibytes = intern_bytes(n);
    unsigned char *imem = tfm__alloc(ibytes), *p = imem;
    if (!imem)
        return TFM_E_NOMEM;
    slot *key_slots = (slot *)p;
    p += line(cap * sizeof(slot));
    slot *val_slots = (slot *)p;
    p += line(cap * sizeof(slot));
    r.key_col = (int32_t *)p;
    p += line((size_t)n * 4);
    r.val_col = (int32_t *)p;
    p += line((size_t)n * 4);
    r.val_id = (uint32_t *)p;
    symtab vals;
    symtab_init(&r.keys, key_slots, cap);
    symtab_init(&vals, val_slots, cap);
    for (int j = 0; j < n; j++) {
        r.key_col[j] = symtab_intern(&r.keys, req->keys[j], NULL);
        r.val_col[j] = symtab_intern(&vals, req->values[j], r.val_id);
    }
    r.Dk = r.keys.n;
    r.Dv = vals.n;
    r.dk = r.Dk + 1;
    r.dv = r.Dv + 1;
    r.beta = 2.0f * (float)(n > 0 ? n : 1) * SCORE_GAP;

    /* Blocks, zeroed once: only the entries a block sets are cleared later. */
    size_t bbytes = block_bytes(n, M, r.Dk, r.Dv);
    unsigned char *bmem = NULL;
    tfm_status st = TFM_OK;
    double flops = 0, t_attn = 0;
    if (bbytes > 0) {
        bmem = tfm__alloc(bbytes);
        if (!bmem) {
            st = TFM_E_NOMEM;
            goto done;
        }
        memset(bmem, 0, bbytes);
        size_t qb = M < QB ? (size_t)M : QB, kb = n + 1 < KB ? (size_t)n + 1 : KB;
        p = bmem;
        r.Q = (float *)p;
        p += line(qb * r.dk * 4);
        r.K = (float *)p;
        p += line(kb * r.dk * 4);
        r.V = (float *)p;
        p += line(kb * r.dv * 4);
        r.S = (float *)p;
        p += line(qb * kb * 4);
        r.acc = (float *)p;
        p += line(qb * r.dv * 4);
        r.m = (float *)p;
        p += line(qb * 4);
        r.l = (float *)p;
        p += line(qb * 4);
        r.arg = (int *)p;
        double t0 = tfm_now();
        st = attend(&r, M, out, prof, &flops);
        t_attn = tfm_now() - t0;
        book_attention(prof, n, t_attn, flops);
    }
done:
    tfm__free(bmem);
    tfm__free(imem);
    if (stats && st == TFM_OK) {
        stats->flops = flops;
        stats->attention_seconds = t_attn;
        stats->peak_scratch_bytes = ibytes + bbytes;
        stats->key_symbols = r.Dk;
        stats->value_symbols = r.Dv;
        stats->seconds = tfm_now() - t_start;
    }
    return st;
}
