"""The circuit breaker that makes the remote tier fail open.

States::

    closed ──failure──► open ──back-off elapsed──► trial ──success──► closed
                          ▲                          │
                          └────────failure───────────┘  (back-off doubled, up to RETRY_MAX)

While closed every operation goes to the server.  The first failure opens the breaker: for the
back-off that follows, ``allow()`` is false and callers skip the server (fetches are misses, writes
are dropped) at no cost.  Once the back-off has elapsed, exactly one caller is let through as the
trial; the others keep skipping until it reports.  A trial that succeeds closes the breaker and
resets the back-off, so the tier resumes by itself when the server comes back.

A warning is issued when the breaker opens from closed, once per outage, not at every failed trial.
"""

from __future__ import annotations

import threading
import time
import warnings

__all__ = ["CircuitBreaker", "RemoteTierWarning"]


class RemoteTierWarning(RuntimeWarning):
    """The remote tier cannot reach its server and serves misses until it comes back."""


class CircuitBreaker:
    """Whether to try the server now; thread-safe.  *what* names the server in the warning."""

    #: First back-off after a failure, and its cap, in seconds.  Short, because a trial costs at
    #: most one timeout and a cache that stays cold long after its server is back costs more.
    RETRY_MIN = 0.25
    RETRY_MAX = 2.0

    def __init__(self, what: str) -> None:
        self._what = what
        self._lock = threading.Lock()
        self._open = False
        self._trial_running = False
        self._retry_at = 0.0
        self._backoff = self.RETRY_MIN

    @property
    def is_open(self) -> bool:
        """True while the server is being skipped (open, or a trial under way)."""
        return self._open

    def blocked(self) -> bool:
        """True when a caller would be refused now; unlike allow() it never takes the trial."""
        return self._open and (self._trial_running or time.monotonic() < self._retry_at)

    def allow(self) -> bool:
        """True when the caller should try the server; the caller must then call success() or failure()."""
        if not self._open:
            return True
        with self._lock:
            if not self._open:
                return True
            if self._trial_running or time.monotonic() < self._retry_at:
                return False
            self._trial_running = True
            return True

    def success(self) -> None:
        """Report that a round trip worked."""
        if self._open or self._trial_running:
            with self._lock:
                self._open = False
                self._trial_running = False
                self._backoff = self.RETRY_MIN

    def abandon(self) -> None:
        """Report that the round trip allow() let through failed for a reason that is not the server's."""
        if self._trial_running:
            with self._lock:
                self._trial_running = False

    def failure(self, error: BaseException, *, warn: bool = True, stacklevel: int = 3) -> None:
        """Report that a round trip failed with *error*: open (or keep open) the breaker.

        The warning, if this opens the breaker and *warn* is true, is attributed *stacklevel*
        frames above this call.
        """
        with self._lock:
            was_open = self._open
            if was_open and not self._trial_running:
                return  # a round trip that started before another one opened the breaker
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2.0, self.RETRY_MAX)
            self._open = True
            self._trial_running = False
        if warn and not was_open:
            warnings.warn(f"the remote tier cannot use {self._what}: {type(error).__name__}: {error}. "
                          f"Fetches are misses and writes are dropped until it answers again (retried "
                          f"after {self.RETRY_MIN:g} s, then up to every {self.RETRY_MAX:g} s). Fix: start "
                          "the server or correct the URL; the tier resumes by itself.",
                          RemoteTierWarning, stacklevel=stacklevel)
