"""The bounded result cache: LRU within entry, byte and age bounds; pinned phrase-bank entries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from voicelane.core.cache import BoundedCache
from voicelane.sidecar.config import CacheConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(*, entries: int = 3, size: int = 100, ttl: float = 60.0) -> tuple[BoundedCache[str], FakeClock]:
    clock = FakeClock()
    return BoundedCache(max_entries=entries, max_bytes=size, ttl_s=ttl, clock=clock), clock


def test_a_put_value_is_served_and_counted_as_a_hit() -> None:
    cache, _ = make()
    assert cache.get("k") is None
    assert cache.put("k", "svar", 10)
    assert cache.get("k") == "svar"
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["entries"], stats["bytes"]) == (1, 1, 1, 10)


def test_the_least_recently_used_entry_goes_first() -> None:
    cache, _ = make(entries=2)
    cache.put("a", "A", 1)
    cache.put("b", "B", 1)
    cache.get("a")  # a is now more recent than b
    cache.put("c", "C", 1)
    assert cache.get("b") is None
    assert cache.get("a") == "A"
    assert cache.get("c") == "C"
    assert cache.stats()["evictions"] == 1


def test_byte_pressure_evicts_as_many_as_needed() -> None:
    cache, _ = make(entries=10, size=100)
    for key in "abcd":
        cache.put(key, key, 25)
    cache.put("big", "B", 60)
    assert [key for key in "abcd" if key in cache] == ["d"]
    assert cache.stats()["bytes"] == 85


def test_an_entry_larger_than_the_byte_bound_is_not_stored_and_evicts_nothing() -> None:
    cache, _ = make(size=100)
    cache.put("small", "s", 10)
    assert not cache.put("huge", "h", 101)
    assert cache.get("huge") is None
    assert cache.get("small") == "s"


def test_entries_expire_after_the_ttl() -> None:
    cache, clock = make(ttl=60)
    cache.put("k", "v", 1)
    clock.now = 59.9
    assert cache.get("k") == "v"
    clock.now = 60.0
    assert cache.get("k") is None
    stats = cache.stats()
    assert (stats["expirations"], stats["entries"], stats["bytes"]) == (1, 0, 0)


def test_replacing_a_value_updates_its_size() -> None:
    cache, _ = make()
    cache.put("k", "old", 50)
    cache.put("k", "new", 20)
    assert cache.get("k") == "new"
    assert cache.stats()["bytes"] == 20


def test_pinned_entries_survive_ordinary_traffic_and_do_not_expire() -> None:
    cache, clock = make(entries=3, ttl=60)
    cache.put("Tack!", "audio", 10, pinned=True)
    for n in range(20):
        cache.put(f"chat-{n}", "x", 10)
    clock.now = 10_000
    assert cache.get("Tack!") == "audio"
    assert len(cache) == 3


def test_ordinary_entries_cannot_push_out_a_full_pinned_set() -> None:
    cache, _ = make(entries=2)
    cache.put("p1", "1", 1, pinned=True)
    cache.put("p2", "2", 1, pinned=True)
    assert not cache.put("chat", "c", 1)
    assert cache.get("p1") == "1"
    assert cache.get("p2") == "2"


def test_pinning_is_sticky_until_unpinned() -> None:
    cache, clock = make(entries=2, ttl=60)
    cache.put("p", "bank", 1, pinned=True)
    cache.put("p", "ordinary result", 1)
    clock.now = 100
    assert cache.get("p") == "ordinary result"
    assert cache.unpin("p")
    clock.now = 160
    assert cache.get("p") is None


def test_pin_protects_an_existing_entry() -> None:
    cache, _ = make(entries=1)
    cache.put("k", "v", 1)
    assert cache.pin("k")
    assert not cache.pin("missing")
    assert not cache.put("other", "o", 1)
    assert cache.get("k") == "v"


def test_reconfigure_shrinks_ordinary_entries_first_then_pinned() -> None:
    cache, _ = make(entries=5, size=1000)
    cache.put("p", "bank", 10, pinned=True)
    for key in "abcd":
        cache.put(key, key, 10)
    cache.reconfigure(CacheConfig(max_entries=2, max_bytes=1000))
    assert "p" in cache
    assert "d" in cache
    assert len(cache) == 2
    cache.reconfigure(CacheConfig(max_entries=0))
    assert len(cache) == 0


def test_a_disabled_cache_stores_nothing() -> None:
    cache, _ = make()
    cache.put("k", "v", 1)
    cache.reconfigure(CacheConfig(enabled=False))
    assert len(cache) == 0
    assert not cache.put("k", "v", 1)
    assert not cache.put("p", "v", 1, pinned=True)


def test_from_config_uses_its_bounds() -> None:
    cache: BoundedCache[str] = BoundedCache.from_config(CacheConfig(max_entries=7, max_bytes=70, ttl_s=5))
    stats = cache.stats()
    assert (stats["max_entries"], stats["max_bytes"]) == (7, 70)


class CacheBounds(RuleBasedStateMachine):
    """Whatever happens, the bounds hold, and a fresh put is readable unless bounds pushed it out."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.cache: BoundedCache[int] = BoundedCache(max_entries=5, max_bytes=100, ttl_s=10, clock=self.clock)
        self.counter = 0

    @rule(key=st.integers(0, 12), size=st.integers(0, 120), pinned=st.booleans(), read_back=st.booleans())
    def put(self, key: int, size: int, pinned: bool, read_back: bool) -> None:
        self.counter += 1
        stored = self.cache.put(key, self.counter, size, pinned=pinned)
        if size > self.cache.max_bytes:
            assert not stored
        if stored and read_back:
            # Within the TTL (no time passed) and nothing else put since: it must be there.
            assert self.cache.get(key) == self.counter

    @rule(key=st.integers(0, 12))
    def get(self, key: int) -> None:
        self.cache.get(key)

    @rule(seconds=st.floats(0, 15))
    def tick(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(key=st.integers(0, 12))
    def unpin(self, key: int) -> None:
        self.cache.unpin(key)

    @rule(entries=st.integers(0, 6), size=st.integers(0, 120))
    def reconfigure(self, entries: int, size: int) -> None:
        self.cache.reconfigure(CacheConfig(max_entries=entries, max_bytes=size, ttl_s=10))

    @invariant()
    def bounds_hold(self) -> None:
        stats = self.cache.stats()
        assert stats["entries"] <= stats["max_entries"]
        assert stats["bytes"] <= stats["max_bytes"]
        assert stats["entries"] == len(self.cache)


TestCacheBounds = CacheBounds.TestCase


@given(
    operations=st.lists(
        st.tuples(st.sampled_from(["put", "get", "tick"]), st.integers(0, 3), st.integers(0, 25)), max_size=60
    )
)
def test_without_bound_pressure_a_get_returns_the_last_put_until_the_ttl(
    operations: list[tuple[str, int, int]],
) -> None:
    # Four keys of at most 25 bytes never exceed 4 entries or 100 bytes, so nothing is evicted.
    cache, clock = make(entries=4, size=100, ttl=30)
    last_put: dict[int, tuple[str, float]] = {}
    for index, (op, key, amount) in enumerate(operations):
        if op == "put":
            assert cache.put(key, str(index), amount)
            last_put[key] = (str(index), clock.now)
        elif op == "tick":
            clock.now += amount
        else:
            fresh = key in last_put and clock.now - last_put[key][1] < 30
            assert cache.get(key) == (last_put[key][0] if fresh else None)
    assert cache.stats()["evictions"] == 0


@given(
    operations=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 60), st.booleans()), max_size=60),
)
def test_under_pressure_a_hit_is_never_stale(operations: list[tuple[int, int, bool]]) -> None:
    cache, _ = make(entries=3, size=100, ttl=1000)
    last_put: dict[int, str] = {}
    for index, (key, size, read) in enumerate(operations):
        if read:
            value = cache.get(key)
            assert value is None or value == last_put[key]
        else:
            cache.put(key, str(index), size)
            last_put[key] = str(index)
