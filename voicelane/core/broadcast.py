"""Broadcast: one producer's stream of chunks, readable in full by any number of subscribers.

A subscriber that arrives late first gets every chunk produced so far, then follows
live; this is what lets a coalesced joiner receive the same text or audio from the first
byte instead of starting a second model call or synthesis. The producer never waits
for readers (chunks are kept in memory for the stream's lifetime, which the cache and
single-flight window bound), so a slow client cannot stall the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class BroadcastClosed(RuntimeError):
    """publish() after the stream was finished or failed."""


class Broadcast(Generic[T]):
    """An append-only stream: publish() chunks, then finish() or fail(exc) exactly once.

    The first finish()/fail() decides the outcome; later calls are ignored, so a producer
    may close its own stream and an owner may close it again after the producer returns.
    """

    def __init__(self) -> None:
        self._chunks: list[T] = []
        self._total_bytes = 0
        self._done = False
        self._exception: BaseException | None = None
        # Replaced on every change: waiters hold the old one, which is set to wake them.
        self._changed = asyncio.Event()

    # ----- producing --------------------------------------------------------------------------

    def publish(self, chunk: T) -> None:
        if self._done:
            raise BroadcastClosed("cannot publish to a finished broadcast")
        self._chunks.append(chunk)
        if isinstance(chunk, str):
            self._total_bytes += len(chunk.encode("utf-8"))
        elif isinstance(chunk, bytes | bytearray | memoryview):
            self._total_bytes += len(chunk)
        self._notify()

    def finish(self) -> None:
        if not self._done:
            self._done = True
            self._notify()

    def fail(self, exc: BaseException) -> None:
        if not self._done:
            self._done = True
            self._exception = exc
            self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # ----- observing --------------------------------------------------------------------------

    @property
    def chunks(self) -> list[T]:
        """A copy of the chunks produced so far."""
        return list(self._chunks)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def exception(self) -> BaseException | None:
        """The failure, once failed; None while running or after a clean finish."""
        return self._exception

    @property
    def total_bytes(self) -> int:
        """UTF-8 bytes of str chunks plus lengths of bytes-like chunks; other chunks count 0."""
        return self._total_bytes

    def subscribe(self) -> AsyncIterator[T]:
        """Every chunk from the first: replayed, then live; raises the failure at its point."""
        return _Subscription(self)

    async def wait_changed(self, seen: int) -> None:
        """Return once there are more than `seen` chunks or the stream is done."""
        while len(self._chunks) <= seen and not self._done:
            await self._changed.wait()


class _Subscription(AsyncIterator[T]):
    # A plain iterator rather than an async generator: it holds no resources, so a reader
    # cancelled mid-wait or abandoned part-way needs no finalization.

    def __init__(self, broadcast: Broadcast[T]) -> None:
        self._broadcast = broadcast
        self._next = 0

    def __aiter__(self) -> _Subscription[T]:
        return self

    async def __anext__(self) -> T:
        broadcast = self._broadcast
        await broadcast.wait_changed(self._next)
        if self._next < len(broadcast._chunks):
            chunk = broadcast._chunks[self._next]
            self._next += 1
            return chunk
        if broadcast.exception is not None:
            raise broadcast.exception
        raise StopAsyncIteration
