"""The thin Vulkan wrapper: loading, devices, memory blocks, commands and compute helpers.

Importing this package does not import the ``vulkan`` binding; the first call that needs it does
(see :mod:`vyrecache.vulkan.loader`).
"""

from . import faults
from .check import check
from .commands import CommandRecorder
from .device import Block, Device
from .info import DeviceInfo, devices
from .memory import MemoryHeap, MemoryType, choose_memory_type
from .objects import live_objects
from .pipeline import ComputePipeline, DescriptorPool
from ..copytable import COPY_DTYPE

__all__ = [
    "Device", "Block", "CommandRecorder", "ComputePipeline", "DescriptorPool", "DeviceInfo", "devices",
    "MemoryType", "MemoryHeap", "choose_memory_type", "live_objects", "faults", "check", "COPY_DTYPE",
]
