# The key index: an open-addressing hash map from a uint64 key to a uint32 slot index, probed a
# group of buckets at a time through one control byte per bucket (the layout of SwissTable).
#
#   ctrl:    [ 5a 80 80 13 fe 80 80 80 ... | 80 2c 80 ... ]   one byte per bucket
#   buckets: [ 17 -- -- 4  -- -- -- -- ... | -- 9  -- ... ]   the slot of each full bucket
#
# A group is 16 buckets where the CPU has SSE2 and 8 elsewhere (groups.h).  A control byte is
# EMPTY (0x80), DELETED (0xFE) or, for a full bucket, 7 bits of its key's hash (h2).  A key's
# hash picks its home group (the top bits) and its h2 (the 7 bits below those).  A lookup
# compares all the home group's control bytes with h2 at once, reads the key of each matching
# bucket's slot (almost always one: the right one), and stops at the first group holding an
# EMPTY byte; only a full group sends it on to the next.  So a lookup costs one compare per
# group instead of one per bucket, and a miss reads no slot at all in the common case.
#
# Invariant: every live slot (tier >= 0) and every ghost (engine_policies.pxi) is in exactly one
# full bucket, whose byte is its key's h2, in its home group or in a later one reachable without
# passing a group that holds an EMPTY byte.  A delete in a group that holds an EMPTY byte makes
# the bucket EMPTY: no key can have probed past that group.  In a full group it leaves DELETED
# (a tombstone): keys may lie beyond.
# At most 9/16 of the buckets are full or deleted (`growth_left` counts what is left); a group
# is then rarely full and tombstones are rare.  When they use up the room, the map is rebuilt
# at the same size (or twice the size, if live keys fill most of it), so every operation stays
# amortized O(1) and lookups never slow down with churn.
#
# Memory: 5 bytes a bucket at a load between 9/32 and 9/16, 8.9 to 17.8 bytes per entry (at
# most 19 after a growth forced by tombstones).  (A limit of 5/8 saved up to 2 bytes per entry
# but slowed evicting inserts at sizes near it; BENCHMARKS.md, "The hash map".)  The number of
# entries is
# capped by MAX_SLOTS (engine_lists.pxi), not by the map.

cdef extern from *:
    """
    /* Fibonacci hashing: the top bits of key * 2^64/phi spread sequential and random keys alike. */
    #define VC_HASH_MULTIPLIER 0x9E3779B97F4A7C15ull
    """
    const uint64_t VC_HASH_MULTIPLIER


cdef extern from "groups.h":
    ctypedef struct vc_group_t:
        pass
    const uint8_t CTRL_EMPTY "VC_CTRL_EMPTY"
    const uint8_t CTRL_DELETED "VC_CTRL_DELETED"
    const int GROUP_BITS "VC_GROUP_BITS"            # 4 (16 buckets a group) with SSE2, else 3
    const int MIN_BUCKET_BITS "VC_MIN_BUCKET_BITS"  # two groups
    vc_group_t vc_group_load(const uint8_t* ctrl, uint64_t group) nogil
    uint64_t vc_group_match(vc_group_t group, uint64_t h2) nogil
    uint64_t vc_group_empty(vc_group_t group) nogil
    uint64_t vc_group_free(vc_group_t group) nogil
    uint64_t vc_group_lane(uint64_t mask) nogil


cdef extern from "prefetch.h":
    void vc_prefetch_read(const void* p) nogil
    void vc_prefetch_write(const void* p) nogil

cdef extern from "hugepages.h":
    void vc_advise_huge_pages(void* start, size_t bytes) nogil
    const size_t HUGE_PAGE_ARRAY_BYTES "VC_HUGE_PAGE_ARRAY_BYTES"

cdef inline uint64_t _hash(uint64_t key) noexcept nogil:
    return key * VC_HASH_MULTIPLIER


cdef inline uint64_t _home_group(Engine e, uint64_t h) noexcept nogil:
    return h >> e.group_shift


cdef inline uint64_t _h2(Engine e, uint64_t h) noexcept nogil:
    # The 7 bits just below the group's: the top bits of a multiplicative hash are its well
    # mixed ones.  (Fixed low bits, such as 25-31, are all zero for every key that is a multiple
    # of 2**32, like `id << 32`: every full byte of a group then matches, and each lookup of
    # such keys compares several of them; BENCHMARKS.md, "The hash map".)
    return (h >> e.h2_shift) & 0x7F


