"""Priority scheduling of model work: who runs now, who waits, who is refused.

Priorities are small ints, 0 highest. Each level runs at most
`max_running_per_priority` at a time; at most `max_waiting` wait across all levels,
and an arrival beyond that is refused at once (the caller answers 429). Waiting work
is dispatched highest priority first and first come first served within a level.
Levels in `idle_only` (email segments) are dispatched only while every higher level
has nothing running and nothing waiting; work already running is never preempted.

`SchedulerCore` is the policy, pure and synchronous; `PriorityScheduler` puts it
behind an `async with scheduler.slot(priority)` for the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from voicelane.sidecar.config import SchedulerConfig

DEFAULT_LEVELS = (0, 1, 2)
DEFAULT_IDLE_ONLY = frozenset({2})


class TicketState(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"  # left the queue before it ever ran


class QueueFull(Exception):
    """The waiting room is full; the arrival was refused and holds no place."""

    def __init__(self, priority: int, waiting: int, retry_after_s: int) -> None:
        self.priority = priority
        self.waiting = waiting
        self.retry_after_s = retry_after_s
        super().__init__(f"{waiting} requests are already waiting; priority {priority} refused")


@dataclass(eq=False)  # identity semantics: two tickets are never the same piece of work
class Ticket:
    """One piece of work's place in the scheduler."""

    priority: int
    seq: int
    enqueued_at: float
    state: TicketState = TicketState.WAITING
    started_at: float | None = None

    @property
    def waited_s(self) -> float:
        """How long it waited before it started running (0.0 if it started at once or never)."""
        return 0.0 if self.started_at is None else self.started_at - self.enqueued_at


