# cython: language_level=3
"""Belady's MIN (OPT) with bypass, in C: the most hits any policy can get on a trace.

The cache knows every request's next use.  On a miss it keeps the new object unless the object
is next used later than every resident (then it bypasses the cache, which an optimal cache
with bypass may do), and otherwise evicts the resident used farthest in the future.  With unit
sizes this is exactly optimal (Belady 1966; Mattson et al. 1970).  With byte sizes it is a
feasible schedule that knows the future, so its hits are a lower bound on what an optimal
cache gets; callers label it so.

Residents are kept in a binary max-heap on next use.  A hit leaves the resident's old heap
node behind (lazy deletion: the node is stale once its request's object moved on), so the
heap holds at most one node per request: O(n log n) time, 16 bytes a request.
"""

cimport cython
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memset

import numpy as np

from vyrecache._core.key_uses import next_uses


ctypedef struct Node:
    int64_t next_use
    int64_t request


cdef inline void _sift_up(Node* heap, Py_ssize_t i) noexcept nogil:
    cdef Node node = heap[i]
    cdef Py_ssize_t parent
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent].next_use >= node.next_use:
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = node


cdef inline void _sift_down(Node* heap, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    cdef Node node = heap[i]
    cdef Py_ssize_t child
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and heap[child + 1].next_use > heap[child].next_use:
            child += 1
        if heap[child].next_use <= node.next_use:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = node


@cython.boundscheck(False)
@cython.wraparound(False)
def belady_hits(keys, sizes, uint64_t capacity, uses=None):
    """Hits of Belady's MIN with bypass on `keys` (uint64), with `sizes` (an array, or None
    for one unit each) and a cache of `capacity` units; returns a bool array, True per hit.
    `uses` is next_uses(keys) when the caller has it already (it is the same for every
    capacity, and the sort is most of the time of a short run)."""
    following, previous = next_uses(keys) if uses is None else uses
    cdef Py_ssize_t n = following.shape[0], i, top
    if previous.shape[0] != n or np.size(keys) != n:
        raise ValueError(f"uses holds next and previous uses of {n} and {previous.shape[0]} "
                         f"requests for {np.size(keys)} keys. Fix: pass next_uses(keys) of "
                         f"these keys, or leave uses out.")
    size_array = (np.ones(n, dtype=np.uint64) if sizes is None
                  else np.ascontiguousarray(sizes, dtype=np.uint64))
    if size_array.shape[0] != n:
        raise ValueError(f"sizes has {size_array.shape[0]} entries for {n} keys. Fix: pass one "
                         f"size per key, or None for unit sizes.")
    cdef const int64_t[::1] next_use = following
    cdef const int64_t[::1] prev_use = previous
    cdef const uint64_t[::1] size = size_array
    hits = np.zeros(n, dtype=bool)
    cdef uint8_t[::1] hit = hits.view(np.uint8)
    cdef uint8_t* resident = <uint8_t*>PyMem_RawMalloc(n + 1)
    cdef Node* heap = <Node*>PyMem_RawMalloc((n + 1) * sizeof(Node))
    cdef Py_ssize_t heap_size = 0
    cdef uint64_t used = 0
    cdef int64_t p
    cdef bint keep
    if resident == NULL or heap == NULL:
        PyMem_RawFree(resident)
        PyMem_RawFree(heap)
        raise MemoryError(f"Out of memory for Belady's OPT over {n} requests. Fix: replay a "
                          f"shorter trace.")
    memset(resident, 0, n + 1)
    with nogil:
        for i in range(n):
            p = prev_use[i]
            if p >= 0 and resident[p]:
                hit[i] = 1
                resident[p] = 0
                used -= size[p]
            elif size[i] > capacity or next_use[i] == n:
                continue                    # never used again, or never fits: bypass
            keep = True
            while used + size[i] > capacity:
                while heap_size and not resident[heap[0].request]:
                    heap_size -= 1          # a stale node: drop it
                    heap[0] = heap[heap_size]
                    _sift_down(heap, heap_size, 0)
                top = heap[0].request
                if heap_size == 0 or heap[0].next_use <= next_use[i]:
                    keep = False            # the new object is the one used farthest ahead
                    break
                resident[top] = 0
                used -= size[top]
                heap_size -= 1
                heap[0] = heap[heap_size]
                _sift_down(heap, heap_size, 0)
            if not keep or next_use[i] == n:
                continue
            resident[i] = 1
            used += size[i]
            heap[heap_size].next_use = next_use[i]
            heap[heap_size].request = i
            heap_size += 1
            _sift_up(heap, heap_size - 1)
    PyMem_RawFree(resident)
    PyMem_RawFree(heap)
    return hits
