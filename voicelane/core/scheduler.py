"""Priority scheduling of model work: who runs now, on which tier's slot, who waits, who is refused.

Priorities are small ints, 0 highest. A request is latency-critical until its first
audio is under way (the lane then `settle`s its ticket): each level has at most
`max_running_per_priority` of those at a time, and a settled request finishes its
generation without holding its level's place, so the next chat can start. What a
model server can run at once is bounded separately: a tier with a known number of
parallel slots is never sent more calls than that, whatever their priority or stage,
and priority-0 work whose own tier is full may take a free slot of another tier.
`reserved_slots` of every tier with more slots than that are kept for priority 0, so a chat
finds a free slot however much lower-priority work runs (the gate in front of a model
server uses this; work is never preempted, so with one slot a chat can only wait).
Tiers that share CPUs (`exclusive_tiers`) run calls on one tier at a time, so a chat
joins the busy tier's free slot instead of starting a second server beside it.
At most `max_waiting` wait across all levels, and at most `max_waiting_per_priority[p]`
at level p where that is set; an arrival beyond either is refused at once (the caller
answers 429). Waiting work is dispatched highest priority first and
first come first served within a level. Levels in `idle_only` (email segments) are
dispatched only while every higher level has nothing running (settled or not) and
nothing waiting, and has had nothing for `idle_only_quiet_s`; work already running is
never preempted. Work that holds no model slot (a reply being spoken) counts at its level
while it is `occupied`. `idle_above` is the one test of "nothing above is busy", and
`background_idle` asks it for the idle-only levels: the speech of an email's segments,
which is no model work, waits on it as the segments' model work does.

`SchedulerCore` is the policy, pure and synchronous; `PriorityScheduler` puts it
behind an `async with scheduler.slot(priority, tier)` for the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

DEFAULT_LEVELS = (0, 1, 2)
DEFAULT_IDLE_ONLY = frozenset({2})
# Levels whose work may run on another tier's free slot when its own tier has none.
DEFAULT_BORROWING = frozenset({0})


class SchedulerSettings(Protocol):
    """What the scheduler reads from a configuration (the sidecar's SchedulerConfig, or the gate's own)."""

    @property
    def max_running_per_priority(self) -> int: ...
    @property
    def max_waiting(self) -> int: ...
    @property
    def retry_after_s(self) -> int: ...
    @property
    def tiers_share_cpus(self) -> bool: ...
    @property
    def segments_after_quiet_s(self) -> float: ...


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
    tier: str | None = None  # the tier it was routed to; None: no tier's slots apply
    may_borrow: bool = True
    state: TicketState = TicketState.WAITING
    started_at: float | None = None
    runs_on: str | None = None  # the tier whose slot it holds: its own, or one it borrowed
    settled: bool = False  # past its first audio: no longer holds its level's place

    @property
    def waited_s(self) -> float:
        """How long it waited before it started running (0.0 if it started at once or never)."""
        return 0.0 if self.started_at is None else self.started_at - self.enqueued_at

    @property
    def borrowed(self) -> bool:
        return self.runs_on != self.tier


class SchedulerCore:
    """The scheduling policy as a plain state machine; every call returns at once."""

    def __init__(
        self,
        *,
        max_running_per_priority: int = 1,
        max_waiting: int = 3,
        idle_only: Iterable[int] = DEFAULT_IDLE_ONLY,
        tier_slots: Mapping[str, int] | None = None,
        exclusive_tiers: bool = False,
        idle_only_quiet_s: float = 0.0,
        borrowing: Iterable[int] = DEFAULT_BORROWING,
        retry_after_s: int = 1,
        max_waiting_per_priority: Mapping[int, int] | None = None,
        reserved_slots: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if reserved_slots < 0:
            raise ValueError("reserved_slots must not be negative")
        self.reserved_slots = reserved_slots
        self.idle_only = frozenset(idle_only)
        self.max_waiting_per_priority = dict(max_waiting_per_priority or {})
        self.idle_only_quiet_s = idle_only_quiet_s
        self.exclusive_tiers = exclusive_tiers
        self.borrowing = frozenset(borrowing)
        self.max_running_per_priority = max_running_per_priority
        self.max_waiting = max_waiting
        self.tier_slots = self._checked_slots(tier_slots)
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._seq = itertools.count()
        self._queues: dict[int, deque[Ticket]] = {}
        self._running: dict[int, int] = {}  # every running ticket, settled or not
        self._starting: dict[int, int] = {}  # running tickets not yet settled
        self._on_tier: dict[str, int] = {}
        self._last_busy_at: dict[int, float] = {}  # when each level last had work running or waiting
        self._occupied: dict[int, int] = {}  # work under way that holds no model slot (speech), by level
        self.started_total = 0
        self.borrowed_total = 0
        self.refused_total = 0
        self.cancelled_total = 0

    @staticmethod
    def _checked_slots(tier_slots: Mapping[str, int] | None) -> dict[str, int]:
        slots = dict(tier_slots or {})
        for tier, count in slots.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"tier {tier!r} needs at least one slot, got {count!r}")
        return slots

    # ----- the policy ----------------------------------------------------------------------------

    def offer(self, priority: int, tier: str | None = None, *, may_borrow: bool = True) -> Ticket:
        """A new arrival: a running ticket if it can start now, else a waiting one; QueueFull if no room.

        `may_borrow` False keeps the work on its own tier even at a borrowing level.
        """
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise ValueError(f"priority must be a non-negative int, got {priority!r}")
        now = self._clock()
        ticket = Ticket(priority=priority, seq=next(self._seq), enqueued_at=now, tier=tier, may_borrow=may_borrow)
        self._last_busy_at[priority] = now
        queue = self._queues.setdefault(priority, deque())
        self._running.setdefault(priority, 0)
        if not queue and self._try_start(ticket, now):
            return ticket
        level_cap = self.max_waiting_per_priority.get(priority)
        if self.waiting_total >= self.max_waiting or (level_cap is not None and len(queue) >= level_cap):
            self.refused_total += 1
            raise QueueFull(priority, self.waiting_total, self.retry_after_s)
        queue.append(ticket)
        return ticket

    def settle(self, ticket: Ticket) -> list[Ticket]:
        """A running ticket is past its first audio: its level's place goes to the next in line.

        It keeps its tier slot until it is released. Idempotent; returns the tickets that
        started because of it.
        """
        if ticket.state is not TicketState.RUNNING or ticket.settled:
            return []
        ticket.settled = True
        self._starting[ticket.priority] -= 1
        return self._dispatch()

    def release(self, ticket: Ticket) -> list[Ticket]:
        """A running ticket finished; returns the tickets that started because of it."""
        if ticket.state is not TicketState.RUNNING:
            raise ValueError(f"only a running ticket can be released, this one is {ticket.state}")
        ticket.state = TicketState.DONE
        self._last_busy_at[ticket.priority] = self._clock()
        self._running[ticket.priority] -= 1
        if not ticket.settled:
            self._starting[ticket.priority] -= 1
        if ticket.runs_on is not None:
            self._on_tier[ticket.runs_on] -= 1
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
        self._last_busy_at[ticket.priority] = self._clock()
        ticket.state = TicketState.CANCELLED
        self.cancelled_total += 1
        # Its departure may leave a higher level idle, which lets idle-only work start.
        return self._dispatch()

    def occupy(self, priority: int) -> None:
        """Work of `priority` that holds no model slot (a reply being spoken) is under way.

        Until it is `vacate`d, its level is busy as if a model call of its own ran there.
        """
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise ValueError(f"priority must be a non-negative int, got {priority!r}")
        self._occupied[priority] = self._occupied.get(priority, 0) + 1
        self._last_busy_at[priority] = self._clock()

    def vacate(self, priority: int) -> list[Ticket]:
        """Work `occupy` announced has ended; returns the tickets that started because of it."""
        if not self._occupied.get(priority):
            raise ValueError(f"nothing occupies priority {priority}")
        self._occupied[priority] -= 1
        self._last_busy_at[priority] = self._clock()
        return self._dispatch()

    def reconfigure(
        self,
        *,
        max_running_per_priority: int,
        max_waiting: int,
        retry_after_s: int | None = None,
        tier_slots: Mapping[str, int] | None = None,
        exclusive_tiers: bool | None = None,
        idle_only_quiet_s: float | None = None,
    ) -> list[Ticket]:
        """Change the caps live; queued work stays queued. Returns tickets started by a raised cap.

        Running work is never stopped: a tier whose slots were lowered below what runs on it
        takes nothing new until enough of it has finished.
        """
        self.max_running_per_priority = max_running_per_priority
        # A lowered waiting cap refuses new arrivals until the queue drains below it.
        self.max_waiting = max_waiting
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s
        if tier_slots is not None:
            self.tier_slots = self._checked_slots(tier_slots)
        if exclusive_tiers is not None:
            self.exclusive_tiers = exclusive_tiers
        if idle_only_quiet_s is not None:
            self.idle_only_quiet_s = idle_only_quiet_s
        return self._dispatch()

    def poll(self) -> list[Ticket]:
        """Start what time alone has made startable (a quiet period that ended); returns those tickets."""
        return self._dispatch()

    def quiet_remaining_s(self) -> float | None:
        """How long waiting idle-only work is still held back by the quiet period alone, if it is."""
        now = self._clock()
        remaining = [
            left
            for level in self.levels
            if level in self.idle_only and self._queues.get(level) and self.idle_above(level)
            if (left := self._quiet_left(level, now)) > 0
        ]
        return min(remaining, default=None)

    def idle_above(self, priority: int) -> bool:
        """True when no level above `priority` has work running, waiting or occupying it (the quiet
        period aside): the test idle-only levels are held to."""
        return not any(
            self._running.get(level, 0) or self._queues.get(level) or self._occupied.get(level, 0)
            for level in self._queues.keys() | self._running.keys() | self._occupied.keys()
            if level < priority
        )

    @property
    def background_idle(self) -> bool:
        """Whether the levels above the idle-only ones are idle, so background work may go now."""
        return not self.idle_only or self.idle_above(min(self.idle_only))

    def _quiet_left(self, priority: int, now: float) -> float:
        higher = [self._last_busy_at[level] for level in self._last_busy_at if level < priority]
        return self.idle_only_quiet_s - (now - max(higher)) if higher else 0.0

    def _tier_open(self, tier: str, priority: int = 0) -> bool:
        """A call may start on the tier now: a slot is free, and no other tier runs if they share CPUs."""
        if tier in self.tier_slots:
            slots = self.tier_slots[tier]
            # Lower priorities never lose their last slot to the reserve.
            if priority > 0:
                slots -= min(self.reserved_slots, slots - 1)
            if self._on_tier.get(tier, 0) >= slots:
                return False
        return not (self.exclusive_tiers and any(n for other, n in self._on_tier.items() if other != tier))

    def _free_tier(self, ticket: Ticket) -> tuple[bool, str | None]:
        """Whether a tier slot is free for the ticket, and which tier: its own first."""
        own = ticket.tier
        if own is None or self._tier_open(own, ticket.priority):
            return True, own
        if ticket.may_borrow and ticket.priority in self.borrowing:
            for other in sorted(self.tier_slots):
                if other != own and self._tier_open(other, ticket.priority):
                    return True, other
        return False, None

    def _level_allows(self, priority: int) -> bool:
        if self._starting.get(priority, 0) >= self.max_running_per_priority:
            return False
        if priority in self.idle_only:
            return self.idle_above(priority) and self._quiet_left(priority, self._clock()) <= 0
        return True

    def _try_start(self, ticket: Ticket, now: float) -> bool:
        if not self._level_allows(ticket.priority):
            return False
        free, tier = self._free_tier(ticket)
        if not free:
            return False
        ticket.state = TicketState.RUNNING
        ticket.started_at = now
        ticket.runs_on = tier
        self._running[ticket.priority] = self._running.get(ticket.priority, 0) + 1
        self._starting[ticket.priority] = self._starting.get(ticket.priority, 0) + 1
        if tier is not None:
            self._on_tier[tier] = self._on_tier.get(tier, 0) + 1
        self.started_total += 1
        self.borrowed_total += ticket.borrowed
        return True

    def _dispatch(self) -> list[Ticket]:
        # Ascending order: starting work at one level only affects the levels below it. Within a
        # level the head waits for its turn, so nothing overtakes it there.
        started: list[Ticket] = []
        now = self._clock()
        for level in self.levels:
            queue = self._queues.get(level)
            while queue and self._try_start(queue[0], now):
                started.append(queue.popleft())
        return started

    # ----- observation ---------------------------------------------------------------------------

    @property
    def levels(self) -> list[int]:
        """Every priority seen so far, highest (0) first."""
        return sorted(self._queues.keys() | self._running.keys())

    def running(self, priority: int) -> int:
        """Running at one level, settled or not."""
        return self._running.get(priority, 0)

    def starting(self, priority: int) -> int:
        """Running at one level and not yet settled: what counts against the level's cap."""
        return self._starting.get(priority, 0)

    def on_tier(self, tier: str) -> int:
        return self._on_tier.get(tier, 0)

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
    """The scheduler for the request path: `async with scheduler.slot(priority, tier) as ticket:`."""

    def __init__(
        self,
        config: SchedulerSettings,
        *,
        tier_slots: Mapping[str, int] | None = None,
        idle_only: Iterable[int] = DEFAULT_IDLE_ONLY,
        max_waiting_per_priority: Mapping[int, int] | None = None,
        reserved_slots: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._core = SchedulerCore(
            max_waiting_per_priority=max_waiting_per_priority,
            reserved_slots=reserved_slots,
            max_running_per_priority=config.max_running_per_priority,
            max_waiting=config.max_waiting,
            idle_only=idle_only,
            tier_slots=tier_slots,
            exclusive_tiers=config.tiers_share_cpus,
            idle_only_quiet_s=config.segments_after_quiet_s,
            retry_after_s=config.retry_after_s,
            clock=clock,
        )
        self._wakeups: dict[Ticket, asyncio.Future[None]] = {}
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._quiet_timer: asyncio.TimerHandle | None = None

    @contextlib.asynccontextmanager
    async def slot(self, priority: int, tier: str | None = None, *, may_borrow: bool = True) -> AsyncIterator[Ticket]:
        """Hold a running slot for the body; raises QueueFull at once when there is no room.

        The ticket's `runs_on` names the tier whose slot it holds. The slot is given back
        however the body ends; a waiter that is cancelled (its client disconnected) leaves
        the queue and frees its place.
        """
        ticket = self._core.offer(priority, tier, may_borrow=may_borrow)
        self._arm_quiet_timer()
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

    def settle(self, ticket: Ticket) -> None:
        """The ticket's first audio is under way: let the next of its level start."""
        self._wake(self._core.settle(ticket))

    @contextlib.contextmanager
    def occupied(self, priority: int) -> Iterator[None]:
        """Count the body as work of `priority` that holds no model slot (a reply being spoken)."""
        self._core.occupy(priority)
        try:
            yield
        finally:
            self._wake(self._core.vacate(priority))

    async def until_background_idle(self) -> None:
        """Return once the levels above the idle-only ones have nothing running, waiting or occupying them."""
        while not self._core.background_idle:
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._idle_waiters.remove(waiter)

    def reconfigure(self, config: SchedulerSettings, *, tier_slots: Mapping[str, int] | None = None) -> None:
        """Apply new caps live (config hot reload) without losing queued work."""
        self._wake(
            self._core.reconfigure(
                max_running_per_priority=config.max_running_per_priority,
                max_waiting=config.max_waiting,
                retry_after_s=config.retry_after_s,
                tier_slots=tier_slots if tier_slots is not None else {},
                exclusive_tiers=config.tiers_share_cpus,
                idle_only_quiet_s=config.segments_after_quiet_s,
            )
        )

    def _wake(self, started: list[Ticket]) -> None:
        for ticket in started:
            wakeup = self._wakeups.pop(ticket, None)
            if wakeup is not None and not wakeup.done():
                wakeup.set_result(None)
        if self._idle_waiters and self._core.background_idle:
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()
        self._arm_quiet_timer()

    def _arm_quiet_timer(self) -> None:
        """Nothing else happens when a quiet period ends, so a timer looks again at that moment."""
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None
        remaining = self._core.quiet_remaining_s()
        if remaining is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # reconfigured outside the loop: the next arrival or release looks again
            return
        self._quiet_timer = loop.call_later(remaining, lambda: self._wake(self._core.poll()))

    def snapshot(self) -> dict[str, Any]:
        """Running (and of those, not yet settled) and waiting counts, tier slots in use, caps, counters."""
        core = self._core
        levels = sorted(set(DEFAULT_LEVELS) | set(core.levels))
        now = self._clock()
        return {
            "running": {level: core.running(level) for level in levels},
            "starting": {level: core.starting(level) for level in levels},
            "waiting": {level: len(core.waiting(level)) for level in levels},
            "running_total": core.running_total,
            "waiting_total": core.waiting_total,
            "oldest_wait_s": {
                level: round(now - queue[0].enqueued_at, 3) for level in levels if (queue := core.waiting(level))
            },
            "tiers": {tier: {"running": core.on_tier(tier), "slots": slots} for tier, slots in core.tier_slots.items()},
            "tiers_share_cpus": core.exclusive_tiers,
            "max_running_per_priority": core.max_running_per_priority,
            "max_waiting": core.max_waiting,
            "idle_only": sorted(core.idle_only),
            "started_total": core.started_total,
            "borrowed_total": core.borrowed_total,
            "refused_total": core.refused_total,
            "cancelled_total": core.cancelled_total,
        }
