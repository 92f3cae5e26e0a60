# Eviction policies from the literature, run per tier in C: FIFO, CLOCK, SIEVE, S3-FIFO, ARC and
# W-TinyLFU beside the original LRU (which keeps its own code paths in engine_lists.pxi).
#
# Every tier keeps one list of its entries (so count, used, the storage layer's walk and check()
# stay as they are), cut into up to three segments that follow each other from head to tail:
#
#   head                                                                            tail
#    |  segment 0: newest .. oldest  |  segment 1: newest .. oldest  |  segment 2 ...  |
#         seg_head[0]                     seg_head[1]                     seg_head[2]
#
#   FIFO, CLOCK, SIEVE: segment 0 only, in insertion order.
#   S3-FIFO: 0 = the small FIFO, 1 = the main FIFO.  Small's oldest sits next to main's newest.
#   ARC: 0 = T1 (seen once), 1 = T2 (seen twice or more).
#   W-TinyLFU: 0 = the window LRU, 1 = probation, 2 = protected (the main SLRU).
#
# Invariant: an entry's segment bits name the segment it lies in; seg_head[k] is the first entry
# of segment k on the list; seg_used/seg_count sum the segment.  Ghosts (keys that left a tier:
# S3-FIFO's ghost FIFO, ARC's B1 and B2) live in one node pool with a (key, tier) hash map, each
# tier's lists ordered most recent first.
#
# Every operation is O(1), amortized where a policy's own algorithm is: CLOCK's and S3-FIFO's
# second chances and SIEVE's hand clear a mark per step, and each mark was set by one access.
# Pinned entries are skipped where they lie (never victims), as the LRU walk skips them.
#
# An entry arriving in a tier (insert, spill, promotion, demotion) arrives as an insertion: the
# policy bits start clear, its access statistics (frequency, last_access) travel with it.

from libc.math cimport fabs

cdef enum:
    FLAG_MARK = 2           # CLOCK's reference bit, SIEVE's visited bit
    FREQ_SHIFT = 2          # S3-FIFO's 2-bit access counter
    FREQ_MASK = 0x0C
    SEG_SHIFT = 4           # the segment an entry lies in
    SEG_MASK = 0x30
    POLICY_BITS = 0x3E      # everything but FLAG_LIFTED
    MIN_GHOST_BUCKET_BITS = 6
    SKETCH_DEPTH = 4
    MIN_SKETCH_WORDS = 64
    ARC_T1_FULL = -2        # _arc_forgets(): T1 alone fills the directory's first half

POLICY_NAMES = ("lru", "fifo", "clock", "sieve", "s3fifo", "arc", "wtinylfu")


# ---- segments ---------------------------------------------------------------------------------

cdef inline int _seg(Slot* s) noexcept nogil:
    return (s.flags & SEG_MASK) >> SEG_SHIFT


cdef inline uint32_t _seg_after(PolicyState* ps, int k) noexcept nogil:
    """The first slot of the first non-empty segment after k, VC_NIL when there is none."""
    cdef int j
    for j in range(k + 1, 3):
        if ps.seg_head[j] != VC_NIL:
            return ps.seg_head[j]
    return VC_NIL


cdef inline uint32_t _seg_oldest(Engine e, int tier, int k) noexcept nogil:
    cdef PolicyState* ps = &e.pstate[tier]
    cdef uint32_t following
    if ps.seg_head[k] == VC_NIL:
        return VC_NIL
    following = _seg_after(ps, k)
    return e.tier_state[tier].tail if following == VC_NIL else e.slots[following].prev


cdef inline void _seg_link(Engine e, uint32_t slot, int tier, int k) noexcept nogil:
    """Link `slot` at the most recent end of segment k of `tier`."""
    cdef Slot* s = &e.slots[slot]
    cdef TierState* t = &e.tier_state[tier]
    cdef PolicyState* ps = &e.pstate[tier]
    cdef uint32_t before = ps.seg_head[k]
    cdef uint64_t charge = _charge(e, s.size)
    if before == VC_NIL:
        before = _seg_after(ps, k)
    s.tier = <int8_t>tier
    s.flags = <uint8_t>((s.flags & ~SEG_MASK) | (k << SEG_SHIFT))
    s.next = before
    if before == VC_NIL:
        s.prev = t.tail
        if t.tail != VC_NIL:
            e.slots[t.tail].next = slot
        else:
            t.head = slot
        t.tail = slot
    else:
        s.prev = e.slots[before].prev
        if s.prev != VC_NIL:
            e.slots[s.prev].next = slot
        else:
            t.head = slot
        e.slots[before].prev = slot
    ps.seg_head[k] = slot
    t.count += 1
    t.used += charge
    ps.seg_used[k] += charge
    ps.seg_count[k] += 1


cdef inline void _seg_unlink(Engine e, uint32_t slot) noexcept nogil:
    cdef Slot* s = &e.slots[slot]
    cdef PolicyState* ps = &e.pstate[s.tier]
    cdef int k = _seg(s)
    cdef uint64_t charge = _charge(e, s.size)
    if ps.seg_head[k] == slot:
        ps.seg_head[k] = s.next if s.next != VC_NIL and _seg(&e.slots[s.next]) == k else VC_NIL
    if ps.hand == slot:
        ps.hand = s.prev
    ps.seg_used[k] -= charge
    ps.seg_count[k] -= 1
    _unlink_charged(e, slot, charge)


cdef inline void _seg_move(Engine e, uint32_t slot, int k) noexcept nogil:
    """Move an entry to the most recent end of segment k of its own tier.  The move within its
    own segment (most hits) is small enough to inline where it is called; the move across
    segments is not."""
    if _seg(&e.slots[slot]) == k:
        _seg_to_front(e, slot, e.slots[slot].tier, k)
    else:
        _seg_move_across(e, slot, k)


cdef void _seg_move_across(Engine e, uint32_t slot, int k) noexcept nogil:
    cdef int tier = e.slots[slot].tier
    _seg_unlink(e, slot)
    _seg_link(e, slot, tier, k)


