# cython: language_level=3, boundscheck=False, wraparound=False
"""The remote tier's stored values, encoded and checked in C (the layout is documented in
``vyrecache/remote/format.py``).  A fetch of 16 KiB entries spends about as long checking each value
as redis-py spends reading it, so the whole check of a batch runs here, one C loop per batch."""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memmove, memset

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


# -- a round trip of writes, framed for the wire ----------------------------------------------------

cdef inline Py_ssize_t _digits(uint64_t value) noexcept nogil:
    cdef Py_ssize_t count = 1
    while value >= 10:
        value //= 10
        count += 1
    return count


cdef inline char *_put_decimal(char *out, uint64_t value) noexcept nogil:
    cdef Py_ssize_t count = _digits(value), i
    for i in range(count - 1, -1, -1):
        out[i] = <char>(48 + value % 10)
        value //= 10
    return out + count


cdef inline char *_put_text(char *out, const char *text, Py_ssize_t size) noexcept nogil:
    memcpy(out, text, <size_t>size)
    return out + size


cdef inline char *_put_bulk_length(char *out, uint64_t size) noexcept nogil:
    """``$<size>\\r\\n``, the start of a RESP bulk string."""
    out[0] = 36
    out = _put_decimal(out + 1, size)
    out[0] = 13
    out[1] = 10
    return out + 2


cdef inline Py_ssize_t _bulk_length_size(uint64_t size) noexcept nogil:
    return 3 + _digits(size)


cdef inline char *_put_value_end(char *out, bint with_ttl, uint64_t ttl) noexcept nogil:
    """The end of a value: its CRLF, then for a SET the ``PX ttl`` arguments (ttl_size bytes)."""
    out = _put_text(out, b"\r\n", 2)
    if with_ttl:
        out = _put_text(out, b"$2\r\nPX\r\n", 8)
        out = _put_bulk_length(out, _digits(ttl))
        out = _put_decimal(out, ttl)
        out = _put_text(out, b"\r\n", 2)
    return out


