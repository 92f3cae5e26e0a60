"""Reliability of BufferCache under misuse, interruption and edge-case sizes.

Every test here goes through the public API only (vc.BufferCache, vc.TieredCache, the
errors, check(), put/read/access/pin/unpin/remove/compact/close/counters/location/
promote_many/demote_many), on the host backend and on Vulkan, so it keeps its meaning
whatever the storage layer looks like inside.  What each test holds the cache to:

* an operation either completes or raises and leaves the cache as it was;
* check() passes after every call, and every present key reads back its own bytes;
* misuse (closing from a callback, sharing a backend, bad arguments) raises an error that
  names the value and says how to fix it, and never crashes the interpreter.

Tests that could crash the interpreter run their scenario in a child process and assert on
its exit status and output, so a crash is a failing test instead of a dead test run.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import vyrecache as vc

BACKENDS = ["host", "vulkan"]


def payload(key: int, size: int, version: int = 0) -> bytes:
    """Bytes that differ per key, size and version, so a misplaced entry cannot read back right."""
    rng = np.random.default_rng(key * 7919 + size * 31 + version * 1000003)
    return rng.integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    return request.param


@pytest.fixture
def make_cache(request, backend_name):
    """Build BufferCaches on the parametrized backend and close them after the test.

    On Vulkan every cache gets its own VulkanBackend over the session's validated device
    (copy commands: nothing is measured per cache).
    """
    made = []
    if backend_name.startswith("vulkan"):
        device = request.getfixturevalue("vulkan_device")
        from device_only import DeviceOnlyBackend
        from vyrecache.vulkan.backend import VulkanBackend
        # "vulkan-device-copies": every copy through copy tables submitted from C, the
        # discrete-GPU path, on a device whose memory is all mapped.
        make_backend = DeviceOnlyBackend if backend_name == "vulkan-device-copies" else VulkanBackend

        def new_backend():
            return make_backend(device=device, compaction="commands")
    else:
        def new_backend():
            return "host"

    def build(tiers, **options):
        cache = vc.BufferCache(tiers, backend=new_backend(), **options)
        made.append(cache)
        return cache

    build.backend = backend_name
    build.new_backend = new_backend
    yield build
    for cache in made:
        try:
            cache.close()
        except Exception:
            pass     # a cache a failing test left broken must not hide that test's own failure


def alignment_of(make_cache) -> int:
    """The bytes one 1-byte entry is charged: the backend's placement granularity."""
    probe = make_cache([vc.CacheTier("t", 1 << 16, memory="host")])
    probe.put(0, b"x")
    charged = probe.tiers[0].used
    probe.close()
    return charged


def assert_consistent(cache, model: dict[int, set[bytes]]) -> None:
    """check() passes, every present key is one the model knows, with one of its allowed values."""
    cache.check()
    for key in list(cache):
        assert key in model, f"key {key} is present but was never put"
        data = cache.read(key).tobytes()
        assert data in model[key], f"key {key} reads {len(data)} bytes that were never put under it"


# -- child processes ------------------------------------------------------------------------

CHILD_PREAMBLE = """
import sys
import numpy as np
import vyrecache as vc

BACKEND = sys.argv[1]

def new_backend():
    if BACKEND == "vulkan":
        from vyrecache.vulkan.backend import VulkanBackend
        return VulkanBackend(compaction="commands")
    from vyrecache.host import HostBackend
    return HostBackend()

def payload(key, size):
    return np.random.default_rng(key * 7919 + size * 31).integers(0, 256, size, dtype=np.uint8).tobytes()
"""


