# cython: language_level=3
"""The tiered-cache engine: which key lives in which tier, and what moves when.

All metadata lives in C arrays (see engine.pxd): a slot per entry, an open-addressing map from key
to slot (engine_map.pxi), one intrusive LRU list per tier with its byte accounting
(engine_lists.pxi).  The rules below (insert, access, promote, demote, spill, evict) keep the
behaviour of the original Rust `TieredCache`, with its flaws fixed; docs/DESIGN.md section 1 is
the contract with the storage layer.

Status codes of the internal C functions: >= 0 a tier, -1 a miss, below -1 an error or
STATUS_DECLINED (engine.pxd).
"""

cimport cython
from cpython.object cimport PyObject
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc
from libc.stdint cimport (INT8_MAX, UINT32_MAX, UINT64_MAX, int8_t, int32_t, uint8_t, uint16_t,
                          uint32_t, uint64_t)
from libc.string cimport memcpy, memset

import operator

import numpy as np

from vyrecache.counters import ENGINE_COUNTERS
from vyrecache.errors import (ENTRY_TOO_LARGE_MESSAGE, KEY_NOT_FOUND_MESSAGE, AllPinnedError,
                              CacheError, CapacityAccountingError, EntryTooLargeError,
                              KeyNotFoundError)

cdef extern from *:
    """
    #ifdef VYRECACHE_DEBUG
    #define VC_DEBUG 1
    #else
    #define VC_DEBUG 0
    #endif
    /* The engine's lock relies on the GIL to order its state (see Engine.acquire). */
    #ifdef Py_GIL_DISABLED
    #error "vyrecache's engine lock needs the GIL; free-threaded CPython is not supported yet"
    #endif
    #define vc_likely(x) __builtin_expect(!!(x), 1)
    #define vc_unlikely(x) __builtin_expect(!!(x), 0)
    static void vc_require_gil(const char *where) {
        if (!PyGILState_Check()) Py_FatalError(where);
    }
    /* The calling thread, as the lock's owner: glibc's pthread_self() is the thread pointer,
       which GCC reads inline instead of through a call on every public method. */
    #if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__GLIBC__)
    #define vc_this_thread() ((pthread_t)__builtin_thread_pointer())
    #else
    #define vc_this_thread() pthread_self()
    #endif
    """
    # Debug builds verify every invariant after every mutating call (slow; tests only).
    const bint VC_DEBUG
    void vc_require_gil(const char* where) nogil
    # Branch hints for the hot paths: the rare side (growth, logging, Python policies, errors).
    bint vc_likely(bint condition) nogil
    bint vc_unlikely(bint condition) nogil
    pthread_t vc_this_thread() nogil

cdef object _TWO_64 = 1 << 64
# access() results boxed once: STATUS_MISS (-1) and every tier index (at most INT8_MAX tiers).  The
# tuple keeps them alive; the C array is what access() reads, without a check for None.
cdef tuple _ACCESS_RESULTS = tuple(range(-1, INT8_MAX + 1))
cdef PyObject* _ACCESS_RESULT_OBJECTS[129]     # INT8_MAX + 2
for _result in range(INT8_MAX + 2):
    _ACCESS_RESULT_OBJECTS[_result] = <PyObject*>_ACCESS_RESULTS[_result]

include "engine_values.pxi"
include "engine_map.pxi"
include "engine_lists.pxi"
include "engine_policies.pxi"

cdef uint64_t parse_u64(object value, str what) except? 0:
    return _as_u64(value, what)


cdef object parse_u64_array(object values, str what, Py_ssize_t length=-1):
    return _as_u64_array(values, what, length)


cdef object parse_keys(object keys):
    return _as_u64_keys(keys)


cdef object report_victims(object callback, list entries, object error):
    for entry in entries:
        try:
            callback(entry)
        except BaseException as callback_error:
            if error is None:
                error = callback_error
    return error


# The names of TierState.counters, index by index (vyrecache/counters.py declares them).
COUNTER_NAMES = ENGINE_COUNTERS
if len(COUNTER_NAMES) != VC_N_COUNTERS:
    raise ImportError(f"vyrecache.counters names {len(COUNTER_NAMES)} engine counters, the engine keeps "
                      f"{VC_N_COUNTERS}. Fix: declare each COUNTER_* counter in vyrecache/counters.py, in order.")


cdef object _event_dtype():
    cdef Event probe
    cdef char* base = <char*>&probe
    return np.dtype({
        "names": ["key", "size", "slot", "src_tier", "dst_tier", "kind"],
        "formats": ["<u8", "<u8", "<i4", "i1", "i1", "u1"],
        "offsets": [<char*>&probe.key - base, <char*>&probe.size - base,
                    <char*>&probe.slot - base, <char*>&probe.src_tier - base,
                    <char*>&probe.dst_tier - base, <char*>&probe.kind - base],
        "itemsize": sizeof(Event),
    })


EVENT_DTYPE = _event_dtype()
# The event kinds as plain module constants too (EventKind.EV_INSERT == EV_INSERT).
globals().update({kind.name: kind for kind in EventKind})


# --------------------------------------------------------------------------------------------
# The event log

cdef void _grow_events(Engine e) noexcept nogil:
    cdef Py_ssize_t wanted = e.events_capacity * 2 if e.events_capacity else 16
    cdef Event* fresh = <Event*>PyMem_RawRealloc(e.events, wanted * sizeof(Event))
    if fresh == NULL:
        e.alloc_failed = True
        return
    e.events = fresh
    e.events_capacity = wanted


cdef inline void _emit(Engine e, uint8_t kind, uint32_t slot, int src, int dst) noexcept nogil:
    cdef Event* ev
    if vc_likely(not e.logging):
        return
    if e.n_events == e.events_capacity:
        _grow_events(e)
        if e.n_events == e.events_capacity:
            return
    ev = &e.events[e.n_events]
    e.n_events += 1
    ev.key = e.slots[slot].key
    ev.size = e.slots[slot].size
    ev.slot = <int32_t>slot
    ev.src_tier = <int8_t>src
    ev.dst_tier = <int8_t>dst
    ev.kind = kind


cdef inline void _begin_op(Engine e) noexcept nogil:
    """Start a mutating operation: clear the log, recycle the slots freed by the last one."""
    e.n_events = 0
    if e.limbo_head != VC_NIL:
        e.slots[e.limbo_tail].next = e.free_head
        e.free_head = e.limbo_head
        e.limbo_head = VC_NIL
        e.limbo_tail = VC_NIL


# --------------------------------------------------------------------------------------------
# Python policies (only reached when the policy is not the built-in LruPolicy)

cdef uint32_t _python_victim(Engine e, int tier) noexcept:
    cdef uint64_t key
    cdef uint32_t slot
    e.in_callback += 1
    try:
        choice = e.py_policy.eviction_candidate(tier, e)
    except BaseException as error:
        if e.pending_error is None:
            e.pending_error = error
        choice = None
    e.in_callback -= 1
    # None, a non-key, an absent, pinned or lifted key, or a key of another tier: the built-in
    # coldest-unpinned choice decides instead.
    if choice is None or not vc_exact_u64(choice, &key):
        return VC_NIL
    slot = _find(e, key)
    if (slot == VC_NIL or e.slots[slot].tier != tier or e.slots[slot].pins
            or e.slots[slot].flags & FLAG_LIFTED):
        return VC_NIL
    return slot


cdef bint _policy_promotes(Engine e, uint32_t slot) noexcept:
    cdef Slot* s = &e.slots[slot]
    stats = AccessStats(s.frequency, s.last_access, s.size)
    e.in_callback += 1
    try:
        verdict = bool(e.py_policy.should_promote(s.key, stats))
    except BaseException as error:
        if e.pending_error is None:
            e.pending_error = error
        verdict = False
    e.in_callback -= 1
    return verdict


cdef inline uint32_t _pick_victim(Engine e, int tier) noexcept nogil:
    cdef uint32_t slot
    if not e.native_policy:
        with gil:
            slot = _python_victim(e, tier)
        if slot != VC_NIL:
            return slot
    elif vc_unlikely(e.policy_kind != PK_LRU):
        return _policy_victim(e, tier)
    return _coldest_unpinned(e, tier)


cdef inline bint _should_promote(Engine e, uint32_t slot) noexcept nogil:
    cdef bint verdict
    if e.native_policy:
        return e.slots[slot].frequency >= e.promote_threshold
    with gil:
        verdict = _policy_promotes(e, slot)
    return verdict


# --------------------------------------------------------------------------------------------
# The rules

cdef inline void _make_room(Engine e, int tier, uint64_t charge) noexcept nogil:
    """Displace victims of `tier` until `charge` more bytes fit.  The caller checked _can_host."""
    cdef TierState* t = &e.tier_state[tier]
    if vc_unlikely(e.policy_kind == PK_WTINYLFU):
        _wtlfu_make_window_room(e, tier, charge)
    if t.used > t.capacity - charge:
        _displace_until_fits(e, tier, charge)


cdef void _displace_until_fits(Engine e, int tier, uint64_t charge) noexcept nogil:
    cdef TierState* t = &e.tier_state[tier]
    cdef uint32_t victim
    while t.used > t.capacity - charge:
        victim = _pick_victim(e, tier)
        if victim == VC_NIL:        # unreachable after _can_host; never loop forever
            return
        _displace(e, victim)


cdef inline void _displace(Engine e, uint32_t victim) noexcept nogil:
    """A victim leaves its tier: spilled one tier down when allowed and possible, else evicted.
    A victim its policy remembers becomes a ghost of the tier it left either way."""
    cdef Slot* s = &e.slots[victim]
    cdef int tier = s.tier, which
    cdef uint64_t charge = _charge(e, s.size), key, size
    cdef uint32_t predicted
    if e.spill_victims and tier > 0 and _can_host(e, tier - 1, charge):
        which = _remembering(e, victim, tier)
        key = s.key
        size = s.size
        predicted = s.prev              # the victim's neighbour: likely the tier's next one
        _move(e, victim, tier - 1, COUNTER_SPILLS)
        if which >= 0:
            _ghost_push(e, tier, which, key, size)
        if vc_unlikely(e.policy_kind != PK_LRU):
            _prefetch_victim(e, predicted)
        return
    _evict(e, victim)