cdef inline void _seg_to_front(Engine e, uint32_t slot, int tier, int k) noexcept nogil:
    """_seg_move() within the entry's own segment k (a hit's move, a second chance): only the
    links change, as in LRU's _touch, not the segment's totals."""
    cdef Slot* s = &e.slots[slot]
    cdef TierState* t = &e.tier_state[tier]
    cdef PolicyState* ps = &e.pstate[tier]
    cdef uint32_t head = ps.seg_head[k]
    if head == slot:
        return
    if ps.hand == slot:
        ps.hand = s.prev
    # Not the segment's head, so prev is a slot.
    e.slots[s.prev].next = s.next
    if s.next != VC_NIL:
        e.slots[s.next].prev = s.prev
    else:
        t.tail = s.prev
    s.prev = e.slots[head].prev
    s.next = head
    if s.prev != VC_NIL:
        e.slots[s.prev].next = slot
    else:
        t.head = slot
    e.slots[head].prev = slot
    ps.seg_head[k] = slot


cdef inline uint32_t _seg_step(Engine e, int tier, int k, uint32_t prev) noexcept nogil:
    """The next entry of a walk from the oldest end of segment k towards its newest, given the
    slot before the current one (`prev`): that one while it is in the segment, else the oldest
    again (the walk goes round, as a clock hand does)."""
    if prev == VC_NIL or _seg(&e.slots[prev]) != k:
        return _seg_oldest(e, tier, k)
    return prev


cdef inline uint32_t _seg_oldest_unpinned(Engine e, int tier, int k) noexcept nogil:
    cdef uint32_t slot = _seg_oldest(e, tier, k)
    while slot != VC_NIL and _seg(&e.slots[slot]) == k:
        if not e.slots[slot].pins:
            return slot
        slot = e.slots[slot].prev
    return VC_NIL


# ---- ghosts -----------------------------------------------------------------------------------

# A ghost is a slot of the engine's own array (engine.pxd, Slot), filed in the key map as an
# entry is.  So a miss's lookup has read the key's group already and the ghost check that follows
# costs no memory read of its own, and an evicted entry becomes a ghost where it lies, keeping its
# slot and its bucket: the common miss of a full tier files and drops one key, as LRU's does.
# The map may hold a key more than once: an entry spilled into a lower tier is also a ghost of
# the tier it left.  Every lookup but _ghost_find passes over ghosts.

cdef uint32_t _ghost_find(Engine e, uint64_t key, uint64_t h, int tier) noexcept nogil:
    """The ghost of `key` (hash `h`) that `tier` remembers, or VC_NIL."""
    cdef uint64_t group, h2, matches
    cdef vc_group_t word
    cdef uint32_t slot
    cdef Slot* s
    if e.n_ghosts == 0:
        return VC_NIL
    group = _home_group(e, h)
    h2 = _h2(e, h)
    while True:
        word = vc_group_load(e.ctrl, group)
        matches = vc_group_match(word, h2)
        while matches != 0:
            slot = e.buckets[(group << GROUP_BITS) + vc_group_lane(matches)]
            s = &e.slots[slot]
            if s.key == key and s.tier == GHOST_TIER and s.pins == tier:
                return slot
            matches &= matches - 1
        if vc_group_empty(word) != 0:
            return VC_NIL
        group = (group + 1) & e.group_mask


cdef void _ghost_link(Engine e, uint32_t slot, int tier, int which) noexcept nogil:
    """Make `slot` (off every list, filed in the map under its key, its size kept) the most
    recent ghost of list `which` of `tier`.  S3-FIFO's ghost FIFO then forgets its oldest keys
    until it fits its capacity."""
    cdef PolicyState* ps = &e.pstate[tier]
    _ghost_attach(e, slot, tier, which)
    if e.policy_kind == PK_S3FIFO:
        while ps.ghost_used[0] > ps.ghost_cap:
            _ghost_remove(e, ps.ghost_tail[0])


cdef inline void _ghost_attach(Engine e, uint32_t slot, int tier, int which) noexcept nogil:
    """_ghost_link() without S3-FIFO's trimming, for callers that made the room."""
    cdef Slot* s = &e.slots[slot]
    cdef PolicyState* ps = &e.pstate[tier]
    s.tier = GHOST_TIER
    s.pins = <uint16_t>tier
    s.flags = <uint8_t>(which << SEG_SHIFT)
    s.prev = VC_NIL
    s.next = ps.ghost_head[which]
    if s.next != VC_NIL:
        e.slots[s.next].prev = slot
    else:
        ps.ghost_tail[which] = slot
    ps.ghost_head[which] = slot
    ps.ghost_used[which] += _charge(e, s.size)
    ps.ghost_count[which] += 1
    e.n_ghosts += 1


cdef void _ghost_push(Engine e, int tier, int which, uint64_t key, uint64_t size) noexcept nogil:
    """Remember in list `which` of `tier` a key that lives on in another tier: a ghost of its
    own.  It takes a slot and a bucket besides the one an operation in progress may have
    reserved.  Out of memory, the key is simply not remembered, which costs at most a later
    ghost hit."""
    cdef uint32_t slot
    if _reserve(e, 2) != 0:
        return
    slot = _take_slot(e)
    e.slots[slot].key = key
    e.slots[slot].size = size
    e.slots[slot].last_access = 0
    e.slots[slot].frequency = 0
    _map_insert(e, slot)
    _ghost_link(e, slot, tier, which)


