"""The host backend: the buffer cache's storage contract on plain host memory."""

from .backend import HostBackend, HostDeviceInfo

__all__ = ["HostBackend", "HostDeviceInfo"]
