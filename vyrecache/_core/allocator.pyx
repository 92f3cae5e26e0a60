# cython: boundscheck=False, wraparound=False, cdivision=True
"""Sub-allocator for one memory block: aligned ranges, first fit, coalescing frees.

The free space is kept as two parallel C arrays sorted by start offset::

    starts:  [  0 ][ 4096 ][ 65536 ] ...
    lengths: [ 256][ 1024 ][  4096 ] ...

Invariant: ranges are sorted, non-empty, aligned, and never touch each other
(a free that makes two ranges adjacent merges them), so ``n_free`` is the
number of holes and ``free_bytes`` their sum.

First fit is deliberate: it keeps live data near the start of the block, which
is where compaction slides entries anyway, so a compacted block stays compact.
A lookup is a linear scan of the holes, fast in C for the hundreds of holes a
fragmented block has; compaction bounds the hole count in practice.
"""

from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memmove

from vyrecache.errors import CacheError


cdef class Allocator:
    """Hands out aligned byte ranges of a block of ``size`` bytes.

    ``alloc(nbytes)`` returns the offset of a free range of
    ``round_up(nbytes, alignment)`` bytes, or None when no hole is large enough.
    A zero-byte request takes no space and returns offset 0.
    """

    def __cinit__(self, uint64_t size, uint64_t alignment=16):
        if alignment == 0 or (alignment & (alignment - 1)) != 0:
            raise ValueError("alignment must be a power of two, got %d. Fix: pass 16, 64, 256, ..."
                             % alignment)
        if size % alignment != 0:
            raise ValueError("block size %d is not a multiple of the alignment %d. "
                             "Fix: round the block size up to the alignment." % (size, alignment))
        self.size = size
        self.alignment = alignment
        self.cap_free = 8
        self.starts = <uint64_t*>malloc(self.cap_free * sizeof(uint64_t))
        self.lengths = <uint64_t*>malloc(self.cap_free * sizeof(uint64_t))
        if self.starts == NULL or self.lengths == NULL:
            raise MemoryError()
        self.n_free = 0
        self.free_bytes = 0
        if size:
            self.starts[0] = 0
            self.lengths[0] = size
            self.n_free = 1
            self.free_bytes = size

    def __dealloc__(self):
        free(self.starts)
        free(self.lengths)
        self.starts = NULL
        self.lengths = NULL

    cdef uint64_t charge(self, uint64_t nbytes) noexcept nogil:
        """Bytes a request of ``nbytes`` occupies."""
        return round_up(nbytes, self.alignment)

    cdef int64_t alloc_c(self, uint64_t nbytes) noexcept nogil:
        cdef uint64_t need = self.charge(nbytes)
        cdef Py_ssize_t i
        cdef uint64_t offset
        if need == 0:
            return 0
        if need > self.free_bytes:
            return -1
        for i in range(self.n_free):
            if self.lengths[i] >= need:
                offset = self.starts[i]
                if self.lengths[i] == need:
                    memmove(&self.starts[i], &self.starts[i + 1], (self.n_free - i - 1) * sizeof(uint64_t))
                    memmove(&self.lengths[i], &self.lengths[i + 1], (self.n_free - i - 1) * sizeof(uint64_t))
                    self.n_free -= 1
                else:
                    self.starts[i] += need
                    self.lengths[i] -= need
                self.free_bytes -= need
                return <int64_t>offset
        return -1

    cdef int _grow(self) noexcept nogil:
        cdef Py_ssize_t cap = self.cap_free * 2
        cdef uint64_t* starts = <uint64_t*>realloc(self.starts, cap * sizeof(uint64_t))
        if starts == NULL:
            return -1
        self.starts = starts
        cdef uint64_t* lengths = <uint64_t*>realloc(self.lengths, cap * sizeof(uint64_t))
        if lengths == NULL:
            return -1
        self.lengths = lengths
        self.cap_free = cap
        return 0

    cdef int free_c(self, uint64_t offset, uint64_t nbytes) noexcept nogil:
        """Return a range; 0 on success, -1 when it is not a valid allocated range, -2 out of memory."""
        cdef uint64_t length = self.charge(nbytes)
        cdef Py_ssize_t lo = 0, hi = self.n_free, mid
        cdef bint joins_prev, joins_next
        if length == 0:
            return 0
        if offset & (self.alignment - 1) or offset + length > self.size or offset + length < offset:
            return -1
        # First free range starting after `offset`.
        while lo < hi:
            mid = (lo + hi) // 2
            if self.starts[mid] <= offset:
                lo = mid + 1
            else:
                hi = mid
        # The range must not overlap its free neighbours (a double free would).
        if lo > 0 and self.starts[lo - 1] + self.lengths[lo - 1] > offset:
            return -1
        if lo < self.n_free and offset + length > self.starts[lo]:
            return -1
        joins_prev = lo > 0 and self.starts[lo - 1] + self.lengths[lo - 1] == offset
        joins_next = lo < self.n_free and offset + length == self.starts[lo]
        if joins_prev and joins_next:
            self.lengths[lo - 1] += length + self.lengths[lo]
            memmove(&self.starts[lo], &self.starts[lo + 1], (self.n_free - lo - 1) * sizeof(uint64_t))
            memmove(&self.lengths[lo], &self.lengths[lo + 1], (self.n_free - lo - 1) * sizeof(uint64_t))
            self.n_free -= 1
        elif joins_prev:
            self.lengths[lo - 1] += length
        elif joins_next:
            self.starts[lo] = offset
            self.lengths[lo] += length
        else:
            if self.n_free == self.cap_free and self._grow() != 0:
                return -2
            memmove(&self.starts[lo + 1], &self.starts[lo], (self.n_free - lo) * sizeof(uint64_t))
            memmove(&self.lengths[lo + 1], &self.lengths[lo], (self.n_free - lo) * sizeof(uint64_t))
            self.starts[lo] = offset
            self.lengths[lo] = length
            self.n_free += 1
        self.free_bytes += length
        return 0

    cdef uint64_t largest_free_c(self) noexcept nogil:
        cdef uint64_t best = 0
        cdef Py_ssize_t i
        for i in range(self.n_free):
            if self.lengths[i] > best:
                best = self.lengths[i]
        return best

    cdef int reset_c(self, const uint64_t* starts, const uint64_t* lengths, Py_ssize_t n) except -1:
        """Replace the free list (after compaction rewrote the block's layout)."""
        while self.cap_free < n:
            if self._grow() != 0:
                raise MemoryError()
        cdef Py_ssize_t i, kept = 0
        self.free_bytes = 0
        for i in range(n):
            if lengths[i] == 0:
                continue
            if kept and self.starts[kept - 1] + self.lengths[kept - 1] == starts[i]:
                self.lengths[kept - 1] += lengths[i]
            else:
                self.starts[kept] = starts[i]
                self.lengths[kept] = lengths[i]
                kept += 1
            self.free_bytes += lengths[i]
        self.n_free = kept
        return 0

    # -- Python surface (tests, statistics, the rare paths) ---------------------

    def alloc(self, uint64_t nbytes):
        """Offset of a new range of ``nbytes`` (rounded up to the alignment), or None if no hole fits."""
        cdef int64_t offset = self.alloc_c(nbytes)
        return None if offset < 0 else offset

    def free(self, uint64_t offset, uint64_t nbytes):
        """Give back a range returned by ``alloc``.

        Raises CacheError for a range that is not allocated (a double free or a
        wrong offset), leaving the free list unchanged.
        """
        cdef int status = self.free_c(offset, nbytes)
        if status == -2:
            raise MemoryError()
        if status != 0:
            raise CacheError("range [%d, %d) is not an allocated range of this %d-byte block. "
                             "Fix: free exactly the offset and size that alloc() returned, once."
                             % (offset, offset + self.charge(nbytes), self.size))

    @property
    def largest_free(self):
        """Length of the largest hole, in bytes."""
        return self.largest_free_c()

    @property
    def hole_count(self):
        return self.n_free

    def free_ranges(self):
        """The holes as a list of (offset, length), by offset."""
        return [(self.starts[i], self.lengths[i]) for i in range(self.n_free)]

    def reset(self, ranges):
        """Replace the free list with ``ranges`` [(offset, length), ...] sorted by offset."""
        import numpy as np
        arr = np.asarray(list(ranges), dtype=np.uint64).reshape(-1, 2)
        cdef uint64_t[::1] starts = np.ascontiguousarray(arr[:, 0])
        cdef uint64_t[::1] lengths = np.ascontiguousarray(arr[:, 1])
        cdef Py_ssize_t i
        cdef uint64_t previous_end = 0
        for i in range(arr.shape[0]):
            if starts[i] < previous_end or starts[i] % self.alignment or lengths[i] % self.alignment \
                    or starts[i] + lengths[i] > self.size:
                raise ValueError("free range %r is unsorted, overlapping, unaligned or outside the block. "
                                 "Fix: pass aligned, sorted, disjoint ranges inside [0, %d)."
                                 % ((int(starts[i]), int(lengths[i])), self.size))
            previous_end = starts[i] + lengths[i]
        if arr.shape[0]:
            self.reset_c(&starts[0], &lengths[0], arr.shape[0])
        else:
            self.n_free = 0
            self.free_bytes = 0

    def check(self):
        """Raise CacheError if the free list breaks its invariant."""
        cdef uint64_t total = 0
        cdef Py_ssize_t i
        for i in range(self.n_free):
            if self.lengths[i] == 0 or self.starts[i] % self.alignment or self.lengths[i] % self.alignment:
                raise CacheError("free range %d is empty or unaligned" % i)
            if self.starts[i] + self.lengths[i] > self.size:
                raise CacheError("free range %d ends past the block" % i)
            if i and self.starts[i - 1] + self.lengths[i - 1] >= self.starts[i]:
                raise CacheError("free ranges %d and %d touch or overlap" % (i - 1, i))
            total += self.lengths[i]
        if total != self.free_bytes:
            raise CacheError("free_bytes %d != sum of holes %d" % (self.free_bytes, total))

    def __repr__(self):
        return "Allocator(size=%d, free=%d, holes=%d, largest=%d)" % (
            self.size, self.free_bytes, self.n_free, self.largest_free_c())