cdef void _ghost_unlink(Engine e, uint32_t g) noexcept nogil:
    """Take ghost `g` off its list; it stays filed in the map, in the GHOST_TIER state."""
    cdef Slot* s = &e.slots[g]
    cdef PolicyState* ps = &e.pstate[s.pins]
    cdef int which = _seg(s)
    cdef uint32_t older
    if s.prev != VC_NIL:
        e.slots[s.prev].next = s.next
    else:
        ps.ghost_head[which] = s.next
    if s.next != VC_NIL:
        e.slots[s.next].prev = s.prev
    else:
        ps.ghost_tail[which] = s.prev
        # Ghosts mostly leave from the old end, long after they were filed: start the reads the
        # next one will stall on, its buckets (its slot was fetched here last time) and the slot
        # after it.
        older = s.prev
        if older != VC_NIL:
            _prefetch_buckets(e, e.slots[older].key)
            if e.slots[older].prev != VC_NIL:
                vc_prefetch_write(&e.slots[e.slots[older].prev])
    ps.ghost_used[which] -= _charge(e, s.size)
    ps.ghost_count[which] -= 1
    e.n_ghosts -= 1


cdef void _ghost_remove(Engine e, uint32_t g) noexcept nogil:
    """Forget ghost `g`: off its list and the map, its slot free."""
    _ghost_unlink(e, g)
    _release_slot(e, g)


# ---- W-TinyLFU's frequency sketch ---------------------------------------------------------------
#
# A count-min sketch of 4-bit counters, 16 to a word, in blocks of one cache line (8 words): a
# key's hash picks one block, and each of its SKETCH_DEPTH rows one counter in its own pair of
# the block's words (Caffeine's layout), so counting an access or estimating a key's count reads
# one line instead of one per row.  With w counters a row and N recorded accesses since the last
# halving, a row overestimates a key's count by more than e * N / w with probability at most
# 1 / e, and the estimate (the minimum of the rows) does so with probability at most about e**-4
# (the rows share a block, so they are not quite independent).  The table holds about 16
# counters per live entry and is halved every 10 counters' worth of accesses per word (the
# sample), so N stays near 10 * sketch_words and the error stays below one count in most
# estimates.  A Bloom filter (the doorkeeper) takes a key's first access, so keys seen once never
# reach the counters; its two bits for a key lie in one word.

# The map's multiplicative hash mixes only upwards (its low bits depend on the key's low bits
# alone), so the sketch, indexed by low bits, takes a full avalanche.
cdef extern from "mix.h":
    uint64_t vc_mix64(uint64_t x) nogil


cdef extern from "stdlib.h":
    int posix_memalign(void** memptr, size_t alignment, size_t size) nogil
    void free(void* ptr) nogil


cdef uint64_t* _line_aligned_zeros(uint64_t words) noexcept nogil:
    cdef void* memory = NULL
    if posix_memalign(&memory, 64, words * sizeof(uint64_t)) != 0:
        return NULL
    memset(memory, 0, words * sizeof(uint64_t))
    return <uint64_t*>memory


cdef int _sketch_resize(Engine e, uint64_t words) noexcept nogil:
    cdef uint64_t* table = _line_aligned_zeros(words)
    cdef uint64_t* door = _line_aligned_zeros(words)
    if table == NULL or door == NULL:
        free(table)
        free(door)
        return -1
    free(e.sketch)
    free(e.doorkeeper)
    e.sketch = table
    e.doorkeeper = door
    e.sketch_words = words
    e.door_shift = 64
    while words > 1:
        words >>= 1
        e.door_shift -= 1
    e.sketch_additions = 0
    e.sketch_sample = 10 * e.sketch_words    # Caffeine's sample: 10 accesses per entry
    return 0


# One hash of a key serves the sketch and the doorkeeper: its low bits pick the sketch block, its
# top 32 the counters in it; the doorkeeper's word and its two bits come from the top bits of the
# hash times an odd constant, which depend on all of its bits.

cdef inline uint64_t _sketch_hash(uint64_t key) noexcept nogil:
    return vc_mix64(key)


cdef inline uint64_t* _sketch_block(Engine e, uint64_t h) noexcept nogil:
    return &e.sketch[(h & ((e.sketch_words >> 3) - 1)) << 3]


cdef inline uint64_t* _door_word(Engine e, uint64_t h, uint64_t* bits) noexcept nogil:
    cdef uint64_t d = h * 0x9E3779B97F4A7C15ULL
    # The table has MIN_SKETCH_WORDS to 2**52 words: the word's bits are 6 to 52 at the top, and
    # the 12 below them give the two bit numbers.
    bits[0] = (((<uint64_t>1) << ((d >> (e.door_shift - 6)) & 63))
               | ((<uint64_t>1) << ((d >> (e.door_shift - 12)) & 63)))
    return &e.doorkeeper[d >> e.door_shift]


cdef void _sketch_increment(Engine e, uint64_t key) noexcept nogil:
    cdef int row
    cdef uint64_t h = _sketch_hash(key), pick, shift, words, bits
    cdef uint64_t* block
    cdef uint64_t* door
    # The sketch follows the cache's size: about 16 counters per entry.  Growing starts the
    # counts afresh (as Caffeine's does when its maximum changes); out of memory keeps the table.
    if <uint64_t>e.n_live > e.sketch_words:
        words = e.sketch_words * 2
        while words < <uint64_t>e.n_live:
            words *= 2
        _sketch_resize(e, words)
    door = _door_word(e, h, &bits)
    if (door[0] & bits) != bits:
        door[0] |= bits
    else:
        block = _sketch_block(e, h)
        for row in range(SKETCH_DEPTH):
            pick = h >> (32 + 8 * row)
            shift = ((pick >> 1) & 15) << 2
            # A saturating increment without a branch: which counters are full is random.
            block[2 * row + (pick & 1)] += (<uint64_t>(
                ((block[2 * row + (pick & 1)] >> shift) & 15) != 15)) << shift
    e.sketch_additions += 1
    if e.sketch_additions >= e.sketch_sample:
        # Ageing: halve every counter and forget the doorkeeper, so that the sketch follows
        # a popularity that changes.
        for pick in range(e.sketch_words):
            e.sketch[pick] = (e.sketch[pick] >> 1) & 0x7777777777777777ULL
        memset(e.doorkeeper, 0, e.sketch_words * sizeof(uint64_t))
        e.sketch_additions //= 2