def run_child(request, backend: str, code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``BACKEND`` set; a crash shows as its exit status."""
    if backend == "vulkan":
        request.getfixturevalue("require_vulkan")
    return subprocess.run([sys.executable, "-c", CHILD_PREAMBLE + textwrap.dedent(code), backend],
                          capture_output=True, text=True, timeout=timeout)


def assert_child_ok(proc: subprocess.CompletedProcess, *expected: str) -> None:
    detail = f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, detail
    for line in expected:
        assert line in proc.stdout.splitlines(), f"missing {line!r} in the output\n{detail}"


# -- 1. close() from inside an operation ------------------------------------------------------

# The scenario of every close-from-a-callback test: the callback closes the cache while an
# operation is running.  Allowed outcomes: close() raises CacheError saying the cache is in use
# by an operation (with a Fix), and the cache stays consistent; or the close is deferred until
# the operation has returned, after which the cache is closed.  Either way a later close()
# works and the process exits normally.
CLOSE_FROM_CALLBACK = """
attempts = []
holder = {}

def try_close():
    if attempts:
        return
    try:
        holder["cache"].close()
        attempts.append("closed")
    except vc.CacheError as error:
        attempts.append("refused: " + str(error))

class ClosingPolicy(vc.TierPolicy):
    def __init__(self, where):
        self.where = where
    def eviction_candidate(self, tier, cache):
        if self.where == "eviction_candidate":
            try_close()
        return None
    def should_promote(self, key, stats):
        if self.where == "should_promote":
            try_close()
            return True
        return False

WHERE = sys.argv[2]
tiers = [vc.CacheTier("host", 4096, memory="host"), vc.CacheTier("vram", 4096, memory="device")]
options = {"on_evict": lambda entry: try_close()} if WHERE == "on_evict" else {"policy": ClosingPolicy(WHERE)}
cache = vc.BufferCache(tiers, backend=new_backend(), **options)
holder["cache"] = cache
for key in range(4):
    cache.put(key, payload(key, 1024))
try:
    if WHERE == "should_promote":
        cache.access(0)            # the policy is asked whether 0 moves up
    else:
        cache.put(10, payload(10, 1024))   # tier 0 is full: a victim is needed
except vc.CacheError as error:
    print("operation raised", type(error).__name__)
assert attempts, "the callback never ran"
print("ATTEMPT", attempts[0][:8])
if attempts[0].startswith("refused"):
    assert "in use by an operation" in attempts[0] and "Fix:" in attempts[0], attempts[0]
    cache.check()
    for key in cache:
        assert cache.read(key).tobytes() == payload(key, 1024), key
else:
    try:
        cache.read(1)
    except vc.CacheClosedError:
        pass
    else:
        raise SystemExit("close() during the operation neither raised nor took effect")
cache.close()
print("OK")
"""


@pytest.mark.parametrize("where", [
    "eviction_candidate",
    "should_promote",
    "on_evict",
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_close_from_a_callback_never_crashes(request, backend, where):
    code = CLOSE_FROM_CALLBACK.replace("WHERE = sys.argv[2]", f"WHERE = {where!r}")
    assert_child_ok(run_child(request, backend, code), "OK")


# -- 2. one backend object, two caches --------------------------------------------------------

SHARED_BACKEND = """
tiers = [vc.CacheTier("host", 1 << 16, memory="host")]
backend = new_backend()
a = vc.BufferCache(tiers, backend=backend)
a.put(1, payload(1, 100))
try:
    b = vc.BufferCache(tiers, backend=backend)
except ValueError as error:
    print("REJECTED", "Fix:" in str(error))
    # The refused construction must leave the first cache's backend alone.
    assert a.read(1).tobytes() == payload(1, 100)
    a.check()
    a.close()
else:
    b.put(2, payload(2, 100))
    a.close()                 # closes the backend b is still using
    b.read(2)
    b.close()
    print("SHARED")
print("OK")
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backend_belongs_to_one_cache(request, backend):
    assert_child_ok(run_child(request, backend, SHARED_BACKEND), "REJECTED True", "OK")


# -- 3. a policy that fails, or mutates the cache, in the middle of a put ---------------------

class RaisingPolicy(vc.TierPolicy):
    """eviction_candidate raises while armed: the put that needs a victim gets the error."""

    def __init__(self):
        self.armed = False
        self.cache = None

    def eviction_candidate(self, tier, cache):
        if self.armed:
            self.armed = False
            raise RuntimeError("policy failed")
        return None


class PinningPolicy(RaisingPolicy):
    """eviction_candidate pins an entry: a mutation from inside the operation."""

    def eviction_candidate(self, tier, cache):
        if self.armed:
            self.armed = False
            self.cache.pin(2)
        return None


class PuttingPolicy(RaisingPolicy):
    """eviction_candidate puts an entry: a mutation from inside the operation."""

    def eviction_candidate(self, tier, cache):
        if self.armed:
            self.armed = False
            self.cache.put(99, payload(99, 256))
        return None


@pytest.mark.parametrize("policy_class, error", [(RaisingPolicy, RuntimeError), (PinningPolicy, vc.CacheError),
                                                 (PuttingPolicy, vc.CacheError)],
                         ids=["raises", "pins", "puts"])
def test_a_failing_policy_leaves_the_cache_whole(make_cache, policy_class, error):
    policy = policy_class()
    cache = make_cache([vc.CacheTier("host", 1024, memory="host")], policy=policy)
    policy.cache = cache
    model = {}
    for key in range(1, 5):
        model[key] = {payload(key, 256)}
        cache.put(key, payload(key, 256))
    before = set(cache)
    policy.armed = True
    with pytest.raises(error):
        cache.put(5, payload(5, 256))     # the tier is full: the policy is asked for a victim
    model[5] = {payload(5, 256)}
    assert_consistent(cache, model)
    # Either nothing happened, or the whole put did (one victim out, key 5 in).
    if 5 in cache:
        assert len(before - set(cache)) == 1 and set(cache) - before == {5}
    else:
        assert set(cache) == before
    # The cache still works: later puts store their bytes.
    for key in range(6, 12):
        cache.put(key, payload(key, 256))
        model[key] = {payload(key, 256)}
        assert cache.read(key).tobytes() == payload(key, 256)
        assert_consistent(cache, model)


# -- 4. KeyboardInterrupt in the middle of a put that has to make room ------------------------

def fragmented_cache(make_cache, seed: int = 7):
    """A tier of entries of many sizes with holes between them, and the model of its bytes.

    Returns (cache, model, key, data): ``data`` is larger than the largest hole (and, here, no
    larger than the free bytes), so its put has to compact or evict to find a contiguous range.
    """
    rng = random.Random(seed)
    cache = make_cache([vc.CacheTier("host", 16384, memory="host")])
    model: dict[int, set[bytes]] = {}
    for key in range(80):                      # more than fit: the tier ends up full
        data = payload(key, rng.choice([48, 112, 208, 400, 528, 720]))
        cache.put(key, data)
        model[key] = {data}
    for key in sorted(cache)[::2]:
        cache.remove(key)                      # holes all over the tier
    free = cache.tiers[0].capacity - cache.tiers[0].used
    largest = round(free * (1 - cache.counters()[0]["fragmentation"]))
    # Larger than the largest hole: the put compacts, or evicts if the storage keeps no holes.
    key, data = 1000, payload(1000, largest + 1)
    model[key] = {data}
    return cache, model, key, data


class InterruptAt:
    """A trace or profile function raising KeyboardInterrupt at the n-th call inside vyrecache.

    As a trace function (sys.settrace) it counts the Python functions of the package that are
    entered; as a profile function (sys.setprofile) also the C functions (Cython methods, numpy)
    that the package's Python code calls, so the interrupt also lands between two of those.
    """

    def __init__(self, n: int, events: tuple[str, ...]):
        self.n = n
        self.events = events
        self.calls = 0
        self.fired = False
        self.package = vc.__file__.rsplit("/", 1)[0]

    def __call__(self, frame, event, arg):
        if event in self.events and frame.f_code.co_filename.startswith(self.package):
            self.calls += 1
            if self.calls == self.n:
                self.fired = True
                raise KeyboardInterrupt
        return None


HOOKS = {"settrace": (sys.settrace, ("call",)), "setprofile": (sys.setprofile, ("call", "c_call"))}


@pytest.mark.parametrize("backend_name", BACKENDS + ["vulkan-device-copies"])
@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_keyboard_interrupt_at_every_call_of_a_put(make_cache, hook):
    install, events = HOOKS[hook]
    n = 1
    while True:
        cache, model, key, data = fragmented_cache(make_cache)
        tracer = InterruptAt(n, events)
        install(tracer)
        try:
            cache.put(key, data)
        except KeyboardInterrupt:
            pass
        finally:
            install(None)
        # Interrupted or not: consistent, and every present key has its own bytes.
        assert_consistent(cache, model)
        later = payload(2000, 500)
        model[2000] = {later}
        cache.put(2000, later)
        assert cache.read(2000).tobytes() == later
        assert_consistent(cache, model)
        cache.close()
        if not tracer.fired:
            break           # the put ran to the end without reaching the n-th call
        n += 1
    # n == 1 means the put, cleaning included, ran no Python code of the package at all: there
    # is no point where an interrupt could land inside it (the compiled path's guarantee).
    assert n >= 1


@pytest.mark.parametrize("backend_name", BACKENDS + ["vulkan-device-copies"])
def test_keyboard_interrupt_from_a_timer_over_many_puts(make_cache):
    rng = random.Random(11)
    cache = make_cache([vc.CacheTier("host", 32768, memory="host"), vc.CacheTier("vram", 8192, memory="device")])
    model: dict[int, set[bytes]] = {}
    armed = [False]

    def interrupt(signum, frame):
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    interrupted = 0
    try:
        for step in range(300):
            key = rng.randrange(60)
            data = payload(key, rng.choice([16, 100, 300, 700, 1500, 3000]), step)
            # Until the put is known to have returned, the key may hold the old or the new bytes.
            model[key] = model.get(key, set()) | {data}
            try:
                try:
                    armed[0] = True
                    signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 3e-4))
                    cache.put(key, data)
                    if rng.random() < 0.3:
                        cache.access(key)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    armed[0] = False
                model[key] = {data}
            except KeyboardInterrupt:
                interrupted += 1
                armed[0] = False
            assert_consistent(cache, model)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert interrupted, "no put was interrupted: the timer is too slow for this machine"


