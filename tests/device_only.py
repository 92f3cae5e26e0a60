"""Memory the CPU cannot map, on a device whose memory is all mapped (lavapipe, any UMA device).

A discrete GPU's VRAM is not host-visible: every byte to or from it moves by copy commands, and
user bytes pass through the staging buffer.  These helpers make real blocks look that way to the
cache, so those paths run where no such memory exists.  The mapping itself stays (the Vulkan
memory is freed with it, which unmaps it): the cache does not use it, but a test may look at
what a copy delivered.
"""

from __future__ import annotations

import dataclasses

from vyrecache.backend import StorageBlock, TierMemory
from vyrecache.vulkan.backend import VulkanBackend
from vyrecache.vulkan.device import Block


def device_only(block: Block) -> Block:
    """`block` as device-only memory: the Device uploads and downloads it through staging."""
    block.host_visible = False
    return block


class DeviceOnlyBackend(VulkanBackend):
    """A VulkanBackend whose tiers are all device-only memory, as on a discrete GPU.

    Its copies between tiers run on the device (``compaction``, "commands" unless told).
    """

    def __init__(self, *args, compaction: str = "commands", **options) -> None:
        super().__init__(*args, compaction=compaction, **options)

    def allocate_staging(self, size: int) -> StorageBlock:
        # Mapped, as host memory is on a discrete GPU too.
        return super().allocate_block(super().resolve_memory("host", size), size)

    def resolve_memory(self, kind: str, capacity: int) -> TierMemory:
        return dataclasses.replace(super().resolve_memory(kind, capacity), host_visible=False)

    def allocate_block(self, memory: TierMemory, size: int) -> StorageBlock:
        block = super().allocate_block(memory, size)
        device_only(block.native)
        block.host_visible = False      # address and array stay, for the tests' eyes only
        return block