cdef uint64_t _sketch_frequency(Engine e, uint64_t key) noexcept nogil:
    cdef int row
    cdef uint64_t h = _sketch_hash(key), pick, count, least = 15, bits
    cdef uint64_t* block = _sketch_block(e, h)
    for row in range(SKETCH_DEPTH):
        pick = h >> (32 + 8 * row)
        count = (block[2 * row + (pick & 1)] >> (((pick >> 1) & 15) << 2)) & 15
        if count < least:
            least = count
    return least + (1 if (_door_word(e, h, &bits)[0] & bits) == bits else 0)


# The batch loop starts, a few keys ahead, the read of what each key's access will need besides
# the map (which holds the ghosts too): W-TinyLFU's sketch block and doorkeeper word, since it
# counts every access.  A replacement starts the reads of the map's buckets of the entry likely
# to go next: the one before the victim, whose slot the unlink just wrote.  Only hints: a wrong
# guess fetches a useless line.

cdef inline void _prefetch_policy(Engine e, uint64_t key) noexcept nogil:
    cdef uint64_t bits, h
    if e.sketch != NULL:
        h = _sketch_hash(key)
        vc_prefetch_write(_sketch_block(e, h))
        vc_prefetch_write(_door_word(e, h, &bits))


cdef inline void _prefetch_victim(Engine e, uint32_t slot) noexcept nogil:
    if slot == VC_NIL:
        return
    _prefetch_buckets(e, e.slots[slot].key)
    if e.slots[slot].prev != VC_NIL:
        vc_prefetch_write(&e.slots[e.slots[slot].prev])


# ---- configuration ------------------------------------------------------------------------------

cdef void _policy_set_caps(Engine e, int tier) noexcept nogil:
    """The segment capacities of a tier from its capacity and the policy's ratios."""
    cdef PolicyState* ps = &e.pstate[tier]
    cdef uint64_t capacity = e.tier_state[tier].capacity
    if e.policy_kind == PK_S3FIFO:
        ps.seg_cap[0] = <uint64_t>(<double>capacity * e.small_ratio)
        ps.seg_cap[1] = capacity - ps.seg_cap[0]
        ps.ghost_cap = <uint64_t>(<double>capacity * e.ghost_ratio)
    elif e.policy_kind == PK_WTINYLFU:
        # Caffeine's split: the main space is floor(99% of the capacity), the window the rest,
        # so a small cache still has a window of one entry; protected is 80% of the main space.
        ps.seg_cap[1] = <uint64_t>(<double>capacity * (1.0 - e.window_ratio))
        if ps.seg_cap[1] > capacity:
            ps.seg_cap[1] = capacity
        ps.seg_cap[0] = capacity - ps.seg_cap[1]
        ps.seg_cap[2] = <uint64_t>(<double>ps.seg_cap[1] * 0.8)
        ps.step = -0.0625 * <double>capacity


cdef int _policy_setup(Engine e) except -1:
    cdef int tier, k
    cdef PolicyState* ps
    e.pstate = <PolicyState*>PyMem_RawMalloc(e.n_tiers * sizeof(PolicyState))
    if e.pstate == NULL:
        raise MemoryError("Could not allocate the tiers' policy state. Fix: free memory.")
    memset(e.pstate, 0, e.n_tiers * sizeof(PolicyState))
    for tier in range(e.n_tiers):
        ps = &e.pstate[tier]
        for k in range(3):
            ps.seg_head[k] = VC_NIL
        for k in range(2):
            ps.ghost_head[k] = VC_NIL
            ps.ghost_tail[k] = VC_NIL
        ps.hand = VC_NIL
        ps.remembered = VC_NIL
        _policy_set_caps(e, tier)
    if e.policy_kind == PK_WTINYLFU and _sketch_resize(e, MIN_SKETCH_WORDS) != 0:
        raise MemoryError("Could not allocate the frequency sketch. Fix: free memory.")
    return 0


# ---- the hooks the rules call -------------------------------------------------------------------

cdef inline void _policy_touch(Engine e, uint32_t slot) noexcept nogil:
    """_touch() for the policies: the access statistics, then the policy's own bookkeeping (a
    bit, a counter, ARC's move to T2, W-TinyLFU's count and moves)."""
    cdef Slot* s = &e.slots[slot]
    cdef int kind = e.policy_kind
    cdef uint8_t f
    e.tick += 1
    s.last_access = e.tick
    if s.frequency != UINT32_MAX:
        s.frequency += 1
    if kind == PK_CLOCK or kind == PK_SIEVE:
        s.flags |= FLAG_MARK
    elif kind == PK_S3FIFO:
        # The 2-bit counter saturates at 3 without a branch: whether a hit finds it full is
        # random (a branch here missed on 3 hits in 10), and f < 3 leaves no carry out of it.
        f = (s.flags & FREQ_MASK) >> FREQ_SHIFT
        s.flags = <uint8_t>(s.flags + (<uint8_t>(f < 3) << FREQ_SHIFT))
    elif kind == PK_ARC:
        if e.pstate[s.tier].seg_head[1] != slot:    # T1 or T2 -> the most recent end of T2
            _seg_move(e, slot, 1)
    elif kind == PK_WTINYLFU:
        _wtlfu_hit(e, slot)


cdef void _wtlfu_hit(Engine e, uint32_t slot) noexcept nogil:
    """W-TinyLFU's hit: the sketch counts it; a window hit moves to the window's newest end, a
    main one to protected's, and protected's oldest entries go back to probation while it holds
    more than its share (which the hill climber may also have cut)."""
    cdef Slot* s = &e.slots[slot]
    cdef int tier = s.tier, k = _seg(s)
    cdef PolicyState* ps = &e.pstate[tier]
    _sketch_increment(e, s.key)
    if k == 1:
        _seg_move_across(e, slot, 2)            # probation -> protected
    elif ps.seg_head[k] != slot:
        _seg_to_front(e, slot, tier, k)
    if k != 0 and ps.seg_used[2] > ps.seg_cap[2] and ps.seg_count[2] > 1:
        _wtlfu_demote(e, tier)


