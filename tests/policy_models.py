"""Plain-Python models of the engine's eviction policies, for differential tests.

Each tier runs one model policy over plain lists (newest first), written from the papers and
the rules in docs/DESIGN.md ("Eviction policies"), not from the engine's segmented list.
``PolicyModelCache`` is the LRU reference model (reference_model.py) with the tier order, the
victim choice and the arrivals handed to those policies.  W-TinyLFU is left out: its
count-min sketch hashes keys exactly as the engine does, so a model of it would be a copy of
the engine rather than a second opinion; its tests check invariants and behaviour instead.
"""

from __future__ import annotations

from reference_model import ModelCache


def clock_victim(ring, passes, pinned, spare):
    """CLOCK's walk over `ring` (newest first): from the oldest entry round and round, for at most
    `passes` times its length plus `passes` steps.  Pinned keys are passed over; a key `spare`
    gives another chance moves to the newest end; the first other key is the victim (None when
    the walk ends first)."""
    position = len(ring) - 1
    for _ in range(passes * len(ring) + passes if ring else 0):
        if position < 0:
            position = len(ring) - 1
        key = ring[position]
        if pinned(key):
            position -= 1
        elif spare(key):
            ring.pop(position)
            ring.insert(0, key)
            # The walk goes on with the entry that was newer than this one (now at the same
            # index), or round to the oldest when this one was the newest.
            if position == 0:
                position = len(ring) - 1
        else:
            return key
    return None


class TierModel:
    """One tier's policy: ``segments`` are lists of keys, newest first, in list order."""

    n_segments = 1

    def __init__(self, cache: "PolicyModelCache", tier: int, capacity: int) -> None:
        self.cache = cache
        self.tier = tier
        self.capacity = capacity
        self.segments: list[list[int]] = [[] for _ in range(self.n_segments)]

    # helpers
    def pinned(self, key):
        return self.cache.entries[key].pins > 0

    def charge_of(self, key):
        return self.cache.charge(self.cache.entries[key].size)

    def segment_of(self, key):
        for index, segment in enumerate(self.segments):
            if key in segment:
                return index
        raise AssertionError(f"key {key} is in no segment of tier {self.tier}")

    def used(self, index):
        return sum(self.charge_of(key) for key in self.segments[index])

    def oldest_unpinned(self, index):
        for key in reversed(self.segments[index]):
            if not self.pinned(key):
                return key
        return None

    def order(self):
        return [key for segment in self.segments for key in segment]

    # the interface
    def arrival(self, key, charge, fresh):
        """Before room is made; False when the arrival is declined."""
        return True

    def place(self, key):
        self.segments[0].insert(0, key)

    def remove(self, key):
        self.segments[self.segment_of(key)].remove(key)

    def touch(self, key):
        pass

    def victim(self):
        return self.oldest_unpinned(0)


class LruModel(TierModel):
    def touch(self, key):
        self.segments[0].remove(key)
        self.segments[0].insert(0, key)


class FifoModel(TierModel):
    pass


class ClockModel(TierModel):
    """One reference bit; the hand is the list's oldest end, a spared entry goes to the head."""

    def __init__(self, *args):
        super().__init__(*args)
        self.marked: set[int] = set()

    def place(self, key):
        self.marked.discard(key)
        super().place(key)

    def remove(self, key):
        self.marked.discard(key)
        super().remove(key)

    def touch(self, key):
        self.marked.add(key)

    def victim(self):
        return clock_victim(self.segments[0], 2, self.pinned, self.spare)

    def spare(self, key):
        """A marked key loses its mark and gets a second chance."""
        if key not in self.marked:
            return False
        self.marked.discard(key)
        return True


class SieveModel(TierModel):
    """Zhang et al.: a visited bit, a hand moving from old to new; entries never move."""

    def __init__(self, *args):
        super().__init__(*args)
        self.visited: set[int] = set()
        self.hand: int | None = None

    def place(self, key):
        self.visited.discard(key)
        super().place(key)

    def remove(self, key):
        ring = self.segments[0]
        if self.hand == key:
            position = ring.index(key)
            self.hand = ring[position - 1] if position > 0 else None
        self.visited.discard(key)
        super().remove(key)

    def touch(self, key):
        self.visited.add(key)

    def victim(self):
        ring = self.segments[0]
        if not ring:
            return None
        position = ring.index(self.hand) if self.hand is not None else len(ring) - 1
        for _ in range(2 * len(ring) + 2):
            key = ring[position]
            if not self.pinned(key):
                if key not in self.visited:
                    self.hand = ring[position - 1] if position > 0 else None
                    return key
                self.visited.discard(key)
            position = position - 1 if position > 0 else len(ring) - 1
        return None


