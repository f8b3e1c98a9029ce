/*
 * tfm/recall.h — associative recall answered by one layer of attention,
 * computed with real matrices: the lecture's construction, made exact.
 *
 * A short tour:
 *
 *     uint32_t keys[] = {1, 2, 3}, values[] = {10, 20, 30}, qs[] = {2, 7};
 *     tfm_recall_request rq = {3, keys, values, 2, qs};
 *     tfm_recall_answer ans[2];
 *     tfm_recall_stats st;
 *     tfm_recall_exact(&rq, ans, &st, NULL);
 *     // ans[0]: found 1, value 20, position 1, weight 1.0f
 *     // ans[1]: found 0 (⊥),       position -1, weight 1.0f
 *
 * The problem (lecture, "Associative Recall = Key Value Store problem"):
 * input (k1, v1) ... (kn, vn); q.  Output v_i if q = k_i, ⊥ if q matches no
 * key.  The lecture solves it with one attention layer: X one-hot, Q' = K' =
 * identity, V' = S the shift (row i of S X is row i+1 of X, so a key row
 * carries its value), and the output A (S X) with A = X X^T: at the query
 * row, A picks the rows equal to the query and S X turns each into the value
 * that follows it.  Here, per request:
 *
 *   Q (n_queries, Dk+1)   row: β · one-hot of the query over the request's
 *                         Dk distinct KEY symbols (all zero when the query is
 *                         no key), and β in the position column.
 *   K (n_pairs+1, Dk+1)   row 0: the sentinel "null key" (∅, ⊥): zero
 *                         one-hot, 0.5 in the position column; row j+1:
 *                         one-hot of k_j, j / (2 n_pairs) in the position
 *                         column (a positional encoding).
 *   V (n_pairs+1, Dv+1)   the shifted X restricted to key rows: row j+1 is the
 *                         one-hot of v_j over the Dv distinct VALUE symbols;
 *                         row 0 is the one-hot of the extra ⊥ column.
 *   answer = softmax(Q K^T) V,  decoded by argmax: a value or ⊥.
 *
 * So score(q, j) = β (match(q, k_j) + j / (2n)), score(q, ∅) = β / 2:
 *   - a matching key scores >= β, every other key < β/2, the sentinel β/2:
 *     when no key matches the sentinel wins and the output IS ⊥;
 *   - among matching keys the latest (largest j) scores highest: a repeated
 *     key answers with its latest value, a key-value store's overwrite;
 *   - the smallest gap between any two scores of a row is β / (2n) = 128
 *     (β = 256 n), and e^-128 underflows to 0 in float: the softmax is hard,
 *     the winner's weight is exactly 1.0f, the output row exactly one-hot.
 * In float the one-hot products are exact and the scores (integers up to
 * 3 * 128 n < 2^24 but for the rounded bias) are off by at most ~1 against
 * gaps of 128, so the argument holds; tfm_recall_exact still verifies that
 * each output row is exactly one-hot and is the attended position's value,
 * and returns TFM_E_INTERNAL otherwise.  Keys and
 * values are separate symbol spaces: a query is compared with keys only
 * (the lecture's X X^T masked to key rows), so ids may be shared freely.
 * Queries do not see each other: each is one more row against the same keys.
 *
 * Tiling (FlashAttention style): query blocks of TFM_RECALL_QUERY_BLOCK rows
 * against key blocks of TFM_RECALL_KEY_BLOCK rows.  Per key block: scores
 * (qb, kb) = Q_blk · K_blk^T by sgemm; per row a running max and sum
 * (online softmax, the accumulator rescaled when the max moves); then
 * acc (qb, Dv+1) += P · V_blk by sgemm.  Nothing of size n x n, n x Dv or
 * n_queries x anything is ever held.  Peak extra memory, n = n_pairs,
 * qb = min(QB, n_queries), kb = min(KB, n + 1), Dk, Dv <= n distinct symbols:
 *
 *   4 * [ (qb + kb) * (Dk + 1) + (qb + kb) * (Dv + 1) + qb * kb + 3 * qb ]
 *     + 16 * cap + 12 * n  (+ 64 bytes alignment per buffer, 13 buffers)
 *
 * where cap, the interning table size, is the smallest power of two
 * >= max(2n, 2) (< 4n).  That is linear in n, and independent of n_queries
 * beyond one block; at 4096 pairs and 1024 queries, all symbols distinct, it
 * is 6 506 752 bytes (6.2 MiB) against 64 MiB for one 4096 x 4096 float
 * matrix.  tfm_recall_scratch_bound
 * gives the worst case; tfm_recall_stats reports the actual peak.
 *
 * Cost: O(n_queries * n * (Dk + Dv)) multiply-adds, so with distinct symbols
 * quadratic in n per query: the lecture's Ω(N²), made visible.  A hash map
 * answers the same lookups in O(1) each; this engine exists to show
 * attention doing it, not to be fast.
 */
