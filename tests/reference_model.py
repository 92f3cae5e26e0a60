"""A plain-Python model of the tiered cache's rules, for differential tests of the engine.

Written for clarity, not speed: an OrderedDict per tier (first = coldest, last = most recent)
and a dict of entries.  It models keys, sizes, tiers, LRU order, statistics, pins, spilling,
granularity, counters and the event log of the built-in LruPolicy.  Errors are reported as the
exception classes the engine raises, so a test can compare outcomes directly.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from vyrecache.counters import ENGINE_COUNTERS
from vyrecache.errors import AllPinnedError, EntryTooLargeError, KeyNotFoundError

EV_INSERT, EV_REMOVE, EV_EVICT, EV_LIFT, EV_PLACE = 1, 2, 3, 4, 5
COUNTERS = ENGINE_COUNTERS
U32_MAX = 2**32 - 1


@dataclass
class Entry:
    key: int
    size: int
    tier: int
    frequency: int = 0
    last_access: int = 0
    pins: int = 0


class ModelCache:
    def __init__(self, capacities, threshold=3, spill=True, granularity=1):
        self.capacities = list(capacities)
        self.threshold = threshold
        self.spill = spill
        self.granularity = granularity
        self.lists = [OrderedDict() for _ in capacities]
        self.entries: dict[int, Entry] = {}
        self.tick = 0
        self.counters = [dict.fromkeys(COUNTERS, 0) for _ in capacities]
        self.events: list[tuple[int, int, int, int]] = []   # (kind, key, src, dst)

    # ---- helpers ----
    def charge(self, size):
        g = self.granularity
        return -(-size // g) * g

    def used(self, tier):
        return sum(self.charge(self.entries[k].size) for k in self.lists[tier])

    def pinned(self, tier):
        return sum(self.charge(self.entries[k].size) for k in self.lists[tier]
                   if self.entries[k].pins)

    def can_host(self, tier, charge, ignore=None):
        pinned = self.pinned(tier)
        if ignore is not None and ignore.tier == tier and ignore.pins:
            pinned -= self.charge(ignore.size)
        return charge <= self.capacities[tier] - pinned

    def coldest_unpinned(self, tier):
        for key in self.lists[tier]:
            if not self.entries[key].pins:
                return key
        return None

    def unlink(self, entry):
        del self.lists[entry.tier][entry.key]
        self.counters[entry.tier]["bytes_out"] += entry.size

    def link(self, entry, tier):
        entry.tier = tier
        self.lists[tier][entry.key] = None

    def leave(self, entry, kind):
        self.events.append((kind, entry.key, entry.tier, -1))
        self.unlink(entry)
        if kind == EV_EVICT:
            self.counters[entry.tier]["evictions"] += 1
        del self.entries[entry.key]

    # ---- what a policy decides (LRU here; policy_models.PolicyModelCache overrides them) ----
    def victim_of(self, tier):
        """The key the tier gives up next, None when every entry is pinned."""
        return self.coldest_unpinned(tier)

    def arrive(self, tier, key, charge, new):
        """An entry is about to be placed in `tier` (before room is made for it)."""

    def touched(self, entry):
        self.lists[entry.tier].move_to_end(entry.key)

    def make_room(self, tier, charge):
        while self.used(tier) + charge > self.capacities[tier]:
            victim = self.victim_of(tier)
            assert victim is not None, "the caller checked that room can be made"
            self.displace(self.entries[victim])

    def displace(self, entry):
        tier = entry.tier
        if self.spill and tier > 0 and self.can_host(tier - 1, self.charge(entry.size)):
            self.move(entry, tier - 1, "spills")
        else:
            self.leave(entry, EV_EVICT)

    def move(self, entry, dst, counter):
        src = entry.tier
        self.events.append((EV_LIFT, entry.key, src, dst))
        self.unlink(entry)
        self.arrive(dst, entry.key, self.charge(entry.size), False)
        self.make_room(dst, self.charge(entry.size))
        self.link(entry, dst)
        self.events.append((EV_PLACE, entry.key, src, dst))
        self.counters[dst][counter] += 1
        self.counters[dst]["bytes_in"] += entry.size

    def record(self, entry):
        self.tick += 1
        entry.last_access = self.tick
        entry.frequency = min(entry.frequency + 1, U32_MAX)
        self.touched(entry)

    def promote_entry(self, entry, strict):
        tier = entry.tier
        if entry.pins or tier + 1 >= len(self.capacities) or entry.frequency < self.threshold:
            return
        charge = self.charge(entry.size)
        if charge > self.capacities[tier + 1]:
            return
        if not self.can_host(tier + 1, charge):
            if strict:
                raise AllPinnedError
            return
        self.move(entry, tier + 1, "promotions")

    def demote_entry(self, entry):
        tier = entry.tier
        charge = self.charge(entry.size)
        if entry.pins or tier == 0 or charge > self.capacities[tier - 1]:
            return
        if not self.can_host(tier - 1, charge):
            raise AllPinnedError
        self.move(entry, tier - 1, "demotions")

    def lookup(self, key):
        entry = self.entries.get(key)
        if entry is None:
            raise KeyNotFoundError(key)
        return entry

    # ---- the public operations (each clears the event log first) ----
    def insert(self, key, size):
        self.events = []
        charge = self.charge(size)
        old = self.entries.get(key)
        fitting = [t for t, cap in enumerate(self.capacities) if charge <= cap]
        if not fitting:
            raise EntryTooLargeError(key)
        hosts = [t for t in fitting if self.can_host(t, charge, ignore=old)]
        if not hosts:
            raise AllPinnedError(key)
        tier = hosts[0]
        if old is not None:
            self.leave(old, EV_REMOVE)
        self.arrive(tier, key, charge, old is None)
        self.make_room(tier, charge)
        entry = Entry(key, size, tier)
        self.entries[key] = entry
        self.link(entry, tier)
        self.events.append((EV_INSERT, key, -1, tier))
        self.counters[tier]["inserts"] += 1
        self.counters[tier]["bytes_in"] += size
        return tier

    def hit(self, entry):
        self.record(entry)
        tier = entry.tier
        self.counters[tier]["hits"] += 1
        self.promote_entry(entry, strict=False)
        return tier

    def access(self, key, size):
        self.events = []
        entry = self.entries.get(key)
        if entry is not None:
            return self.hit(entry)
        tier = self.insert(key, size)
        self.counters[tier]["misses"] += 1
        return -1

    def touch(self, key):
        self.events = []
        entry = self.entries.get(key)
        return -1 if entry is None else self.hit(entry)

    def record_access(self, key):
        self.events = []
        if key in self.entries:
            self.record(self.entries[key])

    def promote(self, key):
        self.events = []
        self.promote_entry(self.lookup(key), strict=True)

    def demote(self, key):
        self.events = []
        self.demote_entry(self.lookup(key))

    def remove(self, key):
        self.events = []
        entry = self.lookup(key)
        result = (entry.key, entry.size, entry.tier)
        self.leave(entry, EV_REMOVE)
        return result

    def evict_coldest(self):
        self.events = []
        for tier in range(len(self.capacities)):
            key = self.victim_of(tier)
            if key is not None:
                self.leave(self.entries[key], EV_EVICT)
                return key
        return None

    def evict_from_tier(self, tier):
        self.events = []
        key = self.victim_of(tier)
        if key is not None:
            self.displace(self.entries[key])
        return key

    def pin(self, key):
        self.events = []
        self.lookup(key).pins += 1

    def unpin(self, key):
        self.events = []
        entry = self.lookup(key)
        assert entry.pins > 0
        entry.pins -= 1

    def move_many(self, keys, up):
        self.events = []
        out = []
        for key in keys:
            entry = self.entries.get(key)
            if entry is None:
                out.append(-1)
                continue
            if up:
                self.promote_entry(entry, strict=False)
            else:
                try:
                    self.demote_entry(entry)
                except AllPinnedError:
                    pass
            out.append(entry.tier)
        return out

    # ---- observations ----
    def get(self, key):
        entry = self.entries.get(key)
        return None if entry is None else (entry.key, entry.size, entry.tier)

    def stats(self, key):
        entry = self.entries.get(key)
        return None if entry is None else (entry.frequency, entry.last_access, entry.size)

    def tier_keys(self, tier):
        """Most recent first, like TieredCache.tier_keys."""
        return list(reversed(self.lists[tier]))
