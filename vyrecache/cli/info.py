"""``vyrecache info``: the Vulkan devices, their memory, and where each tier kind would live.

Without a usable Vulkan device it says why and how to fix it, and that caches
made with ``backend="auto"`` will use host memory; that is not an error.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from ..report import format_bytes

__all__ = ["register", "run", "describe_device", "compaction_timings"]

_KINDS = ("device", "host")


def register(commands: Any) -> None:
    """Add the ``info`` sub-command to *commands* (an argparse sub-parsers object)."""
    parser = commands.add_parser("info", help="list Vulkan devices, memory heaps and types",
                                 description="List the Vulkan devices, their memory heaps (with the budget where "
                                 "known) and memory types, and which type each tier kind would use. Without a "
                                 "usable device, say why, how to fix it, and that the host backend will be used.")
    parser.add_argument("--json", action="store_true", help="print the devices as JSON")
    parser.add_argument("--compaction", action="store_true",
                        help="also time every way of running copies on device memory (what "
                             "VulkanBackend(compaction='auto') measures and picks)")
    parser.set_defaults(run=run)


def _budgets_left(device: Any) -> list[int | None] | None:
    """Per heap, the bytes this process may still allocate (budget - usage), where known."""
    budgets = getattr(device, "heap_budgets", None)
    if budgets is None:
        return None
    usage = getattr(device, "heap_usage", None) or [0] * len(budgets)
    return [max(0, budget - used) for budget, used in zip(budgets, usage)]


def _tier_types(device: Any) -> dict[str, int | str]:
    """The memory type index each tier kind resolves to, or the reason it cannot."""
    from ..vulkan.memory import choose_memory_type

    chosen: dict[str, int | str] = {}
    budgets = _budgets_left(device)
    for kind in _KINDS:
        try:
            chosen[kind] = choose_memory_type(device.memory_types, device.memory_heaps, kind, 0, budgets)
        except Exception as exc:  # noqa: BLE001 - reported, not raised: info describes the device
            chosen[kind] = " ".join(str(exc).split())
    return chosen


def describe_device(device: Any, index: int) -> dict[str, Any]:
    """Return a JSON-ready description of one entry of ``vc.devices()``."""
    budgets = getattr(device, "heap_budgets", None)
    usage = getattr(device, "heap_usage", None)
    version = getattr(device, "api_version", "")
    return {
        "index": index,
        "name": device.name,
        "type": str(getattr(device, "device_type", "")),
        "api_version": ".".join(map(str, version)) if isinstance(version, tuple) else str(version),
        "max_memory_allocation_size": getattr(device, "max_memory_allocation_size", None),
        "max_storage_buffer_range": getattr(device, "max_storage_buffer_range", None),
        "min_storage_buffer_offset_alignment": getattr(device, "min_storage_buffer_offset_alignment", None),
        "memory_heaps": [dict(heap.to_dict(), index=i,
                              budget=budgets[i] if budgets is not None and i < len(budgets) else None,
                              usage=usage[i] if usage is not None and i < len(usage) else None)
                         for i, heap in enumerate(device.memory_heaps)],
        "memory_types": [dict(memory_type.to_dict(), index=i) for i, memory_type in enumerate(device.memory_types)],
        "tier_memory_types": _tier_types(device),
    }


def compaction_timings(index: int) -> dict[str, Any]:
    """The compaction modes' times on device *index* and the one "auto" picks, or the error."""
    from ..compaction import measured_modes
    from ..vulkan.device import Device

    try:
        device = Device(index, validation=False)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: info describes the device
        return {"error": " ".join(str(exc).split())}
    try:
        timings = measured_modes(device)
    except Exception as exc:  # noqa: BLE001
        return {"error": " ".join(str(exc).split())}
    finally:
        device.close()
    return {"seconds": dict(sorted(timings.items(), key=lambda item: item[1])),
            "auto": min(timings, key=timings.__getitem__)}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  " + "  ".join(str(cell).ljust(width) for cell, width in zip(header, widths)).rstrip()]
    lines.append("  " + "  ".join("-" * width for width in widths))
    lines += ["  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
              for row in rows]
    return lines


def _size(value: int | None) -> str:
    return "unknown" if value is None else format_bytes(value)


def format_device(info: dict[str, Any]) -> str:
    """Return the human-readable block for one device described by :func:`describe_device`."""
    lines = [f"device {info['index']}: {info['name']} ({info['type'] or 'unknown type'}, "
             f"Vulkan {info['api_version'] or '?'})",
             f"  max allocation {_size(info['max_memory_allocation_size'])}, "
             f"max storage buffer range {_size(info['max_storage_buffer_range'])}, "
             f"min storage buffer offset alignment {info['min_storage_buffer_offset_alignment']}",
             "  memory heaps:"]
    lines += ["  " + line for line in _table(
        ["heap", "size", "budget", "used", "flags"],
        [[str(heap["index"]), format_bytes(heap["size"]), _size(heap["budget"]), _size(heap["usage"]),
          heap["flag_names"]]
         for heap in info["memory_heaps"]])]
    lines.append("  memory types:")
    lines += ["  " + line for line in _table(
        ["type", "heap", "flags"],
        [[str(t["index"]), str(t["heap_index"]), t["flags"]] for t in info["memory_types"]])]
    lines.append("  tiers would use:")
    for kind, chosen in info["tier_memory_types"].items():
        where = f"memory type {chosen}" if isinstance(chosen, int) else f"nothing: {chosen}"
        lines.append(f"    memory={kind!r}: {where}")
    compaction = info.get("compaction")
    if compaction is not None:
        if "error" in compaction:
            lines.append(f"  compaction: not measured: {compaction['error']}")
        else:
            times = ", ".join(f"{mode} {seconds * 1e3:.2f} ms" for mode, seconds in compaction["seconds"].items())
            lines.append(f"  copies on device memory (every other 16 KiB entry of 8 MiB moved): {times}; "
                         f"compaction='auto' picks {compaction['auto']!r}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print every Vulkan device (or why there is none); always returns 0.

    A missing loader, driver or device is reported with its fix, not raised:
    the host backend still works.
    """
    import vyrecache as vc
    from ..errors import VulkanUnavailableError

    error = None
    devices: list[dict[str, Any]] = []
    if not hasattr(vc, "devices"):
        error = "this build of vyrecache has no Vulkan backend."
    else:
        try:
            devices = [describe_device(device, index) for index, device in enumerate(vc.devices())]
        except VulkanUnavailableError as exc:
            error = " ".join(str(exc).split())
    if getattr(args, "compaction", False):
        for info in devices:
            info["compaction"] = compaction_timings(info["index"])
    if error is None and not devices:
        error = "the Vulkan loader found no device."
    if args.json:
        print(json.dumps({"version": vc.__version__, "devices": devices, "error": error,
                          "default_backend": "vulkan" if devices else "host"}, indent=2))
        return 0
    print(f"vyrecache {vc.__version__}")
    if error is not None:
        print(error)
        print('Caches made with backend="auto" use the host backend (plain host memory) on this machine.')
        return 0
    for info in devices:
        print(format_device(info))
    print(f'backend="auto" uses device 0 ({devices[0]["name"]}).')
    return 0
