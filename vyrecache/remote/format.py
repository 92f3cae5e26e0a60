"""How one cache entry is stored as one Redis value, and the Redis key it is stored under.

Layout (little endian), 32 bytes of header then the payload::

    offset  size  field
    0       4     magic b"VYRC"
    4       2     format version (1)
    6       2     reserved, 0
    8       8     the cache key (uint64) the entry was written for
    16      8     payload size in bytes
    24      8     XXH64 (seed 0) of the payload, see ``_core/checksum.h``

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

# The encoding and the checks run in C, a whole fetched batch per call (_core/remote_format.pyx).
from .._core.remote_format import HEADER_SIZE, decode, decode_many, encode, xxh64

__all__ = ["FORMAT_VERSION", "HEADER", "HEADER_SIZE", "MAGIC", "decode", "decode_many", "encode", "key_prefix",
           "xxh64"]

MAGIC = b"VYRC"
FORMAT_VERSION = 1
#: The header as a struct (magic, version, reserved, key, payload size, checksum), for tools and tests.
HEADER = struct.Struct("<4sHHQQQ")
assert HEADER.size == HEADER_SIZE


def key_prefix(namespace: str) -> bytes:
    """The bytes every Redis key of *namespace* starts with (the entry's decimal key follows)."""
    return f"{namespace}:v{FORMAT_VERSION}:".encode()
