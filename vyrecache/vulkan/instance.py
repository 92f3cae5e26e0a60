"""The Vulkan instance: API 1.1, optionally with the validation layer and a debug messenger.

:class:`Instance` is shared by :func:`~vyrecache.vulkan.info.devices` (a short-lived instance
to list devices) and :class:`~vyrecache.vulkan.device.Device` (one instance per device, or the
user's own instance, borrowed with :meth:`Instance.borrow` and never destroyed).
"""

from __future__ import annotations

from .check import check
from .loader import load, unavailable_error
from .objects import created, destroyed

__all__ = ["Instance", "VALIDATION_LAYER", "API_VERSION", "as_handle"]

VALIDATION_LAYER = "VK_LAYER_KHRONOS_validation"
DEBUG_UTILS = "VK_EXT_debug_utils"
PROPERTIES2_KHR = "VK_KHR_get_physical_device_properties2"
API_VERSION = (1, 1, 0)


def as_handle(vk, type_name: str, handle):
    """*handle* (a cffi handle of the ``vulkan`` binding, or its address as an int) as a *type_name*.

    Raises:
        TypeError: *handle* is neither, or is NULL.
    """
    ffi = vk.ffi
    if isinstance(handle, int) and not isinstance(handle, bool):
        if handle <= 0:
            raise TypeError(f"a {type_name} handle must be a live handle, got the address {handle}. "
                            f"Fix: pass the handle your own code created (or int(ffi.cast('uintptr_t', h))).")
        return ffi.cast(type_name, handle)
    if isinstance(handle, ffi.CData) and ffi.typeof(handle).kind == "pointer":
        if handle == ffi.NULL:
            raise TypeError(f"the {type_name} handle is NULL. Fix: pass the handle your code created.")
        return ffi.cast(type_name, handle)
    raise TypeError(f"a {type_name} handle must be a cffi handle of the `vulkan` binding or an int, got "
                    f"{type(handle).__name__} {handle!r}. Fix: pass what vkCreate* gave your code.")


def _enumerate_strings(vk, call: str, function, *args, field: str) -> list[str]:
    ffi = vk.ffi
    count = ffi.new("uint32_t*")
    check(call, function(*args, count, ffi.NULL))
    array = ffi.new(f"{ffi.typeof(function).args[-1].item.cname}[]", count[0])
    check(call, function(*args, count, array))
    return [ffi.string(getattr(array[i], field)).decode() for i in range(count[0])]


def instance_layers() -> list[str]:
    """Return the names of the instance layers the Vulkan loader can enable."""
    vk = load()
    return _enumerate_strings(vk, "vkEnumerateInstanceLayerProperties",
                              vk.lib.vkEnumerateInstanceLayerProperties, field="layerName")


def instance_extensions() -> list[str]:
    """Return the names of the instance extensions the Vulkan loader offers."""
    vk = load()
    return _enumerate_strings(vk, "vkEnumerateInstanceExtensionProperties",
                              vk.lib.vkEnumerateInstanceExtensionProperties, vk.ffi.NULL,
                              field="extensionName")