cdef inline uint64_t _map_bytes(Engine e) noexcept nogil:
    """Bytes the map holds: a control byte and a slot index per bucket."""
    return (e.bucket_mask + 1) * (sizeof(uint32_t) + 1)


cdef inline uint64_t _max_used(uint64_t n_buckets) noexcept nogil:
    """Full plus deleted buckets allowed in a map of `n_buckets`: 9/16 of them."""
    return n_buckets // 2 + n_buckets // 16


cdef inline uint32_t _find(Engine e, uint64_t key) noexcept nogil:
    return _find_from(e, key, _hash(key))


cdef inline uint32_t _find_from(Engine e, uint64_t key, uint64_t h) noexcept nogil:
    """_find() for a key whose hash `h` the caller computed (the batch calls' prefetch)."""
    cdef uint64_t unused_gap
    return _lookup(e, key, h, &unused_gap)


cdef inline uint32_t _lookup(Engine e, uint64_t key, uint64_t h, uint64_t* gap) noexcept nogil:
    """_find_from() that also reports, for an absent key, the bucket an insert of it would take
    now (what a miss then does, without probing again): the first EMPTY or DELETED bucket of
    its probe path."""
    return _lookup_with_ghost(e, key, h, gap, NULL)


cdef inline uint32_t _lookup_with_ghost(Engine e, uint64_t key, uint64_t h, uint64_t* gap,
                                        uint32_t* ghost) noexcept nogil:
    """_lookup() that also reports, through `ghost` (unless NULL), tier 0's ghost of an absent
    key, or VC_NIL: the same probe finds both (engine_policies.pxi, ghosts)."""
    # The common cases inline: the key is the home group's only h2 match, or the home group has
    # no match and an EMPTY byte.  Anything else (a false match, a full group) probes on.
    cdef uint64_t group = _home_group(e, h), matches
    cdef vc_group_t word
    cdef uint32_t slot
    # The group's slot indices are a known address: start that read with the control bytes',
    # or a large map pays two cache misses in a row before it can even read the slot.
    vc_prefetch_read(&e.buckets[group << GROUP_BITS])
    if ghost != NULL:
        ghost[0] = VC_NIL
    word = vc_group_load(e.ctrl, group)
    matches = vc_group_match(word, _h2(e, h))
    if matches != 0:
        slot = e.buckets[(group << GROUP_BITS) + vc_group_lane(matches)]
        # A ghost of the key is no hit; an engine without ghosts skips the test of the state.
        if vc_likely(e.slots[slot].key == key and (e.n_ghosts == 0 or e.slots[slot].tier >= 0)):
            return slot
    elif vc_likely(vc_group_empty(word) != 0):
        gap[0] = (group << GROUP_BITS) + vc_group_lane(vc_group_free(word))
        return VC_NIL
    return _lookup_probing(e, key, h, gap, ghost)


cdef uint32_t _lookup_probing(Engine e, uint64_t key, uint64_t h, uint64_t* gap,
                              uint32_t* ghost) noexcept nogil:
    """_lookup_with_ghost() for every case: all the h2 matches of every group on the probe
    path."""
    cdef uint64_t group = _home_group(e, h), h2 = _h2(e, h), matches, free
    cdef uint64_t first_free = UINT64_MAX
    cdef vc_group_t word
    cdef uint32_t slot
    cdef Slot* s
    while True:
        word = vc_group_load(e.ctrl, group)
        matches = vc_group_match(word, h2)
        while matches != 0:
            slot = e.buckets[(group << GROUP_BITS) + vc_group_lane(matches)]
            s = &e.slots[slot]
            if s.key == key:
                if s.tier >= 0:
                    return slot
                if ghost != NULL and s.pins == 0:       # a ghost: of tier 0?
                    ghost[0] = slot
            matches &= matches - 1
        free = vc_group_free(word)
        if first_free == UINT64_MAX and free != 0:
            first_free = (group << GROUP_BITS) + vc_group_lane(free)
        if vc_group_empty(word) != 0:
            gap[0] = first_free
            return VC_NIL
        group = (group + 1) & e.group_mask


cdef inline uint64_t _free_bucket(Engine e, uint64_t h) noexcept nogil:
    """The first EMPTY or DELETED bucket on the probe path of hash `h` (the map is never full)."""
    cdef uint64_t group = _home_group(e, h), free
    while True:
        free = vc_group_free(vc_group_load(e.ctrl, group))
        if vc_likely(free != 0):
            return (group << GROUP_BITS) + vc_group_lane(free)
        group = (group + 1) & e.group_mask


