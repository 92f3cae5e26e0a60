import numpy as np
import numpy.typing as npt

def belady_hits(keys: npt.ArrayLike, sizes: npt.ArrayLike | None, capacity: int,
                uses: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = ...) -> npt.NDArray[np.bool_]: ...