cdef inline int _remembering(Engine e, uint32_t slot, int tier) noexcept nogil:
    """The ghost list of `tier` that leaving `slot` is to join, -1 for none; the policy's wish
    (_remember) is then spent."""
    cdef PolicyState* ps
    if e.pstate == NULL or e.pstate[tier].remembered != slot:
        return -1
    ps = &e.pstate[tier]
    ps.remembered = VC_NIL
    return ps.remember_list


cdef void _evict(Engine e, uint32_t slot) noexcept nogil:
    """Evict an entry.  The victim its policy chose to remember becomes a ghost where it lies,
    keeping its slot, its key and its bucket."""
    cdef int tier = e.slots[slot].tier
    cdef int which = _remembering(e, slot, tier)
    _retire(e, slot, EV_EVICT)
    if which < 0:
        _free_slot(e, slot)
        return
    e.n_live -= 1
    _ghost_link(e, slot, tier, which)


cdef void _move(Engine e, uint32_t slot, int dst, int counter) noexcept nogil:
    """Lift an entry out of its tier and place it at the most-recent end of `dst`."""
    cdef Slot* s = &e.slots[slot]
    cdef int src = s.tier
    _emit(e, EV_LIFT, slot, src, dst)
    _lift_out(e, slot)
    e.tier_state[src].counters[COUNTER_BYTES_OUT] += s.size
    s.flags |= FLAG_LIFTED
    if vc_unlikely(e.policy_kind != PK_LRU):
        _policy_arrival(e, dst, s.key, _charge(e, s.size), False)
    _make_room(e, dst, _charge(e, e.slots[slot].size))
    s = &e.slots[slot]
    s.flags &= ~FLAG_LIFTED
    _place(e, slot, dst)
    _emit(e, EV_PLACE, slot, src, dst)
    e.tier_state[dst].counters[counter] += 1
    e.tier_state[dst].counters[COUNTER_BYTES_IN] += s.size


cdef int _first_tier_for(Engine e, uint64_t charge, uint32_t replaced) noexcept nogil:
    """The tier an insert lands in, or an error status; `replaced` leaves first (VC_NIL: none)."""
    cdef int tier
    cdef bint fits_somewhere = False
    cdef uint64_t pinned
    cdef TierState* t
    for tier in range(e.n_tiers):
        t = &e.tier_state[tier]
        if charge > t.capacity:
            continue
        fits_somewhere = True
        pinned = t.pinned
        if replaced != VC_NIL and e.slots[replaced].tier == tier and e.slots[replaced].pins:
            pinned -= _charge(e, e.slots[replaced].size)
        if charge <= t.capacity - pinned:
            return tier
    return STATUS_ALL_PINNED if fits_somewhere else STATUS_TOO_LARGE


cdef inline void _remove(Engine e, uint32_t slot, uint8_t kind) noexcept nogil:
    _retire(e, slot, kind)
    _free_slot(e, slot)


cdef inline void _retire(Engine e, uint32_t slot, uint8_t kind) noexcept nogil:
    """An entry leaves the cache: its event, its pins, its list, the counters.  The slot is the
    caller's to free or to keep as a ghost."""
    cdef Slot* s = &e.slots[slot]
    cdef int tier = s.tier
    _emit(e, kind, slot, tier, -1)
    if vc_unlikely(s.pins != 0):
        e.tier_state[tier].pinned -= _charge(e, s.size)
        s.pins = 0
    _lift_out(e, slot)
    e.tier_state[tier].counters[COUNTER_BYTES_OUT] += s.size
    if kind == EV_EVICT:
        e.tier_state[tier].counters[COUNTER_EVICTIONS] += 1


cdef int _insert(Engine e, uint64_t key, uint64_t size, uint32_t old) noexcept nogil:
    """Insert (replacing `old`, the key's current slot or VC_NIL); the tier, or an error status."""
    cdef uint64_t charge = _charge(e, size)
    cdef int tier = _first_tier_for(e, charge, old)
    cdef int reserved
    if vc_unlikely(tier < 0):
        return tier
    reserved = _reserve_one(e)
    if vc_unlikely(reserved != 0):
        return STATUS_TOO_MANY if reserved == -2 else STATUS_NO_MEMORY
    if old != VC_NIL:
        _remove(e, old, EV_REMOVE)
    if vc_unlikely(e.policy_kind != PK_LRU):
        if _policy_arrival(e, tier, key, charge, old == VC_NIL) == STATUS_DECLINED:
            return STATUS_DECLINED
    return _insert_arrived(e, key, size, tier, charge)


cdef inline int _insert_counted(Engine e, uint64_t key, uint64_t size, uint32_t old) noexcept nogil:
    """_insert() as every insert call makes it: W-TinyLFU's sketch counts the key first, so an
    entry's admission weighs its puts as well as its accesses."""
    if e.policy_kind == PK_WTINYLFU:
        _sketch_increment(e, key)
    return _insert(e, key, size, old)


cdef inline void _new_entry(Slot* s, uint64_t key, uint64_t size) noexcept nogil:
    """A slot starts an entry: its key and size, no accesses, no pins, no policy bits."""
    s.key = key
    s.size = size
    s.last_access = 0
    s.frequency = 0
    s.pins = 0
    s.flags = 0


cdef inline int _insert_arrived(Engine e, uint64_t key, uint64_t size, int tier,
                                uint64_t charge) noexcept nogil:
    """The rest of _insert once the tier is chosen, room reserved and the arrival announced."""
    cdef uint32_t slot
    _make_room(e, tier, charge)
    slot = _take_slot(e)
    _new_entry(&e.slots[slot], key, size)
    _map_insert(e, slot)
    e.n_live += 1
    _place(e, slot, tier)
    _emit(e, EV_INSERT, slot, -1, tier)
    e.tier_state[tier].counters[COUNTER_INSERTS] += 1
    e.tier_state[tier].counters[COUNTER_BYTES_IN] += size
    return tier


cdef int _promote(Engine e, uint32_t slot, bint strict) noexcept nogil:
    """Move up one tier if the policy says so; not for pinned entries nor too-small targets."""
    cdef Slot* s = &e.slots[slot]
    cdef int tier = s.tier
    cdef uint64_t charge
    if s.pins or tier + 1 >= e.n_tiers or not _should_promote(e, slot):
        return 0
    charge = _charge(e, e.slots[slot].size)
    if charge > e.tier_state[tier + 1].capacity:
        return 0
    if not _can_host(e, tier + 1, charge):
        return STATUS_ALL_PINNED if strict else 0
    _move(e, slot, tier + 1, COUNTER_PROMOTIONS)
    return 0


cdef int _demote(Engine e, uint32_t slot) noexcept nogil:
    cdef Slot* s = &e.slots[slot]
    cdef int tier = s.tier
    cdef uint64_t charge = _charge(e, s.size)
    if s.pins or tier == 0 or charge > e.tier_state[tier - 1].capacity:
        return 0
    if not _can_host(e, tier - 1, charge):
        return STATUS_ALL_PINNED
    _move(e, slot, tier - 1, COUNTER_DEMOTIONS)
    return 0


cdef inline int _hit(Engine e, uint32_t slot) noexcept nogil:
    """A use of a present entry: record it, promote if the policy says so; the tier it was in."""
    _touch(e, slot)
    return _count_hit(e, slot)


cdef inline int _count_hit(Engine e, uint32_t slot) noexcept nogil:
    """The rest of a hit once the policy recorded the use: the count, and the promotion at the
    threshold; the tier it was in."""
    cdef Slot* s = &e.slots[slot]
    cdef int tier = s.tier
    e.tier_state[tier].counters[COUNTER_HITS] += 1
    # One compare decides whether to call _promote, which checks everything again: promote_at
    # is the native threshold below the top tier, 0 there for a Python policy, 2**32 in the
    # top tier.  (Testing "top tier?" first was a branch the predictor lost on 1 hit in 6.)
    if vc_unlikely(<uint64_t>s.frequency >= e.tier_state[tier].promote_at):
        _promote(e, slot, False)
    return tier


cdef int _access_any(Engine e, uint64_t key, uint64_t size) noexcept nogil:
    """_access() for every policy but the native LRU."""
    if e.policy_kind != PK_LRU:
        return _policy_access(e, key, size, _hash(key))
    return _access(e, key, size)


cdef inline int _access(Engine e, uint64_t key, uint64_t size) noexcept nogil:
    """The fused per-use call: the tier of a hit (then maybe promoted), or -1 after inserting."""
    cdef uint64_t gap, h = _hash(key)
    cdef uint32_t slot = _lookup(e, key, h, &gap)
    if vc_likely(slot != VC_NIL):
        return _hit(e, slot)
    return _access_miss(e, key, size, h, gap)


cdef inline void _take_over(Engine e, uint32_t victim, uint64_t key, uint64_t size, uint64_t h,
                            uint64_t gap) noexcept nogil:
    """The miss of a full tier 0 in place: `victim` (of tier 0) is evicted and the new key takes
    over its slot and the free bucket `gap` its lookup found.  The tier's bytes and lists are
    the caller's to update."""
    cdef TierState* t = &e.tier_state[0]
    cdef Slot* s = &e.slots[victim]
    cdef uint64_t victim_hash = _hash(s.key)
    t.counters[COUNTER_BYTES_OUT] += s.size
    t.counters[COUNTER_EVICTIONS] += 1
    _new_entry(s, key, size)
    # Drop the victim's bucket, then file the slot under the new key in the free bucket the
    # miss's lookup found.  In that order: both buckets name this slot, and the delete, which
    # finds its bucket by slot among the victim's h2 matches, could otherwise take the new one.
    # The gap stays a valid place: a bucket the delete empties lies in the gap's group or past
    # it on the new key's path (an earlier group with an EMPTY byte would have held the gap).
    _map_erase_from(e, victim, victim_hash)
    _map_place(e, gap, victim, h)
    t.counters[COUNTER_INSERTS] += 1
    t.counters[COUNTER_BYTES_IN] += size


