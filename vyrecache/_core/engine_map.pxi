# The key index: an open-addressing hash map from a uint64 key to a uint32 slot index.
#
#   buckets: [ 0|7 | NIL | 1|3 | 0|12 | NIL | ... ]     power-of-two length, linear probing
#              ^ the entry's distance from its key's home bucket (4 bits, 15: "15 or more")
#                  ^ its slot (28 bits); the key lives in slots[slot].key: 4 bytes a bucket
#
# Invariant: every live slot (tier >= 0) is in exactly one bucket, reachable from its key's home
# bucket without crossing an empty bucket, and the bucket holds its distance from that home.
# Deletion shifts the following run back instead of leaving tombstones, so lookups never slow
# down with churn; the distances let it do so without reading the shifted entries' slots (their
# keys, for their homes), which are cold lines: that read was a third of an eviction's time.
# The load factor stays at most 1/2: a hit costs about 1.5 probes, and 4 bytes per bucket keep
# the map under 17 bytes per entry.  The 28-bit slot caps a cache at 268,435,455 entries.

cdef extern from *:
    """
    /* Fibonacci hashing: the top bits of key * 2^64/phi spread sequential and random keys alike. */
    #define VC_HASH_MULTIPLIER 0x9E3779B97F4A7C15ull
    """
    const uint64_t VC_HASH_MULTIPLIER


cdef enum:
    BUCKET_SLOT_BITS = 28
    BUCKET_SLOT_MASK = 0x0FFFFFFF
    BUCKET_FAR = 15                     # the distance field's "15 or more": read the key


cdef inline uint32_t _bucket(uint32_t slot, uint64_t distance) noexcept nogil:
    if distance > BUCKET_FAR:
        distance = BUCKET_FAR
    return (<uint32_t>distance << BUCKET_SLOT_BITS) | slot


cdef inline uint32_t _bucket_slot(uint32_t bucket) noexcept nogil:
    """The slot of a non-empty bucket."""
    return bucket & BUCKET_SLOT_MASK


cdef inline uint64_t _bucket_distance(Engine e, uint32_t bucket, uint64_t position) noexcept nogil:
    """How far the entry in the non-empty bucket at `position` sits from its home bucket."""
    cdef uint64_t distance = bucket >> BUCKET_SLOT_BITS
    if vc_unlikely(distance == BUCKET_FAR):
        distance = (position - _home(e, e.slots[bucket & BUCKET_SLOT_MASK].key)) & e.bucket_mask
    return distance


cdef extern from "hugepages.h":
    void vc_advise_huge_pages(void* start, size_t bytes) nogil
    const size_t HUGE_PAGE_ARRAY_BYTES "VC_HUGE_PAGE_ARRAY_BYTES"

cdef enum:
    MIN_BUCKET_BITS = 4


cdef inline uint64_t _home(Engine e, uint64_t key) noexcept nogil:
    return (key * VC_HASH_MULTIPLIER) >> e.bucket_shift


cdef inline uint32_t _find(Engine e, uint64_t key) noexcept nogil:
    return _find_from(e, key, _home(e, key))


cdef inline uint32_t _find_from(Engine e, uint64_t key, uint64_t i) noexcept nogil:
    """_find() for a key whose home bucket `i` the caller computed (the batch calls' prefetch)."""
    cdef uint64_t unused_gap
    return _lookup(e, key, i, &unused_gap)


cdef inline uint32_t _lookup(Engine e, uint64_t key, uint64_t i, uint64_t* gap) noexcept nogil:
    """_find_from() that also reports, for an absent key, the empty bucket its probe ended on:
    where the key would be inserted now (what a miss then does, without probing again)."""
    cdef uint32_t bucket
    while True:
        bucket = e.buckets[i]
        if bucket == VC_NIL:
            gap[0] = i
            return VC_NIL
        if e.slots[_bucket_slot(bucket)].key == key:
            return _bucket_slot(bucket)
        i = (i + 1) & e.bucket_mask


cdef inline void _map_insert(Engine e, uint32_t slot) noexcept nogil:
    # The caller made room (_reserve_one) and knows the key is absent.
    cdef uint64_t home = _home(e, e.slots[slot].key)
    cdef uint64_t i = home
    while e.buckets[i] != VC_NIL:
        i = (i + 1) & e.bucket_mask
    e.buckets[i] = _bucket(slot, (i - home) & e.bucket_mask)


cdef inline void _map_erase(Engine e, uint32_t slot) noexcept nogil:
    _map_erase_from(e, slot, _home(e, e.slots[slot].key))