cdef void _wtlfu_demote(Engine e, int tier) noexcept nogil:
    cdef PolicyState* ps = &e.pstate[tier]
    while ps.seg_used[2] > ps.seg_cap[2] and ps.seg_count[2] > 1:
        _seg_move_across(e, _seg_oldest(e, tier, 2), 1)


cdef void _climb(Engine e, int tier) noexcept nogil:
    """Caffeine's hill climber: after a sample of this tier's accesses, move the window's size
    a step in the direction that raised the hit ratio, with steps that shrink while the ratio
    settles and restart when it jumps."""
    cdef PolicyState* ps = &e.pstate[tier]
    cdef uint64_t capacity = e.tier_state[tier].capacity
    cdef double rate = <double>ps.sample_hits / <double>ps.sample_count
    cdef double change = rate - ps.previous_hit_rate
    cdef double amount = ps.step if change >= 0 else -ps.step
    cdef double window
    if fabs(change) >= 0.05:
        ps.step = 0.0625 * <double>capacity * (1.0 if amount >= 0 else -1.0)
    else:
        ps.step = 0.98 * amount
    ps.previous_hit_rate = rate
    ps.sample_hits = 0
    ps.sample_count = 0
    window = <double>ps.seg_cap[0] + amount
    if window < 1.0:
        window = 1.0
    if window > <double>capacity - 1.0:
        window = <double>capacity - 1.0
    if window < 0.0:
        window = 0.0
    ps.seg_cap[0] = <uint64_t>window
    ps.seg_cap[1] = capacity - ps.seg_cap[0]
    ps.seg_cap[2] = <uint64_t>(<double>ps.seg_cap[1] * 0.8)


cdef inline void _policy_sample(Engine e, int tier, bint hit) noexcept nogil:
    cdef PolicyState* ps
    if e.policy_kind != PK_WTINYLFU or not e.adaptive:
        return
    ps = &e.pstate[tier]
    ps.sample_hits += hit
    ps.sample_count += 1
    if ps.sample_count >= 10 * (e.tier_state[tier].count if e.tier_state[tier].count > 16 else 16):
        _climb(e, tier)


cdef inline void _policy_place(Engine e, uint32_t slot, int tier) noexcept nogil:
    """An entry arrives in `tier` (room made): link it where the policy inserts."""
    cdef Slot* s = &e.slots[slot]
    cdef PolicyState* ps = &e.pstate[tier]
    cdef int k = 0
    cdef uint64_t charge
    s.flags &= ~(FLAG_MARK | FREQ_MASK)
    if e.policy_kind == PK_S3FIFO:
        charge = _charge(e, s.size)
        # A ghost hit goes to main.  So does an entry the small FIFO cannot hold, and, until
        # the tier's first eviction, an entry arriving while small is full (libCacheSim's
        # S3-FIFO, whose author wrote the paper: the cache fills up completely before the
        # first eviction instead of evicting from small).
        if (ps.arriving or charge >= ps.seg_cap[0]
                or (not ps.has_evicted and ps.seg_used[0] >= ps.seg_cap[0])):
            k = 1
    elif e.policy_kind == PK_ARC:
        k = 1 if ps.arriving else 0
    elif e.policy_kind == PK_WTINYLFU:
        k = 1 if ps.arriving else 0
    ps.arriving = 0
    ps.incoming = 0
    _seg_link(e, slot, tier, k)


cdef inline void _place(Engine e, uint32_t slot, int tier) noexcept nogil:
    if e.policy_kind == PK_LRU:
        _link_head(e, slot, tier)
    else:
        _policy_place(e, slot, tier)


cdef inline void _lift_out(Engine e, uint32_t slot) noexcept nogil:
    if e.policy_kind == PK_LRU:
        _unlink(e, slot)
    else:
        _seg_unlink(e, slot)


cdef uint32_t _wtlfu_main_victim(Engine e, int tier, uint32_t besides) noexcept nogil:
    """The main space's victim: probation's oldest unpinned entry, else protected's."""
    cdef uint32_t slot = _seg_oldest(e, tier, 1)
    while slot != VC_NIL and _seg(&e.slots[slot]) == 1:
        if not e.slots[slot].pins and slot != besides:
            return slot
        slot = e.slots[slot].prev
    slot = _seg_oldest_unpinned(e, tier, 2)
    return VC_NIL if slot == besides else slot


cdef void _ghost_recall(Engine e, int tier, uint32_t g) noexcept nogil:
    """S3-FIFO's and ARC's ghost hit: the key of ghost `g` arrives in `tier`, which remembers
    it.  The policy learns from that (ARC adapts its target; both mark the arrival for
    _policy_place) and the ghost leaves its list; its slot, still filed under the key, is the
    caller's to reuse or recycle."""
    cdef PolicyState* ps = &e.pstate[tier]
    cdef double delta
    if e.policy_kind == PK_S3FIFO:
        ps.arriving = 1
    elif _seg(&e.slots[g]) == 0:
        # Adapt T1's target: a hit in B1 says T1 was too small, one in B2 that T2 was.  The
        # step is |other ghost| / |this ghost|, at least 1 (also when entries of size 0 leave
        # this ghost list at 0 bytes).
        delta = 1.0
        if ps.ghost_used[0] and <double>ps.ghost_used[1] / <double>ps.ghost_used[0] > 1.0:
            delta = <double>ps.ghost_used[1] / <double>ps.ghost_used[0]
        ps.p = ps.p + delta
        if ps.p > <double>e.tier_state[tier].capacity:
            ps.p = <double>e.tier_state[tier].capacity
        ps.arriving = 1
    else:
        delta = 1.0
        if ps.ghost_used[1] and <double>ps.ghost_used[0] / <double>ps.ghost_used[1] > 1.0:
            delta = <double>ps.ghost_used[0] / <double>ps.ghost_used[1]
        ps.p = ps.p - delta if ps.p > delta else 0.0
        ps.arriving = 2
    _ghost_unlink(e, g)