cdef inline bint _replace_coldest(Engine e, uint64_t key, uint64_t size, uint64_t h,
                                  uint64_t gap) noexcept nogil:
    """The common miss of a full cache, in place: a new key evicts tier 0's coldest entry and
    takes over its slot.  False, having changed nothing, unless that is exactly what _insert
    would do: the native policy, no log (freed slots then wait in limbo), tier 0 holding the
    new entry with no pins in it, one eviction making room, and room in the map (a map about
    to be rebuilt takes the general path)."""
    cdef TierState* t = &e.tier_state[0]
    cdef uint32_t victim = t.tail
    cdef uint64_t charge, victim_charge, group
    cdef Slot* s
    if (not e.lru_native or e.logging or t.pinned != 0 or victim == VC_NIL
            or e.growth_left == 0):
        return False
    charge = _charge(e, size)
    if charge > t.capacity or t.used <= t.capacity - charge:
        return False                    # too large for tier 0, or fits without an eviction
    s = &e.slots[victim]
    victim_charge = _charge(e, s.size)
    if t.used - victim_charge > t.capacity - charge:
        return False                    # one eviction is not enough
    _take_over(e, victim, key, size, h, gap)
    t.used += charge - victim_charge
    if t.head != victim:                # from the cold end to the most recent one
        t.tail = s.prev
        e.slots[s.prev].next = VC_NIL
        s.prev = VC_NIL
        s.next = t.head
        e.slots[t.head].prev = victim
        t.head = victim
        # The next miss evicts the new tail: its slot is in the cache now (written above), so
        # start the reads that eviction will stall on, its buckets and the slot before it.
        s = &e.slots[t.tail]
        group = _home_group(e, _hash(s.key))
        vc_prefetch_write(&e.ctrl[group << GROUP_BITS])
        vc_prefetch_write(&e.buckets[group << GROUP_BITS])
        if s.prev != VC_NIL:
            vc_prefetch_write(&e.slots[s.prev])
    t.counters[COUNTER_MISSES] += 1
    return True


cdef inline int _access_miss(Engine e, uint64_t key, uint64_t size, uint64_t h,
                             uint64_t gap) noexcept nogil:
    """_access() for an absent key, whose lookup with hash `h` found the free bucket `gap`."""
    cdef int tier
    if _replace_coldest(e, key, size, h, gap):
        return STATUS_MISS
    tier = _insert(e, key, size, VC_NIL)
    if tier < 0:
        return tier
    e.tier_state[tier].counters[COUNTER_MISSES] += 1
    return STATUS_MISS


cdef inline int _policy_hit(Engine e, uint32_t slot) noexcept nogil:
    """_hit() for the policies of engine_policies.pxi."""
    _policy_touch(e, slot)
    _policy_sample(e, e.slots[slot].tier, True)
    return _count_hit(e, slot)


cdef int _policy_replace(Engine e, uint64_t key, uint64_t size, uint64_t h, uint64_t gap,
                         uint32_t ghost) noexcept nogil:
    """_replace_coldest() for the policies: the common miss of a full tier 0 evicts the
    policy's victim in place, and the new key, whose lookup found the free bucket `gap` and
    tier 0's ghost of it (`ghost`, or VC_NIL), takes over the victim's slot, its ghost's or a
    free one.  STATUS_TOO_LARGE, having changed nothing, unless the conditions of the LRU
    version hold (no log, no pins in tier 0, room in the map, an eviction needed); otherwise the
    miss's status, having done what _insert would (a victim too small to make room is evicted
    and the general path makes the rest)."""
    cdef TierState* t = &e.tier_state[0]
    cdef uint64_t charge = _charge(e, size), victim_charge
    cdef uint32_t victim, predicted
    cdef Slot* s
    if (e.logging or t.pinned != 0 or t.count == 0 or e.growth_left == 0 or charge > t.capacity
            or t.used <= t.capacity - charge):
        return STATUS_TOO_LARGE
    if e.policy_kind == PK_WTINYLFU:
        return _wtlfu_replace(e, key, size, h, gap, charge)
    if ghost == VC_NIL:
        if e.policy_kind == PK_S3FIFO and _s3fifo_replace(e, key, size, h, gap, charge):
            return 0
        if e.policy_kind == PK_ARC and _arc_replace_in_place(e, key, size, h, gap, charge):
            return 0
    if e.policy_kind > PK_SIEVE:        # S3-FIFO and ARC: the ghost check
        # A victim that becomes a ghost keeps its slot, so the new entry may need another:
        # one free before anything changes (growing moves the array: nothing points into it yet).
        if _reserve(e, 1) != 0:
            return STATUS_TOO_LARGE
        e.pstate[0].arriving = 0
        e.pstate[0].incoming = charge
        if ghost != VC_NIL:
            _ghost_recall(e, 0, ghost)
    victim = _policy_victim(e, 0)
    s = &e.slots[victim]
    victim_charge = _charge(e, s.size)
    if t.used - victim_charge > t.capacity - charge:
        if ghost != VC_NIL:
            _release_slot(e, ghost)
        _displace(e, victim)
        if _reserve_one(e) != 0:
            e.pstate[0].arriving = 0
            return STATUS_NO_MEMORY
        _insert_arrived(e, key, size, 0, charge)
        return 0
    predicted = s.prev                  # the segment's next-oldest entry: the likely next victim
    if e.policy_kind <= PK_SIEVE:
        _replace_single_segment(e, victim, key, size, h, gap, charge - victim_charge)
    else:
        _replace_remembering(e, victim, ghost, key, size, h, gap)
    _prefetch_victim(e, predicted)
    return 0


cdef int _wtlfu_replace(Engine e, uint64_t key, uint64_t size, uint64_t h, uint64_t gap,
                        uint64_t charge) noexcept nogil:
    """_policy_replace() for W-TinyLFU, when one contest makes the room (STATUS_TOO_LARGE,
    having changed nothing, otherwise): the window's oldest entry, the candidate, joins
    probation, where it lies next to probation's newest entry, so only its segment changes; it
    competes with probation's oldest, and the new key takes over the loser's slot at the
    window's newest end."""
    cdef TierState* t = &e.tier_state[0]
    cdef PolicyState* ps = &e.pstate[0]
    cdef uint32_t candidate, victim, loser, older
    cdef uint64_t candidate_charge, victim_charge
    if ps.seg_used[0] + charge <= ps.seg_cap[0] or ps.seg_count[1] == 0 or ps.seg_head[0] == VC_NIL:
        return STATUS_TOO_LARGE         # no contest, or one without an opponent
    victim = _seg_oldest(e, 0, 1)
    candidate = e.slots[ps.seg_head[1]].prev
    candidate_charge = _charge(e, e.slots[candidate].size)
    victim_charge = _charge(e, e.slots[victim].size)
    if (ps.seg_used[0] - candidate_charge + charge > ps.seg_cap[0]
            or t.used - candidate_charge > t.capacity - charge
            or t.used - victim_charge > t.capacity - charge):
        return STATUS_TOO_LARGE         # one move and one eviction would not do
    older = e.slots[candidate].prev     # the next candidate
    # The candidate joins probation (_seg_move without the relinking).
    e.slots[candidate].flags = <uint8_t>((e.slots[candidate].flags & ~SEG_MASK) | (1 << SEG_SHIFT))
    if ps.seg_head[0] == candidate:
        ps.seg_head[0] = VC_NIL
    ps.seg_head[1] = candidate
    ps.seg_used[0] -= candidate_charge
    ps.seg_count[0] -= 1
    ps.seg_used[1] += candidate_charge
    ps.seg_count[1] += 1
    if _sketch_frequency(e, e.slots[candidate].key) > _sketch_frequency(e, e.slots[victim].key):
        loser = victim
        _prefetch_victim(e, victim)     # its slot's neighbour is the next victim
    else:
        loser = candidate
    _seg_unlink(e, loser)
    _take_over(e, loser, key, size, h, gap)
    ps.arriving = 0
    ps.incoming = 0
    _seg_link(e, loser, 0, 0)
    if older != VC_NIL:
        vc_prefetch_read(&e.slots[older])
    return 0


cdef inline void _replace_remembering(Engine e, uint32_t victim, uint32_t ghost, uint64_t key,
                                      uint64_t size, uint64_t h, uint64_t gap) noexcept nogil:
    """_policy_replace()'s eviction and placement for S3-FIFO and ARC.  A victim its policy
    remembers becomes a ghost where it lies; a new key returning from a ghost takes the ghost's
    slot and bucket (filed under that key already); otherwise the new entry takes over the
    victim's slot, or a free one."""
    cdef TierState* t = &e.tier_state[0]
    cdef int which = _remembering(e, victim, 0)
    cdef uint32_t slot
    cdef Slot* s
    _seg_unlink(e, victim)
    if which < 0 and ghost == VC_NIL:
        _take_over(e, victim, key, size, h, gap)
        _policy_place(e, victim, 0)
        return
    s = &e.slots[victim]
    t.counters[COUNTER_BYTES_OUT] += s.size
    t.counters[COUNTER_EVICTIONS] += 1
    if which >= 0:
        _ghost_link(e, victim, 0, which)
    else:
        _release_slot(e, victim)
    if ghost != VC_NIL:
        slot = ghost
    else:
        slot = _take_slot(e)            # _policy_replace made sure of one
        _map_place(e, gap, slot, h)
    _new_entry(&e.slots[slot], key, size)
    t.counters[COUNTER_INSERTS] += 1
    t.counters[COUNTER_BYTES_IN] += size
    _policy_place(e, slot, 0)


