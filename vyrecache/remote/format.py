"""How one cache entry is stored as one Redis value, and the Redis key it is stored under.

Layout (little endian), 28 bytes of header then the payload::

    offset  size  field
    0       4     magic b"VYRC"
    4       2     format version (1)
    6       2     reserved, 0
    8       8     the cache key (uint64) the entry was written for
    16      8     payload size in bytes
    24      4     zlib.crc32 of the payload

A value is served only if every field checks out: the magic and version (a value some other program
wrote under our name, or a future format, is foreign), the key (a value copied or renamed from
another key), the size against the value's real length (a truncated or padded value) and the
checksum (flipped bits).  Anything else is treated as corrupt: a miss, never the bytes.

The key of entry ``k`` is ``{namespace}:v1:{k}`` with ``k`` in decimal.  There is no hash tag: on a
Redis Cluster each entry hashes by its whole name, so entries spread evenly over the masters, and a
batch is sent as one pipeline per master instead of one MGET (see ``client.py``).  The ``v1`` is
the format version, so a later format can live beside this one under the same namespace.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["FORMAT_VERSION", "HEADER_SIZE", "MAGIC", "decode", "encode", "key_prefix"]

MAGIC = b"VYRC"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHHQQI")
HEADER_SIZE = _HEADER.size


def key_prefix(namespace: str) -> bytes:
    """The bytes every Redis key of *namespace* starts with (the entry's decimal key follows)."""
    return f"{namespace}:v{FORMAT_VERSION}:".encode()


def encode(key: int, payload: memoryview) -> bytes:
    """Return the stored value of entry *key*: the header, then a copy of *payload* (bytes of a C-contiguous buffer)."""
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, key, payload.nbytes, zlib.crc32(payload))
    return b"".join((header, payload))


def decode(key: int, value: bytes) -> bytes | None:
    """Return the payload of *value* stored for *key*, or None when the value fails any header check."""
    if len(value) < HEADER_SIZE:
        return None
    magic, version, reserved, stored_key, size, checksum = _HEADER.unpack_from(value)
    if (magic != MAGIC or version != FORMAT_VERSION or reserved != 0 or stored_key != key
            or size != len(value) - HEADER_SIZE):
        return None
    if zlib.crc32(memoryview(value)[HEADER_SIZE:]) != checksum:
        return None
    return value[HEADER_SIZE:]
