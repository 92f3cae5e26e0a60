"""The bounded queue and background thread that send the remote tier's writes.

``submit()`` never waits for the network: it admits a job only while the queued bytes stay within
``max_pending_bytes`` and reports what it refused, so a slow or absent server costs the caller
nothing but dropped writes.  One daemon thread takes jobs in order and hands them to ``send``;
consecutive small jobs are merged into one round trip of up to ``ROUND_TRIP_BYTES`` /
``ROUND_TRIP_ENTRIES`` and large ones are cut to that size, so that no single command holds the
server (or runs into the socket timeout) for long.

The thread does not wake for every job: a cache evicting one entry per operation would make it
take the GIL (and send a one-entry round trip) thousands of times a second, stalling the thread
that serves the cache.  It waits until ``BATCH_BYTES`` are queued, or the oldest job has waited
``LINGER_SECONDS``, or someone flushes or stops the queue, and then sends everything queued.

The thread survives every error: whatever ``send`` raises is handed to ``on_error`` with the job, and
the thread goes on with the next job.  It only ends when ``stop()`` is called.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Job", "WriteQueue"]

#: Largest round trip the thread sends: big enough that per-command overhead is negligible for
#: 16 KiB entries, small enough to move in a few milliseconds on a LAN.
ROUND_TRIP_BYTES = 4 << 20
ROUND_TRIP_ENTRIES = 1024
#: Queued bytes that wake the thread at once, and the longest a queued job waits for more.
BATCH_BYTES = 1 << 20
LINGER_SECONDS = 0.005


@dataclass
class Job:
    """Entries to store (``values``: their payloads, given) or delete (``values`` None), by key."""
    keys: list[int]
    values: list[bytes] | None
    payload_bytes: int = 0          # the user's bytes, without headers (counted as bytes_written)
    queued_bytes: int = 0           # what the job holds against max_pending_bytes


class WriteQueue:
    """Jobs waiting for the writer thread; thread-safe."""

    def __init__(self, send: Callable[[Job], None], on_error: Callable[[Job, BaseException], None],
                 max_pending_bytes: int, name: str) -> None:
        self._send = send
        self._on_error = on_error
        self.max_pending_bytes = max_pending_bytes
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition(threading.Lock())
        self.pending_bytes = 0
        #: key -> value of each write queued and not yet done (sent or dropped), the newest per key
        self.pending: dict[int, bytes] = {}
        self._unfinished = 0
        self._stopping = False
        self._flushing = 0              # callers waiting in flush(): send without lingering
        self._idle = False              # the thread sleeps until woken (nothing was queued)
        self._oldest = 0.0              # when the oldest queued job was submitted (monotonic)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the writer thread runs."""
        return self._thread.is_alive()

    def offer(self, keys: list[int], values: list[bytes], overhead: int) -> int:
        """Queue, as one job, those entries whose ``len(value) + overhead`` bytes still fit under
        max_pending_bytes (in order), and record them in ``pending``; the number queued.  One
        lock for the whole batch: the thread that serves a cache calls this once per operation."""
        with self._cond:
            if self._stopping:
                return 0
            sizes = [len(value) + overhead for value in values]
            queued = sum(sizes)
            if self.pending_bytes + queued > self.max_pending_bytes:
                kept_keys, kept_values, queued = [], [], 0
                for key, value, size in zip(keys, values, sizes):
                    if self.pending_bytes + queued + size <= self.max_pending_bytes:
                        kept_keys.append(key)
                        kept_values.append(value)
                        queued += size
                keys, values = kept_keys, kept_values
            if keys:
                self.pending_bytes += queued
                self.pending.update(zip(keys, values))
                self._append(Job(keys, values, queued - overhead * len(keys), queued))
            return len(keys)

    def submit(self, job: Job) -> None:
        """Queue *job*, a deletion (which needs no room in the queue)."""
        with self._cond:
            self._append(job)

    def _append(self, job: Job) -> None:
        if not self._jobs:
            self._oldest = time.monotonic()
        # Wake the thread only if it sleeps until woken (it lingers from this job then), or for
        # a full batch; lingering, it finds the job by itself.
        wake = self._idle or self.pending_bytes >= BATCH_BYTES
        self._jobs.append(job)
        self._unfinished += 1
        if wake:
            self._cond.notify_all()

    def flush(self, timeout: float | None) -> bool:
        """Wait until every job submitted so far is done; False if *timeout* seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if not self._unfinished:
                return True
            self._flushing += 1
            self._cond.notify_all()     # a thread lingering over a small batch sends it now
            try:
                while self._unfinished:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._flushing -= 1

    def stop(self, timeout: float) -> list[Job]:
        """End the thread (after the job it is sending, waiting up to *timeout* seconds for it) and
        return the jobs it never took."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if timeout > 0 and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._cond:
            left = list(self._jobs)
            self._jobs.clear()
            self._forget(left)
            self._unfinished -= len(left)
            self.pending_bytes -= sum(job.queued_bytes for job in left)
            self._cond.notify_all()
        return left

    def _take(self) -> list[Job] | None:
        """The next round trip's jobs (several small writes merged), or None when stopping."""
        with self._cond:
            if not self._jobs and not self._stopping:
                # Linger once for the next job without being woken for it (each wake-up takes the
                # GIL from the thread serving the cache); only an idle queue sleeps until woken.
                self._cond.wait(LINGER_SECONDS)
                while not self._jobs and not self._stopping:
                    self._idle = True
                    try:
                        self._cond.wait()
                    finally:
                        self._idle = False
            while not self._stopping and not self._flushing and self.pending_bytes < BATCH_BYTES:
                lingered = time.monotonic() - self._oldest
                if lingered >= LINGER_SECONDS:
                    break
                self._cond.wait(LINGER_SECONDS - lingered)
            if self._stopping:
                return None
            first = self._jobs.popleft()
            taken = [first]
            if first.values is None:
                return taken
            entries, nbytes = len(first.keys), first.queued_bytes
            while self._jobs:
                following = self._jobs[0]
                if (following.values is None or entries + len(following.keys) > ROUND_TRIP_ENTRIES
                        or nbytes + following.queued_bytes > ROUND_TRIP_BYTES):
                    break
                taken.append(self._jobs.popleft())
                entries += len(following.keys)
                nbytes += following.queued_bytes
            return taken     # what is left (past a round trip's size) has waited already: sent next

    def _forget(self, jobs: list[Job]) -> None:
        """*jobs* are done: their keys are no longer pending, unless written again since (lock held)."""
        pending = self.pending
        for job in jobs:
            if job.values is not None:
                for key, value in zip(job.keys, job.values):
                    if pending.get(key) is value:
                        del pending[key]

    def _done(self, jobs: list[Job]) -> None:
        with self._cond:
            self._forget(jobs)
            self.pending_bytes -= sum(job.queued_bytes for job in jobs)
            self._unfinished -= len(jobs)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                try:
                    pieces = _round_trips(jobs)
                except BaseException as error:
                    pieces = []
                    for job in jobs:
                        self._report(job, error)
                for piece in pieces:
                    try:
                        self._send(piece)
                    except BaseException as error:  # the thread must outlive any failure of one job
                        self._report(piece, error)
            finally:
                self._done(jobs)

    def _report(self, job: Job, error: BaseException) -> None:
        try:
            self._on_error(job, error)
        except BaseException:
            pass  # counting a failure must not end the thread either


