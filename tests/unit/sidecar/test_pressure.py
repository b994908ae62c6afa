"""Pressure sources: the container's cgroup, the host fallback, injected samples, upstream saturation."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from voicelane.core.guardian import PressureSample
from voicelane.sidecar.config import GuardianConfig
from voicelane.sidecar.pressure import (
    CgroupV2Reader,
    InjectedPressureSource,
    LocalPressureSource,
    StaticPressureSource,
    UpstreamSaturation,
)

GIB = 1024**3


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeCgroup:
    """A cgroup v2 directory written by the test, the way the kernel lays it out."""

    def __init__(self, root: Path, *, cpu_max: str = "max 100000", memory_max: str = "max") -> None:
        self.root = root
        self.write("cpu.max", cpu_max)
        self.write("memory.max", memory_max)
        self.set_cpu_usage(0)
        self.set_memory(current=0)

    def write(self, name: str, text: str) -> None:
        (self.root / name).write_text(text + "\n")

    def set_cpu_usage(self, usage_usec: int) -> None:
        self.write("cpu.stat", f"usage_usec {usage_usec}\nuser_usec {usage_usec}\nsystem_usec 0\nnr_throttled 0")

    def set_memory(self, *, current: int, inactive_file: int | None = None) -> None:
        self.write("memory.current", str(current))
        stat = ["anon 1000", "file 2000"]
        if inactive_file is not None:
            stat.append(f"inactive_file {inactive_file}")
        self.write("memory.stat", "\n".join(stat))


# ----- cgroup v2 --------------------------------------------------------------------------------


def test_cpu_is_the_usage_delta_over_the_quota(tmp_path: Path) -> None:
    cgroup = FakeCgroup(tmp_path, cpu_max="200000 100000")  # two cores
    clock = FakeClock()
    reader = CgroupV2Reader(tmp_path, clock=clock)
    assert reader.cpu_limit_cores() == 2.0
    assert reader.cpu_percent() == 0.0  # first read: nothing to compare with yet
    cgroup.set_cpu_usage(1_500_000)
    clock.advance(1.0)
    assert reader.cpu_percent() == pytest.approx(75.0)  # 1.5 core-seconds of 2 in one second
    cgroup.set_cpu_usage(1_700_000)
    clock.advance(1.0)
    assert reader.cpu_percent() == pytest.approx(10.0)


def test_memory_is_the_working_set_over_the_limit(tmp_path: Path) -> None:
    cgroup = FakeCgroup(tmp_path, memory_max=str(4 * GIB))
    reader = CgroupV2Reader(tmp_path)
    cgroup.set_memory(current=3 * GIB)
    assert reader.memory_percent() == pytest.approx(75.0)
    cgroup.set_memory(current=3 * GIB, inactive_file=GIB)  # reclaimable cache is not pressure
    assert reader.memory_percent() == pytest.approx(50.0)


def test_figures_without_a_limit_are_unknown(tmp_path: Path) -> None:
    FakeCgroup(tmp_path)
    reader = CgroupV2Reader(tmp_path)
    assert reader.limits_set == {"cpu": False, "memory": False}
    assert reader.cpu_percent() is None
    assert reader.memory_percent() is None


def test_a_missing_or_garbled_cgroup_reads_as_no_limit(tmp_path: Path) -> None:
    assert CgroupV2Reader(tmp_path / "absent").limits_set == {"cpu": False, "memory": False}
    cgroup = FakeCgroup(tmp_path, cpu_max="lots 100000", memory_max="plenty")
    cgroup.write("cpu.stat", "usage_usec not-a-number")
    reader = CgroupV2Reader(tmp_path)
    assert (reader.cpu_percent(), reader.memory_percent()) == (None, None)


# ----- local source -----------------------------------------------------------------------------


def test_local_source_prefers_the_cgroup_where_limits_are_set(tmp_path: Path) -> None:
    cgroup = FakeCgroup(tmp_path, cpu_max="100000 100000", memory_max=str(GIB))
    clock = FakeClock()
    source = LocalPressureSource(tmp_path, clock=clock)
    source.sample()
    cgroup.set_cpu_usage(900_000)
    cgroup.set_memory(current=GIB // 2)
    clock.advance(1.0)
    sample = source.sample()
    assert (sample.cpu_percent, sample.memory_percent, sample.origin) == (
        pytest.approx(90.0),
        pytest.approx(50.0),
        "cgroup",
    )


def test_local_source_falls_back_to_host_figures_per_missing_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeCgroup(tmp_path, memory_max=str(GIB)).set_memory(current=GIB // 4)
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 42.0)
    source = LocalPressureSource(tmp_path)
    sample = source.sample()
    assert (sample.cpu_percent, sample.memory_percent) == (42.0, pytest.approx(25.0))
    assert sample.origin == "host cpu, cgroup memory"


def test_local_source_outside_a_container_reads_the_host(tmp_path: Path) -> None:
    sample = LocalPressureSource(tmp_path / "no-cgroup").sample()
    assert sample.origin == "host"
    assert 0.0 <= sample.cpu_percent <= 100.0
    assert 0.0 < sample.memory_percent <= 100.0


def test_an_injected_source_reports_what_was_set() -> None:
    source = InjectedPressureSource()
    assert source.sample() == PressureSample(0.0, 0.0)
    source.set(PressureSample(95.0, 90.0))
    assert source.sample() == PressureSample(95.0, 90.0)
    assert StaticPressureSource(PressureSample(1.0, 2.0)).sample().cpu_percent == 1.0


# ----- upstream saturation ----------------------------------------------------------------------


def saturation(clock: FakeClock, **overrides: object) -> UpstreamSaturation:
    config = GuardianConfig.model_validate(
        {"upstream_window_s": 10.0, "upstream_min_samples": 3, "upstream_min_ttft_s": 0.5, **overrides}
    )
    return UpstreamSaturation(config, clock=clock)


def calls(tracker: UpstreamSaturation, clock: FakeClock, tier: str, ttft: float, count: int) -> None:
    for _ in range(count):
        tracker.record_ttft(tier, ttft)
        tracker.record_success(tier)
        clock.advance(1.0)


def test_ttft_inflated_past_its_baseline_saturates_the_tier() -> None:
    clock = FakeClock()
    tracker = saturation(clock)
    calls(tracker, clock, "fast", 0.2, 20)  # the first ten age into the baseline
    assert tracker.saturated_tiers() == {}
    calls(tracker, clock, "fast", 2.1, 10)
    assert tracker.saturated_tiers() == {"fast": "ttft 2.10 s vs baseline 0.20 s"}


def test_one_slow_call_is_not_saturation() -> None:
    clock = FakeClock()
    tracker = saturation(clock)
    calls(tracker, clock, "fast", 0.2, 20)
    clock.advance(10.0)  # a fresh window
    calls(tracker, clock, "fast", 5.0, 1)
    assert tracker.saturated_tiers() == {}
    calls(tracker, clock, "fast", 0.2, 2)
    assert tracker.saturated_tiers() == {}


def test_inflation_below_the_floor_is_not_saturation() -> None:
    clock = FakeClock()
    tracker = saturation(clock)
    calls(tracker, clock, "fast", 0.005, 20)
    calls(tracker, clock, "fast", 0.1, 10)  # twenty times the baseline, still quick to a listener
    assert tracker.saturated_tiers() == {}


def test_saturation_clears_once_the_slow_calls_leave_the_window() -> None:
    clock = FakeClock()
    tracker = saturation(clock)
    calls(tracker, clock, "deep", 0.3, 20)
    calls(tracker, clock, "deep", 3.0, 5)
    assert "deep" in tracker.saturated_tiers()
    clock.advance(10.0)
    assert tracker.saturated_tiers() == {}


def test_a_run_of_503s_and_timeouts_saturates_the_tier() -> None:
    clock = FakeClock()
    tracker = saturation(clock)
    tracker.record_success("deep")
    tracker.record_failure("deep", "http_503")
    assert tracker.saturated_tiers() == {}  # too few calls to judge
    tracker.record_failure("deep", "timeout")
    assert tracker.saturated_tiers() == {"deep": "2 of 3 recent calls were 503s or timeouts"}


def test_other_failures_are_not_saturation() -> None:
    clock = FakeClock()
    tracker = saturation(clock)
    for _ in range(5):
        tracker.record_failure("fast", "other")  # refused connections say the server is down, not busy
    assert tracker.saturated_tiers() == {}
    with pytest.raises(ValueError, match="kind"):
        tracker.record_failure("fast", "bad_gateway")


def test_tiers_are_judged_separately() -> None:
    clock = FakeClock()
    tracker = saturation(clock)
    for _ in range(3):
        tracker.record_failure("fast", "http_503")
        tracker.record_success("deep")
    assert tracker.saturated_tiers().keys() == {"fast"}
    assert tracker.snapshot()["deep"]["recent_calls"] == 3
