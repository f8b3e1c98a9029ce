/* alloc_count.c — the wrapped malloc family behind alloc_count.h. */
#include <stdatomic.h>
#include <stddef.h>

#include "alloc_count.h"

static atomic_long allocs;

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t k);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
int __real_posix_memalign(void **p, size_t a, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t k);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);
int __wrap_posix_memalign(void **p, size_t a, size_t n);

long tu_alloc_count(void) { return atomic_load(&allocs); }

void *__wrap_malloc(size_t n)
{
    atomic_fetch_add(&allocs, 1);
    return __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t k)
{
    atomic_fetch_add(&allocs, 1);
    return __real_calloc(n, k);
}
void *__wrap_realloc(void *p, size_t n)
{
    atomic_fetch_add(&allocs, 1);
    return __real_realloc(p, n);
}
void __wrap_free(void *p)
{
    if (p)
        atomic_fetch_add(&allocs, 1);
    __real_free(p);
}
int __wrap_posix_memalign(void **p, size_t a, size_t n)
{
    atomic_fetch_add(&allocs, 1);
    return __real_posix_memalign(p, a, n);
}
