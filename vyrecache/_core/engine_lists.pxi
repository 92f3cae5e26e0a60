# The per-tier LRU lists and the byte accounting that moves with them.
#
#   tier_state[t].head                                        tier_state[t].tail
#        |                                                            |
#        v                                                            v
#     [slot 9] <--prev-- next--> [slot 2] <--> [slot 14] <--> ... [slot 5]
#     most recent                                                  coldest
#
# Invariant: "head is the most recently used, tail the coldest"; every entry of tier t is on
# list t exactly once, except while it is lifted (between EV_LIFT and EV_PLACE of one operation);
# used == sum of charged sizes on the list, pinned == the same sum over entries with pins > 0,
# count == the list length, used <= capacity between operations.
#
# Slots live in one array grown by 1/8 at a time; free slots chain through `next`.  While the event log
# is on, freed slots wait in a "limbo" list until the next operation starts, so the slot index an
# EV_REMOVE/EV_EVICT event names still holds that entry's key, size, block and offset.

cdef enum:
    FLAG_LIFTED = 1
    MIN_SLOTS = 16
    # The documented cap (README, Known limits): about 14 GB of engine metadata.  The map's
    # buckets hold full 32-bit slot indices and the event log names slots in an int32, so the
    # cap could rise to 2**31 - 1 once a test can run at that size.
    MAX_SLOTS = 0x0FFFFFFF


cdef inline uint64_t _charge(Engine e, uint64_t size) noexcept nogil:
    cdef uint64_t rounded
    if e.granularity == 1:
        return size
    rounded = size + (e.granularity - 1)
    if rounded < size:                  # overflow: larger than any tier can hold
        return UINT64_MAX
    return rounded - rounded % e.granularity


cdef inline void _unlink(Engine e, uint32_t slot) noexcept nogil:
    _unlink_charged(e, slot, _charge(e, e.slots[slot].size))


cdef inline void _unlink_charged(Engine e, uint32_t slot, uint64_t charge) noexcept nogil:
    """_unlink() of an entry whose charge the caller computed already."""
    cdef Slot* s = &e.slots[slot]
    cdef TierState* t = &e.tier_state[s.tier]
    if s.prev != VC_NIL:
        e.slots[s.prev].next = s.next
    else:
        t.head = s.next
    if s.next != VC_NIL:
        e.slots[s.next].prev = s.prev
    else:
        t.tail = s.prev
    t.count -= 1
    t.used -= charge


cdef inline void _link_head(Engine e, uint32_t slot, int tier) noexcept nogil:
    cdef Slot* s = &e.slots[slot]
    cdef TierState* t = &e.tier_state[tier]
    s.tier = <int8_t>tier
    s.prev = VC_NIL
    s.next = t.head
    if t.head != VC_NIL:
        e.slots[t.head].prev = slot
    else:
        t.tail = slot
    t.head = slot
    t.count += 1
    t.used += _charge(e, s.size)


cdef inline void _touch(Engine e, uint32_t slot) noexcept nogil:
    """Record an access: tick, frequency, last_access, and move to the most-recent end."""
    cdef Slot* s = &e.slots[slot]
    cdef TierState* t = &e.tier_state[s.tier]
    e.tick += 1
    s.last_access = e.tick
    if s.frequency != UINT32_MAX:
        s.frequency += 1
    if t.head == slot:
        return
    # Not the head, so prev is a slot.
    e.slots[s.prev].next = s.next
    if s.next != VC_NIL:
        e.slots[s.next].prev = s.prev
    else:
        t.tail = s.prev
    s.prev = VC_NIL
    s.next = t.head
    e.slots[t.head].prev = slot
    t.head = slot