cdef bint _s3fifo_replace(Engine e, uint64_t key, uint64_t size, uint64_t h, uint64_t gap,
                          uint64_t charge) noexcept nogil:
    """_policy_replace() for S3-FIFO's common miss, of a key it does not remember; False,
    having changed nothing, unless it is small's turn to evict and small's oldest entry leaves
    without a second chance into a full ghost FIFO, which then forgets exactly its oldest key.
    The new key takes that forgotten key's slot: the general path takes the same one, just
    handed back."""
    cdef TierState* t = &e.tier_state[0]
    cdef PolicyState* ps = &e.pstate[0]
    cdef uint32_t victim, dropped = ps.ghost_tail[0]
    cdef uint64_t victim_charge
    cdef Slot* s
    if not ps.has_evicted or _s3_mains_turn(ps) or dropped == VC_NIL:
        return False
    victim = ps.seg_head[1]
    victim = t.tail if victim == VC_NIL else e.slots[victim].prev      # small's oldest
    s = &e.slots[victim]
    victim_charge = _charge(e, s.size)
    if (((s.flags & FREQ_MASK) >> FREQ_SHIFT) >= e.move_threshold
            or t.used - victim_charge > t.capacity - charge
            or not _s3_remembers(e, 0, victim_charge)
            or ps.ghost_used[0] + victim_charge <= ps.ghost_cap
            or ps.ghost_used[0] + victim_charge - _charge(e, e.slots[dropped].size) > ps.ghost_cap):
        return False
    _ghost_unlink(e, dropped)
    _replace_through_ghost(e, victim, 0, dropped, key, size, h, gap)
    return True


cdef bint _arc_replace_in_place(Engine e, uint64_t key, uint64_t size, uint64_t h, uint64_t gap,
                                uint64_t charge) noexcept nogil:
    """_policy_replace() for ARC's common miss, a key in neither ghost list (case IV); False,
    having changed nothing, unless the directory is full, so that B1's or B2's oldest key is
    forgotten, and REPLACE's victim alone makes the room.  The new key takes the forgotten
    key's slot, as in _s3fifo_replace."""
    cdef TierState* t = &e.tier_state[0]
    cdef int which, forgets = _arc_forgets(e, 0, charge)
    cdef uint32_t victim, dropped
    if forgets < 0:
        return False
    victim = _arc_choice(e, 0, &which)
    if victim == VC_NIL or t.used - _charge(e, e.slots[victim].size) > t.capacity - charge:
        return False
    dropped = e.pstate[0].ghost_tail[forgets]
    _ghost_unlink(e, dropped)
    _replace_through_ghost(e, victim, which, dropped, key, size, h, gap)
    return True


cdef inline void _replace_through_ghost(Engine e, uint32_t victim, int which, uint32_t dropped,
                                        uint64_t key, uint64_t size, uint64_t h,
                                        uint64_t gap) noexcept nogil:
    """The in-place miss of S3-FIFO and ARC: `victim`, tier 0's entry whose leaving makes the
    room, becomes the newest ghost of list `which` where it lies, and the new key takes the
    slot of `dropped`, a ghost already off its list that the policy forgets, and the free
    bucket `gap` (in the order _take_over explains), where the policy places it."""
    cdef TierState* t = &e.tier_state[0]
    cdef Slot* s = &e.slots[victim]
    cdef uint32_t predicted = s.prev        # the segment's next-oldest entry: the likely next victim
    _seg_unlink(e, victim)
    t.counters[COUNTER_BYTES_OUT] += s.size
    t.counters[COUNTER_EVICTIONS] += 1
    _ghost_attach(e, victim, 0, which)
    _map_erase_from(e, dropped, _hash(e.slots[dropped].key))
    _map_place(e, gap, dropped, h)
    _new_entry(&e.slots[dropped], key, size)
    _policy_place(e, dropped, 0)
    t.counters[COUNTER_INSERTS] += 1
    t.counters[COUNTER_BYTES_IN] += size
    # The victim became a ghost where it lies: its buckets stay, and the next victim's slot
    # was written by the unlink; what the next miss stalls on is the slot before that one.
    if predicted != VC_NIL and e.slots[predicted].prev != VC_NIL:
        vc_prefetch_write(&e.slots[e.slots[predicted].prev])


cdef inline void _replace_single_segment(Engine e, uint32_t victim, uint64_t key, uint64_t size,
                                         uint64_t h, uint64_t gap, int64_t growth) noexcept nogil:
    """_policy_replace()'s unlink, take-over and placement for FIFO, CLOCK and SIEVE, whose one
    segment is the whole list: the victim's slot moves to the head, as LRU's does, and the
    totals change by the charge's growth alone."""
    cdef TierState* t = &e.tier_state[0]
    cdef PolicyState* ps = &e.pstate[0]
    cdef Slot* s = &e.slots[victim]
    if ps.hand == victim:
        ps.hand = s.prev
    _take_over(e, victim, key, size, h, gap)
    s.flags = 0                         # the new entry arrives unmarked, in segment 0
    t.used += growth
    ps.seg_used[0] += growth
    if t.head != victim:
        if s.next != VC_NIL:
            e.slots[s.next].prev = s.prev
        else:
            t.tail = s.prev
        e.slots[s.prev].next = s.next
        s.prev = VC_NIL
        s.next = t.head
        e.slots[t.head].prev = victim
        t.head = victim
    ps.seg_head[0] = victim


cdef inline int _policy_access(Engine e, uint64_t key, uint64_t size, uint64_t h) noexcept nogil:
    """_access() for the policies, given the key's hash."""
    cdef int tier
    cdef uint64_t gap
    cdef uint32_t ghost
    cdef uint32_t slot = _lookup_with_ghost(e, key, h, &gap, &ghost)
    if e.policy_kind == PK_WTINYLFU and slot == VC_NIL:
        _sketch_increment(e, key)       # a hit counts in _policy_touch
    if slot != VC_NIL:
        return _policy_hit(e, slot)
    tier = _policy_replace(e, key, size, h, gap, ghost)
    if tier == STATUS_TOO_LARGE:
        tier = _insert(e, key, size, VC_NIL)
    if tier == STATUS_DECLINED:
        return STATUS_MISS
    if tier < 0:
        return tier
    e.tier_state[tier].counters[COUNTER_MISSES] += 1
    _policy_sample(e, tier, False)
    return STATUS_MISS


# --------------------------------------------------------------------------------------------
# The batch loops, written once: a batch call runs one without the GIL for the built-in
# policies, and with it for a Python policy (whose callbacks then need no GIL round trip).

@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _access_loop(Engine e, const uint64_t[::1] kv, const uint64_t[:] sv, int8_t[::1] result,
                             int* status) noexcept nogil:
    """access_many()'s loop: each key's tier (-1 for a miss) into `result`; the index of the key
    that failed, its status in `status`, or -1."""
    cdef Py_ssize_t i, n = kv.shape[0]
    cdef uint64_t home, gap
    cdef uint32_t slot
    cdef Prefetcher ring
    _prefetch_start(e, &ring)
    if e.native_policy and not e.lru_native:
        for i in range(n):
            home = _prefetch_keys(e, &ring, kv, i, True)
            if i + PREFETCH_STEP < n:
                _prefetch_policy(e, kv[i + PREFETCH_STEP])
            status[0] = _policy_access(e, kv[i], sv[i], home)
            if status[0] < STATUS_MISS:
                return i
            result[i] = <int8_t>status[0]
        return -1
    for i in range(n):
        home = _prefetch_keys(e, &ring, kv, i, True)
        slot = _lookup(e, kv[i], home, &gap)
        # _access() with the prefetcher's hash.  One test of the slot here: when a helper
        # returned the hit's tier, GCC tested the slot twice.
        if vc_likely(slot != VC_NIL):
            result[i] = <int8_t>_hit(e, slot)
            continue
        status[0] = _access_miss(e, kv[i], sv[i], home, gap)
        if status[0] < STATUS_MISS:
            return i
        result[i] = <int8_t>status[0]
    return -1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _insert_loop(Engine e, const uint64_t[::1] kv, const uint64_t[:] sv, int8_t[::1] result,
                             int* status) noexcept nogil:
    """insert_many()'s loop: each key's tier (-1 when the admission filter declined it) into
    `result`; the index of the key that failed, its status in `status`, or -1."""
    cdef Py_ssize_t i, n = kv.shape[0]
    cdef uint64_t home
    cdef Prefetcher ring
    _prefetch_start(e, &ring)
    for i in range(n):
        home = _prefetch_keys(e, &ring, kv, i, False)
        status[0] = _insert_counted(e, kv[i], sv[i], _find_from(e, kv[i], home))
        if status[0] == STATUS_DECLINED:
            result[i] = -1
            continue
        if status[0] < 0:
            return i
        result[i] = <int8_t>status[0]
    return -1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _find_loop(Engine e, const uint64_t[::1] kv, int8_t* tiers,
                           bint touching) noexcept nogil:
    """record_access_many()'s and get_tiers()' loop: each key looked up; its tier into tiers[i]
    (-1 when absent) unless `tiers` is NULL, and with `touching` an access of each present one
    recorded.  The number of keys present."""
    cdef Py_ssize_t i, present = 0
    cdef uint32_t slot
    cdef Prefetcher ring
    _prefetch_start(e, &ring)
    for i in range(kv.shape[0]):
        slot = _find_from(e, kv[i], _prefetch_keys(e, &ring, kv, i, touching))
        if tiers != NULL:
            tiers[i] = -1 if slot == VC_NIL else e.slots[slot].tier
        if slot == VC_NIL:
            continue
        present += 1
        if touching:
            if e.policy_kind != PK_LRU:
                _policy_touch(e, slot)
            else:
                _touch(e, slot)
    return present


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _move_loop(Engine e, const uint64_t[::1] kv, int8_t[::1] result, bint up) noexcept nogil:
    """promote_many()'s and demote_many()'s loop: each key's tier afterwards (-1 when absent)."""
    cdef Py_ssize_t i
    cdef uint32_t slot
    for i in range(kv.shape[0]):
        slot = _find(e, kv[i])
        if slot == VC_NIL:
            result[i] = -1
            continue
        if up:
            _promote(e, slot, False)
        else:
            _demote(e, slot)
        result[i] = e.slots[slot].tier


