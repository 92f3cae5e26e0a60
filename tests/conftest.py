"""Shared fixtures.

``vulkan_device``: one validated Vulkan device for the whole session.  A test fails when the
validation layer reports anything while it runs.  Without a Vulkan device the test is skipped,
unless VYRECACHE_REQUIRE_VULKAN=1 (as ``make test`` sets), which turns the skip into a failure
so a broken driver install cannot pass silently.
"""

import os

import pytest

from vyrecache.errors import VulkanUnavailableError


def _no_vulkan(reason: str):
    if os.environ.get("VYRECACHE_REQUIRE_VULKAN") == "1":
        pytest.fail(f"VYRECACHE_REQUIRE_VULKAN=1 but no Vulkan device is usable: {reason}", pytrace=False)
    pytest.skip(f"no Vulkan device: {reason}")


@pytest.fixture(scope="session")
def _vulkan_session_device():
    from vyrecache.vulkan import Device
    try:
        device = Device(validation=True)
    except VulkanUnavailableError as exc:
        _no_vulkan(str(exc))
    yield device
    device.close()
    assert device.validation_messages == [], "\n".join(device.validation_messages)


@pytest.fixture
def vulkan_device(_vulkan_session_device):
    """The session's validated Device; fails the test on any new validation message."""
    device = _vulkan_session_device
    seen = len(device.validation_messages)
    blocks_before = {block.id for block in device.blocks}
    yield device
    for block in device.blocks:  # a failing test must not leak blocks into the next one
        if block.id not in blocks_before and block is not device._staging:
            device.free_block(block)
    new = device.validation_messages[seen:]
    if new:
        pytest.fail("Vulkan validation reported:\n" + "\n".join(new), pytrace=False)


@pytest.fixture
def require_vulkan():
    """Skip (or fail under VYRECACHE_REQUIRE_VULKAN=1) when no Vulkan device is present."""
    from vyrecache.vulkan import devices
    try:
        found = devices()
    except VulkanUnavailableError as exc:
        _no_vulkan(str(exc))
    if not found:
        _no_vulkan("the loader lists no physical device")


# The Redis fixtures live with their server helpers.
from redis_servers import redis_cluster, redis_server, redis_servers  # noqa: E402,F401
