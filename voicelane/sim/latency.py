"""The simulator's latency model: model load, time to first token, token rate and concurrency slots.

Pure bookkeeping with an injected clock, so every rule here is testable without sockets
or sleeping. The server asks this module *when* things should happen and does the waiting.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

# Ollama's default keep_alive when a request does not name one.
DEFAULT_KEEP_ALIVE_S = 300.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object) -> float:
    """Seconds a model stays loaded after a call, as Ollama reads `keep_alive`.

    Numbers are seconds; strings are Go durations ("15m", "1h30m", "300ms") or bare numbers.
    A negative value means "forever" (math.inf); None means the server default.
    Raises ValueError for anything else, which the API turns into a 400.
    """
    if value is None:
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, bool):
        raise ValueError(f"invalid keep_alive: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _DURATION_PART.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"invalid keep_alive duration: {value!r}") from None
            seconds = sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError(f"invalid keep_alive: {value!r}")
    return math.inf if seconds < 0 else seconds


@dataclass(frozen=True)
class LatencyProfile:
    """How fast the simulated model is."""

    ttft_s: float = 0.150
    tokens_per_s: float = 40.0
    load_s: float = 0.0

    def token_offsets(self, count: int, *, tokens_per_s: float | None = None) -> list[float]:
        """Seconds after generation starts at which each of `count` tokens is emitted.

        The first token comes after the time to first token, each further one a token
        interval later; the server sleeps until start + offset, so delays never drift.
        """
        rate = self.tokens_per_s if tokens_per_s is None else tokens_per_s
        interval = 1.0 / rate if rate > 0 else 0.0
        return [self.ttft_s + index * interval for index in range(count)]


@dataclass
class _Residency:
    ready_at: float
    expires_at: float
    busy: int = 0


class ModelResidency:
    """Which models are loaded, when a load finishes, and when an idle model is unloaded.

    The first call to a model pays the load time; calls that arrive while it loads wait
    for the same load; a model unloads `keep_alive` seconds after its last call ends.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._models: dict[str, _Residency] = {}

    def begin(self, model: str, load_s: float) -> float:
        """Register a call starting now; returns how long it waits for the model to be loaded."""
        now = self._clock()
        entry = self._models.get(model)
        if entry is None or (entry.busy == 0 and entry.expires_at <= now):
            entry = _Residency(ready_at=now + load_s, expires_at=math.inf)
            self._models[model] = entry
        entry.busy += 1
        entry.expires_at = math.inf
        return max(0.0, entry.ready_at - now)

    def end(self, model: str, keep_alive_s: float) -> None:
        """Register a call finishing now; the model stays for `keep_alive_s` once idle."""
        entry = self._models.get(model)
        if entry is None:
            return
        entry.busy = max(0, entry.busy - 1)
        if entry.busy == 0:
            if keep_alive_s <= 0:
                del self._models[model]
            else:
                entry.expires_at = self._clock() + keep_alive_s

    def unload(self, model: str) -> None:
        self._models.pop(model, None)

    def loaded(self) -> dict[str, float]:
        """Loaded models and the clock time each expires at (math.inf while busy or kept forever)."""
        now = self._clock()
        for name in [n for n, e in self._models.items() if e.busy == 0 and e.expires_at <= now]:
            del self._models[name]
        return {name: entry.expires_at for name, entry in self._models.items()}

    def clear(self) -> None:
        self._models.clear()


class Admission(Enum):
    RUN = "run"
    WAIT = "wait"
    REJECT = "reject"


@dataclass
class SlotBook:
    """OLLAMA_NUM_PARALLEL-style slots with an OLLAMA_MAX_QUEUE-style waiting line.

    Tickets are opaque integers chosen by the caller. At most `parallel` run, at most
    `max_queue` wait in arrival order, and anything beyond is rejected (a 503).
    """

    parallel: int = 1
    max_queue: int = 512
    running: int = 0
    waiting: deque[int] = field(default_factory=deque)
    max_running_seen: int = 0
    max_waiting_seen: int = 0
    rejected: int = 0

    def request(self, ticket: int) -> Admission:
        if self.running < self.parallel and not self.waiting:
            self._start()
            return Admission.RUN
        if len(self.waiting) < self.max_queue:
            self.waiting.append(ticket)
            self.max_waiting_seen = max(self.max_waiting_seen, len(self.waiting))
            return Admission.WAIT
        self.rejected += 1
        return Admission.REJECT

    def release(self) -> list[int]:
        """A running call ended; returns the waiting tickets that start now."""
        self.running = max(0, self.running - 1)
        return self._promote()

    def withdraw(self, ticket: int) -> bool:
        """A waiting call gave up (client went away); True if it was still waiting."""
        try:
            self.waiting.remove(ticket)
        except ValueError:
            return False
        return True

    def resize(self, *, parallel: int | None = None, max_queue: int | None = None) -> list[int]:
        """Change the limits live; returns waiting tickets that may start under the new limits."""
        if parallel is not None:
            self.parallel = parallel
        if max_queue is not None:
            self.max_queue = max_queue
        return self._promote()

    def reset_counters(self) -> None:
        self.max_running_seen = self.running
        self.max_waiting_seen = len(self.waiting)
        self.rejected = 0

    def _promote(self) -> list[int]:
        started: list[int] = []
        while self.waiting and self.running < self.parallel:
            started.append(self.waiting.popleft())
            self._start()
        return started

    def _start(self) -> None:
        self.running += 1
        self.max_running_seen = max(self.max_running_seen, self.running)
