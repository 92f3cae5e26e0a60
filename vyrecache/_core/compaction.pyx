# cython: boundscheck=False, wraparound=False, cdivision=True
"""Compaction planner: which bytes move where, in which order.

A block after many evictions::

    before   [A ][  ][B     ][  ][P (pinned)][C ][   ][D    ]
    after    [A ][B     ][C ][  ][P (pinned)][D    ][        ]

Live unpinned entries slide toward the block start in offset order; pinned entries never move,
and the gap left in front of a pin is filled first-fit by later entries that fit in it.  An entry
moves only if it ends up lower, so every copy goes downward.  With ``plan_tier`` whole blocks
whose entries all fit into the other blocks' free space are emptied instead, so that the storage
layer can release them.

Each move is cut into chunks of at most 64 KiB (one compute workgroup each, see
``shaders/compact_copy.comp``).  A chunk copies ``round_up(size, 16)`` bytes: the padding up to
the next 16 bytes belongs to the entry's aligned range, so nothing else lives there.

Waves.  A chunk whose destination overlaps the source of another chunk must not run until that
source has been read, so it goes into a later wave; within one wave no chunk's destination
overlaps any other chunk's source or destination, so a wave is one parallel dispatch (or one
sequence of memmoves in any order).  A chunk may overlap itself: the shader reads all of it before
writing.  Because every copy goes downward, a chunk can only wait for chunks with lower sources:
the dependencies form a DAG, and a chunk's wave is one more than the highest wave of the chunks it
waits for (found with a range-max segment tree over chunks sorted by source).
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memmove

from vyrecache._core.allocator cimport round_up

import numpy as np

__all__ = ["CHUNK_DTYPE", "FREE_RANGE_DTYPE", "MAX_CHUNK_BYTES", "CompactionPlan", "plan_block",
           "plan_tier", "execute_on_host"]

CHUNK_DTYPE = np.dtype([("src_block", "<u4"), ("dst_block", "<u4"),
                        ("src_offset", "<u8"), ("dst_offset", "<u8"),
                        ("size", "<u4"), ("wave", "<u4")])
FREE_RANGE_DTYPE = np.dtype([("offset", "<u8"), ("size", "<u8")])

cdef extern from "chunkcopy.h":
    ctypedef struct vc_chunk:     # Chunk's layout (asserted below)
        pass
    void vc_copy_plan(char** bases, const vc_chunk* chunks, const int64_t* wave_starts, size_t waves,
                      int threads) nogil
    const int MAX_COPY_THREADS "VC_MAX_COPY_THREADS"

cdef enum:
    # 4096 16-byte elements: what one 256-invocation workgroup holds in registers (16 each).
    CHUNK_BYTES = 65536
    # Source/destination keys put the block number above the offset: blocks are under 1 TiB.
    KEY_SHIFT = 40

cdef uint64_t NO_BUDGET = 0xFFFFFFFFFFFFFFFF
MAX_CHUNK_BYTES = CHUNK_BYTES

assert CHUNK_DTYPE.itemsize == sizeof(Chunk) == sizeof(vc_chunk)


cdef class CompactionPlan:
    """The result of ``plan_block`` or ``plan_tier``; read-only.

    Attributes:
        chunks: ndarray of ``CHUNK_DTYPE`` (src_block, dst_block, src_offset, dst_offset, size,
            wave), sorted by wave and, within a wave, by source.  Block numbers index the blocks
            given to the planner; offsets and sizes are bytes, multiples of 16, size <= 64 KiB.
        wave_starts: int64 array; chunks of wave ``w`` are ``chunks[wave_starts[w]:wave_starts[w+1]]``.
        waves: number of waves.
        new_offsets / new_blocks: per input block, the offset and block of every input entry after
            the plan (unchanged for entries that do not move).
        free_ranges: per block, ndarray of ``FREE_RANGE_DTYPE`` (offset, size): the block's free
            space after the plan, each entry occupying ``round_up(size, alignment)`` bytes;
            sorted, aligned, never adjacent (what ``Allocator.reset`` takes).
        emptied_blocks: blocks that held entries and hold none after the plan (release them).
        moves: entries that move; bytes_moved: the sum of their sizes.
        complete: False when ``max_bytes`` stopped the pass before every possible move.
    """

    def __init__(self):
        raise TypeError("CompactionPlan is built by plan_block() or plan_tier(). "
                        "Fix: call one of those.")

    @property
    def waves(self):
        return len(self.wave_starts) - 1

    @property
    def chunk_bytes(self):
        """Bytes the chunks copy (entry sizes rounded up to 16)."""
        return int(self.chunks["size"].sum(dtype=np.uint64))

    def wave(self, Py_ssize_t index):
        """The chunks of wave ``index`` (a view of ``chunks``)."""
        return self.chunks[self.wave_starts[index]:self.wave_starts[index + 1]]

    def __repr__(self):
        return ("CompactionPlan(blocks=%d, moves=%d, bytes_moved=%d, chunks=%d, waves=%d, "
                "emptied_blocks=%r, complete=%s)"
                % (len(self.block_sizes), self.moves, self.bytes_moved, len(self.chunks), self.waves,
                   self.emptied_blocks, self.complete))


# ----------------------------------------------------------------------------------------------
# Sliding one block


cdef uint64_t _slide(const uint64_t* offsets, const uint64_t* sizes, const uint8_t* pinned,
                     Py_ssize_t n, uint64_t alignment, uint64_t budget, uint64_t* new_offsets,
                     uint64_t* holes, bint* stopped) noexcept nogil:
    """Slide one block's entries down; returns the bytes moved (sum of sizes of moved entries).

    ``holes`` is scratch for 2 * (number of pins + 1) values: the gaps left in front of pins,
    [start, end) pairs, filled first-fit by later entries.
    """
    cdef uint64_t cursor = 0, moved = 0, length, position
    cdef Py_ssize_t i, h, n_holes = 0, taken
    stopped[0] = False
    for i in range(n):
        length = round_up(sizes[i], alignment)
        new_offsets[i] = offsets[i]
        if length == 0:
            continue  # a zero-byte entry occupies nothing and never moves
        if pinned[i] or stopped[0]:
            if pinned[i] and offsets[i] > cursor:
                holes[2 * n_holes] = cursor
                holes[2 * n_holes + 1] = offsets[i]
                n_holes += 1
            cursor = offsets[i] + length
            continue
        taken = -1
        for h in range(n_holes):
            if holes[2 * h + 1] - holes[2 * h] >= length:
                taken = h
                break
        position = holes[2 * taken] if taken >= 0 else cursor
        if position >= offsets[i]:
            # Only reached from the cursor, which never passes an entry's own offset.
            cursor = offsets[i] + length
            continue
        if moved + sizes[i] > budget:
            stopped[0] = True
            cursor = offsets[i] + length
            continue
        new_offsets[i] = position
        moved += sizes[i]
        if taken >= 0:
            holes[2 * taken] += length
        else:
            cursor = position + length
    return moved


# ----------------------------------------------------------------------------------------------
# Waves


cdef inline void _tree_set(int32_t* tree, Py_ssize_t leaves, Py_ssize_t index,
                           int32_t value) noexcept nogil:
    index += leaves
    tree[index] = value
    index >>= 1
    while index >= 1:
        tree[index] = tree[2 * index] if tree[2 * index] > tree[2 * index + 1] else tree[2 * index + 1]
        index >>= 1


cdef inline int32_t _tree_max(const int32_t* tree, Py_ssize_t leaves, Py_ssize_t lo,
                              Py_ssize_t hi) noexcept nogil:
    """Max over leaves [lo, hi); -1 when empty."""
    cdef int32_t best = -1
    lo += leaves
    hi += leaves
    while lo < hi:
        if lo & 1:
            if tree[lo] > best:
                best = tree[lo]
            lo += 1
        if hi & 1:
            hi -= 1
            if tree[hi] > best:
                best = tree[hi]
        lo >>= 1
        hi >>= 1
    return best


cdef inline Py_ssize_t _first_at_least(const uint64_t* keys, Py_ssize_t n, uint64_t value,
                                       Py_ssize_t hint) noexcept nogil:
    """The first index whose key is >= value in ascending ``keys`` (n when none), searched
    outward from ``hint``: consecutive chunks' destinations are mostly ascending, so the
    answer is usually a step or two from the last one, where a plain binary search would take
    log2(n) unpredictable branches (most of the planning time for 32,768 chunks)."""
    cdef Py_ssize_t lo, hi, probe, step = 1, mid
    if hint > n:
        hint = n
    if hint < n and keys[hint] < value:          # the answer lies above the hint
        lo = hint + 1
        while True:
            probe = hint + step
            if probe >= n:
                hi = n
                break
            if keys[probe] >= value:
                hi = probe
                break
            lo = probe + 1
            step <<= 1
    else:                                        # at or below the hint
        hi = hint
        while True:
            probe = hint - step
            if probe < 0:
                lo = 0
                break
            if keys[probe] < value:
                lo = probe + 1
                break
            hi = probe
            step <<= 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef tuple _sorted_by_wave(const Chunk[::1] chunks, Py_ssize_t count):
    """The chunks in wave order (stable: by source within a wave) and the wave starts: a
    counting sort, since waves are small integers below the chunk count."""
    cdef Py_ssize_t i, n_waves = 0
    for i in range(count):
        if chunks[i].wave + 1 > n_waves:
            n_waves = chunks[i].wave + 1
    wave_starts = np.zeros(n_waves + 1, dtype=np.int64)
    ordered = np.empty(count, dtype=CHUNK_DTYPE)
    cdef int64_t[::1] starts = wave_starts
    cdef Chunk[::1] out = ordered
    with nogil:
        for i in range(count):
            starts[chunks[i].wave + 1] += 1
        for i in range(n_waves):
            starts[i + 1] += starts[i]
    cdef int64_t[::1] cursor = wave_starts.copy()      # the next free place in each wave
    with nogil:
        for i in range(count):
            out[cursor[chunks[i].wave]] = chunks[i]
            cursor[chunks[i].wave] += 1
    return ordered, wave_starts


cdef int _assign_waves(Chunk* chunks, Py_ssize_t n, const uint8_t* cross) noexcept nogil:
    """Set ``chunks[i].wave``; chunks must be sorted by source (block, offset), sources disjoint.

    In-block chunks only wait for in-block chunks with lower sources; cross-block chunks read
    blocks nobody writes and only wait for in-block chunks.  So in-block chunks in source order,
    then cross-block ones, is a topological order.  Returns -1 when out of memory.
    """
    cdef Py_ssize_t leaves = 1, i, lo = 0, hi = 0, rank
    cdef uint64_t dst_key
    cdef int32_t before
    while leaves < n:
        leaves <<= 1
    cdef uint64_t* starts = <uint64_t*>malloc(n * sizeof(uint64_t) + 1)
    cdef uint64_t* ends = <uint64_t*>malloc(n * sizeof(uint64_t) + 1)
    cdef int32_t* tree = <int32_t*>malloc(2 * leaves * sizeof(int32_t))
    if starts == NULL or ends == NULL or tree == NULL:
        free(starts)
        free(ends)
        free(tree)
        return -1
    for i in range(2 * leaves):
        tree[i] = -1
    for i in range(n):
        starts[i] = (<uint64_t>chunks[i].src_block << KEY_SHIFT) | chunks[i].src_offset
        ends[i] = starts[i] + chunks[i].size
    for rank in range(2 * n):
        i = rank if rank < n else rank - n
        if (cross[i] != 0) != (rank >= n):
            continue
        dst_key = (<uint64_t>chunks[i].dst_block << KEY_SHIFT) | chunks[i].dst_offset
        # Chunks whose source overlaps [dst_key, dst_key + size): end > dst_key, start < end of dst.
        lo = _first_at_least(ends, n, dst_key + 1, lo)
        hi = _first_at_least(starts, n, dst_key + chunks[i].size, hi)
        before = _tree_max(tree, leaves, lo, hi)  # chunk i itself is still -1
        chunks[i].wave = <uint32_t>(before + 1)
        _tree_set(tree, leaves, i, before + 1)
    free(starts)
    free(ends)
    free(tree)
    return 0


cdef Py_ssize_t _cut_chunks(Chunk* out, uint32_t src_block, uint64_t src_offset,
                            uint32_t dst_block, uint64_t dst_offset,
                            uint64_t nbytes) noexcept nogil:
    cdef uint64_t done = 0, piece
    cdef Py_ssize_t count = 0
    nbytes = round_up(nbytes, 16)
    while done < nbytes:
        piece = nbytes - done if nbytes - done < CHUNK_BYTES else CHUNK_BYTES
        out[count].src_block = src_block
        out[count].dst_block = dst_block
        out[count].src_offset = src_offset + done
        out[count].dst_offset = dst_offset + done
        out[count].size = <uint32_t>piece
        out[count].wave = 0
        count += 1
        done += piece
    return count


# ----------------------------------------------------------------------------------------------
# Python-facing planner


def _as_entries(index, entries, uint64_t block_size, uint64_t alignment):
    """Validate one block's (offsets, sizes, pinned) and return contiguous arrays."""
    try:
        offsets, sizes, pinned = entries
    except (TypeError, ValueError):
        raise TypeError("block %d: expected an (offsets, sizes, pinned) triple, got %r. "
                        "Fix: pass three equal-length arrays per block." % (index, type(entries)))
    offsets = np.ascontiguousarray(offsets, dtype=np.uint64)
    sizes = np.ascontiguousarray(sizes, dtype=np.uint64)
    pinned = np.ascontiguousarray(pinned, dtype=bool).view(np.uint8)
    if not (offsets.ndim == sizes.ndim == pinned.ndim == 1) or not (
            len(offsets) == len(sizes) == len(pinned)):
        raise ValueError("block %d: offsets, sizes and pinned have lengths %d, %d, %d. "
                         "Fix: pass one value per entry in each array."
                         % (index, len(offsets), len(sizes), len(pinned)))
    live = sizes > 0
    if np.any(offsets[live] % alignment):
        bad = int(offsets[live][offsets[live] % alignment != 0][0])
        raise ValueError("block %d: entry offset %d is not a multiple of the alignment %d. "
                         "Fix: pass the offsets the allocator handed out." % (index, bad, alignment))
    ends = offsets + sizes
    if np.any(ends[live] > block_size):
        bad = int(offsets[live][ends[live] > block_size][0])
        raise ValueError("block %d: entry at offset %d ends past the block size %d. "
                         "Fix: pass the entries of this block only." % (index, bad, block_size))
    live_offsets, live_ends = offsets[live], ends[live]
    overlapping = live_offsets[1:] < live_ends[:len(live_ends) - 1]
    if np.any(overlapping):
        bad = int(live_offsets[1:][overlapping][0])
        raise ValueError("block %d: entries are not sorted by offset or overlap (at offset %d). "
                         "Fix: sort the entries by offset; live entries never overlap."
                         % (index, bad))
    return offsets, sizes, pinned


