"""The demo's workload: KV-cache blocks of an LLM server with Zipf-popular prefixes.

An inference server keeps the attention keys and values of every prompt it has
seen in fixed-size blocks ("paged attention").  Requests that share a prefix
(a system prompt, a long document, an earlier turn of a chat) reuse its
blocks, and a few prefixes are far more popular than the rest.  This module
generates that stream, deterministically from a seed:

* the working set is ``entries`` prefix blocks: ``entries // prefix_blocks``
  prefixes, each a chain of ``prefix_blocks`` blocks; block ``i`` of prefix
  ``p`` has key ``p * prefix_blocks + i``;
* each request picks a prefix with Zipf(``zipf``) popularity and a depth
  (how much of the chain it shares) uniformly in ``1..prefix_blocks``; it
  touches blocks ``0..depth-1`` in order, so the first blocks of a chain are
  the hottest;
* each request then writes ``decode_blocks`` new blocks (the tokens it
  generated) under fresh keys, used once: the churn that pushes old prefixes
  out;
* the last block of a chain and every decode block is partly filled (a
  quarter to a whole block), so entries differ in size and tiers fragment.

The bytes of an entry are a function of its key (:meth:`KvWorkload.payload`),
so any entry can be verified after it has been moved around.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["KvWorkload", "DECODE_KEY_BASE"]

#: Decode blocks get keys from here up, far above any prefix key.
DECODE_KEY_BASE = 1 << 62

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class KvWorkload:
    """A reproducible stream of KV-cache block accesses (see the module docstring).

    Raises:
        ValueError: a count or size is out of range (each message names the value).
    """

    def __init__(self, entries: int, block_size: int, *, prefix_blocks: int = 8, zipf: float = 1.0,
                 decode_blocks: int = 1, seed: int = 0) -> None:
        if entries < 1:
            raise ValueError(f"entries must be >= 1, got {entries}. Fix: pass a positive entry count.")
        if block_size < 16:
            raise ValueError(f"block size must be >= 16 bytes, got {block_size}. Fix: pass e.g. 16KiB.")
        if prefix_blocks < 1:
            raise ValueError(f"prefix blocks must be >= 1, got {prefix_blocks}. Fix: pass e.g. 8.")
        if not zipf >= 0.0:
            raise ValueError(f"the Zipf exponent must be >= 0, got {zipf}. Fix: pass e.g. 1.0.")
        if decode_blocks < 0:
            raise ValueError(f"decode blocks must be >= 0, got {decode_blocks}. Fix: pass 0 or more.")
        self.block_size = block_size
        self.prefix_blocks = min(prefix_blocks, entries)
        self.prefixes = max(1, entries // self.prefix_blocks)
        self.entries = self.prefixes * self.prefix_blocks
        self.decode_blocks = decode_blocks
        self.rng = np.random.default_rng(seed)
        # Popularity by rank, shuffled so that popular prefixes are spread over the key space.
        weights = np.arange(1, self.prefixes + 1, dtype=np.float64) ** -zipf
        self._cdf = np.cumsum(weights[self.rng.permutation(self.prefixes)])
        self._cdf /= self._cdf[-1]
        self.decode_keys_issued = 0

    def sizes_of(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        """Return the size in bytes of the block under each key (a pure function of the key)."""
        keys = np.asarray(keys, dtype=np.uint64)
        quarters = ((keys * _GOLDEN) >> np.uint64(61)) & np.uint64(3)
        partial = (quarters + np.uint64(1)) * np.uint64(self.block_size // 4)
        is_partial = (keys >= np.uint64(DECODE_KEY_BASE)) | (
            keys % np.uint64(self.prefix_blocks) == np.uint64(self.prefix_blocks - 1))
        return np.where(is_partial, partial, np.uint64(self.block_size)).astype(np.uint64)

    def size_of(self, key: int) -> int:
        """Return the size in bytes of the block under *key*."""
        return int(self.sizes_of(np.array([key], dtype=np.uint64))[0])

    def payload(self, key: int, size: int | None = None) -> npt.NDArray[np.uint8]:
        """Return the bytes stored under *key*: a pattern no other key produces."""
        if size is None:
            size = self.size_of(key)
        words = np.arange((size + 7) // 8, dtype=np.uint64)
        words = (words + np.uint64(1)) * _GOLDEN ^ np.uint64(key)
        return words.view(np.uint8)[:size]

    def batch(self, requests: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        """Draw *requests* requests and return their accesses in order: ``(keys, sizes)``."""
        drawn = np.searchsorted(self._cdf, self.rng.random(requests), side="right")
        prefixes = np.minimum(drawn, self.prefixes - 1).astype(np.uint64)
        depths = self.rng.integers(1, self.prefix_blocks + 1, size=requests)
        lengths = depths + self.decode_blocks
        total = int(lengths.sum())
        request = np.repeat(np.arange(requests), lengths)
        position = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        keys = prefixes[request] * np.uint64(self.prefix_blocks) + position.astype(np.uint64)
        decode = position >= np.repeat(depths, lengths)
        count = int(decode.sum())
        keys[decode] = np.uint64(DECODE_KEY_BASE + self.decode_keys_issued) + np.arange(count, dtype=np.uint64)
        self.decode_keys_issued += count
        return keys, self.sizes_of(keys)

    def working_set_bytes(self) -> int:
        """Return the total size of all prefix blocks (decode blocks not counted)."""
        return int(self.sizes_of(np.arange(self.entries, dtype=np.uint64)).sum())
