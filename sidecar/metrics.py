"""The sidecar's Prometheus metrics: `voicelane_` prefix, base units, `_total` counters.

Counters and histograms are updated on the request path (the lane's through the observer
methods below, see voicelane.core.observer); gauges that mirror state
(queue depth, circuits, cache size, guardian) are read from the live components at
scrape time by a collector, so they can never disagree with /v1/stats.
Labels carry classes, tiers, reasons and priorities only, never request text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voicelane.core.refusals import Refused

# `_created` series double every counter and histogram in the scrape and nothing here reads them.
disable_created_metrics()

# Fine resolution under one second (to tell 100 ms from 200 ms), edges at each class target.
TTFA_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 5.0, 7.5, 10.0, 20.0)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class _StateCollector(Collector):
    """Exposes gauges computed from a snapshot function at scrape time."""

    def __init__(self, snapshot: Callable[[], Iterable[Metric]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        return list(self._snapshot())


class SidecarMetrics:
    """All metric families of one sidecar instance, in a registry of its own; the lane's observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "voicelane_requests_total",
            "Requests finished, by endpoint, class and outcome.",
            ["endpoint", "request_class", "outcome"],
            registry=r,
        )
        self.admissions = Counter(
            "voicelane_admission_decisions_total",
            "Admission decisions for model work, by decision and reason.",
            ["decision", "reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "voicelane_queue_wait_seconds",
            "Time spent waiting for a model slot, by priority.",
            ["priority"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.singleflight = Counter(
            "voicelane_singleflight_requests_total",
            "Requests by single-flight role (leader runs, joiner shares).",
            ["role"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "voicelane_cache_lookups_total",
            "Cache lookups by result (hit or miss) and kind (text or audio).",
            ["result", "kind"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "voicelane_upstream_requests_total",
            "Calls to model tiers by outcome.",
            ["tier", "outcome"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "voicelane_upstream_errors_total",
            "Failed calls to model tiers by error kind.",
            ["tier", "kind"],
            registry=r,
        )
        self.upstream_ttft = Histogram(
            "voicelane_upstream_time_to_first_token_seconds",
            "Time from dispatch to the model's first token.",
            ["tier"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.failovers = Counter(
            "voicelane_failovers_total",
            "Requests moved to the other tier.",
            ["from_tier", "to_tier"],
            registry=r,
        )
        self.guardian_checks = Counter(
            "voicelane_guardian_checks_total",
            "Guardian pressure checks by result.",
            ["result"],
            registry=r,
        )
        self.config_reloads = Counter(
            "voicelane_config_reloads_total",
            "Configuration reloads by result.",
            ["result"],
            registry=r,
        )
        self.ttfa = Histogram(
            "voicelane_ttfa_seconds",
            "Time to first audio byte sent, by class.",
            ["request_class"],
            buckets=TTFA_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "voicelane_stage_seconds",
            "Duration of each request stage, by class and stage.",
            ["request_class", "stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.ttfa_target = Counter(
            "voicelane_ttfa_requests_total",
            "Spoken requests by class and whether the first audio met its target.",
            ["request_class", "within_target"],
            registry=r,
        )
        self.fallbacks = Counter(
            "voicelane_fallbacks_total",
            "Requests spoken from the original text instead of the model's, by reason.",
            ["request_class", "reason"],
            registry=r,
        )
        self.alerts = Counter(
            "voicelane_ttfa_alerts_total",
            "In-process TTFA alerts raised, by class and kind.",
            ["request_class", "kind"],
            registry=r,
        )
        self.tts_calls = Counter(
            "voicelane_tts_syntheses_total",
            "Speech syntheses started, by backend and outcome.",
            ["backend", "outcome"],
            registry=r,
        )

    def initialize_series(self, classes: Iterable[str]) -> None:
        """Create the known label combinations at zero, so rate() sees the first event after a start."""
        for request_class in classes:
            for within in ("true", "false"):
                self.ttfa_target.labels(request_class, within)
            for reason in ("deadline", "model_failure", "empty_reply"):
                self.fallbacks.labels(request_class, reason)
            for kind in ("p95_over_target", "consecutive_slow"):
                self.alerts.labels(request_class, kind)
        for decision, reason in (
            ("allowed", "ok"),
            ("rejected", "rate_limited"),
            ("rejected", "guardian_emergency"),
            ("rejected", "queue_full"),
        ):
            self.admissions.labels(decision, reason)
        for source, target in (("fast", "deep"), ("deep", "fast")):
            self.failovers.labels(source, target)
        for result in ("ok", "failed"):
            self.guardian_checks.labels(result)
        for role in ("leader", "joiner"):
            self.singleflight.labels(role)

    def add_state(self, snapshot: Callable[[], Iterable[Metric]]) -> None:
        self.registry.register(_StateCollector(snapshot))

    # ----- the lane's observer (voicelane.core.observer.LaneObserver) -----------------------------

    def looked_up(self, *, hit: bool) -> None:
        self.cache_lookups.labels("hit" if hit else "miss", "text").inc()

    def coalesced(self, *, joined: bool) -> None:
        self.singleflight.labels("joiner" if joined else "leader").inc()

    def admitted(self, priority: int) -> None:
        self.admissions.labels("allowed", "ok").inc()

    def refused(self, refusal: Refused) -> None:
        self.admissions.labels("rejected", refusal.code).inc()

    def dispatched(self, priority: int, waited_s: float) -> None:
        self.queue_wait.labels(str(priority)).observe(waited_s)

    def first_token(self, tier: str, seconds: float) -> None:
        self.upstream_ttft.labels(tier).observe(seconds)

    def call_done(self, tier: str) -> None:
        self.upstream_requests.labels(tier, "ok").inc()

    def call_failed(self, tier: str, kind: str) -> None:
        self.upstream_requests.labels(tier, "error").inc()
        self.upstream_errors.labels(tier, kind).inc()

    def failed_over(self, from_tier: str, to_tier: str) -> None:
        self.failovers.labels(from_tier, to_tier).inc()

    def pressure_checked(self, *, failed: bool) -> None:
        self.guardian_checks.labels("failed" if failed else "ok").inc()


def gauge(name: str, documentation: str, labels: list[str], samples: Iterable[tuple[list[str], float]]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in samples:
        family.add_metric(label_values, value)
    return family


def plain_gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=value)


def plain_counter(name: str, documentation: str, value: float) -> Metric:
    """A counter kept by a component and read at scrape time (exposed as `<name>_total`)."""
    return CounterMetricFamily(name, documentation, value=value)
