"""Fault injection for tests: make the next Vulkan allocations fail.

``fail_next_allocation(n)`` makes the next *n* ``vkAllocateMemory`` calls made
by the wrapper (blocks and the staging buffer alike) report
``VK_ERROR_OUT_OF_DEVICE_MEMORY`` instead of calling the driver.  The fake
result goes through the same result checker as a real one, so the caller sees
exactly the :class:`~vyrecache.errors.DeviceOutOfMemoryError` a full device
would give, and every cleanup path runs as it would in production.

This is a test hook: nothing in the library calls it.
"""

from __future__ import annotations

import threading

__all__ = ["fail_next_allocation", "pending_allocation_failures", "reset", "take_allocation_failure"]

VK_ERROR_OUT_OF_DEVICE_MEMORY = -2

_lock = threading.Lock()
_pending: list[int] = []


def fail_next_allocation(n: int = 1, result: int = VK_ERROR_OUT_OF_DEVICE_MEMORY) -> None:
    """Make the next *n* ``vkAllocateMemory`` calls fail with *result* (a negative ``VkResult``).

    Raises:
        ValueError: *n* is negative or *result* is not an error code (< 0).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}. Fix: pass how many allocations should fail.")
    if result >= 0:
        raise ValueError(f"result must be a negative VkResult error code, got {result}. "
                         "Fix: pass e.g. -2 (VK_ERROR_OUT_OF_DEVICE_MEMORY).")
    with _lock:
        _pending.extend([result] * n)


def pending_allocation_failures() -> int:
    """Return how many injected allocation failures have not been consumed yet."""
    with _lock:
        return len(_pending)


def reset() -> None:
    """Drop every injected failure that has not been consumed yet."""
    with _lock:
        _pending.clear()


def take_allocation_failure() -> int | None:
    """Consume one injected failure: its ``VkResult``, or None when none is pending (wrapper internal)."""
    if not _pending:  # the common case, without taking the lock
        return None
    with _lock:
        return _pending.pop(0) if _pending else None