def _free_ranges(uint64_t block_size, uint64_t alignment, offsets, sizes):
    """Complement of the aligned ranges [offset, offset + round_up(size, alignment))."""
    live = sizes > 0
    starts = offsets[live]
    order = np.argsort(starts, kind="stable")
    starts = starts[order]
    ends = starts + (sizes[live][order] + (alignment - 1)) // alignment * alignment
    gap_starts = np.concatenate(([0], ends)).astype(np.uint64)
    gap_ends = np.concatenate((starts, [block_size])).astype(np.uint64)
    keep = gap_ends > gap_starts
    result = np.empty(int(keep.sum()), dtype=FREE_RANGE_DTYPE)
    result["offset"] = gap_starts[keep]
    result["size"] = gap_ends[keep] - gap_starts[keep]
    return result


def _slide_block(offsets, sizes, pinned, uint64_t alignment, uint64_t budget):
    """Run ``_slide`` on validated arrays; returns (new_offsets, bytes_moved, stopped)."""
    cdef const uint64_t[::1] offsets_view = offsets
    cdef const uint64_t[::1] sizes_view = sizes
    cdef const uint8_t[::1] pinned_view = pinned
    cdef Py_ssize_t n = len(offsets)
    new_offsets = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] new_view = new_offsets
    cdef Py_ssize_t pins = int(pinned.sum())
    cdef uint64_t* holes = <uint64_t*>malloc((2 * pins + 2) * sizeof(uint64_t))
    cdef uint64_t moved = 0
    cdef bint stopped = False
    if holes == NULL:
        raise MemoryError()
    if n:
        with nogil:
            moved = _slide(&offsets_view[0], &sizes_view[0], &pinned_view[0], n, alignment, budget,
                           &new_view[0], holes, &stopped)
    free(holes)
    return new_offsets, moved, stopped


