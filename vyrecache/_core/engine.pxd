# Declarations of the tiered-cache engine: the C layout other core modules cimport.
#
# The storage layer (`storage.pyx`) reads the event log, the slot array and the per-tier state
# directly; everything it may touch is declared here.  Method bodies live in engine.pyx.

from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    pthread_t pthread_self()


cdef extern from "<semaphore.h>" nogil:
    ctypedef struct sem_t:
        pass
    int sem_init(sem_t*, int, unsigned int)
    int sem_destroy(sem_t*)
    int sem_wait(sem_t*)
    int sem_trywait(sem_t*)
    int sem_post(sem_t*)


cdef extern from *:
    """
    #define VC_NIL ((uint32_t)0xFFFFFFFFu)
    #define VC_N_COUNTERS 10
    """
    # "No slot": the end of a list, an empty hash bucket, an empty free list.
    const uint32_t VC_NIL
    const int VC_N_COUNTERS


# Status codes of the internal C functions (_insert, _access, ...): >= 0 a tier, STATUS_MISS a miss,
# STATUS_DECLINED the admission filter's answer, anything else an error that _raise_status explains.
cdef enum:
    STATUS_MISS = -1
    STATUS_TOO_LARGE = -2
    STATUS_ALL_PINNED = -3
    STATUS_NO_MEMORY = -4
    STATUS_NOT_FOUND = -5
    STATUS_TOO_MANY = -6
    # Not an error: the tier's admission filter (W-TinyLFU) turned a new key away.  Nothing was
    # stored under the key; entries the arrival displaced before losing stay displaced (their
    # events are in the log).  Engine.insert returns False, access() reports a miss, the tier
    # counts a rejection.  Only _insert returns it, and only for a key that was absent.
    STATUS_DECLINED = -7


# Event kinds (docs/DESIGN.md, section 1).
cpdef enum EventKind:
    EV_INSERT = 1
    EV_REMOVE = 2
    EV_EVICT = 3
    EV_LIFT = 4
    EV_PLACE = 5


# Indices into TierState.counters, in the order counters() reports them.
cdef enum:
    COUNTER_HITS = 0
    COUNTER_MISSES = 1
    COUNTER_INSERTS = 2
    COUNTER_EVICTIONS = 3
    COUNTER_PROMOTIONS = 4
    COUNTER_DEMOTIONS = 5
    COUNTER_SPILLS = 6
    COUNTER_BYTES_IN = 7
    COUNTER_BYTES_OUT = 8
    COUNTER_REJECTIONS = 9        # arrivals the admission filter declined (W-TinyLFU)


ctypedef struct Slot:
    # One entry.  A free slot has tier == -1 and is chained through `next`.  A ghost (a key a
    # tier's policy remembers after it left: S3-FIFO's ghost FIFO, ARC's B1 and B2) has tier ==
    # GHOST_TIER, lies on a ghost list through prev/next and is filed in the map like an entry;
    # its `pins` names the tier that remembers it and its segment bits the list
    # (engine_policies.pxi).
    uint64_t key
    uint64_t size           # the real size; the tier is charged round_up(size, granularity)
    uint64_t last_access    # tick of the last recorded access (0: never accessed)
    uint32_t prev           # towards the most-recent end of the tier's list (VC_NIL at the head)
    uint32_t next           # towards the coldest end (VC_NIL at the tail); free-list link
    uint32_t frequency      # recorded accesses, saturating
    uint16_t pins           # nested pin count; > 0 means never a victim and never moved
    int8_t tier             # -1 for a free slot
    uint8_t flags           # FLAG_LIFTED while an entry is between EV_LIFT and EV_PLACE; the
                            # other bits belong to the tier's policy (engine_policies.pxi)
                            # 40 bytes in all: keep it so (memory per entry, docs/DESIGN.md)


ctypedef struct TierState:
    uint64_t capacity
    uint64_t used           # charged bytes of the entries in this tier
    uint64_t pinned         # charged bytes of the pinned entries in this tier
    uint64_t count
    uint32_t head           # most recent
    uint32_t tail           # coldest
    uint64_t promote_at     # a hit whose frequency reaches this may promote (2**32: never)
    uint64_t counters[10]   # VC_N_COUNTERS, indexed by the COUNTER_* constants; 128 bytes in all,
                            # so a tier's address is index << 7, not index * 120


