/* Software prefetches, shared by the core modules: hints that start a cache line's read. */
#ifndef VYRECACHE_PREFETCH_H
#define VYRECACHE_PREFETCH_H

#define vc_prefetch_read(p) __builtin_prefetch((const void *)(p), 0, 3)
#define vc_prefetch_write(p) __builtin_prefetch((const void *)(p), 1, 3)

#endif