cdef int _policy_arrival(Engine e, int tier, uint64_t key, uint64_t charge, bint fresh) noexcept nogil:
    """Before room is made for an arriving entry: the ghost check (S3-FIFO, ARC) and W-TinyLFU's
    admission of an entry too large for the window.  0, or STATUS_DECLINED."""
    cdef PolicyState* ps = &e.pstate[tier]
    cdef uint32_t g, victim
    ps.arriving = 0
    ps.incoming = charge
    if e.policy_kind == PK_S3FIFO or e.policy_kind == PK_ARC:
        g = _ghost_find(e, key, _hash(key), tier)
        if g != VC_NIL:
            _ghost_recall(e, tier, g)
            _release_slot(e, g)
    elif e.policy_kind == PK_WTINYLFU and charge > ps.seg_cap[0]:
        # Too large for the window: the entry goes straight to probation, and a new key must
        # win the admission contest against each main victim it would displace.
        ps.arriving = 1
        if fresh:
            while e.tier_state[tier].used > e.tier_state[tier].capacity - charge:
                victim = _wtlfu_main_victim(e, tier, VC_NIL)
                if victim == VC_NIL:
                    break
                if _sketch_frequency(e, key) <= _sketch_frequency(e, e.slots[victim].key):
                    ps.arriving = 0
                    e.tier_state[tier].counters[COUNTER_REJECTIONS] += 1
                    return STATUS_DECLINED
                _displace(e, victim)
    return 0


cdef void _wtlfu_make_window_room(Engine e, int tier, uint64_t charge) noexcept nogil:
    """The window's oldest entries move to probation until the arrival fits in the window.
    While the tier is then over capacity, each of those candidates, newest first, competes
    with probation's oldest entry, and the one the sketch has seen less often leaves the tier
    (Caffeine's evictFromMain).  Whatever room is still missing, _make_room's loop makes."""
    cdef PolicyState* ps = &e.pstate[tier]
    cdef TierState* t = &e.tier_state[tier]
    cdef uint32_t candidate, victim, older
    cdef uint64_t moved = 0
    if ps.arriving:
        return
    while ps.seg_used[0] + charge > ps.seg_cap[0]:
        candidate = _seg_oldest_unpinned(e, tier, 0)
        if candidate == VC_NIL:
            break
        _seg_move(e, candidate, 1)
        moved += 1
    candidate = ps.seg_head[1]
    while moved and candidate != VC_NIL and t.used > t.capacity - charge:
        moved -= 1
        older = e.slots[candidate].next
        if older != VC_NIL and _seg(&e.slots[older]) != 1:
            older = VC_NIL
        if e.slots[candidate].pins:
            candidate = older
            continue
        victim = _seg_oldest_unpinned(e, tier, 1)
        if victim == candidate:
            break                           # no older probation entry is left to compete
        if (_sketch_frequency(e, e.slots[candidate].key)
                > _sketch_frequency(e, e.slots[victim].key)):
            if older == victim:
                older = e.slots[victim].next if e.slots[victim].next != VC_NIL and _seg(
                    &e.slots[e.slots[victim].next]) == 1 else VC_NIL
            _displace(e, victim)
        else:
            _displace(e, candidate)
        candidate = older


cdef inline void _remember(Engine e, int tier, uint32_t victim, int which) noexcept nogil:
    """The victim just chosen is to become a ghost of list `which` as it leaves (_evict,
    _displace): its key is remembered once it is gone, as the algorithms record it."""
    e.pstate[tier].remembered = victim
    e.pstate[tier].remember_list = which


cdef inline bint _s3_mains_turn(PolicyState* ps) noexcept nogil:
    """Whether S3-FIFO evicts from main (over its share, or small empty) rather than small."""
    return ps.seg_used[1] > ps.seg_cap[1] or ps.seg_used[0] == 0


cdef inline bint _s3_remembers(Engine e, int tier, uint64_t charge) noexcept nogil:
    """Whether small's victim of `charge` bytes joins the ghost FIFO (it must fit there)."""
    return e.pstate[tier].ghost_cap >= charge


cdef uint32_t _s3_small_victim(Engine e, int tier, bint force) noexcept nogil:
    """S3-FIFO's small queue: its oldest entry leaves (into the ghost) unless it was accessed
    move_threshold times, which sends it to main; with `force`, the oldest leaves regardless."""
    cdef uint32_t slot = _seg_oldest(e, tier, 0), prev
    cdef Slot* s
    while slot != VC_NIL and _seg(&e.slots[slot]) == 0:
        s = &e.slots[slot]
        prev = s.prev
        if s.pins:
            slot = prev
            continue
        if not force and ((s.flags & FREQ_MASK) >> FREQ_SHIFT) >= e.move_threshold:
            s.flags &= ~FREQ_MASK
            _seg_move(e, slot, 1)
            slot = prev
            continue
        if _s3_remembers(e, tier, _charge(e, s.size)):
            _remember(e, tier, slot, 0)
        return slot
    return VC_NIL


cdef uint32_t _s3_main_victim(Engine e, int tier) noexcept nogil:
    """S3-FIFO's main queue, a CLOCK with a 2-bit counter: an accessed entry goes round again
    with its count lowered by one."""
    cdef PolicyState* ps = &e.pstate[tier]
    cdef uint32_t slot = _seg_oldest(e, tier, 1), prev
    cdef uint64_t steps = 4 * ps.seg_count[1] + 4
    cdef uint8_t f
    cdef Slot* s
    while slot != VC_NIL and steps:
        steps -= 1
        s = &e.slots[slot]
        prev = s.prev
        if not s.pins:
            f = (s.flags & FREQ_MASK) >> FREQ_SHIFT
            if f == 0:
                return slot
            s.flags = <uint8_t>((s.flags & ~FREQ_MASK) | ((f - 1) << FREQ_SHIFT))
            _seg_move(e, slot, 1)
        slot = _seg_step(e, tier, 1, prev)
    return VC_NIL


