"""Fetches started ahead of time on a background thread, whose results wait for the fetch that wants them.

A cache that knows the keys of its next batch (a server scheduling its next requests) can have them
fetched while it serves the current one: ``submit(keys)`` queues one round trip and returns at once;
a later ``take(keys, wait)`` hands over what it brought, waiting (at most ``wait`` seconds) for a
round trip still under way, so that the network's latency overlaps the caller's work instead of
adding to it.

Results are held for ``MAX_AGE_SECONDS`` at most, and ``max_bytes`` of them at most (the oldest go
first): a result nobody takes is stale after that.  ``forget(keys)`` drops what is held or under
way for keys written since (their new value is the one to serve), and ``clear()`` drops everything
(the server may have lost what it sent).  The thread survives every error of a round trip: the keys
of a failed one are simply not held, and the caller fetches them itself.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Prefetcher"]

#: How long a result is kept for a take() that wants it.
MAX_AGE_SECONDS = 1.0


class _Batch:
    __slots__ = ("keys", "void")

    def __init__(self, keys: list[int]) -> None:
        self.keys = keys
        self.void: set[int] = set()     # keys written while the round trip was under way


class Prefetcher:
    """One background thread running ``round_trip(keys) -> list[bytes | None] | None``; thread-safe."""

    def __init__(self, round_trip: Callable[[list[int]], list[Any] | None], max_bytes: int, name: str) -> None:
        self._round_trip = round_trip
        self.max_bytes = max_bytes
        self._cond = threading.Condition(threading.Lock())
        self._batches: deque[_Batch] = deque()
        self._in_flight: dict[int, _Batch] = {}     # key -> its batch, queued or being fetched
        self._held: dict[int, tuple[bytes | None, float]] = {}  # key -> (value or None for a miss, when)
        self._held_bytes = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._name = name

    @property
    def idle(self) -> bool:
        """True when nothing is held or under way (take() would return nothing)."""
        return not self._held and not self._in_flight

    def submit(self, keys: list[int]) -> None:
        """Queue a round trip for those of *keys* neither held nor under way."""
        with self._cond:
            if self._stopping:
                return
            wanted = [key for key in dict.fromkeys(keys) if key not in self._in_flight and key not in self._held]
            if not wanted:
                return
            batch = _Batch(wanted)
            for key in wanted:
                self._in_flight[key] = batch
            self._batches.append(batch)
            if self._thread is None:    # started by the first prefetch: most caches never make one
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def take(self, keys: list[int], wait: float) -> dict[int, bytes | None]:
        """The results held for *keys* (value, or None for a key the server did not have), taken
        out; waits up to *wait* seconds for those still under way.  Keys absent from the answer
        were never prefetched (or their round trip failed): the caller fetches them."""
        taken: dict[int, bytes | None] = {}
        with self._cond:
            if self._in_flight:
                deadline = time.monotonic() + wait
                while any(key in self._in_flight for key in keys):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            if not self._held:
                return taken
            now = time.monotonic()
            self._expire(now)
            for key in keys:
                held = self._held.pop(key, None)
                if held is not None:
                    taken[key] = held[0]
                    if held[0] is not None:
                        self._held_bytes -= len(held[0])
        return taken

    def forget(self, keys: list[int]) -> None:
        """Drop what is held for *keys* and void their round trips under way (they were written)."""
        with self._cond:
            for key in keys:
                held = self._held.pop(key, None)
                if held is not None and held[0] is not None:
                    self._held_bytes -= len(held[0])
                batch = self._in_flight.get(key)
                if batch is not None:
                    batch.void.add(key)

    def clear(self) -> None:
        """Drop every result held and void every round trip under way."""
        with self._cond:
            self._held.clear()
            self._held_bytes = 0
            for key, batch in self._in_flight.items():
                batch.void.add(key)

    def stop(self, timeout: float) -> None:
        """End the thread (after the round trip it is in, waiting up to *timeout*) and drop everything."""
        with self._cond:
            self._stopping = True
            self._batches.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and timeout > 0 and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            self._in_flight.clear()
            self._held.clear()
            self._held_bytes = 0
            self._cond.notify_all()

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

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._batches and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                batch = self._batches.popleft()
            values: list[Any] | None = None
            try:
                values = self._round_trip(batch.keys)
            except BaseException:
                values = None   # the thread must outlive any failure: the caller fetches these keys itself
            with self._cond:
                now = time.monotonic()
                for index, key in enumerate(batch.keys):
                    if self._in_flight.get(key) is batch:
                        del self._in_flight[key]
                    if values is None or key in batch.void or self._stopping:
                        continue
                    value = values[index]
                    previous = self._held.pop(key, None)
                    if previous is not None and previous[0] is not None:
                        self._held_bytes -= len(previous[0])
                    self._held[key] = (value, now)
                    if value is not None:
                        self._held_bytes += len(value)
                self._expire(now)
                self._cond.notify_all()
