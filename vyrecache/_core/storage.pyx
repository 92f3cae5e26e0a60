# cython: boundscheck=False, wraparound=False, cdivision=True
"""The bytes behind the engine's metadata: blocks, placements, and the batch executor.

The engine decides which tier every key lives in and logs what it did
(docs/DESIGN.md, section 1).  ``Storage`` replays that log on real memory:

* every tier owns blocks (each with an ``Allocator``); blocks are numbered
  globally, tier by tier, so a tier's blocks are a contiguous range;
* per engine slot it remembers where the entry's bytes are (block, offset) and
  in which state they are (placed, lifted out of their tier, evacuated to host
  memory, or a new entry waiting for its bytes);
* copies of one operation form one batch.  When both ends are host-mapped and
  no device copy is pending, a copy is a memcpy done at once.  Otherwise it
  becomes a row of a copy table that the backend records into one command
  buffer and submits once.  Rows between two barriers never touch the same
  bytes: a freed source range is reused only after a barrier ("deferred free"),
  and a row that reads an entry written earlier in the same wave starts a new
  wave.

When a placement finds no hole, the executor first reuses deferred frees, then
evacuates entries lifted out of that tier (their bytes go to host memory until
their own placement), then compacts the tier, and only when none of that helps
(pinned entries or several blocks) evicts more of the tier's coldest entries.
"""

from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE
from cpython.long cimport PyLong_AsUnsignedLongLong
cimport numpy as cnp

cnp.import_array()

cdef extern from "Python.h":
    bint PyLong_CheckExact(object)

from vyrecache._core.allocator cimport Allocator, round_up
from vyrecache._core.engine cimport Engine, Event, EV_INSERT, EV_REMOVE, EV_EVICT, EV_LIFT, EV_PLACE

import threading

import numpy as np

from vyrecache.copytable import COPY_DTYPE
from vyrecache.errors import CacheClosedError, CacheError, KeyNotFoundError, KEY_NOT_FOUND_MESSAGE

cdef extern from "streamcopy.h":
    void vc_stream_copy(char* dst, const char* src, size_t n) nogil
    void vc_stream_fence() nogil

cdef extern from "hugepages.h":
    void vc_advise_huge_pages(void* start, size_t bytes) nogil

# Batches that move more than this stream their copies (about the last-level cache a core sees).
DEF STREAM_THRESHOLD = 4 << 20
STREAM_THRESHOLD_BYTES = STREAM_THRESHOLD      # also what a CPU compaction streams above

# Where an entry's bytes are.
cdef enum SlotState:
    S_NONE = 0        # no bytes (free slot, or an entry that left)
    S_PLACED = 1      # at (s_block, s_offset) in its tier
    S_LIFTED = 2      # still at (s_block, s_offset), but the engine moved it; a PLACE follows
    S_EVACUATED = 3   # bytes parked in host memory (self.evacuated[slot])
    S_NEW = 4         # a new entry waiting for its first placement

ctypedef struct CopyRow:
    uint32_t src_block
    uint32_t dst_block
    uint64_t src_offset
    uint64_t dst_offset
    uint64_t size

cdef enum StorageCounter:
    SC_COMPACTIONS = 0
    SC_COMPACTION_BYTES = 1
    SC_FRAGMENTATION_EVICTIONS = 2
    SC_EVACUATIONS = 3
    SC_N = 4

STORAGE_COUNTER_NAMES = ("compactions", "compaction_bytes", "fragmentation_evictions", "evacuations")


