/*
 * pool.c — the compute thread pool and aligned allocation.
 *
 * Why our own pool: a decode step is ~50 short parallel regions (one per
 * weight matrix) of 5–50 us each, so a job must start in well under a
 * microsecond.  Workers therefore spin on a generation counter for a while
 * after each job and only then sleep on a condition variable.  OpenBLAS is
 * kept at one thread and driven from these same threads (tfm__matmul_sgemm
 * splits a product by weight rows), so there is exactly one set of compute
 * threads per workspace and no second pool to fight over the cores.
 *
 * Lost wake-ups: run() bumps `gen` and then reads `sleepers`; a worker
 * bumps `sleepers` under the mutex and then re-reads `gen` before waiting.
 * Both are sequentially consistent, so at least one of them sees the other,
 * and the broadcast is sent under the mutex.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* How long a worker spins for the next job before sleeping. */
#define SPIN_SECONDS 200e-6

struct tfm__pool {
    int n;
    pthread_t *threads;
    tfm__task_fn fn;
    void *ctx;
    atomic_uint gen;
    atomic_int pending;
    atomic_int sleepers;
    atomic_int stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

typedef struct {
    tfm__pool *pool;
    int index;
} worker_arg;

static void *worker(void *arg)
{
    worker_arg *wa = arg;
    tfm__pool *p = wa->pool;
    int index = wa->index;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load(&p->gen);
        if (g == seen) {
            double t0 = tfm_now();
            int spins = 0;
            while ((g = atomic_load(&p->gen)) == seen) {
                cpu_relax();
                if (++spins % 256 == 0 && tfm_now() - t0 > SPIN_SECONDS)
                    break;
            }
            if (g == seen) {
                pthread_mutex_lock(&p->mu);
                atomic_fetch_add(&p->sleepers, 1);
                while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
                    pthread_cond_wait(&p->cv, &p->mu);
                atomic_fetch_sub(&p->sleepers, 1);
                pthread_mutex_unlock(&p->mu);
            }
        }
        if (atomic_load(&p->stop))
            break;
        seen = g;
        p->fn(p->ctx, index, p->n);
        atomic_fetch_sub(&p->pending, 1);
    }
    return NULL;
}

tfm__pool *tfm__pool_create(int n_threads)
{
    if (n_threads < 1)
        n_threads = 1;
    tfm__pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n = n_threads;
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->stop, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads)
        goto fail;
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa)
            goto fail;
        wa->pool = p;
        wa->index = i;
        if (pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
            free(wa);
            goto fail;
        }
        p->n = i + 1; /* threads started so far, for a clean destroy */
    }
    p->n = n_threads;
    return p;
fail:
    tfm__pool_destroy(p);
    return NULL;
}

void tfm__pool_destroy(tfm__pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (p->threads)
        for (int i = 1; i < p->n; i++)
            if (p->threads[i])
                pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}

int tfm__pool_size(const tfm__pool *p) { return p ? p->n : 1; }

void tfm__pool_run(tfm__pool *p, tfm__task_fn fn, void *ctx)
{
    if (!p || p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->pending, p->n - 1);
    atomic_fetch_add(&p->gen, 1);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(ctx, 0, p->n);
    /* Spin for the stragglers, but yield once it takes long: when another
     * process holds the other core, a worker may be descheduled, and
     * spinning would only burn the timeslice it needs to finish. */
    for (int spins = 0; atomic_load(&p->pending) > 0; spins++) {
        if (spins < 4096)
            cpu_relax();
        else
            sched_yield();
    }
}

void tfm__split(int n, int i, int nthreads, int align, int *lo, int *hi)
{
    int units = (n + align - 1) / align;
    int per = units / nthreads, extra = units % nthreads;
    int u0 = i * per + (i < extra ? i : extra);
    int u1 = u0 + per + (i < extra ? 1 : 0);
    *lo = u0 * align < n ? u0 * align : n;
    *hi = u1 * align < n ? u1 * align : n;
}

/* Weights and KV caches are streamed end to end on every token; on 2 MiB
 * pages the streaming kernels measured ~25% faster (fewer TLB misses, and
 * the prefetcher is not stopped at every 4 KiB boundary), so large blocks
 * are 2 MiB aligned and advised as huge pages (a hint; THP "madvise" mode). */
#define HUGE_ALIGN ((size_t)2 << 20)

void *tfm__alloc(size_t bytes)
{
    if (bytes == 0)
        return NULL;
    void *p = NULL;
    /* round up so vector loops may read a whole last line */
    bytes = (bytes + 63) & ~(size_t)63;
    size_t align = bytes >= HUGE_ALIGN ? HUGE_ALIGN : 64;
    if (posix_memalign(&p, align, bytes) != 0)
        return NULL;
#ifdef MADV_HUGEPAGE
    if (align == HUGE_ALIGN)
        madvise(p, bytes & ~(HUGE_ALIGN - 1), MADV_HUGEPAGE);
#endif
    return p;
}

void tfm__free(void *p) { free(p); }
