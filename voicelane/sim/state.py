"""The running simulator's state: settings, model residency, slots, faults and call counts.

Handlers of every API share one `Simulator`; it owns the asyncio side of the slot
book (waiting for a slot, giving it back) and the statistics `/sim/stats` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from voicelane.sim.catalog import DEFAULT_MODELS, ModelCatalog, ModelInfo
from voicelane.sim.faults import FaultBook
from voicelane.sim.latency import Admission, LatencyProfile, ModelResidency, SlotBook
from voicelane.sim.replies import DEFAULT_FIXED_REPLY, ReplyMode

ProtocolChoice = Literal["ollama", "openai", "both"]


@dataclass(frozen=True)
class SimSettings:
    """Everything `voicelane sim` is started with; the latency part can change live."""

    host: str = "127.0.0.1"
    port: int = 11434
    protocol: ProtocolChoice = "both"
    ttft_ms: float = 150.0
    tokens_per_s: float = 40.0
    load_ms: float = 0.0
    parallel: int = 1
    max_queue: int = 512
    models: tuple[str, ...] = DEFAULT_MODELS
    # Strict: only `models` exist and any other name is a 404, as on a real server. Not strict
    # (no --model given): any name is served and then listed, as if pulled on first use.
    strict_models: bool = False
    reply: ReplyMode = "echo"
    reply_text: str = DEFAULT_FIXED_REPLY
    tts_first_byte_ms: float = 50.0
    api_key: str | None = None

    @property
    def profile(self) -> LatencyProfile:
        return LatencyProfile(
            ttft_s=self.ttft_ms / 1000.0, tokens_per_s=self.tokens_per_s, load_s=self.load_ms / 1000.0
        )


class ConfigPatch(BaseModel):
    """The body of `POST /sim/config`: any subset of the live-changeable settings."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float | None = Field(None, ge=0, le=600_000)
    tokens_per_s: float | None = Field(None, gt=0, le=1_000_000)
    load_ms: float | None = Field(None, ge=0, le=600_000)
    parallel: int | None = Field(None, ge=1, le=10_000)
    max_queue: int | None = Field(None, ge=0, le=1_000_000)
    tts_first_byte_ms: float | None = Field(None, ge=0, le=600_000)
    reply: ReplyMode | None = None
    reply_text: str | None = Field(None, max_length=1_000_000)


class ServerBusy(Exception):
    """Parallel slots and the queue are full: the caller answers 503."""


class Simulator:
    def __init__(
        self,
        settings: SimSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.initial = settings
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self.catalog = ModelCatalog(settings.models, now=wall_clock())
        self.residency = ModelResidency(clock=clock)
        self.slots = SlotBook(parallel=settings.parallel, max_queue=settings.max_queue)
        self.faults = FaultBook()
        self.calls: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self._tickets = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[None]] = {}

    # ----- settings --------------------------------------------------------------------------

    def apply(self, patch: ConfigPatch) -> None:
        changes = patch.model_dump(exclude_none=True)
        self.settings = dataclasses.replace(self.settings, **changes)
        if "parallel" in changes or "max_queue" in changes:
            self._wake(self.slots.resize(parallel=self.settings.parallel, max_queue=self.settings.max_queue))

    def reset(self) -> None:
        """Back to the state at start-up: counters and faults cleared, models unloaded, settings restored."""
        self.settings = self.initial
        self.calls.clear()
        self.responses.clear()
        self.faults.reset()
        self.residency.clear()
        self.catalog.reset(now=self.wall_clock())
        self._wake(self.slots.resize(parallel=self.initial.parallel, max_queue=self.initial.max_queue))
        self.slots.reset_counters()

    def resolve_model(self, name: str) -> ModelInfo | None:
        """The model a request names, or None if this server does not have it (a 404)."""
        info = self.catalog.find(name)
        if info is None and not self.settings.strict_models:
            info = self.catalog.add(name, now=self.wall_clock())
        return info

    # ----- slots -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one parallel slot for a generation, waiting in the queue if needed; ServerBusy if full."""
        ticket = next(self._tickets)
        decision = self.slots.request(ticket)
        if decision is Admission.REJECT:
            raise ServerBusy
        if decision is Admission.WAIT:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[ticket] = waiter
            try:
                await waiter
            except asyncio.CancelledError:
                self._waiters.pop(ticket, None)
                if not self.slots.withdraw(ticket):
                    # Promoted just as the client left: hand the slot on.
                    self._wake(self.slots.release())
                raise
        try:
            yield
        finally:
            self._wake(self.slots.release())

    def _wake(self, tickets: list[int]) -> None:
        for ticket in tickets:
            waiter = self._waiters.pop(ticket, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # ----- observation -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "responses": dict(self.responses),
            "in_flight": self.slots.running,
            "queued": len(self.slots.waiting),
            "max_concurrent_seen": self.slots.max_running_seen,
            "max_queued_seen": self.slots.max_waiting_seen,
            "rejected_busy": self.slots.rejected,
            "faults_injected": dict(self.faults.injected),
            "faults_armed": self.faults.armed(),
            "loaded_models": sorted(self.residency.loaded()),
            "config": self.config_view(),
        }

    def config_view(self) -> dict[str, Any]:
        s = self.settings
        return {
            "protocol": s.protocol,
            "ttft_ms": s.ttft_ms,
            "tokens_per_s": s.tokens_per_s,
            "load_ms": s.load_ms,
            "parallel": s.parallel,
            "max_queue": s.max_queue,
            "tts_first_byte_ms": s.tts_first_byte_ms,
            "reply": s.reply,
            "reply_text": s.reply_text,
            "models": [m.name for m in self.catalog.all()],
        }
