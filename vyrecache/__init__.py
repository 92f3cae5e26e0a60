"""vyrecache: a tiered cache for GPU buffers."""

from typing import TYPE_CHECKING

from ._version import __version__
from .backend import BufferLocation
from ._core.storage import Lease, Transfer
from .buffer_cache import BufferCache, BufferTierView, CompactionReport
from .exported import ExportedMemory
from .host import HostBackend
from .vulkan.backend import VulkanBackend
from .cache import (AccessStats, ArcPolicy, CacheEntry, CacheTier, ClockPolicy, FifoPolicy,
                    LruPolicy, S3FifoPolicy, SievePolicy, TieredCache, TierPolicy, TierView,
                    WTinyLfuPolicy)
from .remote import RedisTier, RemoteTierWarning
from .errors import (AllPinnedError, CacheClosedError, CacheError, CapacityAccountingError,
                     DeviceError, DeviceLostError, DeviceOutOfMemoryError, EntryTooLargeError,
                     KeyNotFoundError, PinnedError, VulkanUnavailableError)

if TYPE_CHECKING:
    from .vulkan.info import DeviceInfo

__all__ = [
    "__version__",
    "CacheError", "KeyNotFoundError", "EntryTooLargeError", "CapacityAccountingError",
    "AllPinnedError", "PinnedError", "CacheClosedError", "DeviceError", "DeviceOutOfMemoryError",
    "DeviceLostError", "VulkanUnavailableError",
    "TieredCache", "CacheTier", "LruPolicy", "FifoPolicy", "ClockPolicy", "SievePolicy",
    "S3FifoPolicy", "ArcPolicy", "WTinyLfuPolicy", "TierPolicy", "CacheEntry", "AccessStats", "TierView",
    "BufferCache", "BufferLocation", "BufferTierView", "CompactionReport", "Lease", "ExportedMemory",
    "HostBackend", "VulkanBackend", "Transfer", "devices",
    "RedisTier", "RemoteTierWarning",
]


def devices() -> "list[DeviceInfo]":
    """Every Vulkan physical device with its memory heaps, types and limits (see ``vyrecache.vulkan.devices``).

    Raises VulkanUnavailableError, saying what to install, when there is no loader or driver.
    """
    from .vulkan import devices as list_devices
    return list_devices()
