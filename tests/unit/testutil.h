/*
 * testutil.h — helpers shared by the unit tests (cmocka).
 *
 * Include after <stdarg.h>, <stddef.h>, <setjmp.h>, <stdint.h> and <cmocka.h>.
 */
#ifndef TFM_TESTUTIL_H
#define TFM_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "tfm/model.h"

/* A directory for this test's files (created): $ATTND_TEST_TMP or /tmp,
 * plus a per-process subdirectory.  Returns a static buffer. */
const char *tu_tmpdir(void);
/* tu_tmpdir()/name in a static rotating buffer (4 slots). */
const char *tu_path(const char *name);

/* A small random model: tiny shapes that still exercise GQA and untied
 * classifier when asked.  Fails the test on error. */
tfm_model *tu_random_model(int dim, int hidden, int layers, int heads, int kv_heads, int vocab,
                           int seq_len, int shared, uint64_t seed);

/* Largest |a-b| / max(1, |b|) over n values. */
float tu_max_rel_diff(const float *a, const float *b, size_t n);
/* max|got - ref| / max|ref| over n values (the infinity norm's relative
 * error; the absolute one when ref is all zero); INFINITY when got has a
 * NaN.  _f: a float reference. */
double tu_rel_inf(const float *got, const double *ref, size_t n);
double tu_rel_inf_f(const float *got, const float *ref, size_t n);
/* Fails the test (printing where) unless every value is within tol relative. */
void tu_check_tensor(const char *label, const float *got, const float *ref, size_t n, float tol);

/* A whole file read into a NUL-terminated buffer the caller frees (its
 * length in *n), and a buffer written to a file; either fails the test on
 * an I/O error. */
unsigned char *tu_slurp(const char *path, size_t *n);
void tu_spit(const char *path, const void *buf, size_t n);

/* Deterministic xorshift for test data. */
uint64_t tu_rng(uint64_t *s);
float tu_uniform(uint64_t *s); /* [-1, 1) */

/* Path to a file under ../shared/fixtures, or NULL when absent (a fresh clone). */
const char *tu_fixture(const char *name);

#endif
