# The key index: an open-addressing hash map from a uint64 key to a uint32 slot index.
#
#   buckets: [ 7 | NIL | 3 | 12 | NIL | ... ]     power-of-two length, linear probing
#                  the key lives in slots[bucket].key, so a bucket costs 4 bytes
#
# Invariant: every live slot (tier >= 0) is in exactly one bucket, reachable from its key's home
# bucket without crossing an empty bucket.  Deletion shifts the following run back instead of
# leaving tombstones, so lookups never slow down with churn.  The load factor stays at most 1/2:
# a hit costs about 1.5 probes, and 4 bytes per bucket keep the map under 17 bytes per entry.

cdef extern from *:
    """
    #include <sys/mman.h>
    #define VC_HUGE_PAGE_ARRAY_BYTES ((size_t)4 << 20)
    /* Ask for transparent huge pages on the 2 MiB-aligned inside of a large array.  A hit reads
       a bucket, its slot and the slot's two list neighbours at random places; with 4 KiB pages
       each of those also misses the TLB once the arrays pass a few MiB, which costs as much as
       the cache miss itself (more under virtualisation).  Only a hint: where the kernel keeps
       THP off it does nothing; the rounding waste is at most 2 MiB of a 4 MiB+ array. */
    static void vc_advise_huge_pages(void *start, size_t bytes) {
    #ifdef MADV_HUGEPAGE
        const uintptr_t huge = (uintptr_t)2 << 20;
        uintptr_t first = ((uintptr_t)start + huge - 1) & ~(huge - 1);
        uintptr_t last = ((uintptr_t)start + bytes) & ~(huge - 1);
        if (bytes >= VC_HUGE_PAGE_ARRAY_BYTES && last > first)
            madvise((void *)first, last - first, MADV_HUGEPAGE);
    #endif
    }

    /* Fibonacci hashing: the top bits of key * 2^64/phi spread sequential and random keys alike. */
    #define VC_HASH_MULTIPLIER 0x9E3779B97F4A7C15ull
    """
    const uint64_t VC_HASH_MULTIPLIER
    void vc_advise_huge_pages(void* start, size_t bytes) nogil
    const size_t HUGE_PAGE_ARRAY_BYTES "VC_HUGE_PAGE_ARRAY_BYTES"

cdef enum:
    MIN_BUCKET_BITS = 4


cdef inline uint64_t _home(Engine e, uint64_t key) noexcept nogil:
    return (key * VC_HASH_MULTIPLIER) >> e.bucket_shift


cdef inline uint32_t _find(Engine e, uint64_t key) noexcept nogil:
    cdef uint64_t i = _home(e, key)
    cdef uint32_t slot
    while True:
        slot = e.buckets[i]
        if slot == VC_NIL or e.slots[slot].key == key:
            return slot
        i = (i + 1) & e.bucket_mask


cdef inline void _map_insert(Engine e, uint32_t slot) noexcept nogil:
    # The caller made room (_reserve_one) and knows the key is absent.
    cdef uint64_t i = _home(e, e.slots[slot].key)
    while e.buckets[i] != VC_NIL:
        i = (i + 1) & e.bucket_mask
    e.buckets[i] = slot


cdef void _map_erase(Engine e, uint32_t slot) noexcept nogil:
    cdef uint64_t i = _home(e, e.slots[slot].key)
    cdef uint64_t j, home
    cdef uint32_t moved
    while e.buckets[i] != slot:
        i = (i + 1) & e.bucket_mask
    j = i
    while True:
        j = (j + 1) & e.bucket_mask
        moved = e.buckets[j]
        if moved == VC_NIL:
            break
        home = _home(e, e.slots[moved].key)
        # `moved` may fill the hole at i only if its home is not cyclically inside (i, j].
        if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
            continue
        e.buckets[i] = moved
        i = j
    e.buckets[i] = VC_NIL


# Batch calls know their keys in advance, so they start the memory reads of later keys while
# working on the current one: key i + 3*PREFETCH_STEP's bucket, key i + 2*PREFETCH_STEP's slot,
# key i + PREFETCH_STEP's list neighbours (what a hit relinks).  Each stage reads only what an
# earlier stage fetched, so the chain bucket -> slot -> neighbours overlaps across keys instead
# of stalling every key.  Only hints: a stage that reads an entry a later key moves or evicts
# just fetches a useless line.
cdef extern from *:
    """
    #define vc_prefetch_read(p) __builtin_prefetch((const void *)(p), 0, 3)
    #define vc_prefetch_write(p) __builtin_prefetch((const void *)(p), 1, 3)
    """
    void vc_prefetch_read(const void* p) nogil
    void vc_prefetch_write(const void* p) nogil

cdef enum:
    PREFETCH_STEP = 4


cdef inline void _prefetch_bucket(Engine e, uint64_t key) noexcept nogil:
    vc_prefetch_read(&e.buckets[_home(e, key)])


cdef inline void _prefetch_slot(Engine e, uint64_t key) noexcept nogil:
    cdef uint32_t slot = e.buckets[_home(e, key)]
    if slot != VC_NIL:
        vc_prefetch_write(&e.slots[slot])
        vc_prefetch_write(<char*>&e.slots[slot] + sizeof(Slot) - 1)     # may span two lines


cdef inline void _prefetch_neighbours(Engine e, uint64_t key) noexcept nogil:
    cdef uint32_t slot = e.buckets[_home(e, key)]
    cdef Slot* s
    if slot == VC_NIL or e.slots[slot].key != key:
        return
    s = &e.slots[slot]
    if s.prev != VC_NIL:
        vc_prefetch_write(&e.slots[s.prev].next)
    if s.next != VC_NIL:
        vc_prefetch_write(&e.slots[s.next].prev)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void _prefetch_keys(Engine e, const uint64_t[:] keys, Py_ssize_t i,
                                bint neighbours) noexcept nogil:
    """Prefetch for the keys after keys[i] (see above); `neighbours` for calls that relink."""
    if i + 3 * PREFETCH_STEP < keys.shape[0]:
        _prefetch_bucket(e, keys[i + 3 * PREFETCH_STEP])
        _prefetch_slot(e, keys[i + 2 * PREFETCH_STEP])
        if neighbours:
            _prefetch_neighbours(e, keys[i + PREFETCH_STEP])


cdef int _resize_buckets(Engine e, int bits) noexcept nogil:
    """Allocate 2**bits buckets and re-insert every live slot; -1 when out of memory."""
    cdef uint64_t n = (<uint64_t>1) << bits
    cdef uint32_t* fresh = <uint32_t*>PyMem_RawMalloc(n * sizeof(uint32_t))
    cdef uint32_t slot
    if fresh == NULL:
        return -1
    vc_advise_huge_pages(fresh, n * sizeof(uint32_t))
    memset(fresh, 0xFF, n * sizeof(uint32_t))
    PyMem_RawFree(e.buckets)
    e.buckets = fresh
    e.bucket_mask = n - 1
    e.bucket_shift = 64 - bits
    for slot in range(e.slot_high_water):
        if e.slots[slot].tier >= 0:
            _map_insert(e, slot)
    return 0
