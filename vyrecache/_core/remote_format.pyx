# cython: language_level=3, boundscheck=False, wraparound=False
"""The remote tier's stored values, encoded and checked in C (the layout is documented in
``vyrecache/remote/format.py``).  A fetch of 16 KiB entries spends about as long checking each value
as redis-py spends reading it, so the whole check of a batch runs here, one C loop per batch."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memmove

# Borrowed-pointer versions of the list and bytes macros, so that decode_many holds no reference
# of its own to the value it resizes.
cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject **value, Py_ssize_t size)
    PyObject *_list_get "PyList_GET_ITEM" (object values, Py_ssize_t index)
    void _list_set "PyList_SET_ITEM" (object values, Py_ssize_t index, PyObject *item)
    int _bytes_check "PyBytes_CheckExact" (PyObject *item)
    char *_bytes_data "PyBytes_AS_STRING" (PyObject *item)
    Py_ssize_t _bytes_size "PyBytes_GET_SIZE" (PyObject *item)
    PyObject *_bytes_new "PyBytes_FromStringAndSize" (const char *data, Py_ssize_t size)
    Py_ssize_t _refcount "Py_REFCNT" (PyObject *item)
    void _decref "Py_DECREF" (PyObject *item)

cdef extern from "checksum.h":
    uint64_t vc_xxh64(const unsigned char *p, size_t n, uint64_t seed) nogil

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline void vc_store_le64(char *p, uint64_t v) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        memcpy(p, &v, 8);
    }
    static inline uint64_t vc_load_le64(const char *p) {
        uint64_t v;
        memcpy(&v, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        return v;
    }
    """
    void vc_store_le64(char *p, uint64_t v) nogil
    uint64_t vc_load_le64(const char *p) nogil

#: magic b"VYRC", version 1 and reserved 0 as the first 8 bytes, read as one little-endian word.
cdef uint64_t _FIRST_WORD = 0x56 | (0x59 << 8) | (0x52 << 16) | (0x43 << 24) | (<uint64_t>1 << 32)
HEADER_SIZE = 32
cdef Py_ssize_t _HEADER = 32


def xxh64(const unsigned char[::1] data not None, uint64_t seed=0):
    """Return the XXH64 of the bytes of *data* (a C-contiguous byte buffer) with *seed*."""
    if data.shape[0] == 0:
        return vc_xxh64(<const unsigned char *>b"", 0, seed)
    return vc_xxh64(&data[0], <size_t>data.shape[0], seed)


def encode(uint64_t key, const unsigned char[::1] payload not None):
    """Return the stored value of entry *key*: the 32-byte header, then a copy of *payload*."""
    cdef Py_ssize_t size = payload.shape[0]
    cdef const unsigned char *source = &payload[0] if size else <const unsigned char *>b""
    value = PyBytes_FromStringAndSize(NULL, _HEADER + size)
    cdef char *out = PyBytes_AS_STRING(value)
    vc_store_le64(out, _FIRST_WORD)
    vc_store_le64(out + 8, key)
    vc_store_le64(out + 16, <uint64_t>size)
    vc_store_le64(out + 24, vc_xxh64(source, <size_t>size, 0))
    if size:
        memcpy(out + _HEADER, source, <size_t>size)
    return value


cdef inline bint _valid(const char *value, Py_ssize_t length, uint64_t key) noexcept nogil:
    if length < _HEADER:
        return False
    if vc_load_le64(value) != _FIRST_WORD or vc_load_le64(value + 8) != key:
        return False
    if vc_load_le64(value + 16) != <uint64_t>(length - _HEADER):
        return False
    return vc_load_le64(value + 24) == vc_xxh64(<const unsigned char *>value + _HEADER,
                                                <size_t>(length - _HEADER), 0)


def decode(uint64_t key, value):
    """Return the payload of *value* stored for *key*, or None when it fails any header check."""
    if type(value) is not bytes or not _valid(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), key):
        return None
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(value) + _HEADER, PyBytes_GET_SIZE(value) - _HEADER)


def decode_many(list keys not None, list values not None):
    """Decode a fetched batch in place: each value of *values* (bytes or None, for the key at the same
    index of *keys*) becomes its payload or None.  Returns (hits, payload bytes, corrupt indices).

    A fetched batch is fresh memory: copying each payload into a new bytes object page-faults in as
    many bytes again, which costs about as much as reading them from the socket.  So a value
    that only the list refers to (a reply just parsed, which nothing else has seen) has its
    payload slid down over the header, in cache, and is shrunk by 32 bytes in place, as the C API
    allows for a bytes object with a single reference (_PyBytes_Resize); any other is copied.
    """
    if len(keys) != len(values):
        raise ValueError(f"decode_many got {len(keys)} keys but {len(values)} values. "
                         "Fix: pass the reply of one fetch with the keys it was for.")
    cdef Py_ssize_t index, length, size, hits = 0, nbytes = 0
    cdef uint64_t key
    cdef PyObject *item
    cdef PyObject *payload
    cdef PyObject *none = <PyObject *>None
    corrupt = []
    for index in range(len(values)):
        key = keys[index]
        item = _list_get(values, index)  # borrowed: no reference of ours may exist for the resize
        if item == none:
            continue
        if _bytes_check(item):
            length = _bytes_size(item)
            if _valid(_bytes_data(item), length, key):
                size = length - _HEADER
                if _refcount(item) == 1:
                    memmove(_bytes_data(item), _bytes_data(item) + _HEADER, <size_t>size)
                    payload = item
                    if _PyBytes_Resize(&payload, size) < 0:  # the object is gone: never leave the slot dangling
                        Py_INCREF(None)
                        _list_set(values, index, none)
                        raise MemoryError(f"could not shrink a fetched value of {length} bytes")
                    _list_set(values, index, payload)  # the list's reference, moved with the object
                else:
                    payload = _bytes_new(_bytes_data(item) + _HEADER, size)
                    if payload == NULL:
                        raise MemoryError(f"could not copy a fetched value of {length} bytes")
                    _list_set(values, index, payload)
                    _decref(item)
                hits += 1
                nbytes += size
                continue
        Py_INCREF(None)
        _list_set(values, index, none)
        _decref(item)
        corrupt.append(index)
    return hits, nbytes, corrupt
