"""Single-flight: concurrent requests for the same key share one piece of work and its stream.

The first caller for a key (the leader) starts the producer as a task; later callers
(joiners) get the same flight while it runs and, after a success, for `window_s` more.
Every caller reads the flight's Broadcast from the first chunk, so a joiner sees exactly
what the leader sees. Failures reach everyone who joined while the work ran, but a failed
flight is forgotten at once so the next caller starts afresh.

The work belongs to its readers, not to its leader: it keeps running while any caller
still holds the flight and is cancelled when the last one lets go (say, every client
disconnected). Each flight carries a FlightState its producer records its progress in, and
every reader sees. With `coalescing` off, every join starts a flight of its own that nobody
else joins: the one switch for whether identical work is shared. Hand-written because no maintained asyncio library coalesces with replay
of a partial stream and reader-counted cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from voicelane.core.broadcast import Broadcast
from voicelane.core.flight_state import FlightState

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


class FlightCancelled(Exception):
    """The shared work was cancelled (every reader left, or the lane shut down)."""


class _Shared(Generic[K, T]):
    """The state one flight's leader and joiners share."""

    def __init__(self, key: K, owner: SingleFlight[K, T], state: FlightState) -> None:
        self.key = key
        self.owner = owner
        self.state = state
        self.broadcast: Broadcast[T] = Broadcast()
        self.task: asyncio.Task[None] | None = None
        self.holders = 0
        self.settled = False
        self.completed_at: float | None = None
        self.result: Any = None
        self.exception: BaseException | None = None
        self.outcome = asyncio.Event()

    async def run(self, producer: Callable[[Broadcast[T]], Awaitable[Any]]) -> None:
        try:
            result = await producer(self.broadcast)
        except asyncio.CancelledError:
            self.settle_failure(FlightCancelled(f"shared work for {self.key!r} was cancelled"))
            raise
        except BaseException as exc:
            self.settle_failure(exc)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: readers are told, but the process still stops
            return
        self.settle_success(result)

    # The first settle decides: a flight cancelled by its last reader is settled at once,
    # even if its task never got to run (and so never reaches its own except clause).

    def settle_success(self, result: Any) -> None:
        if self.settled:
            return
        self.settled = True
        self.result = result
        self.completed_at = self.owner.clock()
        self.owner._completed(self)
        # The result is set before the stream ends, so a reader that drained the stream
        # finds result() ready.
        self.outcome.set()
        self.broadcast.finish()

    def settle_failure(self, exc: BaseException) -> None:
        if self.settled:
            return
        self.settled = True
        self.exception = exc
        self.owner._forget(self)
        self.outcome.set()
        self.broadcast.fail(exc)

    def acquire(self) -> None:
        self.holders += 1

    def release(self) -> None:
        self.holders -= 1
        if self.holders == 0 and not self.settled and self.task is not None:
            # Nobody is reading any more: stop the work and let the next caller start afresh.
            self.owner.cancellations += 1
            self.settle_failure(FlightCancelled(f"every reader of {self.key!r} left"))
            self.task.cancel()


class Flight(Generic[T, R]):
    """One caller's hold on a shared flight.

    The hold starts at join() and ends when the caller's first subscription closes, or at
    release() for a caller that decides not to read. A caller that drops a Flight without
    either keeps the work alive until it completes.
    """

    def __init__(self, shared: _Shared[Any, T], *, is_joiner: bool) -> None:
        self._shared = shared
        self._holding = True
        self.shared = is_joiner
        shared.acquire()

    @property
    def key(self) -> Hashable:
        return self._shared.key

    @property
    def broadcast(self) -> Broadcast[T]:
        return self._shared.broadcast

    @property
    def state(self) -> FlightState:
        """What has happened to the shared work so far (the same for every reader)."""
        return self._shared.state

    @property
    def done(self) -> bool:
        return self._shared.settled

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[T]]:
        """`async with flight.subscribe() as stream:` every chunk from the first, then live.

        Leaving the block, normally or by cancellation, lets go of this reader's hold.
        """
        if self._holding:
            self._holding = False
        else:
            self._shared.acquire()
        try:
            yield self._shared.broadcast.subscribe()
        finally:
            self._shared.release()

    def release(self) -> None:
        """Let go without reading (idempotent); the last hold to go cancels unfinished work."""
        if self._holding:
            self._holding = False
            self._shared.release()

    async def result(self) -> R:
        """The producer's return value, or its exception (FlightCancelled if it was cancelled)."""
        shared = self._shared
        await shared.outcome.wait()
        if shared.exception is not None:
            raise shared.exception
        result: R = shared.result
        return result


class SingleFlight(Generic[K, T]):
    """Coalesces work by key; see the module docstring for the sharing rules."""

    def __init__(
        self, *, window_s: float = 2.0, coalescing: bool = True, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # Both may be changed at run time (configuration reload).
        self.window_s = window_s
        self.coalescing = coalescing
        self.clock = clock
        self._flights: dict[K, _Shared[K, T]] = {}
        # Successful flights in completion order, so expired ones are dropped from the front.
        self._recent: deque[_Shared[K, T]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.leaders = 0
        self.joiners = 0
        self.cancellations = 0

    def join(
        self, key: K, producer: Callable[[Broadcast[T]], Awaitable[R]], *, state: FlightState | None = None
    ) -> Flight[T, R]:
        """Join the flight for `key`, starting `producer` if there is none to share (or coalescing is off).

        A new flight carries `state` (the one `producer` records in), or a fresh one; a joiner
        sees the running flight's. Synchronous on purpose: look-up and start happen without an
        await in between, so two callers can never both become leaders.
        """
        shared = self._current(key) if self.coalescing else None
        if shared is not None:
            self.joiners += 1
            joined: Flight[T, R] = Flight(shared, is_joiner=True)
            return joined
        shared = _Shared(key, self, state if state is not None else FlightState())
        if self.coalescing:
            self._flights[key] = shared
        self.leaders += 1
        flight: Flight[T, R] = Flight(shared, is_joiner=False)
        task = asyncio.create_task(shared.run(producer), name=f"singleflight:{str(key)[:16]}")
        shared.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flight

    def get(self, key: K) -> Broadcast[T] | None:
        """The stream of the flight a join() for `key` would share now, without joining it."""
        shared = self._current(key)
        return None if shared is None else shared.broadcast

    def __contains__(self, key: object) -> bool:
        """Whether a join() for `key` would share a flight now."""
        self._expire()
        return key in self._flights

    def stats(self) -> dict[str, int]:
        self._expire()
        return {
            "leaders": self.leaders,
            "joiners": self.joiners,
            "cancellations": self.cancellations,
            "running": len(self._tasks),
            "recent": len(self._recent),
        }

    async def close(self) -> None:
        """Cancel all running work and wait for it to end (shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._flights.clear()
        self._recent.clear()

    # ----- bookkeeping ------------------------------------------------------------------------

    def _current(self, key: K) -> _Shared[K, T] | None:
        self._expire()
        return self._flights.get(key)

    def _expire(self) -> None:
        now = self.clock()
        while self._recent:
            oldest = self._recent[0]
            assert oldest.completed_at is not None
            if now - oldest.completed_at < self.window_s:
                break
            self._recent.popleft()
            self._forget(oldest)

    def _completed(self, shared: _Shared[K, T]) -> None:
        if self.window_s <= 0 or not self.coalescing:
            self._forget(shared)
        else:
            self._recent.append(shared)

    def _forget(self, shared: _Shared[K, T]) -> None:
        # Only if it is still the current flight: a newer one may hold the key by now.
        if self._flights.get(shared.key) is shared:
            del self._flights[shared.key]
