"""The copy table: the one format in which the storage layer hands byte moves to a backend.

Each row copies ``size`` bytes from ``src_offset`` in block ``src_block`` to ``dst_offset`` in
block ``dst_block``.  Block ids are device-global (``Block.id``).  Rows between two barriers
(one *wave*) never overlap, so a backend may run them in any order or group them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COPY_DTYPE", "empty_copy_table"]

COPY_DTYPE = np.dtype([("src_block", "<u4"), ("dst_block", "<u4"),
                       ("src_offset", "<u8"), ("dst_offset", "<u8"), ("size", "<u8")])


def empty_copy_table(rows: int) -> np.ndarray:
    """Return a zero-filled copy table of *rows* rows (dtype :data:`COPY_DTYPE`)."""
    return np.zeros(rows, dtype=COPY_DTYPE)
