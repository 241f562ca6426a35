// Memory: the heap policy, huge-page allocations, and the streaming read that measures what a
// core can read from them.
#include "common.h"
#ifdef __GLIBC__
#include <malloc.h>
#endif

void mi_keep_freed_memory(void) {
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  /* glibc's largest allowed threshold */
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

void *mi_huge_alloc(size_t bytes) {
    const size_t huge = (size_t)2 << 20;
    size_t n = (bytes + huge - 1) / huge * huge;
    void *p = NULL;
    if (posix_memalign(&p, huge, n) != 0) return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, n, MADV_HUGEPAGE);   /* advice only: without THP the pages are ordinary */
#endif
    return p;
}

void mi_huge_free(void *p) { free(p); }

/* Whether the kernel counts MAP_NORESERVE mappings against memory (vm.overcommit_memory = 2,
 * strict accounting): there a reservation would hold its whole size. Read once per process. */
static int strict = 0;
static void read_overcommit_mode(void) {
    FILE *f = fopen("/proc/sys/vm/overcommit_memory", "r");
    if (!f) return;
    int mode = 0;
    if (fscanf(f, "%d", &mode) == 1) strict = mode == 2;
    fclose(f);
}
static int strict_overcommit(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, read_overcommit_mode);
    return strict;
}

void *mi_reserve(size_t bytes) {
#if defined(__linux__)
    if (strict_overcommit()) return NULL;
    /* 2 MiB-aligned, so the kernel can back all of it with huge pages: map 2 MiB more and
     * unmap the slack on either side. */
    const size_t huge = (size_t)2 << 20, n = (bytes + huge - 1) / huge * huge;
    uint8_t *m = mmap(NULL, n + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return NULL;
    uint8_t *p = (uint8_t *)(((uintptr_t)m + huge - 1) / huge * huge);
    if (p > m) munmap(m, (size_t)(p - m));
    if (m + n + huge > p + n) munmap(p + n, (size_t)(m + n + huge - (p + n)));
#if defined(MADV_HUGEPAGE)
    madvise(p, n, MADV_HUGEPAGE);
#endif
    return p;
#else
    (void)bytes;
    return NULL;
#endif
}

void mi_unreserve(void *p, size_t bytes) {
#if defined(__linux__)
    const size_t huge = (size_t)2 << 20;
    if (p) munmap(p, (bytes + huge - 1) / huge * huge);
#else
    (void)p; (void)bytes;
#endif
}

uint64_t mi_stream_read(const void *p, size_t bytes) {
#if MI_AVX512
    // Four independent accumulators so loads are not serialized behind one dependency chain.
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    const __m512i *v = (const __m512i *)p;
    size_t n = bytes / 64, i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(v + i));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(v + i + 1));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(v + i + 2));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(v + i + 3));
    }
    for (; i < n; i++) a0 = _mm512_xor_si512(a0, _mm512_load_si512(v + i));
    __m512i a = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    return (uint64_t)_mm512_reduce_add_epi64(a);
#else
    const uint64_t *w = (const uint64_t *)p;
    uint64_t x = 0;
    for (size_t i = 0; i < bytes / 8; i++) x ^= w[i];
    return x;
#endif
}
