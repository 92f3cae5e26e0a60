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
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import cast

import numpy as np

from ._core.key_uses import unique_count

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
        # One pass over the trace with a table of its keys: counted once a trace.
        return unique_count(self.keys)

    def __len__(self) -> int:
        return int(self.keys.size)


# A compressed file is known by its first bytes: as many as each format fixes, so that a plain
# binary trace is taken for a compressed one only if its first key spells a whole header.
_MAGIC = (("gzip", b"\x1f\x8b\x08"), ("xz", b"\xfd7zXZ\x00"), ("zstd", b"\x28\xb5\x2f\xfd"),
          ("bzip2", b"BZh"))
_BZIP2_BLOCKS = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")  # a block, the end


def _compression_of(start: bytes) -> str | None:
    """The compression a file's first 10 bytes say it has, or None for a plain file."""
    for name, magic in _MAGIC:
        if start.startswith(magic):
            if name != "bzip2":
                return name
            level = start[3:4]
            if level and level in b"123456789" and start[4:10] in _BZIP2_BLOCKS:
                return name
    return None


@contextmanager
def _decompressed(path: Path) -> Iterator[io.BufferedIOBase]:
    """The file's bytes as a stream, decompressed as its first bytes say (gzip, xz, bzip2, and
    zstd when the zstandard package is installed)."""
    with open(path, "rb") as raw:
        kind = _compression_of(raw.read(10))
        raw.seek(0)
        stream: io.BufferedIOBase
        if kind == "gzip":
            stream = gzip.GzipFile(fileobj=raw)
        elif kind == "xz":
            stream = lzma.LZMAFile(raw)
        elif kind == "bzip2":
            stream = bz2.BZ2File(raw)
        elif kind == "zstd":
            try:
                import zstandard
            except ImportError:
                raise ValueError(f"{path} is zstd-compressed and the zstandard package is not "
                                 f"installed. Fix: pip install zstandard, or decompress it with "
                                 f"`zstd -d {path}`.") from None
            # Not an io class, but it reads and reads into as one (all that is used here).
            stream = cast(io.BufferedIOBase, zstandard.ZstdDecompressor().stream_reader(raw))
        else:
            yield raw
            return
        with stream:
            yield stream


def _open_bytes(path: Path) -> bytes:
    with _decompressed(path) as stream:
        return stream.read()


# Binary traces are read a piece at a time, so that reading N records holds the columns kept
# and one piece of the file, where reading the file whole held the file, its decompressed copy
# and the columns at once (for oracleGeneral, 40 bytes a request and the compressed file,
# against 16).  A plain file's length says how many records it has, so its columns are made
# whole at the start and filled in place; a compressed one's are kept as pieces and joined one
# column at a time (24 bytes a request at the peak for oracleGeneral, 16 for one column).
_PIECE_RECORDS = 1 << 18                # up to 6 MiB of oracleGeneral records from a plain file
_COMPRESSED_PIECE_RECORDS = 1 << 16     # 1.5 MiB


def _fill(stream: io.BufferedIOBase, view: memoryview) -> int:
    """Read into `view` until it is full or the stream ends; the bytes read."""
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled


def _record_pieces(stream: io.BufferedIOBase, record: np.dtype, per_piece: int, path: Path,
                   what: str) -> Iterator[np.ndarray]:
    """The stream's records (of a decompressed file), `per_piece` at a time, as views of one
    buffer that the next piece overwrites."""
    width = record.itemsize
    piece = np.empty(width * per_piece, dtype=np.uint8)     # not zeroed: every byte is read
    total = 0
    while True:
        filled = _fill(stream, piece.data)
        total += filled
        if filled >= width:
            yield np.frombuffer(piece, dtype=record, count=filled // width)
        if filled < piece.size:
            break
    if total % width:
        raise ValueError(f"{path} is {total} bytes decompressed, not a whole number of "
                         f"{width}-byte {what}. Fix: pass --format for this file's format.")


def _binary_columns(path: Path, record: np.dtype, fields: tuple[str | None, ...],
                    what: str) -> list[np.ndarray]:
    """The uint64 columns `fields` of a file of `record`s (None: the record itself)."""
    width = record.itemsize
    with _decompressed(path) as stream:
        if not isinstance(stream, io.BufferedReader):       # decompressed as it is read
            pieces: list[list[np.ndarray]] = [[] for _ in fields]
            for records in _record_pieces(stream, record, _COMPRESSED_PIECE_RECORDS, path, what):
                for kept, field in zip(pieces, fields):
                    kept.append((records if field is None else records[field]).astype(np.uint64))
            return [_joined(kept) for kept in pieces]
        length = os.fstat(stream.fileno()).st_size
        if length % width:
            raise ValueError(f"{path} is {length} bytes, not a whole number of {width}-byte "
                             f"{what}. Fix: pass --format for this file's format.")
        known = length // width
        columns = [np.empty(known, dtype=np.uint64) for _ in fields]
        count = 0
        for records in _record_pieces(stream, record, max(1, min(known, _PIECE_RECORDS)),
                                      path, what):
            if count + records.size > known:
                break
            for column, field in zip(columns, fields):
                column[count:count + records.size] = records if field is None else records[field]
            count += records.size
    if count != known:
        raise ValueError(f"{path} changed while it was read ({length} bytes at the start). "
                         f"Fix: read a trace that nothing is writing.")
    return columns


def _joined(pieces: list[np.ndarray]) -> np.ndarray:
    """One column from its pieces, which are let go as it is made."""
    column = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.uint64)
    pieces.clear()
    return column


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
    kind = detect_format(path) if format == "auto" else format
    if kind == "oracle-general":
        columns = _binary_columns(path, _ORACLE_DTYPE, ("key", "size"), "oracleGeneral records")
        return Trace(str(path), kind, columns[0], columns[1])
    if kind in ("cache2k", "scarab"):
        width = 4 if kind == "cache2k" else 8
        columns = _binary_columns(path, np.dtype(f">u{width}"), (None,), "keys")
        return Trace(str(path), kind, columns[0])
    data = _open_bytes(path)
    if format == "auto":
        kind = detect_format(path, data)
    if kind == "mooncake":
        keys, starts = _mooncake(path, data)
        return Trace(str(path), kind, keys, request_starts=starts)
    if kind == "csv":
        keys, sizes = _csv(path, data)
        return Trace(str(path), kind, keys, sizes)
    return Trace(str(path), kind, _text_keys(path, data, skip_star=kind == "lirs"))
