"""The bounded queue and background thread that send the remote tier's writes.

``submit()`` never waits for the network: it admits a job only while the queued bytes stay within
``max_pending_bytes`` and reports what it refused, so a slow or absent server costs the caller
nothing but dropped writes.  One daemon thread takes jobs in order and hands them to ``send``;
consecutive small jobs are merged into one round trip of up to ``ROUND_TRIP_BYTES`` /
``ROUND_TRIP_ENTRIES`` and large ones are cut to that size, so that no single command holds the
server (or runs into the socket timeout) for long.

The thread survives every error: whatever ``send`` raises is handed to ``on_error`` with the job, and
the thread goes on with the next job.  It only ends when ``stop()`` is called.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Job", "WriteQueue"]

#: Largest round trip the thread sends: big enough that per-command overhead is negligible for
#: 16 KiB entries, small enough to move in a few milliseconds on a LAN.
ROUND_TRIP_BYTES = 4 << 20
ROUND_TRIP_ENTRIES = 1024


@dataclass
class Job:
    """Entries to store (``values`` given) or delete (``values`` None), by Redis key name."""
    names: list[bytes]
    values: list[bytes] | None
    payload_bytes: int = 0          # the user's bytes, without headers (counted as bytes_written)
    queued_bytes: int = 0           # what the job holds against max_pending_bytes
    sizes: list[int] = field(default_factory=list)  # payload bytes per entry, for partial accounting


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
        self._unfinished = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the writer thread runs."""
        return self._thread.is_alive()

    def admit(self, nbytes: int) -> bool:
        """Reserve *nbytes* of the queue if they fit; the caller then submits them or calls release()."""
        with self._cond:
            if self._stopping or self.pending_bytes + nbytes > self.max_pending_bytes:
                return False
            self.pending_bytes += nbytes
            return True

    def submit(self, job: Job) -> None:
        """Queue *job*, whose ``queued_bytes`` were admitted before (deletions need no admission)."""
        with self._cond:
            self._jobs.append(job)
            self._unfinished += 1
            self._cond.notify_all()

    def flush(self, timeout: float | None) -> bool:
        """Wait until every job submitted so far is done; False if *timeout* seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._unfinished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

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
            self._unfinished -= len(left)
            self.pending_bytes -= sum(job.queued_bytes for job in left)
            self._cond.notify_all()
        return left

    def _take(self) -> list[Job] | None:
        """The next round trip's jobs (several small writes merged), or None when stopping."""
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._jobs.popleft()
            taken = [first]
            if first.values is None:
                return taken
            entries, nbytes = len(first.names), first.queued_bytes
            while self._jobs:
                following = self._jobs[0]
                if (following.values is None or entries + len(following.names) > ROUND_TRIP_ENTRIES
                        or nbytes + following.queued_bytes > ROUND_TRIP_BYTES):
                    break
                taken.append(self._jobs.popleft())
                entries += len(following.names)
                nbytes += following.queued_bytes
            return taken

    def _done(self, jobs: list[Job]) -> None:
        with self._cond:
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
    if len(jobs) == 1 and (jobs[0].values is None or (len(jobs[0].names) <= ROUND_TRIP_ENTRIES
                                                        and jobs[0].queued_bytes <= ROUND_TRIP_BYTES)):
        return jobs
    if jobs[0].values is None:
        names = jobs[0].names
        return [Job(names[i:i + ROUND_TRIP_ENTRIES], None) for i in range(0, len(names), ROUND_TRIP_ENTRIES)]
    pieces = []
    names_out: list[bytes] = []
    values_out: list[bytes] = []
    sizes_out: list[int] = []
    nbytes = 0
    for job in jobs:
        assert job.values is not None
        for name, value, size in zip(job.names, job.values, job.sizes):
            if names_out and (len(names_out) >= ROUND_TRIP_ENTRIES or nbytes + len(value) > ROUND_TRIP_BYTES):
                pieces.append(Job(names_out, values_out, sum(sizes_out), nbytes, sizes_out))
                names_out, values_out, sizes_out, nbytes = [], [], [], 0
            names_out.append(name)
            values_out.append(value)
            sizes_out.append(size)
            nbytes += len(value)
    if names_out:
        pieces.append(Job(names_out, values_out, sum(sizes_out), nbytes, sizes_out))
    return pieces
