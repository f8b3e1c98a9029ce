/*
 * pool.c — the compute thread pool and aligned allocation.
 *
 * Why our own pool: a decode step is ~50 short parallel regions (one per
 * weight matrix) of 5–50 us each, so a job must start in well under a
 * microsecond.  Workers therefore spin on the job word for a while after
 * each job and only then sleep on a condition variable.  OpenBLAS is kept
 * at one thread and driven from these same threads (tfm__matmul_sgemm
 * splits a product by weight rows), so there is exactly one set of compute
 * threads per workspace and no second pool to fight over the cores.
 *
 * Work is split into more chunks than threads and every thread, the
 * caller included, claims chunks until none is left.  A worker that the OS
 * has descheduled (another process on the other core) then delays a job by
 * at most the one chunk it holds, not by its whole share: with a static
 * split a 2-thread decode fell below the 1-thread speed as soon as anything
 * else ran on the machine.
 *
 * The job word `claim` holds generation (32 bits), chunk count (16) and
 * next chunk (16).  The caller writes fn and ctx, then publishes the word
 * with a release store; a thread claims a chunk by compare-and-swap on the
 * word, which fails once the generation has moved on.  The count must live
 * in the word: kept beside it, a late worker could read the next job's
 * larger count with the old generation and claim a chunk that job never
 * had (seen here, as chunks run twice).  fn and ctx may be read stale
 * safely: they only change after every chunk of the previous job was
 * claimed, so a claim of that job can no longer succeed.
 *
 * Lost wake-ups: run() publishes and then reads `sleepers`; a worker bumps
 * `sleepers` under the mutex and then re-reads the job word before
 * waiting.  Both are sequentially consistent, so at least one of them sees
 * the other, and the broadcast is sent under the mutex.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
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
    _Atomic(tfm__task_fn) fn;
    _Atomic(void *) ctx;
    atomic_uint_fast64_t claim; /* generation << 32 | chunks << 16 | next chunk */
    atomic_int done;            /* chunks finished in this generation */
    atomic_int sleepers;
    atomic_int stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct worker_arg *args; /* one per thread, the pool's: a worker frees
                              * nothing when it starts (a late start would
                              * show up in a caller's malloc count) */
};

typedef struct worker_arg {
    tfm__pool *pool;
    int index;
} worker_arg;

#define MAX_CHUNKS 0xFFFF

static uint32_t gen_of(uint64_t w) { return (uint32_t)(w >> 32); }
static int count_of(uint64_t w) { return (int)((w >> 16) & 0xFFFF); }
static int next_of(uint64_t w) { return (int)(w & 0xFFFF); }

/* Claims the next chunk of generation g; 0 when there is none. */
static int claim(tfm__pool *p, uint32_t g, int *chunk, int *n_chunks)
{
    uint64_t w = atomic_load(&p->claim);
    for (;;) {
        if (gen_of(w) != g || next_of(w) >= count_of(w))
            return 0;
        if (atomic_compare_exchange_weak(&p->claim, &w, w + 1)) {
            *chunk = next_of(w);
            *n_chunks = count_of(w);
            return 1;
        }
    }
}

/* Runs chunks of generation g until none is left. */
static void work(tfm__pool *p, uint32_t g, int thread)
{
    tfm__task_fn fn = atomic_load_explicit(&p->fn, memory_order_relaxed);
    void *ctx = atomic_load_explicit(&p->ctx, memory_order_relaxed);
    int c, n, done = 0;
    while (claim(p, g, &c, &n)) {
        fn(ctx, c, n, thread);
        done++;
    }
    if (done) /* once per thread, not per chunk: the line is shared */
        atomic_fetch_add(&p->done, done);
}

static void *worker(void *arg)
{
    const worker_arg *wa = arg;
    tfm__pool *p = wa->pool;
    int index = wa->index;
    uint32_t seen = gen_of(atomic_load(&p->claim));
    for (;;) {
        uint32_t g = gen_of(atomic_load(&p->claim));
        if (g == seen) {
            double t0 = tfm_now();
            int spins = 0;
            while ((g = gen_of(atomic_load(&p->claim))) == seen && !atomic_load(&p->stop)) {
                cpu_relax();
                if (++spins % 256 == 0 && tfm_now() - t0 > SPIN_SECONDS)
                    break;
            }
            if (g == seen) {
                pthread_mutex_lock(&p->mu);
                atomic_fetch_add(&p->sleepers, 1);
                while ((g = gen_of(atomic_load(&p->claim))) == seen && !atomic_load(&p->stop))
                    pthread_cond_wait(&p->cv, &p->mu);
                atomic_fetch_sub(&p->sleepers, 1);
                pthread_mutex_unlock(&p->mu);
            }
        }
        if (atomic_load(&p->stop))
            break;
        seen = g;
        work(p, g, index);
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
    p->n = 1;
    atomic_init(&p->claim, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->stop, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    p->args = calloc((size_t)n_threads, sizeof *p->args);
    if (!p->threads || !p->args)
        goto fail;
    for (int i = 1; i < n_threads; i++) {
        p->args[i] = (worker_arg){.pool = p, .index = i};
        if (pthread_create(&p->threads[i], NULL, worker, &p->args[i]) != 0)
            goto fail;
        p->n = i + 1; /* threads started so far, for a clean destroy */
    }
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
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (p->threads)
        for (int i = 1; i < p->n; i++)
            pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p->args);
    free(p);
}

int tfm__pool_size(const tfm__pool *p) { return p ? p->n : 1; }

void tfm__pool_run(tfm__pool *p, tfm__task_fn fn, void *ctx, int n_chunks)
{
    if (n_chunks <= 0)
        return;
    if (n_chunks > MAX_CHUNKS)
        n_chunks = MAX_CHUNKS; /* callers split their work by the count they pass */
    if (!p || p->n == 1 || n_chunks == 1) {
        for (int c = 0; c < n_chunks; c++)
            fn(ctx, c, n_chunks, 0);
        return;
    }
    atomic_store_explicit(&p->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&p->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    uint32_t g = gen_of(atomic_load(&p->claim)) + 1;
    /* publishes the fields above */
    atomic_store(&p->claim, (uint64_t)g << 32 | (uint64_t)n_chunks << 16);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    work(p, g, 0);
    /* Every chunk is claimed; wait for those still running elsewhere, and
     * yield if it takes long: their thread may be waiting for this core. */
    for (int spins = 0; atomic_load(&p->done) < n_chunks; spins++) {
        if (spins < 4096)
            cpu_relax();
        else
            sched_yield();
    }
}

int tfm__pool_chunks(const tfm__pool *p, int items, int per_thread)
{
    int n = tfm__pool_size(p) == 1 ? 1 : tfm__pool_size(p) * per_thread;
    return n < items ? n : (items > 0 ? items : 1);
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
