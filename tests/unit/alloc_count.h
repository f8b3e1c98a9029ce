/*
 * alloc_count.h — counts every call of the malloc family, for the tests
 * that prove a path allocates nothing (test_noalloc, test_train_attn,
 * test_linear_attn).
 *
 * A test that uses it is registered with attnd_noalloc_test in
 * CMakeLists.txt, which links alloc_count.c and wraps malloc, calloc,
 * realloc, free and posix_memalign (-Wl,--wrap=...): every call, from the
 * test, the core or a library, goes through the counter (a free counts
 * too: a path that frees had allocated).  Read it before and after the
 * path; equal counts mean nothing was allocated or freed in between, on
 * any thread.
 */
#ifndef TU_ALLOC_COUNT_H
#define TU_ALLOC_COUNT_H

/* Calls of the malloc family (and frees of non-NULL pointers) so far. */
long tu_alloc_count(void);

#endif
