"""The guardian: sustained-pressure blocking, upstream saturation, the rate limit and its stats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from voicelane.core.guardian import AdmissionDecision, Guardian, PressureSample
from voicelane.core.refusals import Refusal
from voicelane.sidecar.config import GuardianConfig, RateLimitConfig
from voicelane.sidecar.pressure import InjectedPressureSource, UpstreamSaturation

HIGH = PressureSample(95.0, 90.0)
LOW = PressureSample(20.0, 30.0)
CPU_ONLY = PressureSample(95.0, 10.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Rig:
    clock: FakeClock
    pressure: InjectedPressureSource
    upstream: UpstreamSaturation
    guardian: Guardian

    def checks(self, sample: PressureSample, count: int, every_s: float = 1.0) -> list[bool]:
        """Run `count` checks `every_s` apart with `sample` as the local pressure; which failed."""
        self.pressure.set(sample)
        failed = []
        for _ in range(count):
            failed.append(self.guardian.check().failed)
            self.clock.advance(every_s)
        return failed


def rig(*, burst: int = 8, rate: float = 4.0, **guardian: Any) -> Rig:
    clock = FakeClock()
    config = GuardianConfig.model_validate(guardian)
    pressure = InjectedPressureSource()
    upstream = UpstreamSaturation(config, clock=clock)
    limits = RateLimitConfig(burst=burst, sustained_per_s=rate)
    return Rig(clock, pressure, upstream, Guardian(config, limits, local=pressure, upstream=upstream, clock=clock))


def saturate(upstream: UpstreamSaturation, tier: str = "fast") -> None:
    for _ in range(3):
        upstream.record_failure(tier, "http_503")


# ----- pressure checks --------------------------------------------------------------------------


def test_blocks_after_three_failed_checks_once_pressure_has_held_ten_seconds() -> None:
    lane = rig()
    # Checks at 0 .. 9 s see pressure held for less than 10 s; from 10 s on each check fails.
    assert lane.checks(HIGH, 12) == [False] * 10 + [True, True]
    assert not lane.guardian.blocked
    assert lane.checks(HIGH, 1) == [True]
    assert lane.guardian.blocked
    decision = lane.guardian.admit()
    assert decision == AdmissionDecision(False, Refusal.GUARDIAN_EMERGENCY, 5)


def test_one_good_check_unblocks() -> None:
    lane = rig()
    lane.checks(HIGH, 13)
    assert lane.guardian.blocked
    assert lane.checks(LOW, 1) == [False]
    assert not lane.guardian.blocked
    assert lane.guardian.admit().allowed


def test_pressure_that_eases_before_the_sustain_time_never_fails_a_check() -> None:
    lane = rig()
    for _ in range(5):
        assert lane.checks(HIGH, 9) == [False] * 9
        assert lane.checks(CPU_ONLY, 1) == [False]  # memory eased: the spell is broken
    assert lane.guardian.snapshot()["failed_checks"] == 0


def test_sparse_samples_judge_the_sustain_time_from_the_samples_seen() -> None:
    lane = rig()
    assert lane.checks(HIGH, 5, every_s=5.0) == [False, False, True, True, True]
    assert lane.guardian.blocked


def test_upstream_saturation_alone_fails_checks_and_says_which_tier() -> None:
    lane = rig()
    saturate(lane.upstream, "fast")
    result = lane.guardian.check()
    assert result.failed
    assert result.failing_sources == {"upstream": {"fast": "3 of 3 recent calls were 503s or timeouts"}}
    lane.guardian.check()
    lane.guardian.check()
    assert lane.guardian.blocked
    assert lane.guardian.snapshot()["failing_sources"].keys() == {"upstream"}


def test_only_the_configured_sources_are_consulted() -> None:
    lane = rig(sources=["local"])
    saturate(lane.upstream)
    assert lane.checks(LOW, 5) == [False] * 5
    lane = rig(sources=["upstream"])
    assert lane.checks(HIGH, 20) == [False] * 20


def test_failing_sources_describe_the_local_pressure() -> None:
    lane = rig()
    lane.checks(HIGH, 10)
    result = lane.guardian.check()
    assert result.failing_sources == {"local": "cpu 95% and memory 90% for 10.0 s"}


def test_a_disabled_guardian_neither_checks_nor_blocks() -> None:
    lane = rig()
    lane.checks(HIGH, 13)
    lane.guardian.reconfigure(GuardianConfig(enabled=False), RateLimitConfig())
    assert not lane.guardian.blocked
    assert lane.guardian.admit().allowed
    assert lane.checks(HIGH, 3) == [False] * 3


# ----- admission --------------------------------------------------------------------------------


def test_rate_limited_once_the_burst_is_spent_and_recovers_after_refill() -> None:
    lane = rig(burst=8, rate=4.0)
    assert all(lane.guardian.admit().allowed for _ in range(8))
    refused = lane.guardian.admit()
    assert refused == AdmissionDecision(False, Refusal.RATE_LIMITED, 1)
    lane.clock.advance(0.25)
    assert lane.guardian.admit().allowed
    assert not lane.guardian.admit().allowed


def test_retry_after_is_the_whole_seconds_until_a_token() -> None:
    lane = rig(burst=1, rate=0.2)
    lane.guardian.admit()
    assert lane.guardian.admit().retry_after_s == 5


def test_a_blocked_request_does_not_spend_a_token() -> None:
    lane = rig(burst=2, rate=1.0)
    lane.checks(HIGH, 13)
    assert [lane.guardian.admit().reason for _ in range(5)] == ["guardian_emergency"] * 5
    assert lane.guardian.snapshot()["rate_limit"]["tokens"] == 2.0  # no time passed, nothing taken
    lane.pressure.set(LOW)
    lane.guardian.check()
    assert [lane.guardian.admit().allowed for _ in range(3)] == [True, True, False]


def test_reconfigure_keeps_the_blocked_state_and_counters_and_applies_the_new_rate() -> None:
    lane = rig()
    lane.checks(HIGH, 12)
    lane.guardian.reconfigure(GuardianConfig(retry_after_s=9), RateLimitConfig(burst=1, sustained_per_s=1.0))
    assert lane.checks(HIGH, 1) == [True]  # the third failure in a row, counted across the reload
    assert lane.guardian.admit().retry_after_s == 9
    lane.checks(LOW, 1)
    assert [lane.guardian.admit().allowed for _ in range(2)] == [True, False]


def test_a_flood_of_lower_priorities_leaves_tokens_that_only_chats_take() -> None:
    lane = rig(burst=8, rate=4.0)
    assert [lane.guardian.admit(2).allowed for _ in range(5)] == [True] * 4 + [False]
    assert [lane.guardian.admit(1).allowed for _ in range(3)] == [True] * 2 + [False]
    assert [lane.guardian.admit(0).allowed for _ in range(3)] == [True] * 2 + [False]


def test_chats_are_admitted_whatever_the_flood_at_their_own_pace() -> None:
    lane = rig(burst=8, rate=4.0)
    admitted = {0: 0, 1: 0, 2: 0}
    for tick in range(240):  # 12 s in steps of 50 ms; the flood asks every step, a chat every 1.2 s
        lane.clock.advance(0.05)
        for priority in (1, 2, 1, 2):
            admitted[priority] += lane.guardian.admit(priority).allowed
        if tick % 24 == 0:
            assert lane.guardian.admit(0).allowed, tick
            admitted[0] += 1
    # The flood still had all the rest: the burst above what it must leave, and the sustained rate.
    assert admitted[1] + admitted[2] >= 8 - 2 + 4.0 * 12 - admitted[0] - 1


def test_retry_after_for_lower_priorities_counts_the_tokens_they_must_leave() -> None:
    lane = rig(burst=8, rate=1.0)
    while lane.guardian.admit(1).allowed:
        pass
    assert lane.guardian.admit(1).retry_after_s == 1
    assert lane.guardian.admit(2).retry_after_s == 3
    assert lane.guardian.admit(0).allowed


# ----- observation ------------------------------------------------------------------------------


def test_snapshot_reports_rates_blocks_and_rejections() -> None:
    lane = rig(burst=4, rate=1.0)
    for _ in range(10):  # 20 decisions over 10 s: 4 from the burst, then one token a second
        lane.guardian.admit()
        lane.guardian.admit()
        lane.clock.advance(1.0)
    lane.checks(HIGH, 13)
    lane.guardian.admit()
    lane.checks(LOW, 1)
    lane.checks(HIGH, 13)
    snapshot = lane.guardian.snapshot()
    assert snapshot["blocked"] is True
    assert snapshot["emergency_blocks"] == 2
    assert snapshot["decided"] == 21
    assert snapshot["rejections"] == {"guardian_emergency": 1, "rate_limited": 7}
    assert snapshot["success_rate"] == pytest.approx(13 / 21)
    assert snapshot["consecutive_failed_checks"] == 3
    assert snapshot["last_sample"] == {"cpu_percent": 95.0, "memory_percent": 90.0, "origin": "injected"}
    assert set(snapshot["failing_sources"]) == {"local"}
    assert snapshot["rate_limit"]["kept_from_priority"] == {1: 1, 2: 2}


def test_current_rps_counts_recent_admission_calls() -> None:
    lane = rig(burst=1000, rate=1000.0)
    lane.clock.advance(30.0)
    for _ in range(30):
        for _ in range(3):
            lane.guardian.admit()
        lane.clock.advance(1.0)
    assert lane.guardian.snapshot()["current_rps"] == pytest.approx(3.0, abs=0.3)
    lane.clock.advance(20.0)
    assert lane.guardian.snapshot()["current_rps"] == 0.0
