"""Counting of live Vulkan objects, so tests can prove nothing leaks.

Every create in the wrapper calls :func:`created` with the object's kind and
every destroy calls :func:`destroyed`; :func:`live_objects` reports the counts.
"""

from __future__ import annotations

import threading

__all__ = ["KINDS", "live_objects", "created", "destroyed"]

KINDS = (
    "instances", "debug_messengers", "devices", "command_pools", "command_buffers", "fences",
    "memory", "buffers", "shader_modules", "descriptor_set_layouts", "pipeline_layouts",
    "pipelines", "descriptor_pools", "semaphores",
)

_lock = threading.Lock()
_counts = dict.fromkeys(KINDS, 0)


def created(kind: str) -> None:
    """Count one more live object of *kind* (one of :data:`KINDS`)."""
    with _lock:
        _counts[kind] += 1


def destroyed(kind: str) -> None:
    """Count one fewer live object of *kind* (one of :data:`KINDS`)."""
    with _lock:
        _counts[kind] -= 1


def live_objects() -> dict[str, int]:
    """Return a snapshot ``{kind: count}`` of the Vulkan objects the wrapper holds alive now.

    Every kind of :data:`KINDS` is present, with 0 when none are alive.
    """
    with _lock:
        return dict(_counts)
