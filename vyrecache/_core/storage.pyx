# cython: boundscheck=False, wraparound=False, cdivision=True
"""The bytes behind the engine's metadata: log-structured tiers and the batch of copies.

The engine decides which tier every key lives in and logs what it did (docs/DESIGN.md,
section 1).  ``Storage`` replays that log on real memory, inside the same call and under the
engine's lock, with no Python code in between:

* every tier's memory is cut into segments (segments.pxi); new entries are appended at the
  tier's head segment, and room is made by cleaning the emptiest segment into a free one, so
  the bytes copied to place an entry are bounded whatever the number of entries;
* per engine slot it keeps where the entry's bytes are (segment, offset in the block) and
  whether they are in place or lifted (the engine moved the entry and its PLACE follows);
* the copies of one operation form one batch: between mapped memory they are memcpy'd at
  once; otherwise they become rows of a copy table that the backend runs in one submit.  A row
  that reads bytes written in the current wave, or writes a segment a row of the current wave
  touches, starts a new wave (a barrier).

Every public method is one operation: it either completes, or raises having changed nothing.
"""

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset, strchr
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBuffer_FillInfo, PyBUF_FORMAT,
                             PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
cimport numpy as cnp

cnp.import_array()

from vyrecache._core.allocator cimport round_up
from vyrecache._core.engine cimport (Engine, Event, EV_INSERT, EV_REMOVE, EV_EVICT, EV_LIFT,
                                     EV_PLACE, VC_NIL, STATUS_NOT_FOUND, STATUS_DECLINED, parse_u64,
                                     parse_u64_array, report_victims,
                                     parse_keys)

import math
import os

import numpy as np

from vyrecache._core.engine import CacheEntry
from vyrecache.copytable import COPY_DTYPE
from vyrecache.counters import STORAGE_COUNTERS
from vyrecache.exported import ExportedMemory
from vyrecache.errors import (AllPinnedError, CacheClosedError, CacheError, EntryTooLargeError,
                              KeyNotFoundError, PinnedError, KEY_NOT_FOUND_MESSAGE)

#: remote_fetched's mark of an entry put with write_back=False: never written to the remote tier.
cdef object LOCAL_ONLY = object()
cdef str _WRITE_BACK_FIX = ("pass write_back=False to keep the entry out of the remote tier, or "
                            "leave it out")


cdef void* _grown(void* p, size_t nbytes) except NULL:
    """realloc(), raising MemoryError when it fails (`p` is then left as it was)."""
    cdef void* q = realloc(p, nbytes)
    if q == NULL:
        raise MemoryError()
    return q


cdef inline cnp.ndarray key_array_of(uint64_t key):
    return np.array([key], dtype=np.uint64)


cdef extern from "streamcopy.h":
    void vc_stream_copy(char* dst, const char* src, size_t n) nogil
    void vc_stream_fence() nogil

cdef extern from "vkcopy.h":
    ctypedef struct vc_vk_queue:
        void* device
        void* queue
        void* command_buffer
        uint64_t fence
        void* begin
        void* end
        void* reset_buffer
        void* copy
        void* barrier
        void* submit
        void* wait
        void* reset_fences
        void* fence_status
        uint64_t semaphore
        void* counter
        void* wait_semaphores
        uint64_t timeout_ns
        const char* failed_call
    ctypedef struct vc_vk_copy:
        uint64_t src, dst, src_offset, dst_offset, size
    int32_t vc_vk_run(vc_vk_queue* q, const vc_vk_copy* rows, size_t n, const int64_t* wave_starts,
                      size_t n_waves) nogil
    int32_t vc_vk_start(vc_vk_queue* q, void* cb, uint64_t fence, uint64_t value,
                        const vc_vk_copy* rows, size_t n, const int64_t* wave_starts,
                        size_t n_waves) nogil
    int32_t vc_vk_reached(vc_vk_queue* q, uint64_t fence, uint64_t* value) nogil
    int32_t vc_vk_wait_for(vc_vk_queue* q, uint64_t value, const uint64_t* fences, uint32_t n_fences,
                           uint64_t timeout_ns) nogil

cdef extern from "hugepages.h":
    void vc_advise_huge_pages(void* start, size_t bytes) nogil
    void vc_touch_pages(void* start, size_t bytes) nogil

include "segments.pxi"

# Copies larger than this stream past the CPU cache (explicit compaction's CPU executor).
STREAM_THRESHOLD_BYTES = 4 << 20
# Puts and moves of at least this many bytes use streaming stores: an entry written into a tier
# is rarely read back at once, and a plain memcpy first reads every destination line it writes.
DEFAULT_STREAM_MIN = 4096
cdef enum:
    NOGIL_COPY_BYTES = 1 << 20

# Where an entry's bytes are.
cdef enum SlotState:
    SLOT_NONE = 0       # no bytes (free slot, or an entry that left)
    SLOT_PLACED = 1     # at (slot_segment, slot_offset) in its tier
    SLOT_LIFTED = 2     # still there, but the engine moved the entry: its PLACE follows
    SLOT_PARKED = 3     # lifted, and its bytes wait in host memory (self.parked) for the PLACE

ctypedef struct CopyRow:
    uint32_t src_block
    uint32_t dst_block
    uint64_t src_offset
    uint64_t dst_offset
    uint64_t size

# Storage counters per tier, index by index (vyrecache/counters.py declares them).
STORAGE_COUNTER_NAMES = STORAGE_COUNTERS
cdef enum:
    STORAGE_COUNTER_CLEANINGS = 0
    STORAGE_COUNTER_CLEANING_BYTES = 1
    STORAGE_COUNTER_COMPACTIONS = 2
    STORAGE_COUNTER_COMPACTION_BYTES = 3
    STORAGE_COUNTER_FRAGMENTATION_EVICTIONS = 4
    STORAGE_COUNTER_N = 5
if len(STORAGE_COUNTER_NAMES) != STORAGE_COUNTER_N:
    raise ImportError(f"vyrecache.counters names {len(STORAGE_COUNTER_NAMES)} storage counters, the "
                      f"storage layer keeps {STORAGE_COUNTER_N}. Fix: declare each STORAGE_COUNTER_* "
                      f"counter in vyrecache/counters.py, in order.")

# Asynchronous transfers in flight at once per cache (vulkan/transfer.py's pool of command
# buffers); one more first waits for the oldest.
MAX_TRANSFERS = 32
GPU_TIMEOUT_MESSAGE = ("the GPU did not finish a copy within 120 s. Fix: if it persists the "
                       "device is hung; close the cache and create a new one.")

IN_USE_MESSAGE = ("the cache is in use by an operation (this call came from inside one of its "
                  "callbacks). Fix: call it after the operation returns.")


cdef class Transfer


