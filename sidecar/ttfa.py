"""Time-to-first-audio accounting: per-request stage marks, rolling statistics and in-process alerts.

TTFA runs from the moment the sidecar receives a request to the moment the first
audio byte leaves it. Each request carries a `StageClock` of monotonic marks; when it
finishes, `TTFAMonitor.record` keeps it in a rolling window for `/v1/stats?minutes=N`
and raises an alert (a structured log line and a counter) when a class's P95 is over
its target or K requests of a class in a row were slow — for users without Prometheus.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voicelane.sidecar.config import RequestClass, TTFAConfig

log = logging.getLogger("voicelane.sidecar.ttfa")

# The stages in the order a request passes them; each mark is seconds since `received`.
STAGES = (
    "admitted",
    "dispatched",
    "first_token",
    "first_segment",
    "fallback",  # the model missed its deadline or failed: the original text is spoken instead
    "tts_first_byte",
    "first_audio_sent",
    "done",
)


@dataclass
class StageClock:
    """Monotonic marks of one request's stages (first mark of each stage wins)."""

    received: float
    clock: Callable[[], float] = time.monotonic
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, stage: str, at: float | None = None) -> None:
        if stage not in self.marks:
            self.marks[stage] = (self.clock() if at is None else at) - self.received

    def durations(self) -> dict[str, float]:
        """Time spent in each stage: from the previous recorded mark to this one."""
        result: dict[str, float] = {}
        previous = 0.0
        for stage in STAGES:
            if stage in self.marks:
                result[stage] = max(0.0, self.marks[stage] - previous)
                previous = self.marks[stage]
        return result


@dataclass(frozen=True)
class Outcome:
    """A finished spoken request as the monitor keeps it."""

    at: float
    request_class: str
    ttfa_s: float | None  # None when no audio was sent (an error)
    target_s: float
    stages: dict[str, float]
    error: bool

    @property
    def within_target(self) -> bool:
        return self.ttfa_s is not None and self.ttfa_s <= self.target_s


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Alert:
    request_class: str
    kind: str  # "p95_over_target" or "consecutive_slow"
    message: str


class TTFAMonitor:
    """Rolling TTFA statistics per class and the alerts that go with them."""

    def __init__(
        self,
        config: TTFAConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_alert: Callable[[Alert], None] | None = None,
        max_outcomes: int = 100_000,
    ) -> None:
        self.config = config
        self.clock = clock
        self.on_alert = on_alert
        self._outcomes: deque[Outcome] = deque(maxlen=max_outcomes)
        self._slow_streak: dict[str, int] = {}
        self._p95_alerting: set[str] = set()
        self.alerts_raised: list[Alert] = []

    def reconfigure(self, config: TTFAConfig) -> None:
        self.config = config

    def target_for(self, request_class: RequestClass) -> float:
        return self.config.targets.for_class(request_class)

    def record(self, request_class: RequestClass, stages: StageClock, *, error: bool = False) -> Outcome:
        ttfa = stages.marks.get("first_audio_sent")
        outcome = Outcome(
            at=self.clock(),
            request_class=request_class.value,
            ttfa_s=ttfa,
            target_s=self.target_for(request_class),
            stages=stages.durations(),
            error=error or ttfa is None,
        )
        self._outcomes.append(outcome)
        self._expire()
        self._check_alerts(outcome)
        return outcome

    def _expire(self) -> None:
        horizon = self.clock() - self.config.window_s
        while self._outcomes and self._outcomes[0].at < horizon:
            self._outcomes.popleft()

    def _check_alerts(self, outcome: Outcome) -> None:
        name = outcome.request_class
        if outcome.ttfa_s is not None and not outcome.within_target:
            self._slow_streak[name] = self._slow_streak.get(name, 0) + 1
        elif outcome.ttfa_s is not None:
            self._slow_streak[name] = 0
        if self._slow_streak.get(name, 0) == self.config.consecutive_slow_alert:
            self._raise(
                Alert(
                    name,
                    "consecutive_slow",
                    f"{self.config.consecutive_slow_alert} {name} requests in a row exceeded the "
                    f"{outcome.target_s:.1f} s TTFA target",
                )
            )
        values = [o.ttfa_s for o in self._outcomes if o.request_class == name and o.ttfa_s is not None]
        p95 = percentile(values, 0.95)
        # Too few samples make a P95 meaningless; wait for a handful before judging.
        if p95 is not None and len(values) >= 5 and p95 > outcome.target_s:
            if name not in self._p95_alerting:
                self._p95_alerting.add(name)
                self._raise(
                    Alert(
                        name,
                        "p95_over_target",
                        f"{name} TTFA p95 {p95:.3f} s is over its {outcome.target_s:.1f} s target",
                    )
                )
        else:
            self._p95_alerting.discard(name)

    def _raise(self, alert: Alert) -> None:
        self.alerts_raised.append(alert)
        log.warning(
            "ttfa alert",
            extra={"alert_kind": alert.kind, "request_class": alert.request_class, "detail": alert.message},
        )
        if self.on_alert is not None:
            self.on_alert(alert)

    def stats(self, minutes: float | None = None) -> dict[str, Any]:
        """Per class: count, p50/p95/p99, share within target, error rate and mean stage durations."""
        self._expire()
        horizon = self.clock() - (minutes * 60 if minutes is not None else self.config.window_s)
        by_class: dict[str, list[Outcome]] = {}
        for outcome in self._outcomes:
            if outcome.at >= horizon:
                by_class.setdefault(outcome.request_class, []).append(outcome)
        report: dict[str, Any] = {}
        for name, outcomes in sorted(by_class.items()):
            values = [o.ttfa_s for o in outcomes if o.ttfa_s is not None]
            stage_totals: dict[str, list[float]] = {}
            for o in outcomes:
                for stage, seconds in o.stages.items():
                    stage_totals.setdefault(stage, []).append(seconds)
            report[name] = {
                "count": len(outcomes),
                "target_s": outcomes[-1].target_s,
                "p50_s": percentile(values, 0.50),
                "p95_s": percentile(values, 0.95),
                "p99_s": percentile(values, 0.99),
                "within_target_ratio": (sum(o.within_target for o in outcomes) / len(outcomes)),
                "error_ratio": sum(o.error for o in outcomes) / len(outcomes),
                "stages_mean_s": {s: sum(v) / len(v) for s, v in stage_totals.items()},
            }
        return {"window_s": self.clock() - horizon, "classes": report, "alerts": len(self.alerts_raised)}
