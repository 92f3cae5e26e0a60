"""Readers of cache traces: the formats of public trace collections, as arrays of keys.

``read_trace(path, format="auto")`` returns a :class:`Trace`: one uint64 key per request (block,
page or object), the sizes where the format has them, and for Mooncake traces where each
request's blocks start.  gzip and xz files are read transparently, zstd ones when the
``zstandard`` package is installed.

Formats (``FORMATS``):

* ``mooncake``: JSON lines with ``hash_ids``, one id per 512-token prefix block (Mooncake,
  FAST'25); the keys are every request's ids in order, one block each.
* ``oracle-general``: libCacheSim's binary records ``<u4 time, u8 id, u4 size, i8 next>``.
* ``lirs``: one block number a line, ``*`` lines are checkpoints (skipped).
* ``cache2k``: big-endian int32 keys; ``scarab``: big-endian int64 keys.
* ``csv``: a key column and an optional size column, with or without a header line.
* ``text``: one key a line; keys that are not integers are hashed to 64 bits.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

__all__ = ["FORMATS", "Trace", "read_trace", "detect_format"]

FORMATS = ("auto", "mooncake", "oracle-general", "lirs", "cache2k", "scarab", "csv", "text")

_ORACLE_DTYPE = np.dtype([("time", "<u4"), ("key", "<u8"), ("size", "<u4"), ("next", "<i8")])


@dataclass(frozen=True)
class Trace:
    """A trace as arrays: ``keys`` (uint64, one per request), ``sizes`` (uint64 or None),
    ``request_starts`` (Mooncake: the index of each request's first block, else None)."""

    path: str
    format: str
    keys: np.ndarray
    sizes: np.ndarray | None = None
    request_starts: np.ndarray | None = None

    @cached_property
    def unique_keys(self) -> int:
        # A sort of the whole trace (0.3 s for a million keys): counted once a trace.
        return int(np.unique(self.keys).size)

    def __len__(self) -> int:
        return int(self.keys.size)


def _open_bytes(path: Path) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        try:
            import zstandard
        except ImportError:
            raise ValueError(f"{path} is zstd-compressed and the zstandard package is not "
                             f"installed. Fix: pip install zstandard, or decompress it with "
                             f"`zstd -d {path}`.") from None
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            return reader.read()
    return data


def detect_format(path: str | Path, data: bytes | None = None) -> str:
    """The format a file's name (and, for text, its first line) says it has."""
    name = Path(path).name.lower()
    for suffix in (".gz", ".xz", ".zst", ".bz2"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if "oraclegeneral" in name:
        return "oracle-general"
    if "cache2k" in name:
        return "cache2k"
    if "scarab" in name:
        return "scarab"
    if "lirs" in name:
        return "lirs"
    if name.endswith(".jsonl") or name.endswith(".json"):
        return "mooncake"
    if name.endswith(".csv"):
        return "csv"
    if data is not None and data.lstrip()[:1] == b"{":
        return "mooncake"
    return "text"


def _key_of(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    if not 0 <= value < 1 << 64:
        return value & ((1 << 64) - 1)
    return value


_DIGITS_AND_LINE_ENDS = b"0123456789\r\n"
_UINT64_MAX = (1 << 64) - 1


def _stars_alone(data: bytes) -> bool:
    """Whether every ``*`` of `data` is a line of its own (a LIRS checkpoint)."""
    at = data.find(b"*")
    while at >= 0:
        before = data[at - 1:at] if at else b"\n"
        after = data[at + 1:at + 2] or b"\n"
        if before != b"\n" or after not in (b"\n", b"\r"):
            return False
        at = data.find(b"*", at + 1)
    return True


def _plain_decimal_keys(data: bytes, skip_star: bool) -> np.ndarray | None:
    """The keys of a trace whose every line is blank or one plain decimal number (LIRS's ``*``
    lines aside), parsed in C at about 20 ns a key; None for any other text, which
    _text_keys_by_line reads.  The two agree on such a file: only digits, with ``\r`` only
    before ``\n``, leaves no line whose value int() and the C parser could read differently,
    and a number at 2**64 - 1 (where the C parser saturates) goes the slow way."""
    if skip_star and b"*" in data:
        if not _stars_alone(data):
            return None
        data = data.replace(b"*", b"")
    if data.translate(None, _DIGITS_AND_LINE_ENDS) or not data.strip():
        return None                 # not digits alone, or no key at all (NumPy would read a 0)
    if data.count(b"\r") != data.count(b"\r\n") + data.endswith(b"\r"):
        return None
    keys = np.fromstring(data, dtype=np.uint64, sep=" ")
    if int(keys.max()) == _UINT64_MAX:
        return None
    return keys


def _text_keys(path: Path, data: bytes, skip_star: bool) -> np.ndarray:
    keys = _plain_decimal_keys(data, skip_star)
    return keys if keys is not None else _text_keys_by_line(path, data, skip_star)


def _text_keys_by_line(path: Path, data: bytes, skip_star: bool) -> np.ndarray:
    lines = data.decode("utf-8", errors="replace").split("\n")
    keys = []
    for line in lines:
        line = line.strip()
        if not line or (skip_star and line == "*"):
            continue
        keys.append(_key_of(line))
    if not keys:
        raise ValueError(f"{path} holds no keys. Fix: pass a trace with one key a line.")
    return np.array(keys, dtype=np.uint64)


def _csv(path: Path, data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    keys, sizes = [], []
    rows = [row for row in data.decode("utf-8", errors="replace").splitlines() if row.strip()]
    key_column, size_column = 0, None
    if rows:
        header = [cell.strip().lower() for cell in rows[0].split(",")]
        if not header[0].lstrip("-").isdigit():
            named = {cell: index for index, cell in enumerate(header)}
            key_column = next((named[n] for n in ("key", "obj_id", "id") if n in named), 0)
            size_column = next((named[n] for n in ("size", "obj_size", "bytes") if n in named),
                               None)
            rows = rows[1:]
        elif len(header) > 1:
            size_column = 1
    for number, row in enumerate(rows, 2 if size_column is not None or key_column else 1):
        cells = [cell.strip() for cell in row.split(",")]
        keys.append(_key_of(cells[key_column]))
        if size_column is not None:
            try:
                size = int(cells[size_column])
            except (ValueError, IndexError):
                raise ValueError(f"{path}, row {number}: size {row!r} is not an integer. Fix: "
                                 f"give every row a byte count in the size column.") from None
            if size < 0:
                raise ValueError(f"{path}, row {number}: size {size} is negative. Fix: give "
                                 f"every row a non-negative byte count.")
            sizes.append(size)
    if not keys:
        raise ValueError(f"{path} holds no rows. Fix: pass a CSV with a key column.")
    return (np.array(keys, dtype=np.uint64),
            np.array(sizes, dtype=np.uint64) if size_column is not None else None)


def _mooncake(path: Path, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    keys: list[int] = []
    starts: list[int] = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ids = record["hash_ids"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}, line {number}: not a Mooncake record with hash_ids "
                             f"({line[:60]!r}). Fix: pass --format for this file's format."
                             ) from None
        starts.append(len(keys))
        keys.extend(ids)
    if not keys:
        raise ValueError(f"{path} holds no Mooncake blocks. Fix: pass a JSONL trace whose "
                         f"records have hash_ids.")
    return np.array(keys, dtype=np.uint64), np.array(starts, dtype=np.int64)


def read_trace(path: str | Path, format: str = "auto") -> Trace:
    """Read a trace file (see the module docstring for the formats)."""
    path = Path(path)
    if format not in FORMATS:
        raise ValueError(f"Unknown trace format {format!r}. Fix: use one of "
                         f"{', '.join(FORMATS)}.")
    if not path.is_file():
        raise FileNotFoundError(f"Trace file {str(path)!r} does not exist. Fix: pass the path "
                                f"of a trace file.")
    data = _open_bytes(path)
    kind = detect_format(path, data) if format == "auto" else format
    if kind == "oracle-general":
        if len(data) % _ORACLE_DTYPE.itemsize:
            raise ValueError(f"{path} is {len(data)} bytes, not a whole number of "
                             f"{_ORACLE_DTYPE.itemsize}-byte oracleGeneral records. Fix: pass "
                             f"--format for this file's format.")
        records = np.frombuffer(data, dtype=_ORACLE_DTYPE)
        return Trace(str(path), kind, records["key"].copy(), records["size"].astype(np.uint64))
    if kind in ("cache2k", "scarab"):
        width = 4 if kind == "cache2k" else 8
        if len(data) % width:
            raise ValueError(f"{path} is {len(data)} bytes, not a whole number of {width}-byte "
                             f"keys. Fix: pass --format for this file's format.")
        keys = np.frombuffer(data, dtype=f">u{width}").astype(np.uint64)
        return Trace(str(path), kind, keys)
    if kind == "mooncake":
        keys, starts = _mooncake(path, data)
        return Trace(str(path), kind, keys, request_starts=starts)
    if kind == "csv":
        keys, sizes = _csv(path, data)
        return Trace(str(path), kind, keys, sizes)
    return Trace(str(path), kind, _text_keys(path, data, skip_star=kind == "lirs"))