cdef class Storage:
    """Real memory for a buffer cache, driven by its engine's events: the compiled half of
    BufferCache, which subclasses it (so put, read, access... are one C call each)."""

    cdef Engine engine
    cdef object backend
    cdef readonly uint64_t alignment
    cdef readonly int n_tiers
    cdef readonly uint64_t puts_bytes          # user bytes stored by put (write amplification's base)
    cdef list blocks                           # StorageBlock per global block index
    cdef list memories                         # TierMemory per tier
    cdef char** block_address                         # mapped address, NULL when not mapped
    cdef uint32_t* block_id                        # the backend's block id (copy tables use it)
    cdef Py_ssize_t n_blocks
    cdef Segment* segs
    cdef TierLog* logs
    cdef int32_t n_segs
    # Per engine slot.
    cdef int32_t* slot_segment
    cdef uint64_t* slot_offset                    # in the block
    cdef uint32_t* slot_prev                      # the segment's entry list
    cdef uint32_t* slot_next
    cdef uint64_t* slot_wave                      # the wave whose pending row wrote its bytes
    cdef uint8_t* slot_state
    cdef uint8_t* slot_pinned                     # the storage's own view of "pinned" (see pin())
    cdef Py_ssize_t cap_slots
    # The batch of copies being built.
    cdef CopyRow* rows
    cdef Py_ssize_t n_rows
    cdef Py_ssize_t cap_rows
    cdef Py_ssize_t wave_first_row             # rows before it belong to earlier waves
    cdef list wave_starts
    cdef uint64_t wave                         # global, never reset: stale marks never match
    cdef object staging                        # StorageBlock of mapped memory for unmapped tiers
    cdef char* staging_addr
    cdef uint64_t staging_size
    cdef uint64_t staging_used
    cdef bint unmapped                         # some block is not mapped
    cdef char* run_src
    cdef char* run_dst
    cdef size_t run_len
    # One operation.
    cdef const char* data                      # the bytes the next EV_INSERT stores
    cdef list evicted                          # CacheEntry of the victims of this operation
    cdef bint report_evictions
    cdef public object on_evict
    cdef readonly int busy                     # an operation is running (callbacks may re-enter)
    cdef readonly bint closed
    cdef uint64_t* counters
    cdef readonly uint64_t misses              # access() misses (counted on tier 0)
    cdef public uint64_t stream_min            # copies of at least this many bytes stream (0: never)
    cdef public bint replace_in_place          # a put of an entry's own charge overwrites it (False: always append)
    cdef readonly Py_ssize_t exports           # live views of leased entries (close() waits for 0)
    cdef object transfer                       # the TransferQueue whose handles `vk` holds, or None
    cdef public object remote                  # the tier below tier 0 (RedisTier), or None
    cdef public bint write_through             # every put is written to the remote tier too
    cdef readonly uint64_t remote_hits         # local misses served by the remote tier
    cdef list leaving_keys                     # victims of this operation, for the remote tier
    cdef list leaving_values
    # key -> remote epoch: placed by a remote hit, unchanged since; LOCAL_ONLY: put with write_back=False
    cdef dict remote_fetched
    cdef vc_vk_queue vk
    cdef uint64_t* id_buffers                  # VkBuffer handle of each backend block id
    cdef Py_ssize_t n_ids
    cdef bint streamed                         # a streaming store is not fenced yet
    cdef list lifted                           # slots in state SLOT_LIFTED during an operation
    cdef dict parked                           # slot -> numpy copy of a parked entry's bytes
    cdef int32_t room_seg                      # find_room()'s answer
    cdef uint64_t room_offset
    # Asynchronous transfers (move_many with wait=False): each has a ticket, the value its
    # submit signals on the timeline semaphore.  Bytes a transfer in flight writes or reads are
    # stamped with its ticket, and the CPU waits for a ticket before it touches them.
    cdef uint64_t* slot_ticket                    # per slot: the transfer writing its bytes
    cdef uint64_t* seg_ticket                  # per segment: the last transfer reading or writing it
    cdef uint64_t staging_ticket               # the last transfer reading the staging buffer
    cdef uint64_t op_ticket                    # the running operation's ticket (0: synchronous)
    cdef uint64_t next_ticket
    cdef uint64_t done_ticket                  # every ticket up to it is complete
    cdef bint device_moves                     # record every copy as a row (an async operation)
    cdef list pending                          # Transfers in flight, oldest first
    cdef Py_ssize_t n_pending
    cdef list free_transfer_slots              # command buffer slots of the TransferQueue not in use
    cdef Py_ssize_t n_transfer_slots

    def __cinit__(self, *args, **kwargs):
        self.wave = 1
        self.stream_min = DEFAULT_STREAM_MIN
        self.replace_in_place = True
        self.n_rows = 0
        self.next_ticket = 1
        self.pending = []
        self.free_transfer_slots = []

    def _take_memory(self, Engine engine, backend, memories, layouts, on_evict=None):
        """Take every tier's memory; on failure frees what was taken and re-raises.

        ``layouts`` are (segment_size, segments, segments_per_block) per tier (tier_layout()).
        """
        cdef int tier
        cdef int32_t g, g2, first
        cdef uint64_t seg_size, per_block, count
        cdef TierLog* log
        self.engine = engine
        self.backend = backend
        self.alignment = backend.alignment
        self.n_tiers = len(memories)
        self.memories = list(memories)
        self.blocks = []
        self.wave_starts = []
        self.evicted = []
        self.lifted = []
        self.parked = {}
        self.leaving_keys = []
        self.leaving_values = []
        self.remote_fetched = {}
        self.on_evict = on_evict
        self.n_segs = sum(layout[1] for layout in layouts)
        self.logs = <TierLog*>realloc(NULL, max(self.n_tiers, 1) * sizeof(TierLog))
        self.segs = <Segment*>realloc(NULL, max(self.n_segs, 1) * sizeof(Segment))
        self.counters = <uint64_t*>realloc(NULL, max(self.n_tiers, 1) * STORAGE_COUNTER_N * sizeof(uint64_t))
        self.seg_ticket = <uint64_t*>realloc(NULL, max(self.n_segs, 1) * sizeof(uint64_t))
        if self.logs == NULL or self.segs == NULL or self.counters == NULL or self.seg_ticket == NULL:
            raise MemoryError("Could not allocate the tiers' segment tables. Fix: free memory.")
        memset(self.seg_ticket, 0, max(self.n_segs, 1) * sizeof(uint64_t))
        memset(self.counters, 0, max(self.n_tiers, 1) * STORAGE_COUNTER_N * sizeof(uint64_t))
        memset(self.segs, 0, max(self.n_segs, 1) * sizeof(Segment))
        g = 0
        try:
            for tier in range(self.n_tiers):
                seg_size, count, per_block = layouts[tier]
                log = &self.logs[tier]
                memset(log, 0, sizeof(TierLog))
                log.segment_size = seg_size
                log.first_segment = g
                log.n_segments = <int32_t>count
                log.memory = seg_size * count
                log.head = -1
                log.free_top = -1
                for bucket in range(N_BUCKETS):
                    log.buckets[bucket] = -1
                log.max_entry = min(per_block, count) * seg_size
                remaining = count
                while remaining:
                    in_block = min(remaining, per_block)
                    block = backend.allocate_block(self.memories[tier], in_block * seg_size)
                    self.blocks.append(block)
                    for index in range(in_block):
                        self.segs[g].block = len(self.blocks) - 1
                        self.segs[g].offset = index * seg_size
                        self.segs[g].tier = tier
                        self.segs[g].first = VC_NIL
                        self.segs[g].last = VC_NIL
                        self.segs[g].bucket = -1
                        self.segs[g].state = SEG_FREE
                        g += 1
                    remaining -= in_block
                # The free stack pops the lowest segment first: appends then fill a tier in order.
                first = log.first_segment
                for g2 in range(first + log.n_segments - 1, first - 1, -1):
                    self.segs[g2].link_next = log.free_top
                    log.free_top = g2
                log.n_free = log.n_segments
            self.n_blocks = len(self.blocks)
            self.block_address = <char**>realloc(NULL, max(self.n_blocks, 1) * sizeof(char*))
            self.block_id = <uint32_t*>realloc(NULL, max(self.n_blocks, 1) * sizeof(uint32_t))
            if self.block_address == NULL or self.block_id == NULL:
                raise MemoryError("Could not allocate the block table. Fix: free memory.")
            for index, block in enumerate(self.blocks):
                if block.host_visible:
                    self.block_address[index] = <char*><size_t>block.address
                    # Before the first touch, so the pages come huge: big copies through a block
                    # otherwise miss the TLB every 4 KiB.
                    vc_advise_huge_pages(self.block_address[index], block.size)
                    vc_touch_pages(self.block_address[index], block.size)
                else:
                    self.block_address[index] = NULL
                    self.unmapped = True
                self.block_id[index] = block.id
            if self.unmapped:
                self.take_staging(backend)
                if hasattr(backend, "transfer_queue"):
                    self.take_transfer_queue(backend)
        except BaseException:
            self.release_blocks()
            raise

    cdef int take_staging(self, backend) except -1:
        """The staging buffer, taken at its full size (transfers larger than it go in portions):
        an operation then never allocates, so it cannot fail half-way for memory."""
        wanted = 1 << 20
        for tier in range(self.n_tiers):
            wanted = max(wanted, min(64 << 20, self.logs[tier].memory))
        self.staging = backend.allocate_staging(wanted)
        self.staging_addr = <char*><size_t>self.staging.address
        self.staging_size = self.staging.size
        return 0

    cdef int take_transfer_queue(self, backend) except -1:
        """Record and submit copy tables from C: a queue of this cache's own, its handles, and a
        table from block id to VkBuffer."""
        queue = backend.transfer_queue()
        if queue is None:
            return 0            # the backend runs the copy tables itself (run_copies)
        self.transfer = queue
        device, vk_queue, command_buffer, fence = queue.handles()
        self.vk.device = <void*><size_t>device
        self.vk.queue = <void*><size_t>vk_queue
        self.vk.command_buffer = <void*><size_t>command_buffer
        self.vk.fence = fence
        points = queue.entry_points
        self.vk.begin = <void*><size_t>points[0]
        self.vk.end = <void*><size_t>points[1]
        self.vk.reset_buffer = <void*><size_t>points[2]
        self.vk.copy = <void*><size_t>points[3]
        self.vk.barrier = <void*><size_t>points[4]
        self.vk.submit = <void*><size_t>points[5]
        self.vk.wait = <void*><size_t>points[6]
        self.vk.reset_fences = <void*><size_t>points[7]
        self.vk.fence_status = <void*><size_t>points[8]
        self.vk.semaphore = queue.semaphore
        if self.vk.semaphore:
            self.vk.counter = <void*><size_t>points[9]
            self.vk.wait_semaphores = <void*><size_t>points[10]
        self.vk.timeout_ns = 120 * 1000000000
        blocks = self.blocks + [self.staging]
        self.n_ids = max(block.id for block in blocks) + 1
        self.id_buffers = <uint64_t*>realloc(NULL, self.n_ids * sizeof(uint64_t))
        if self.id_buffers == NULL:
            raise MemoryError()
        memset(self.id_buffers, 0, self.n_ids * sizeof(uint64_t))
        for block in blocks:
            self.id_buffers[block.id] = block.buffer_handle
        return 0

    def __dealloc__(self):
        free(self.id_buffers)
        free(self.block_address); free(self.block_id); free(self.logs); free(self.segs); free(self.counters)
        free(self.slot_segment); free(self.slot_offset); free(self.slot_prev); free(self.slot_next)
        free(self.slot_wave); free(self.slot_state); free(self.slot_pinned); free(self.rows)
        free(self.slot_ticket); free(self.seg_ticket)

    def release_blocks(self):
        """Give every block back to the backend (idempotent); the storage is unusable afterwards."""
        transfer, self.transfer = self.transfer, None
        self.vk.device = NULL
        if transfer is not None:
            transfer.destroy()
        blocks, self.blocks = self.blocks, []
        staging, self.staging = self.staging, None
        for block in blocks + ([staging] if staging is not None else []):
            self.backend.free_block(block)
        self.n_blocks = 0

    # -- per-slot arrays ---------------------------------------------------------------------

    cdef int ensure_slots(self, Py_ssize_t needed) except -1:
        cdef Py_ssize_t cap = self.cap_slots if self.cap_slots else 1024
        if needed <= self.cap_slots:
            return 0
        while cap < needed:
            cap *= 2
        # Each array is replaced as soon as it has grown: a failure leaves every array valid.
        self.slot_segment = <int32_t*>_grown(self.slot_segment, cap * sizeof(int32_t))
        self.slot_offset = <uint64_t*>_grown(self.slot_offset, cap * sizeof(uint64_t))
        self.slot_prev = <uint32_t*>_grown(self.slot_prev, cap * sizeof(uint32_t))
        self.slot_next = <uint32_t*>_grown(self.slot_next, cap * sizeof(uint32_t))
        self.slot_wave = <uint64_t*>_grown(self.slot_wave, cap * sizeof(uint64_t))
        self.slot_state = <uint8_t*>_grown(self.slot_state, cap * sizeof(uint8_t))
        self.slot_pinned = <uint8_t*>_grown(self.slot_pinned, cap * sizeof(uint8_t))
        self.slot_ticket = <uint64_t*>_grown(self.slot_ticket, cap * sizeof(uint64_t))
        memset(&self.slot_ticket[self.cap_slots], 0, (cap - self.cap_slots) * sizeof(uint64_t))
        memset(&self.slot_state[self.cap_slots], 0, (cap - self.cap_slots) * sizeof(uint8_t))
        memset(&self.slot_pinned[self.cap_slots], 0, (cap - self.cap_slots) * sizeof(uint8_t))
        memset(&self.slot_wave[self.cap_slots], 0, (cap - self.cap_slots) * sizeof(uint64_t))
        for i in range(self.cap_slots, cap):
            self.slot_segment[i] = -1
        self.cap_slots = cap
        return 0

    cdef inline uint64_t charge(self, uint64_t size) noexcept nogil:
        return round_up(size, self.alignment)

    # -- segments ----------------------------------------------------------------------------

    cdef void unlist(self, int32_t g) noexcept nogil:
        """Take a segment out of its histogram bucket (if listed)."""
        cdef Segment* s = &self.segs[g]
        cdef TierLog* log = &self.logs[s.tier]
        if s.bucket < 0:
            return
        if s.link_prev >= 0:
            self.segs[s.link_prev].link_next = s.link_next
        else:
            log.buckets[s.bucket] = s.link_next
            if s.link_next < 0:
                log.bucket_bits &= ~((<uint64_t>1) << s.bucket)
        if s.link_next >= 0:
            self.segs[s.link_next].link_prev = s.link_prev
        s.bucket = -1

    cdef void relist(self, int32_t g) noexcept nogil:
        """File a segment where it belongs now: its bucket if closed and unpinned, the free stack
        if closed and empty, nowhere otherwise."""
        cdef Segment* s = &self.segs[g]
        cdef TierLog* log = &self.logs[s.tier]
        cdef int bucket
        self.unlist(g)
        if s.state != SEG_CLOSED:
            return
        if s.live == 0 and s.first == VC_NIL:
            self.push_free(g)
            return
        if s.pinned:
            return
        bucket = _bucket_of(s.live, log.segment_size)
        s.bucket = <int16_t>bucket
        s.link_prev = -1
        s.link_next = log.buckets[bucket]
        if s.link_next >= 0:
            self.segs[s.link_next].link_prev = g
        log.buckets[bucket] = g
        log.bucket_bits |= (<uint64_t>1) << bucket

    cdef void push_free(self, int32_t g) noexcept nogil:
        cdef Segment* s = &self.segs[g]
        cdef TierLog* log = &self.logs[s.tier]
        s.state = SEG_FREE
        s.fill = 0
        s.live = 0
        s.first = VC_NIL
        s.last = VC_NIL
        s.link_next = log.free_top
        log.free_top = g
        log.n_free += 1

    cdef int32_t pop_free(self, int tier) except -2:
        """A free segment, ready to be written (a barrier first if a pending row touches it)."""
        cdef TierLog* log = &self.logs[tier]
        cdef int32_t g = log.free_top
        if g < 0:
            return -1
        if self.seg_ticket[g] > self.done_ticket:
            self.settle(self.seg_ticket[g])      # a transfer in flight may still read or write it
        log.free_top = self.segs[g].link_next
        log.n_free -= 1
        self.segs[g].fill = 0
        self.segs[g].live = 0
        if self.n_rows and self.segs[g].touched_wave == self.wave:
            self.new_wave()
        return g

    cdef int take_free(self, int32_t g) except -1:
        """Take one given segment off the free stack (a run's window)."""
        cdef TierLog* log = &self.logs[self.segs[g].tier]
        cdef int32_t cur = log.free_top, prev = -1
        if self.seg_ticket[g] > self.done_ticket:
            self.settle(self.seg_ticket[g])
        while cur != g:
            prev = cur
            cur = self.segs[cur].link_next
        if prev < 0:
            log.free_top = self.segs[g].link_next
        else:
            self.segs[prev].link_next = self.segs[g].link_next
        log.n_free -= 1
        self.segs[g].fill = 0
        self.segs[g].live = 0
        if self.n_rows and self.segs[g].touched_wave == self.wave:
            self.new_wave()
        return 0

    cdef void close_head(self, int tier) noexcept nogil:
        cdef int32_t h = self.logs[tier].head
        if h < 0:
            return
        self.logs[tier].head = -1
        self.segs[h].state = SEG_CLOSED
        self.relist(h)

    cdef void open_head(self, int tier, int32_t g) noexcept nogil:
        self.segs[g].state = SEG_OPEN
        self.logs[tier].head = g

    cdef int32_t emptiest(self, int tier) noexcept nogil:
        """The closed, unpinned segment with (about) the fewest live bytes, or -1."""
        cdef TierLog* log = &self.logs[tier]
        if log.bucket_bits == 0:
            return -1
        return log.buckets[__builtin_ctzll(log.bucket_bits)]

    cdef void link_entry(self, Py_ssize_t slot, int32_t g, uint64_t offset, uint64_t charged) noexcept nogil:
        """File an entry's range in segment g (appended at the end of its list)."""
        cdef Segment* s = &self.segs[g]
        self.slot_segment[slot] = g
        self.slot_offset[slot] = offset
        self.slot_next[slot] = VC_NIL
        self.slot_prev[slot] = s.last
        if s.last != VC_NIL:
            self.slot_next[s.last] = <uint32_t>slot
        else:
            s.first = <uint32_t>slot
        s.last = <uint32_t>slot
        s.live += charged
        self.logs[s.tier].live += charged
        if self.slot_pinned[slot]:
            self.pin_entry(slot, 1)

    cdef void unlink_entry(self, Py_ssize_t slot, uint64_t charged) noexcept nogil:
        """Forget an entry's range: its segment keeps the bytes as dead space (or frees them)."""
        cdef int32_t g = self.slot_segment[slot]
        cdef Segment* s
        cdef int32_t k, n
        if g < 0:
            return
        s = &self.segs[g]
        if self.slot_pinned[slot]:
            self.pin_entry(slot, -1)
        self.slot_segment[slot] = -1
        if s.state == SEG_RUN:
            n = self.run_length(charged, s.tier)
            for k in range(n):
                self.segs[g + k].pinned = 0
                self.push_free(g + k)
            self.logs[s.tier].live -= charged
            return
        if self.slot_prev[slot] != VC_NIL:
            self.slot_next[self.slot_prev[slot]] = self.slot_next[slot]
        else:
            s.first = self.slot_next[slot]
        if self.slot_next[slot] != VC_NIL:
            self.slot_prev[self.slot_next[slot]] = self.slot_prev[slot]
        else:
            s.last = self.slot_prev[slot]
        s.live -= charged
        self.logs[s.tier].live -= charged
        if s.state == SEG_CLOSED:
            self.relist(g)

    cdef void follow_pin(self, Py_ssize_t slot, int delta) noexcept nogil:
        """After the engine pinned (delta 1) or unpinned (-1) `slot`: the first pin and the last
        unpin change what the entry's segments count (slot_pinned), the nested ones do not."""
        if delta > 0 and not self.slot_pinned[slot]:
            self.slot_pinned[slot] = 1
            self.pin_entry(slot, 1)
        elif delta < 0 and self.engine.slots[slot].pins == 0 and self.slot_pinned[slot]:
            self.pin_entry(slot, -1)
            self.slot_pinned[slot] = 0

    cdef void pin_entry(self, Py_ssize_t slot, int delta) noexcept nogil:
        """Count a pin (delta 1) or an unpin (-1) of a placed entry in every segment it takes."""
        cdef int32_t g = self.slot_segment[slot], k, n = 1
        if g < 0:
            return
        if self.segs[g].state == SEG_RUN:
            n = self.run_length(self.charge(self.engine.slots[slot].size), self.segs[g].tier)
        for k in range(n):
            self.pin_segment(g + k, delta)

    cdef void pin_segment(self, int32_t g, int delta) noexcept nogil:
        cdef Segment* s = &self.segs[g]
        cdef uint32_t before = s.pinned
        s.pinned = <uint32_t>(<int64_t>s.pinned + delta)
        if (before == 0) != (s.pinned == 0):
            self.logs[s.tier].n_pinned += 1 if s.pinned else -1
            if s.state == SEG_CLOSED:
                self.relist(g)

    cdef inline int32_t run_length(self, uint64_t charged, int tier) noexcept nogil:
        cdef uint64_t seg = self.logs[tier].segment_size
        return <int32_t>((charged + seg - 1) // seg)

    # -- making room -------------------------------------------------------------------------

    cdef bint alloc_small(self, int tier, uint64_t c, int32_t* g_out, uint64_t* offset_out) except -1:
        """Room for `c` (<= a segment) bytes at the end of the tier's head: open a free segment,
        clean the emptiest one into the reserve, or, when neither can help, displace the
        entries of the emptiest segment (fragmentation evictions).  False: no room is possible."""
        cdef TierLog* log = &self.logs[tier]
        cdef uint64_t seg = log.segment_size
        cdef int32_t h, v
        while True:
            h = log.head
            if h >= 0 and self.segs[h].fill + c <= seg:
                g_out[0] = h
                offset_out[0] = self.segs[h].offset + self.segs[h].fill
                self.segs[h].fill += c
                return True
            if log.n_free >= 2:
                self.close_head(tier)
                self.open_head(tier, self.pop_free(tier))
                continue
            v = self.emptiest(tier)
            if log.n_free == 1:
                if v >= 0 and self.segs[v].live + c <= seg:
                    self.close_head(tier)
                    self.clean(tier, v)
                else:
                    # Cleaning cannot make this room: the reserve is the room (it comes back as
                    # soon as a segment empties).
                    self.close_head(tier)
                    self.open_head(tier, self.pop_free(tier))
                continue
            if v < 0 and h >= 0 and self.segs[h].pinned == 0:
                self.close_head(tier)
                continue
            if self.park_lifted(tier):
                continue
            if v < 0:
                if not self.displace_a_run(tier):
                    return False
                continue
            if not self.displace_entries(v):
                return False

    cdef bint park_lifted(self, int tier) except -1:
        """Park the bytes of entries lifted out of `tier` in host memory and free their ranges
        (a swap between two full tiers: the entry leaving makes the room the other one needs).
        False when there was none."""
        cdef bint any_parked = False
        for slot in list(self.lifted):
            if self.slot_segment[slot] >= 0 and self.segs[self.slot_segment[slot]].tier == tier:
                self.park(slot)
                any_parked = True
        return any_parked

    cdef int leave_for_remote(self, const Event* ev) except -1:
        """An entry leaves (evicted, removed or replaced): an evicted one is written back to the
        remote tier after the operation, unless it is clean, i.e. a remote hit placed it and
        nothing changed it since, while the tier's epoch stayed the same (it is stored there
        still, and writing it again would only cost the network and the server)."""
        cdef object epoch = None
        if self.remote_fetched:
            epoch = self.remote_fetched.pop(ev.key, None)
        if ev.kind != EV_EVICT or epoch is LOCAL_ONLY:
            return 0
        if epoch is not None and epoch == getattr(self.remote, "epoch", None):
            return 0
        return self.keep_for_remote(ev.slot, ev.key, ev.size)

    cdef int keep_for_remote(self, Py_ssize_t slot, uint64_t key, uint64_t size) except -1:
        """Copy a victim's bytes before they are freed, once, into the bytes object the remote
        tier is handed after the operation (a write-back on eviction)."""
        if self.slot_state[slot] == SLOT_PARKED:
            value = self.parked[slot].tobytes()
        else:
            value = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>size)
            if size:
                self.flush()
                self.settle(self.slot_ticket[slot])
                self.read_data(self.segs[self.slot_segment[slot]].block, self.slot_offset[slot],
                               PyBytes_AS_STRING(value), size)
        self.leaving_keys.append(key)
        self.leaving_values.append(value)
        return 0

    cdef int park(self, Py_ssize_t slot) except -1:
        cdef uint64_t size = self.engine.slots[slot].size
        cdef int32_t g = self.slot_segment[slot]
        parked = np.empty(size, dtype=np.uint8)
        self.flush()
        self.settle(self.slot_ticket[slot])
        self.read_data(self.segs[g].block, self.slot_offset[slot], <char*>cnp.PyArray_DATA(parked), size)
        self.unlink_entry(slot, self.charge(size))
        self.parked[slot] = parked
        self.slot_state[slot] = SLOT_PARKED
        self.lifted.remove(slot)
        return 0

    cdef bint displace_a_run(self, int tier) except -1:
        """The last resort of a tier holding only pinned segments and runs: displace a run."""
        cdef TierLog* log = &self.logs[tier]
        cdef int32_t g
        for g in range(log.first_segment, log.first_segment + log.n_segments):
            if self.segs[g].state == SEG_RUN and not self.segs[g].pinned:
                if self.displace_now(self.segs[g].first):
                    self.counters[tier * STORAGE_COUNTER_N + STORAGE_COUNTER_FRAGMENTATION_EVICTIONS] += 1
                    return True
        return False

    cdef int clean(self, int tier, int32_t v) except -1:
        """Copy segment v's entries into the reserve, free v, and make the survivor the head."""
        cdef int32_t r = self.pop_free(tier)
        cdef uint32_t slot, following
        cdef uint64_t c, moved = 0
        cdef Segment* survivor
        self.unlist(v)
        self.segs[v].state = SEG_CLAIMED       # emptied below: not re-filed entry by entry
        survivor = &self.segs[r]
        slot = self.segs[v].first
        while slot != VC_NIL:
            following = self.slot_next[slot]
            c = self.charge(self.engine.slots[slot].size)
            self.move_range(slot, r, survivor.offset + survivor.fill, c)
            survivor.fill += c
            moved += c
            slot = following
        self.segs[v].state = SEG_CLOSED
        self.relist(v)          # empty now: back on the free stack
        self.open_head(tier, r)
        self.counters[tier * STORAGE_COUNTER_N + STORAGE_COUNTER_CLEANINGS] += 1
        self.counters[tier * STORAGE_COUNTER_N + STORAGE_COUNTER_CLEANING_BYTES] += moved
        return 0

    cdef int move_range(self, Py_ssize_t slot, int32_t g, uint64_t offset, uint64_t c) except -1:
        """Copy an entry's bytes to `offset` in segment g and file it there (same tier)."""
        cdef int32_t src = self.slot_segment[slot]
        self.copy_bytes(slot, self.segs[src].block, self.slot_offset[slot], self.segs[g].block,
                        offset, self.engine.slots[slot].size, src, g)
        self.unlink_entry(slot, c)
        self.link_entry(slot, g, offset, c)
        return 0

    cdef bint displace_entries(self, int32_t v) except -1:
        """Fragmentation evictions: displace every entry of segment v the engine may displace
        (spilled down when allowed, else evicted).  False when none could be."""
        cdef uint32_t slot, following
        cdef int tier = self.segs[v].tier
        cdef bint any_done = False
        slot = self.segs[v].first
        while slot != VC_NIL:
            following = self.slot_next[slot]
            if self.displace_now(slot):
                any_done = True
                self.counters[tier * STORAGE_COUNTER_N + STORAGE_COUNTER_FRAGMENTATION_EVICTIONS] += 1
            slot = following
        return any_done

    cdef bint displace_now(self, Py_ssize_t slot, bint moving=False) except -1:
        """Displace one entry and replay what that did at once (the caller needs its room now).
        Only entries in place qualify, unless `moving`: the entry whose own move found no room."""
        cdef Py_ssize_t first = self.engine.n_events, i
        if self.slot_state[slot] != SLOT_PLACED and not moving:
            return False
        if not self.engine.op_displace(<uint32_t>slot):
            return False
        i = first
        while i < self.engine.n_events:
            self.apply_event(i)
            i += 1
        self.engine.n_events = first
        return True

    cdef bint place_run(self, int tier, uint64_t c, int32_t* g_out) except -1:
        """k consecutive free segments of one block for an entry of `c` bytes (k > 1): the window
        with the fewest live bytes and no pinned segment is emptied, its entries moved out (or
        displaced where nothing else has room)."""
        cdef TierLog* log = &self.logs[tier]
        cdef int32_t k = self.run_length(c, tier)
        cdef int32_t best = -1, g, j, end, block
        cdef uint64_t cost, best_cost = 0
        cdef uint32_t slot, following
        cdef uint64_t ec
        cdef int32_t target
        cdef uint64_t offset
        first = log.first_segment
        end = first + log.n_segments
        for g in range(first, end - k + 1):
            block = self.segs[g].block
            if self.segs[g + k - 1].block != block:
                continue
            cost = 0
            for j in range(g, g + k):
                if self.segs[j].pinned or self.segs[j].state == SEG_CLAIMED:
                    cost = <uint64_t>-1
                    break
                if self.segs[j].state == SEG_RUN:
                    # Parking a lifted entry is a copy; displacing another one loses it.
                    if self.slot_state[self.segs[j].first] == SLOT_LIFTED:
                        cost += log.segment_size
                    else:
                        cost += 4 * log.segment_size
                else:
                    cost += self.segs[j].live
            if cost == <uint64_t>-1:
                continue
            if best < 0 or cost < best_cost:
                best, best_cost = g, cost
                if cost == 0:
                    break
        if best < 0:
            return False
        for j in range(best, best + k):
            if self.seg_ticket[j] > self.done_ticket:
                self.settle(self.seg_ticket[j])   # the run overwrites its dead ranges too
        # Claim the window: nothing may be appended to or cleaned into it while it is emptied.
        for j in range(best, best + k):
            if self.segs[j].state == SEG_FREE:
                self.take_free(j)
            else:
                if log.head == j:
                    log.head = -1
                self.unlist(j)
            if self.segs[j].state != SEG_RUN:
                self.segs[j].state = SEG_CLAIMED
        for j in range(best, best + k):
            if self.segs[j].state == SEG_RUN:
                if not self.clear_out(self.segs[j].first, tier):
                    return self.unclaim(best, k)
            if self.segs[j].state == SEG_FREE:
                # Freed by a displacement just now (a run reaching into the window).
                self.take_free(j)
                self.segs[j].state = SEG_CLAIMED
                continue
            slot = self.segs[j].first
            while slot != VC_NIL:
                following = self.slot_next[slot]
                ec = self.charge(self.engine.slots[slot].size)
                if self.alloc_small(tier, ec, &target, &offset):
                    self.move_range(slot, target, offset, ec)
                    self.counters[tier * STORAGE_COUNTER_N + STORAGE_COUNTER_CLEANING_BYTES] += ec
                elif not self.clear_out(slot, tier):
                    return self.unclaim(best, k)
                slot = following
        if best_cost:
            self.counters[tier * STORAGE_COUNTER_N + STORAGE_COUNTER_CLEANINGS] += 1
        for j in range(best, best + k):
            self.segs[j].state = SEG_RUN
            self.segs[j].fill = self.logs[tier].segment_size
            self.segs[j].first = VC_NIL
            self.segs[j].last = VC_NIL
            if self.n_rows and self.segs[j].touched_wave == self.wave:
                self.new_wave()
        g_out[0] = best
        return True

    cdef bint clear_out(self, Py_ssize_t slot, int tier) except -1:
        """Make an entry of a window being emptied for a run leave it without a new place there:
        a lifted entry is parked, another displaced.  False when it cannot be displaced."""
        if self.slot_state[slot] == SLOT_LIFTED:
            self.park(slot)
            return True
        if self.displace_now(slot):
            self.counters[tier * STORAGE_COUNTER_N + STORAGE_COUNTER_FRAGMENTATION_EVICTIONS] += 1
            return True
        return False

    cdef bint unclaim(self, int32_t first, int32_t k) except -1:
        cdef int32_t j
        for j in range(first, first + k):
            if self.segs[j].state == SEG_CLAIMED:
                self.segs[j].state = SEG_CLOSED
                self.relist(j)
        return False

    cdef bint placeable(self, int tier, uint64_t c) noexcept:
        """Whether an entry of `c` charged bytes can be given room in `tier` by moving and
        displacing unpinned entries: some segment holds no pinned entry (a run: some window)."""
        cdef TierLog* log = &self.logs[tier]
        cdef int32_t k, g, run
        if c == 0:
            return True
        if c > log.max_entry:
            return False
        if c <= log.segment_size:
            return log.n_pinned < log.n_segments
        k = self.run_length(c, tier)
        run = 0
        for g in range(log.first_segment, log.first_segment + log.n_segments):
            if self.segs[g].pinned or (g > log.first_segment and self.segs[g].block != self.segs[g - 1].block):
                run = 0
            if self.segs[g].pinned == 0:
                run += 1
                if run >= k:
                    return True
        return False

    cdef bint find_room(self, Py_ssize_t slot, int tier, uint64_t c) except -1:
        """Give slot a range of c bytes in tier (not linked yet): slot_segment/slot_offset of the room."""
        cdef int32_t g
        cdef uint64_t offset
        if c <= self.logs[tier].segment_size:
            if not self.alloc_small(tier, c, &g, &offset):
                return False
        else:
            if c > self.logs[tier].max_entry or not self.place_run(tier, c, &g):
                return False
            offset = self.segs[g].offset
        self.room_seg = g
        self.room_offset = offset
        return True

    # -- event replay ------------------------------------------------------------------------

    cdef int apply_events(self) except -1:
        """Replay the engine's event log of the last call, then mark it consumed."""
        cdef Py_ssize_t i = 0
        while i < self.engine.n_events:
            self.apply_event(i)
            i += 1
        self.engine.n_events = 0
        return 0

    cdef int apply_event(self, Py_ssize_t i) except -1:
        cdef Event ev = self.engine.events[i]       # a copy: nested displacements append events
        cdef Py_ssize_t slot = ev.slot
        self.ensure_slots(slot + 1)
        if ev.kind == EV_REMOVE or ev.kind == EV_EVICT:
            if self.remote is not None:
                self.leave_for_remote(&ev)
            if self.slot_state[slot] == SLOT_PARKED:
                del self.parked[slot]
            elif self.slot_state[slot] != SLOT_NONE:
                if self.slot_state[slot] == SLOT_LIFTED:
                    self.lifted.remove(slot)
                self.unlink_entry(slot, self.charge(ev.size))
            self.slot_state[slot] = SLOT_NONE
            self.slot_pinned[slot] = 0
            if ev.kind == EV_EVICT and self.report_evictions:
                self.evicted.append(CacheEntry(ev.key, ev.size, ev.src_tier))
        elif ev.kind == EV_LIFT:
            if self.slot_state[slot] == SLOT_PLACED:
                self.slot_state[slot] = SLOT_LIFTED
                self.lifted.append(slot)
        elif ev.kind == EV_INSERT:
            self.slot_state[slot] = SLOT_NONE
            self.slot_segment[slot] = -1
            self.slot_pinned[slot] = 0
            self.place(slot, ev.dst_tier, ev.size, True)
        elif ev.kind == EV_PLACE:
            self.place(slot, ev.dst_tier, ev.size, False)
        return 0

    cdef int place(self, Py_ssize_t slot, int tier, uint64_t size, bint new) except -1:
        """Give a new or lifted entry its range in `tier` and its bytes there."""
        cdef uint64_t c = self.charge(size)
        cdef int32_t src, g, k
        cdef uint64_t offset
        if size == 0:
            if not new:
                self.unlink_entry(slot, 0)
                if self.slot_state[slot] == SLOT_LIFTED:
                    self.lifted.remove(slot)
                elif self.slot_state[slot] == SLOT_PARKED:
                    del self.parked[slot]
            self.slot_segment[slot] = -1
            self.slot_state[slot] = SLOT_PLACED
            return 0
        if not self.find_room(slot, tier, c):
            if new:
                # The put checked placeable() before anything changed; reaching this is a bug.
                raise CacheError("internal: no room in tier %d for %d bytes" % (tier, size))
            # A move whose target has no room even after displacing (pins): the entry moves on
            # down (or leaves) instead, as a victim of that tier would.
            if self.slot_state[slot] == SLOT_LIFTED:
                self.park(slot)
            if not self.displace_now(slot, True):
                raise CacheError("internal: entry in slot %d can neither move nor leave" % slot)
            return 0
        g = self.room_seg
        offset = self.room_offset
        if new or self.slot_state[slot] == SLOT_PARKED:
            if new:
                self.write_data(self.segs[g].block, offset, self.data, size, g)
            else:
                parked = self.parked.pop(slot)
                self.write_data(self.segs[g].block, offset, <const char*>cnp.PyArray_DATA(parked), size, g)
            self.slot_wave[slot] = self.wave if self.n_rows else 0
            self.slot_ticket[slot] = self.op_ticket
            self.slot_state[slot] = SLOT_PLACED
        else:
            self.lifted.remove(slot)
            src = self.slot_segment[slot]      # read now: making room may have moved this very entry
            self.copy_bytes(slot, self.segs[src].block, self.slot_offset[slot], self.segs[g].block,
                            offset, size, src, g)
            self.unlink_entry(slot, c)
            self.slot_state[slot] = SLOT_PLACED
        if self.segs[g].state == SEG_RUN:
            for k in range(self.run_length(c, tier)):
                self.segs[g + k].first = <uint32_t>slot
            self.slot_segment[slot] = g
            self.slot_offset[slot] = offset
            self.slot_prev[slot] = VC_NIL
            self.slot_next[slot] = VC_NIL
            self.logs[tier].live += c
            if self.slot_pinned[slot]:
                self.pin_entry(slot, 1)
        else:
            self.link_entry(slot, g, offset, c)
        return 0

    # -- copies ------------------------------------------------------------------------------

    cdef int new_wave(self) except -1:
        self.wave += 1
        self.wave_first_row = self.n_rows
        if self.n_rows:
            self.wave_starts.append(self.n_rows)
        return 0

    cdef int copy_bytes(self, Py_ssize_t slot, int32_t src_block, uint64_t src_offset,
                        int32_t dst_block, uint64_t dst_offset, uint64_t size,
                        int32_t src_seg, int32_t dst_seg) except -1:
        """Copy an entry's bytes (the ranges never overlap: different segments)."""
        if size == 0:
            return 0
        if (self.n_rows == 0 and not self.device_moves and self.block_address[src_block] != NULL
                and self.block_address[dst_block] != NULL):
            if self.slot_ticket[slot] > self.done_ticket:
                self.settle(self.slot_ticket[slot])     # a transfer in flight still writes them
            self.slot_ticket[slot] = 0
            self.cpu_copy(self.block_address[dst_block] + dst_offset, self.block_address[src_block] + src_offset, size)
            return 0
        if self.slot_wave[slot] == self.wave:
            self.new_wave()          # read-after-write: the entry was written in this wave
        # Rows run after every earlier submit (vkcopy.h's first barrier): no wait for a ticket.
        self.add_row(self.block_id[src_block], src_offset, self.block_id[dst_block], dst_offset, size)
        self.segs[src_seg].touched_wave = self.wave
        self.segs[dst_seg].touched_wave = self.wave
        self.slot_wave[slot] = self.wave
        self.slot_ticket[slot] = self.op_ticket
        if self.op_ticket:
            self.stamp(src_seg, src_offset, size)
            self.stamp(dst_seg, dst_offset, size)
        return 0

    cdef void stamp(self, int32_t g, uint64_t offset, uint64_t size) noexcept:
        """Mark the segments under [offset, offset + size) of g's block (a run takes several)
        with the running transfer's ticket."""
        cdef uint64_t seg = self.logs[self.segs[g].tier].segment_size
        cdef int32_t k, n = <int32_t>((offset - self.segs[g].offset + size + seg - 1) // seg)
        for k in range(n):
            self.seg_ticket[g + k] = self.op_ticket

    cdef int write_data(self, int32_t block, uint64_t offset, const char* data, uint64_t size,
                        int32_t seg) except -1:
        """Write user bytes into a block: memcpy when mapped, else through staging rows."""
        cdef uint64_t done = 0, chunk
        if self.n_rows == 0 and self.block_address[block] != NULL and not self.device_moves:
            self.finish_run()
            self.host_copy(self.block_address[block] + offset, data, size)
            return 0
        self.finish_run()
        if self.staging_ticket > self.done_ticket:
            self.settle(self.staging_ticket)     # a transfer in flight still reads the staging
        while done < size:
            if self.staging_used == self.staging_size:
                self.flush()
            chunk = min(size - done, self.staging_size - self.staging_used)
            memcpy(self.staging_addr + self.staging_used, data + done, chunk)
            self.add_row(self.staging.id, self.staging_used, self.block_id[block], offset + done, chunk)
            self.staging_used += chunk
            done += chunk
        self.segs[seg].touched_wave = self.wave
        if self.op_ticket:
            self.stamp(seg, offset, size)
        return 0

    cdef int read_data(self, int32_t block, uint64_t offset, char* out, uint64_t size) except -1:
        """Copy bytes of a block into host memory (outside of an operation's batch)."""
        cdef uint64_t done = 0, chunk
        if self.block_address[block] != NULL:
            self.host_copy(out, self.block_address[block] + offset, size)
            return 0
        if self.staging_ticket > self.done_ticket:
            self.settle(self.staging_ticket)
        while done < size:
            chunk = min(size - done, self.staging_size)
            self.add_row(self.block_id[block], offset + done, self.staging.id, 0, chunk)
            self.flush()
            memcpy(out + done, self.staging_addr, chunk)
            done += chunk
        return 0

    cdef int add_row(self, uint32_t src, uint64_t src_offset, uint32_t dst, uint64_t dst_offset,
                     uint64_t size) except -1:
        cdef void* p
        cdef CopyRow* last
        if self.n_rows > self.wave_first_row:
            # A row that continues the previous one on both sides joins it (drivers pay per
            # region): cleaning neighbours into a fresh segment becomes a few large regions.
            last = &self.rows[self.n_rows - 1]
            if (last.src_block == src and last.dst_block == dst
                    and last.src_offset + last.size == src_offset
                    and last.dst_offset + last.size == dst_offset):
                last.size += size
                return 0
        if self.n_rows == self.cap_rows:
            self.cap_rows = self.cap_rows * 2 if self.cap_rows else 256
            p = realloc(self.rows, self.cap_rows * sizeof(CopyRow))
            if p == NULL: raise MemoryError()
            self.rows = <CopyRow*>p
        self.rows[self.n_rows].src_block = src
        self.rows[self.n_rows].dst_block = dst
        self.rows[self.n_rows].src_offset = src_offset
        self.rows[self.n_rows].dst_offset = dst_offset
        self.rows[self.n_rows].size = size
        self.n_rows += 1
        return 0

    cdef int flush(self) except -1:
        """Run the pending copy rows on the device and wait."""
        self.finish_run()
        if self.n_rows == 0:
            return 0
        table = np.empty(self.n_rows, dtype=COPY_DTYPE)
        cdef uint8_t[::1] raw = table.view(np.uint8)
        memcpy(&raw[0], self.rows, self.n_rows * sizeof(CopyRow))
        waves = [start for start in self.wave_starts if 0 < start < self.n_rows]
        if self.vk.device != NULL:
            return self.run_on_queue(waves)
        self.n_rows = 0
        self.wave_first_row = 0
        self.wave_starts = []
        self.wave += 1
        self.staging_used = 0
        self.backend.run_copies(table, waves)
        return 0

    cdef vc_vk_copy* device_rows(self) except NULL:
        """The pending rows with VkBuffer handles (the caller frees them)."""
        cdef Py_ssize_t i, n = self.n_rows
        cdef vc_vk_copy* rows = <vc_vk_copy*>realloc(NULL, max(n, 1) * sizeof(vc_vk_copy))
        if rows == NULL:
            raise MemoryError()
        for i in range(n):
            rows[i].src = self.id_buffers[self.rows[i].src_block]
            rows[i].dst = self.id_buffers[self.rows[i].dst_block]
            rows[i].src_offset = self.rows[i].src_offset
            rows[i].dst_offset = self.rows[i].dst_offset
            rows[i].size = self.rows[i].size
        return rows

    cdef int run_on_queue(self, list waves) except -1:
        """The pending rows as one submit recorded in C; waits for the fence without the GIL."""
        cdef Py_ssize_t n = self.n_rows
        cdef cnp.ndarray starts = np.asarray(waves, dtype=np.int64)
        cdef const int64_t[::1] sv = starts
        cdef vc_vk_copy* rows = self.device_rows()
        cdef int32_t result
        self.n_rows = 0
        self.wave_first_row = 0
        self.wave_starts = []
        self.wave += 1
        self.staging_used = 0
        with nogil:
            result = vc_vk_run(&self.vk, rows, n, &sv[0] if sv.shape[0] else NULL, sv.shape[0])
        free(rows)
        if result != 0:
            from vyrecache.vulkan.check import error_for
            call = (<bytes>self.vk.failed_call).decode()
            if result == 2:
                raise CacheError(f"{call}: {GPU_TIMEOUT_MESSAGE}")
            raise error_for(call, result, "running a cache operation's copies")
        return 0

    # -- asynchronous transfers ----------------------------------------------------------------

    cdef int ensure_device_path(self) except -1:
        """The staging buffer and transfer queue an asynchronous move records into (made on the
        first one where every tier is mapped)."""
        if self.vk.device != NULL:
            return 0
        if self.staging is None:
            self.take_staging(self.backend)
        self.take_transfer_queue(self.backend)
        return 0

    cdef int reserve_transfer_slot(self) except -1:
        """A free command buffer slot for the next transfer: a new one, or the oldest transfer's
        once it completes."""
        if self.free_transfer_slots:
            return 0
        if self.n_transfer_slots < MAX_TRANSFERS:
            self.transfer.slot(self.n_transfer_slots)
            self.free_transfer_slots.append(self.n_transfer_slots)
            self.n_transfer_slots += 1
            return 0
        self.settle((<Transfer>self.pending[0]).ticket)
        self.retire()
        return 0

    cdef object start_transfer(self, object key_array, object tiers):
        """Submit the operation's rows without waiting, pin its keys, and return its Transfer."""
        cdef Py_ssize_t n = self.n_rows
        cdef Py_ssize_t index
        cdef Transfer transfer
        waves = [start for start in self.wave_starts if 0 < start < self.n_rows]
        cdef cnp.ndarray starts = np.asarray(waves, dtype=np.int64)
        cdef const int64_t[::1] sv = starts
        cdef vc_vk_copy* rows
        cdef int32_t result
        cdef uint64_t value = self.op_ticket
        self.finish_run()
        index = self.free_transfer_slots[len(self.free_transfer_slots) - 1]
        command_buffer, fence = self.transfer.slot(index)
        cdef void* cb = <void*><size_t>command_buffer
        cdef uint64_t fence_handle = fence
        rows = self.device_rows()
        with nogil:
            result = vc_vk_start(&self.vk, cb, fence_handle, value, rows, n,
                                 &sv[0] if sv.shape[0] else NULL, sv.shape[0])
        free(rows)
        if result != 0:
            # Nothing was submitted: leave() runs the rows and waits, as a synchronous move.
            from vyrecache.vulkan.check import error_for
            raise error_for((<bytes>self.vk.failed_call).decode(), result,
                            "starting an asynchronous transfer")
        self.free_transfer_slots.pop()
        self.n_rows = 0
        self.wave_first_row = 0
        self.wave_starts = []
        self.wave += 1
        if self.staging_used:
            self.staging_ticket = value
        self.staging_used = 0
        if self.done_ticket >= value:
            self.done_ticket = value - 1
        pinned = np.ascontiguousarray(key_array[np.asarray(tiers) >= 0])
        transfer = _new_transfer(self, value, fence_handle, index, tiers, pinned)
        self.pending.append(transfer)
        self.n_pending += 1
        self.pin_transfer_keys(pinned, 1)
        return transfer

    cdef int pin_transfer_keys(self, object keys, int delta) except -1:
        """Pin (1) or unpin (-1) a transfer's keys, as pin() and unpin() do."""
        cdef const uint64_t[::1] kv = keys
        cdef Py_ssize_t i, slot
        for i in range(kv.shape[0]):
            slot = self.engine.slot_of(kv[i])
            if slot < 0 or (delta < 0 and self.engine.slots[slot].pins == 0):
                continue        # unpinned by hand meanwhile: nothing of the transfer's left
            self.engine.op_pin(<uint32_t>slot, delta)
            self.follow_pin(slot, delta)
        return 0

    cdef int refresh(self) except -1:
        """Advance done_ticket past the transfers that completed (a ticket no transfer holds, of an
        operation that ran its rows synchronously, is complete once those before it are)."""
        cdef Transfer transfer
        cdef uint64_t value = 0
        cdef int32_t result
        cdef bint timeline = self.vk.semaphore != 0
        if timeline and self.n_pending:
            result = vc_vk_reached(&self.vk, 0, &value)
            if result != 0:
                self.raise_vk(result)
        for transfer in self.pending:
            if not transfer.signalled:
                if not timeline:
                    result = vc_vk_reached(&self.vk, transfer.fence, &value)
                    if result != 0:
                        self.raise_vk(result)
                    transfer.signalled = value != 0
                else:
                    transfer.signalled = value >= transfer.ticket
            if not transfer.signalled:
                self.done_ticket = transfer.ticket - 1
                return 0
        self.done_ticket = (self.op_ticket if self.op_ticket else self.next_ticket) - 1
        return 0

    cdef int raise_vk(self, int32_t result) except -1:
        from vyrecache.vulkan.check import error_for
        raise error_for((<bytes>self.vk.failed_call).decode(), result, "waiting for a transfer")

    cdef bint wait_ticket(self, uint64_t ticket, uint64_t timeout_ns) except -1:
        """Wait up to timeout_ns until `ticket` is complete; False on time-out."""
        cdef Transfer transfer
        cdef uint64_t target = 0
        cdef int32_t result
        cdef uint32_t n_fences = 0
        cdef uint64_t* fences
        self.refresh()
        if ticket <= self.done_ticket:
            return True
        if timeout_ns == 0:
            return False
        fences = <uint64_t*>realloc(NULL, max(self.n_pending, 1) * sizeof(uint64_t))
        if fences == NULL:
            raise MemoryError()
        for transfer in self.pending:
            if transfer.ticket > ticket:
                break
            if not transfer.signalled:
                target = transfer.ticket       # the last one in flight at or before `ticket`
                fences[n_fences] = transfer.fence
                n_fences += 1
        with nogil:
            result = vc_vk_wait_for(&self.vk, target, fences, n_fences, timeout_ns)
        free(fences)
        if result == 2:
            return False
        if result != 0:
            self.raise_vk(result)
        self.refresh()
        return ticket <= self.done_ticket

    cdef int settle(self, uint64_t ticket) except -1:
        """Wait until the transfer that stamped `ticket` is done (its copies in this very
        operation are ordered by the operation's own waves instead)."""
        if ticket <= self.done_ticket or ticket == self.op_ticket:
            return 0
        if not self.wait_ticket(ticket, self.vk.timeout_ns):
            raise CacheError(f"waiting for an asynchronous transfer: {GPU_TIMEOUT_MESSAGE}")
        return 0

    cdef int retire(self) except -1:
        """Complete the transfers that are done: unpin their keys, free their slots."""
        cdef Transfer transfer
        self.refresh()
        while self.pending and (<Transfer>self.pending[0]).ticket <= self.done_ticket:
            transfer = self.pending.pop(0)
            self.n_pending -= 1
            self.free_transfer_slots.append(transfer.slot)
            transfer.finished = True
            if transfer.keys is not None:
                keys, transfer.keys = transfer.keys, None
                self.pin_transfer_keys(keys, -1)
        return 0

    def _transfers_in_flight(self):
        """The number of asynchronous transfers not completed yet (as of the last check)."""
        return self.n_pending

    cdef void cpu_copy(self, char* dst, const char* src, size_t size) noexcept:
        # Ranges of different segments never overlap, so extending a run can never write bytes
        # that the run still has to read.
        if self.run_len and src == self.run_src + self.run_len and dst == self.run_dst + self.run_len:
            self.run_len += size
            return
        self.finish_run()
        self.run_src = <char*>src
        self.run_dst = dst
        self.run_len = size

    cdef void finish_run(self) noexcept:
        if self.run_len == 0:
            return
        self.host_copy(self.run_dst, self.run_src, self.run_len)
        self.run_len = 0

    cdef void host_copy(self, char* dst, const char* src, size_t size) noexcept:
        # Other threads may run during a large copy (they wait for the cache's lock, not the GIL).
        if self.stream_min and size >= self.stream_min:
            if size >= NOGIL_COPY_BYTES:
                with nogil:
                    vc_stream_copy(dst, src, size)
            else:
                vc_stream_copy(dst, src, size)
            self.streamed = True
        elif size >= NOGIL_COPY_BYTES:
            with nogil:
                memcpy(dst, src, size)
        else:
            memcpy(dst, src, size)

    # -- entering and leaving an operation -----------------------------------------------------

    cdef int enter(self) except -1:
        """Take the lock for one operation; refuse a closed cache and re-entry from a callback."""
        self.lock()
        self.engine.op_begin()          # the lock again (it nests), and a fresh event log
        self.engine.release()
        self.busy = 1
        self.report_evictions = self.on_evict is not None
        return 0

    cdef int leave(self) except -1:
        """Finish the copies, release the lock, report the victims, raise what a callback raised."""
        cdef list evicted = None
        try:
            if self.n_rows:
                self.flush()
            else:
                self.finish_run()
            if self.streamed:
                vc_stream_fence()       # streaming stores are weakly ordered: publish them now
                self.streamed = False
        finally:
            self.engine.n_events = 0
            self.busy = 0
            error = self.engine.op_end()
        if self.leaving_keys:
            keys, self.leaving_keys = self.leaving_keys, []
            values, self.leaving_values = self.leaving_values, []
            try:
                # queued: never waits for the network; write_owned takes the copies as they are
                write = getattr(self.remote, "write_owned", None) or self.remote.write_many
                write(keys, values)
            except BaseException as remote_error:
                if error is None:
                    error = remote_error
        if self.evicted:
            evicted, self.evicted = self.evicted, []
            error = report_victims(self.on_evict, evicted, error)
        if error is not None:
            raise error
        return 0

    cdef int abort(self, int status, uint64_t key, uint64_t size, Py_ssize_t index) except -1:
        """Leave an operation that changed nothing, raising the engine's status error."""
        self.busy = 0
        self.engine.n_events = 0
        self.engine.op_end()
        return self.engine.raise_status(status, key, size, index)

    cdef int replay_checked(self) except -1:
        if self.engine.alloc_failed:
            self.closed = True
            raise MemoryError("The engine could not record this operation's moves, so the cache "
                              "was closed to keep its bytes consistent. Fix: free memory and "
                              "create a new cache.")
        return self.apply_events()

    cdef Py_ssize_t find(self, uint64_t key) except -2:
        cdef Py_ssize_t slot = self.engine.slot_of(key)
        if slot < 0:
            raise KeyNotFoundError(KEY_NOT_FOUND_MESSAGE + " (key %d)" % key)
        return slot

    cdef uint64_t largest_storable(self):
        """The largest entry any tier takes: it must fit one memory block of its tier.  (A loop
        of its own: a generator in check_put would cost every put a closure object.)"""
        cdef uint64_t largest = 0
        cdef int t
        for t in range(self.n_tiers):
            largest = max(largest, min(self.logs[t].max_entry, self.engine.tier_state[t].capacity))
        return largest

    cdef int check_put(self, uint64_t key, uint64_t size, Py_ssize_t index) except -1:
        """Refuse a put that could not complete, before anything changes."""
        cdef Py_ssize_t old = self.engine.slot_of(key)
        cdef int tier
        cdef uint64_t c = self.charge(size)
        if old >= 0 and self.engine.slots[old].pins:
            where = _batch_position(index)
            raise PinnedError(f"Key {key}{where} is pinned, so it cannot be replaced. "
                              f"Fix: unpin it first (cache.unpin({key})), as often as it was pinned.")
        tier = self.engine.target_tier(size, VC_NIL if old < 0 else <uint32_t>old)
        if tier < 0:
            return self.engine.raise_status(tier, key, size, index)
        if c > self.logs[tier].max_entry:
            largest = self.largest_storable()
            where = _batch_position(index)
            raise EntryTooLargeError(
                f"Key {key}{where} has {size} bytes, more than one entry can take here: an entry "
                f"must fit one memory block of its tier, and the largest storable size is "
                f"{largest} bytes. Fix: split the buffer, or use a device whose "
                f"maxMemoryAllocationSize is larger.")
        if not self.placeable(tier, c):
            where = _batch_position(index)
            raise AllPinnedError(
                f"Cannot make room for key {key}{where} ({size} bytes) in tier {tier}: pinned "
                f"entries occupy every segment (or every run of segments) that could hold it. "
                f"Fix: unpin entries (cache.unpin(key)), or give the tier more memory.")
        return 0

    # -- the data path -----------------------------------------------------------------------

    def put(self, key, data, *, write_back=True):
        """Store ``data`` (any C-contiguous buffer) under ``key``; True when stored.

        With a remote tier, ``write_back=False`` keeps the entry out of it: it is not written
        there when evicted (nor by ``remote_write="through"``), for an entry no later access will
        want, such as the blocks of a request's generated tokens that no other request shares.
        Placement and eviction are ``TieredCache.insert``'s.  Raises TypeError for data without
        the buffer protocol, ValueError for non-contiguous data, PinnedError for a pinned key,
        EntryTooLargeError/AllPinnedError when it cannot be placed: then the cache is unchanged.
        """
        cdef Py_buffer buffer
        cdef uint64_t k = parse_u64(key, "key")
        cdef int status = 0
        cdef bint placed
        write_back = _check_flag(write_back, "put", "write_back", _WRITE_BACK_FIX)
        self.get_buffer(data, &buffer)
        try:
            self.enter()
            try:
                self.check_put(k, buffer.len, -1)
                self.ensure_slots(self.engine.slot_high_water + 2)
                placed = self.put_in_place(k, <const char*>buffer.buf, buffer.len)
            except BaseException:
                self.busy = 0
                self.engine.op_end()
                raise
            if not placed:
                status = self.engine.op_insert(k, buffer.len)
                if status < -1 and status != STATUS_DECLINED:
                    self.abort(status, k, buffer.len, -1)
            try:
                if not placed:
                    self.data = <const char*>buffer.buf
                    self.replay_checked()       # a declined key's events: what its arrival displaced
                    if status != STATUS_DECLINED:
                        self.puts_bytes += buffer.len
                if status != STATUS_DECLINED and not write_back and self.remote is not None:
                    self.remote_fetched[k] = LOCAL_ONLY
            finally:
                self.data = NULL
                self.leave()
            if status == STATUS_DECLINED:
                return False
            if self.write_through and self.remote is not None and write_back:
                self.remote.write_many([k], [data])
            return True
        finally:
            PyBuffer_Release(&buffer)

    cdef int get_buffer(self, object data, Py_buffer* buffer) except -1:
        try:
            PyObject_GetBuffer(data, buffer, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        except TypeError:
            raise TypeError("put() needs a buffer (bytes, bytearray, numpy array, memoryview), got %s. "
                            "Fix: pass np.asarray(data) or bytes(data)." % type(data).__name__) from None
        except (BufferError, ValueError):
            raise ValueError("put() needs C-contiguous data, got a strided %s. "
                             "Fix: pass np.ascontiguousarray(data)." % type(data).__name__) from None
        if buffer.format != NULL and strchr(buffer.format, 79) != NULL:      # 'O': objects
            PyBuffer_Release(buffer)
            raise TypeError("put() got an array of Python objects (dtype object), whose bytes are "
                            "pointers. Fix: store numeric data, e.g. np.asarray(data, dtype=np.float32).")
        return 0

    def read(self, key):
        """A new uint8 array with the entry's bytes (not an access)."""
        cdef uint64_t k = parse_u64(key, "key")
        cdef Py_ssize_t slot
        cdef cnp.npy_intp size
        if self.remote is not None and not self.__contains__(k):
            self.from_remote(key_array_of(k))
        self.enter_read()
        try:
            slot = self.find(k)
            size = <cnp.npy_intp>self.engine.slots[slot].size
            out = cnp.PyArray_EMPTY(1, &size, cnp.NPY_UINT8, 0)
            if size:
                self.settle(self.slot_ticket[slot])
                self.read_data(self.segs[self.slot_segment[slot]].block, self.slot_offset[slot],
                               <char*>cnp.PyArray_DATA(out), size)
            return out
        finally:
            self.leave_read()

    def read_into(self, key, out):
        """Copy the entry's bytes into ``out``, a writable C-contiguous buffer of exactly its size."""
        cdef Py_buffer buffer
        cdef uint64_t k = parse_u64(key, "key")
        cdef Py_ssize_t slot
        cdef uint64_t size
        try:
            PyObject_GetBuffer(out, &buffer, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
        except TypeError:
            raise TypeError("read_into() needs a writable buffer, got %s. Fix: pass a numpy array or "
                            "bytearray." % type(out).__name__) from None
        except (BufferError, ValueError):
            raise ValueError("read_into() needs a writable C-contiguous buffer. "
                             "Fix: pass np.empty(size, np.uint8) or a bytearray.") from None
        try:
            self.enter_read()
            try:
                slot = self.find(k)
                size = self.engine.slots[slot].size
                if <uint64_t>buffer.len != size:
                    raise ValueError("read_into(%d): the entry has %d bytes but out has %d. "
                                     "Fix: pass a buffer of exactly %d bytes (cache.get(key).size)."
                                     % (k, size, buffer.len, size))
                if size:
                    self.settle(self.slot_ticket[slot])
                    self.read_data(self.segs[self.slot_segment[slot]].block, self.slot_offset[slot],
                                   <char*>buffer.buf, size)
            finally:
                self.leave_read()
        finally:
            PyBuffer_Release(&buffer)

    cdef int enter_read(self) except -1:
        self.lock()
        self.busy = 1
        return 0

    cdef int lock(self) except -1:
        """Take the engine's lock (other threads wait), then refuse a closed cache and a call
        from inside a running operation (the lock nests for that thread, so it gets this far)."""
        self.engine.acquire()
        if self.closed:
            self.engine.release()
            raise CacheClosedError("this BufferCache is closed and its memory was freed. "
                                   "Fix: create a new BufferCache.")
        if self.busy:
            self.engine.release()
            raise CacheError(IN_USE_MESSAGE)
        if self.n_pending:
            try:
                self.retire()
            except BaseException:
                self.engine.release()
                raise
        return 0

    cdef void leave_read(self) noexcept:
        if self.streamed:
            vc_stream_fence()
            self.streamed = False
        self.busy = 0
        self.engine.release()

    def access(self, key):
        """Record a use of ``key``, promoting it when the policy says so; the tier it was found
        in, or -1 when it is absent (nothing is inserted: use ``put``)."""
        cdef uint64_t k = parse_u64(key, "key")
        cdef int tier
        self.enter()
        tier = self.engine.op_touch(k)
        try:
            if tier < 0:
                self.misses += 1
            self.replay_checked()
        finally:
            self.leave()
        if tier < 0 and self.remote is not None:
            return self.from_remote(key_array_of(k))[0]
        return tier

    cdef object from_remote(self, cnp.ndarray keys):
        """Look up local misses in the remote tier (one round trip) and put the hits as a put
        would; the tier each key now has (-1: a miss there too).  Each hit counts as a hit on the
        tier it landed in instead of a miss."""
        cdef Py_ssize_t i, n = keys.shape[0]
        epoch = getattr(self.remote, "epoch", None)     # read before the fetch: see leave_for_remote
        # fetch_views spares a copy: its values may be views into a reply, copied in by the put.
        fetch = getattr(self.remote, "fetch_views", None) or self.remote.fetch_many
        values = fetch(keys)
        tiers = np.full(n, -1, dtype=np.int8)
        found = [i for i in range(n) if values[i] is not None]
        if found:
            self.store_many(keys[found], [values[i] for i in found], None, epoch)
            for i in found:
                entry = self.get(int(keys[i]))
                tiers[i] = entry.tier if entry is not None else -1
                if entry is not None:
                    self.remote_hits += 1
                    self.misses -= 1
        return tiers

    def _absent_keys(self, keys):
        """The keys of `keys` the cache does not hold now (a uint64 array), for a remote prefetch."""
        key_array = parse_keys(keys)
        return key_array[~self.present_mask(key_array)]

    def promote(self, key):
        """Move the entry one tier up when the policy allows it (its bytes move too)."""
        self.move_one(key, True)

    def demote(self, key):
        """Move the entry one tier down (its bytes move too)."""
        self.move_one(key, False)

    cdef int move_one(self, object key, bint up) except -1:
        cdef uint64_t k = parse_u64(key, "key")
        cdef Py_ssize_t slot
        cdef int status
        self.enter()
        slot = self.engine.slot_of(k)
        if slot < 0:
            return self.abort(STATUS_NOT_FOUND, k, 0, -1)
        status = self.engine.op_promote(<uint32_t>slot, True) if up else self.engine.op_demote(<uint32_t>slot)
        if status < -1:
            self.engine.n_events = 0
            return self.abort(status, k, self.engine.slots[slot].size, -1)
        try:
            self.replay_checked()
        finally:
            self.leave()
        return 0

    def promote_many(self, keys, wait=True):
        """Promote every key of a uint64 array (its bytes in one batch); int8 array of each key's
        tier afterwards (-1 when absent).  A promotion blocked by pins is skipped.

        With ``wait=False`` it returns a Transfer at once instead: the engine's tiers are already
        the new ones (``transfer.tiers``), the bytes move on the device, and the keys stay pinned
        until the transfer completes (on the host backend it is complete when returned).
        """
        return self.move_many(keys, True, _check_wait(wait, "promote_many"))

    def demote_many(self, keys, wait=True):
        """Demote every key of a uint64 array (its bytes in one batch); int8 array of each key's
        tier afterwards (-1 when absent).  A demotion blocked by pins is skipped.  ``wait=False``:
        a Transfer, as for promote_many."""
        return self.move_many(keys, False, _check_wait(wait, "demote_many"))

    cdef object move_many(self, object keys, bint up, bint wait):
        key_array = parse_keys(keys)
        cdef const uint64_t[::1] kv = key_array
        cdef Py_ssize_t i, n = kv.shape[0], slot
        out = np.empty(n, dtype=np.int8)
        cdef int8_t[::1] result = out
        cdef bint on_device = not wait and hasattr(self.backend, "transfer_queue")
        transfer = None
        if on_device:
            self.lock()
            try:
                self.ensure_device_path()        # before anything changes: it may fail
            finally:
                self.engine.release()
            # A backend that runs its copy tables itself (the compute shader) has no queue for
            # this cache: its moves complete within the call, as on the host backend.
            on_device = self.vk.device != NULL
        self.enter()
        try:
            if on_device:
                self.reserve_transfer_slot()
                self.op_ticket = self.next_ticket
                self.next_ticket += 1
                self.device_moves = True
            for i in range(n):
                slot = self.engine.slot_of(kv[i])
                if slot < 0:
                    result[i] = -1
                    continue
                if up:
                    self.engine.op_promote(<uint32_t>slot, False)
                else:
                    self.engine.op_demote(<uint32_t>slot)
                self.replay_checked()
                slot = self.engine.slot_of(kv[i])
                result[i] = -1 if slot < 0 else self.engine.slots[slot].tier
            if on_device:
                transfer = self.start_transfer(key_array, out)
        finally:
            self.device_moves = False
            self.op_ticket = 0
            self.leave()
        if wait:
            return out
        if transfer is None:
            transfer = _new_transfer(self, 0, 0, -1, out, None)
        return transfer

    def remove(self, key):
        """Remove the entry and free its bytes; its CacheEntry.  KeyNotFoundError if absent,
        PinnedError if pinned."""
        cdef uint64_t k = parse_u64(key, "key")
        cdef Py_ssize_t slot
        self.enter()
        slot = self.engine.slot_of(k)
        if slot < 0:
            return self.abort(STATUS_NOT_FOUND, k, 0, -1)
        if self.engine.slots[slot].pins:
            self.busy = 0
            self.engine.op_end()
            raise PinnedError(f"Key {k} is pinned, so it cannot be removed. Fix: unpin it first "
                              f"(cache.unpin({k})), as often as it was pinned.")
        entry = CacheEntry(k, self.engine.slots[slot].size, self.engine.slots[slot].tier)
        self.engine.op_remove(<uint32_t>slot)
        try:
            self.replay_checked()
        finally:
            self.leave()
        return entry

    def evict_coldest(self):
        """Evict the coldest unpinned entry of the lowest tier that has one; its key, or None."""
        cdef int tier
        cdef uint32_t victim = VC_NIL
        key = None
        self.enter()
        try:
            for tier in range(self.n_tiers):
                victim = self.engine.op_victim(tier)
                if victim != VC_NIL:
                    key = self.engine.slots[victim].key
                    self.engine.op_evict(victim)
                    break
            self.replay_checked()
        finally:
            self.leave()
        return key

    def pin(self, key):
        """Keep the entry where it is (no eviction, spill, move or replacement); pins nest."""
        self.pin_key(parse_u64(key, "key"), 1)

    def unpin(self, key):
        """Undo one ``pin``."""
        self.pin_key(parse_u64(key, "key"), -1)

    cdef int pin_key(self, uint64_t k, int delta) except -1:
        cdef Py_ssize_t slot
        self.enter_read()
        try:
            slot = self.find(k)
            if self.engine.op_pin(<uint32_t>slot, delta) != 0:
                # Out of range: the engine's own call explains it, and changes nothing.
                self.engine.pin(k) if delta > 0 else self.engine.unpin(k)
            self.follow_pin(slot, delta)
        finally:
            self.leave_read()
        return 0

    def get(self, key):
        """The entry's CacheEntry (key, size, tier), or None.  Not an access."""
        cdef uint64_t k = parse_u64(key, "key")
        cdef Py_ssize_t slot
        self.enter_read()
        slot = self.engine.slot_of(k)
        entry = None if slot < 0 else CacheEntry(k, self.engine.slots[slot].size,
                                                  self.engine.slots[slot].tier)
        self.leave_read()
        return entry

    def __contains__(self, key):
        cdef uint64_t k = parse_u64(key, "key")
        cdef bint found
        self.enter_read()
        found = self.engine.slot_of(k) >= 0
        self.leave_read()
        return found

    cdef object present_mask(self, object key_array):
        cdef const uint64_t[::1] kv = key_array
        cdef Py_ssize_t i
        mask = np.zeros(kv.shape[0], dtype=bool)
        self.enter_read()
        for i in range(kv.shape[0]):
            mask[i] = self.engine.slot_of(kv[i]) >= 0
        self.leave_read()
        return mask

    def __len__(self):
        if self.closed:
            raise CacheClosedError("this BufferCache is closed and its memory was freed. "
                                   "Fix: create a new BufferCache.")
        return len(self.engine)

    # -- batches -----------------------------------------------------------------------------

    def access_many(self, keys):
        """access() for each key in order, in one call with the bytes moved as one batch; int8
        array of the tier each key was found in (-1: absent, nothing inserted).  With a remote
        tier, the misses are looked up there in one round trip."""
        key_array = batch_keys(keys)
        cdef const uint64_t* kv = <const uint64_t*>cnp.PyArray_DATA(<cnp.ndarray>key_array)
        cdef Py_ssize_t n = cnp.PyArray_DIM(<cnp.ndarray>key_array, 0)
        cdef cnp.ndarray out = new_array(n, cnp.NPY_INT8)
        self.enter()
        try:
            self.touch_all(kv, n, <int8_t*>cnp.PyArray_DATA(out))
        finally:
            self.leave()
        if self.remote is not None:
            missing = np.flatnonzero(out < 0)
            if missing.size:
                out[missing] = self.from_remote(key_array[missing])
        return out

    cdef int touch_all(self, const uint64_t* kv, Py_ssize_t n, int8_t* result) except -1:
        """access() of each key inside an operation: the tier it was found in, or -1."""
        cdef Py_ssize_t i
        cdef int tier
        for i in range(n):
            tier = self.engine.op_touch(kv[i])
            if tier < 0:
                self.misses += 1
            else:
                self.replay_checked()
            result[i] = <int8_t>tier
        return 0

    def put_many(self, keys, data, sizes=None, *, write_back=True):
        """put() for each key in order, with the copies as one batch; True for each stored key.

        ``data`` is a 2-D C-contiguous uint8 array with one row per key (entry i is
        ``data[i, :sizes[i]]``; ``sizes`` defaults to the row length), or a sequence of buffers.
        Every argument is checked before anything changes.  An error that can only arise part-way
        (every candidate pinned) raises with ``stored``, the number of keys stored before it.
        ``write_back=False``: as for put(), for every key of the batch.
        """
        write_back = _check_flag(write_back, "put_many", "write_back", _WRITE_BACK_FIX)
        return self.store_many(keys, data, sizes, None if write_back or self.remote is None else LOCAL_ONLY)

    cdef object store_many(self, keys, data, sizes, object fetched_epoch):
        """put_many(); with a `fetched_epoch` (remote hits being placed), each stored entry is
        marked clean in the same operation, so that no other thread's put can come between
        (LOCAL_ONLY: never to be written back)."""
        cdef Rows rows = collect_rows(self, keys, data, sizes, "put_many")
        cdef const uint64_t* kv = rows.keys
        cdef Py_ssize_t i, n = rows.n
        cdef cnp.ndarray out = new_array(n, cnp.NPY_BOOL)
        if n:
            memset(cnp.PyArray_DATA(out), 1, n)
        self.enter()
        try:
            # Up front, so that bad input changes nothing: pinned keys, entries too large.
            # The batch changes no pin and no capacity, so these checks hold to its end.
            for i in range(n):
                self.check_put(kv[i], rows.length[i], i)
            self.ensure_slots(self.engine.slot_high_water + n + 1)
            for i in range(n):
                if (not self.put_in_place(kv[i], <const char*><size_t>rows.address[i], rows.length[i])
                        and not self.put_row(kv[i], rows, i)):
                    (<uint8_t*>cnp.PyArray_DATA(out))[i] = 0
                elif fetched_epoch is not None:
                    self.remote_fetched[kv[i]] = fetched_epoch
                rows.stored += 1
        except BaseException as error:
            self.end_batch(rows, error)
        self.end_batch(rows, None)
        return out

    def fill_many(self, keys, data, sizes=None):
        """access_many(keys), then put_many() of the keys it did not find, in one call.

        ``data`` holds a row (or buffer) for every key, as for put_many; only the rows of missing
        keys are read.  Returns what access_many returns: the tier each key was found in, -1
        where it was missing (and is now stored from its row).  The puts are checked before
        anything changes; an error only possible part-way raises with ``stored`` (keys put).
        With a remote tier, missing keys are not looked up there: their bytes are given.
        """
        cdef Rows rows = collect_rows(self, keys, data, sizes, "fill_many")
        cdef const uint64_t* kv = rows.keys
        cdef Py_ssize_t i, slot, n = rows.n
        cdef cnp.ndarray out = new_array(n, cnp.NPY_INT8)
        cdef int8_t* result = <int8_t*>cnp.PyArray_DATA(out)
        self.enter()
        try:
            # A key that may be put must be puttable: the missing ones, and the present ones that
            # an access could still evict (a pinned entry stays, and is never replaced).
            for i in range(n):
                slot = self.engine.slot_of(kv[i])
                if slot < 0 or not self.engine.slots[slot].pins:
                    self.check_put(kv[i], rows.length[i], i)
            self.ensure_slots(self.engine.slot_high_water + n + 1)
            self.touch_all(kv, n, result)
            for i in range(n):
                if result[i] < 0:
                    self.put_row(kv[i], rows, i)
                    rows.stored += 1
        except BaseException as error:
            self.end_batch(rows, error)
        self.end_batch(rows, None)
        return out

    cdef int end_batch(self, Rows rows, object failure) except -1:
        """Finish a batch of puts (the copies, the lock, the victims); then raise `failure`, if
        any, with the number of keys stored before it."""
        self.data = NULL
        self.leave()
        if failure is not None:
            raise rows.part_way(failure, rows.n)
        return 0

    cdef bint put_in_place(self, uint64_t key, const char* data, uint64_t size) except -1:
        """Store a checked put over the key's present entry, where its bytes lie, when the new
        entry takes the same charged bytes in the same tier: one step instead of the engine's
        remove and insert and the log's unlink and append (which would leave the old range as
        dead space for the cleaner).  Only where the bytes are mapped and no copy of this
        operation is queued; a pinned (leased, exported) entry is never replaced.  False, having
        changed nothing, when it does not apply: the put then takes the general path."""
        cdef Py_ssize_t slot = self.engine.slot_of(key)
        cdef int32_t g, k, n
        cdef char* base
        if (not self.replace_in_place or slot < 0 or size == 0 or self.n_rows or self.device_moves
                or self.slot_state[slot] != SLOT_PLACED):
            return False
        g = self.slot_segment[slot]
        if g < 0 or self.charge(self.engine.slots[slot].size) != self.charge(size):
            return False
        base = self.block_address[self.segs[g].block]
        if base == NULL:
            return False
        # Bytes a transfer in flight still writes here, or a transfer still reading the range:
        # wait for them, as the reuse of a segment does.
        if self.slot_ticket[slot] > self.done_ticket:
            self.settle(self.slot_ticket[slot])
        n = self.run_length(self.charge(size), self.segs[g].tier) if self.segs[g].state == SEG_RUN else 1
        for k in range(n):
            if self.seg_ticket[g + k] > self.done_ticket:
                self.settle(self.seg_ticket[g + k])
        if self.engine.op_replace(<uint32_t>slot, size) < 0:
            return False
        self.finish_run()       # a pending run may still write this range (a move of this entry)
        self.host_copy(base + self.slot_offset[slot], data, size)
        self.slot_wave[slot] = 0
        self.slot_ticket[slot] = 0
        if self.remote_fetched:
            self.remote_fetched.pop(key, None)      # changed: no longer clean
        self.puts_bytes += size
        return True

    cdef bint put_row(self, uint64_t key, Rows rows, Py_ssize_t i) except -1:
        """Insert row i of a checked batch under `key`; False when the policy declined it."""
        cdef int status = self.engine.op_insert(key, rows.length[i])
        if status < -1 and status != STATUS_DECLINED:
            self.engine.raise_status(status, key, rows.length[i], i)
        self.data = <const char*><size_t>rows.address[i]
        self.replay_checked()
        if status == STATUS_DECLINED:
            return False
        self.puts_bytes += rows.length[i]
        return True

    def read_many(self, keys, out):
        """Copy each present entry's bytes into ``out[i, :size]`` (a writable 2-D uint8 array,
        one row per key); rows of missing keys stay untouched.  The found mask.  Not an access."""
        key_array = batch_keys(keys)
        cdef const uint64_t* kv = <const uint64_t*>cnp.PyArray_DATA(<cnp.ndarray>key_array)
        cdef Py_ssize_t i, n = cnp.PyArray_DIM(<cnp.ndarray>key_array, 0), slot, row
        if not is_u8_matrix(out, True):
            raise ValueError("read_many() needs out as a writable 2-D C-contiguous uint8 array "
                             "(one row per key). Fix: pass np.empty((len(keys), row_bytes), np.uint8).")
        if cnp.PyArray_DIM(<cnp.ndarray>out, 0) != n:
            raise ValueError(f"read_many() got {n} keys but out has {out.shape[0]} rows. "
                             f"Fix: pass one row per key.")
        row = cnp.PyArray_DIM(<cnp.ndarray>out, 1)
        cdef char* base = <char*>cnp.PyArray_DATA(out)
        cdef cnp.ndarray found = new_array(n, cnp.NPY_BOOL)
        cdef uint8_t* mask = <uint8_t*>cnp.PyArray_DATA(found)
        if n:
            memset(mask, 0, n)
        cdef uint64_t size
        if self.remote is not None:
            missing = np.flatnonzero(~self.present_mask(key_array))
            if missing.size:
                self.from_remote(key_array[missing])
        self.enter_read()
        try:
            for i in range(n):
                slot = self.engine.slot_of(kv[i])
                if slot >= 0 and self.engine.slots[slot].size > <uint64_t>row:
                    raise ValueError(f"read_many(): key {kv[i]} (keys[{i}]) has "
                                     f"{self.engine.slots[slot].size} bytes but out's rows hold "
                                     f"{row}. Fix: pass rows of at least the largest entry's size.")
            for i in range(n):
                slot = self.engine.slot_of(kv[i])
                if slot < 0:
                    continue
                mask[i] = 1
                size = self.engine.slots[slot].size
                if size:
                    self.settle(self.slot_ticket[slot])
                    self.read_data(self.segs[self.slot_segment[slot]].block, self.slot_offset[slot],
                                   base + i * row, size)
        finally:
            self.leave_read()
        return found

    # -- explicit compaction -----------------------------------------------------------------

    def _compact_tier(self, int tier, max_bytes):
        """Clean the tier's emptiest segments into as few as they fit, until every closed one is
        dense or ``max_bytes`` were moved; (moves, bytes_moved, complete)."""
        cdef TierLog* log = &self.logs[tier]
        cdef uint64_t seg = log.segment_size, budget, moved = 0, c
        cdef int32_t v, dest = -1
        cdef uint32_t slot, following
        cdef Py_ssize_t moves = 0
        cdef bint complete = True
        budget = <uint64_t>-1 if max_bytes is None else max_bytes
        self.enter()
        try:
            self.close_head(tier)
            while True:
                v = self.emptiest(tier)
                if v < 0:
                    break
                if dest < 0 or self.segs[dest].fill + self.segs[v].live > seg:
                    # v's entries do not fit the survivor: start another, while the emptiest
                    # segments are at most half full (two of them then merge into one).
                    if log.n_free == 0 or 2 * self.segs[v].live > seg:
                        break
                    if dest >= 0:
                        self.segs[dest].state = SEG_CLOSED
                        self.relist(dest)
                    dest = self.pop_free(tier)
                    self.segs[dest].state = SEG_CLAIMED
                if moved >= budget:
                    complete = False
                    break
                self.unlist(v)
                self.segs[v].state = SEG_CLAIMED
                slot = self.segs[v].first
                while slot != VC_NIL:
                    following = self.slot_next[slot]
                    c = self.charge(self.engine.slots[slot].size)
                    self.move_range(slot, dest, self.segs[dest].offset + self.segs[dest].fill, c)
                    self.segs[dest].fill += c
                    moved += c
                    moves += 1
                    slot = following
                self.segs[v].state = SEG_CLOSED
                self.relist(v)
            if dest >= 0:
                self.open_head(tier, dest)
            self.counters[tier * STORAGE_COUNTER_N + STORAGE_COUNTER_COMPACTIONS] += 1
            self.counters[tier * STORAGE_COUNTER_N + STORAGE_COUNTER_COMPACTION_BYTES] += moved
        finally:
            self.leave()
        return moves, moved, complete

    # -- introspection -----------------------------------------------------------------------

    def _location_of(self, key):
        """(tier, StorageBlock or None, offset, size) of an entry's bytes now."""
        cdef uint64_t k = parse_u64(key, "key")
        cdef Py_ssize_t slot
        self.enter_read()
        try:
            slot = self.find(k)
            tier = self.engine.slots[slot].tier
            if self.slot_segment[slot] < 0:
                return tier, None, 0, self.engine.slots[slot].size
            return (tier, self.blocks[self.segs[self.slot_segment[slot]].block], self.slot_offset[slot],
                    self.engine.slots[slot].size)
        finally:
            self.leave_read()

    def _tier_memory(self, int tier):
        """Memory facts of one tier: memory, segment_size, segments, free_segments, live,
        free_bytes, ready_bytes (in free segments and the head's room: appendable without
        cleaning) and largest_free (free segments in a row, or the head's room)."""
        cdef TierLog* log = &self.logs[tier]
        cdef int32_t g, run = 0, best = 0
        cdef uint64_t head_room = 0
        for g in range(log.first_segment, log.first_segment + log.n_segments):
            if self.segs[g].state == SEG_FREE and (run == 0 or self.segs[g].block == self.segs[g - 1].block):
                run += 1
            elif self.segs[g].state == SEG_FREE:
                run = 1
            else:
                run = 0
            best = max(best, run)
        if log.head >= 0:
            head_room = log.segment_size - self.segs[log.head].fill
        return {"memory": log.memory, "segment_size": log.segment_size,
                "segments": log.n_segments, "free_segments": log.n_free, "live": log.live,
                "free_bytes": log.memory - log.live,
                "ready_bytes": <uint64_t>log.n_free * log.segment_size + head_room,
                "largest_free": max(<uint64_t>best * log.segment_size, head_room),
                "max_entry": log.max_entry}

    def _counters_of(self, int tier):
        return {name: self.counters[tier * STORAGE_COUNTER_N + index]
                for index, name in enumerate(STORAGE_COUNTER_NAMES)}

    def _reset_storage_counters(self):
        memset(self.counters, 0, max(self.n_tiers, 1) * STORAGE_COUNTER_N * sizeof(uint64_t))
        self.misses = 0
        self.puts_bytes = 0

    def lease(self, key, writable=False):
        """Pin the entry and return a Lease: its location, and zero-copy views of its bytes
        where the memory is mapped (use as ``with cache.lease(key) as lease:``)."""
        cdef uint64_t k = parse_u64(key, "key")
        cdef Py_ssize_t slot
        cdef char* address = NULL
        self.pin_key(k, 1)
        if self.remote_fetched and self.remote_fetched.get(k) is not LOCAL_ONLY:
            self.remote_fetched.pop(k, None)     # its bytes may be written in place: no longer clean
        slot = self.engine.slot_of(k)
        if self.slot_ticket[slot] > self.done_ticket:
            try:
                self.enter_read()
                try:
                    self.settle(self.slot_ticket[slot])    # a view must see the bytes in flight
                finally:
                    self.leave_read()
            except BaseException:
                self.pin_key(k, -1)
                raise
        if self.slot_segment[slot] >= 0 and self.block_address[self.segs[self.slot_segment[slot]].block] != NULL:
            address = self.block_address[self.segs[self.slot_segment[slot]].block] + self.slot_offset[slot]
        return _new_lease(self, key, writable, address, <Py_ssize_t>self.engine.slots[slot].size)

    def _close_storage(self):
        """Free every block (idempotent).  Raises CacheError when called from inside an operation,
        BufferError while views of leased entries exist."""
        if self.closed:
            return
        if self.exports:
            raise BufferError(f"{self.exports} view(s) of leased entries still exist, and closing "
                              f"would free the memory under them. Fix: drop or release them and end "
                              f"the leases first.")
        self.lock()
        try:
            if self.n_pending:
                # Close waits for the transfers in flight (the device must not free memory a
                # copy still uses) and completes them: their entries are unpinned.
                self.settle((<Transfer>self.pending[len(self.pending) - 1]).ticket)
                self.retire()
            self.closed = True
            if self.remote_fetched:
                self.remote_fetched.clear()
            self.release_blocks()
        finally:
            self.engine.release()

    def _check_storage(self):
        """Raise CacheError unless every entry's range lies in one segment of its tier, no two
        overlap, and every segment's live bytes, lists, histogram and free stack agree."""
        cdef Py_ssize_t slot
        cdef int32_t g
        cdef uint32_t s
        cdef TierLog* log
        cdef Segment* seg
        self.enter_read()
        try:
            seen = set()
            for tier in range(self.n_tiers):
                log = &self.logs[tier]
                live_sum = 0
                pinned_segments = 0
                g = log.free_top
                free_set = set()
                while g >= 0:
                    if g in free_set or self.segs[g].state != SEG_FREE:
                        raise CacheError(f"tier {tier}: free stack holds segment {g} in state "
                                         f"{self.segs[g].state} (or twice)")
                    free_set.add(g)
                    g = self.segs[g].link_next
                if len(free_set) != log.n_free:
                    raise CacheError(f"tier {tier}: {len(free_set)} free segments, counted {log.n_free}")
                for b in range(N_BUCKETS):
                    g = log.buckets[b]
                    if (g >= 0) != bool(log.bucket_bits >> b & 1):
                        raise CacheError(f"tier {tier}: bucket {b}'s bit disagrees with its list")
                    while g >= 0:
                        if self.segs[g].bucket != b or self.segs[g].state != SEG_CLOSED or self.segs[g].pinned:
                            raise CacheError(f"tier {tier}: segment {g} is listed in bucket {b} wrongly")
                        g = self.segs[g].link_next
                for g in range(log.first_segment, log.first_segment + log.n_segments):
                    seg = &self.segs[g]
                    if seg.state == SEG_FREE:
                        if g not in free_set or seg.first != VC_NIL:
                            raise CacheError(f"tier {tier}: free segment {g} is not free")
                        continue
                    if seg.state == SEG_CLAIMED:
                        raise CacheError(f"tier {tier}: segment {g} is left claimed")
                    if seg.state == SEG_OPEN and log.head != g:
                        raise CacheError(f"tier {tier}: segment {g} is open but not the head")
                    if seg.pinned:
                        pinned_segments += 1
                    if seg.state == SEG_RUN:
                        continue
                    if (seg.state == SEG_CLOSED and not seg.pinned
                            and seg.bucket != _bucket_of(seg.live, log.segment_size)):
                        raise CacheError(f"tier {tier}: closed segment {g} is not in its bucket")
                    total = 0
                    pins = 0
                    spans = []
                    s = seg.first
                    while s != VC_NIL:
                        if s in seen:
                            raise CacheError(f"slot {s} is listed twice")
                        seen.add(s)
                        if self.slot_segment[s] != g or self.engine.slots[s].tier != tier:
                            raise CacheError(f"slot {s} is listed in segment {g} of tier {tier} "
                                             f"but is in segment {self.slot_segment[s]} of tier "
                                             f"{self.engine.slots[s].tier}")
                        c = self.charge(self.engine.slots[s].size)
                        start = self.slot_offset[s] - seg.offset
                        if self.slot_offset[s] % self.alignment or start + c > seg.fill:
                            raise CacheError(f"slot {s}'s range leaves segment {g}'s filled part")
                        spans.append((start, c, s))
                        total += c
                        pins += self.slot_pinned[s]
                        s = self.slot_next[s]
                    spans.sort()
                    for (a, la, sa), (b2, lb, sb) in zip(spans, spans[1:]):
                        if a + la > b2:
                            raise CacheError(f"entries in slots {sa} and {sb} overlap in segment {g}")
                    if total != seg.live:
                        raise CacheError(f"segment {g}: entries hold {total} bytes, live says {seg.live}")
                    if pins != seg.pinned:
                        raise CacheError(f"segment {g}: {pins} pinned entries, counted {seg.pinned}")
                    live_sum += total
                for g in range(log.first_segment, log.first_segment + log.n_segments):
                    seg = &self.segs[g]
                    if seg.state == SEG_RUN and seg.first != VC_NIL and self.slot_segment[seg.first] == g:
                        s = seg.first
                        c = self.charge(self.engine.slots[s].size)
                        k = self.run_length(c, tier)
                        for j in range(g, g + k):
                            if self.segs[j].state != SEG_RUN or self.segs[j].block != seg.block:
                                raise CacheError(f"run of slot {s} at segment {g} is broken at {j}")
                        seen.add(s)
                        live_sum += c
                        if self.slot_segment[s] != g or self.engine.slots[s].tier != tier:
                            raise CacheError(f"run entry in slot {s} is misfiled")
                if live_sum != log.live:
                    raise CacheError(f"tier {tier}: entries hold {live_sum} bytes, live says {log.live}")
                if pinned_segments != log.n_pinned:
                    raise CacheError(f"tier {tier}: {pinned_segments} pinned segments, counted {log.n_pinned}")
            for slot in range(self.cap_slots):
                state = self.slot_state[slot]
                if state == SLOT_NONE:
                    continue
                if state != SLOT_PLACED:
                    raise CacheError("slot %d is left in state %d between operations" % (slot, state))
                if self.engine.slots[slot].tier < 0:
                    raise CacheError("slot %d holds bytes but the engine has no entry there" % slot)
                if self.slot_segment[slot] < 0:
                    if self.engine.slots[slot].size:
                        raise CacheError("slot %d has %d bytes but no segment" % (slot, self.engine.slots[slot].size))
                elif slot not in seen:
                    raise CacheError("slot %d is in no segment's list" % slot)
                if bool(self.slot_pinned[slot]) != bool(self.engine.slots[slot].pins):
                    raise CacheError("slot %d's pin state disagrees with the engine" % slot)
        finally:
            self.leave_read()


# --------------------------------------------------------------------------------------------
# Leases: an entry pinned for a block of code, with zero-copy views of its bytes

cdef extern from "dlpack.h":
    ctypedef struct vc_dl_device:
        int32_t device_type
        int32_t device_id
    ctypedef struct vc_dl_dtype:
        uint8_t code
        uint8_t bits
        uint16_t lanes
    ctypedef struct vc_dl_tensor:
        void* data
        vc_dl_device device
        int32_t ndim
        vc_dl_dtype dtype
        int64_t* shape
        int64_t* strides
        uint64_t byte_offset
    ctypedef struct vc_dl_managed:
        vc_dl_tensor dl_tensor
        void* manager_ctx
        void (*deleter)(vc_dl_managed*) noexcept nogil
    ctypedef struct vc_dl_version:
        uint32_t major
        uint32_t minor
    ctypedef struct vc_dl_managed_versioned:
        vc_dl_version version
        void* manager_ctx
        void (*deleter)(vc_dl_managed_versioned*) noexcept nogil
        uint64_t flags
        vc_dl_tensor dl_tensor
    int VC_DLPACK_MAJOR, VC_DLPACK_MINOR, VC_DL_CPU, VC_DL_UINT, VC_DLPACK_FLAG_READ_ONLY

from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.pycapsule cimport (PyCapsule_New, PyCapsule_IsValid, PyCapsule_GetPointer)

ctypedef struct DlpackExport:
    vc_dl_managed_versioned versioned
    vc_dl_managed legacy
    int64_t shape[1]


cdef void _export_done(void* context) noexcept nogil:
    with gil:
        lease = <Lease>context
        lease.exports -= 1
        lease.storage.exports -= 1
        Py_DECREF(lease)


cdef void _delete_versioned(vc_dl_managed_versioned* tensor) noexcept nogil:
    _export_done(tensor.manager_ctx)
    free(tensor)


cdef void _delete_legacy(vc_dl_managed* tensor) noexcept nogil:
    # The legacy struct sits inside a DlpackExport after its versioned twin.
    _export_done(tensor.manager_ctx)
    free(<char*>tensor - sizeof(vc_dl_managed_versioned))


cdef void _capsule_versioned(object capsule) noexcept:
    # A capsule no consumer took (its name unchanged) still owns its tensor.
    if PyCapsule_IsValid(capsule, b"dltensor_versioned"):
        tensor = <vc_dl_managed_versioned*>PyCapsule_GetPointer(capsule, b"dltensor_versioned")
        tensor.deleter(tensor)


cdef void _capsule_legacy(object capsule) noexcept:
    if PyCapsule_IsValid(capsule, b"dltensor"):
        tensor = <vc_dl_managed*>PyCapsule_GetPointer(capsule, b"dltensor")
        tensor.deleter(tensor)


cdef class Lease:
    """An entry pinned while the lease is held (``with cache.lease(key) as lease:``).

    ``location`` is where its bytes are (they do not move while leased).  Where the memory is
    mapped, the lease is a zero-copy view: the buffer protocol (``memoryview(lease)``,
    ``np.asarray(lease)``) and DLPack (``np.from_dlpack(lease)``), read-only unless leased
    with ``writable=True``.  Leaving the lease while a view still exists raises BufferError and
    keeps the entry pinned (release the views, then ``release()``); no view outlives it.
    """

    cdef readonly Storage storage
    cdef readonly object key
    cdef object where
    cdef readonly bint writable
    cdef readonly int exports
    cdef readonly bint active
    cdef char* address
    cdef Py_ssize_t size

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    @property
    def location(self):
        """The entry's BufferLocation (it does not change while the lease is held)."""
        if self.where is None:
            self.where = self.storage.location(self.key)
        return self.where

    def release(self):
        """Unpin the entry (idempotent); BufferError while views of it still exist."""
        if not self.active:
            return
        if self.exports:
            raise BufferError(f"the lease of key {self.key} still has {self.exports} view(s) of its "
                              f"bytes (memoryviews, arrays or DLPack tensors). Fix: drop or release "
                              f"them (del the array, memoryview.release()) before the lease ends.")
        self.active = False
        self.storage.pin_key(self.key, -1)

    cdef int require_view(self, bint writable) except -1:
        if not self.active:
            raise BufferError(f"the lease of key {self.key} has ended; its bytes may move or be "
                              f"freed. Fix: take views inside the `with cache.lease(key)` block.")
        if self.address == NULL and self.size:
            raise BufferError(f"key {self.key} lives in memory the CPU cannot map (device-only), so "
                              f"there is no CPU view. Fix: use lease.location with your own Vulkan "
                              f"code, or cache.read(key) for a copy.")
        if writable and not self.writable:
            raise BufferError(f"the lease of key {self.key} is read-only. Fix: "
                              f"cache.lease(key, writable=True) to write the entry's bytes in place.")
        return 0

    def __getbuffer__(self, Py_buffer* view, int flags):
        self.require_view(flags & PyBUF_WRITABLE)
        PyBuffer_FillInfo(view, self, self.address, self.size, not self.writable, flags)
        self.exports += 1
        self.storage.exports += 1

    def __releasebuffer__(self, Py_buffer* view):
        self.exports -= 1
        self.storage.exports -= 1

    def export_fd(self):
        """An ExportedMemory: an opaque fd of the memory holding the entry, its offset and size
        (Vulkan devices with VK_KHR_external_memory_fd).  The lease cannot end while it is open."""
        if not self.active:
            raise BufferError(f"the lease of key {self.key} has ended; its bytes may move or be "
                              f"freed. Fix: export inside the `with cache.lease(key)` block.")
        _, block, offset, size = self.storage._location_of(self.key)
        if block is None:
            raise BufferError(f"key {self.key} holds 0 bytes: there is no memory to export. "
                              f"Fix: export entries with at least one byte.")
        fd = self.storage.backend.export_fd(block)
        native = block.native
        try:
            exported = ExportedMemory(fd, offset, size, native.allocation_size, block.memory_type_index,
                                      self.storage.backend.device.device_uuid, self._end_export)
        except BaseException:
            os.close(fd)
            raise
        self.exports += 1
        self.storage.exports += 1
        return exported

    def _end_export(self):
        self.exports -= 1
        self.storage.exports -= 1

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """A DLPack capsule of the entry's bytes (a 1-D uint8 tensor in CPU memory)."""
        cdef DlpackExport* export
        cdef vc_dl_tensor* tensor
        if copy:
            raise BufferError("a lease is a zero-copy view. Fix: use cache.read(key) for a copy.")
        if dl_device is not None and tuple(dl_device) != (VC_DL_CPU, 0):
            raise BufferError(f"the entry is in CPU-mapped memory, not on device {dl_device}. "
                              f"Fix: ask for the device __dlpack_device__() reports.")
        versioned = max_version is not None and tuple(max_version)[0] >= 1
        if not versioned and not self.writable:
            raise BufferError("a read-only lease needs a DLPack 1.0 consumer, which can mark the "
                              "tensor read-only. Fix: cache.lease(key, writable=True), or use a "
                              "consumer that passes max_version (numpy >= 2.1).")
        self.require_view(False)
        export = <DlpackExport*>malloc(sizeof(DlpackExport))
        if export == NULL:
            raise MemoryError()
        export.shape[0] = self.size
        tensor = &export.versioned.dl_tensor if versioned else &export.legacy.dl_tensor
        tensor.data = self.address
        tensor.device.device_type = VC_DL_CPU
        tensor.device.device_id = 0
        tensor.ndim = 1
        tensor.dtype.code = VC_DL_UINT
        tensor.dtype.bits = 8
        tensor.dtype.lanes = 1
        tensor.shape = export.shape
        tensor.strides = NULL
        tensor.byte_offset = 0
        Py_INCREF(self)
        self.exports += 1
        self.storage.exports += 1
        if versioned:
            export.versioned.version.major = VC_DLPACK_MAJOR
            export.versioned.version.minor = VC_DLPACK_MINOR
            export.versioned.manager_ctx = <void*>self
            export.versioned.deleter = _delete_versioned
            export.versioned.flags = 0 if self.writable else VC_DLPACK_FLAG_READ_ONLY
            return PyCapsule_New(&export.versioned, b"dltensor_versioned", _capsule_versioned)
        export.legacy.manager_ctx = <void*>self
        export.legacy.deleter = _delete_legacy
        return PyCapsule_New(&export.legacy, b"dltensor", _capsule_legacy)

    def __dlpack_device__(self):
        return (VC_DL_CPU, 0)

    def __repr__(self):
        state = "active" if self.active else "ended"
        return f"<Lease key={self.key} {self.size} bytes {state}>"


cdef class Rows:
    """The bytes of a batch's entries: each one's address and length, with the buffers they
    come from held until the batch is done (released when the object goes)."""

    cdef object key_array           # the batch's keys, a contiguous uint64 array
    cdef const uint64_t* keys
    cdef Py_ssize_t n
    cdef uint64_t* address
    cdef uint64_t* length
    cdef Py_buffer* buffers
    cdef Py_ssize_t taken
    cdef Py_ssize_t stored          # rows put so far (what a part-way error reports)

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.taken):
            PyBuffer_Release(&self.buffers[i])
        free(self.buffers)
        free(self.address)

    cdef object part_way(self, object failure, Py_ssize_t n):
        """`failure` with `stored` set (and said in its message when some keys were stored)."""
        failure.stored = self.stored
        if self.stored:
            failure.args = (f"{failure.args[0]} ({self.stored} of {n} keys were stored before "
                            f"it; see the error's `stored`)",) + failure.args[1:]
        return failure


cdef Rows collect_rows(Storage storage, object keys, object data, object sizes, str call):
    """The batch's keys and the rows of `data` (a 2-D C-contiguous uint8 array, or one buffer
    per key), cut to `sizes`; every check of the input, before the batch changes anything."""
    cdef Rows rows = Rows.__new__(Rows)
    cdef Py_ssize_t i, row, n
    cdef uint64_t base
    rows.key_array = batch_keys(keys)
    rows.keys = <const uint64_t*>cnp.PyArray_DATA(<cnp.ndarray>rows.key_array)
    rows.n = n = cnp.PyArray_DIM(<cnp.ndarray>rows.key_array, 0)
    cdef const uint64_t* kv = rows.keys
    rows.address = <uint64_t*>malloc(max(n, 1) * 2 * sizeof(uint64_t))
    if rows.address == NULL:
        raise MemoryError()
    rows.length = rows.address + n
    if cnp.PyArray_Check(data):
        if not is_u8_matrix(data, False):
            raise ValueError(f"{call}() needs data as a 2-D C-contiguous uint8 array (one row per "
                             f"key), got shape {data.shape} of {data.dtype}. Fix: pass "
                             f"np.ascontiguousarray(rows, dtype=np.uint8), or a list of buffers.")
        if cnp.PyArray_DIM(<cnp.ndarray>data, 0) != n:
            raise ValueError(f"{call}() got {n} keys but {data.shape[0]} rows of data. "
                             f"Fix: pass one row per key.")
        row = cnp.PyArray_DIM(<cnp.ndarray>data, 1)
        base = <uint64_t><size_t>cnp.PyArray_DATA(data)
        for i in range(n):
            rows.address[i] = base + <uint64_t>(i * row)
            rows.length[i] = row
    else:
        items = data if type(data) is list else list(data)
        if len(items) != n:
            raise ValueError(f"{call}() got {n} keys but {len(items)} buffers. "
                             f"Fix: pass one buffer per key.")
        rows.buffers = <Py_buffer*>malloc(max(n, 1) * sizeof(Py_buffer))
        if rows.buffers == NULL:
            raise MemoryError()
        for i in range(n):
            storage.get_buffer(items[i], &rows.buffers[i])
            rows.taken += 1
            rows.address[i] = <uint64_t><size_t>rows.buffers[i].buf
            rows.length[i] = rows.buffers[i].len
    if sizes is not None:
        size_array = parse_u64_array(sizes, "sizes", n)
        for i in range(n):
            if size_array[i] > rows.length[i]:
                raise ValueError(f"sizes[{i}] is {size_array[i]} bytes but data for key "
                                 f"{kv[i]} holds {rows.length[i]}. Fix: pass sizes no larger "
                                 f"than the rows.")
            rows.length[i] = size_array[i]
    return rows


cdef object batch_keys(object keys):
    """parse_keys() with a fast path for what servers pass: a 1-D contiguous uint64 ndarray,
    used as it is (the general parser costs microseconds, which batches of a few keys feel)."""
    if (cnp.PyArray_CheckExact(keys) and cnp.PyArray_TYPE(<cnp.ndarray>keys) == cnp.NPY_UINT64
            and cnp.PyArray_NDIM(<cnp.ndarray>keys) == 1
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>keys)):
        return keys
    return parse_keys(keys)


cdef inline cnp.ndarray new_array(Py_ssize_t n, int typenum):
    """An uninitialised 1-D array through the C API (np.empty costs a Python call)."""
    cdef cnp.npy_intp length = n
    return cnp.PyArray_EMPTY(1, &length, typenum, 0)


cdef inline bint is_u8_matrix(object array, bint writable):
    """A 2-D C-contiguous uint8 ndarray (writable when asked)."""
    return (cnp.PyArray_Check(array) and cnp.PyArray_NDIM(<cnp.ndarray>array) == 2
            and cnp.PyArray_TYPE(<cnp.ndarray>array) == cnp.NPY_UINT8
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>array)
            and (not writable or cnp.PyArray_ISWRITEABLE(<cnp.ndarray>array)))