# -- 5. an entry larger than one block --------------------------------------------------------

@pytest.mark.slow
def test_an_entry_larger_than_a_block_is_refused_or_stored(make_cache):
    cache = make_cache([vc.CacheTier("host", (1 << 30) + (64 << 10), memory="host")])
    small = {key: payload(key, 4096) for key in range(4)}
    for key, data in small.items():
        cache.put(key, data)
    big = np.zeros((1 << 30) + 16, dtype=np.uint8)
    big[::4096] = 7
    try:
        cache.put(100, big)
    except vc.EntryTooLargeError as error:
        message = str(error)
        assert "Fix:" in message
        # It says how large an entry can be; the refused put changed nothing.
        assert any(word.strip(".,;:()").isdigit() and int(word.strip(".,;:()")) < big.nbytes
                   for word in message.split()), message
        assert 100 not in cache
        assert sorted(cache) == sorted(small)
    else:
        assert 100 in cache
        assert np.array_equal(cache.read(100), big)
    for key in cache:
        if key in small:
            assert cache.read(key).tobytes() == small[key]
    cache.check()


# -- 6. a put that returns has stored its entry ------------------------------------------------

def test_a_put_that_cannot_place_its_entry_raises(make_cache):
    unit = alignment_of(make_cache)
    cache = make_cache([vc.CacheTier("host", 4 * unit, memory="host")])
    for key in (1, 2, 3):
        cache.put(key, payload(key, unit))
    cache.pin(2)
    cache.remove(1)
    cache.remove(3)
    # 3 units are free, but the pinned entry splits them into 1 + 2: no range holds 3.
    try:
        cache.put(4, payload(4, 3 * unit))
    except vc.AllPinnedError as error:
        assert "Fix:" in str(error)
        assert sorted(cache) == [2]
    else:
        assert 4 in cache, "put returned but the entry is not in the cache"
        assert cache.read(4).tobytes() == payload(4, 3 * unit)
    assert cache.read(2).tobytes() == payload(2, unit)
    cache.check()


