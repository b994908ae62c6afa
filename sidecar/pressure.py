"""Pressure sources the guardian consults: local CPU and memory, and upstream saturation.

Local pressure is read from the container's own cgroup (v2) where limits are set,
because host-wide figures say nothing about a container throttled at its quota, and
from psutil's host-wide figures otherwise. In a cluster the model runs on another
node, so the model tiers' own distress (time to first token inflating past its
baseline, or a run of 503s and timeouts) is a second, independent source.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from voicelane.core.guardian import PressureSample
from voicelane.sidecar.config import GuardianConfig

CGROUP_ROOT = Path("/sys/fs/cgroup")


class CgroupV2Reader:
    """Reads one cgroup v2 directory; each figure is None when its limit is not set (or unreadable)."""

    def __init__(self, root: Path = CGROUP_ROOT, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self._clock = clock
        self._last_cpu: tuple[float, int] | None = None  # (when, usage_usec) of the previous read
        self._last_cpu_percent = 0.0

    def cpu_limit_cores(self) -> float | None:
        """The CPU quota in cores from `cpu.max` ("quota period"), or None for "max"."""
        fields = self._read("cpu.max")
        if fields is None:
            return None
        quota, _, period = fields.partition(" ")
        if quota == "max":
            return None
        try:
            return int(quota) / int(period or "100000")
        except (ValueError, ZeroDivisionError):
            return None

    def memory_limit_bytes(self) -> int | None:
        """`memory.max` in bytes, or None for "max"."""
        text = self._read("memory.max")
        if text is None or text == "max":
            return None
        try:
            return int(text)
        except ValueError:
            return None

    @property
    def limits_set(self) -> dict[str, bool]:
        return {"cpu": self.cpu_limit_cores() is not None, "memory": self.memory_limit_bytes() is not None}

    def cpu_percent(self) -> float | None:
        """CPU used since the previous call, in percent of the quota (0-100).

        Like psutil.cpu_percent(interval=None), the first call has nothing to compare
        with and returns 0.0: no evidence of pressure yet.
        """
        cores = self.cpu_limit_cores()
        usage = self._cpu_usage_usec()
        if cores is None or usage is None:
            self._last_cpu = None
            return None
        now = self._clock()
        previous, self._last_cpu = self._last_cpu, (now, usage)
        if previous is None:
            return 0.0
        elapsed = now - previous[0]
        if elapsed <= 0:
            self._last_cpu = previous  # too soon to measure: keep the older reference point
            return self._last_cpu_percent
        used_s = (usage - previous[1]) / 1_000_000
        self._last_cpu_percent = min(100.0, max(0.0, 100.0 * used_s / (elapsed * cores)))
        return self._last_cpu_percent

    def memory_percent(self) -> float | None:
        """The working set in percent of `memory.max`.

        Like the kubelet, inactive file cache is subtracted: the kernel reclaims it
        before the container would be OOM-killed, so it is not pressure.
        """
        limit = self.memory_limit_bytes()
        current_text = self._read("memory.current")
        if limit is None or current_text is None or limit <= 0:
            return None
        try:
            current = int(current_text)
        except ValueError:
            return None
        working_set = max(0, current - (self._stat("memory.stat", "inactive_file") or 0))
        return 100.0 * working_set / limit

    def _cpu_usage_usec(self) -> int | None:
        return self._stat("cpu.stat", "usage_usec")

    def _stat(self, name: str, key: str) -> int | None:
        text = self._read(name)
        if text is None:
            return None
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key:
                try:
                    return int(parts[1])
                except ValueError:
                    return None
        return None

    def _read(self, name: str) -> str | None:
        try:
            return (self.root / name).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None


class LocalPressureSource:
    """This container's pressure: cgroup figures where limits are set, host-wide figures otherwise."""

    def __init__(self, cgroup_root: Path = CGROUP_ROOT, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cgroup = CgroupV2Reader(cgroup_root, clock=clock)
        # psutil measures CPU between calls; this first call starts its interval.
        psutil.cpu_percent(interval=None)

    def sample(self) -> PressureSample:
        cgroup_cpu = self.cgroup.cpu_percent()
        cgroup_memory = self.cgroup.memory_percent()
        cpu = cgroup_cpu if cgroup_cpu is not None else float(psutil.cpu_percent(interval=None))
        memory = cgroup_memory if cgroup_memory is not None else float(psutil.virtual_memory().percent)
        return PressureSample(cpu, memory, origin=_origin(cgroup_cpu is not None, cgroup_memory is not None))


def _origin(cpu_from_cgroup: bool, memory_from_cgroup: bool) -> str:
    if cpu_from_cgroup == memory_from_cgroup:
        return "cgroup" if cpu_from_cgroup else "host"
    return "cgroup cpu, host memory" if cpu_from_cgroup else "host cpu, cgroup memory"


class InjectedPressureSource:
    """A source whose sample is set from outside: the test hook, and tests that must not load a machine."""

    def __init__(self, sample: PressureSample | None = None) -> None:
        self._sample = sample if sample is not None else PressureSample(0.0, 0.0)

    def set(self, sample: PressureSample) -> None:
        self._sample = sample

    def sample(self) -> PressureSample:
        return self._sample


# The same thing under the name that says what it does when nobody calls set().
StaticPressureSource = InjectedPressureSource

FAILURE_KINDS = frozenset({"http_503", "timeout", "other"})
SATURATION_KINDS = frozenset({"http_503", "timeout"})  # what an overloaded model server returns
# EWMA weight per call: the baseline follows roughly the last 20 calls before the window.
BASELINE_WEIGHT = 0.05
MAX_WINDOW_ENTRIES = 10_000  # bounds memory however busy a tier is


@dataclass
class _TierHistory:
    ttfts: deque[tuple[float, float]] = field(default_factory=deque)  # (when, seconds), recent window
    outcomes: deque[tuple[float, str]] = field(default_factory=deque)  # (when, "ok" or a failure kind)
    baseline_ttft_s: float | None = None
    baseline_calls: int = 0


class UpstreamSaturation:
    """Per model tier: is it saturated now, judged from its recent calls against its own history?

    The TTFT baseline is fed only by calls that have aged out of the recent window,
    so a saturated spell cannot raise the baseline it is compared with until it has
    lasted long enough to be the new normal.
    """

    def __init__(self, config: GuardianConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._tiers: dict[str, _TierHistory] = {}
        # Recorded from the event loop, judged from the guardian's worker thread.
        self._lock = threading.Lock()

    def reconfigure(self, config: GuardianConfig) -> None:
        with self._lock:
            self._config = config

    def record_ttft(self, tier: str, seconds: float) -> None:
        with self._lock:
            now = self._clock()
            history = self._history(tier, now)
            history.ttfts.append((now, max(0.0, seconds)))

    def record_success(self, tier: str) -> None:
        self._record_outcome(tier, "ok")

    def record_failure(self, tier: str, kind: str) -> None:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"failure kind must be one of {sorted(FAILURE_KINDS)}, got {kind!r}")
        self._record_outcome(tier, kind)

    def saturated_tiers(self) -> dict[str, str]:
        """Tier name → why it counts as saturated, for every saturated tier."""
        with self._lock:
            now = self._clock()
            reasons = {}
            for tier in list(self._tiers):
                reason = self._judge(self._history(tier, now))
                if reason:
                    reasons[tier] = reason
            return reasons

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            result = {}
            for tier in list(self._tiers):
                history = self._history(tier, now)
                result[tier] = {
                    "recent_ttft_s": _median(history),
                    "baseline_ttft_s": history.baseline_ttft_s,
                    "recent_calls": len(history.outcomes),
                    "recent_503s_or_timeouts": _saturation_errors(history),
                }
            return result

    def _record_outcome(self, tier: str, outcome: str) -> None:
        with self._lock:
            now = self._clock()
            self._history(tier, now).outcomes.append((now, outcome))

    def _history(self, tier: str, now: float) -> _TierHistory:
        """The tier's history with everything older than the window moved out of it."""
        history = self._tiers.setdefault(tier, _TierHistory())
        horizon = now - self._config.upstream_window_s
        while history.ttfts and (history.ttfts[0][0] < horizon or len(history.ttfts) > MAX_WINDOW_ENTRIES):
            _, seconds = history.ttfts.popleft()
            if history.baseline_ttft_s is None:
                history.baseline_ttft_s = seconds
            else:
                history.baseline_ttft_s += BASELINE_WEIGHT * (seconds - history.baseline_ttft_s)
            history.baseline_calls += 1
        while history.outcomes and (history.outcomes[0][0] < horizon or len(history.outcomes) > MAX_WINDOW_ENTRIES):
            history.outcomes.popleft()
        return history

    def _judge(self, history: _TierHistory) -> str | None:
        config = self._config
        reasons = []
        recent = _median(history)
        baseline = history.baseline_ttft_s
        if (
            recent is not None
            and baseline is not None
            and len(history.ttfts) >= config.upstream_min_samples
            and history.baseline_calls >= config.upstream_min_samples
            and recent >= config.upstream_min_ttft_s
            and recent > baseline * config.upstream_ttft_inflation
        ):
            reasons.append(f"ttft {recent:.2f} s vs baseline {baseline:.2f} s")
        calls = len(history.outcomes)
        errors = _saturation_errors(history)
        if calls >= config.upstream_min_samples and errors / calls >= config.upstream_error_ratio:
            reasons.append(f"{errors} of {calls} recent calls were 503s or timeouts")
        return "; ".join(reasons) or None


def _median(history: _TierHistory) -> float | None:
    # The median, not the mean: one slow call among fast ones is not saturation.
    return statistics.median(seconds for _, seconds in history.ttfts) if history.ttfts else None


def _saturation_errors(history: _TierHistory) -> int:
    return sum(1 for _, outcome in history.outcomes if outcome in SATURATION_KINDS)
