"""A circuit breaker per upstream: consecutive failures open it, consecutive successes close it.

Both ordinary calls and health checks report here. There is no half-open timer: the
health checks keep probing an open upstream, and their successes are what close it.
Hand-written (rather than e.g. pybreaker) because those libraries re-open on a timer and
count failures in ways that differ from the lane's rule of "N in a row opens, M in a row closes".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

CircuitState = Literal["closed", "open"]


class CircuitBreaker:
    """Opens after `failures_to_open` failures in a row; closes after `successes_to_close` successes in a row.

    A success while closed resets the failure streak; a failure while open resets the
    success streak, so only uninterrupted runs count.
    """

    def __init__(
        self,
        failures_to_open: int = 3,
        successes_to_close: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures_to_open < 1 or successes_to_close < 1:
            raise ValueError("failures_to_open and successes_to_close must be at least 1")
        self.failures_to_open = failures_to_open
        self.successes_to_close = successes_to_close
        self._clock = clock
        self._state: CircuitState = "closed"
        self._failure_streak = 0
        self._success_streak = 0
        self.opened_at: float | None = None
        self.times_opened = 0
        self.times_closed = 0

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state == "open"

    def record_failure(self) -> None:
        self._success_streak = 0
        self._failure_streak += 1
        if self._state == "closed" and self._failure_streak >= self.failures_to_open:
            self._state = "open"
            self.opened_at = self._clock()
            self.times_opened += 1

    def record_success(self) -> None:
        self._failure_streak = 0
        self._success_streak += 1
        if self._state == "open" and self._success_streak >= self.successes_to_close:
            self._state = "closed"
            self.opened_at = None
            self.times_closed += 1

    def snapshot(self) -> dict[str, Any]:
        """State and counters for /v1/stats."""
        return {
            "state": self._state,
            "opened_at": self.opened_at,
            "consecutive_failures": self._failure_streak,
            "consecutive_successes": self._success_streak,
            "times_opened": self.times_opened,
            "times_closed": self.times_closed,
        }
