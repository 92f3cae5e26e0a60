/* Transparent huge pages for large arrays and memory blocks, shared by the core modules. */
#ifndef VYRECACHE_HUGEPAGES_H
#define VYRECACHE_HUGEPAGES_H

#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#define VC_HUGE_PAGE_ARRAY_BYTES ((size_t)4 << 20)

/* Ask for transparent huge pages on the 2 MiB-aligned inside of a large range.  Random reads of a
   large array, or long copies through a large block, miss the TLB once per 4 KiB page otherwise,
   which costs as much as the cache miss itself (more under virtualisation).  Only a hint: where
   the kernel keeps THP off it does nothing; the rounding waste is at most 2 MiB of 4 MiB+. */
static inline void vc_advise_huge_pages(void *start, size_t bytes) {
#ifdef MADV_HUGEPAGE
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t first = ((uintptr_t)start + huge - 1) & ~(huge - 1);
    uintptr_t last = ((uintptr_t)start + bytes) & ~(huge - 1);
    if (bytes >= VC_HUGE_PAGE_ARRAY_BYTES && last > first)
        madvise((void *)first, last - first, MADV_HUGEPAGE);
#endif
}

/* Write one byte of every 4 KiB page, so the memory is committed before the first operation:
   a mapping a driver hands out may be backed lazily, and each first write would then fault
   inside a put (and, without memory, fail there instead of at creation). */
static inline void vc_touch_pages(void *start, size_t bytes) {
    volatile char *p = (volatile char *)start;
    for (size_t i = 0; i < bytes; i += 4096)
        p[i] = 0;
}

#endif