def _first_fit(free_lists, Py_ssize_t skip, uint64_t length):
    """First (block, offset) with ``length`` free bytes among ``free_lists`` except ``skip``."""
    cdef Py_ssize_t block, index
    for block in range(len(free_lists)):
        ranges = free_lists[block]
        if block == skip or ranges is None:
            continue
        for index in range(len(ranges)):
            start, end = ranges[index]
            if end - start >= length:
                ranges[index] = (start + length, end)
                return block, start
    return None


def plan_block(offsets, sizes, pinned, block_size, alignment=16, max_bytes=None):
    """Plan the compaction of one block.

    Args:
        offsets, sizes, pinned: the block's entries sorted by offset (array-likes of equal length;
            zero-byte entries are allowed anywhere and never move).
        block_size: bytes in the block, a multiple of ``alignment``.
        alignment: the allocator's alignment, a power of two >= 16.
        max_bytes: stop before the first move that would take the bytes moved past this; None
            moves everything that can move.

    Returns:
        A ``CompactionPlan`` over one block (block number 0).

    Raises:
        ValueError: bad alignment or block size, entries unsorted, overlapping, unaligned or
            outside the block.
    """
    return plan_tier([(offsets, sizes, pinned)], block_size, alignment, max_bytes, evacuate=False)