cdef str _batch_position(Py_ssize_t index):
    """" (keys[i])" for an error about the i-th key of a batch; "" for a single call (index -1).
    Built only when an error is raised: the checks run once per key of every batch."""
    return f" (keys[{index}])" if index >= 0 else ""


cdef Lease _new_lease(Storage storage, object key, bint writable, char* address, Py_ssize_t size):
    cdef Lease lease = Lease.__new__(Lease)
    lease.storage = storage
    lease.key = key
    lease.writable = writable
    lease.address = address
    lease.size = size
    lease.active = True
    return lease


# --------------------------------------------------------------------------------------------
# Transfers: promote_many / demote_many with wait=False

cdef bint _check_flag(object value, str call, str name, str fix) except -1:
    """A keyword that takes True or False (numpy's bools too); TypeError naming it otherwise."""
    if value is True or value is False or isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{call}({name}=...) takes True or False, got {value!r}. Fix: {fix}.")


cdef bint _check_wait(object wait, str call) except -1:
    return _check_flag(wait, call, "wait", "pass wait=False for a Transfer, or leave it out to "
                       "wait for the bytes")


cdef uint64_t _timeout_ns(object timeout) except? 0:
    """Nanoseconds of a wait() timeout in seconds (None: forever)."""
    if timeout is None:
        return <uint64_t>-1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)):
        raise TypeError(f"Transfer.wait(timeout) takes seconds as a number or None, got "
                        f"{timeout!r}. Fix: pass e.g. timeout=1.5, or None to wait until done.")
    seconds = float(timeout)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"Transfer.wait(timeout) needs a number of seconds >= 0, got {timeout!r}. "
                         f"Fix: pass 0 to poll, a positive number, or None to wait until done.")
    if seconds * 1e9 >= 1.8e19:
        return <uint64_t>-1
    return <uint64_t>(seconds * 1e9)