cdef inline void _map_place(Engine e, uint64_t bucket, uint32_t slot, uint64_t h) noexcept nogil:
    """File `slot` (hash `h`) in a free bucket of its probe path; the caller checked growth_left."""
    if e.ctrl[bucket] == CTRL_EMPTY:
        e.growth_left -= 1
    e.ctrl[bucket] = <uint8_t>_h2(e, h)
    e.buckets[bucket] = slot


cdef inline void _prefetch_buckets(Engine e, uint64_t key) noexcept nogil:
    """Start the reads of the control bytes and slot indices of `key`'s home group."""
    cdef uint64_t group = _home_group(e, _hash(key))
    vc_prefetch_write(&e.ctrl[group << GROUP_BITS])
    vc_prefetch_write(&e.buckets[group << GROUP_BITS])


cdef inline void _map_insert(Engine e, uint32_t slot) noexcept nogil:
    # The caller made room (_reserve_one) and knows the key is absent (but for its ghosts).
    cdef uint64_t h = _hash(e.slots[slot].key)
    _map_place(e, _free_bucket(e, h), slot, h)


cdef inline void _map_erase(Engine e, uint32_t slot) noexcept nogil:
    _map_erase_from(e, slot, _hash(e.slots[slot].key))


cdef inline void _map_erase_from(Engine e, uint32_t slot, uint64_t h) noexcept nogil:
    """Remove the bucket holding `slot`, filed under hash `h` (the slot may hold another key
    already: see _replace_coldest)."""
    cdef uint64_t group = _home_group(e, h), h2 = _h2(e, h), matches, bucket
    cdef vc_group_t word
    while True:
        word = vc_group_load(e.ctrl, group)
        matches = vc_group_match(word, h2)
        while matches != 0:
            bucket = (group << GROUP_BITS) + vc_group_lane(matches)
            if e.buckets[bucket] == slot:
                if vc_likely(vc_group_empty(word) != 0):
                    e.ctrl[bucket] = CTRL_EMPTY
                    e.growth_left += 1
                else:
                    e.ctrl[bucket] = CTRL_DELETED
                e.buckets[bucket] = VC_NIL
                return
            matches &= matches - 1
        group = (group + 1) & e.group_mask


# Batch calls know their keys in advance, so they start the memory reads of later keys while
# working on the current one: key i + 3*PREFETCH_STEP's control group and buckets, key
# i + 2*PREFETCH_STEP's slot, key i + PREFETCH_STEP's list neighbours (what a hit relinks).  Each
# stage reads only what an earlier stage fetched, so the chain group -> slot -> neighbours
# overlaps across keys instead of stalling every key.  Only hints: a stage that reads an entry a
# later key moves or evicts just fetches a useless line.  Each key is hashed once: its hash waits
# in a small ring until the stages and then the lookup itself use it.
#
# Only for tables beyond PREFETCH_MIN_BYTES: while the slots and buckets fit in the L2 cache the
# stages cost instructions and save no stall.  (The stages are called for the
# value they return, the key's hash: a void helper that only prefetches is "const" to GCC, and
# calls to it are dropped as dead code.)
#
# The step: a stage must start a read long enough before the next stage needs its line: eight
# keys of work must take longer than a DRAM load, and four did not (BENCHMARKS.md, "The batch
# loop, the per-tier state and the prefetch distance").
cdef enum:
    PREFETCH_STEP = 8                       # a power of two, so the ring is one
    PREFETCH_RING = 4 * PREFETCH_STEP       # holds the hashes of the 3 * PREFETCH_STEP keys ahead
    PREFETCH_MIN_BYTES = 1 << 20    # about half of a server core's L2 cache


ctypedef struct Prefetcher:
    uint64_t hashes[PREFETCH_RING]      # the hash of keys[k] at hashes[k % PREFETCH_RING]
    bint started                # the ring holds the hashes of the keys ahead
    bint enabled                # the tables are large enough for prefetching to pay


cdef inline void _prefetch_start(Engine e, Prefetcher* ring) noexcept nogil:
    ring.started = False
    ring.enabled = <uint64_t>e.slot_capacity * sizeof(Slot) + _map_bytes(e) >= PREFETCH_MIN_BYTES


