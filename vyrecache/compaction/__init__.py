"""Compaction, in one place: executors that run the storage layer's copy tables on a device.

The storage layer (``_core/storage.pyx`` with ``_core/segments.pxi``) decides *what* moves: it
cleans a tier's emptiest segments into free ones and moves entries between tiers, and writes
every move of an operation as rows of one copy table (``vyrecache.copytable.COPY_DTYPE``, waves
separated by barriers).  Rows between mapped memory never get here: the CPU copies them with
streaming stores.  The rest, on a Vulkan device, run on an executor:

    CopyCommands    vkCmdCopyBuffer regions, one command per block pair and wave; the storage
                    layer records these itself, from C, on a queue of its own (vkcopy.h)
    ShaderCopies    the compute shader (shaders/compact_copy.comp): one workgroup per piece of
                    at most 64 KiB, or of 4 KiB with piece_bytes=SPLIT_BYTES, so that a wave of
                    a few hundred entries fills a large GPU

Which is faster depends on the driver, not on a device type: lavapipe turns every storage-buffer
access into a scalar loop (copy commands win), while a discrete GPU's copy engine pays per region
(the shader wins).  :func:`fastest_executor` measures once per driver and keeps the fastest.
"""

from .executors import (CopyCommands, CopyExecutor, SHADER_MODES, ShaderCopies, executor_for,
                        fastest_executor, measured_modes)
from .kernel import MAX_PIECE_BYTES, SPLIT_BYTES, ShaderKernel, load_compaction_spirv

__all__ = ["CopyExecutor", "CopyCommands", "ShaderCopies", "ShaderKernel", "SHADER_MODES", "SPLIT_BYTES",
           "MAX_PIECE_BYTES", "executor_for", "fastest_executor", "measured_modes", "load_compaction_spirv"]