cdef int _grow_slots(Engine e) noexcept nogil:
    """Grow the slot array; -1 when out of memory, -2 when it has MAX_SLOTS slots already."""
    # Grow by 1/8, not by doubling: the unused tail then costs at most 5 of the 40 bytes a slot
    # takes per entry (doubling: up to 40), so the engine stays under 64 bytes per entry at
    # every size.  Still amortized O(1).  A large array moves to a fresh block advised for huge
    # pages (engine_map.pxi, vc_advise_huge_pages): realloc would keep the 4 KiB pages it has.
    cdef uint64_t wanted = <uint64_t>e.slot_capacity + e.slot_capacity // 8
    cdef Slot* fresh
    if wanted < MIN_SLOTS:
        wanted = MIN_SLOTS
    if wanted > MAX_SLOTS:
        wanted = MAX_SLOTS
        if wanted <= e.slot_capacity:
            return -2
    if wanted * sizeof(Slot) < HUGE_PAGE_ARRAY_BYTES:
        fresh = <Slot*>PyMem_RawRealloc(e.slots, wanted * sizeof(Slot))
        if fresh == NULL:
            return -1
    else:
        fresh = <Slot*>PyMem_RawMalloc(wanted * sizeof(Slot))
        if fresh == NULL:
            return -1
        vc_advise_huge_pages(fresh, wanted * sizeof(Slot))
        memcpy(fresh, e.slots, e.slot_capacity * sizeof(Slot))
        PyMem_RawFree(e.slots)
    e.slots = fresh
    e.slot_capacity = <uint32_t>wanted
    return 0


cdef inline int _reserve_one(Engine e) noexcept nogil:
    """Make sure one more entry fits in the slot array and the map; -1 when out of memory, -2
    when the cache holds MAX_SLOTS entries already."""
    return _reserve(e, 1)


cdef inline int _reserve(Engine e, uint32_t wanted) noexcept nogil:
    """Make sure `wanted` more slots can be taken and filed without growing anything; -1 when
    out of memory, -2 when the array cannot grow enough (MAX_SLOTS)."""
    cdef int status
    if not _has_free_slots(e, wanted):
        status = _grow_slots(e)
        if status != 0:
            return status
        if not _has_free_slots(e, wanted):
            return -2
    if _reserve_buckets(e, wanted) != 0:
        return -1
    return 0


cdef inline bint _has_free_slots(Engine e, uint32_t wanted) noexcept nogil:
    """Whether `wanted` slots can be taken without growing the array."""
    cdef uint64_t free = e.slot_capacity - e.slot_high_water
    cdef uint32_t slot = e.free_head
    while free < wanted and slot != VC_NIL:
        free += 1
        slot = e.slots[slot].next
    return free >= wanted


cdef inline uint32_t _take_slot(Engine e) noexcept nogil:
    cdef uint32_t slot
    if e.free_head != VC_NIL:
        slot = e.free_head
        e.free_head = e.slots[slot].next
    else:
        slot = e.slot_high_water
        e.slot_high_water += 1
    return slot


cdef inline void _free_slot(Engine e, uint32_t slot) noexcept nogil:
    """Forget an entry that is already off its list."""
    e.n_live -= 1
    _release_slot(e, slot)


cdef inline void _release_slot(Engine e, uint32_t slot) noexcept nogil:
    """Take a slot that is off every list (an entry's or a ghost's) out of the map and hand it
    back."""
    _map_erase(e, slot)
    _recycle_slot(e, slot)


cdef inline void _recycle_slot(Engine e, uint32_t slot) noexcept nogil:
    """Hand back a slot that is off every list and out of the map."""
    e.slots[slot].tier = FREE_TIER
    e.slots[slot].next = VC_NIL
    if e.logging:
        if e.limbo_head == VC_NIL:
            e.limbo_head = slot
        else:
            e.slots[e.limbo_tail].next = slot
        e.limbo_tail = slot
    else:
        e.slots[slot].next = e.free_head
        e.free_head = slot


cdef inline uint32_t _coldest_unpinned(Engine e, int tier) noexcept nogil:
    # Pinned entries stay on the list; the walk skips them from the cold end.
    cdef uint32_t slot = e.tier_state[tier].tail
    while slot != VC_NIL and e.slots[slot].pins:
        slot = e.slots[slot].prev
    return slot


cdef inline bint _can_host(Engine e, int tier, uint64_t charge) noexcept nogil:
    """Whether room for `charge` can be made in `tier` by evicting its unpinned entries."""
    cdef TierState* t = &e.tier_state[tier]
    return charge <= t.capacity and charge <= t.capacity - t.pinned