OPS = st.lists(st.tuples(st.sampled_from(["put", "put", "put", "pin", "unpin", "remove"]),
                         st.integers(0, 7), st.integers(1, 6)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS, two_tiers=st.booleans())
@example(ops=[("put", 1, 1), ("put", 2, 1), ("put", 3, 1), ("pin", 2, 1), ("remove", 1, 1),
              ("remove", 3, 1), ("put", 4, 3)], two_tiers=False)
def test_random_pins_never_make_a_put_lose_its_entry(make_cache, ops, two_tiers):
    unit = alignment_of(make_cache)
    tiers = [vc.CacheTier("host", 4 * unit, memory="host")]
    if two_tiers:
        tiers.append(vc.CacheTier("vram", 3 * unit, memory="device"))
    cache = make_cache(tiers)
    model: dict[int, set[bytes]] = {}
    pins: dict[int, int] = {}
    for step, (op, key, units) in enumerate(ops):
        if op == "put":
            data = payload(key, units * unit, step)
            try:
                cache.put(key, data)
            except vc.CacheError:
                pass         # refused (too large, all pinned, pinned key): the old entry stays
            else:
                assert key in cache, f"step {step}: put({key}) returned but the key is absent"
                assert cache.read(key).tobytes() == data
                model[key] = {data}
                pins.pop(key, None)
        elif op == "pin" and key in cache:
            cache.pin(key)
            pins[key] = pins.get(key, 0) + 1
        elif op == "unpin" and pins.get(key):
            cache.unpin(key)
            pins[key] -= 1
        elif op == "remove" and key in cache:
            try:
                cache.remove(key)
            except vc.CacheError:
                pass
        for gone in [k for k in pins if k not in cache]:
            del pins[gone]
        assert_consistent(cache, model)
    cache.close()


# -- 7. tier capacities the memory cannot hold ------------------------------------------------

def test_a_capacity_beyond_64_bits_of_blocks_is_refused(make_cache):
    capacity = 2**64 - 1
    with pytest.raises((ValueError, MemoryError)) as caught:
        make_cache([vc.CacheTier("host", capacity, memory="host")])
    assert str(capacity) in str(caught.value) and "Fix:" in str(caught.value)


def test_a_tier_larger_than_the_memory_fails_at_creation(make_cache):
    capacity = 1 << 40          # 1 TiB, far more than the test machines have
    with pytest.raises(MemoryError) as caught:
        make_cache([vc.CacheTier("host", capacity, memory="host")])
    assert "Fix:" in str(caught.value)


HOST_COMMIT = """
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096
before = resident()
cache = vc.BufferCache([vc.CacheTier("host", 256 << 20, memory="host")], backend=new_backend())
grown = resident() - before
print("GREW", grown >= 200 << 20)
print("MiB", grown >> 20)
cache.close()
print("OK")
"""


def test_a_host_tier_takes_its_memory_at_creation(request):
    # A tier whose memory is only promised fails later, on some put, when the machine is short;
    # resident memory shows whether the pages were really taken.
    assert_child_ok(run_child(request, "host", HOST_COMMIT), "GREW True", "OK")


# -- 8. on_evict ------------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["put", "put_many", "fill_many"])
def test_every_victim_is_reported_when_on_evict_raises(make_cache, call):
    """The operation completes (a batch, every key of it), every victim is reported, then the
    first error is raised."""
    reported = []

    def on_evict(entry):
        reported.append(entry.key)
        if len(reported) == 1:
            raise RuntimeError("first victim")

    cache = make_cache([vc.CacheTier("host", 4096, memory="host")], on_evict=on_evict)
    for key in range(4):
        cache.put(key, payload(key, 1024))
    with pytest.raises(RuntimeError, match="first victim"):
        if call == "put":
            cache.put(10, payload(10, 3072))       # three victims leave
        else:
            getattr(cache, call)(np.array([3, 10], dtype=np.uint64), [payload(3, 1024), payload(10, 3072)])
    assert sorted(reported) == [0, 1, 2]
    assert sorted(cache) == [3, 10]
    assert cache.read(3).tobytes() == payload(3, 1024)
    assert cache.read(10).tobytes() == payload(10, 3072)
    cache.check()


def test_on_evict_must_be_callable(make_cache):
    with pytest.raises(TypeError) as caught:
        make_cache([vc.CacheTier("host", 4096, memory="host")], on_evict=5)
    assert "5" in str(caught.value) and "Fix:" in str(caught.value)
    # TieredCache, the same engine, already refuses it.
    with pytest.raises(TypeError):
        vc.TieredCache([vc.CacheTier("host", 4096)], on_evict=5)


# -- 9. a pin protects the entry from put and remove of its own key ----------------------------

def pinned_error():
    """vc.PinnedError; a missing class fails the test that needs it."""
    error = getattr(vc, "PinnedError", None)
    assert error is not None, "vyrecache exports no PinnedError"
    assert issubclass(error, vc.CacheError)
    return error


def test_pinned_error_is_a_public_cache_error():
    import vyrecache.errors
    assert issubclass(pinned_error(), vc.CacheError)
    assert "PinnedError" in vc.__all__ and "PinnedError" in vyrecache.errors.__all__


@pytest.mark.parametrize("operation", ["put", "remove"])
def test_put_and_remove_of_a_pinned_key_raise(make_cache, operation):
    error = pinned_error()
    cache = make_cache([vc.CacheTier("host", 4096, memory="host")])
    data = payload(1, 256)
    cache.put(1, data)
    cache.put(2, payload(2, 256))
    cache.pin(1)
    where = cache.location(1)
    with pytest.raises(error) as caught:
        if operation == "put":
            cache.put(1, payload(1, 512, 1))
        else:
            cache.remove(1)
    message = str(caught.value)
    assert "1" in message and "unpin" in message and "Fix:" in message
    # Nothing changed: same bytes at the same place, still pinned.
    assert cache.location(1) == where
    assert cache.read(1).tobytes() == data
    cache.check()
    cache.unpin(1)
    if operation == "put":
        cache.put(1, payload(1, 512, 1))
        assert cache.read(1).tobytes() == payload(1, 512, 1)
    else:
        cache.remove(1)
        assert 1 not in cache


def overlaps(a: vc.BufferLocation, b: vc.BufferLocation) -> bool:
    """Whether two locations share bytes (zero-size entries share none)."""
    return (a.tier == b.tier and a.buffer == b.buffer and a.size and b.size
            and a.offset < b.offset + b.size and b.offset < a.offset + a.size)


def test_nothing_is_placed_over_a_pinned_range(make_cache):
    error = pinned_error()
    rng = random.Random(5)
    cache = make_cache([vc.CacheTier("host", 8192, memory="host"), vc.CacheTier("vram", 2048, memory="device")])
    model: dict[int, set[bytes]] = {}
    held: dict[int, tuple[vc.BufferLocation, bytes]] = {}    # pinned key -> (location, bytes) at pin time
    for step in range(400):
        key = rng.randrange(24)
        op = rng.choice(["put", "put", "put", "access", "pin", "unpin", "remove", "compact"])
        if op == "put":
            data = payload(key, rng.choice([16, 48, 200, 500, 1000]), step)
            if key in held:
                with pytest.raises(error):
                    cache.put(key, data)
            else:
                try:
                    cache.put(key, data)
                    model[key] = {data}
                except vc.AllPinnedError:
                    pass
        elif op == "access":
            cache.access(key)
        elif op == "pin" and key in cache and key not in held:
            cache.pin(key)
            held[key] = (cache.location(key), cache.read(key).tobytes())
        elif op == "unpin" and key in held:
            cache.unpin(key)
            del held[key]
        elif op == "remove" and key in cache:
            if key in held:
                with pytest.raises(error):
                    cache.remove(key)
            else:
                cache.remove(key)
        elif op == "compact":
            cache.compact()
        assert_consistent(cache, model)
        for pinned, (where, data) in held.items():
            assert cache.location(pinned) == where, f"step {step}: pinned {pinned} moved"
            assert cache.read(pinned).tobytes() == data
            for other in cache:
                if other != pinned:
                    assert not overlaps(where, cache.location(other)), \
                        f"step {step}: {other} was placed over the pinned {pinned}"


# -- 10. capacities that are not a multiple of the alignment -----------------------------------

@pytest.mark.parametrize("capacity", [100, 1000, 4095])
def test_an_entry_as_large_as_an_empty_tier_fits(make_cache, capacity):
    cache = make_cache([vc.CacheTier("host", capacity, memory="host")])
    data = payload(1, capacity)
    cache.put(1, data)
    assert cache.read(1).tobytes() == data
    cache.check()


# -- argument checks ----------------------------------------------------------------------------

@pytest.mark.parametrize("max_bytes", [-1, "x", 2**64, 1.5, True], ids=repr)
def test_compact_rejects_a_bad_budget(make_cache, max_bytes):
    cache = make_cache([vc.CacheTier("host", 4096, memory="host")])
    cache.put(1, payload(1, 100))
    with pytest.raises((ValueError, TypeError)) as caught:
        cache.compact(max_bytes=max_bytes)
    assert repr(max_bytes) in str(caught.value) and "Fix:" in str(caught.value)
    with pytest.raises((ValueError, TypeError)):
        cache.compact(tier=0, max_bytes=max_bytes)
    cache.check()


def test_compact_accepts_a_numpy_integer_budget(make_cache):
    # Budgets computed with numpy (sums of sizes, say) are numpy ints, not Python ints.
    cache = make_cache([vc.CacheTier("host", 4096, memory="host")])
    for key in range(4):
        cache.put(key, payload(key, 256))
    cache.remove(0)
    reports = cache.compact(max_bytes=np.int64(0))
    assert all(report.bytes_moved == 0 for report in reports)
    report = cache.compact(tier=0, max_bytes=np.int64(1 << 20))
    assert report.complete and report.bytes_moved >= 0
    for key in range(1, 4):
        assert cache.read(key).tobytes() == payload(key, 256)
    cache.check()


def test_batch_moves_return_the_tier_of_each_key(make_cache):
    cache = make_cache([vc.CacheTier("host", 8192, memory="host"), vc.CacheTier("vram", 4096, memory="device")])
    for key in range(3):
        cache.put(key, payload(key, 256))
        for _ in range(3):
            cache.record_access(key)
    tiers = cache.promote_many(np.array([0, 1, 7], dtype=np.uint64))
    assert isinstance(tiers, np.ndarray) and tiers.dtype == np.int8
    assert tiers.tolist() == [1, 1, -1]
    tiers = cache.demote_many(np.array([1, 7, 2], dtype=np.uint64))
    assert tiers.dtype == np.int8 and tiers.tolist() == [0, -1, 0]
    for key in range(3):
        assert cache.read(key).tobytes() == payload(key, 256)
    cache.check()


def test_tiers_given_as_tuples(make_cache):
    cache = make_cache([("host", 1 << 20), ("vram", 1 << 16)])
    assert [tier.name for tier in cache.tiers] == ["host", "vram"]
    cache.put(1, payload(1, 1000))
    assert cache.read(1).tobytes() == payload(1, 1000)
    cache.check()


def test_put_refuses_an_object_array(make_cache):
    cache = make_cache([vc.CacheTier("host", 4096, memory="host")])
    with pytest.raises(TypeError) as caught:
        cache.put(1, np.array([1, "a", None], dtype=object))
    assert "object" in str(caught.value) and "Fix:" in str(caught.value)
    assert 1 not in cache
    cache.check()


def test_a_str_device_index_is_refused(require_vulkan):
    with pytest.raises((TypeError, ValueError)) as caught:
        vc.BufferCache([vc.CacheTier("host", 4096, memory="host")], backend="vulkan", device_index="0")
    assert "'0'" in str(caught.value) and "Fix:" in str(caught.value)


@pytest.mark.parametrize("operation", [
    "put", "pin", "access",
    "read",
])
def test_an_array_key_is_refused_by_name(make_cache, operation):
    cache = make_cache([vc.CacheTier("host", 4096, memory="host")])
    cache.put(5, b"five")
    key = np.array([5])
    with pytest.raises((TypeError, ValueError)) as caught:
        if operation == "put":
            cache.put(key, b"x")
        else:
            getattr(cache, operation)(key)
    assert "array([5])" in str(caught.value) and "Fix:" in str(caught.value)
    assert cache.read(5).tobytes() == b"five"


def batch_errors(make_cache) -> list[str]:
    """The messages of every batch call's bad-array errors, from the engine and the cache."""
    engine = vc.TieredCache([vc.CacheTier("host", 4096)])
    cache = make_cache([vc.CacheTier("host", 4096, memory="host"), vc.CacheTier("vram", 4096, memory="device")])
    calls = [lambda a: engine.access_many(a, 16), lambda a: engine.insert_many(a, 16),
             lambda a: engine.access_many(np.array([1], dtype=np.uint64), a),
             lambda a: engine.insert_many(np.array([1], dtype=np.uint64), a),
             lambda a: engine.get_tiers(a), cache.promote_many, cache.demote_many]
    messages = []
    for call in calls:
        for bad in (np.array([-1]), np.array([1.5]), np.array([[1]])):
            try:
                call(bad)
            except (TypeError, ValueError) as error:
                messages.append(str(error))
    return messages


def test_error_messages_have_no_doubled_plurals(make_cache):
    messages = batch_errors(make_cache)
    assert messages
    for message in messages:
        for typo in ("keyss", "sizess"):
            assert typo not in message, message
        assert "Fix:" in message


def test_the_package_sources_have_no_doubled_plurals():
    from pathlib import Path
    root = Path(vc.__file__).parent
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".pyx", ".pxi", ".pxd"):
            text = path.read_text().lower()
            for typo in ("keyss", "sizess"):
                assert typo not in text, f"{path.relative_to(root)} contains {typo!r}"


