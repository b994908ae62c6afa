"""Suite `overhead`: what the sidecar adds to a model call, against calling the simulator directly.

A fixed-schedule client sends unique texts at 50 and 200 requests/s straight to an instant
simulator (no time to first token, a very high token rate) and, in the same run, through the
sidecar in front of that same simulator, both by `POST /v1/text` and by the transparent
`POST /api/chat`. Phases alternate between the three paths for a few rounds so that drift on
a shared machine hits all of them alike. Reported: the latency the sidecar adds (p50/p99),
its CPU seconds per request (against the simulator's own), and its RSS idle and under load.
The sidecar's admission caps are raised for this suite so that nothing is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

from voicelane.bench.context import SuiteContext
from voicelane.bench.envelope import SuiteOutcome
from voicelane.bench.openloop import Call, Sample, run_open_loop
from voicelane.bench.procs import ProcessMeter, Service, start_sidecar, start_sim
from voicelane.bench.stats import difference, per_item, ratio, summarize

PATHS = ("direct", "sidecar_text", "sidecar_chat")
SIM_FLAGS = ("--ttft-ms", "0", "--tokens-per-s", "100000", "--parallel", "64", "--max-queue", "10000")
# Admission must not refuse any request of this suite: it measures the path, not the policy.
RAISED_CAPS = {
    "rate_limit": {"burst": 100000, "sustained_per_s": 100000},
    "scheduler": {"max_running_per_priority": 64, "max_waiting": 10000},
}


@dataclass(frozen=True)
class Size:
    rates: tuple[int, ...]
    phase_s: float
    rounds: int
    idle_s: float


SIZES = {
    "smoke": Size(rates=(50, 200), phase_s=0.2, rounds=1, idle_s=0.5),
    "full": Size(rates=(50, 200), phase_s=8.0, rounds=2, idle_s=5.0),
}


def sidecar_config(sim_url: str) -> dict[str, Any]:
    return {
        "upstreams": {
            tier: {"url": sim_url, "protocol": "ollama", "model": "bench-model", "num_predict": 64}
            for tier in ("fast", "deep")
        },
        **RAISED_CAPS,
        "phrase_bank": {"enabled": False},
    }


def calls_for(path: str, tag: str, count: int) -> list[Call]:
    """Unique texts, so no request is a cache hit or a coalesced joiner."""
    calls = []
    for index in range(count):
        text = f"Probe {tag} number {index}: can we move the stand-up to half past nine tomorrow?"
        if path == "sidecar_text":
            calls.append(Call("/v1/text", {"text": text, "source": "chat"}))
        else:
            message = {"model": "bench-model", "messages": [{"role": "user", "content": text}], "stream": True}
            calls.append(Call("/api/chat", message))
    return calls


class PeakRss:
    """Reads the meters' RSS every `interval_s` on a thread while active, so peaks under load are seen."""

    def __init__(self, meters: list[ProcessMeter], interval_s: float = 0.25) -> None:
        self.meters = meters
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for meter in self.meters:
                with contextlib.suppress(Exception):
                    meter.rss_bytes()

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _phase(
    ctx: SuiteContext, target: Service, path: str, rate: int, tag: str, size: Size, meters: dict[str, ProcessMeter]
) -> dict[str, Any]:
    count = max(1, round(rate * size.phase_s))
    calls = calls_for(path, tag, count)
    cpu_before = {name: meter.cpu_s() for name, meter in meters.items()}
    started = time.monotonic()
    samples: list[Sample] = asyncio.run(run_open_loop(target.url, calls, rate))
    elapsed = time.monotonic() - started
    cpu = {name: round(meter.cpu_s() - cpu_before[name], 4) for name, meter in meters.items()}
    ok = sum(1 for s in samples if s.ok)
    ctx.say(f"{rate} rps {path:<12} {ok}/{len(samples)} ok in {elapsed:.1f} s")
    return {"samples": samples, "cpu_s": cpu, "elapsed_s": elapsed}