# Policy kinds (engine_policies.pxi).  PK_LRU keeps the original code path.
cdef enum:
    FREE_TIER = -1
    GHOST_TIER = -2


cdef enum:
    PK_LRU = 0
    PK_FIFO = 1
    PK_CLOCK = 2
    PK_SIEVE = 3
    PK_S3FIFO = 4
    PK_ARC = 5
    PK_WTINYLFU = 6


ctypedef struct PolicyState:
    # One tier's policy state.  A tier's entries stay on its one list (so a walk of the tier,
    # such as check()'s, sees them all), cut into up to three segments that follow each other
    # from head to tail: segment 0 nearest the head.
    uint32_t seg_head[3]    # the first (most recent) slot of each segment, VC_NIL when empty
    uint32_t hand           # SIEVE's hand (VC_NIL: the next search starts at the tail)
    uint64_t seg_used[3]    # charged bytes per segment
    uint64_t seg_count[3]
    uint64_t seg_cap[3]     # S3-FIFO: small, main; W-TinyLFU: window, main, protected
    double p                # ARC's target size of T1, in bytes (fractional steps, as libCacheSim)
    uint32_t ghost_head[2]  # ghost lists (S3-FIFO: list 0; ARC: B1, B2), most recent first
    uint32_t ghost_tail[2]
    uint64_t ghost_used[2]  # their charged bytes
    uint64_t ghost_count[2]
    uint64_t ghost_cap      # S3-FIFO's ghost capacity in bytes
    uint64_t incoming       # charge of the entry the tier is making room for (ARC's case A)
    int arriving            # set between an arrival's ghost check and its placement: 1 or 2 =
                            # the ghost list the key was found in (0: none)
    uint32_t remembered     # the victim just chosen, when it is to become a ghost as it leaves
                            # (VC_NIL: none; always so between operations)
    int remember_list       # the ghost list it is to join
    bint has_evicted        # S3-FIFO: the tier has chosen a victim once
    # W-TinyLFU's hill climber
    uint64_t sample_hits
    uint64_t sample_count
    double previous_hit_rate
    double step


ctypedef struct Event:
    uint64_t key
    uint64_t size           # real size
    int32_t slot            # the entry's slot; for EV_REMOVE/EV_EVICT the freed slot, whose
                            # key/size/block/offset stay readable until the next operation
    int8_t src_tier         # -1 for EV_INSERT
    int8_t dst_tier         # -1 for EV_REMOVE/EV_EVICT
    uint8_t kind            # EventKind


# The one parser of keys and sizes (engine_values.pxi): an int in [0, 2**64), or a clear error.
cdef uint64_t parse_u64(object value, str what) except? 0
cdef object parse_u64_array(object values, str what, Py_ssize_t length=*)
cdef object parse_keys(object keys)
# Calls callback(entry) for every entry; the first exception any call raised (or `error`, if one
# was already pending), for the caller to raise once every victim has been reported.
cdef object report_victims(object callback, list entries, object error)


