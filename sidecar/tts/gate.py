"""Turns at the speech engine: which piece of speech is synthesised next, and when none may start.

Speech is synthesised a piece at a time (`voicelane.sidecar.tts.pieces`), and every piece
asks for a turn. Turns go to the highest priority first (0 is highest, as the lane's
request classes define it) and first come first served within a priority; at most
`capacity` run at once (espeak-ng has one thread, so one). A long text asks again before
each of its pieces, so speech that is more urgent waits for at most the piece that is
running, and texts of one priority take turns piece by piece.

A turn also needs room in the audio budget: the bytes of synthesised audio that spoken
requests hold in memory (`hold`) must be under `budget_bytes` for a piece to start, and
under `budget_bytes - reserve_bytes` for a piece of priority 1 or lower, so that clients
of long texts that read slowly can never hold all of it and keep a chat silent. The pieces
already running may take the budget over by their own audio, no more.

`TurnQueue` is the policy, pure and synchronous; `SynthesisGate` puts it behind
`async with gate.turn(priority):` for the speech pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum


class TurnState(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"  # finished, or left the queue before it ran


@dataclass(eq=False)  # identity semantics: two turns are never the same piece
class Turn:
    priority: int
    seq: int
    state: TurnState = field(default=TurnState.WAITING)


class TurnQueue:
    """The turn policy as a plain state machine; every call returns at once."""

    def __init__(self, *, capacity: int, budget_bytes: int, reserve_bytes: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if not 0 <= reserve_bytes < budget_bytes:
            raise ValueError(f"need 0 <= reserve_bytes < budget_bytes, got {reserve_bytes} and {budget_bytes}")
        self.capacity = capacity
        self.budget_bytes = budget_bytes
        self.reserve_bytes = reserve_bytes
        self.held_bytes = 0
        self.running = 0
        self.started_total = 0
        self._seq = itertools.count()
        self._waiting: list[tuple[int, int, Turn]] = []  # a heap: (priority, seq, turn)
        self._waiting_count = 0

    def offer(self, priority: int) -> Turn:
        """A piece asks for a turn: running at once if it may start now, else waiting."""
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise ValueError(f"priority must be a non-negative int, got {priority!r}")
        turn = Turn(priority, next(self._seq))
        heapq.heappush(self._waiting, (priority, turn.seq, turn))
        self._waiting_count += 1
        # Only this turn can start here: whatever else lets a waiting turn start (a finish, audio
        # let go) dispatches at once, so nothing else that could run is still waiting.
        self._dispatch()
        return turn

    def finish(self, turn: Turn) -> list[Turn]:
        """The piece is done (or gave up waiting); returns the turns that start because of it. Idempotent."""
        if turn.state is TurnState.RUNNING:
            self.running -= 1
        elif turn.state is TurnState.WAITING:
            self._waiting_count -= 1  # its heap entry is skipped when it comes up
        turn.state = TurnState.DONE
        return self._dispatch()

    def hold(self, delta_bytes: int) -> list[Turn]:
        """Audio held in memory grew (positive) or was let go (negative); returns the turns that start."""
        self.held_bytes += delta_bytes
        if self.held_bytes < 0:
            raise ValueError(f"more audio let go than was held ({self.held_bytes} bytes)")
        return self._dispatch() if delta_bytes < 0 else []

    @property
    def waiting(self) -> int:
        return self._waiting_count

    def room_for(self, priority: int) -> bool:
        """Whether the audio budget lets a piece of `priority` start now."""
        limit = self.budget_bytes if priority == 0 else self.budget_bytes - self.reserve_bytes
        return self.held_bytes < limit

    def _dispatch(self) -> list[Turn]:
        # The heap's head is the one to start next; if it may not, nothing after it may either.
        started: list[Turn] = []
        while self._waiting and self.running < self.capacity:
            priority, _, turn = self._waiting[0]
            if turn.state is not TurnState.WAITING:
                heapq.heappop(self._waiting)
                continue
            if not self.room_for(priority):
                break
            heapq.heappop(self._waiting)
            turn.state = TurnState.RUNNING
            self._waiting_count -= 1
            self.running += 1
            self.started_total += 1
            started.append(turn)
        return started


class SynthesisGate:
    """The turn queue for the speech pipeline: `async with gate.turn(priority):` around one piece."""

    def __init__(self, *, capacity: int, budget_bytes: int, reserve_bytes: int = 0) -> None:
        self._queue = TurnQueue(capacity=capacity, budget_bytes=budget_bytes, reserve_bytes=reserve_bytes)
        self._wakeups: dict[Turn, asyncio.Future[None]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, priority: int) -> AsyncIterator[None]:
        """Hold a turn for the body; given back however the body ends, or when a waiter is cancelled."""
        turn = self._queue.offer(priority)
        try:
            if turn.state is TurnState.WAITING:
                wakeup = asyncio.get_running_loop().create_future()
                self._wakeups[turn] = wakeup
                await wakeup
            yield
        finally:
            self._wakeups.pop(turn, None)
            self._wake(self._queue.finish(turn))

    def hold(self, delta_bytes: int) -> None:
        """Account for audio taken into memory (positive) or let go (negative)."""
        self._wake(self._queue.hold(delta_bytes))

    def snapshot(self) -> dict[str, int]:
        queue = self._queue
        return {
            "running": queue.running,
            "waiting": queue.waiting,
            "held_bytes": queue.held_bytes,
            "budget_bytes": queue.budget_bytes,
            "reserve_bytes": queue.reserve_bytes,
            "started_total": queue.started_total,
        }

    def _wake(self, started: list[Turn]) -> None:
        for turn in started:
            wakeup = self._wakeups.pop(turn, None)
            if wakeup is not None and not wakeup.done():
                wakeup.set_result(None)
