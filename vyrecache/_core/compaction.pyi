from typing import Sequence

import numpy as np
import numpy.typing as npt

CHUNK_DTYPE: np.dtype
FREE_RANGE_DTYPE: np.dtype
MAX_CHUNK_BYTES: int

class CompactionPlan:
    chunks: np.ndarray
    wave_starts: npt.NDArray[np.int64]
    new_offsets: list[npt.NDArray[np.uint64]]
    new_blocks: list[npt.NDArray[np.uint32]]
    free_ranges: list[np.ndarray]
    emptied_blocks: tuple[int, ...]
    block_sizes: tuple[int, ...]
    moves: int
    bytes_moved: int
    complete: bool
    @property
    def waves(self) -> int: ...
    @property
    def chunk_bytes(self) -> int: ...
    def wave(self, index: int) -> np.ndarray: ...

def plan_block(offsets: npt.ArrayLike, sizes: npt.ArrayLike, pinned: npt.ArrayLike,
               block_size: int, alignment: int = 16,
               max_bytes: int | None = None) -> CompactionPlan: ...
def plan_tier(blocks: Sequence[tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]],
              block_sizes: int | Sequence[int], alignment: int = 16,
              max_bytes: int | None = None, evacuate: bool = True) -> CompactionPlan: ...
def execute_on_host(plan: CompactionPlan, blocks: Sequence[npt.NDArray[np.uint8]],
                    streaming: bool = ..., threads: int = ...) -> None: ...
