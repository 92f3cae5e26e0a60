# Declarations of the compaction planner: the C layout other core modules cimport.
#
# A plan is a table of chunks (``Chunk``, the same layout as ``CHUNK_DTYPE``) sorted by wave, plus
# the new place of every entry and the free ranges each block has afterwards.  Bodies live in
# compaction.pyx.

from libc.stdint cimport uint8_t, uint32_t, uint64_t


# One copy of at most MAX_CHUNK_BYTES; offsets and size are multiples of 16.
cdef struct Chunk:
    uint32_t src_block
    uint32_t dst_block
    uint64_t src_offset
    uint64_t dst_offset
    uint32_t size
    uint32_t wave


cdef class CompactionPlan:
    cdef readonly object chunks          # ndarray[CHUNK_DTYPE], sorted by wave
    cdef readonly object wave_starts     # ndarray[int64], waves + 1 entries
    cdef readonly list new_offsets       # per block: ndarray[uint64], one per input entry
    cdef readonly list new_blocks        # per block: ndarray[uint32], one per input entry
    cdef readonly list free_ranges       # per block: ndarray[FREE_RANGE_DTYPE]
    cdef readonly tuple emptied_blocks   # blocks this plan empties by moving entries out
    cdef readonly tuple block_sizes
    cdef readonly Py_ssize_t moves
    cdef readonly uint64_t bytes_moved
    cdef readonly bint complete
