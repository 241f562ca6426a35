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
