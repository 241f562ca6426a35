// A pool of worker threads for splitting one matmul (or any loop) over cores with little
// hand-off cost: a decode step runs ~200 small matmuls, and waking threads through the OS for
// each costs more than the matmul gains. Workers spin briefly on the job counter, then sleep on
// a condition variable; parts are claimed dynamically, and the caller claims them too, so a
// worker that is not scheduled (the other vCPU busy with a foreign job) never stalls a job:
// the caller runs what nobody claimed.
#include "CKernels.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define MI_PAUSE() _mm_pause()
#else
#define MI_PAUSE() ((void)0)
#endif

/// Spins of a waiting worker before it sleeps (~50 µs): long enough to span the gap between
/// one step's matmuls, short enough not to hold a core while the engine is idle.
#define MI_SPINS 1500
#define MI_MAX_WORKERS 63

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    /// (job << 32) | (parts << 16) | next part to claim: a claim succeeds only for the current
    /// job, and a late worker never reads another field of a job that is not its own.
    _Atomic uint64_t ticket;
    _Atomic int done;
    _Atomic int busy;   // a job is running (a second caller runs its loop alone)
    mi_task_fn fn;
    void *ctx;
    int workers, sleepers;
} pool = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER };

/// Claims and runs parts of job `job` until none is left; returns how many it ran.
static int run_parts(uint32_t job) {
    int ran = 0;
    for (;;) {
        uint64_t t = atomic_load_explicit(&pool.ticket, memory_order_acquire);
        int next = (int)(t & 0xFFFF), parts = (int)((t >> 16) & 0xFFFF);
        if ((uint32_t)(t >> 32) != job || next >= parts) return ran;
        if (!atomic_compare_exchange_weak_explicit(&pool.ticket, &t, t + 1, memory_order_acq_rel, memory_order_acquire)) continue;
        pool.fn(pool.ctx, next);   // fn and ctx are this job's until all its parts are done
        atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
        ran++;
    }
}

static void *worker(void *unused) {
    (void)unused;
    uint32_t seen = 0;
    for (;;) {
        uint32_t job;
        int spins = 0;
        while ((job = (uint32_t)(atomic_load_explicit(&pool.ticket, memory_order_acquire) >> 32)) == seen) {
            if (++spins < MI_SPINS) { MI_PAUSE(); continue; }
            pthread_mutex_lock(&pool.lock);
            pool.sleepers++;
            while ((uint32_t)(atomic_load_explicit(&pool.ticket, memory_order_acquire) >> 32) == seen)
                pthread_cond_wait(&pool.wake, &pool.lock);
            pool.sleepers--;
            pthread_mutex_unlock(&pool.lock);
            spins = 0;
        }
        seen = job;
        run_parts(job);
    }
    return NULL;
}

/// Nanoseconds the calling thread spent handing jobs to the pool and waiting for parts run by
/// other threads (per thread, since the process started): `bench --profile`'s "thread hand-offs".
static _Thread_local uint64_t handoff_ns;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

uint64_t mi_pool_handoff_ns(void) { return handoff_ns; }

void mi_pool_run(int parts, mi_task_fn fn, void *ctx) {
    int expected = 0;
    if (parts <= 1 || parts > 0xFFFF || !atomic_compare_exchange_strong(&pool.busy, &expected, 1)) {
        for (int p = 0; p < parts; p++) fn(ctx, p);   // alone, or another job is running
        return;
    }
    uint64_t start = now_ns();
    pthread_mutex_lock(&pool.lock);
    int want = parts - 1 < MI_MAX_WORKERS ? parts - 1 : MI_MAX_WORKERS;
    while (pool.workers < want) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL) != 0) break;
        pthread_detach(t);
        pool.workers++;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
    uint32_t job = (uint32_t)(atomic_load_explicit(&pool.ticket, memory_order_relaxed) >> 32) + 1;
    atomic_store_explicit(&pool.ticket, (uint64_t)job << 32 | (uint64_t)parts << 16, memory_order_release);
    if (pool.sleepers > 0) pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    uint64_t handed = now_ns();
    run_parts(job);
    uint64_t ran = now_ns();
    // Every part is claimed; wait for the ones other threads run (spin briefly, then yield).
    for (int spins = 0; atomic_load_explicit(&pool.done, memory_order_acquire) < parts; spins++) {
        if (spins < MI_SPINS) MI_PAUSE(); else sched_yield();
    }
    atomic_store_explicit(&pool.busy, 0, memory_order_release);
    handoff_ns += (handed - start) + (now_ns() - ran);
}
