"""vyrecache: a tiered cache for GPU buffers."""

from ._version import __version__
from .cache import (AccessStats, CacheEntry, CacheTier, LruPolicy, TieredCache, TierPolicy,
                    TierView)
from .errors import (AllPinnedError, CacheClosedError, CacheError, CapacityAccountingError,
                     DeviceError, DeviceLostError, DeviceOutOfMemoryError, EntryTooLargeError,
                     KeyNotFoundError, VulkanUnavailableError)

__all__ = [
    "__version__",
    "CacheError", "KeyNotFoundError", "EntryTooLargeError", "CapacityAccountingError",
    "AllPinnedError", "CacheClosedError", "DeviceError", "DeviceOutOfMemoryError",
    "DeviceLostError", "VulkanUnavailableError",
    "TieredCache", "CacheTier", "LruPolicy", "TierPolicy", "CacheEntry", "AccessStats", "TierView",
]
