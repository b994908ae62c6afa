"""The operator's own Prometheus metrics and health probes, served over HTTP.

Every series has the `voicelane_operator_` prefix: reconciles by result, reconcile errors,
reconcile durations, and lanes by condition (how many lanes have each condition True). The
registry is per instance, so tests read exactly what one operator recorded.

`start_server` serves, on the operator's own event loop: /metrics; /healthz, which answers only
while that loop runs (a hung loop fails the kubelet's liveness probe); /readyz, 200 once kopf
reports it is ready. kopf's own liveness endpoint can be served as well (main.py, --liveness).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from voicelane.operator.status import CONDITION_TYPES

RESULTS: tuple[str, ...] = ("applied", "unchanged", "invalid", "error")
LaneKey = tuple[str, str]  # (namespace, name)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = Counter(
            "voicelane_operator_reconciles",
            "Lane reconciles by result: applied (something written), unchanged, invalid (spec), error.",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "voicelane_operator_reconcile_errors",
            "Reconciles that failed on an API error or conflict and will be retried.",
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "voicelane_operator_reconcile_duration_seconds",
            "Time to reconcile one lane: render, read and write the children, write the status.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.lanes = Gauge(
            "voicelane_operator_lanes",
            "Lanes known to this operator whose condition is True, by condition type.",
            ["condition"],
            registry=self.registry,
        )
        for result in RESULTS:
            self.reconciles.labels(result=result)
        for condition in CONDITION_TYPES:
            self.lanes.labels(condition=condition).set(0)
        self._lock = threading.Lock()
        self._conditions: dict[LaneKey, frozenset[str]] = {}

    def observe_reconcile(self, result: str, duration_s: float) -> None:
        self.reconciles.labels(result=result).inc()
        self.reconcile_duration.observe(duration_s)
        if result == "error":
            self.reconcile_errors.inc()

    def observe_lane(self, key: LaneKey, true_conditions: Iterable[str]) -> None:
        with self._lock:
            self._conditions[key] = frozenset(true_conditions)
            self._refresh()

    def forget_lane(self, key: LaneKey) -> None:
        with self._lock:
            self._conditions.pop(key, None)
            self._refresh()

    @property
    def lane_count(self) -> int:
        return len(self._conditions)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _refresh(self) -> None:
        for condition in CONDITION_TYPES:
            count = sum(1 for conditions in self._conditions.values() if condition in conditions)
            self.lanes.labels(condition=condition).set(count)


def probe_app(metrics: OperatorMetrics, *, ready: asyncio.Event) -> web.Application:
    async def serve_metrics(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "lanes": metrics.lane_count})

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"ready": ready.is_set()}, status=200 if ready.is_set() else 503)

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_server(metrics: OperatorMetrics, host: str, port: int, *, ready: asyncio.Event) -> web.AppRunner:
    """Serve /metrics, /healthz and /readyz on the running loop; call `.cleanup()` on the result to stop."""
    runner = web.AppRunner(probe_app(metrics, ready=ready), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
