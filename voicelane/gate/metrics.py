"""The gate's Prometheus metrics: what Ollama does not export, under the `voicelane_gate_` prefix.

Queue gauges and model gauges are read from the live gate at scrape time. The totals
`voicelane_gate_queued_requests` and `voicelane_gate_running_requests` are the two model-server
figures inference gateways route on (vLLM's `vllm:num_requests_waiting` and
`vllm:num_requests_running`); a gateway that lets the metric names be configured can read them here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from voicelane.gate.errors import REJECT_REASONS

if TYPE_CHECKING:
    from voicelane.gate.server import Gate

FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class _LiveState(Collector):
    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    def collect(self) -> Iterable[Metric]:
        snapshot = self._gate.scheduler.snapshot()
        waiting = GaugeMetricFamily(
            "voicelane_gate_requests_waiting", "Model calls waiting, by priority.", labels=["priority"]
        )
        running = GaugeMetricFamily(
            "voicelane_gate_requests_running", "Model calls running, by priority.", labels=["priority"]
        )
        for level, count in snapshot["waiting"].items():
            waiting.add_metric([str(level)], count)
        for level, count in snapshot["running"].items():
            running.add_metric([str(level)], count)
        yield waiting
        yield running
        yield GaugeMetricFamily(
            "voicelane_gate_queued_requests", "Model calls waiting, all priorities.", value=snapshot["waiting_total"]
        )
        yield GaugeMetricFamily(
            "voicelane_gate_running_requests", "Model calls running, all priorities.", value=snapshot["running_total"]
        )
        yield GaugeMetricFamily(
            "voicelane_gate_slots", "Parallel slots of the model server.", value=self._gate.settings.slots
        )
        yield GaugeMetricFamily(
            "voicelane_gate_guardian_blocked",
            "1 while the guardian refuses model work.",
            value=self._gate.guardian.blocked,
        )
        loaded = GaugeMetricFamily(
            "voicelane_gate_model_loaded_bytes", "Loaded models and their size.", labels=["model"]
        )
        expiry = GaugeMetricFamily(
            "voicelane_gate_model_expires_in_seconds", "Seconds until a loaded model is unloaded.", labels=["model"]
        )
        for model in self._gate.models.loaded:
            loaded.add_metric([model.name], model.size_bytes)
            if model.expires_in_s is not None:
                expiry.add_metric([model.name], model.expires_in_s)
        yield loaded
        yield expiry


class GateMetrics:
    """All of one gate's metric families, in a registry of its own."""

    def __init__(self, gate: Gate) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "voicelane_gate_calls", "Model calls arriving, by priority and whether they joined an identical one.",
            ["priority", "role"], registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "voicelane_gate_requests", "Model calls answered, by priority, class and outcome (ok, refused, upstream_failed).",
            ["priority", "request_class", "outcome"], registry=r,
        )  # fmt: skip
        self.rejects = Counter("voicelane_gate_rejects", "Model calls refused, by reason.", ["reason"], registry=r)
        self.queue_wait = Histogram(
            "voicelane_gate_queue_wait_seconds", "Time from arrival to a slot, by priority.", ["priority"],
            buckets=WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "voicelane_gate_time_to_first_token_seconds", "Time from a slot to the model's first bytes, by priority.",
            ["priority"], buckets=FIRST_TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.load = Histogram(
            "voicelane_gate_model_load_seconds", "Time the model server spent loading the model for a call.",
            buckets=LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.guardian_checks = Counter(
            "voicelane_gate_guardian_checks", "Pressure checks of the model server, by result.", ["result"], registry=r
        )
        for reason in REJECT_REASONS:
            self.rejects.labels(reason.value)
        r.register(_LiveState(gate))

    def observe_final(self, tail: bytes) -> None:
        """Record what the model server reports in its final answer (Ollama's load_duration, in ns)."""
        stats = final_stats(tail)
        if stats is not None and isinstance(stats.get("load_duration"), int):
            self.load.observe(stats["load_duration"] / 1e9)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def final_stats(tail: bytes) -> dict[str, Any] | None:
    """The last JSON object of an Ollama NDJSON (or single JSON) answer, if it is the final one."""
    for line in reversed(tail.strip().splitlines()):
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            return data if isinstance(data, dict) and data.get("done") else None
    return None