class S3FifoModel(TierModel):
    """Yang et al. as libCacheSim runs it: small FIFO, main FIFO with a 2-bit CLOCK count, a
    ghost FIFO of keys evicted from small."""

    n_segments = 2

    def __init__(self, cache, tier, capacity, small_ratio=0.1, ghost_ratio=0.9, threshold=2):
        super().__init__(cache, tier, capacity)
        self.small_cap = int(capacity * small_ratio)
        self.main_cap = capacity - self.small_cap
        self.ghost_cap = int(capacity * ghost_ratio)
        self.threshold = threshold
        self.freq: dict[int, int] = {}
        self.ghost: list[tuple[int, int]] = []      # newest first
        self.ghost_hit = False
        self.has_evicted = False

    def arrival(self, key, charge, fresh):
        self.ghost_hit = False
        for index, (ghost_key, _) in enumerate(self.ghost):
            if ghost_key == key:
                del self.ghost[index]
                self.ghost_hit = True
                break
        return True

    def place(self, key):
        charge = self.charge_of(key)
        to_main = (self.ghost_hit or charge >= self.small_cap
                   or (not self.has_evicted and self.used(0) >= self.small_cap))
        self.ghost_hit = False
        self.freq[key] = 0
        self.segments[1 if to_main else 0].insert(0, key)

    def remove(self, key):
        self.freq.pop(key, None)
        super().remove(key)

    def touch(self, key):
        self.freq[key] = min(self.freq[key] + 1, 3)

    def small_victim(self, force):
        for key in list(reversed(self.segments[0])):
            if self.pinned(key):
                continue
            if not force and self.freq[key] >= self.threshold:
                self.freq[key] = 0
                self.segments[0].remove(key)
                self.segments[1].insert(0, key)
                continue
            charge = self.charge_of(key)
            if self.ghost_cap >= charge:
                self.ghost.insert(0, (key, charge))
                while sum(c for _, c in self.ghost) > self.ghost_cap:
                    self.ghost.pop()
            return key
        return None

    def main_victim(self):
        return clock_victim(self.segments[1], 4, self.pinned, self.spare_main)

    def spare_main(self, key):
        """A key of the main FIFO with frequency left spends one and gets another round."""
        if self.freq[key] == 0:
            return False
        self.freq[key] -= 1
        return True

    def victim(self):
        self.has_evicted = True
        if self.used(1) > self.main_cap or self.used(0) == 0:
            key = self.main_victim()
            return key if key is not None else self.small_victim(True)
        key = self.small_victim(False)
        if key is None:
            key = self.main_victim()
        return key if key is not None else self.small_victim(True)


class ArcModel(TierModel):
    """Megiddo & Modha's ARC as libCacheSim runs it (fractional p; case A tests B1)."""

    n_segments = 2

    def __init__(self, *args):
        super().__init__(*args)
        self.b1: list[tuple[int, int]] = []     # newest first
        self.b2: list[tuple[int, int]] = []
        self.p = 0.0
        self.ghost_hit = 0
        self.incoming = 0

    @staticmethod
    def size(ghosts):
        return sum(charge for _, charge in ghosts)

    def arrival(self, key, charge, fresh):
        self.ghost_hit = 0
        self.incoming = charge
        for which, ghosts in ((1, self.b1), (2, self.b2)):
            for index, (ghost_key, _) in enumerate(ghosts):
                if ghost_key == key:
                    b1, b2 = self.size(self.b1), self.size(self.b2)
                    # Entries of size 0 make a ghost list of 0 bytes: the step is then 1.
                    if which == 1:
                        self.p = min(self.p + max(b2 / b1 if b1 else 0.0, 1.0), float(self.capacity))
                    else:
                        self.p = max(self.p - max(b1 / b2 if b2 else 0.0, 1.0), 0.0)
                    del ghosts[index]
                    self.ghost_hit = which
                    return True
        return True

    def place(self, key):
        self.segments[1 if self.ghost_hit else 0].insert(0, key)
        self.ghost_hit = 0
        self.incoming = 0

    def touch(self, key):
        self.remove(key)
        self.segments[1].insert(0, key)

    def replace(self):
        t1 = self.used(0)
        which = 0 if (t1 > 0 and (t1 > self.p or (t1 == self.p and self.ghost_hit == 2))
                      or self.used(1) == 0) else 1
        key = self.oldest_unpinned(which)
        if key is None:
            which = 1 - which
            key = self.oldest_unpinned(which)
        if key is not None:
            (self.b1 if which == 0 else self.b2).insert(0, (key, self.charge_of(key)))
        return key

    def victim(self):
        if self.ghost_hit:
            return self.replace()
        t1, t2 = self.used(0), self.used(1)
        b1, b2 = self.size(self.b1), self.size(self.b2)
        if t1 + b1 + self.incoming > self.capacity:
            if b1 > 0:
                self.b1.pop()
                return self.replace()
            key = self.oldest_unpinned(0)
            return key if key is not None else self.oldest_unpinned(1)
        if t1 + t2 + b1 + b2 >= 2 * self.capacity and b2 > 0:
            self.b2.pop()
        return self.replace()


MODELS = {"lru": LruModel, "fifo": FifoModel, "clock": ClockModel, "sieve": SieveModel,
          "s3fifo": S3FifoModel, "arc": ArcModel}


class PolicyModelCache(ModelCache):
    """ModelCache with a policy model per tier."""

    def __init__(self, capacities, policy, threshold=3, spill=True, granularity=1, **params):
        super().__init__(capacities, threshold, spill, granularity)
        self.policies = [MODELS[policy](self, tier, capacity, **params)
                         for tier, capacity in enumerate(self.capacities)]

    def unlink(self, entry):
        self.policies[entry.tier].remove(entry.key)
        super().unlink(entry)

    def link(self, entry, tier):
        super().link(entry, tier)
        self.policies[tier].place(entry.key)

    def victim_of(self, tier):
        return self.policies[tier].victim()

    def arrive(self, tier, key, charge, new):
        self.policies[tier].arrival(key, charge, new)

    def touched(self, entry):
        self.policies[entry.tier].touch(entry.key)

    def tier_keys(self, tier):
        return self.policies[tier].order()