def frame_writes(bytes prefix not None, list keys not None, list payloads not None, ttl_ms=None):
    """The bytes that store each payload under ``prefix + str(key)`` with its header, in one round
    trip: ``(buffers, replies)``, the buffers to send in order and the number of replies to read.

    Without *ttl_ms* the round trip is one ``MSET``; with it, one ``SET name value PX ttl_ms`` per
    entry, pipelined.  The payloads (bytes) are among the buffers as they are, not copied: every
    other buffer is a small piece of framing that ends with the next value's 32-byte header, so a
    round trip is two buffers per entry (see send_writes).  The checksums are computed here.
    """
    cdef Py_ssize_t n = len(keys), i, size, name_size, head_size, prefix_size = len(prefix)
    cdef Py_ssize_t ttl_size = 0, tail_size
    cdef uint64_t ttl = 0
    cdef const char **data = NULL
    cdef Py_ssize_t *sizes = NULL
    cdef uint64_t *sums = NULL
    cdef uint64_t *key_values = NULL
    cdef char *out
    cdef char *start
    cdef bint with_ttl = ttl_ms is not None
    if len(payloads) != n:
        raise ValueError(f"frame_writes got {n} keys but {len(payloads)} payloads. Fix: pass one payload per key.")
    if n == 0:
        raise ValueError("frame_writes needs at least one entry. Fix: send nothing for an empty batch.")
    if with_ttl:
        ttl = ttl_ms
        ttl_size = 8 + _bulk_length_size(_digits(ttl)) + _digits(ttl) + 2    # $2 PX, then $len ttl
    data = <const char **>malloc(n * sizeof(char *))
    sizes = <Py_ssize_t *>malloc(n * sizeof(Py_ssize_t))
    sums = <uint64_t *>malloc(n * sizeof(uint64_t))
    key_values = <uint64_t *>malloc(n * sizeof(uint64_t))
    try:
        if data == NULL or sizes == NULL or sums == NULL or key_values == NULL:
            raise MemoryError("could not allocate the framing of a round trip of writes")
        for i in range(n):
            payload = payloads[i]
            if type(payload) is not bytes:
                raise TypeError(f"frame_writes needs bytes payloads, got a {type(payload).__name__} for key "
                                f"{keys[i]!r}. Fix: pass bytes(value).")
            key_values[i] = keys[i]
            data[i] = PyBytes_AS_STRING(payload)
            sizes[i] = PyBytes_GET_SIZE(payload)
        # Without the GIL: the thread that serves the cache need not wait for the checksums of a
        # round trip of writes (the payloads are bytes, which nobody changes, held by the list).
        with nogil:
            for i in range(n):
                sums[i] = vc_xxh64(<const unsigned char *>data[i], <size_t>sizes[i], 0)
        buffers = []
        for i in range(n):
            size = sizes[i]
            name_size = prefix_size + _digits(key_values[i])
            head_size = _bulk_length_size(name_size) + name_size + 2 + _bulk_length_size(_HEADER + size) + _HEADER
            if i:
                head_size += 2 + ttl_size                       # the previous value's end (and PX)
            elif not with_ttl:
                head_size += 1 + _digits(2 * n + 1) + 2 + 10    # *<2n+1>, then $4 MSET
            if with_ttl:
                head_size += 4 + 9                              # *5, then $3 SET
            head = PyBytes_FromStringAndSize(NULL, head_size)
            out = start = PyBytes_AS_STRING(head)
            if i:
                out = _put_value_end(out, with_ttl, ttl)
            if with_ttl:
                out = _put_text(out, b"*5\r\n$3\r\nSET\r\n", 13)
            elif i == 0:
                out[0] = 42
                out = _put_decimal(out + 1, 2 * n + 1)
                out = _put_text(out, b"\r\n$4\r\nMSET\r\n", 12)
            out = _put_bulk_length(out, name_size)
            out = _put_text(out, PyBytes_AS_STRING(prefix), prefix_size)
            out = _put_decimal(out, key_values[i])
            out = _put_text(out, b"\r\n", 2)
            out = _put_bulk_length(out, _HEADER + size)
            vc_store_le64(out, _FIRST_WORD)
            vc_store_le64(out + 8, key_values[i])
            vc_store_le64(out + 16, <uint64_t>size)
            vc_store_le64(out + 24, sums[i])
            out += _HEADER
            assert out - start == head_size
            buffers.append(head)
            if size:
                buffers.append(payloads[i])
        tail_size = 2 + (ttl_size if with_ttl else 0)
        tail = PyBytes_FromStringAndSize(NULL, tail_size)
        out = PyBytes_AS_STRING(tail)
        out = _put_value_end(out, with_ttl, ttl)
        buffers.append(tail)
        return buffers, (n if with_ttl else 1)
    finally:
        free(data)
        free(sizes)
        free(sums)
        free(key_values)


# -- a round trip of fetches, on the socket itself --------------------------------------------------

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum: POLLIN
    enum: POLLOUT

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    enum: MSG_NOSIGNAL
    enum: MSG_DONTWAIT

cdef extern from *:
    """
    #include <errno.h>
    static inline int vc_errno(void) { return errno; }
    /* EAGAIN and EWOULDBLOCK are one value on Linux, two on some systems. */
    static inline int vc_retry_later(void) { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }
    """
    int vc_errno() nogil
    int vc_retry_later() nogil
    enum: EINTR

from libc.stdlib cimport realloc

# What mget() reports instead of raising, so that its loop runs without the GIL.
cdef enum:
    _OK = 0
    _TIMEOUT = 1
    _CLOSED = 2
    _OS_ERROR = 3
    _PROTOCOL = 4
    _ERROR_REPLY = 5
    _NO_MEMORY = 6
    _AGAIN = 7          # nothing to read yet: wait for the socket, then read again