cdef class Transfer:
    """The bytes of one ``promote_many``/``demote_many(keys, wait=False)`` moving on the device.

    ``tiers`` is the int8 array the synchronous call returns (each key's tier afterwards, -1 when
    absent): the cache's metadata already says so.  Until the transfer completes its keys are
    pinned; reads, leases and later operations that touch bytes still in flight wait for them.
    ``done()`` and ``wait()`` complete it (its keys are unpinned) when the copies are finished;
    so does the first operation of the cache after they finish, and ``close()``, which waits.
    """

    cdef Storage storage
    cdef readonly object tiers
    cdef readonly uint64_t ticket
    cdef uint64_t fence
    cdef Py_ssize_t slot
    cdef object keys
    cdef bint signalled
    cdef bint finished

    def done(self):
        """True once the copies have finished (and the keys are unpinned); never blocks."""
        if self.finished:
            return True
        self.storage.lock()           # completes finished transfers
        self.storage.engine.release()
        return self.finished

    def wait(self, timeout=None):
        """Wait until the copies have finished, at most ``timeout`` seconds (None: as long as it
        takes, 0: just poll); True when the transfer is complete, False on time-out."""
        cdef uint64_t timeout_ns = _timeout_ns(timeout)
        if self.finished:
            return True
        self.storage.lock()
        try:
            if not self.finished:
                self.storage.wait_ticket(self.ticket, timeout_ns)
                self.storage.retire()
        finally:
            self.storage.engine.release()
        return self.finished

    def __repr__(self):
        state = "done" if self.finished else "in flight"
        return f"<Transfer of {len(self.tiers)} key(s) {state}>"


cdef Transfer _new_transfer(Storage storage, uint64_t ticket, uint64_t fence, Py_ssize_t slot,
                            object tiers, object keys):
    cdef Transfer transfer = Transfer.__new__(Transfer)
    transfer.storage = storage
    transfer.tiers = tiers
    transfer.ticket = ticket
    transfer.fence = fence
    transfer.slot = slot
    transfer.keys = keys
    transfer.finished = ticket == 0
    transfer.signalled = ticket == 0
    return transfer