def plan_tier(blocks, block_sizes, alignment=16, max_bytes=None, evacuate=True):
    """Plan the compaction of several blocks of one tier.

    Every block is slid as by ``plan_block``.  With ``evacuate``, a block without pins whose
    entries all fit into the free space the other blocks have after sliding is emptied instead
    (smallest blocks first, entries largest first, first fit in block order); it is then listed in
    ``emptied_blocks`` so the caller can release it.  A block that receives entries is not emptied
    and blocks that are already empty receive nothing (so they can be released as well).

    With ``max_bytes``, evacuations come first (a block is emptied only when its bytes plus the
    slides of the blocks receiving them fit the remaining budget); the remaining budget then goes
    to the slides of the other blocks in block order.

    Args:
        blocks: a sequence of (offsets, sizes, pinned) triples, one per block, as for
            ``plan_block``.
        block_sizes: one size for all blocks, or one per block.
        alignment, max_bytes: as for ``plan_block``.
        evacuate: allow moves between blocks.

    Returns:
        A ``CompactionPlan``; its block numbers index ``blocks``.

    Raises:
        ValueError: as ``plan_block``; more than 2**24 blocks or a block of 1 TiB or more.
    """
    cdef uint64_t align = alignment
    cdef uint64_t budget = NO_BUDGET if max_bytes is None else max_bytes
    cdef Py_ssize_t n_blocks = len(blocks), b, i, total, count
    if align < 16 or (align & (align - 1)) != 0:
        raise ValueError("alignment must be a power of two of at least 16, got %d. "
                         "Fix: pass 16, 64, 256, ..." % align)
    if max_bytes is not None and max_bytes < 0:
        raise ValueError("max_bytes must be >= 0 or None, got %r. Fix: pass a byte count."
                         % (max_bytes,))
    if n_blocks >= (1 << 24):
        raise ValueError("%d blocks is more than the planner addresses (2**24). "
                         "Fix: plan fewer blocks at a time." % n_blocks)
    if isinstance(block_sizes, (int, np.integer)):
        block_sizes = (int(block_sizes),) * n_blocks
    block_sizes = tuple(int(size) for size in block_sizes)
    if len(block_sizes) != n_blocks:
        raise ValueError("%d block sizes for %d blocks. Fix: pass one size, or one per block."
                         % (len(block_sizes), n_blocks))
    for b in range(n_blocks):
        if block_sizes[b] % align or block_sizes[b] >= ((<uint64_t>1) << KEY_SHIFT):
            raise ValueError("block %d: size %d is not a multiple of the alignment %d or is 1 TiB "
                             "or more. Fix: pass the size the block was allocated with."
                             % (b, block_sizes[b], align))
    entries = [_as_entries(b, blocks[b], block_sizes[b], align) for b in range(n_blocks)]

    # Full slides first: they tell how much room each block has once compacted.
    full = [_slide_block(o, s, p, align, NO_BUDGET) for (o, s, p) in entries]
    slid_new = [None] * n_blocks          # final in-block offsets (after the budget)
    slide_paid = [False] * n_blocks
    emptied = []
    destinations = {}                      # evacuated block -> (new_blocks, new_offsets)
    complete = True
    cdef uint64_t spent = 0

    if evacuate and n_blocks > 1:
        live_bytes = [int(s.sum()) for (_, s, _) in entries]
        holds = [bool((s > 0).any()) for (_, s, _) in entries]
        receiving = [False] * n_blocks
        free_lists = []
        for b in range(n_blocks):
            ranges = _free_ranges(block_sizes[b], align, full[b][0], entries[b][1])
            # Empty blocks take nothing: they are released whole.
            free_lists.append([(int(r["offset"]), int(r["offset"] + r["size"])) for r in ranges]
                              if holds[b] else None)
        candidates = sorted((b for b in range(n_blocks)
                             if holds[b] and not entries[b][2].any()),
                            key=lambda block: (live_bytes[block], block))
        for b in candidates:
            if receiving[b]:
                continue
            offsets, sizes, _ = entries[b]
            order = sorted((i for i in range(len(sizes)) if sizes[i] > 0),
                           key=lambda entry: (-int(sizes[entry]), int(offsets[entry])))
            trial = [None if ranges is None else list(ranges) for ranges in free_lists]
            trial[b] = None
            new_blocks = np.full(len(sizes), b, dtype=np.uint32)
            new_offsets = offsets.copy()
            fits = True
            for i in order:
                found = _first_fit(trial, b, round_up(sizes[i], align))
                if found is None:
                    fits = False
                    break
                new_blocks[i], new_offsets[i] = found
            if not fits:
                continue
            targets = {int(t) for t in np.unique(new_blocks[sizes > 0])}
            cost = live_bytes[b] + sum(full[t][1] for t in targets if not slide_paid[t])
            if spent + cost > budget:
                complete = False
                continue
            spent += cost
            for t in targets:
                slide_paid[t] = True
                receiving[t] = True
            free_lists = trial
            emptied.append(b)
            destinations[b] = (new_blocks, new_offsets)

    for b in range(n_blocks):
        if b in destinations:
            continue
        if slide_paid[b] or budget == NO_BUDGET:
            slid_new[b] = full[b][0]
            spent += 0 if slide_paid[b] else full[b][1]
        else:
            new_offsets, moved, stopped = _slide_block(*entries[b], align, budget - spent)
            slid_new[b] = new_offsets
            spent += moved
            complete = complete and not stopped

    # Chunks, block by block in block order and entries in offset order: sorted by source.
    total = 0
    for b in range(n_blocks):
        offsets, sizes, _ = entries[b]
        total += int(((sizes + (CHUNK_BYTES - 1)) // CHUNK_BYTES).sum())
    chunk_buffer = np.zeros(total, dtype=CHUNK_DTYPE)
    cross = np.zeros(total, dtype=np.uint8)
    cdef Chunk[::1] chunk_view = chunk_buffer
    count = 0
    moves = 0
    moved_bytes = 0
    new_offsets_out = []
    new_blocks_out = []
    cdef const uint64_t[::1] old_view
    cdef const uint64_t[::1] size_view
    cdef const uint64_t[::1] new_view
    cdef const uint32_t[::1] dst_block_view
    cdef Py_ssize_t first
    for b in range(n_blocks):
        offsets, sizes, _ = entries[b]
        if b in destinations:
            dst_blocks, final = destinations[b]
        else:
            dst_blocks, final = np.full(len(sizes), b, dtype=np.uint32), slid_new[b]
        new_offsets_out.append(final)
        new_blocks_out.append(dst_blocks)
        old_view, size_view, new_view, dst_block_view = offsets, sizes, final, dst_blocks
        first = count
        with nogil:
            for i in range(old_view.shape[0]):
                if size_view[i] == 0 or (dst_block_view[i] == b and new_view[i] == old_view[i]):
                    continue
                count += _cut_chunks(&chunk_view[count], <uint32_t>b, old_view[i],
                                     dst_block_view[i], new_view[i], size_view[i])
        if b in destinations:
            cross[first:count] = 1
        moved_mask = (sizes > 0) & ((dst_blocks != b) | (final != offsets))
        moves += int(moved_mask.sum())
        moved_bytes += int(sizes[moved_mask].sum())
    chunk_buffer = chunk_buffer[:count]
    cross = cross[:count]
    cdef const uint8_t[::1] cross_view = cross
    cdef int status = 0
    if count:
        with nogil:
            status = _assign_waves(&chunk_view[0], count, &cross_view[0])
        if status < 0:
            raise MemoryError()
    chunk_buffer, wave_starts = _sorted_by_wave(chunk_view, count)

    free_out = []
    for b in range(n_blocks):
        if b in destinations:
            free_out.append(_free_ranges(block_sizes[b], align, np.empty(0, np.uint64),
                                         np.empty(0, np.uint64)))
            continue
        final_offsets = [new_offsets_out[b][new_blocks_out[b] == b]]
        final_sizes = [entries[b][1][new_blocks_out[b] == b]]
        for source in destinations:
            arrived = new_blocks_out[source] == b
            final_offsets.append(new_offsets_out[source][arrived])
            final_sizes.append(entries[source][1][arrived])
        free_out.append(_free_ranges(block_sizes[b], align, np.concatenate(final_offsets),
                                     np.concatenate(final_sizes)))

    cdef CompactionPlan plan = CompactionPlan.__new__(CompactionPlan)
    plan.chunks = chunk_buffer
    plan.wave_starts = wave_starts
    plan.new_offsets = new_offsets_out
    plan.new_blocks = new_blocks_out
    plan.free_ranges = free_out
    plan.emptied_blocks = tuple(sorted(emptied))
    plan.block_sizes = block_sizes
    plan.moves = moves
    plan.bytes_moved = moved_bytes
    plan.complete = complete
    for array in (chunk_buffer, wave_starts, *new_offsets_out, *new_blocks_out, *free_out):
        array.flags.writeable = False
    return plan


def execute_on_host(CompactionPlan plan, blocks, bint streaming=False, int threads=1):
    """Apply ``plan`` to host blocks with memmove, wave by wave.

    Args:
        plan: a plan from ``plan_block`` or ``plan_tier``.
        blocks: one writable, C-contiguous uint8 numpy array per planned block (indexed like the
            planner's blocks), each at least as long as the planned block size.
        streaming: copy chunks whose source and destination are disjoint with non-temporal
            stores.  A compaction pass that moves megabytes does not read them back soon, and a
            plain memcpy of each 64 KiB chunk first reads every destination line into the cache
            (measured on lavapipe's mapped memory: 0.5-0.65 of one large vkCmdCopyBuffer with
            memmove, against about 1.0 streamed).  Chunks that overlap themselves stay memmoves:
            their lines are in the cache already.
        threads: with ``streaming``, split each wave of at least 1 MiB between this many threads
            (at most 8), meeting between waves.  One core's streaming stores leave memory
            bandwidth unused (measured on a 2-core VM: 8-9 GB/s on one thread, 12-16 on two).

    Raises:
        ValueError: wrong number of blocks, a block shorter than planned or not writable, or
            threads outside 1..8.

    This is the host backend's compaction and the reference the GPU kernel is compared with:
    chunks run in table order, which is wave order, so the result is byte-identical.
    """
    cdef Py_ssize_t n_blocks = len(plan.block_sizes), b, i, n
    cdef const int64_t[::1] wave_starts = plan.wave_starts
    if not 1 <= threads <= MAX_COPY_THREADS:
        raise ValueError("threads must be 1 to %d, got %d. Fix: pass a thread count in that range."
                         % (MAX_COPY_THREADS, threads))
    if len(blocks) != n_blocks:
        raise ValueError("the plan covers %d blocks, got %d arrays. Fix: pass one array per "
                         "planned block, in the same order." % (n_blocks, len(blocks)))
    cdef uint8_t** bases = <uint8_t**>malloc((n_blocks + 1) * sizeof(uint8_t*))
    if bases == NULL:
        raise MemoryError()
    cdef uint8_t[::1] view
    cdef const Chunk[::1] chunks
    try:
        for b in range(n_blocks):
            array = blocks[b]
            if (not isinstance(array, np.ndarray) or array.dtype != np.uint8
                    or not array.flags.c_contiguous or not array.flags.writeable
                    or array.size < plan.block_sizes[b]):
                raise ValueError("block %d: expected a writable C-contiguous uint8 array of at "
                                 "least %d bytes. Fix: pass the block's bytes as "
                                 "np.ndarray(dtype=np.uint8)." % (b, plan.block_sizes[b]))
            if array.size:
                view = array.reshape(-1)
                bases[b] = &view[0]
            else:
                bases[b] = NULL
        n = len(plan.chunks)
        if n == 0:
            return
        chunks = plan.chunks
        with nogil:
            if not streaming:
                for i in range(n):
                    memmove(bases[chunks[i].dst_block] + chunks[i].dst_offset,
                            bases[chunks[i].src_block] + chunks[i].src_offset, chunks[i].size)
            else:
                vc_copy_plan(<char**>bases, <const vc_chunk*>&chunks[0], &wave_starts[0], wave_starts.shape[0] - 1,
                             threads)
    finally:
        free(bases)
