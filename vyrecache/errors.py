"""The one exception hierarchy of vyrecache.

Every message says what happened, with the offending value, then how to fix it
("Fix: ...").  Each class also inherits the built-in exception a Python user
would naturally catch (``KeyError`` for a missing key, ``MemoryError`` for an
exhausted device), so existing ``except`` clauses keep working.
"""

__all__ = [
    "CacheError",
    "KeyNotFoundError",
    "EntryTooLargeError",
    "CapacityAccountingError",
    "AllPinnedError",
    "PinnedError",
    "CacheClosedError",
    "DeviceError",
    "DeviceOutOfMemoryError",
    "DeviceLostError",
    "VulkanUnavailableError",
]

# The messages of the original Rust TieredCache, kept word for word.
KEY_NOT_FOUND_MESSAGE = "Key not found in cache. Fix: verify the key was inserted before operating on it."
ENTRY_TOO_LARGE_MESSAGE = ("Entry size exceeds the capacity of the largest tier. "
                           "Fix: reduce the buffer size or increase the tier capacity.")
CAPACITY_ACCOUNTING_MESSAGE = ("Tiered cache byte accounting overflowed. "
                               "Fix: rebuild the cache or shard entries before continuing.")


class CacheError(Exception):
    """Base class of every error vyrecache raises on purpose."""


class KeyNotFoundError(CacheError, KeyError):
    """The key is not in the cache."""

    def __str__(self) -> str:
        # KeyError.__str__ would print the repr of the message, quotes and all.
        return str(self.args[0]) if self.args else KEY_NOT_FOUND_MESSAGE


class EntryTooLargeError(CacheError, ValueError):
    """The entry is larger than every tier's capacity."""


class CapacityAccountingError(CacheError, OverflowError):
    """A byte counter would overflow 64 bits."""


class AllPinnedError(CacheError):
    """Room could not be made because every eviction candidate is pinned."""


class PinnedError(CacheError):
    """The operation would replace or remove a pinned entry; unpin it first."""


class CacheClosedError(CacheError):
    """The cache was closed; its memory is gone."""


class DeviceError(CacheError):
    """A Vulkan call failed."""


class DeviceOutOfMemoryError(DeviceError, MemoryError):
    """The device or host ran out of memory for a Vulkan allocation."""


class DeviceLostError(DeviceError):
    """The Vulkan device was lost (driver reset, GPU fault)."""


class VulkanUnavailableError(DeviceError):
    """No Vulkan loader, driver or device could be found."""
