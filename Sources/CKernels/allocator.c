#include "CKernels.h"
#ifdef __GLIBC__
#include <malloc.h>
#endif

void mi_keep_freed_memory(void) {
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  /* glibc's largest allowed threshold */
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

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
