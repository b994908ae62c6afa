"""A bounded LRU cache of finished results (text and audio), with TTL and pinned entries.

Bounded three ways: entry count, total bytes (each value's size is given by the caller,
since only it knows what a TL;DR or a WAV costs), and age. Pinned entries hold the phrase
bank: ordinary traffic never evicts them and they do not expire; only unpin(), discard(),
clear() or a reconfiguration to bounds too small for them removes them. They do count
toward the bounds, so the bounds always hold.

Hand-written rather than cachetools: that bounds either count or size (not both) and has
no notion of pinning; two dicts give LRU order and pinning in a few lines.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

V = TypeVar("V")


class CacheSettings(Protocol):
    """What the cache reads from a configuration (the sidecar's CacheConfig)."""

    @property
    def enabled(self) -> bool: ...
    @property
    def max_entries(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...
    @property
    def ttl_s(self) -> float: ...


@dataclass
class _Entry(Generic[V]):
    value: V
    size_bytes: int
    stored_at: float


class BoundedCache(Generic[V]):
    """LRU by use: `get` refreshes recency, `put` replaces. A bound of 0 disables the cache."""

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._lru: OrderedDict[Hashable, _Entry[V]] = OrderedDict()  # ordinary, least recently used first
        self._pinned: dict[Hashable, _Entry[V]] = {}  # phrase bank, oldest pin first
        self._bytes = 0
        self._pinned_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0

    @classmethod
    def from_config(cls, config: CacheSettings, *, clock: Callable[[], float] = time.monotonic) -> BoundedCache[V]:
        cache: BoundedCache[V] = cls(max_entries=0, max_bytes=0, ttl_s=config.ttl_s, clock=clock)
        cache.reconfigure(config)
        return cache

    # ----- reading and writing ----------------------------------------------------------------

    def get(self, key: Hashable) -> V | None:
        entry = self._pinned.get(key)
        if entry is None:
            entry = self._lru.get(key)
            if entry is not None and self._expired(entry):
                self._pop(key)
                self.expirations += 1
                entry = None
            elif entry is not None:
                self._lru.move_to_end(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return entry.value

    def put(self, key: Hashable, value: V, size_bytes: int, *, pinned: bool = False) -> bool:
        """Store `value`; returns whether it was stored.

        Not stored when it cannot fit even after evicting every unpinned entry (a value
        larger than max_bytes never fits); an older value under the same key is dropped
        then too. Pinning is sticky: re-putting a pinned key keeps it pinned, so a late
        ordinary result cannot demote a phrase-bank entry.
        """
        if size_bytes < 0:
            raise ValueError("size_bytes must not be negative")
        pinned = pinned or key in self._pinned
        if key in self._pinned or key in self._lru:
            self._pop(key)
        if not self._make_room(size_bytes):
            return False
        entry = _Entry(value, size_bytes, self._clock())
        if pinned:
            self._pinned[key] = entry
            self._pinned_bytes += size_bytes
        else:
            self._lru[key] = entry
        self._bytes += size_bytes
        return True

    def pin(self, key: Hashable) -> bool:
        """Protect a stored entry from eviction and expiry; False if `key` is not stored."""
        entry = self._lru.pop(key, None)
        if entry is not None:
            self._pinned[key] = entry
            self._pinned_bytes += entry.size_bytes
        return key in self._pinned

    def unpin(self, key: Hashable) -> bool:
        """Make a pinned entry ordinary again, its TTL counting from now; False if not stored."""
        entry = self._pinned.pop(key, None)
        if entry is not None:
            self._pinned_bytes -= entry.size_bytes
            entry.stored_at = self._clock()
            self._lru[key] = entry
        return key in self._lru

    def discard(self, key: Hashable) -> None:
        if key in self._pinned or key in self._lru:
            self._pop(key)

    def clear(self) -> None:
        self._lru.clear()
        self._pinned.clear()
        self._bytes = 0
        self._pinned_bytes = 0

    def __len__(self) -> int:
        return len(self._lru) + len(self._pinned)

    def __contains__(self, key: Hashable) -> bool:
        """Whether `key` is stored and fresh; counts neither a hit nor a miss."""
        if key in self._pinned:
            return True
        entry = self._lru.get(key)
        return entry is not None and not self._expired(entry)

    # ----- configuration and observation ------------------------------------------------------

    def reconfigure(self, config: CacheSettings) -> None:
        """Adopt new bounds, evicting to meet them: ordinary entries by LRU, then pinned, oldest first."""
        self.max_entries = config.max_entries if config.enabled else 0
        self.max_bytes = config.max_bytes if config.enabled else 0
        self.ttl_s = config.ttl_s
        for store, pinned in ((self._lru, False), (self._pinned, True)):
            while store and not self._fits(0, 0):
                key = next(iter(store))
                self._count_removal(store[key], pinned=pinned)
                self._pop(key)

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self),
            "bytes": self._bytes,
            "pinned": len(self._pinned),
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "expirations": self.expirations,
        }

    # ----- bookkeeping ------------------------------------------------------------------------

    def _expired(self, entry: _Entry[V]) -> bool:
        return self._clock() - entry.stored_at >= self.ttl_s

    def _pop(self, key: Hashable) -> None:
        entry = self._pinned.pop(key, None)
        if entry is not None:
            self._pinned_bytes -= entry.size_bytes
        else:
            entry = self._lru.pop(key)
        self._bytes -= entry.size_bytes

    def _count_removal(self, entry: _Entry[V], *, pinned: bool) -> None:
        # An ordinary entry past its TTL would have gone anyway: that is an expiry, not pressure.
        if pinned or not self._expired(entry):
            self.evictions += 1
        else:
            self.expirations += 1

    def _fits(self, extra_entries: int, extra_bytes: int) -> bool:
        return len(self) + extra_entries <= self.max_entries and self._bytes + extra_bytes <= self.max_bytes

    def _make_room(self, size_bytes: int) -> bool:
        """Evict ordinary entries, least recently used first, until one more of `size_bytes` fits."""
        if len(self._pinned) + 1 > self.max_entries or self._pinned_bytes + size_bytes > self.max_bytes:
            return False  # would not fit even with every ordinary entry gone: evict nothing
        while not self._fits(1, size_bytes):
            _, entry = self._lru.popitem(last=False)
            self._bytes -= entry.size_bytes
            self._count_removal(entry, pinned=False)
        return True