# --------------------------------------------------------------------------------------------
# Entering and leaving a public call

cdef Py_ssize_t _first_too_large(Engine e, const uint64_t[:] sizes) noexcept:
    """Index of the first size whose charge no tier can hold, or -1 (a batch's up-front check)."""
    cdef uint64_t largest = 0
    cdef Py_ssize_t i
    cdef int t
    for t in range(e.n_tiers):
        if e.tier_state[t].capacity > largest:
            largest = e.tier_state[t].capacity
    for i in range(sizes.shape[0]):
        if _charge(e, sizes[i]) > largest:
            return i
    return -1


cdef inline void _lock(Engine e) noexcept:
    """Engine.acquire(), with the uncontended case inline (the caller holds the GIL)."""
    if vc_likely(e.lock_depth == 0):
        e.lock_owner = vc_this_thread()
        e.lock_depth = 1
    elif e.lock_owner == vc_this_thread():
        e.lock_depth += 1
    else:
        e._wait_for_lock()
        e.lock_owner = vc_this_thread()
        e.lock_depth = 1


cdef inline void _unlock(Engine e) noexcept nogil:
    """Engine.release() (the caller holds the GIL)."""
    if VC_DEBUG:
        vc_require_gil("Engine.release() called without the GIL")
    e.lock_depth -= 1
    if vc_unlikely(e.lock_depth == 0 and e.lock_waiters != 0):
        sem_post(&e.lock_free)


cdef inline int _enter(Engine e) except -1:
    _lock(e)
    if vc_unlikely(e.in_callback != 0):
        e.release()
        raise CacheError("The cache was modified from inside its own policy callback. "
                         "Fix: only read the cache (get, stats, tiers, iteration) from "
                         "should_promote/eviction_candidate; mutate it after the call returns.")
    _begin_op(e)
    return 0


cdef inline uint32_t _enter_present(Engine e, uint64_t key) except? 0xFFFFFFFF:
    """_enter(), then the slot of `key`; KeyNotFoundError (lock released) when it is absent."""
    cdef uint32_t slot
    _enter(e)
    slot = _find(e, key)
    if slot == VC_NIL:
        _leave(e, STATUS_NOT_FOUND, key, 0, -1)
    return slot


cdef inline int _leave(Engine e, int status, uint64_t key, uint64_t size,
                       Py_ssize_t index) except -1:
    """Release the lock, then raise the status's error and run on_evict callbacks, if any."""
    if vc_likely(e._on_evict is None and e.pending_error is None and not e.alloc_failed
                 and not VC_DEBUG):
        _unlock(e)
        if vc_unlikely(status < STATUS_MISS):
            _raise_status(e, status, key, size, index)
        return 0
    return _leave_slow(e, status, key, size, index)


cdef int _leave_slow(Engine e, int status, uint64_t key, uint64_t size,
                     Py_ssize_t index) except -1:
    cdef Py_ssize_t i
    cdef list evicted = None
    if VC_DEBUG:
        try:
            _verify(e)
        except BaseException:
            e.release()
            raise
    if e._on_evict is not None:
        evicted = [CacheEntry(e.events[i].key, e.events[i].size, e.events[i].src_tier)
                   for i in range(e.n_events) if e.events[i].kind == EV_EVICT]
    error = e.pending_error
    e.pending_error = None
    alloc_failed = e.alloc_failed
    e.alloc_failed = False
    callback = e._on_evict
    e.release()
    if status < STATUS_MISS:
        _raise_status(e, status, key, size, index)
    if evicted:
        error = report_victims(callback, evicted, error)
    if error is not None:
        raise error
    if alloc_failed:
        raise MemoryError("The event log could not grow, so this operation's events are "
                          "incomplete. Fix: free memory; the cache itself is consistent.")
    return 0


cdef int _raise_status(Engine e, int status, uint64_t key, uint64_t size,
                       Py_ssize_t index) except -1:
    where = f" (keys[{index}])" if index >= 0 else ""
    if status == STATUS_NOT_FOUND:
        raise KeyNotFoundError(f"{KEY_NOT_FOUND_MESSAGE} Key: {key}{where}.")
    if status == STATUS_TOO_LARGE:
        largest = 0
        for tier in range(e.n_tiers):
            if e.tier_state[tier].capacity > e.tier_state[largest].capacity:
                largest = tier
        raise EntryTooLargeError(
            f"{ENTRY_TOO_LARGE_MESSAGE} Key {key}{where} has size {size} bytes "
            f"(charged {_charge(e, size)}); the largest tier, {e.names[largest]!r}, "
            f"holds {e.tier_state[largest].capacity} bytes.")
    if status == STATUS_ALL_PINNED:
        raise AllPinnedError(
            f"Cannot make room for key {key}{where} ({size} bytes): every eviction candidate in "
            f"the tiers that could hold it is pinned. Fix: unpin entries (cache.unpin(key)) or "
            f"enlarge the tiers.")
    if status == STATUS_TOO_MANY:
        raise CapacityAccountingError(
            f"A cache holds at most {MAX_SLOTS:,} entries; key {key}{where} would exceed "
            f"that. Fix: remove entries first, or split the keys between several caches.")
    if status == STATUS_NO_MEMORY:
        raise MemoryError(f"Out of memory growing the cache's tables for key {key}{where}. "
                          f"Fix: free memory or cap the number of entries.")
    raise CacheError(f"Internal status {status} for key {key}. Fix: report this as a bug.")


cdef bint _read_slot(Engine e, uint64_t key, Slot* out) noexcept:
    """Copy the slot of `key` into `out` under the lock (a read, not an access); False when
    `key` is absent.  The caller builds its answer from the copy after the lock is released."""
    cdef uint32_t slot
    e.acquire()
    slot = _find(e, key)
    if slot != VC_NIL:
        out[0] = e.slots[slot]
    e.release()
    return slot != VC_NIL


def _broken(what):
    raise CacheError(f"Cache invariant broken: {what}. Fix: this is a bug in vyrecache; "
                     f"report it with the operations that led here.")


cdef int _verify(Engine e) except -1:
    """Walk every structure; raise CacheError naming the first broken invariant."""
    cdef int tier
    cdef uint32_t slot, prev
    cdef uint64_t used, pinned, count, total = 0, in_map = 0, free_count = 0, deleted = 0
    cdef uint64_t i, h, group
    cdef uint8_t byte

    for tier in range(e.n_tiers):
        used = pinned = count = 0
        prev = VC_NIL
        slot = e.tier_state[tier].head
        while slot != VC_NIL:
            if count > <uint64_t>e.n_live:
                _broken(f"tier {tier}'s list has a cycle")
            if slot >= e.slot_high_water:
                _broken(f"tier {tier}'s list points at slot {slot} past the array")
            if e.slots[slot].tier != tier:
                _broken(f"slot {slot} is on tier {tier}'s list but says tier {e.slots[slot].tier}")
            if e.slots[slot].prev != prev:
                _broken(f"slot {slot}'s prev link is {e.slots[slot].prev}, expected {prev}")
            if e.slots[slot].flags & FLAG_LIFTED:
                _broken(f"slot {slot} is still marked lifted")
            if e.pstate == NULL and e.slots[slot].flags != 0:
                _broken(f"slot {slot} has policy bits {e.slots[slot].flags:#x} under LRU")
            if _find(e, e.slots[slot].key) != slot:
                _broken(f"key {e.slots[slot].key} of tier {tier} is not found in the map")
            used += _charge(e, e.slots[slot].size)
            if e.slots[slot].pins:
                pinned += _charge(e, e.slots[slot].size)
            count += 1
            prev = slot
            slot = e.slots[slot].next
        if e.tier_state[tier].tail != prev:
            _broken(f"tier {tier}'s tail is {e.tier_state[tier].tail}, the list ends at {prev}")
        if used != e.tier_state[tier].used:
            _broken(f"tier {tier} used is {e.tier_state[tier].used} bytes, entries sum to {used}")
        if pinned != e.tier_state[tier].pinned:
            _broken(f"tier {tier} pinned is {e.tier_state[tier].pinned}, pinned entries sum to {pinned}")
        if count != e.tier_state[tier].count:
            _broken(f"tier {tier} count is {e.tier_state[tier].count}, its list holds {count}")
        if used > e.tier_state[tier].capacity:
            _broken(f"tier {tier} uses {used} bytes of {e.tier_state[tier].capacity}")
        total += count
    if total != <uint64_t>e.n_live:
        _broken(f"the lists hold {total} entries, the cache counts {e.n_live}")
    for i in range(e.bucket_mask + 1):
        byte = e.ctrl[i]
        if byte == CTRL_EMPTY or byte == CTRL_DELETED:
            deleted += byte == CTRL_DELETED
            if e.buckets[i] != VC_NIL:
                _broken(f"bucket {i} is free (control byte {byte:#x}) but names slot {e.buckets[i]}")
            continue
        slot = e.buckets[i]
        if byte > 0x7F or slot >= e.slot_high_water or e.slots[slot].tier == FREE_TIER:
            _broken(f"bucket {i} (control byte {byte:#x}) names free slot {slot}")
        h = _hash(e.slots[slot].key)
        if byte != _h2(e, h):
            _broken(f"bucket {i}'s control byte is {byte:#x}, its key's h2 is {_h2(e, h):#x}")
        group = _home_group(e, h)
        while group != i >> GROUP_BITS:      # no group before the bucket's may hold an EMPTY
            if vc_group_empty(vc_group_load(e.ctrl, group)):
                _broken(f"key {e.slots[slot].key} in bucket {i} lies past group {group}, "
                        f"which has an empty bucket")
            group = (group + 1) & e.group_mask
        in_map += 1
    if in_map != total + e.n_ghosts:
        _broken(f"the map holds {in_map} keys, the lists {total} and {e.n_ghosts} ghosts")
    if in_map + deleted + e.growth_left != _max_used(e.bucket_mask + 1):
        _broken(f"{in_map} full and {deleted} deleted buckets with {e.growth_left} to grow "
                f"do not add up to the map's allowance of {_max_used(e.bucket_mask + 1)}")
    for head in (e.free_head, e.limbo_head):
        slot = head
        while slot != VC_NIL:
            if free_count > e.slot_high_water:
                _broken("the free list has a cycle")
            if e.slots[slot].tier != FREE_TIER:
                _broken(f"free slot {slot} says tier {e.slots[slot].tier}")
            free_count += 1
            slot = e.slots[slot].next
    if free_count + total + e.n_ghosts != e.slot_high_water:
        _broken(f"{free_count} free + {total} live + {e.n_ghosts} ghost slots != "
                f"{e.slot_high_water} handed out")
    if e.pstate != NULL:
        _verify_policy(e)
    return 0


