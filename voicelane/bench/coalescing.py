"""Suite `coalescing`: many identical spoken requests at once, with and without single-flight.

One hundred identical `/v1/speak` requests are sent at once to a sidecar with single-flight
and the cache on (the lane) and, in the same run, to one with both off (the reference);
both sidecars are otherwise the same, their admission caps raised and their TTFA targets
moved out of reach, so that no request is refused or answered by the deadline fallback and
the reference really makes every call. Reported: upstream calls
(the simulator's count), TTS syntheses (the sidecar's count), the leader's TTFA against
its joiners', and then the TTFA of repeats served from the audio cache (p99).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from voicelane.bench.context import SuiteContext
from voicelane.bench.envelope import SuiteOutcome
from voicelane.bench.procs import Service, start_sidecar, start_sim
from voicelane.bench.speech import by_label, raw, speak_sequentially
from voicelane.bench.stats import counter_delta, ratio, summarize
from voicelane.demo import FEATURES, Tiers, sidecar_config
from voicelane.sidecar.config import SingleFlightConfig
from voicelane.workload import Measurement, Step, replay

TEXT = "Ditt möte med Anna börjar om fem minuter i rum B."
SOURCE = "notification"
# Equal for both variants: caps high enough that none of the identical requests is refused, and
# targets so far away that no request falls back to the original text (which would skip its call).
OVERRIDES = {
    "rate_limit": {"burst": 100000, "sustained_per_s": 100000},
    "scheduler": {"max_running_per_priority": 4, "max_waiting": 10000},
    "phrase_bank": {"enabled": False},
    "ttfa": {"targets": {"chat": 60, "notification": 60, "email_tldr": 60}},
}


@dataclass(frozen=True)
class Size:
    identical: int
    cache_repeats: int
    sim_flags: tuple[str, ...]


SIZES = {
    "smoke": Size(5, 5, ("--ttft-ms", "20", "--tokens-per-s", "400", "--parallel", "4")),
    "full": Size(100, 200, ("--ttft-ms", "250", "--tokens-per-s", "30", "--parallel", "4")),
}


def config_for(sim_url: str, enabled: set[str]) -> dict[str, Any]:
    tiers = Tiers(sim_url, sim_url, "ollama", "sim-fast", "sim-deep")
    config = sidecar_config(tiers, enabled=enabled)
    config.update(OVERRIDES)
    return config


def _upstream_calls(sim: Service) -> int:
    calls = sim.get("/sim/stats")["calls"]
    return int(calls.get("/api/chat", 0))


def _variant(ctx: SuiteContext, name: str, enabled: set[str], size: Size, sim: Service) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        sidecar = start_sidecar(stack, config_for(sim.url, enabled), ctx.logs, f"{name}-sidecar")
        before = sidecar.get("/v1/stats")
        calls_before = _upstream_calls(sim)
        steps = [Step(0.0, "identical", SOURCE, TEXT) for _ in range(size.identical)]
        started = time.monotonic()
        burst = asyncio.run(replay(sidecar.url, steps, timeout_s=300.0))
        elapsed = time.monotonic() - started
        after = sidecar.get("/v1/stats")
        calls_after = _upstream_calls(sim)
        ctx.say(f"{name}: {size.identical} identical requests answered in {elapsed:.1f} s")
        result: dict[str, Any] = {
            "features": sorted(enabled),
            "identical_requests": _identical_figures(burst),
            "all_answered_within_s": round(elapsed, 3),
            "upstream_calls": calls_after - calls_before,
            "tts_syntheses": counter_delta(before["tts"], after["tts"], "syntheses"),
            "single_flight": after.get("single_flight"),
            "raw": raw(burst),
        }
        if "cache" in enabled:
            # Past the single-flight window, a repeat can only be served from the audio cache.
            time.sleep(SingleFlightConfig().window_s + 0.2)
            hits_before = after["cache"].get("hits", 0)
            repeats = [Step(0.0, "cache_hit", SOURCE, TEXT) for _ in range(size.cache_repeats)]
            measured = asyncio.run(speak_sequentially(sidecar.url, repeats))
            final = sidecar.get("/v1/stats")
            result["cache_repeats"] = {
                **by_label(measured)["cache_hit"],
                "served_from_cache": sum(1 for m in measured if m.tier == "cache"),
                "cache_hits_counted": final["cache"].get("hits", 0) - hits_before,
                "upstream_calls": _upstream_calls(sim) - calls_after,
                "tts_syntheses": counter_delta(after["tts"], final["tts"], "syntheses"),
            }
            ctx.say(f"{name}: cache-hit TTFA p99 {result['cache_repeats']['ttfa_s']['p99']} s")
    return result


def _identical_figures(measured: list[Measurement]) -> dict[str, Any]:
    answered = [m for m in measured if m.ttfa_s is not None]
    leaders = [m for m in answered if not m.shared]
    joiners = [m for m in answered if m.shared]
    # With coalescing there is one leader; without it every request leads its own work.
    first_leader = min(leaders, key=lambda m: m.started_s, default=None)
    return {
        **by_label(measured)["identical"],
        "leaders": len(leaders),
        "joiners": len(joiners),
        "leader_ttfa_s": None if first_leader is None or first_leader.ttfa_s is None else round(first_leader.ttfa_s, 6),
        "leaders_ttfa_s": summarize(m.ttfa_s for m in leaders),
        "joiners_ttfa_s": summarize(m.ttfa_s for m in joiners),
    }


def run(ctx: SuiteContext) -> SuiteOutcome:
    size = SIZES[ctx.size]
    with contextlib.ExitStack() as stack:
        sim = start_sim(stack, size.sim_flags, ctx.logs, "sim")
        lane = _variant(ctx, "lane", set(FEATURES), size, sim)
        reference = _variant(ctx, "reference", set(FEATURES) - {"coalescing", "cache"}, size, sim)
    lane_burst, ref_burst = lane["identical_requests"], reference["identical_requests"]
    leader = lane_burst["leader_ttfa_s"]
    ratios = {
        "reference_vs_lane_upstream_calls": ratio(reference["upstream_calls"], lane["upstream_calls"]),
        "reference_vs_lane_tts_syntheses": ratio(reference["tts_syntheses"], lane["tts_syntheses"]),
        "lane_joiners_p50_vs_leader_ttfa": ratio(lane_burst["joiners_ttfa_s"]["p50"], leader),
        "lane_joiners_max_vs_leader_ttfa": ratio(lane_burst["joiners_ttfa_s"]["max"], leader),
        "reference_vs_lane_ttfa_p50": ratio(ref_burst["ttfa_s"]["p50"], lane_burst["ttfa_s"]["p50"]),
        "reference_vs_lane_ttfa_p95": ratio(ref_burst["ttfa_s"]["p95"], lane_burst["ttfa_s"]["p95"]),
        "lane_cache_hit_p99_vs_leader_ttfa": ratio(lane["cache_repeats"]["ttfa_s"]["p99"], leader),
    }
    settings = {
        "identical_requests": size.identical,
        "cache_repeats_sequential": size.cache_repeats,
        "text": TEXT,
        "source": SOURCE,
        "sim_flags": list(size.sim_flags),
        "lane": "voicelane.demo.sidecar_config, every feature on, with the overrides",
        "reference": "the same with single-flight and cache off",
        "overrides": OVERRIDES,
    }
    notes = [
        "With the default targets the reference would speak most of its requests from the deadline fallback "
        "(the original text) and skip their model calls; the targets are moved out of reach to count the calls.",
        "The identical requests are sent at once by one client; the leader is the request that started "
        "the work (X-Voicelane-Shared: false), every other answered one is a joiner.",
        "Cache repeats run one after another on one kept-alive connection, after the single-flight window "
        "has passed, so each is served from the audio cache.",
    ]
    if ctx.smoke:
        notes.append("Smoke size: a near-instant simulator; the figures check the harness, not the lane.")
    return SuiteOutcome(settings=settings, results={"lane": lane, "reference": reference}, ratios=ratios, notes=notes)