#ifndef TFM_RECALL_H
#define TFM_RECALL_H

#include <stddef.h>
#include <stdint.h>

#include "tfm/profile.h"
#include "tfm/status.h"

/* Compile-time limits: beyond them TFM_E_RANGE.  Pairs: the scaled scores
 * reach 3 * 128 * n and must stay well inside float's exact integers (2^24);
 * queries: a bound on one call's run time.  The server's limits are lower. */
#define TFM_RECALL_MAX_PAIRS 32768
#define TFM_RECALL_MAX_QUERIES 65536
/* Tile sizes (rows of queries, rows of keys incl. the sentinel). */
#define TFM_RECALL_QUERY_BLOCK 64
#define TFM_RECALL_KEY_BLOCK 128

/* One request.  Symbols are ids the caller has interned (strings, integers:
 * any uint32 value; the core re-encodes them one-hot over the request's
 * distinct ones).  Key ids and value ids are separate spaces.  All arrays
 * are borrowed for the call only. */
typedef struct tfm_recall_request {
    int n_pairs;             /* 0 .. TFM_RECALL_MAX_PAIRS; 0: every answer ⊥ */
    const uint32_t *keys;    /* (n_pairs) k_1 .. k_n, in order: later overwrites */
    const uint32_t *values;  /* (n_pairs) v_1 .. v_n */
    int n_queries;           /* 0 .. TFM_RECALL_MAX_QUERIES */
    const uint32_t *queries; /* (n_queries) compared with keys only */
} tfm_recall_request;

typedef struct tfm_recall_answer {
    int found;      /* 1: value holds v_j; 0: ⊥ (no key matched) */
    uint32_t value; /* the value id when found, else 0 */
    int position;   /* pair index j attended to (the latest match); -1 for ⊥ */
    float weight;   /* its attention weight: 1.0f (the softmax is hard) */
} tfm_recall_answer;

typedef struct tfm_recall_stats {
    double flops;              /* contractions: Q K^T and P V, 2 per multiply-add */
    double seconds;            /* the whole call */
    double attention_seconds;  /* scores, softmax and P V (not encoding) */
    size_t peak_scratch_bytes; /* extra memory held at the peak (see above) */
    int key_symbols;           /* Dk: distinct keys */
    int value_symbols;         /* Dv: distinct values (⊥ not counted) */
} tfm_recall_stats;

/* Answers every query of req into out (n_queries answers, caller-owned; may
 * be NULL when n_queries is 0).  stats (optional) receives the numbers
 * above.  prof (optional, caller-owned, counted only when enabled) gets the
 * contractions and the softmax under phase prefill, component attention, and
 * the attention seconds/FLOPs/calls in the bucket of context n_pairs (1 when
 * empty); tokens are not counted.
 * Errors: TFM_E_INVALID for a NULL req, negative counts, or a NULL array
 * whose count is positive; TFM_E_RANGE beyond the limits above;
 * TFM_E_NOMEM; TFM_E_INTERNAL if an output row is not exactly one-hot (a
 * bug).  On error out's contents are unspecified, stats is untouched, and
 * nothing is left allocated.
 * Thread-safety: reentrant; each call allocates (and frees) its own scratch,
 * and the caller's arrays are only read.  Runs on the calling thread; like
 * tfm_workspace_create it keeps OpenBLAS single-threaded (process-wide). */
tfm_status tfm_recall_exact(const tfm_recall_request *req, tfm_recall_answer *out,
                            tfm_recall_stats *stats, tfm_profile *prof);

/* The worst-case peak_scratch_bytes of a request of this size (all symbols
 * distinct), for admission control; 0 for counts outside the limits. */
size_t tfm_recall_scratch_bound(int n_pairs, int n_queries);

#endif /* TFM_RECALL_H */