cdef void _map_erase_from(Engine e, uint32_t slot, uint64_t i) noexcept nogil:
    """Remove the bucket holding `slot`, searched from `i`, the home of the key it was filed
    under (the slot may hold another key already: see _replace_coldest)."""
    cdef uint64_t j, distance, gap
    cdef uint32_t moved
    while e.buckets[i] == VC_NIL or _bucket_slot(e.buckets[i]) != slot:
        i = (i + 1) & e.bucket_mask
    j = i
    while True:
        j = (j + 1) & e.bucket_mask
        moved = e.buckets[j]
        if moved == VC_NIL:
            break
        # `moved` may fill the hole at i only if its home is not cyclically inside (i, j],
        # that is if it sits at least as far from its home as from the hole.
        distance = _bucket_distance(e, moved, j)
        gap = (j - i) & e.bucket_mask
        if distance < gap:
            continue
        e.buckets[i] = _bucket(_bucket_slot(moved), distance - gap)
        i = j
    e.buckets[i] = VC_NIL


# Batch calls know their keys in advance, so they start the memory reads of later keys while
# working on the current one: key i + 3*PREFETCH_STEP's bucket, key i + 2*PREFETCH_STEP's slot,
# key i + PREFETCH_STEP's list neighbours (what a hit relinks).  Each stage reads only what an
# earlier stage fetched, so the chain bucket -> slot -> neighbours overlaps across keys instead
# of stalling every key.  Only hints: a stage that reads an entry a later key moves or evicts
# just fetches a useless line.  Each key is hashed once: its home bucket waits in a small ring
# until the stages and then the lookup itself use it; a map resize (a new bucket_shift) makes
# the ring compute its homes again.
#
# Only for tables beyond PREFETCH_MIN_BYTES: while the slots and buckets fit in the L2 cache the
# stages cost about 40 instructions per key and save no stall.  (The stages are called for the
# value they return, the key's home: a void helper that only prefetches is "const" to GCC, and
# calls to it are dropped as dead code.)
cdef extern from *:
    """
    #define vc_prefetch_read(p) __builtin_prefetch((const void *)(p), 0, 3)
    #define vc_prefetch_write(p) __builtin_prefetch((const void *)(p), 1, 3)
    """
    void vc_prefetch_read(const void* p) nogil
    void vc_prefetch_write(const void* p) nogil

cdef enum:
    PREFETCH_STEP = 4
    PREFETCH_RING = 16          # a power of two above 3 * PREFETCH_STEP
    PREFETCH_MIN_BYTES = 1 << 20    # half the L2 cache of the machines we measure on


ctypedef struct Prefetcher:
    uint64_t homes[16]          # PREFETCH_RING: the home of keys[k] at homes[k % PREFETCH_RING]
    int bucket_shift            # the map size they were computed for; -1 before the first key
    bint enabled                # the tables are large enough for prefetching to pay


cdef inline void _prefetch_start(Engine e, Prefetcher* ring) noexcept nogil:
    ring.bucket_shift = -1
    ring.enabled = (<uint64_t>e.slot_capacity * sizeof(Slot)
                    + (e.bucket_mask + 1) * sizeof(uint32_t)) >= PREFETCH_MIN_BYTES


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline uint64_t _prefetch_keys(Engine e, Prefetcher* ring, const uint64_t[:] keys,
                                    Py_ssize_t i, bint neighbours) noexcept nogil:
    """Prefetch for the keys after keys[i] (see above); `neighbours` for calls that relink.
    Returns the home bucket of keys[i]."""
    cdef Py_ssize_t ahead = i + 3 * PREFETCH_STEP
    cdef Py_ssize_t k, n = keys.shape[0]
    cdef uint64_t home
    cdef uint32_t slot
    cdef Slot* s
    if not ring.enabled:
        return _home(e, keys[i])
    if vc_unlikely(ring.bucket_shift != e.bucket_shift):
        ring.bucket_shift = e.bucket_shift
        for k in range(i, ahead if ahead < n else n):
            ring.homes[k & (PREFETCH_RING - 1)] = _home(e, keys[k])
    if ahead < n:
        home = _home(e, keys[ahead])
        ring.homes[ahead & (PREFETCH_RING - 1)] = home
        vc_prefetch_read(&e.buckets[home])
        slot = e.buckets[ring.homes[(i + 2 * PREFETCH_STEP) & (PREFETCH_RING - 1)]]
        if slot != VC_NIL:
            slot = _bucket_slot(slot)
            vc_prefetch_write(&e.slots[slot])
            vc_prefetch_write(<char*>&e.slots[slot] + sizeof(Slot) - 1)     # may span two lines
        if neighbours:
            slot = e.buckets[ring.homes[(i + PREFETCH_STEP) & (PREFETCH_RING - 1)]]
            if slot != VC_NIL and e.slots[_bucket_slot(slot)].key == keys[i + PREFETCH_STEP]:
                slot = _bucket_slot(slot)
                s = &e.slots[slot]
                if s.prev != VC_NIL:
                    vc_prefetch_write(&e.slots[s.prev].next)
                if s.next != VC_NIL:
                    vc_prefetch_write(&e.slots[s.next].prev)
    return ring.homes[i & (PREFETCH_RING - 1)]


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