cdef class Storage:
    """Real memory for a buffer cache: one instance per cache, driven by its engine's events."""

    cdef Engine engine
    cdef object backend
    cdef readonly uint64_t alignment
    cdef readonly int n_tiers
    # Blocks, numbered globally and grouped by tier.
    cdef list blocks                 # StorageBlock per global block index
    cdef list allocators             # Allocator per global block index
    cdef list memories               # TierMemory per tier
    cdef char** b_addr               # mapped address, NULL when not host-visible
    cdef uint32_t* b_id              # the backend's block id (copy tables use it)
    cdef int32_t* tier_first         # first global block of each tier
    cdef int32_t* tier_count         # number of blocks of each tier
    cdef Py_ssize_t n_blocks
    # Per engine slot.
    cdef int32_t* s_block
    cdef uint64_t* s_offset
    cdef uint8_t* s_state
    cdef uint64_t* s_wave            # the wave that last wrote the entry's current range
    cdef Py_ssize_t cap_slots
    # The batch being built.
    cdef CopyRow* rows
    cdef Py_ssize_t n_rows
    cdef Py_ssize_t cap_rows
    cdef Py_ssize_t wave_first_row   # rows before it belong to earlier waves: never merged into
    cdef list wave_starts
    cdef uint64_t wave               # global, never reset: stale marks can never match
    cdef int32_t* d_block            # deferred frees
    cdef uint64_t* d_offset
    cdef uint64_t* d_size
    cdef Py_ssize_t n_deferred
    cdef Py_ssize_t cap_deferred
    cdef list unplaced               # slots whose placement waits for room
    cdef dict evacuated              # slot -> numpy copy of the bytes
    cdef public list evicted         # (key, size, tier) of the entries that left in this batch
    cdef public bint report_evictions
    cdef uint64_t* counters          # SC_N per tier
    cdef object compaction_hook      # callable(storage, tier, bytes) used for automatic compaction
    cdef public object lock          # the cache's one lock (an RLock): every operation holds it
    cdef bint closed
    cdef bint needs_staging          # some tier is not host-mapped: writes may need the staging buffer
    cdef set released                # blocks given back to the backend by compact(); empty allocators
    cdef bint device_copies          # move through copy tables even between mapped blocks
    cdef bint streaming              # this batch moves enough bytes to bypass the cache
    cdef public uint64_t stream_threshold
    # A run of CPU copies that continue each other on both sides, done as one memcpy:
    # promote_many of neighbouring entries into a fresh range becomes one large copy.
    cdef char* run_src
    cdef char* run_dst
    cdef size_t run_len

    def __cinit__(self):
        self.n_blocks = 0
        self.cap_slots = 0
        self.n_rows = 0
        self.cap_rows = 0
        self.n_deferred = 0
        self.cap_deferred = 0
        self.wave = 1

    def __init__(self, Engine engine, backend, memories, capacities):
        """Allocate every tier's blocks; on failure frees what was allocated and re-raises."""
        cdef int tier
        cdef uint64_t remaining, size, max_block
        self.engine = engine
        self.backend = backend
        self.alignment = backend.alignment
        self.n_tiers = len(memories)
        self.memories = list(memories)
        self.blocks = []
        self.allocators = []
        self.wave_starts = []
        self.unplaced = []
        self.evacuated = {}
        self.evicted = []
        self.released = set()
        self.report_evictions = False
        self.compaction_hook = None
        self.stream_threshold = STREAM_THRESHOLD
        # A backend may ask to treat every block as unmapped: copies through copy tables and
        # reads/writes through the backend, the discrete-GPU paths, testable on a UMA device.
        self.device_copies = bool(getattr(backend, "device_copies", False))
        max_block = backend.max_block_size // self.alignment * self.alignment
        self.tier_first = <int32_t*>realloc(NULL, max(self.n_tiers, 1) * sizeof(int32_t))
        self.tier_count = <int32_t*>realloc(NULL, max(self.n_tiers, 1) * sizeof(int32_t))
        self.counters = <uint64_t*>realloc(NULL, max(self.n_tiers, 1) * SC_N * sizeof(uint64_t))
        if self.tier_first == NULL or self.tier_count == NULL or self.counters == NULL:
            raise MemoryError()
        memset(self.counters, 0, max(self.n_tiers, 1) * SC_N * sizeof(uint64_t))
        try:
            for tier in range(self.n_tiers):
                self.tier_first[tier] = len(self.blocks)
                remaining = round_up(capacities[tier], self.alignment)
                while remaining:
                    size = min(remaining, max_block)
                    block = backend.allocate_block(self.memories[tier], size)
                    self.blocks.append(block)
                    self.allocators.append(Allocator(size, self.alignment))
                    remaining -= size
                self.tier_count[tier] = len(self.blocks) - self.tier_first[tier]
        except BaseException:
            self.release_blocks()
            raise
        self.n_blocks = len(self.blocks)
        self.needs_staging = any(not block.host_visible for block in self.blocks) or self.device_copies
        if self.needs_staging:
            # Take the staging memory now, at its full size (transfers larger than it go in
            # chunks): an operation then never allocates, so it cannot fail half-way for memory.
            try:
                backend.prepare_write(min(64 << 20, max(capacities)))
            except BaseException:
                self.release_blocks()
                raise
        self.lock = threading.RLock()
        self.b_addr = <char**>realloc(NULL, max(self.n_blocks, 1) * sizeof(char*))
        self.b_id = <uint32_t*>realloc(NULL, max(self.n_blocks, 1) * sizeof(uint32_t))
        if self.b_addr == NULL or self.b_id == NULL:
            self.release_blocks()
            raise MemoryError()
        for index, block in enumerate(self.blocks):
            if block.host_visible and not self.device_copies:
                self.b_addr[index] = <char*><size_t>block.address
                # Before the first touch, so the pages come huge: big copies through a block
                # otherwise miss the TLB every 4 KiB.
                vc_advise_huge_pages(self.b_addr[index], block.size)
            else:
                self.b_addr[index] = NULL
            self.b_id[index] = block.id

    def __dealloc__(self):
        free(self.b_addr); free(self.b_id); free(self.tier_first); free(self.tier_count)
        free(self.counters)
        free(self.s_block); free(self.s_offset); free(self.s_state); free(self.s_wave)
        free(self.rows)
        free(self.d_block); free(self.d_offset); free(self.d_size)

    def release_block(self, Py_ssize_t gb):
        """Give an empty block back to the backend until ``reacquire()`` (compact() empties them)."""
        if gb in self.released:
            return
        if (<Allocator>self.allocators[gb]).free_bytes != self.blocks[gb].size:
            raise CacheError("internal: block %d still holds entries and cannot be released" % gb)
        self.backend.free_block(self.blocks[gb])
        self.allocators[gb] = Allocator(0, self.alignment)
        self.b_addr[gb] = NULL
        self.released.add(gb)

    def is_released(self, Py_ssize_t gb):
        return gb in self.released

    def reacquire(self):
        """Take released blocks back; raises DeviceOutOfMemoryError (changing nothing) when it cannot."""
        cdef int tier
        for gb in sorted(self.released):
            tier = 0
            while not (self.tier_first[tier] <= gb < self.tier_first[tier] + self.tier_count[tier]):
                tier += 1
            size = self.blocks[gb].size
            block = self.backend.allocate_block(self.memories[tier], size)
            self.blocks[gb] = block
            self.allocators[gb] = Allocator(size, self.alignment)
            self.b_id[gb] = block.id
            if block.host_visible and not self.device_copies:
                self.b_addr[gb] = <char*><size_t>block.address
            self.released.discard(gb)

    def release_blocks(self):
        """Give every block back to the backend (idempotent); the storage is unusable afterwards."""
        blocks, self.blocks = self.blocks, []
        for block in blocks:
            self.backend.free_block(block)
        self.allocators = []
        self.n_blocks = 0

    # -- per-slot arrays ---------------------------------------------------------------------

    cdef int ensure_slots(self, Py_ssize_t needed) except -1:
        cdef Py_ssize_t cap = self.cap_slots if self.cap_slots else 1024
        if needed <= self.cap_slots:
            return 0
        while cap < needed:
            cap *= 2
        cdef void* p
        p = realloc(self.s_block, cap * sizeof(int32_t))
        if p == NULL: raise MemoryError()
        self.s_block = <int32_t*>p
        p = realloc(self.s_offset, cap * sizeof(uint64_t))
        if p == NULL: raise MemoryError()
        self.s_offset = <uint64_t*>p
        p = realloc(self.s_state, cap * sizeof(uint8_t))
        if p == NULL: raise MemoryError()
        self.s_state = <uint8_t*>p
        p = realloc(self.s_wave, cap * sizeof(uint64_t))
        if p == NULL: raise MemoryError()
        self.s_wave = <uint64_t*>p
        memset(&self.s_state[self.cap_slots], 0, (cap - self.cap_slots) * sizeof(uint8_t))
        memset(&self.s_wave[self.cap_slots], 0, (cap - self.cap_slots) * sizeof(uint64_t))
        self.cap_slots = cap
        return 0

    # -- allocation --------------------------------------------------------------------------

    cdef bint try_alloc(self, int tier, uint64_t size, int32_t* block_out, uint64_t* offset_out):
        cdef int32_t gb
        cdef int64_t offset
        cdef Allocator allocator
        for gb in range(self.tier_first[tier], self.tier_first[tier] + self.tier_count[tier]):
            allocator = <Allocator>self.allocators[gb]
            offset = allocator.alloc_c(size)
            if offset >= 0:
                block_out[0] = gb
                offset_out[0] = <uint64_t>offset
                return True
        return False

    cdef int free_range(self, int32_t gb, uint64_t offset, uint64_t size) except -1:
        """Free now when nothing on the device may still read the range, else after the next barrier."""
        cdef void* p
        if size == 0 or gb < 0:
            return 0
        if self.n_rows == 0:
            if (<Allocator>self.allocators[gb]).free_c(offset, size) != 0:
                raise CacheError("internal: freeing [%d, +%d) of block %d failed" % (offset, size, gb))
            return 0
        if self.n_deferred == self.cap_deferred:
            self.cap_deferred = self.cap_deferred * 2 if self.cap_deferred else 64
            p = realloc(self.d_block, self.cap_deferred * sizeof(int32_t))
            if p == NULL: raise MemoryError()
            self.d_block = <int32_t*>p
            p = realloc(self.d_offset, self.cap_deferred * sizeof(uint64_t))
            if p == NULL: raise MemoryError()
            self.d_offset = <uint64_t*>p
            p = realloc(self.d_size, self.cap_deferred * sizeof(uint64_t))
            if p == NULL: raise MemoryError()
            self.d_size = <uint64_t*>p
        self.d_block[self.n_deferred] = gb
        self.d_offset[self.n_deferred] = offset
        self.d_size[self.n_deferred] = size
        self.n_deferred += 1
        return 0

    cdef int release_deferred(self) except -1:
        """Start a new wave so that pending rows finish before freed ranges are written again."""
        cdef Py_ssize_t i
        if self.n_deferred == 0:
            return 0
        if self.n_rows:
            self.new_wave()
        for i in range(self.n_deferred):
            if (<Allocator>self.allocators[self.d_block[i]]).free_c(self.d_offset[i], self.d_size[i]) != 0:
                raise CacheError("internal: deferred free of block %d failed" % self.d_block[i])
        self.n_deferred = 0
        return 0

    cdef void new_wave(self):
        self.wave += 1
        self.wave_first_row = self.n_rows
        if self.n_rows:
            self.wave_starts.append(self.n_rows)

    # -- copies ------------------------------------------------------------------------------

    cdef int add_row(self, int32_t src, uint64_t src_offset, int32_t dst, uint64_t dst_offset,
                     uint64_t size) except -1:
        cdef void* p
        cdef CopyRow* last
        if self.n_rows > self.wave_first_row:
            # A row that continues the previous one on both sides joins it: a promote_many of
            # neighbours becomes a few large regions (drivers pay per region, NVIDIA heavily).
            last = &self.rows[self.n_rows - 1]
            if (last.src_block == self.b_id[src] and last.dst_block == self.b_id[dst]
                    and last.src_offset + last.size == src_offset
                    and last.dst_offset + last.size == dst_offset):
                last.size += size
                return 0
        if self.n_rows == self.cap_rows:
            self.cap_rows = self.cap_rows * 2 if self.cap_rows else 256
            p = realloc(self.rows, self.cap_rows * sizeof(CopyRow))
            if p == NULL: raise MemoryError()
            self.rows = <CopyRow*>p
        self.rows[self.n_rows].src_block = self.b_id[src]
        self.rows[self.n_rows].dst_block = self.b_id[dst]
        self.rows[self.n_rows].src_offset = src_offset
        self.rows[self.n_rows].dst_offset = dst_offset
        self.rows[self.n_rows].size = size
        self.n_rows += 1
        return 0

    cdef int flush(self) except -1:
        """Run the pending copy rows on the device and wait; then every deferred free is safe."""
        cdef Py_ssize_t i
        self.finish_run()
        if self.n_rows == 0:
            return 0
        table = np.empty(self.n_rows, dtype=COPY_DTYPE)
        cdef uint8_t[::1] raw = table.view(np.uint8)
        memcpy(&raw[0], self.rows, self.n_rows * sizeof(CopyRow))
        waves = [start for start in self.wave_starts if 0 < start < self.n_rows]
        self.n_rows = 0
        self.wave_first_row = 0
        self.wave_starts = []
        self.wave += 1
        try:
            self.backend.run_copies(table, waves)
        finally:
            for i in range(self.n_deferred):
                (<Allocator>self.allocators[self.d_block[i]]).free_c(self.d_offset[i], self.d_size[i])
            self.n_deferred = 0
        return 0

    cdef int move_bytes(self, Py_ssize_t slot, int32_t dst, uint64_t dst_offset, uint64_t size) except -1:
        """Copy a lifted entry's bytes to its new range and free the old one."""
        cdef int32_t src = self.s_block[slot]
        cdef uint64_t src_offset = self.s_offset[slot]
        if self.n_rows == 0 and self.b_addr[src] != NULL and self.b_addr[dst] != NULL:
            self.cpu_copy(self.b_addr[dst] + dst_offset, self.b_addr[src] + src_offset, size)
        else:
            if self.s_wave[slot] == self.wave:
                self.new_wave()      # read-after-write: the entry was written in this wave
            self.add_row(src, src_offset, dst, dst_offset, size)
        self.free_range(src, src_offset, size)
        self.s_wave[slot] = self.wave
        return 0

    cdef void cpu_copy(self, char* dst, const char* src, size_t size) noexcept:
        # Moves between tiers never share a block, so extending a run can never write bytes
        # that the run still has to read; anything else touching memory ends the run first.
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
        with nogil:
            if self.streaming and self.run_len >= 4096:
                vc_stream_copy(self.run_dst, self.run_src, self.run_len)
            else:
                memcpy(self.run_dst, self.run_src, self.run_len)
        self.run_len = 0

    cdef int write_host_bytes(self, int32_t gb, uint64_t offset, object data) except -1:
        """Write host bytes (a numpy array or memoryview) into a block, after pending copies."""
        cdef const uint8_t[::1] view
        if self.b_addr[gb] != NULL:
            self.flush()
            view = data
            if view.shape[0]:
                memcpy(self.b_addr[gb] + offset, &view[0], view.shape[0])
        else:
            self.flush()
            self.backend.write(self.blocks[gb], offset, memoryview(data))
        return 0

    # -- event replay ------------------------------------------------------------------------

    cdef int drop(self, Py_ssize_t slot) except -1:
        cdef uint8_t state = self.s_state[slot]
        if state == S_PLACED or state == S_LIFTED or state == S_NEW:
            self.free_range(self.s_block[slot], self.s_offset[slot],
                            self.engine.slots[slot].size)
        elif state == S_EVACUATED:
            self.evacuated.pop(slot, None)
        if state == S_LIFTED or state == S_EVACUATED or state == S_NEW:
            if slot in self.unplaced:
                self.unplaced.remove(slot)
        self.s_state[slot] = S_NONE
        return 0

    cdef bint place(self, Py_ssize_t slot, int tier, uint64_t size) except -1:
        """Give a new or lifted entry its range in ``tier``; False when no room could be found yet."""
        cdef int32_t gb = -1
        cdef uint64_t offset = 0
        cdef uint8_t state = self.s_state[slot]
        if size == 0:
            self.s_block[slot] = -1
            self.s_offset[slot] = 0
            self.s_state[slot] = S_PLACED
            return True
        if not self.find_room(tier, size, &gb, &offset):
            return False
        state = self.s_state[slot]          # find_room may have evacuated this very entry
        if state == S_LIFTED or state == S_PLACED:
            self.move_bytes(slot, gb, offset, size)
        elif state == S_EVACUATED:
            self.write_host_bytes(gb, offset, self.evacuated.pop(slot))
            self.s_wave[slot] = self.wave
        self.s_block[slot] = gb
        self.s_offset[slot] = offset
        self.s_state[slot] = S_PLACED if state != S_NEW else S_NEW
        return True

    cdef bint find_room(self, int tier, uint64_t size, int32_t* gb, uint64_t* offset) except -1:
        if self.try_alloc(tier, size, gb, offset):
            return True
        if self.n_deferred:
            self.release_deferred()
            if self.try_alloc(tier, size, gb, offset):
                return True
        if self.evacuate_lifted(tier) and self.try_alloc(tier, size, gb, offset):
            return True
        if self.compaction_hook is not None and self.free_bytes(tier) >= round_up(size, self.alignment):
            self.flush()
            self.compaction_hook(self, tier, round_up(size, self.alignment))
            if self.try_alloc(tier, size, gb, offset):
                return True
        return False

    cdef bint evacuate_lifted(self, int tier) except -1:
        """Park the bytes of entries lifted out of ``tier`` in host memory, freeing their ranges."""
        cdef Py_ssize_t slot
        cdef int32_t gb
        cdef bint any_moved = False
        cdef uint64_t size
        candidates = []
        for slot in range(self.cap_slots):
            if self.s_state[slot] == S_LIFTED:
                gb = self.s_block[slot]
                if gb >= 0 and self.tier_first[tier] <= gb < self.tier_first[tier] + self.tier_count[tier]:
                    candidates.append(slot)
        if not candidates:
            return False
        self.flush()
        for slot in candidates:
            gb = self.s_block[slot]
            size = self.engine.slots[slot].size
            parked = np.empty(size, dtype=np.uint8)
            self.read_bytes(gb, self.s_offset[slot], parked)
            self.evacuated[slot] = parked
            self.free_range(gb, self.s_offset[slot], size)
            self.s_state[slot] = S_EVACUATED
            self.counters[tier * SC_N + SC_EVACUATIONS] += 1
            any_moved = True
        return any_moved

    cdef int read_bytes(self, int32_t gb, uint64_t offset, object out) except -1:
        cdef uint8_t[::1] view = out
        self.finish_run()
        if view.shape[0] == 0:
            return 0
        if self.b_addr[gb] != NULL:
            memcpy(&view[0], self.b_addr[gb] + offset, view.shape[0])
        else:
            self.backend.read_into(self.blocks[gb], offset, memoryview(out))
        return 0

    cdef int apply_events(self) except -1:
        """Replay the engine's event log of the last operation on the memory."""
        cdef Py_ssize_t i = 0
        cdef Event* ev
        cdef uint64_t victim
        cdef int tier
        cdef uint64_t moving = 0
        self.evicted = []
        for i in range(self.engine.n_events):
            if self.engine.events[i].kind == EV_PLACE:
                moving += self.engine.events[i].size
        self.streaming = moving > self.stream_threshold
        i = 0
        while True:
            while i < self.engine.n_events:
                ev = &self.engine.events[i]
                i += 1
                self.ensure_slots(ev.slot + 1)
                if ev.kind == EV_REMOVE or ev.kind == EV_EVICT:
                    self.drop(ev.slot)
                    if ev.kind == EV_EVICT and self.report_evictions:
                        self.evicted.append((ev.key, ev.size, ev.src_tier))
                elif ev.kind == EV_LIFT:
                    if self.s_state[ev.slot] == S_PLACED:
                        self.s_state[ev.slot] = S_LIFTED
                elif ev.kind == EV_INSERT:
                    self.s_state[ev.slot] = S_NEW
                    self.s_block[ev.slot] = -1
                    if not self.place(ev.slot, ev.dst_tier, ev.size):
                        self.unplaced.append(ev.slot)
                elif ev.kind == EV_PLACE:
                    if not self.place(ev.slot, ev.dst_tier, ev.size):
                        self.unplaced.append(ev.slot)
            if not self.unplaced:
                break
            # Room may have appeared since (later events freed ranges); else make it.
            for slot in list(self.unplaced):
                if self.place(slot, self.engine.slots[slot].tier, self.engine.slots[slot].size):
                    self.unplaced.remove(slot)
            if not self.unplaced:
                break
            tier = self.engine.slots[self.unplaced[0]].tier
            self.flush()
            self.release_deferred()
            self.engine.acquire()
            try:
                found = self.engine.evict_for_room(tier, &victim)
            finally:
                self.engine.release()
            if found <= 0:
                raise CacheError("internal: no room in tier %d for %d bytes and nothing left to evict"
                                 % (tier, self.engine.slots[self.unplaced[0]].size))
            self.counters[tier * SC_N + SC_FRAGMENTATION_EVICTIONS] += 1
        self.flush()
        if self.streaming:
            vc_stream_fence()   # streaming stores are weakly ordered: publish them before returning
            self.streaming = False
        # Consumed: a call that changes nothing (and so leaves the log alone) must not replay it.
        self.engine.n_events = 0
        return 0

    # -- public operations (called by BufferCache) ---------------------------------------------

    def replay(self):
        """Apply the engine's last event log; returns the evicted (key, size, tier) tuples."""
        self.apply_events()
        return self.evicted

    def put(self, key, data):
        """Store ``data`` under ``key``: engine insert, event replay, byte write, one lock.

        Returns the evicted (key, size, tier) tuples for the caller's on_evict.
        """
        cdef Py_buffer buffer
        cdef Py_ssize_t slot
        cdef int32_t gb
        try:
            PyObject_GetBuffer(data, &buffer, PyBUF_C_CONTIGUOUS)
        except TypeError:
            raise TypeError("put() needs a buffer (bytes, bytearray, numpy array, memoryview), got %s. "
                            "Fix: pass np.asarray(data) or bytes(data)." % type(data).__name__) from None
        except (BufferError, ValueError):
            raise ValueError("put() needs C-contiguous data, got a strided %s. "
                             "Fix: pass np.ascontiguousarray(data)." % type(data).__name__) from None
        try:
            self.lock.acquire()
            try:
                self.require_open()
                if self.released:
                    self.reacquire()
                try:
                    self.engine.insert(key, buffer.len)
                finally:
                    self.apply_events()     # an insert that raised changed nothing: no events
                slot = self.engine.slot_of(self.native_key(key))
                if slot >= 0:   # absent only if room had to be made by evicting it again
                    gb = self.s_block[slot]
                    if buffer.len and gb >= 0:
                        if self.b_addr[gb] != NULL:
                            memcpy(self.b_addr[gb] + self.s_offset[slot], buffer.buf, buffer.len)
                        else:
                            self.backend.write(self.blocks[gb], self.s_offset[slot], memoryview(data).cast("B"))
                    self.s_state[slot] = S_PLACED
                    self.s_wave[slot] = self.wave
                return self.evicted
            finally:
                self.lock.release()
        finally:
            PyBuffer_Release(&buffer)

    def read(self, key):
        """A new uint8 array with the entry's bytes."""
        cdef Py_ssize_t slot
        cdef int32_t gb
        cdef cnp.npy_intp size
        self.lock.acquire()
        try:
            self.require_open()
            slot = self.find(key)
            size = <cnp.npy_intp>self.engine.slots[slot].size
            out = cnp.PyArray_EMPTY(1, &size, cnp.NPY_UINT8, 0)
            gb = self.s_block[slot]
            if size and gb >= 0:
                if self.b_addr[gb] != NULL:
                    memcpy(cnp.PyArray_DATA(out), self.b_addr[gb] + self.s_offset[slot], size)
                else:
                    self.backend.read_into(self.blocks[gb], self.s_offset[slot], memoryview(out))
            return out
        finally:
            self.lock.release()

    def read_into(self, key, out):
        """Copy the entry's bytes into ``out``, a writable C-contiguous buffer of exactly its size."""
        cdef Py_buffer buffer
        cdef Py_ssize_t slot
        cdef int32_t gb
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
            self.lock.acquire()
            try:
                self.require_open()
                slot = self.find(key)
                size = self.engine.slots[slot].size
                if <uint64_t>buffer.len != size:
                    raise ValueError("read_into(%r): the entry has %d bytes but out has %d. "
                                     "Fix: pass a buffer of exactly %d bytes (cache.get(key).size)."
                                     % (key, size, buffer.len, size))
                gb = self.s_block[slot]
                if size and gb >= 0:
                    if self.b_addr[gb] != NULL:
                        memcpy(buffer.buf, self.b_addr[gb] + self.s_offset[slot], size)
                    else:
                        self.backend.read_into(self.blocks[gb], self.s_offset[slot], memoryview(out).cast("B"))
            finally:
                self.lock.release()
        finally:
            PyBuffer_Release(&buffer)

    cdef uint64_t native_key(self, object key) except? 0xFFFFFFFFFFFFFFFF:
        cdef uint64_t value
        if PyLong_CheckExact(key):
            value = PyLong_AsUnsignedLongLong(key)    # raises OverflowError out of range
            return value
        return self.slow_key(key)

    cdef Py_ssize_t find(self, object key) except -1:
        cdef uint64_t native
        try:
            native = self.native_key(key)
        except OverflowError:
            native = self.slow_key(key)      # raises the explained ValueError
        cdef Py_ssize_t slot = self.engine.slot_of(native)
        if slot < 0:
            raise KeyNotFoundError(KEY_NOT_FOUND_MESSAGE + " (key %r)" % (key,))
        return slot

    cdef inline int require_open(self) except -1:
        if self.closed:
            raise CacheClosedError("this BufferCache is closed and its memory was freed. "
                                   "Fix: create a new BufferCache.")
        return 0

    def close(self):
        """Mark closed and free every block (idempotent)."""
        self.lock.acquire()
        try:
            self.closed = True
            self.release_blocks()
        finally:
            self.lock.release()

    def slot_of(self, key):
        """The engine slot holding ``key``; raises KeyNotFoundError (bad keys: TypeError/ValueError)."""
        return self.find(key)

    cdef uint64_t slow_key(self, object key) except? 0xFFFFFFFFFFFFFFFF:
        cdef uint64_t native
        if type(key) is bool or not hasattr(type(key), "__index__"):
            raise TypeError("key must be an int in [0, 2**64), got %r (%s). Fix: pass a non-negative int."
                            % (key, type(key).__name__))
        value = key.__index__()
        if value < 0 or value > 0xFFFFFFFFFFFFFFFF:
            raise ValueError("key must be in [0, 2**64), got %r. Fix: map keys into 64 bits (e.g. hash & (2**64-1))."
                             % (key,))
        native = value
        return native

    def slot_size(self, Py_ssize_t slot):
        return self.engine.slots[slot].size

    def slot_location(self, Py_ssize_t slot):
        """(global block index, offset) of a placed entry; block -1 for a zero-size entry."""
        return self.s_block[slot], self.s_offset[slot]

    def block(self, Py_ssize_t gb):
        return self.blocks[gb]

    def tier_blocks(self, int tier):
        """Global indices of the tier's blocks."""
        return range(self.tier_first[tier], self.tier_first[tier] + self.tier_count[tier])

    def allocator(self, Py_ssize_t gb):
        return self.allocators[gb]

    def free_bytes(self, int tier):
        cdef uint64_t total = 0
        for gb in range(self.tier_first[tier], self.tier_first[tier] + self.tier_count[tier]):
            total += (<Allocator>self.allocators[gb]).free_bytes
        return total

    def largest_free(self, int tier):
        cdef uint64_t best = 0
        for gb in range(self.tier_first[tier], self.tier_first[tier] + self.tier_count[tier]):
            best = max(best, (<Allocator>self.allocators[gb]).largest_free_c())
        return best

    def live_in_block(self, Py_ssize_t gb):
        """The entries whose bytes are in block ``gb``: arrays (slots, offsets, sizes, pinned), by offset."""
        slots = []
        for slot in range(self.cap_slots):
            # A new entry's range counts as live too: its bytes are written once the batch is done.
            if self.s_block[slot] == gb and (self.s_state[slot] == S_PLACED or self.s_state[slot] == S_LIFTED
                                             or self.s_state[slot] == S_NEW):
                slots.append(slot)
        slots_arr = np.array(slots, dtype=np.int64)
        offsets = np.array([self.s_offset[s] for s in slots], dtype=np.uint64)
        sizes = np.array([self.engine.slots[s].size for s in slots], dtype=np.uint64)
        pinned = np.array([self.engine.slots[s].pins > 0 for s in slots], dtype=bool)
        order = np.argsort(offsets, kind="stable")
        return slots_arr[order], offsets[order], sizes[order], pinned[order]

    def set_locations(self, slots, blocks, offsets):
        """Record where a compaction put the entries (global block indices and offsets)."""
        for slot, gb, offset in zip(slots, blocks, offsets):
            self.s_block[<Py_ssize_t>slot] = <int32_t>gb
            self.s_offset[<Py_ssize_t>slot] = <uint64_t>offset

    def add_counter(self, int tier, str name, uint64_t amount):
        self.counters[tier * SC_N + STORAGE_COUNTER_NAMES.index(name)] += amount

    def counters_of(self, int tier):
        return {name: self.counters[tier * SC_N + index] for index, name in enumerate(STORAGE_COUNTER_NAMES)}

    def reset_counters(self):
        memset(self.counters, 0, max(self.n_tiers, 1) * SC_N * sizeof(uint64_t))

    def set_compaction_hook(self, hook):
        self.compaction_hook = hook

    def check(self):
        """Raise CacheError unless every live entry has a range that no other entry overlaps."""
        cdef Py_ssize_t slot
        ranges = {}
        for slot in range(self.cap_slots):
            state = self.s_state[slot]
            if state == S_NONE:
                continue
            if state != S_PLACED:
                raise CacheError("slot %d is left in state %d between operations" % (slot, state))
            if self.engine.slots[slot].tier < 0:
                raise CacheError("slot %d holds bytes but the engine has no entry there" % slot)
            gb = self.s_block[slot]
            if gb < 0:
                if self.engine.slots[slot].size:
                    raise CacheError("slot %d has %d bytes but no block" % (slot, self.engine.slots[slot].size))
                continue
            tier = self.engine.slots[slot].tier
            if not (self.tier_first[tier] <= gb < self.tier_first[tier] + self.tier_count[tier]):
                raise CacheError("entry %d of tier %d has its bytes in block %d of another tier"
                                 % (self.engine.slots[slot].key, tier, gb))
            ranges.setdefault(gb, []).append((self.s_offset[slot],
                                              round_up(self.engine.slots[slot].size, self.alignment), slot))
        for gb, spans in ranges.items():
            spans.sort()
            used = 0
            for (start, length, slot), following in zip(spans, spans[1:] + [None]):
                if start % self.alignment or start + length > self.blocks[gb].size:
                    raise CacheError("entry in slot %d has a misaligned or out-of-block range" % slot)
                if following is not None and start + length > following[0]:
                    raise CacheError("entries in slots %d and %d overlap in block %d" % (slot, following[2], gb))
                used += length
            allocator = <Allocator>self.allocators[gb]
            allocator.check()
            if used + allocator.free_bytes != self.blocks[gb].size:
                raise CacheError("block %d: %d bytes live + %d free != %d"
                                 % (gb, used, allocator.free_bytes, self.blocks[gb].size))
        for gb in range(self.n_blocks):
            if gb in self.released:
                if gb in ranges:
                    raise CacheError("block %d was released but holds entries" % gb)
                continue
            if gb not in ranges and (<Allocator>self.allocators[gb]).free_bytes != self.blocks[gb].size:
                raise CacheError("block %d holds no entry but is not entirely free" % gb)
