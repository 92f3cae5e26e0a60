from libc.stdint cimport uint64_t, int64_t


cdef inline uint64_t round_up(uint64_t value, uint64_t alignment) noexcept nogil:
    """``value`` rounded up to a multiple of ``alignment``, a power of two (a mask, no division)."""
    return (value + alignment - 1) & ~(alignment - 1)


cdef class Allocator:
    """First-fit sub-allocator over one memory block (see allocator.pyx)."""
    cdef readonly uint64_t size
    cdef readonly uint64_t alignment
    cdef uint64_t* starts      # free ranges, sorted by start, never adjacent
    cdef uint64_t* lengths
    cdef Py_ssize_t n_free
    cdef Py_ssize_t cap_free
    cdef readonly uint64_t free_bytes

    cdef int64_t alloc_c(self, uint64_t nbytes) noexcept nogil
    cdef int _grow(self) noexcept nogil
    cdef int free_c(self, uint64_t offset, uint64_t nbytes) noexcept nogil
    cdef uint64_t largest_free_c(self) noexcept nogil
    cdef uint64_t charge(self, uint64_t nbytes) noexcept nogil
    cdef int reset_c(self, const uint64_t* starts, const uint64_t* lengths, Py_ssize_t n) except -1