def _round_trips(jobs: list[Job]) -> list[Job]:
    """*jobs* merged, then cut into pieces of at most ROUND_TRIP_ENTRIES entries and ROUND_TRIP_BYTES."""
    if len(jobs) == 1 and (jobs[0].values is None or (len(jobs[0].keys) <= ROUND_TRIP_ENTRIES
                                                        and jobs[0].queued_bytes <= ROUND_TRIP_BYTES)):
        return jobs
    if jobs[0].values is None:
        keys = jobs[0].keys
        return [Job(keys[i:i + ROUND_TRIP_ENTRIES], None) for i in range(0, len(keys), ROUND_TRIP_ENTRIES)]
    pieces = []
    keys_out: list[int] = []
    values_out: list[bytes] = []
    nbytes = 0
    for job in jobs:
        assert job.values is not None
        for key, value in zip(job.keys, job.values):
            if keys_out and (len(keys_out) >= ROUND_TRIP_ENTRIES or nbytes + len(value) > ROUND_TRIP_BYTES):
                pieces.append(Job(keys_out, values_out, nbytes))
                keys_out, values_out, nbytes = [], [], 0
            keys_out.append(key)
            values_out.append(value)
            nbytes += len(value)
    if keys_out:
        pieces.append(Job(keys_out, values_out, nbytes))
    return pieces
