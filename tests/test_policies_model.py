"""Differential tests of every native policy against its plain-Python model (policy_models.py).

The state machine of test_engine_stateful runs unchanged (several tiers, pins, spills,
replacements, promotions, batches, bad input, check() after every step) with each policy in
the engine and the matching model beside it; every step compares results, each tier's order,
statistics, counters and the event log.
"""

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize

import vyrecache as vc
from policy_models import PolicyModelCache
from test_engine_stateful import EngineVersusModel

POLICY_CLASSES = {"lru": vc.LruPolicy, "fifo": vc.FifoPolicy, "clock": vc.ClockPolicy,
                  "sieve": vc.SievePolicy, "s3fifo": vc.S3FifoPolicy, "arc": vc.ArcPolicy}


def machine_for(name):
    class PolicyVersusModel(EngineVersusModel):
        @initialize(capacities=st.lists(st.sampled_from([0, 10, 32, 64, 100]), min_size=1,
                                        max_size=3),
                    spill=st.booleans(), threshold=st.integers(0, 3),
                    granularity=st.sampled_from([1, 1, 8]), log_events=st.booleans())
        def build(self, capacities, spill, threshold, granularity, log_events):
            self.cache = vc.TieredCache(
                [vc.CacheTier(f"t{i}", c) for i, c in enumerate(capacities)],
                policy=POLICY_CLASSES[name](promote_threshold=threshold), spill=spill,
                granularity=granularity)
            self.cache.record_events = log_events
            self.model = PolicyModelCache(capacities, name, threshold, spill, granularity)
            self.model_events = []

    PolicyVersusModel.__name__ = f"{name.capitalize()}VersusModel"
    PolicyVersusModel.TestCase.settings = settings(
        max_examples=int(os.environ.get("VYRECACHE_STATEFUL_EXAMPLES", "40")),
        stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    return PolicyVersusModel


TestFifoVersusModel = machine_for("fifo").TestCase
TestClockVersusModel = machine_for("clock").TestCase
TestSieveVersusModel = machine_for("sieve").TestCase
TestS3FifoVersusModel = machine_for("s3fifo").TestCase
TestArcVersusModel = machine_for("arc").TestCase