cdef uint32_t _arc_replace(Engine e, int tier) noexcept nogil:
    """ARC's REPLACE: the victim _arc_choice names, remembered in its ghost list."""
    cdef int which
    cdef uint32_t victim = _arc_choice(e, tier, &which)
    if victim != VC_NIL:
        _remember(e, tier, victim, which)
    return victim


cdef inline uint32_t _arc_choice(Engine e, int tier, int* which) noexcept nogil:
    """REPLACE's victim: T1's LRU entry, bound for B1, when T1 exceeds its target p (or meets it
    and the arrival is a B2 hit) or T2 is empty, else T2's LRU entry, bound for B2 (`which`)."""
    cdef PolicyState* ps = &e.pstate[tier]
    cdef double t1 = <double>ps.seg_used[0]
    cdef uint32_t victim
    which[0] = 1
    if (ps.seg_used[0] > 0 and (t1 > ps.p or (t1 == ps.p and ps.arriving == 2))
            or ps.seg_used[1] == 0):
        which[0] = 0
    victim = _seg_oldest_unpinned(e, tier, which[0])
    if victim == VC_NIL:
        which[0] = 1 - which[0]
        victim = _seg_oldest_unpinned(e, tier, which[0])
    return victim


cdef inline int _arc_forgets(Engine e, int tier, uint64_t incoming) noexcept nogil:
    """The ghost list whose oldest key a miss in both (case IV) forgets to make room in the
    directory for `incoming` bytes: 0 (B1, case A), 1 (B2, case B), -1 for none, ARC_T1_FULL when
    T1 and B1 hold c pages with B1 empty (T1's oldest then leaves unremembered)."""
    cdef PolicyState* ps = &e.pstate[tier]
    cdef uint64_t capacity = e.tier_state[tier].capacity
    if ps.seg_used[0] + ps.ghost_used[0] + incoming > capacity:
        # Case A: T1 and B1 hold c pages.  Testing B1 for emptiness rather than T1 < c also
        # holds for entries of different sizes (libCacheSim does the same).
        return 0 if ps.ghost_used[0] > 0 else ARC_T1_FULL
    # Case B: the directory holds 2c pages, B2's oldest goes.
    if (ps.seg_used[0] + ps.seg_used[1] + ps.ghost_used[0] + ps.ghost_used[1] >= 2 * capacity
            and ps.ghost_used[1] > 0):
        return 1
    return -1


cdef uint32_t _arc_victim(Engine e, int tier) noexcept nogil:
    cdef PolicyState* ps = &e.pstate[tier]
    cdef uint32_t victim
    cdef int forgets
    if ps.arriving:
        return _arc_replace(e, tier)                    # a ghost hit: cases II and III
    forgets = _arc_forgets(e, tier, ps.incoming)        # case IV, a miss everywhere
    if forgets == ARC_T1_FULL:
        victim = _seg_oldest_unpinned(e, tier, 0)
        return victim if victim != VC_NIL else _seg_oldest_unpinned(e, tier, 1)
    if forgets >= 0:
        _ghost_remove(e, ps.ghost_tail[forgets])
    return _arc_replace(e, tier)


cdef uint32_t _clock_victim(Engine e, int tier) noexcept nogil:
    cdef uint32_t slot = e.tier_state[tier].tail, prev
    cdef uint64_t steps = 2 * e.tier_state[tier].count + 2
    cdef Slot* s
    while slot != VC_NIL and steps:
        steps -= 1
        s = &e.slots[slot]
        prev = s.prev
        if not s.pins:
            if not (s.flags & FLAG_MARK):
                return slot
            s.flags &= ~FLAG_MARK                   # a second chance: round again, unmarked
            _seg_move(e, slot, 0)
        slot = prev if prev != VC_NIL else e.tier_state[tier].tail
    return VC_NIL


cdef uint32_t _sieve_victim(Engine e, int tier) noexcept nogil:
    """SIEVE: the hand walks from the oldest entry towards the newest, clearing visited bits,
    and stops at the first unvisited entry; entries never move."""
    cdef PolicyState* ps = &e.pstate[tier]
    cdef uint32_t slot = ps.hand if ps.hand != VC_NIL else e.tier_state[tier].tail
    cdef uint64_t steps = 2 * e.tier_state[tier].count + 2
    cdef Slot* s
    while slot != VC_NIL and steps:
        steps -= 1
        s = &e.slots[slot]
        if not s.pins:
            if not (s.flags & FLAG_MARK):
                ps.hand = s.prev
                return slot
            s.flags &= ~FLAG_MARK
        slot = s.prev if s.prev != VC_NIL else e.tier_state[tier].tail
    return VC_NIL


cdef uint32_t _policy_victim(Engine e, int tier) noexcept nogil:
    """The entry the tier's policy displaces next, after the moves its algorithm makes on the
    way (second chances, small-to-main moves, ghosts); VC_NIL when every entry is pinned."""
    cdef PolicyState* ps = &e.pstate[tier]
    cdef uint32_t victim
    cdef int kind = e.policy_kind
    if kind == PK_FIFO:
        return _coldest_unpinned(e, tier)
    if kind == PK_CLOCK:
        return _clock_victim(e, tier)
    if kind == PK_SIEVE:
        return _sieve_victim(e, tier)
    if kind == PK_S3FIFO:
        ps.has_evicted = True
        if _s3_mains_turn(ps):
            victim = _s3_main_victim(e, tier)
            return victim if victim != VC_NIL else _s3_small_victim(e, tier, True)
        victim = _s3_small_victim(e, tier, False)
        if victim == VC_NIL:
            victim = _s3_main_victim(e, tier)
        return victim if victim != VC_NIL else _s3_small_victim(e, tier, True)
    if kind == PK_ARC:
        return _arc_victim(e, tier)
    victim = _wtlfu_main_victim(e, tier, VC_NIL)
    return victim if victim != VC_NIL else _seg_oldest_unpinned(e, tier, 0)


# ---- check() ------------------------------------------------------------------------------------