def run(ctx: SuiteContext) -> SuiteOutcome:
    size = SIZES[ctx.size]
    notes = [
        "Admission caps raised for this suite so nothing is refused: "
        f"rate_limit {RAISED_CAPS['rate_limit']}, scheduler {RAISED_CAPS['scheduler']}; "
        "phrase bank off; every other setting is the sidecar's default.",
        "Latency runs from the moment a request was due on the fixed schedule to its last body byte; "
        "added latency is the difference of the percentiles (sidecar p minus direct p), not a percentile of "
        "differences.",
        "Client, simulator and sidecar share the machine's cores, so the sidecar's figures include "
        "contention with the load generator.",
    ]
    with contextlib.ExitStack() as stack:
        sim = start_sim(stack, SIM_FLAGS, ctx.logs, "sim")
        sidecar = start_sidecar(stack, sidecar_config(sim.url), ctx.logs, "sidecar")
        meters = {"sidecar": sidecar.meter, "sim": sim.meter}
        sidecar_meter = meters["sidecar"]

        # Idle: the sidecar's own background loops (health probes, guardian samples) and memory.
        idle_cpu_before = sidecar_meter.cpu_s()
        time.sleep(size.idle_s)
        idle_cpu_rate = (sidecar_meter.cpu_s() - idle_cpu_before) / size.idle_s
        rss_idle = sidecar_meter.rss_bytes()
        sidecar_meter.reset_peak()

        phases: dict[int, dict[str, list[dict[str, Any]]]] = {rate: {path: [] for path in PATHS} for rate in size.rates}
        with PeakRss([sidecar_meter]):
            for rate in size.rates:
                for round_index in range(size.rounds):
                    # Rotate the order every round so no path always runs first (or last).
                    order = PATHS[round_index % 3 :] + PATHS[: round_index % 3]
                    for path in order:
                        target = sim if path == "direct" else sidecar
                        tag = f"{rate}-{path}-{round_index}"
                        phases[rate][path].append(_phase(ctx, target, path, rate, tag, size, meters))
        rss_peak = sidecar_meter.peak_rss_bytes
        time.sleep(min(1.0, size.idle_s))
        rss_after = sidecar_meter.rss_bytes()
        sidecar_stats = sidecar.get("/v1/stats")

    results: dict[str, Any] = {"rates": {}, "raw_latency_s": {}}
    ratios: dict[str, float | None] = {}
    for rate in size.rates:
        per_path: dict[str, Any] = {}
        raw: dict[str, list[float | None]] = {}
        for path in PATHS:
            samples = [s for phase in phases[rate][path] for s in phase["samples"]]
            sidecar_cpu = sum(phase["cpu_s"]["sidecar"] for phase in phases[rate][path])
            sim_cpu = sum(phase["cpu_s"]["sim"] for phase in phases[rate][path])
            elapsed = sum(phase["elapsed_s"] for phase in phases[rate][path])
            entry: dict[str, Any] = {
                "sent": len(samples),
                "ok": sum(1 for s in samples if s.ok),
                "failed": sum(1 for s in samples if not s.ok),
                "statuses": _count_statuses(samples),
                "latency_s": summarize(s.latency_s for s in samples if s.ok),
                "send_lag_s": summarize(s.send_lag_s for s in samples),
                "sim_cpu_s": round(sim_cpu, 4),
                "sim_cpu_s_per_request": per_item(sim_cpu, len(samples)),
            }
            if path != "direct":
                net = sidecar_cpu - idle_cpu_rate * elapsed
                entry["sidecar_cpu_s"] = round(sidecar_cpu, 4)
                entry["sidecar_cpu_s_per_request"] = per_item(sidecar_cpu, len(samples))
                entry["sidecar_cpu_s_per_request_net_of_idle"] = per_item(max(0.0, net), len(samples))
            per_path[path] = entry
            raw[path] = [None if s.latency_s is None else round(s.latency_s, 6) for s in samples]
        direct = per_path["direct"]["latency_s"]
        per_path["added_latency_s"] = {
            path: {
                "p50": difference(per_path[path]["latency_s"]["p50"], direct["p50"]),
                "p99": difference(per_path[path]["latency_s"]["p99"], direct["p99"]),
            }
            for path in ("sidecar_text", "sidecar_chat")
        }
        results["rates"][str(rate)] = per_path
        results["raw_latency_s"][str(rate)] = raw
        for path in ("sidecar_text", "sidecar_chat"):
            for q in ("p50", "p99"):
                ratios[f"{path}_vs_direct_latency_{q}_at_{rate}rps"] = ratio(per_path[path]["latency_s"][q], direct[q])
            ratios[f"{path}_cpu_per_request_vs_sim_at_{rate}rps"] = ratio(
                per_path[path]["sidecar_cpu_s_per_request"], per_path["direct"]["sim_cpu_s_per_request"]
            )
    results["sidecar_rss_bytes"] = {"idle": rss_idle, "under_load_peak": rss_peak, "after_load": rss_after}
    results["sidecar_idle_cpu_s_per_s"] = round(idle_cpu_rate, 5)
    results["sidecar_counters"] = {
        "guardian_rejections": sidecar_stats.get("guardian", {}).get("rejections"),
        "queue_refused_total": sidecar_stats.get("queue", {}).get("refused_total"),
        "cache": sidecar_stats.get("cache"),
        "single_flight": sidecar_stats.get("single_flight"),
    }
    ratios["sidecar_rss_under_load_vs_idle"] = ratio(rss_peak, rss_idle)
    settings = {
        "rates_per_s": list(size.rates),
        "phase_s": size.phase_s,
        "rounds": size.rounds,
        "idle_window_s": size.idle_s,
        "paths": {
            "direct": "POST {sim}/api/chat, stream true, read to the end",
            "sidecar_text": "POST {sidecar}/v1/text {text, source: chat}",
            "sidecar_chat": "POST {sidecar}/api/chat (transparent), stream true, read to the end",
        },
        "sim_flags": list(SIM_FLAGS),
        "sidecar_overrides": {**RAISED_CAPS, "phrase_bank": {"enabled": False}},
    }
    return SuiteOutcome(settings=settings, results=results, ratios=ratios, notes=notes)


def _count_statuses(samples: list[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sample in samples:
        counts[str(sample.status)] = counts.get(str(sample.status), 0) + 1
    return counts