class Instance:
    """A ``VkInstance`` (API 1.1), with the validation layer and a debug messenger when asked.

    With ``validation=True`` every warning or error the layer reports is appended, as one string,
    to :attr:`messages` (the list passed in, or a new one).

    Raises:
        VulkanUnavailableError: no loader, or no driver (``VK_ERROR_INCOMPATIBLE_DRIVER``).
        DeviceError: the validation layer was asked for but is not installed, or creation failed.
    """

    def __init__(self, validation: bool = False, messages: list[str] | None = None) -> None:
        vk = load()
        self._vk = vk
        self.handle = None
        self.messenger = None
        self.owned = True
        self.validation = validation
        self.messages: list[str] = messages if messages is not None else []
        self._callback = None
        ffi, lib = vk.ffi, vk.lib
        keep = []  # cffi frees what nothing references: keep every string and struct alive here

        def cstr(text: str):
            keep.append(ffi.new("char[]", text.encode()))
            return keep[-1]

        available_extensions = set(instance_extensions())
        layers, extensions = [], []
        if validation:
            if VALIDATION_LAYER not in instance_layers():
                from ..errors import DeviceError
                raise DeviceError(f"validation was requested but the layer {VALIDATION_LAYER} is not "
                                  "installed. Fix: `sudo apt-get install vulkan-validationlayers`, or "
                                  "run without validation (unset VYRECACHE_VALIDATION).")
            layers.append(VALIDATION_LAYER)
            extensions.append(DEBUG_UTILS)
        if PROPERTIES2_KHR in available_extensions:
            # Only needed for 1.0 drivers, where vkGetPhysicalDeviceProperties2 is not core.
            extensions.append(PROPERTIES2_KHR)

        app = ffi.new("VkApplicationInfo*")
        app.sType = vk.VK_STRUCTURE_TYPE_APPLICATION_INFO
        app.pApplicationName = cstr("vyrecache")
        app.pEngineName = cstr("vyrecache")
        # The binding has no VK_API_VERSION_1_1 constant.
        app.apiVersion = vk.VK_MAKE_VERSION(*API_VERSION)
        info = ffi.new("VkInstanceCreateInfo*")
        info.sType = vk.VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO
        info.pApplicationInfo = app
        layer_names = ffi.new("char*[]", [cstr(name) for name in layers])
        extension_names = ffi.new("char*[]", [cstr(name) for name in extensions])
        info.enabledLayerCount = len(layers)
        info.ppEnabledLayerNames = layer_names if layers else ffi.NULL
        info.enabledExtensionCount = len(extensions)
        info.ppEnabledExtensionNames = extension_names if extensions else ffi.NULL
        messenger_info = None
        if validation:
            messenger_info = self._messenger_info()
            # Chained so that messages about instance creation and destruction are caught too.
            info.pNext = messenger_info

        handle = ffi.new("VkInstance*")
        result = lib.vkCreateInstance(info, ffi.NULL, handle)
        if result == -9:  # VK_ERROR_INCOMPATIBLE_DRIVER: the loader found no driver at all
            raise unavailable_error("the Vulkan loader found no driver (VK_ERROR_INCOMPATIBLE_DRIVER)")
        check("vkCreateInstance", result)
        self.handle = handle[0]
        created("instances")
        try:
            self._resolve_properties2()
            if validation:
                create = self.proc("vkCreateDebugUtilsMessengerEXT", "PFN_vkCreateDebugUtilsMessengerEXT")
                messenger = ffi.new("VkDebugUtilsMessengerEXT*")
                check("vkCreateDebugUtilsMessengerEXT", create(self.handle, messenger_info, ffi.NULL, messenger))
                self.messenger = messenger[0]
                self._destroy_messenger = self.proc("vkDestroyDebugUtilsMessengerEXT",
                                                    "PFN_vkDestroyDebugUtilsMessengerEXT")
                created("debug_messengers")
        except BaseException:
            self.destroy()
            raise

    @classmethod
    def borrow(cls, handle) -> "Instance":
        """Wrap a ``VkInstance`` that the caller created (a cffi handle or its address as an int).

        :meth:`destroy` leaves a borrowed instance alone: its creator destroys it.  Validation
        messages go to the creator's own messenger, if it made one.
        """
        vk = load()
        instance = cls.__new__(cls)
        instance._vk = vk
        instance.handle = as_handle(vk, "VkInstance", handle)
        instance.messenger = None
        instance.owned = False
        instance.validation = False
        instance.messages = []
        instance._callback = None
        instance._resolve_properties2()
        return instance

    def _resolve_properties2(self) -> None:
        self._properties2 = self.proc("vkGetPhysicalDeviceProperties2", "PFN_vkGetPhysicalDeviceProperties2",
                                      fallback="vkGetPhysicalDeviceProperties2KHR")
        self._memory_properties2 = self.proc(
            "vkGetPhysicalDeviceMemoryProperties2", "PFN_vkGetPhysicalDeviceMemoryProperties2",
            fallback="vkGetPhysicalDeviceMemoryProperties2KHR")

    def _messenger_info(self):
        vk = self._vk
        ffi = vk.ffi
        messages = self.messages  # the callback holds the list, not self: no reference cycle

        def on_message(severity, types, data, user_data):
            try:
                name = ffi.string(data.pMessageIdName).decode(errors="replace") if data.pMessageIdName else ""
                text = ffi.string(data.pMessage).decode(errors="replace") if data.pMessage else ""
                level = "ERROR" if severity & vk.VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT else "WARNING"
                messages.append(f"{level}: {name}: {text}")
            except Exception:  # an exception must never unwind into the driver
                pass
            return 0  # VK_FALSE: never abort the call that triggered the message

        self._callback = ffi.callback("PFN_vkDebugUtilsMessengerCallbackEXT", on_message)
        info = ffi.new("VkDebugUtilsMessengerCreateInfoEXT*")
        info.sType = vk.VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT
        info.messageSeverity = (vk.VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT
                                | vk.VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT)
        info.messageType = (vk.VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT
                            | vk.VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT
                            | vk.VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT)
        info.pfnUserCallback = self._callback
        return info

    def proc(self, name: str, pfn_type: str, fallback: str | None = None):
        """Return the instance-level function *name* cast to *pfn_type*, or None when absent."""
        ffi, lib = self._vk.ffi, self._vk.lib
        for candidate in (name, fallback):
            if candidate is None:
                continue
            pointer = lib.vkGetInstanceProcAddr(self.handle, candidate.encode())
            if pointer != ffi.NULL:
                return ffi.cast(pfn_type, pointer)
        return None

    def physical_devices(self) -> list:
        """Return the ``VkPhysicalDevice`` handles of this instance, in the driver's order."""
        ffi, lib = self._vk.ffi, self._vk.lib
        count = ffi.new("uint32_t*")
        check("vkEnumeratePhysicalDevices", lib.vkEnumeratePhysicalDevices(self.handle, count, ffi.NULL))
        array = ffi.new("VkPhysicalDevice[]", count[0])
        check("vkEnumeratePhysicalDevices", lib.vkEnumeratePhysicalDevices(self.handle, count, array))
        return [array[i] for i in range(count[0])]

    def destroy(self) -> None:
        """Destroy the messenger and the instance; calling it again does nothing.

        A borrowed instance is only forgotten, never destroyed.
        """
        lib, ffi = self._vk.lib, self._vk.ffi
        messenger, self.messenger = self.messenger, None
        handle, self.handle = self.handle, None
        if not self.owned:
            return
        if messenger is not None and handle is not None:
            self._destroy_messenger(handle, messenger, ffi.NULL)
            destroyed("debug_messengers")
        if handle is not None:
            lib.vkDestroyInstance(handle, ffi.NULL)
            destroyed("instances")