cdef class Engine:
    # --- storage-visible state (read-only for other modules) ---
    cdef Slot* slots
    cdef TierState* tier_state
    cdef readonly int n_tiers
    cdef readonly uint64_t granularity
    cdef Event* events                  # the log of the last mutating operation
    cdef Py_ssize_t n_events

    # --- private ---
    cdef uint32_t slot_capacity
    cdef uint32_t slot_high_water       # slots [0, high_water) have been handed out once
    cdef uint32_t free_head
    cdef uint32_t limbo_head            # freed slots kept readable until the next operation
    cdef uint32_t limbo_tail
    cdef uint32_t* buckets              # the slot filed in each bucket (VC_NIL: none)
    cdef uint8_t* ctrl                  # each bucket's control byte (engine_map.pxi)
    cdef uint64_t bucket_mask
    cdef uint64_t group_mask
    cdef int group_shift                # 64 - log2(groups): a hash's top bits pick its group
    cdef int h2_shift                   # group_shift - 7: the control bits lie just below
    cdef uint64_t growth_left           # EMPTY buckets that may still be filled
    cdef Py_ssize_t n_live
    cdef uint64_t tick
    cdef uint32_t promote_threshold
    cdef bint native_policy             # no Python callbacks: LRU or a policy of engine_policies
    cdef bint lru_native                # the native LRU: the original code paths
    cdef int policy_kind                # PK_*
    cdef PolicyState* pstate            # per tier, NULL for LRU
    cdef double small_ratio             # S3-FIFO
    cdef double ghost_ratio
    cdef uint32_t move_threshold
    cdef double window_ratio            # W-TinyLFU
    cdef bint adaptive
    cdef uint64_t n_ghosts              # slots in the GHOST_TIER state
    cdef uint64_t* sketch               # W-TinyLFU: count-min sketch, 16 4-bit counters a word
    cdef uint64_t sketch_words
    cdef uint64_t* doorkeeper           # W-TinyLFU: a Bloom filter in front of the sketch
    cdef int door_shift                 # 64 - log2(sketch_words)
    cdef uint64_t sketch_additions
    cdef uint64_t sketch_sample
    cdef bint spill_victims
    cdef bint logging                   # record_events or on_evict
    cdef bint _record_events
    cdef bint alloc_failed              # an event or slot allocation failed inside nogil code
    cdef int in_callback                # a Python policy method is running
    cdef Py_ssize_t events_capacity
    # The lock (see acquire()): owner and depth are only read and written under the GIL.
    cdef pthread_t lock_owner           # the thread holding the lock; meaningless at depth 0
    cdef Py_ssize_t lock_depth          # 0: free; > 1: taken again by its owner (recursive)
    cdef Py_ssize_t lock_waiters        # threads parked on lock_free
    cdef sem_t lock_free                # posted when the lock is released while others wait
    cdef bint lock_ready
    cdef object py_policy
    cdef object _on_evict
    cdef object pending_error
    cdef tuple names

    # --- C-level API for the storage layer (the caller holds the lock: acquire()/release(),
    #     both called with the GIL held) ---
    cdef void acquire(self) noexcept
    cdef void _wait_for_lock(self) noexcept
    cdef void release(self) noexcept nogil
    cdef Py_ssize_t slot_of(self, uint64_t key) noexcept nogil
    cdef int evict_for_room(self, int tier, uint64_t* key_out) noexcept nogil

    # --- one mutating operation driven by the storage layer: op_begin() takes the lock and
    #     clears the event log; the op_* calls change the metadata and log their events;
    #     op_end() releases the lock and hands back the exception a Python policy raised (or
    #     None).  Status codes as the engine's: >= 0 a tier, -1 a miss, below -1 an error that
    #     changed nothing (raise_status() raises it). ---
    cdef int op_begin(self) except -1
    cdef object op_end(self)
    cdef int raise_status(self, int status, uint64_t key, uint64_t size, Py_ssize_t index) except -1
    cdef int op_insert(self, uint64_t key, uint64_t size) noexcept nogil
    cdef int op_touch(self, uint64_t key) noexcept nogil
    cdef int op_promote(self, uint32_t slot, bint strict) noexcept nogil
    cdef int op_demote(self, uint32_t slot) noexcept nogil
    cdef void op_remove(self, uint32_t slot) noexcept nogil
    cdef int op_displace(self, uint32_t slot) noexcept nogil
    cdef uint32_t op_victim(self, int tier) noexcept nogil
    cdef void op_evict(self, uint32_t slot) noexcept nogil
    cdef int op_pin(self, uint32_t slot, int delta) noexcept nogil
    cdef int _change_pins(self, key, int delta) except -1
    cdef int target_tier(self, uint64_t size, uint32_t replaced) noexcept nogil
    cdef int op_replace(self, uint32_t slot, uint64_t size) noexcept nogil

    # --- helpers of the Python-level API ---
    cdef int _check_tier(self, int tier) except -1
    cdef object _sized_many(self, keys, sizes, bint inserting)
    cdef object _move_many(self, keys, bint up)