cdef inline uint32_t _first_match(Engine e, uint64_t h) noexcept nogil:
    """The slot of the first bucket of h's home group whose byte matches (a guess: a prefetch
    target), or VC_NIL."""
    cdef uint64_t group = _home_group(e, h)
    cdef uint64_t matches = vc_group_match(vc_group_load(e.ctrl, group), _h2(e, h))
    if matches == 0:
        return VC_NIL
    return e.buckets[(group << GROUP_BITS) + vc_group_lane(matches)]


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline uint64_t _prefetch_keys(Engine e, Prefetcher* ring, const uint64_t[::1] keys,
                                    Py_ssize_t i, bint neighbours) noexcept nogil:
    """Prefetch for the keys after keys[i] (see above); `neighbours` for calls that relink.
    Returns the hash of keys[i]."""
    cdef Py_ssize_t ahead = i + 3 * PREFETCH_STEP
    cdef Py_ssize_t k, n = keys.shape[0]
    cdef uint64_t h, group
    cdef uint32_t slot
    cdef Slot* s
    if not ring.enabled:
        return _hash(keys[i])
    if vc_unlikely(not ring.started):
        ring.started = True
        for k in range(i, ahead if ahead < n else n):
            ring.hashes[k & (PREFETCH_RING - 1)] = _hash(keys[k])
    if ahead < n:
        h = _hash(keys[ahead])
        ring.hashes[ahead & (PREFETCH_RING - 1)] = h
        group = _home_group(e, h)
        vc_prefetch_read(&e.ctrl[group << GROUP_BITS])
        vc_prefetch_read(&e.buckets[group << GROUP_BITS])
        slot = _first_match(e, ring.hashes[(i + 2 * PREFETCH_STEP) & (PREFETCH_RING - 1)])
        if slot != VC_NIL:
            vc_prefetch_write(&e.slots[slot])
            vc_prefetch_write(<char*>&e.slots[slot] + sizeof(Slot) - 1)     # may span two lines
        if neighbours:
            slot = _first_match(e, ring.hashes[(i + PREFETCH_STEP) & (PREFETCH_RING - 1)])
            if slot != VC_NIL and e.slots[slot].key == keys[i + PREFETCH_STEP]:
                s = &e.slots[slot]
                if s.prev != VC_NIL:
                    vc_prefetch_write(&e.slots[s.prev].next)
                if s.next != VC_NIL:
                    vc_prefetch_write(&e.slots[s.next].prev)
    return ring.hashes[i & (PREFETCH_RING - 1)]


cdef int _resize_buckets(Engine e, int bits) noexcept nogil:
    """Allocate 2**bits buckets and re-file every entry and ghost (also what clears tombstones); -1
    when out of memory, the map then as it was."""
    cdef uint64_t n = (<uint64_t>1) << bits
    cdef uint32_t* fresh = <uint32_t*>PyMem_RawMalloc(n * sizeof(uint32_t))
    cdef uint8_t* fresh_ctrl = <uint8_t*>PyMem_RawMalloc(n)
    cdef uint32_t slot
    if fresh == NULL or fresh_ctrl == NULL:
        PyMem_RawFree(fresh)
        PyMem_RawFree(fresh_ctrl)
        return -1
    vc_advise_huge_pages(fresh, n * sizeof(uint32_t))
    memset(fresh, 0xFF, n * sizeof(uint32_t))
    memset(fresh_ctrl, CTRL_EMPTY, n)
    PyMem_RawFree(e.buckets)
    PyMem_RawFree(e.ctrl)
    e.buckets = fresh
    e.ctrl = fresh_ctrl
    e.bucket_mask = n - 1
    e.group_mask = (n >> GROUP_BITS) - 1
    e.group_shift = 64 - (bits - GROUP_BITS)
    e.h2_shift = e.group_shift - 7
    e.growth_left = _max_used(n)
    for slot in range(e.slot_high_water):
        if e.slots[slot].tier >= 0 or e.slots[slot].tier == GHOST_TIER:
            _map_insert(e, slot)
    return 0


cdef inline int _reserve_buckets(Engine e, uint64_t wanted) noexcept nogil:
    """Make sure `wanted` more keys can be filed; -1 when out of memory."""
    cdef int bits = 64 - e.group_shift + GROUP_BITS
    if vc_likely(e.growth_left >= wanted):
        return 0
    # Live keys fill over 15/16 of the allowance: grow.  Otherwise tombstones took the room:
    # rebuild at the same size, which frees at least 1/16 of it (amortized O(1) either way).
    # Growing only past 15/16 keeps the map under 19 bytes per entry after any doubling, and
    # the engine under 64.
    if (<uint64_t>e.n_live + e.n_ghosts + wanted) * 16 > _max_used(e.bucket_mask + 1) * 15:
        bits += 1
    return _resize_buckets(e, bits)
