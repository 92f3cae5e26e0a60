"""Prefetches: fetches sent ahead of time whose replies are read when a fetch wants them.

A cache that knows the keys of its next batch (a server scheduling its next requests) sends their
MGET at once (``RedisTier.prefetch_many``) and goes on with its current batch while the server
answers; the next fetch of the same thread reads the replies waiting on its connection, which by
then have usually arrived, so that the network's latency overlaps the caller's work instead of
adding to it.  No thread is involved: a background thread would have to take the GIL back from
the busy caller to deliver each reply, which costs more than the round trip it hides.

This module keeps the bookkeeping: which keys were sent by which thread and not read yet
(``sent``), and the results read but not taken yet (``held``, shared by every thread).  Results are
held for ``MAX_AGE_SECONDS`` and ``max_bytes`` at most, the oldest going first; ``forget(keys)``
drops what is held or under way for keys written since (their new value is the one to serve), and
``clear()`` drops everything (the server may have lost what it sent).
"""

from __future__ import annotations

import threading
import time
from collections import deque

__all__ = ["Batch", "Prefetches"]

#: How long a result is kept for a fetch that wants it.
MAX_AGE_SECONDS = 1.0
#: Requests one thread may have sent and not read; one more reads the oldest first.
MAX_OUTSTANDING = 4


class Batch:
    """One MGET sent for a prefetch, not read yet."""
    __slots__ = ("keys", "void", "sent_at")

    def __init__(self, keys: list[int]) -> None:
        self.keys = keys
        self.void: set[int] = set()     # keys written while the round trip was under way
        self.sent_at = time.perf_counter()


class Prefetches:
    """Prefetch requests under way and results not yet taken; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sent: dict[int, Batch] = {}       # key -> its batch under way, any thread's
        self._held: dict[int, tuple[bytes | None, float]] = {}  # key -> (value or None for a miss, when)
        self._held_bytes = 0

    @property
    def idle(self) -> bool:
        """True when nothing is held or under way (take() would return nothing)."""
        return not self._held and not self._sent

    def outstanding(self) -> deque[Batch]:
        """The calling thread's batches sent and not read, oldest first (its connection's order)."""
        batches = getattr(self._local, "batches", None)
        if batches is None:
            batches = self._local.batches = deque()
        return batches

    def to_read(self, keys: list[int]) -> int:
        """How many of the calling thread's oldest batches must be read for every one of *keys*
        that it has under way to be held: replies come in order, so up to the newest batch holding
        one of them.  A batch sent for a later step stays unread, its round trip still hiding
        behind the caller's work."""
        outstanding = self.outstanding()
        sent = self._sent
        depth = 0
        for key in keys:
            batch = sent.get(key)
            if batch is not None:
                for position in range(len(outstanding) - 1, depth - 1, -1):
                    if outstanding[position] is batch:
                        depth = position + 1
                        break
                if depth == len(outstanding):
                    break
        return depth

    def wanted(self, keys: list[int]) -> list[int]:
        """Those of *keys*, once each, neither held nor under way."""
        held, sent = self._held, self._sent
        return [key for key in dict.fromkeys(keys) if key not in held and key not in sent]

    def sent(self, keys: list[int]) -> Batch:
        """Record a batch the calling thread has just sent."""
        batch = Batch(keys)
        with self._lock:
            for key in keys:
                self._sent[key] = batch
        self.outstanding().append(batch)
        return batch

    def received(self, batch: Batch, values: list[bytes | None] | None) -> None:
        """*batch*'s reply was read (*values*), or lost (None)."""
        now = time.monotonic()
        with self._lock:
            for index, key in enumerate(batch.keys):
                if self._sent.get(key) is batch:
                    del self._sent[key]
                if values is None or key in batch.void:
                    continue
                value = values[index]
                previous = self._held.pop(key, None)
                if previous is not None and previous[0] is not None:
                    self._held_bytes -= len(previous[0])
                self._held[key] = (value, now)
                if value is not None:
                    self._held_bytes += len(value)
            self._expire(now)

    def take(self, keys: list[int]) -> dict[int, bytes | None]:
        """The results held for *keys* (value, or None for a key the server did not have), taken
        out.  Keys absent from the answer were not prefetched, or not read yet: fetch them."""
        taken: dict[int, bytes | None] = {}
        if not self._held:
            return taken
        with self._lock:
            self._expire(time.monotonic())
            for key in keys:
                held = self._held.pop(key, None)
                if held is not None:
                    taken[key] = held[0]
                    if held[0] is not None:
                        self._held_bytes -= len(held[0])
        return taken

    def forget(self, keys: list[int]) -> None:
        """Drop what is held for *keys* and void their batches under way (they were written)."""
        held, sent = self._held, self._sent
        if not any(key in held or key in sent for key in keys):
            return                      # the usual case, without taking the lock
        with self._lock:
            for key in keys:
                value = self._held.pop(key, None)
                if value is not None and value[0] is not None:
                    self._held_bytes -= len(value[0])
                batch = self._sent.get(key)
                if batch is not None:
                    batch.void.add(key)

    def clear(self) -> None:
        """Drop every result held and void every batch under way."""
        with self._lock:
            self._held.clear()
            self._held_bytes = 0
            for key, batch in self._sent.items():
                batch.void.add(key)

    def _expire(self, now: float) -> None:
        """Drop results older than MAX_AGE_SECONDS, or past max_bytes, oldest first (lock held)."""
        held = self._held
        while held:
            key = next(iter(held))
            value, when = held[key]
            if now - when < MAX_AGE_SECONDS and self._held_bytes <= self.max_bytes:
                break
            del held[key]
            if value is not None:
                self._held_bytes -= len(value)