cdef int _poll(int fd, short events, int timeout_ms) noexcept nogil:
    """Wait until the socket is ready for `events`: _OK, _TIMEOUT or _OS_ERROR."""
    cdef pollfd entry
    cdef int ready
    entry.fd = fd
    entry.events = events
    entry.revents = 0
    while True:
        ready = poll(&entry, 1, timeout_ms)
        if ready > 0:
            return _OK
        if ready == 0:
            return _TIMEOUT
        if vc_errno() != EINTR:
            return _OS_ERROR


cdef int _wait(int fd, short events, int timeout_ms) noexcept:
    """_poll(), the one place a round trip gives the GIL away: the sends and reads around it
    never block (MSG_DONTWAIT), and a thread that gives the GIL away for a moment waits for the
    busiest other thread to hand it back, which costs more than a short copy."""
    cdef int status
    with nogil:
        status = _poll(fd, events, timeout_ms)
    return status


cdef int _send_all(int fd, const char *data, Py_ssize_t size, int timeout_ms) noexcept:
    cdef ssize_t sent
    cdef int status
    while size > 0:
        sent = send(fd, data, <size_t>size, MSG_NOSIGNAL | MSG_DONTWAIT)
        if sent > 0:
            data += sent
            size -= sent
        elif sent < 0 and vc_retry_later():
            status = _wait(fd, POLLOUT, timeout_ms)
            if status != _OK:
                return status
        else:
            return _OS_ERROR
    return _OK


cdef int _receive(int fd, char *data, Py_ssize_t capacity, Py_ssize_t *filled) noexcept nogil:
    """Append what the socket holds to `data` (`filled` of `capacity` bytes taken): _OK (filled
    grew), _AGAIN (nothing there yet; the caller waits its own way), _CLOSED or _OS_ERROR."""
    cdef ssize_t got = recv(fd, data + filled[0], <size_t>(capacity - filled[0]), MSG_DONTWAIT)
    if got > 0:
        filled[0] += got
        return _OK
    if got == 0:
        return _CLOSED
    return _AGAIN if vc_retry_later() else _OS_ERROR


