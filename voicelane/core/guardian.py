"""The guardian: admits new model work unless the lane is overloaded or over its rate.

A background task calls `check()` once per sample interval. A check fails when CPU
and memory have both been above their thresholds for the whole sustain time, or
when an upstream tier is saturated; enough failed checks in a row block new model
work (503) until enough good checks in a row unblock it. Independently, a token
bucket bounds the rate of new model work (429), lower priorities giving way first
as it drains (see ratelimit.py). The guardian never sleeps; time is whatever the
injected clock says.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from voicelane.core.ratelimit import TokenBucket, tokens_kept_from
from voicelane.core.refusals import Refusal, Refused

GUARDIAN_EMERGENCY = Refusal.GUARDIAN_EMERGENCY
RATE_LIMITED = Refusal.RATE_LIMITED
RPS_WINDOW_S = 10


class GuardianSettings(Protocol):
    """What the guardian reads from a configuration (the sidecar's GuardianConfig)."""

    @property
    def enabled(self) -> bool: ...
    @property
    def sources(self) -> tuple[str, ...]: ...
    @property
    def cpu_threshold_percent(self) -> float: ...
    @property
    def memory_threshold_percent(self) -> float: ...
    @property
    def sustain_s(self) -> float: ...
    @property
    def fail_checks_to_block(self) -> int: ...
    @property
    def ok_checks_to_unblock(self) -> int: ...
    @property
    def retry_after_s(self) -> int: ...


class RateLimitSettings(Protocol):
    """The token bucket's size and refill rate (the sidecar's RateLimitConfig)."""

    @property
    def burst(self) -> int: ...
    @property
    def sustained_per_s(self) -> float: ...


@dataclass(frozen=True)
class PressureSample:
    """CPU and memory use in percent of what this lane may use; `origin` says where they came from."""

    cpu_percent: float
    memory_percent: float
    origin: str = "injected"

    def as_dict(self) -> dict[str, Any]:
        return {"cpu_percent": self.cpu_percent, "memory_percent": self.memory_percent, "origin": self.origin}


class PressureSource(Protocol):
    def sample(self) -> PressureSample: ...


class SaturationSource(Protocol):
    """The model tiers' own distress (the sidecar's UpstreamSaturation): tier name → why it is saturated."""

    def saturated_tiers(self) -> dict[str, str]: ...
    def snapshot(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CheckResult:
    """One pressure check: did it fail, which sources failed it and why, and the state after it."""

    failed: bool
    failing_sources: dict[str, Any] = field(default_factory=dict)
    blocked: bool = False
    sample: PressureSample | None = None


@dataclass(frozen=True)
class AdmissionDecision:
    """Whether one request may use model capacity; if not, why and when to come back."""

    allowed: bool
    reason: Refusal | None = None
    retry_after_s: int = 0

    def refused(self) -> Refused:
        """The refusal to raise for a request that was not allowed."""
        if self.allowed or self.reason is None:
            raise ValueError("an allowed request is not refused")
        message = (
            "the lane is under sustained pressure; model work is paused"
            if self.reason is Refusal.GUARDIAN_EMERGENCY
            else "rate limit exceeded"
        )
        return Refused(self.reason, message, retry_after_s=self.retry_after_s)


ALLOWED = AdmissionDecision(allowed=True)


class Guardian:
    """Pressure checks, the blocked state they drive, and the rate limit, behind `check()` and `admit()`."""

    def __init__(
        self,
        config: GuardianSettings,
        rate_limit: RateLimitSettings,
        *,
        local: PressureSource | None = None,
        upstream: SaturationSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._local = local
        self._upstream = upstream
        self._clock = clock
        self._bucket = TokenBucket(rate_limit.burst, rate_limit.sustained_per_s, clock=clock)
        # check() runs in a worker thread (it may read files); admit() on the event loop.
        self._lock = threading.Lock()
        self._created = clock()
        self._blocked = False
        self._high_since: float | None = None
        self._last_sample: PressureSample | None = None
        self._failing: dict[str, Any] = {}
        self._consecutive_fails = 0
        self._consecutive_oks = 0
        self._checks = 0
        self._failed_checks = 0
        self._emergency_blocks = 0
        self._decided = 0
        self._allowed = 0
        self._rejections = {GUARDIAN_EMERGENCY: 0, RATE_LIMITED: 0}
        self._calls_per_second: deque[list[int]] = deque()  # [whole second, admit() calls in it]

    # ----- pressure checks -----------------------------------------------------------------------

    def check(self) -> CheckResult:
        """Sample every configured source once and update the blocked state."""
        config = self._config
        if not config.enabled:
            return CheckResult(failed=False, blocked=False)
        # Sources are sampled outside the lock: reading cgroup files must not hold up admit().
        local = self._local if "local" in config.sources else None
        upstream = self._upstream if "upstream" in config.sources else None
        sample = local.sample() if local is not None else None
        saturated = upstream.saturated_tiers() if upstream is not None else {}
        with self._lock:
            now = self._clock()
            failing: dict[str, Any] = {}
            local_reason = self._judge_local(sample, now)
            if local_reason:
                failing["local"] = local_reason
            if saturated:
                failing["upstream"] = saturated
            self._count_check(failing, sample)
            return CheckResult(failed=bool(failing), failing_sources=failing, blocked=self._blocked, sample=sample)

    def _judge_local(self, sample: PressureSample | None, now: float) -> str | None:
        if sample is None:
            self._high_since = None
            return None
        config = self._config
        high = (
            sample.cpu_percent > config.cpu_threshold_percent
            and sample.memory_percent > config.memory_threshold_percent
        )
        if not high:
            # One sample below either threshold breaks the spell: "sustained" means continuous.
            self._high_since = None
            return None
        if self._high_since is None:
            self._high_since = now
        held = now - self._high_since
        if held < config.sustain_s:
            return None
        return f"cpu {sample.cpu_percent:.0f}% and memory {sample.memory_percent:.0f}% for {held:.1f} s"

    def _count_check(self, failing: dict[str, Any], sample: PressureSample | None) -> None:
        config = self._config
        self._checks += 1
        self._failing = failing
        self._last_sample = sample
        if failing:
            self._failed_checks += 1
            self._consecutive_fails += 1
            self._consecutive_oks = 0
            if not self._blocked and self._consecutive_fails >= config.fail_checks_to_block:
                self._blocked = True
                self._emergency_blocks += 1
        else:
            self._consecutive_oks += 1
            self._consecutive_fails = 0
            if self._blocked and self._consecutive_oks >= config.ok_checks_to_unblock:
                self._blocked = False

    # ----- admission -----------------------------------------------------------------------------

    @property
    def blocked(self) -> bool:
        """Whether new model work is refused; a disabled guardian never blocks."""
        return self._blocked and self._config.enabled

    def admit(self, priority: int = 0) -> AdmissionDecision:
        """Decide one request of `priority` that needs model capacity (cache hits and joiners never ask)."""
        with self._lock:
            now = self._clock()
            self._count_call(now)
            self._decided += 1
            if self.blocked:
                # Checked first, so a blocked request leaves the bucket's tokens for after the spell.
                self._rejections[GUARDIAN_EMERGENCY] += 1
                return AdmissionDecision(False, GUARDIAN_EMERGENCY, self._config.retry_after_s)
            keep = tokens_kept_from(priority, self._bucket.burst)
            if not self._bucket.try_acquire(keep=keep):
                self._rejections[RATE_LIMITED] += 1
                retry_after = max(1, math.ceil(self._bucket.retry_after_s(keep=keep)))
                return AdmissionDecision(False, RATE_LIMITED, retry_after)
            self._allowed += 1
            return ALLOWED

    def _count_call(self, now: float) -> None:
        second = math.floor(now)
        if self._calls_per_second and self._calls_per_second[-1][0] == second:
            self._calls_per_second[-1][1] += 1
        else:
            self._calls_per_second.append([second, 1])
        self._forget_calls_before(now)

    def _forget_calls_before(self, now: float) -> None:
        while self._calls_per_second and self._calls_per_second[0][0] <= now - RPS_WINDOW_S:
            self._calls_per_second.popleft()

    def _current_rps(self, now: float) -> float:
        self._forget_calls_before(now)
        calls = sum(count for _, count in self._calls_per_second)
        # Just after start there is less than a full window to divide by.
        span = min(float(RPS_WINDOW_S), max(1.0, now - self._created))
        return calls / span

    # ----- configuration and observation ---------------------------------------------------------

    def reconfigure(self, config: GuardianSettings, rate_limit: RateLimitSettings) -> None:
        """Apply a reloaded configuration; the blocked state, counters and saved tokens are kept.

        The saturation source is not the guardian's: whoever made it reconfigures it.
        """
        with self._lock:
            self._config = config
            self._bucket.reconfigure(rate_limit.burst, rate_limit.sustained_per_s)

    def snapshot(self) -> dict[str, Any]:
        """The guardian's state and counters for /v1/stats and metrics."""
        with self._lock:
            now = self._clock()
            return {
                "enabled": self._config.enabled,
                "blocked": self.blocked,
                "emergency_blocks": self._emergency_blocks,
                "sources": list(self._config.sources),
                "failing_sources": dict(self._failing),
                "last_sample": self._last_sample.as_dict() if self._last_sample else None,
                "pressure_high_for_s": None if self._high_since is None else round(now - self._high_since, 3),
                "checks": self._checks,
                "failed_checks": self._failed_checks,
                "consecutive_failed_checks": self._consecutive_fails,
                "consecutive_ok_checks": self._consecutive_oks,
                "decided": self._decided,
                "allowed": self._allowed,
                "success_rate": self._allowed / self._decided if self._decided else None,
                "rejections": dict(self._rejections),
                "current_rps": round(self._current_rps(now), 3),
                "rate_limit": {
                    "burst": self._bucket.burst,
                    "sustained_per_s": self._bucket.rate_per_s,
                    "tokens": round(self._bucket.tokens, 3),
                    "kept_from_priority": {
                        priority: tokens_kept_from(priority, self._bucket.burst) for priority in (1, 2)
                    },
                },
                "upstream": self._upstream.snapshot() if self._upstream is not None else {},
            }
