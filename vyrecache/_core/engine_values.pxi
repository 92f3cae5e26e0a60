# Value types the engine hands out, and the checks on what it is handed.

cdef extern from *:
    """
    /* Exact ints that fit in uint64 without a Python call: the hot path of every key and size.
       Returns 0 for anything else (bool, negative, too large, another type): the caller then
       takes the slow path, which either converts or raises a helpful error. */
    static CYTHON_INLINE int vc_exact_u64(PyObject *o, uint64_t *out) {
        if (Py_TYPE(o) != &PyLong_Type) return 0;
    #if PY_VERSION_HEX < 0x030C0000 && PyLong_SHIFT == 30
        {
            const digit *d = ((PyLongObject *)o)->ob_digit;
            switch (Py_SIZE(o)) {
            case 0: *out = 0; return 1;
            case 1: *out = d[0]; return 1;
            case 2: *out = (uint64_t)d[0] | ((uint64_t)d[1] << 30); return 1;
            case 3:
                if (d[2] >> 4) return 0;
                *out = (uint64_t)d[0] | ((uint64_t)d[1] << 30) | ((uint64_t)d[2] << 60);
                return 1;
            default: return 0;
            }
        }
    #else
        {
            unsigned long long v = PyLong_AsUnsignedLongLong(o);
            if (v == (unsigned long long)-1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
            *out = (uint64_t)v;
            return 1;
        }
    #endif
    }
    """
    bint vc_exact_u64(object o, uint64_t* out)


cdef uint64_t _u64_slow(object value, str what) except? 0:
    """Convert a key or size that is not a plain small int, or explain why it cannot be one."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be an int, got the bool {value!r}. "
                        f"Fix: pass an int in [0, 2**64) instead of True/False.")
    if isinstance(value, float) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}. "
                        f"Fix: pass an int in [0, 2**64) (convert with int() if it is integral).")
    try:
        number = operator.index(value)
    except TypeError:
        # Types whose __index__ refuses some values: numpy arrays of more than zero dimensions.
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}. "
                        f"Fix: pass one int in [0, 2**64) (for a one-item array a, int(a[0])).") from None
    if number < 0 or number >= _TWO_64:
        if what == "key":
            advice = ("map it into the unsigned 64-bit range, e.g. key & (2**64 - 1), or "
                      "hash(obj) & (2**64 - 1) for a key that is not an int")
        else:
            advice = f"pass a {what} in [0, 2**64)"
        raise ValueError(f"{what} must be in [0, 2**64), got {number}. Fix: {advice}.")
    return <uint64_t>number


cdef inline uint64_t _as_u64(object value, str what) except? 0:
    cdef uint64_t out
    if vc_exact_u64(value, &out):
        return out
    return _u64_slow(value, what)


cdef object _as_u64_array(object values, str what, Py_ssize_t length=-1):
    """A 1-D uint64 array of `values`; a scalar is repeated `length` times when length >= 0."""
    if length >= 0 and not isinstance(values, (np.ndarray, list, tuple)):
        # A read-only view with stride 0: no per-key fill for the common "one size for all".
        # `what` names the array ("sizes"); one value of it is one of them ("size").
        return np.broadcast_to(np.uint64(_as_u64(values, what[:-1])), (length,))
    array = np.asarray(values)
    if array.dtype != np.uint64:
        if array.size == 0:
            array = array.astype(np.uint64)
        elif array.dtype.kind == "i":
            if array.ndim == 1 and array.min() < 0:
                index = int(np.argmin(array))
                raise ValueError(f"{what}[{index}] must be in [0, 2**64), got {array[index]}. "
                                 f"Fix: pass non-negative {what}, ideally as a uint64 array.")
            array = array.astype(np.uint64)
        elif array.dtype.kind != "u":
            raise TypeError(f"{what} must be an array of unsigned 64-bit ints, got dtype "
                            f"{array.dtype}. Fix: pass np.asarray({what}, dtype=np.uint64).")
        else:
            array = array.astype(np.uint64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}. "
                         f"Fix: pass a flat array ({what}.ravel()).")
    if length >= 0 and array.shape[0] != length:
        raise ValueError(f"{what} has {array.shape[0]} items but keys has {length}. "
                         f"Fix: pass one {what[:-1]} per key, or a single int for all keys.")
    return array


cdef object _as_u64_keys(object keys):
    """_as_u64_array() for a batch call's keys, made contiguous (copied only if strided): the
    batch loops then index them as a plain C array."""
    return np.ascontiguousarray(_as_u64_array(keys, "keys"))


cdef class CacheEntry:
    """Where an entry lives: its key, its size in bytes and its tier index (immutable)."""

    cdef readonly object key
    cdef readonly object size
    cdef readonly int tier

    def __init__(self, key, size, int tier):
        self.key = key
        self.size = size
        self.tier = tier

    def __eq__(self, other):
        if type(other) is not CacheEntry:
            return NotImplemented
        cdef CacheEntry that = <CacheEntry>other
        return self.key == that.key and self.size == that.size and self.tier == that.tier

    def __hash__(self):
        return hash((self.key, self.size, self.tier))

    def __repr__(self):
        return f"CacheEntry(key={self.key}, size={self.size}, tier={self.tier})"

    def __reduce__(self):
        return CacheEntry, (self.key, self.size, self.tier)


cdef class AccessStats:
    """An entry's access statistics: frequency, last_access (a tick; higher is more recent), size."""

    cdef readonly object frequency
    cdef readonly object last_access
    cdef readonly object size

    def __init__(self, frequency, last_access, size):
        self.frequency = frequency
        self.last_access = last_access
        self.size = size

    def __eq__(self, other):
        if type(other) is not AccessStats:
            return NotImplemented
        cdef AccessStats that = <AccessStats>other
        return (self.frequency == that.frequency and self.last_access == that.last_access
                and self.size == that.size)

    def __hash__(self):
        return hash((self.frequency, self.last_access, self.size))

    def __repr__(self):
        return (f"AccessStats(frequency={self.frequency}, last_access={self.last_access}, "
                f"size={self.size})")

    def __reduce__(self):
        return AccessStats, (self.frequency, self.last_access, self.size)
