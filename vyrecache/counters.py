"""Every per-tier counter of a cache, declared once: its name, who counts it, what it means.

The engine (``_core/engine.pyx``) reports the ``ENGINE`` counters, in the order of its
``COUNTER_*`` indices; the storage layer of a BufferCache (``_core/storage.pyx``) the ``STORAGE``
ones, in the order of its ``STORAGE_COUNTER_*`` indices; ``STATE`` values describe a tier now
rather than count events.
``vyrecache.report.COUNTERS``, the metrics, the README's table and the tests' reference model
all read this table.  Names are public API: add new ones, never change what one means.
"""

from __future__ import annotations

__all__ = ["BYTE_COUNTERS", "COUNTERS", "ENGINE_COUNTERS", "RATIO_COUNTERS", "STATE_VALUES", "STORAGE_COUNTERS",
           "TABLE"]

ENGINE, STORAGE, STATE = "engine", "storage", "state"
COUNT, BYTES, RATIO = "count", "bytes", "ratio"

#: name, who reports it, unit (count, bytes or ratio), meaning; in the order a report shows them.
_DECLARED = """
hits                     engine   count  accesses that found the entry in this tier
misses                   engine   count  accesses that did not find the entry and whose new entry was placed in this tier
inserts                  engine   count  entries placed in this tier by insert/put (replacements included)
evictions                engine   count  entries that left the cache from this tier to make room (on_evict was called)
promotions               engine   count  entries that arrived in this tier by promotion from the next slower one
demotions                engine   count  entries that arrived in this tier by demote from the next faster one
spills                   engine   count  entries that arrived in this tier by spilling: pushed out of the next faster one to make room
bytes_in                 engine   bytes  bytes of entries that arrived in this tier, for any reason
bytes_out                engine   bytes  bytes of entries that left this tier, for any reason
rejections               engine   count  new keys the tier's admission filter declined (W-TinyLFU): nothing stored, insert returned False
cleanings                storage  count  segments (or windows of segments, for a large entry) cleaned to make room
cleaning_bytes           storage  bytes  bytes copied by cleaning (the write amplification's numerator)
compactions              storage  count  cache.compact() passes run on this tier
compaction_bytes         storage  bytes  bytes moved inside this tier by cache.compact()
fragmentation_evictions  storage  count  entries displaced because pinned segments left no other room
memory                   state    bytes  bytes of memory the tier took: capacity / (1 - headroom) in whole segments
fragmentation            state    ratio  share of the free bytes lying as dead space in closed segments, now
"""


def _rows(text: str) -> tuple[tuple[str, str, str, str], ...]:
    rows = []
    for line in text.strip().splitlines():
        name, who, unit, meaning = line.split(maxsplit=3)
        assert who in (ENGINE, STORAGE, STATE) and unit in (COUNT, BYTES, RATIO), line
        rows.append((name, who, unit, meaning))
    return tuple(rows)


TABLE = _rows(_DECLARED)

#: Every counter with its meaning, in report order.
COUNTERS: dict[str, str] = {name: meaning for name, _, _, meaning in TABLE}
#: The engine's counters, in the order of its COUNTER_* indices.
ENGINE_COUNTERS: tuple[str, ...] = tuple(name for name, who, _, _ in TABLE if who == ENGINE)
#: The storage layer's counters, in the order of its STORAGE_COUNTER_* indices.
STORAGE_COUNTERS: tuple[str, ...] = tuple(name for name, who, _, _ in TABLE if who == STORAGE)
#: Values that are a tier's state now, not a running total.
STATE_VALUES: tuple[str, ...] = tuple(name for name, who, _, _ in TABLE if who == STATE)
#: Counters that are byte amounts, and those that are ratios (the report formats them so).
BYTE_COUNTERS: frozenset[str] = frozenset(name for name, _, unit, _ in TABLE if unit == BYTES)
RATIO_COUNTERS: frozenset[str] = frozenset(name for name, _, unit, _ in TABLE if unit == RATIO)
