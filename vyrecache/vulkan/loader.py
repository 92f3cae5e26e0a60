"""Loading the Vulkan binding: the only module that imports ``vulkan``.

The PyPI ``vulkan`` package opens ``libvulkan.so.1`` when it is imported, so
importing it eagerly would make ``import vyrecache`` fail on machines without a
Vulkan loader.  Everything else in ``vyrecache.vulkan`` asks :func:`load` for
the module, which imports it once and turns every way it can fail into one
:class:`~vyrecache.errors.VulkanUnavailableError` that lists every fix.
"""

from __future__ import annotations

import threading
from types import ModuleType

from ..errors import VulkanUnavailableError

__all__ = ["load", "unavailable_error", "FIXES"]

FIXES = (
    "Fix, any of: "
    "(1) install the Vulkan loader and a driver: `sudo apt-get install libvulkan1 mesa-vulkan-drivers` "
    "(mesa-vulkan-drivers provides lavapipe, a CPU driver for machines without a GPU); "
    "(2) install the Python binding: `pip install 'vulkan>=1.3.275' 'cffi>=1.15'`; "
    "(3) if a driver is installed but not found, point the loader at its ICD file with "
    "VK_DRIVER_FILES (or the older VK_ICD_FILENAMES), e.g. "
    "VK_DRIVER_FILES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json; "
    "(4) check the device with `vulkaninfo --summary` (package vulkan-tools); "
    "(5) use the host backend instead: backend=\"host\"."
)

_lock = threading.Lock()
_module: ModuleType | None = None


def unavailable_error(what: str) -> VulkanUnavailableError:
    """Build the one "Vulkan is not usable here" error: *what* went wrong, then every fix."""
    return VulkanUnavailableError(f"Vulkan is not available: {what}. {FIXES}")


def load() -> ModuleType:
    """Import the ``vulkan`` binding once and return the module.

    Raises:
        VulkanUnavailableError: the binding is not installed, or it could not
            open the system's Vulkan loader (``libvulkan.so.1``).
    """
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            try:
                import vulkan  # noqa: PLC0415 - imported lazily on purpose, see the module docstring
            except ImportError as exc:
                raise unavailable_error(f"the Python binding `vulkan` is not installed ({exc})") from exc
            except OSError as exc:
                # The binding raises OSError when no libvulkan.so can be opened.
                raise unavailable_error(f"the Vulkan loader library could not be opened ({exc})") from exc
            _module = vulkan
    return _module