# --------------------------------------------------------------------------------------------

cdef class Engine:
    """The C core of a tiered cache (metadata only).  Use vyrecache.TieredCache.

    Engine(tiers, *, policy=None, spill=True, on_evict=None, granularity=1): `tiers` is a
    sequence of objects with `name` and `capacity` (or (name, capacity) pairs), tier 0 the
    slowest.  Every entry is charged round_up(size, granularity) bytes against its tier.
    """

    def __cinit__(self, *args, **kwargs):
        self.slots = NULL
        self.tier_state = NULL
        self.events = NULL
        self.buckets = NULL
        self.ctrl = NULL
        self.free_head = VC_NIL
        self.limbo_head = VC_NIL
        self.limbo_tail = VC_NIL
        self.native_policy = True
        self.lru_native = True
        self.policy_kind = PK_LRU
        self.pstate = NULL
        self.sketch = NULL
        self.doorkeeper = NULL
        self.promote_threshold = 3
        self.spill_victims = True
        self.granularity = 1
        self.names = ()
        if sem_init(&self.lock_free, 0, 0) != 0:
            raise MemoryError("Could not create the cache's lock. Fix: free system resources.")
        self.lock_ready = True
        if _resize_buckets(self, MIN_BUCKET_BITS) != 0:
            raise MemoryError("Could not allocate the cache's map. Fix: free memory.")

    def __init__(self, tiers, *, policy=None, spill=True, on_evict=None, granularity=1):
        cdef int tier
        if self.tier_state != NULL:
            raise CacheError("This cache is already initialised. Fix: create a new cache "
                             "instead of calling __init__ again.")
        specs = []
        for spec in list(tiers):
            if isinstance(spec, tuple) and len(spec) == 2:
                name, capacity = spec
            else:
                name, capacity = getattr(spec, "name", None), getattr(spec, "capacity", None)
            if not isinstance(name, str) or not name:
                raise ValueError(f"Tier names must be non-empty strings, got {name!r}. "
                                 f"Fix: name every tier, e.g. CacheTier('host', 1 << 30).")
            if any(name == seen for seen, _ in specs):
                raise ValueError(f"Tier name {name!r} is used twice. Fix: give every tier a "
                                 f"unique name.")
            specs.append((name, _as_u64(capacity, f"capacity of tier {name!r}")))
        if not specs:
            raise ValueError("A cache needs at least one tier, got none. "
                             "Fix: pass e.g. [CacheTier('host', 1 << 30)].")
        if len(specs) > INT8_MAX:
            raise ValueError(f"At most {INT8_MAX} tiers are supported, got {len(specs)}. "
                             f"Fix: merge tiers.")
        if isinstance(granularity, bool) or _as_u64(granularity, "granularity") == 0:
            raise ValueError(f"granularity must be a positive int, got {granularity!r}. "
                             f"Fix: pass 1 for exact accounting or the allocation alignment.")
        if not isinstance(spill, (bool, np.bool_)):
            raise TypeError(f"spill must be True or False, got {spill!r}. Fix: pass a bool.")
        if on_evict is not None and not callable(on_evict):
            raise TypeError(f"on_evict must be callable or None, got {on_evict!r}. "
                            f"Fix: pass a function taking one CacheEntry.")
        if policy is not None:
            if not (callable(getattr(policy, "should_promote", None))
                    and callable(getattr(policy, "eviction_candidate", None))):
                raise TypeError(f"policy must be a TierPolicy, got {policy!r}. Fix: pass "
                                f"LruPolicy(...) or an instance of a TierPolicy subclass.")
            if getattr(type(policy), "_native", False):
                threshold = getattr(policy, "promote_threshold")
                if isinstance(threshold, bool) or _as_u64(threshold, "promote_threshold") > UINT32_MAX:
                    raise ValueError(f"promote_threshold must be an int in [0, 2**32), got "
                                     f"{threshold!r}. Fix: pass a small non-negative int.")
                self.promote_threshold = <uint32_t>threshold
                config = policy._engine_config() if hasattr(policy, "_engine_config") else None
                if config is not None:
                    (self.policy_kind, self.small_ratio, self.ghost_ratio, self.move_threshold,
                     self.window_ratio, self.adaptive) = config
                    self.lru_native = self.policy_kind == PK_LRU
            else:
                self.native_policy = False
                self.lru_native = False
        self.tier_state = <TierState*>PyMem_RawMalloc(len(specs) * sizeof(TierState))
        if self.tier_state == NULL:
            raise MemoryError("Could not allocate the tiers. Fix: free memory.")
        memset(self.tier_state, 0, len(specs) * sizeof(TierState))
        self.n_tiers = len(specs)
        for tier in range(self.n_tiers):
            self.tier_state[tier].capacity = specs[tier][1]
            self.tier_state[tier].head = VC_NIL
            self.tier_state[tier].tail = VC_NIL
            if tier + 1 == self.n_tiers:
                self.tier_state[tier].promote_at = (<uint64_t>1) << 32     # the top: never
            elif self.native_policy:
                self.tier_state[tier].promote_at = self.promote_threshold
            else:
                self.tier_state[tier].promote_at = 0       # every hit asks the Python policy
        self.names = tuple(name for name, _ in specs)
        self.granularity = granularity
        if self.policy_kind != PK_LRU:
            _policy_setup(self)
        self.spill_victims = bool(spill)
        self.py_policy = policy
        self._on_evict = on_evict
        self.logging = on_evict is not None

    def __dealloc__(self):
        PyMem_RawFree(self.slots)
        self.slots = NULL
        PyMem_RawFree(self.tier_state)
        self.tier_state = NULL
        PyMem_RawFree(self.events)
        self.events = NULL
        PyMem_RawFree(self.buckets)
        self.buckets = NULL
        PyMem_RawFree(self.ctrl)
        self.ctrl = NULL
        _policy_free(self)
        if self.lock_ready:
            sem_destroy(&self.lock_free)
            self.lock_ready = False

    # ---- C-level API for the storage layer ----

    # The lock.  Every caller takes and releases it holding the GIL, so its state (owner, depth,
    # waiters) needs no atomic instruction: the GIL orders those reads and writes, and an
    # uncontended acquire/release is a few plain loads and stores instead of a recursive pthread
    # mutex's two locked instructions and library calls (a large part of a hit's cost).  The
    # holder may then drop the GIL (the batch calls loop under `with nogil`); any other thread
    # sees the lock taken and parks on `lock_free` without the GIL until the holder releases.
    # Recursive, so that a policy callback may read the cache and the storage layer may hold the
    # lock across an operation and the processing of its events.  A free-threaded CPython has no
    # GIL to lean on, so the build refuses it (the Py_GIL_DISABLED #error at the top).

    cdef void acquire(self) noexcept:
        """Take the engine's lock; the caller holds the GIL (kept, except while waiting)."""
        _lock(self)

    cdef void _wait_for_lock(self) noexcept:
        self.lock_waiters += 1
        while self.lock_depth:
            with nogil:
                sem_wait(&self.lock_free)       # EINTR or a stale post: the loop checks again
        self.lock_waiters -= 1
        if self.lock_waiters == 0:
            # Posts for waiters that found the lock taken again are stale now: drop them.
            while sem_trywait(&self.lock_free) == 0:
                pass

    cdef void release(self) noexcept nogil:
        """Release the lock once; the caller holds the GIL."""
        _unlock(self)

    cdef Py_ssize_t slot_of(self, uint64_t key) noexcept nogil:
        cdef uint32_t slot = _find(self, key)
        return -1 if slot == VC_NIL else <Py_ssize_t>slot

    cdef int evict_for_room(self, int tier, uint64_t* key_out) noexcept nogil:
        """Displace the coldest unpinned entry of `tier` (spilled down when allowed), appending
        its events to the log; 1 when an entry was displaced, 0 when none can be."""
        cdef uint32_t victim = _pick_victim(self, tier)
        if victim == VC_NIL:
            return 0
        if key_out != NULL:
            key_out[0] = self.slots[victim].key
        _displace(self, victim)
        return 1

    # ---- one operation, driven by the storage layer (engine.pxd) ----

    cdef int op_begin(self) except -1:
        return _enter(self)

    cdef object op_end(self):
        if VC_DEBUG:
            try:
                _verify(self)
            except BaseException:
                self.release()
                raise
        error = self.pending_error
        self.pending_error = None
        if self.alloc_failed:
            self.alloc_failed = False
            if error is None:
                error = MemoryError("The event log could not grow, so this operation's events "
                                    "are incomplete. Fix: free memory.")
        self.release()
        return error

    cdef int raise_status(self, int status, uint64_t key, uint64_t size,
                          Py_ssize_t index) except -1:
        return _raise_status(self, status, key, size, index)

    cdef int op_insert(self, uint64_t key, uint64_t size) noexcept nogil:
        return _insert_counted(self, key, size, _find(self, key))

    cdef int op_touch(self, uint64_t key) noexcept nogil:
        cdef uint32_t slot = _find(self, key)
        if slot == VC_NIL:
            return STATUS_MISS
        return _policy_hit(self, slot) if self.policy_kind != PK_LRU else _hit(self, slot)

    cdef int op_promote(self, uint32_t slot, bint strict) noexcept nogil:
        return _promote(self, slot, strict)

    cdef int op_demote(self, uint32_t slot) noexcept nogil:
        return _demote(self, slot)

    cdef void op_remove(self, uint32_t slot) noexcept nogil:
        _remove(self, slot, EV_REMOVE)

    cdef int op_displace(self, uint32_t slot) noexcept nogil:
        """Displace one chosen entry (spilled down when allowed, else evicted); 0 when it is
        pinned or in the middle of a move and so cannot be."""
        if self.slots[slot].pins or self.slots[slot].flags & FLAG_LIFTED or self.slots[slot].tier < 0:
            return 0
        _displace(self, slot)
        return 1

    cdef uint32_t op_victim(self, int tier) noexcept nogil:
        """The policy's victim in `tier` (VC_NIL when every entry is pinned)."""
        return _pick_victim(self, tier)

    cdef void op_evict(self, uint32_t slot) noexcept nogil:
        _evict(self, slot)

    cdef int op_pin(self, uint32_t slot, int delta) noexcept nogil:
        """pin() (delta 1) or unpin() (-1) of a present entry; -1, changing nothing, when the
        count would leave [0, 65535] (pin() and unpin() explain that)."""
        cdef Slot* s = &self.slots[slot]
        if (delta > 0 and s.pins == 0xFFFF) or (delta < 0 and s.pins == 0):
            return -1
        if delta > 0 and s.pins == 0:
            self.tier_state[s.tier].pinned += _charge(self, s.size)
        s.pins = <uint16_t>(s.pins + delta)
        if delta < 0 and s.pins == 0:
            self.tier_state[s.tier].pinned -= _charge(self, s.size)
        return 0

    cdef int target_tier(self, uint64_t size, uint32_t replaced) noexcept nogil:
        """The tier insert() would put an entry of `size` bytes in, or its error status."""
        return _first_tier_for(self, _charge(self, size), replaced)

    cdef int op_replace(self, uint32_t slot, uint64_t size) noexcept nogil:
        """insert() of a present, unpinned key as one step, when the new entry has the old one's
        charge and would land in its tier (native LRU): what the remove and the insert leave
        behind (recency, statistics, counters, tier bytes) without freeing and taking a slot,
        and without events, since nothing moves.  -1, changing nothing, when it does not apply."""
        cdef Slot* s = &self.slots[slot]
        cdef int tier = s.tier
        cdef TierState* t
        if (not self.lru_native or s.pins or s.flags or tier < 0
                or _charge(self, size) != _charge(self, s.size)
                or _first_tier_for(self, _charge(self, size), slot) != tier):
            return -1
        t = &self.tier_state[tier]
        t.counters[COUNTER_BYTES_OUT] += s.size
        _unlink(self, slot)
        s.size = size
        s.last_access = 0
        s.frequency = 0
        _link_head(self, slot, tier)
        t.counters[COUNTER_INSERTS] += 1
        t.counters[COUNTER_BYTES_IN] += size
        return tier

    # ---- configuration ----

    @property
    def record_events(self):
        """Whether each mutating call records its events (events()); on while on_evict is set."""
        return self._record_events

    @record_events.setter
    def record_events(self, value):
        self._record_events = bool(value)
        self.logging = self._record_events or self._on_evict is not None

    @property
    def on_evict(self):
        """Called with a CacheEntry for every entry that leaves the cache as a victim."""
        return self._on_evict

    @on_evict.setter
    def on_evict(self, callback):
        if callback is not None and not callable(callback):
            raise TypeError(f"on_evict must be callable or None, got {callback!r}. "
                            f"Fix: pass a function taking one CacheEntry.")
        self._on_evict = callback
        self.logging = self._record_events or callback is not None

    @property
    def spill(self):
        """Whether victims of tier k > 0 move down to tier k - 1 instead of leaving."""
        return self.spill_victims

    @property
    def policy(self):
        return self.py_policy

    @property
    def tier_names(self):
        return self.names

    def tier_info(self, int tier):
        """(name, capacity, used, count, pinned) of one tier."""
        self._check_tier(tier)
        cdef TierState* t = &self.tier_state[tier]
        return (self.names[tier], t.capacity, t.used, t.count, t.pinned)

    cdef int _check_tier(self, int tier) except -1:
        if tier < 0 or tier >= self.n_tiers:
            raise IndexError(f"Tier index {tier} is out of range; this cache has {self.n_tiers} "
                             f"tiers. Fix: use an index in [0, {self.n_tiers}).")
        return 0

    # ---- single-key calls ----

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def access(self, key, size, /):
        """Use `key`: on a hit record the access, promote if the policy says so, return the tier
        it was found in; on a miss insert it with `size` bytes and return -1."""
        # Positional-only, like dict.get: the call then skips keyword parsing (BENCHMARKS.md,
        # "The call path").
        cdef uint64_t k, s
        cdef int result
        if not vc_exact_u64(key, &k):
            k = _u64_slow(key, "key")
        if not vc_exact_u64(size, &s):
            s = _u64_slow(size, "size")
        _enter(self)
        if vc_likely(self.lru_native):
            result = _access(self, k, s)
        else:
            result = _access_any(self, k, s)
        _leave(self, result, k, s, -1)
        return <object>_ACCESS_RESULT_OBJECTS[result + 1]     # result >= STATUS_MISS after _leave

    def touch(self, key):
        """access() without the insert: the tier of a hit (recorded, maybe promoted), or -1 for
        a missing key (nothing changes, nothing is counted)."""
        cdef uint64_t k = _as_u64(key, "key")
        cdef uint32_t slot
        cdef int result = STATUS_MISS
        _enter(self)
        slot = _find(self, k)
        if slot != VC_NIL:
            result = _policy_hit(self, slot) if self.policy_kind != PK_LRU else _hit(self, slot)
        _leave(self, result, k, 0, -1)
        return result

    def insert(self, key, size):
        """Insert `key` with `size` bytes into the lowest tier that can hold it, replacing an
        existing entry (statistics reset).  Not an access."""
        cdef uint64_t k = _as_u64(key, "key")
        cdef uint64_t s = _as_u64(size, "size")
        cdef int result
        _enter(self)
        result = _insert_counted(self, k, s, _find(self, k))
        if result == STATUS_DECLINED:
            _leave(self, 0, k, s, -1)
            return False
        _leave(self, result, k, s, -1)
        return True

    def record_access(self, key):
        """Record an access (frequency, last_access, most-recent end); no-op for a missing key."""
        cdef uint64_t k = _as_u64(key, "key")
        cdef uint32_t slot
        _enter(self)
        slot = _find(self, k)
        if slot != VC_NIL:
            if self.policy_kind != PK_LRU:
                _policy_touch(self, slot)
            else:
                _touch(self, slot)
        _leave(self, 0, k, 0, -1)

    def promote(self, key):
        """Move up one tier if the policy allows; no-op in the top tier, for a pinned entry, or
        when the target tier is smaller than the entry."""
        cdef uint64_t k = _as_u64(key, "key")
        cdef uint32_t slot
        cdef int result
        _enter(self)
        slot = _find(self, k)
        result = STATUS_NOT_FOUND if slot == VC_NIL else _promote(self, slot, True)
        _leave(self, result, k, 0 if slot == VC_NIL else self.slots[slot].size, -1)

    def demote(self, key):
        """Move down one tier (no policy check); no-op in tier 0, for a pinned entry, or when the
        target tier is smaller than the entry."""
        cdef uint64_t k = _as_u64(key, "key")
        cdef uint32_t slot
        cdef int result
        _enter(self)
        slot = _find(self, k)
        result = STATUS_NOT_FOUND if slot == VC_NIL else _demote(self, slot)
        _leave(self, result, k, 0 if slot == VC_NIL else self.slots[slot].size, -1)

    def remove(self, key):
        """Remove `key` (pinned or not) and return its CacheEntry."""
        cdef uint64_t k = _as_u64(key, "key")
        cdef uint32_t slot
        slot = _enter_present(self, k)
        entry = CacheEntry(self.slots[slot].key, self.slots[slot].size, self.slots[slot].tier)
        _remove(self, slot, EV_REMOVE)
        _leave(self, 0, k, 0, -1)
        return entry

    def evict_coldest(self):
        """Evict the coldest unpinned entry of the lowest tier that has one; its key, or None."""
        cdef int tier
        cdef uint32_t victim = VC_NIL
        _enter(self)
        for tier in range(self.n_tiers):
            victim = _pick_victim(self, tier)
            if victim != VC_NIL:
                break
        key = None
        if victim != VC_NIL:
            key = self.slots[victim].key
            _evict(self, victim)
        _leave(self, 0, 0, 0, -1)
        return key

    def evict_from_tier(self, int tier):
        """Displace the coldest unpinned entry of `tier` (spilled down when allowed); its key, or
        None when the tier has no unpinned entry."""
        cdef uint64_t key
        self._check_tier(tier)
        _enter(self)
        found = self.evict_for_room(tier, &key)
        _leave(self, 0, 0, 0, -1)
        return key if found else None

    def pin(self, key):
        """Pin `key`: never a victim, never moved (pins nest; unpin as often as pinned)."""
        self._change_pins(key, 1)

    def unpin(self, key):
        """Undo one pin() of `key`."""
        self._change_pins(key, -1)

    cdef int _change_pins(self, key, int delta) except -1:
        cdef uint64_t k = _as_u64(key, "key")
        cdef uint32_t slot = _enter_present(self, k)
        if self.op_pin(slot, delta) != 0:
            self.release()
            if delta > 0:
                raise CapacityAccountingError(
                    f"Key {k} is already pinned 65535 times, the most a pin count holds. "
                    f"Fix: unpin it as often as it was pinned; pins nest.")
            raise CacheError(f"Key {k} is not pinned, so it cannot be unpinned. "
                             f"Fix: call unpin() once per pin().")
        _leave(self, 0, k, 0, -1)
        return 0

    # ---- reads (no event-log change) ----

    def get(self, key):
        """The CacheEntry of `key`, or None.  Not an access."""
        cdef Slot slot
        if not _read_slot(self, _as_u64(key, "key"), &slot):
            return None
        return CacheEntry(slot.key, slot.size, slot.tier)

    def stats(self, key):
        """The AccessStats of `key`, or None."""
        cdef Slot slot
        if not _read_slot(self, _as_u64(key, "key"), &slot):
            return None
        return AccessStats(slot.frequency, slot.last_access, slot.size)

    def pins(self, key):
        """How many times `key` is pinned (0 when not pinned); KeyNotFoundError if absent."""
        cdef uint64_t k = _as_u64(key, "key")
        cdef Slot slot
        if not _read_slot(self, k, &slot):
            _raise_status(self, STATUS_NOT_FOUND, k, 0, -1)
        return slot.pins

    def __len__(self):
        return self.n_live

    def __contains__(self, key):
        cdef uint64_t k = _as_u64(key, "key")
        cdef bint found
        self.acquire()
        found = _find(self, k) != VC_NIL
        self.release()
        return found

    def coldest_key(self, int tier):
        """The coldest unpinned key of `tier` (the built-in victim choice), or None."""
        cdef uint32_t slot
        self._check_tier(tier)
        self.acquire()
        slot = _coldest_unpinned(self, tier)
        key = None if slot == VC_NIL else self.slots[slot].key
        self.release()
        return key

    def tier_keys(self, int tier):
        """The keys of one tier, most recent first."""
        cdef uint32_t slot
        self._check_tier(tier)
        keys = []
        self.acquire()
        slot = self.tier_state[tier].head
        while slot != VC_NIL:
            keys.append(self.slots[slot].key)
            slot = self.slots[slot].next
        self.release()
        return keys

    def keys(self):
        """Every key: tier 0 first, each tier most recent first (a snapshot list)."""
        cdef int tier
        keys = []
        for tier in range(self.n_tiers):
            keys.extend(self.tier_keys(tier))
        return keys

    def __iter__(self):
        return iter(self.keys())

    def event_log(self):
        """The events of the last mutating call, as a numpy array of EVENT_DTYPE."""
        self.acquire()
        out = np.empty(self.n_events, dtype=EVENT_DTYPE)
        if self.n_events:
            memcpy(<char*><Py_ssize_t>out.ctypes.data, self.events, self.n_events * sizeof(Event))
        self.release()
        return out

    def counters(self):
        """One dict per tier (index = tier) of {counter name: value}, names as in COUNTER_NAMES.

        hits/misses: access() results (a miss counts in the tier the entry landed in);
        inserts: entries inserted into the tier; evictions: entries that left the cache from it;
        promotions/demotions/spills: entries that arrived by that move; bytes_in/bytes_out: real
        sizes that arrived in / left the tier for any reason.
        """
        cdef int tier, index
        report = []
        self.acquire()
        for tier in range(self.n_tiers):
            report.append({COUNTER_NAMES[index]: self.tier_state[tier].counters[index]
                           for index in range(VC_N_COUNTERS)})
        self.release()
        return report

    def reset_counters(self):
        """Set every counter of every tier to 0."""
        cdef int tier
        self.acquire()
        for tier in range(self.n_tiers):
            memset(self.tier_state[tier].counters, 0, sizeof(self.tier_state[tier].counters))
        self.release()

    def policy_info(self, int tier):
        """A tier's policy state as a dict: the policy's name, and per segment its entries,
        bytes and share (S3-FIFO: small/main; ARC: t1/t2 and p; W-TinyLFU: window, probation,
        protected), the ghost lists' keys and bytes.  For reports and tests; not an access."""
        cdef PolicyState* ps
        self._check_tier(tier)
        self.acquire()
        try:
            info = {"policy": POLICY_NAMES[self.policy_kind]}
            if self.pstate == NULL:
                return info
            ps = &self.pstate[tier]
            names = {PK_S3FIFO: ("small", "main"), PK_ARC: ("t1", "t2"),
                     PK_WTINYLFU: ("window", "probation", "protected")}.get(
                         self.policy_kind, ("entries",))
            for index, name in enumerate(names):
                info[name] = {"count": ps.seg_count[index], "bytes": ps.seg_used[index]}
            if self.policy_kind == PK_S3FIFO:
                info["small"]["capacity"] = ps.seg_cap[0]
                info["main"]["capacity"] = ps.seg_cap[1]
                info["ghost"] = {"count": ps.ghost_count[0], "bytes": ps.ghost_used[0],
                                 "capacity": ps.ghost_cap}
            elif self.policy_kind == PK_ARC:
                info["p"] = ps.p
                info["b1"] = {"count": ps.ghost_count[0], "bytes": ps.ghost_used[0]}
                info["b2"] = {"count": ps.ghost_count[1], "bytes": ps.ghost_used[1]}
            elif self.policy_kind == PK_WTINYLFU:
                info["window"]["capacity"] = ps.seg_cap[0]
                info["probation"]["capacity"] = ps.seg_cap[1] - ps.seg_cap[2]
                info["protected"]["capacity"] = ps.seg_cap[2]
            return info
        finally:
            self.release()

    def check(self):
        """Walk every structure and raise CacheError naming the first broken invariant."""
        self.acquire()
        try:
            _verify(self)
        finally:
            self.release()

    def sizeof(self):
        """Bytes of C memory the engine holds (slots, map, tiers, event log)."""
        return (self.slot_capacity * sizeof(Slot) + _map_bytes(self)
                + self.n_tiers * sizeof(TierState) + self.events_capacity * sizeof(Event)
                + _policy_bytes(self))

    # ---- batch calls ----

    def access_many(self, keys, sizes):
        """access() for each key in order; int8 array of tiers (-1 for misses).  `sizes` is an
        array or one int for all.  Stops at the first error and raises it (earlier keys done)."""
        return self._sized_many(keys, sizes, False)

    def insert_many(self, keys, sizes):
        """insert() for each key in order; int8 array of the tiers they landed in.  A size too
        large for every tier is found before anything changes (EntryTooLargeError, cache as it
        was); an AllPinnedError stops at that key, with the earlier keys done."""
        return self._sized_many(keys, sizes, True)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef object _sized_many(self, keys, sizes, bint inserting):
        key_array = _as_u64_keys(keys)
        cdef Py_ssize_t n = key_array.shape[0]
        size_array = _as_u64_array(sizes, "sizes", n)
        cdef const uint64_t[::1] kv = key_array
        cdef const uint64_t[:] sv = size_array
        out = np.empty(n, dtype=np.int8)
        cdef int8_t[::1] result = out
        cdef Py_ssize_t failed
        cdef int status = 0
        _enter(self)
        if inserting:
            failed = _first_too_large(self, sv)
            if failed >= 0:
                _leave(self, STATUS_TOO_LARGE, kv[failed], sv[failed], failed)
        if self.native_policy:
            with nogil:
                failed = (_insert_loop(self, kv, sv, result, &status) if inserting
                          else _access_loop(self, kv, sv, result, &status))
        else:
            failed = (_insert_loop(self, kv, sv, result, &status) if inserting
                      else _access_loop(self, kv, sv, result, &status))
        if failed >= 0:
            _leave(self, status, kv[failed], sv[failed], failed)
        _leave(self, 0, 0, 0, -1)
        return out

    def record_access_many(self, keys):
        """record_access() for each key; the number of keys that were present."""
        key_array = _as_u64_keys(keys)
        cdef const uint64_t[::1] kv = key_array
        cdef Py_ssize_t present
        _enter(self)
        with nogil:
            present = _find_loop(self, kv, NULL, True)
        _leave(self, 0, 0, 0, -1)
        return present

    def get_tiers(self, keys):
        """int8 array of each key's tier, -1 when absent.  Not an access."""
        key_array = _as_u64_keys(keys)
        cdef const uint64_t[::1] kv = key_array
        out = np.empty(kv.shape[0], dtype=np.int8)
        cdef int8_t[::1] result = out
        self.acquire()
        with nogil:
            _find_loop(self, kv, &result[0] if kv.shape[0] else NULL, False)
        self.release()
        return out

    def promote_many(self, keys):
        """promote() for each key in order; int8 array of each key's tier afterwards (-1 when
        absent).  A promotion blocked by pins is skipped instead of raising."""
        return self._move_many(keys, True)

    def demote_many(self, keys):
        """demote() for each key in order; int8 array of each key's tier afterwards (-1 when
        absent).  A demotion blocked by pins is skipped instead of raising."""
        return self._move_many(keys, False)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef object _move_many(self, keys, bint up):
        key_array = _as_u64_keys(keys)
        cdef const uint64_t[::1] kv = key_array
        out = np.empty(kv.shape[0], dtype=np.int8)
        cdef int8_t[::1] result = out
        _enter(self)
        if self.native_policy:
            with nogil:
                _move_loop(self, kv, result, up)
        else:
            _move_loop(self, kv, result, up)
        _leave(self, 0, 0, 0, -1)
        return out