cdef int _verify_policy(Engine e) except -1:
    """The policy structures of every tier, after _verify's walk of the lists."""
    cdef int tier, k, which, segments
    cdef uint32_t slot, g, prev
    cdef uint64_t used[3]
    cdef uint64_t count[3]
    cdef uint64_t ghost_total = 0, n, bytes_
    cdef PolicyState* ps
    cdef Slot* s
    segments = 3 if e.policy_kind == PK_WTINYLFU else (
        2 if e.policy_kind == PK_S3FIFO or e.policy_kind == PK_ARC else 1)
    for tier in range(e.n_tiers):
        ps = &e.pstate[tier]
        for k in range(3):
            used[k] = 0
            count[k] = 0
        k = 0
        slot = e.tier_state[tier].head
        while slot != VC_NIL:
            s = &e.slots[slot]
            if _seg(s) >= segments:
                _broken(f"slot {slot} of tier {tier} names segment {_seg(s)} of {segments}")
            if _seg(s) < k:
                _broken(f"slot {slot} of tier {tier} is in segment {_seg(s)} after segment {k}")
            if count[_seg(s)] == 0 and ps.seg_head[_seg(s)] != slot:
                _broken(f"tier {tier}'s segment {_seg(s)} starts at slot {slot}, its head says "
                        f"{ps.seg_head[_seg(s)]}")
            k = _seg(s)
            used[k] += _charge(e, s.size)
            count[k] += 1
            if e.policy_kind not in (PK_CLOCK, PK_SIEVE) and s.flags & FLAG_MARK:
                _broken(f"slot {slot} carries a reference bit its policy does not use")
            if e.policy_kind != PK_S3FIFO and s.flags & FREQ_MASK:
                _broken(f"slot {slot} carries an S3-FIFO count under another policy")
            slot = s.next
        for k in range(3):
            if count[k] == 0 and ps.seg_head[k] != VC_NIL:
                _broken(f"tier {tier}'s segment {k} is empty but its head names slot {ps.seg_head[k]}")
            if used[k] != ps.seg_used[k] or count[k] != ps.seg_count[k]:
                _broken(f"tier {tier}'s segment {k} holds {count[k]} entries of {used[k]} bytes, "
                        f"its totals say {ps.seg_count[k]} of {ps.seg_used[k]}")
        if ps.hand != VC_NIL and (ps.hand >= e.slot_high_water or e.slots[ps.hand].tier != tier):
            _broken(f"tier {tier}'s SIEVE hand names slot {ps.hand}, not an entry of the tier")
        if ps.arriving:
            _broken(f"tier {tier} still marks an arrival from its ghost list {ps.arriving}")
        if ps.remembered != VC_NIL:
            _broken(f"tier {tier} still means to remember victim {ps.remembered}")
        for which in range(2):
            n = bytes_ = 0
            prev = VC_NIL
            g = ps.ghost_head[which]
            while g != VC_NIL:
                if n > e.n_ghosts or g >= e.slot_high_water:
                    _broken(f"tier {tier}'s ghost list {which} has a cycle or leaves the array")
                s = &e.slots[g]
                if s.tier != GHOST_TIER or s.pins != tier or _seg(s) != which:
                    _broken(f"slot {g} on tier {tier}'s ghost list {which} says tier {s.tier}, "
                            f"remembered by {s.pins}, list {_seg(s)}")
                if s.prev != prev:
                    _broken(f"ghost {g}'s prev link is {s.prev}, expected {prev}")
                if _ghost_find(e, s.key, _hash(s.key), tier) != g:
                    _broken(f"ghost key {s.key} of tier {tier} is not found in the map")
                n += 1
                bytes_ += _charge(e, s.size)
                prev = g
                g = s.next
            if ps.ghost_tail[which] != prev:
                _broken(f"tier {tier}'s ghost list {which} ends at {prev}, its tail says "
                        f"{ps.ghost_tail[which]}")
            if n != ps.ghost_count[which] or bytes_ != ps.ghost_used[which]:
                _broken(f"tier {tier}'s ghost list {which} holds {n} keys of {bytes_} bytes, its "
                        f"totals say {ps.ghost_count[which]} of {ps.ghost_used[which]}")
            ghost_total += n
        if e.policy_kind == PK_S3FIFO and ps.ghost_used[0] > ps.ghost_cap:
            _broken(f"tier {tier}'s ghost FIFO holds {ps.ghost_used[0]} bytes of {ps.ghost_cap}")
        if e.policy_kind == PK_ARC and (ps.p < 0 or ps.p > <double>e.tier_state[tier].capacity):
            _broken(f"tier {tier}'s ARC target p = {ps.p} lies outside [0, capacity]")
        if e.policy_kind == PK_WTINYLFU and (
                ps.seg_cap[0] + ps.seg_cap[1] != e.tier_state[tier].capacity
                or ps.seg_cap[2] > ps.seg_cap[1]):
            _broken(f"tier {tier}'s W-TinyLFU shares (window {ps.seg_cap[0]}, main "
                    f"{ps.seg_cap[1]}, protected {ps.seg_cap[2]}) do not fit its capacity")
    if ghost_total != e.n_ghosts:
        _broken(f"the ghost lists hold {ghost_total} keys, the engine counts {e.n_ghosts}")
    n = 0
    for slot in range(e.slot_high_water):
        n += e.slots[slot].tier == GHOST_TIER
    if n != e.n_ghosts:
        _broken(f"{n} slots are ghosts, the ghost lists hold {e.n_ghosts}")
    return 0


cdef uint64_t _policy_bytes(Engine e) noexcept nogil:
    """Bytes of C memory the policies hold."""
    cdef uint64_t total = 0
    if e.pstate != NULL:
        total += e.n_tiers * sizeof(PolicyState)
    total += 2 * e.sketch_words * sizeof(uint64_t)
    return total


cdef void _policy_free(Engine e) noexcept nogil:
    PyMem_RawFree(e.pstate)
    e.pstate = NULL
    free(e.sketch)
    e.sketch = NULL
    free(e.doorkeeper)
    e.doorkeeper = NULL
