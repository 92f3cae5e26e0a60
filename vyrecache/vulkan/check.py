"""The one result checker every Vulkan call in the wrapper goes through.

Raw ``vk.lib`` calls return a ``VkResult`` integer: pass it to :func:`check`.
Calls through the binding's Python wrappers raise the binding's own exception
classes instead (``VkErrorOutOfDeviceMemory``, ``VkTimeout``...): run them
inside ``with checked("vkSomething"):``, which turns those exceptions into the
same errors.  Either way a failure becomes

* :class:`~vyrecache.errors.DeviceOutOfMemoryError` for host or device OOM,
* :class:`~vyrecache.errors.DeviceLostError` for a lost device,
* :class:`~vyrecache.errors.DeviceError` for everything else,

with a message that names the call, the result and a fix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import DeviceError, DeviceLostError, DeviceOutOfMemoryError
from .loader import FIXES

__all__ = ["check", "checked", "error_for", "result_name"]

VK_SUCCESS = 0
VK_ERROR_OUT_OF_HOST_MEMORY = -1
VK_ERROR_OUT_OF_DEVICE_MEMORY = -2
VK_ERROR_DEVICE_LOST = -4

# Spelled out here so that naming a result never needs the binding loaded.
RESULT_NAMES = {
    0: "VK_SUCCESS", 1: "VK_NOT_READY", 2: "VK_TIMEOUT", 3: "VK_EVENT_SET", 4: "VK_EVENT_RESET",
    5: "VK_INCOMPLETE",
    -1: "VK_ERROR_OUT_OF_HOST_MEMORY", -2: "VK_ERROR_OUT_OF_DEVICE_MEMORY",
    -3: "VK_ERROR_INITIALIZATION_FAILED", -4: "VK_ERROR_DEVICE_LOST", -5: "VK_ERROR_MEMORY_MAP_FAILED",
    -6: "VK_ERROR_LAYER_NOT_PRESENT", -7: "VK_ERROR_EXTENSION_NOT_PRESENT",
    -8: "VK_ERROR_FEATURE_NOT_PRESENT", -9: "VK_ERROR_INCOMPATIBLE_DRIVER",
    -10: "VK_ERROR_TOO_MANY_OBJECTS", -11: "VK_ERROR_FORMAT_NOT_SUPPORTED",
    -12: "VK_ERROR_FRAGMENTED_POOL", -13: "VK_ERROR_UNKNOWN",
    -1000069000: "VK_ERROR_OUT_OF_POOL_MEMORY", -1000072003: "VK_ERROR_INVALID_EXTERNAL_HANDLE",
    -1000161000: "VK_ERROR_FRAGMENTATION", -1000257000: "VK_ERROR_INVALID_OPAQUE_CAPTURE_ADDRESS",
}

_FIXES_BY_RESULT = {
    -1: "free host memory, or use smaller tiers or fewer caches.",
    -2: "reduce the tier capacity, close other caches or processes using the device, "
        "or put the tier in another memory kind (memory=\"host\").",
    -3: FIXES,
    -4: "the device is gone (driver reset or GPU fault; see `dmesg`): close the cache and create a "
        "new one.",
    -5: "map only host-visible memory; the process may also be out of address space.",
    -6: "install the layer (`sudo apt-get install vulkan-validationlayers` for the validation layer) "
        "or run without validation (unset VYRECACHE_VALIDATION).",
    -7: "update the Vulkan driver, or run without the feature that needs the extension.",
    -9: FIXES,
    -1000069000: "allocate fewer descriptor sets per pool, or create a larger pool.",
    -12: "reset the descriptor pool before allocating again.",
}
_DEFAULT_FIX = ("this is a bug in vyrecache or the driver; rerun with VYRECACHE_VALIDATION=1 to see "
                "the validation layer's messages, and report them.")


def result_name(result: int) -> str:
    """Return the ``VkResult`` name of *result*, e.g. ``"VK_ERROR_DEVICE_LOST"``."""
    return RESULT_NAMES.get(result, f"VkResult({result})")


def error_for(call: str, result: int, detail: str = "") -> DeviceError:
    """Build the exception for a failed *call* that returned *result* (negative or unexpected).

    *detail* (optional) adds what the call was doing, e.g. the allocation size.
    """
    fix = _FIXES_BY_RESULT.get(result, _DEFAULT_FIX)
    what = f"{call} failed with {result_name(result)} ({result})"
    if detail:
        what += f" while {detail}"
    message = f"{what}. Fix: {fix}" if not fix.startswith("Fix") else f"{what}. {fix}"
    if result in (VK_ERROR_OUT_OF_HOST_MEMORY, VK_ERROR_OUT_OF_DEVICE_MEMORY):
        return DeviceOutOfMemoryError(message)
    if result == VK_ERROR_DEVICE_LOST:
        return DeviceLostError(message)
    return DeviceError(message)


def check(call: str, result: int, detail: str = "") -> int:
    """Return *result* when it is not an error (>= 0), else raise the matching error.

    Success codes other than ``VK_SUCCESS`` (``VK_TIMEOUT``, ``VK_INCOMPLETE``...) are returned for
    the caller to handle.

    Raises:
        DeviceOutOfMemoryError: ``VK_ERROR_OUT_OF_HOST_MEMORY`` or ``VK_ERROR_OUT_OF_DEVICE_MEMORY``.
        DeviceLostError: ``VK_ERROR_DEVICE_LOST``.
        DeviceError: any other error code.
    """
    if result < 0:
        raise error_for(call, result, detail)
    return result


_codes_by_exception: dict[type, int] | None = None


def _code_of(exc: BaseException) -> int | None:
    global _codes_by_exception
    if _codes_by_exception is None:
        from .loader import load
        _codes_by_exception = {cls: code for code, cls in load().exception_codes.items()}
    return _codes_by_exception.get(type(exc))


@contextlib.contextmanager
def checked(call: str, detail: str = "") -> Iterator[None]:
    """Run a call through the binding's Python wrapper, mapping its exceptions like :func:`check`.

    The binding raises even for non-error results (``VkTimeout``, ``VkNotReady``); those become a
    ``DeviceError`` too, since a caller that expects them should call ``vk.lib`` and use
    :func:`check`.
    """
    try:
        yield
    except Exception as exc:
        code = _code_of(exc)
        if code is None:
            raise
        raise error_for(call, code, detail) from exc