cdef Py_ssize_t _line_end(const char *data, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    """Index of the "\r\n" at or after start, or -1 if the line is not complete yet."""
    cdef Py_ssize_t i
    for i in range(start, end - 1):
        if data[i] == 13 and data[i + 1] == 10:
            return i
    return -1


cdef int _parse_int(const char *data, Py_ssize_t start, Py_ssize_t end, Py_ssize_t *out) noexcept nogil:
    cdef Py_ssize_t value = 0
    cdef bint negative = False
    if start < end and data[start] == 45:
        negative = True
        start += 1
    if start >= end or end - start > 18:
        return _PROTOCOL
    while start < end:
        if not 48 <= data[start] <= 57:
            return _PROTOCOL
        value = value * 10 + (data[start] - 48)
        start += 1
    out[0] = -value if negative else value
    return _OK


cdef int _mget_reply(int fd, Py_ssize_t count, int timeout_ms, char **buffer_out, Py_ssize_t *starts,
                     Py_ssize_t *lengths) noexcept:
    """Read the reply to an MGET of `count` keys: each element's start and length (-1: nil) in the
    buffer, which grows as needed and is the caller's to free.  RESP2 and RESP3 nils both.

    It never reads past the reply's end: the replies of later MGETs sent on the same connection
    (prefetches) may follow it on the socket.  Each read asks for at most what the reply still
    holds at the least, every element left taking 3 bytes or more (``_\\r\\n``)."""
    cdef Py_ssize_t capacity = 1 << 18, filled = 0, position = 0, element = -1, line, size = 0
    cdef Py_ssize_t least
    cdef bint in_bulk = False
    cdef char *data = <char *>malloc(capacity)
    cdef char *grown
    cdef char kind
    cdef int status
    buffer_out[0] = data
    if data == NULL:
        return _NO_MEMORY
    while True:
        while True:                             # parse what has arrived
            if element == count:
                return _OK
            if in_bulk:
                if filled - position < size + 2:
                    break
                starts[element] = position
                lengths[element] = size
                position += size + 2
                element += 1
                in_bulk = False
                continue
            line = _line_end(data, position, filled)
            if line < 0:
                break
            kind = data[position]
            if element < 0:
                if kind != 42:                  # '*', the array of the values
                    return _ERROR_REPLY if kind == 45 else _PROTOCOL
                if _parse_int(data, position + 1, line, &size) != _OK or size != count:
                    return _PROTOCOL
                element = 0
            elif kind == 95:                    # '_', a RESP3 nil
                starts[element] = -1
                lengths[element] = -1
                element += 1
            elif kind == 36:                    # '$', a bulk string, or -1 for a RESP2 nil
                if _parse_int(data, position + 1, line, &size) != _OK or size < -1:
                    return _PROTOCOL
                if size < 0:
                    starts[element] = -1
                    lengths[element] = -1
                    element += 1
                else:
                    in_bulk = True
            else:
                return _ERROR_REPLY if kind == 45 else _PROTOCOL
            position = line + 2
        if filled == capacity:                  # read more
            grown = <char *>realloc(data, capacity * 2)
            if grown == NULL:
                return _NO_MEMORY
            data = grown
            capacity *= 2
            buffer_out[0] = data
        if element < 0:
            least = 3 + _digits(<uint64_t>count) + 3 * count
        elif in_bulk:
            least = size + 2 + 3 * (count - element - 1)
        else:
            least = 3 * (count - element)
        least -= filled - position              # what has arrived of it
        if least < 1:
            least = 1                           # a line is incomplete: its end is still to come
        status = _receive(fd, data, min(capacity, filled + least), &filled)
        if status == _AGAIN:
            status = _wait(fd, POLLIN, timeout_ms)
        if status != _OK:
            return status


class ReplyError(ValueError):
    """The server answered an MGET with something other than its values (an error, or garbage)."""


cdef char *_mget_request(bytes prefix, list keys, Py_ssize_t *size_out) except NULL:
    """The RESP of ``MGET prefix+key...``, malloc'ed (the caller frees it)."""
    cdef Py_ssize_t n = len(keys), i, size, prefix_size = len(prefix), name_size
    cdef uint64_t key
    cdef char *request
    cdef char *out
    size = 1 + _digits(n + 1) + 2 + 10
    for i in range(n):
        key = keys[i]
        name_size = prefix_size + _digits(key)
        size += _bulk_length_size(name_size) + name_size + 2
    request = <char *>malloc(size)
    if request == NULL:
        raise MemoryError("could not allocate an MGET request")
    out = request
    out[0] = 42
    out = _put_decimal(out + 1, n + 1)
    out = _put_text(out, b"\r\n$4\r\nMGET\r\n", 12)
    for i in range(n):
        key = keys[i]
        out = _put_bulk_length(out, prefix_size + _digits(key))
        out = _put_text(out, PyBytes_AS_STRING(prefix), prefix_size)
        out = _put_decimal(out, key)
        out = _put_text(out, b"\r\n", 2)
    size_out[0] = size
    return request


cdef int _raise_for(int status, Py_ssize_t n, double timeout) except -1:
    if status == _TIMEOUT:
        raise TimeoutError(f"no answer to an MGET of {n} keys within {timeout:g} s")
    if status == _CLOSED:
        raise ConnectionError("the server closed the connection during an MGET")
    if status == _OS_ERROR:
        raise ConnectionError(f"the socket failed during an MGET (errno {vc_errno()})")
    if status == _NO_MEMORY:
        raise MemoryError("could not grow the buffer of an MGET's reply")
    if status != _OK:
        raise ReplyError(f"the server answered an MGET of {n} keys with "
                         f"{'an error' if status == _ERROR_REPLY else 'something else than its values'}")
    return 0


def mget_send(int fd, bytes prefix not None, list keys not None, double timeout):
    """Send ``MGET prefix+key...`` on the connected non-blocking socket *fd*, without reading the
    reply: mget_receive() reads it later (replies come in the order of the requests).  Raises
    like mget()."""
    cdef Py_ssize_t size = 0
    cdef int status
    cdef int timeout_ms = max(1, <int>(timeout * 1000.0 + 0.5))
    cdef char *request = _mget_request(prefix, keys, &size)
    try:
        status = _send_all(fd, request, size, timeout_ms)
        _raise_for(status, len(keys), timeout)
    finally:
        free(request)


cdef class Reply:
    """The read-only bytes of one MGET reply, for its payloads as memoryviews without a copy each
    (``mget_receive(..., views=True)``); freed when the last view of it goes."""

    cdef char *data
    cdef Py_ssize_t size

    def __dealloc__(self):
        free(self.data)

    def __len__(self):
        return self.size

    def __getbuffer__(self, Py_buffer *view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("a fetched reply is read-only. Fix: copy it (bytes(view)) to change it.")
        PyBuffer_FillInfo(view, self, self.data, self.size, 1, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass


def mget_receive(int fd, list keys not None, double timeout, bint views=False):
    """Read and check the reply of an MGET of *keys* sent earlier on *fd*; returns and raises like mget().
    With *views*, each payload is a read-only memoryview into the reply (``Reply``) instead of a
    bytes object of its own: the one copy of the bytes is then the caller's."""
    cdef Py_ssize_t n = len(keys), i
    cdef uint64_t *key_values = <uint64_t *>malloc(max(n, 1) * sizeof(uint64_t))
    cdef Py_ssize_t *starts = <Py_ssize_t *>malloc(max(n, 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t *lengths = <Py_ssize_t *>malloc(max(n, 1) * sizeof(Py_ssize_t))
    cdef char *valid = <char *>malloc(max(n, 1))
    cdef char *reply = NULL
    cdef int status = _OK
    cdef int timeout_ms = max(1, <int>(timeout * 1000.0 + 0.5))
    cdef Py_ssize_t hits = 0, nbytes = 0
    cdef Reply owner
    try:
        if key_values == NULL or starts == NULL or lengths == NULL or valid == NULL:
            raise MemoryError("could not allocate an MGET's bookkeeping")
        for i in range(n):
            key_values[i] = keys[i]
        status = _mget_reply(fd, n, timeout_ms, &reply, starts, lengths)
        if status == _OK:
            with nogil:     # the checksums of the whole reply: the writer thread may run meanwhile
                for i in range(n):
                    valid[i] = lengths[i] >= 0 and _valid(reply + starts[i], lengths[i], key_values[i])
        _raise_for(status, n, timeout)
        values = [None] * n
        corrupt = []
        whole = None
        if views:
            owner = Reply.__new__(Reply)
            owner.data = reply
            owner.size = 0              # up to the last payload's end
            for i in range(n):
                if lengths[i] >= 0 and starts[i] + lengths[i] > owner.size:
                    owner.size = starts[i] + lengths[i]
            reply = NULL                # the Reply frees it
            whole = memoryview(owner)
        for i in range(n):
            if valid[i]:
                if views:
                    values[i] = whole[starts[i] + _HEADER:starts[i] + lengths[i]]
                else:
                    values[i] = PyBytes_FromStringAndSize(reply + starts[i] + _HEADER, lengths[i] - _HEADER)
                hits += 1
                nbytes += lengths[i] - _HEADER
            elif lengths[i] >= 0:
                corrupt.append(i)
        return values, hits, nbytes, corrupt
    finally:
        free(key_values)
        free(starts)
        free(lengths)
        free(valid)
        free(reply)


def mget(int fd, bytes prefix not None, list keys not None, double timeout, bint views=False):
    """One MGET of ``prefix + str(key)`` for each of *keys* on the connected socket *fd* (non-
    blocking, as Python leaves a socket with a timeout), decoded like decode_many: returns
    ``(values, hits, payload bytes, corrupt indices)``.

    The request, the wait for the reply, its parsing and the checksums run without the GIL, and
    the reply is read in as few ``recv`` calls as the kernel allows (redis-py's parser gives the
    GIL away and waits to get it back after each of its reads).  Each wait for the socket lasts at
    most *timeout* seconds.

    Raises:
        TimeoutError: a wait ran past *timeout*.
        ConnectionError: the server closed the connection, or the socket failed.
        ReplyError: the reply was an error or not an MGET's (the connection's state is unknown).
    """
    mget_send(fd, prefix, keys, timeout)
    return mget_receive(fd, keys, timeout, views)


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    struct msghdr:
        void *msg_name
        unsigned int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr *message, int flags)


cdef int _sendmsg_all(int fd, iovec *vectors, Py_ssize_t count, int timeout_ms) noexcept nogil:
    cdef msghdr message
    cdef ssize_t sent
    cdef int status
    memset(&message, 0, sizeof(message))
    while count > 0:
        message.msg_iov = vectors
        message.msg_iovlen = <size_t>(count if count < 1024 else 1024)
        sent = sendmsg(fd, &message, MSG_NOSIGNAL | MSG_DONTWAIT)
        if sent < 0:
            if not vc_retry_later():
                return _OS_ERROR
            status = _poll(fd, POLLOUT, timeout_ms)
            if status != _OK:
                return status
            continue
        while count > 0 and <size_t>sent >= vectors[0].iov_len:
            sent -= vectors[0].iov_len
            vectors += 1
            count -= 1
        if count > 0 and sent > 0:
            vectors[0].iov_base = <char *>vectors[0].iov_base + sent
            vectors[0].iov_len -= <size_t>sent
    return _OK


cdef int _ok_replies(int fd, Py_ssize_t count, int timeout_ms) noexcept nogil:
    """Read *count* replies that must each be ``+OK``."""
    cdef char data[4096]
    cdef Py_ssize_t filled = 0, position, line
    cdef int status
    while count > 0:
        position = 0
        while count > 0:
            line = _line_end(data, position, filled)
            if line < 0:
                break
            if line - position != 3 or data[position] != 43 or data[position + 1] != 79 or data[position + 2] != 75:
                return _ERROR_REPLY if data[position] == 45 else _PROTOCOL
            position = line + 2
            count -= 1
        if count == 0:
            return _OK if position == filled else _PROTOCOL
        memmove(data, data + position, <size_t>(filled - position))
        filled -= position
        if filled == sizeof(data):
            return _PROTOCOL
        status = _receive(fd, data, sizeof(data), &filled)
        if status == _AGAIN:
            status = _poll(fd, POLLIN, timeout_ms)
        if status != _OK:
            return status
    return _OK


def send_writes(int fd, list buffers not None, Py_ssize_t replies, double timeout):
    """Send *buffers* (bytes, from frame_writes) in order on the connected socket *fd* and read the
    *replies* ``+OK`` they earn, all without the GIL: a background thread that sends a round trip
    takes the GIL back once, not after every system call.  Each wait lasts at most *timeout*.

    Raises TimeoutError, ConnectionError or ReplyError like mget() (an error reply: the server
    refused the writes, e.g. out of memory).
    """
    cdef Py_ssize_t n = len(buffers), i
    cdef iovec *vectors = <iovec *>malloc(max(n, 1) * sizeof(iovec))
    cdef int status
    cdef int timeout_ms = max(1, <int>(timeout * 1000.0 + 0.5))
    try:
        if vectors == NULL:
            raise MemoryError("could not allocate a round trip's buffer list")
        for i in range(n):
            buffer = buffers[i]
            if type(buffer) is not bytes:
                raise TypeError(f"send_writes needs bytes buffers, got a {type(buffer).__name__}. "
                                "Fix: pass what frame_writes returned.")
            vectors[i].iov_base = PyBytes_AS_STRING(buffer)
            vectors[i].iov_len = <size_t>PyBytes_GET_SIZE(buffer)
        with nogil:
            status = _sendmsg_all(fd, vectors, n, timeout_ms)
            if status == _OK:
                status = _ok_replies(fd, replies, timeout_ms)
        if status == _ERROR_REPLY:
            raise ReplyError("the server refused the writes (an error reply)")
        _raise_for(status, n, timeout)
    finally:
        free(vectors)