NEGATIVE_KEY_CALLS = {
    "put": lambda cache: cache.put(-1, b"x"),
    "read": lambda cache: cache.read(-1),
    "location": lambda cache: cache.location(-1),
    "access": lambda cache: cache.access(-1),
    "pin": lambda cache: cache.pin(-1),
    "remove": lambda cache: cache.remove(-1),
}


@pytest.mark.parametrize("operation", [
    name
    if name in ("read", "location") else name
    for name in sorted(NEGATIVE_KEY_CALLS)])
def test_the_negative_key_message_gives_working_advice(make_cache, operation):
    cache = make_cache([vc.CacheTier("host", 4096, memory="host")])
    with pytest.raises(ValueError) as caught:
        NEGATIVE_KEY_CALLS[operation](cache)
    message = str(caught.value)
    assert "-1" in message and "Fix:" in message
    # The advice must be an expression a user can run: key & (2**64 - 1) maps -1 to 2**64 - 1.
    fix = message.split("Fix:", 1)[1]
    assert "hash()" not in fix and "hash &" not in fix, message
    assert "& (2**64 - 1)" in fix, message


def test_reset_counters_after_close_raises(make_cache):
    cache = make_cache([vc.CacheTier("host", 4096, memory="host")])
    cache.close()
    with pytest.raises(vc.CacheClosedError):
        cache.counters()
    with pytest.raises(vc.CacheClosedError):
        cache.reset_counters()
