# cython: language_level=3
"""Where each request's key was used last and is used next, and how many keys a trace has, in
one pass over the trace with a hash table of the keys seen.

Sorting the trace answers both too (a stable sort groups each key's requests in order), but a
sort of n keys is O(n log n) with a pass over memory per merge level, and it held a permutation
and a sorted copy of the trace besides: on a trace of 1.2 million requests with a quarter of a
million keys it took half a second, where OPT itself took 40 ms.  The table holds a key and the
index of its latest request in 16 bytes, and is kept at most half full: 32 to 64 bytes a
distinct key, and up to 96 while it doubles (against the sort's 16 or more a request).
"""

cimport cython
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memset

import numpy as np


cdef extern from "prefetch.h":
    void vc_prefetch_write(const void* p) nogil

cdef extern from "mix.h":
    uint64_t vc_mix64(uint64_t x) nogil


ctypedef struct Seen:
    uint64_t key
    int64_t last            # the index of the key's latest request; -1: an empty cell


ctypedef struct SeenTable:
    Seen* cells
    uint64_t mask           # cells - 1, a power of two minus one
    Py_ssize_t count        # cells in use


# AHEAD: requests whose cells are fetched ahead of their turn (a table larger than the caches
# stalls on every lookup otherwise, and the keys to come are known).  Trace keys are often
# sequential or share their low bits, and the table is indexed by low bits: they are mixed first.
cdef enum:
    AHEAD = 16
    FIRST_CELLS = 1024


cdef int _table_init(SeenTable* table, uint64_t cells) noexcept nogil:
    table.cells = <Seen*>PyMem_RawMalloc(cells * sizeof(Seen))
    if table.cells == NULL:
        return -1
    memset(table.cells, 0xFF, cells * sizeof(Seen))        # every last = -1: empty
    table.mask = cells - 1
    table.count = 0
    return 0


cdef int _table_grow(SeenTable* table) noexcept nogil:
    """Twice the cells, every key filed again; -1 (the table unchanged) out of memory."""
    cdef SeenTable bigger
    cdef uint64_t i, at
    if _table_init(&bigger, 2 * (table.mask + 1)) != 0:
        return -1
    for i in range(table.mask + 1):
        if table.cells[i].last >= 0:
            at = vc_mix64(table.cells[i].key) & bigger.mask
            while bigger.cells[at].last >= 0:
                at = (at + 1) & bigger.mask
            bigger.cells[at] = table.cells[i]
    bigger.count = table.count
    PyMem_RawFree(table.cells)
    table[0] = bigger
    return 0


cdef inline Seen* _cell_of(SeenTable* table, uint64_t key) noexcept nogil:
    """The key's cell, an empty one (last == -1) with the key written in when it is new.  The
    caller keeps the table at most half full, so the probe ends."""
    cdef uint64_t at = vc_mix64(key) & table.mask
    cdef Seen* cell
    while True:
        cell = &table.cells[at]
        if cell.last < 0:
            cell.key = key
            table.count += 1
            return cell
        if cell.key == key:
            return cell
        at = (at + 1) & table.mask


cdef inline void _prefetch_cell(SeenTable* table, uint64_t key) noexcept nogil:
    vc_prefetch_write(&table.cells[vc_mix64(key) & table.mask])


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int _scan(const uint64_t[::1] keys, int64_t* following, int64_t* previous,
               SeenTable* table) noexcept nogil:
    """One pass: each request's previous use, and the next use of each request before it
    (following and previous may be NULL: the count alone).  -1 out of memory."""
    cdef Py_ssize_t n = keys.shape[0], i
    cdef Seen* cell
    cdef int64_t last
    for i in range(n):
        if (table.count + 1) * 2 > <Py_ssize_t>(table.mask + 1):
            if _table_grow(table) != 0:
                return -1
        if i + AHEAD < n:
            _prefetch_cell(table, keys[i + AHEAD])
        cell = _cell_of(table, keys[i])
        last = cell.last
        cell.last = i
        if previous != NULL:
            previous[i] = last
            if last >= 0:
                following[last] = i
    return 0


cdef SeenTable _scanned(const uint64_t[::1] keys, int64_t* following, int64_t* previous):
    cdef SeenTable table
    cdef int status
    if _table_init(&table, FIRST_CELLS) != 0:
        raise MemoryError("Out of memory for a table of a trace's keys. Fix: free memory.")
    with nogil:
        status = _scan(keys, following, previous, &table)
    if status != 0:
        PyMem_RawFree(table.cells)
        raise MemoryError(f"Out of memory for a table of {table.count:,} keys of a trace of "
                          f"{keys.shape[0]:,} requests. Fix: free memory, or replay a shorter "
                          f"trace.")
    return table


def next_uses(keys):
    """(next_use, previous_use) of each request: the index of the same key's next (previous)
    request, len(keys) (-1) when there is none."""
    cdef const uint64_t[::1] view = np.ascontiguousarray(keys, dtype=np.uint64)
    n = view.shape[0]
    following = np.full(n, n, dtype=np.int64)
    previous = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] next_view = following
    cdef int64_t[::1] prev_view = previous
    cdef SeenTable table = _scanned(view, &next_view[0] if n else NULL,
                                    &prev_view[0] if n else NULL)
    PyMem_RawFree(table.cells)
    return following, previous


def unique_count(keys):
    """How many distinct keys `keys` holds."""
    cdef const uint64_t[::1] view = np.ascontiguousarray(keys, dtype=np.uint64)
    cdef SeenTable table = _scanned(view, NULL, NULL)
    PyMem_RawFree(table.cells)
    return table.count