class SchedulerCore:
    """The scheduling policy as a plain state machine; every call returns at once."""

    def __init__(
        self,
        *,
        max_running_per_priority: int = 1,
        max_waiting: int = 3,
        idle_only: Iterable[int] = DEFAULT_IDLE_ONLY,
        retry_after_s: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_only = frozenset(idle_only)
        self.max_running_per_priority = max_running_per_priority
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._seq = itertools.count()
        self._queues: dict[int, deque[Ticket]] = {}
        self._running: dict[int, int] = {}
        self.started_total = 0
        self.refused_total = 0
        self.cancelled_total = 0

    # ----- the policy ----------------------------------------------------------------------------

    def offer(self, priority: int) -> Ticket:
        """A new arrival: a running ticket if it can start now, else a waiting one; QueueFull if no room."""
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise ValueError(f"priority must be a non-negative int, got {priority!r}")
        now = self._clock()
        ticket = Ticket(priority=priority, seq=next(self._seq), enqueued_at=now)
        queue = self._queues.setdefault(priority, deque())
        self._running.setdefault(priority, 0)
        if not queue and self._can_start(priority):
            self._start(ticket, now)
        elif self.waiting_total >= self.max_waiting:
            self.refused_total += 1
            raise QueueFull(priority, self.waiting_total, self.retry_after_s)
        else:
            queue.append(ticket)
        return ticket

    def release(self, ticket: Ticket) -> list[Ticket]:
        """A running ticket finished; returns the tickets that started because of it."""
        if ticket.state is not TicketState.RUNNING:
            raise ValueError(f"only a running ticket can be released, this one is {ticket.state}")
        ticket.state = TicketState.DONE
        self._running[ticket.priority] -= 1
        return self._dispatch()

    def cancel(self, ticket: Ticket) -> list[Ticket]:
        """The ticket's client went away: a waiter leaves the queue, a runner is released.

        Idempotent; returns the tickets that started because of it.
        """
        if ticket.state is TicketState.RUNNING:
            return self.release(ticket)
        if ticket.state is not TicketState.WAITING:
            return []
        self._queues[ticket.priority].remove(ticket)
        ticket.state = TicketState.CANCELLED
        self.cancelled_total += 1
        # Its departure may leave a higher level idle, which lets idle-only work start.
        return self._dispatch()

    def reconfigure(
        self, *, max_running_per_priority: int, max_waiting: int, retry_after_s: int | None = None
    ) -> list[Ticket]:
        """Change the caps live; queued work stays queued. Returns tickets started by a raised cap."""
        self.max_running_per_priority = max_running_per_priority
        # A lowered waiting cap refuses new arrivals until the queue drains below it.
        self.max_waiting = max_waiting
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s
        return self._dispatch()

    def _can_start(self, priority: int) -> bool:
        if self._running.get(priority, 0) >= self.max_running_per_priority:
            return False
        if priority in self.idle_only:
            return not any(
                self._running.get(level, 0) or self._queues.get(level) for level in self.levels if level < priority
            )
        return True

    def _start(self, ticket: Ticket, now: float) -> None:
        ticket.state = TicketState.RUNNING
        ticket.started_at = now
        self._running[ticket.priority] = self._running.get(ticket.priority, 0) + 1
        self.started_total += 1

    def _dispatch(self) -> list[Ticket]:
        # Ascending order is enough: starting work at one level only affects levels below it.
        started: list[Ticket] = []
        now = self._clock()
        for level in self.levels:
            queue = self._queues.get(level)
            while queue and self._can_start(level):
                ticket = queue.popleft()
                self._start(ticket, now)
                started.append(ticket)
        return started

    # ----- observation ---------------------------------------------------------------------------

    @property
    def levels(self) -> list[int]:
        """Every priority seen so far, highest (0) first."""
        return sorted(self._queues.keys() | self._running.keys())

    def running(self, priority: int) -> int:
        return self._running.get(priority, 0)

    def waiting(self, priority: int) -> tuple[Ticket, ...]:
        """The tickets waiting at one level, in the order they will start."""
        return tuple(self._queues.get(priority, ()))

    @property
    def running_total(self) -> int:
        return sum(self._running.values())

    @property
    def waiting_total(self) -> int:
        return sum(len(queue) for queue in self._queues.values())


class PriorityScheduler:
    """The scheduler for the request path: `async with scheduler.slot(priority) as ticket:`."""

    def __init__(
        self,
        config: SchedulerConfig,
        *,
        idle_only: Iterable[int] = DEFAULT_IDLE_ONLY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._core = SchedulerCore(
            max_running_per_priority=config.max_running_per_priority,
            max_waiting=config.max_waiting,
            idle_only=idle_only,
            retry_after_s=config.retry_after_s,
            clock=clock,
        )
        self._wakeups: dict[Ticket, asyncio.Future[None]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[Ticket]:
        """Hold a running slot for the body; raises QueueFull at once when there is no room.

        The slot is given back however the body ends; a waiter that is cancelled
        (its client disconnected) leaves the queue and frees its place.
        """
        ticket = self._core.offer(priority)
        try:
            if ticket.state is TicketState.WAITING:
                wakeup = asyncio.get_running_loop().create_future()
                self._wakeups[ticket] = wakeup
                await wakeup
            yield ticket
        finally:
            self._wakeups.pop(ticket, None)
            # cancel() also releases a ticket that started just as its waiter was cancelled.
            self._wake(self._core.cancel(ticket))

    def reconfigure(self, config: SchedulerConfig) -> None:
        """Apply new caps live (config hot reload) without losing queued work."""
        self._wake(
            self._core.reconfigure(
                max_running_per_priority=config.max_running_per_priority,
                max_waiting=config.max_waiting,
                retry_after_s=config.retry_after_s,
            )
        )

    def _wake(self, started: list[Ticket]) -> None:
        for ticket in started:
            wakeup = self._wakeups.pop(ticket, None)
            if wakeup is not None and not wakeup.done():
                wakeup.set_result(None)

    def snapshot(self) -> dict[str, Any]:
        """Running and waiting counts per priority and in total, caps and lifetime counters."""
        core = self._core
        levels = sorted(set(DEFAULT_LEVELS) | set(core.levels))
        now = self._clock()
        return {
            "running": {level: core.running(level) for level in levels},
            "waiting": {level: len(core.waiting(level)) for level in levels},
            "running_total": core.running_total,
            "waiting_total": core.waiting_total,
            "oldest_wait_s": {
                level: round(now - queue[0].enqueued_at, 3) for level in levels if (queue := core.waiting(level))
            },
            "max_running_per_priority": core.max_running_per_priority,
            "max_waiting": core.max_waiting,
            "idle_only": sorted(core.idle_only),
            "started_total": core.started_total,
            "refused_total": core.refused_total,
            "cancelled_total": core.cancelled_total,
        }
