"""TTFA monitor: stage accounting, rolling percentiles and in-process alerts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from voicelane.sidecar.config import RequestClass, TTFAConfig
from voicelane.sidecar.ttfa import StageClock, TTFAMonitor, percentile


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def finished(clock: FakeClock, ttfa: float | None) -> StageClock:
    stages = StageClock(received=clock.now, clock=clock)
    stages.mark("dispatched", clock.now + 0.01)
    if ttfa is not None:
        stages.mark("first_audio_sent", clock.now + ttfa)
    return stages


def test_stage_durations_are_gaps_between_marks() -> None:
    clock = FakeClock()
    stages = StageClock(received=10.0, clock=clock)
    stages.mark("admitted", 10.001)
    stages.mark("first_token", 10.5)
    stages.mark("first_token", 11.0)  # the first mark of a stage wins
    stages.mark("first_audio_sent", 10.8)
    durations = stages.durations()
    assert round(durations["first_token"], 3) == 0.499
    assert round(durations["first_audio_sent"], 3) == 0.3


def test_stats_per_class_and_window() -> None:
    clock = FakeClock()
    monitor = TTFAMonitor(TTFAConfig(), clock=clock)
    for ttfa in (0.5, 1.0, 1.5, 4.0):
        monitor.record(RequestClass.CHAT, finished(clock, ttfa))
    monitor.record(RequestClass.CHAT, finished(clock, None), error=True)
    stats = monitor.stats()["classes"]["chat"]
    assert stats["count"] == 5
    assert stats["p50_s"] == 1.0
    assert stats["within_target_ratio"] == 3 / 5
    assert stats["error_ratio"] == 1 / 5
    clock.now += 120
    monitor.record(RequestClass.NOTIFICATION, finished(clock, 0.2))
    recent = monitor.stats(minutes=1)["classes"]
    assert set(recent) == {"notification"}


def test_consecutive_slow_requests_raise_one_alert() -> None:
    clock = FakeClock()
    raised = []
    monitor = TTFAMonitor(TTFAConfig(consecutive_slow_alert=3), clock=clock, on_alert=raised.append)
    for ttfa in (3.1, 3.2, 0.4, 3.3, 3.4, 3.5, 3.6):
        monitor.record(RequestClass.CHAT, finished(clock, ttfa))
    kinds = [a.kind for a in raised]
    assert kinds.count("consecutive_slow") == 1


def test_p95_over_target_alerts_once_until_it_recovers() -> None:
    clock = FakeClock()
    monitor = TTFAMonitor(TTFAConfig(consecutive_slow_alert=1000), clock=clock)
    for _ in range(5):
        monitor.record(RequestClass.NOTIFICATION, finished(clock, 2.9))
    p95_alerts = [a for a in monitor.alerts_raised if a.kind == "p95_over_target"]
    assert len(p95_alerts) == 1
    assert p95_alerts[0].request_class == "notification"


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1), st.floats(0.01, 1.0))
def test_percentile_is_a_member_with_enough_values_below(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert p in values
    assert sum(v <= p for v in values) >= q * len(values) - 1e-9
