"""How the lane judges a model tier: a circuit breaker fed by real calls, and a watch on first tokens.

A tier is judged by what it does with real work. Its circuit opens after N failed calls in
a row and closes after M answered calls in a row. Health checks (the server's cheap status
endpoint) also report, but they cannot vouch for the path that is failing: a model server
whose runner is stuck answers its status endpoint while every chat hangs. So a health
success counts only while no real call has failed since the last answered one; otherwise
the lane probes the tier with a real, tiny generation, which reports like a call.

The watch covers what the circuit cannot see in time: a call that has waited far longer
for its first token than the tier usually takes, while the first-token timeout is still
far off. From then until the tier produces a first token again it counts as stalled, and
the lane sends new work to the other tier first.

Hand-written (rather than e.g. pybreaker) because those libraries re-open on a timer and
count failures in ways that differ from the lane's rule of "N in a row opens, M in a row closes".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

CircuitState = Literal["closed", "open"]

# A call counts as overdue once it has waited this many times the tier's usual time to first
# token, and never sooner than MIN_PATIENCE_S: on a loaded CPU a first token several times slower
# than usual is common, one this late is not.
STALL_FACTOR = 4.0
MIN_PATIENCE_S = 1.0
# Weight of each new first-token time in the tier's usual one, and how many it needs first.
USUAL_WEIGHT = 0.2
USUAL_MIN_SAMPLES = 3


class CircuitBreaker:
    """Opens after `failures_to_open` failures in a row; closes after `successes_to_close` successes in a row.

    A success while closed resets the failure streak; a failure while open resets the
    success streak, so only uninterrupted runs count. `record_failure` and
    `record_success` report real calls; `record_probe` reports a health check.
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
        self._call_failed = False  # a real call failed and none has been answered since
        self.opened_at: float | None = None
        self.times_opened = 0
        self.times_closed = 0

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state == "open"

    @property
    def calls_failing(self) -> bool:
        """A real call failed and none has been answered since: a health check cannot clear that."""
        return self._call_failed

    @property
    def needs_real_probe(self) -> bool:
        """Open because real calls failed: only a real generation can show the tier answers again."""
        return self.is_open and self._call_failed

    def record_failure(self) -> None:
        """A real call failed by the tier's fault."""
        self._call_failed = True
        self._fail()

    def record_success(self) -> None:
        """A real call (or a real generation probe) was answered."""
        self._call_failed = False
        self._succeed()

    def record_probe(self, ok: bool) -> None:
        """A health check: a failure counts like any other; a success only while no real call is failing."""
        if not ok:
            self._fail()
        elif not self._call_failed:
            self._succeed()

    def _fail(self) -> None:
        self._success_streak = 0
        self._failure_streak += 1
        if self._state == "closed" and self._failure_streak >= self.failures_to_open:
            self._state = "open"
            self.opened_at = self._clock()
            self.times_opened += 1

    def _succeed(self) -> None:
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
            "calls_failing": self._call_failed,
            "times_opened": self.times_opened,
            "times_closed": self.times_closed,
        }


class FirstTokenWatch:
    """One tier's usual time to first token, and whether a call has stalled on it since its last first token."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._usual_s: float | None = None
        self._samples = 0
        self._last_first_token_at: float | None = None
        self.stalled_since: float | None = None
        self.times_stalled = 0

    @property
    def stalled(self) -> bool:
        return self.stalled_since is not None

    @property
    def usual_s(self) -> float | None:
        """The tier's usual time to first token, once it has answered enough calls to say."""
        return self._usual_s if self._samples >= USUAL_MIN_SAMPLES else None

    def patience_s(self, *, deadline_s: float, timeout_s: float) -> float | None:
        """How long a call may wait for its first token before it is overdue; None: the timeout comes first.

        `deadline_s` is when the caller's listener stops waiting (the class deadline): a call
        later than that is overdue whatever the tier usually takes. Until the tier has a usual
        time, the deadline is all there is to go by.
        """
        usual = self.usual_s
        patience = deadline_s if usual is None else min(deadline_s, max(MIN_PATIENCE_S, STALL_FACTOR * usual))
        return patience if patience < timeout_s else None

    def first_token(self, waited_s: float, *, typical: bool = True) -> None:
        """A call on the tier produced its first token after `waited_s`: the tier is answering.

        Only `typical` calls (the short, latency-critical ones patience applies to) shape the usual time.
        """
        self._last_first_token_at = self._clock()
        self.stalled_since = None
        if typical:
            self._samples += 1
            if self._usual_s is None:
                self._usual_s = waited_s
            else:
                self._usual_s += USUAL_WEIGHT * (waited_s - self._usual_s)

    def overdue(self, started_at: float) -> bool:
        """A call started at `started_at` is past its patience with no first token; True if the tier now stalls.

        Not when another call has produced a first token since this one started: then the tier
        answers, and this call alone is slow.
        """
        if self._last_first_token_at is not None and self._last_first_token_at >= started_at:
            return False
        if self.stalled_since is None:
            self.stalled_since = self._clock()
            self.times_stalled += 1
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
            "stalled": self.stalled,
            "stalled_since": self.stalled_since,
            "times_stalled": self.times_stalled,
            "usual_first_token_s": None if self.usual_s is None else round(self.usual_s, 4),
        }
