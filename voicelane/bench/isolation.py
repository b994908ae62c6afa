"""Suite `isolation`: does a flood of email work and over-limit bursts slow down chat?

Steady probe chats are spoken alone, then again on the same schedule while emails (a
TL;DR each, then their segments in the background) and bursts of distinct chats beyond
the rate limit flood the sidecar. The same two phases run through the lane (every feature
on) and through the baseline (features off, as `voicelane demo` defines it: one FIFO queue,
every request to the deep tier, no admission control), each in front of fresh simulated
fast and deep tiers. Reported: chat TTFA p50/p95 per phase and variant, what was refused,
and the ratios flood/alone and baseline/lane.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from voicelane.bench.context import SuiteContext
from voicelane.bench.envelope import SuiteOutcome
from voicelane.bench.procs import start_sidecar, start_sim_tiers
from voicelane.bench.speech import by_label, raw
from voicelane.bench.stats import ratio
from voicelane.bench.tiers import SMOKE_DEEP, SMOKE_FAST
from voicelane.demo import FEATURES, SIM_DEEP, SIM_FAST, sidecar_config
from voicelane.workload import EMAILS, Measurement, Step, replay


@dataclass(frozen=True)
class Size:
    probes: int
    probe_interval_s: float
    bursts: int
    burst_size: int
    emails: int
    fast_flags: tuple[str, ...]
    deep_flags: tuple[str, ...]


SIZES = {
    "smoke": Size(2, 0.3, 1, 10, 1, SMOKE_FAST, SMOKE_DEEP),
    "full": Size(10, 1.2, 2, 10, 2, SIM_FAST, SIM_DEEP),
}


def probe_steps(size: Size, phase: str) -> list[Step]:
    return [
        Step(
            round(0.5 + i * size.probe_interval_s, 3), "chat", "chat", f"Probe {phase} {i}: are we still on for lunch?"
        )
        for i in range(size.probes)
    ]


def flood_steps(size: Size) -> list[Step]:
    """Emails first (their segments then run in the background), then the bursts spread over the probes."""
    span = size.probes * size.probe_interval_s
    steps = [
        Step(round(0.2 + k * 0.5, 3), "email", "email", f"(Flood {k}) {EMAILS[k % len(EMAILS)]}")
        for k in range(size.emails)
    ]
    for b in range(size.bursts):
        at = round(span * (b + 1) / (size.bursts + 1), 3)
        steps.extend(
            Step(at, "burst", "chat", f"Burst {b} message {n}: can you check the weekend plan?")
            for n in range(size.burst_size)
        )
    return steps


def _variant(ctx: SuiteContext, name: str, enabled: set[str], size: Size) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tiers, _, _ = start_sim_tiers(stack, size.fast_flags, size.deep_flags, ctx.logs, name)
        config = sidecar_config(tiers, enabled=enabled)
        sidecar = start_sidecar(stack, config, ctx.logs, f"{name}-sidecar")
        phases: dict[str, list[Measurement]] = {}
        for phase in ("alone", "flood"):
            steps = probe_steps(size, f"{name}-{phase}")
            if phase == "flood":
                steps = sorted([*steps, *flood_steps(size)], key=lambda s: s.at_s)
            phases[phase] = asyncio.run(replay(sidecar.url, steps, timeout_s=300.0))
            chats = by_label(phases[phase]).get("chat", {})
            ctx.say(
                f"{name} {phase}: chat p95 {chats.get('ttfa_s', {}).get('p95')} s, "
                f"{chats.get('answered')}/{chats.get('sent')} answered"
            )
        stats = sidecar.get("/v1/stats")
    return {
        "features": sorted(enabled),
        "config": config,
        "phases": {phase: by_label(measured) for phase, measured in phases.items()},
        "raw": {phase: raw(measured) for phase, measured in phases.items()},
        "sidecar_stats": {
            key: stats.get(key) for key in ("guardian", "queue", "single_flight", "cache", "tts", "ttfa", "followups")
        },
    }


def _chat(variant: dict[str, Any], phase: str, q: str) -> float | None:
    value: float | None = variant["phases"][phase].get("chat", {}).get("ttfa_s", {}).get(q)
    return value


def run(ctx: SuiteContext) -> SuiteOutcome:
    size = SIZES[ctx.size]
    variants = {
        "lane": _variant(ctx, "lane", set(FEATURES), size),
        "baseline": _variant(ctx, "baseline", set(), size),
    }
    ratios: dict[str, float | None] = {}
    for q in ("p50", "p95"):
        for name, variant in variants.items():
            ratios[f"{name}_chat_flood_vs_alone_{q}"] = ratio(_chat(variant, "flood", q), _chat(variant, "alone", q))
        ratios[f"baseline_vs_lane_chat_under_flood_{q}"] = ratio(
            _chat(variants["baseline"], "flood", q), _chat(variants["lane"], "flood", q)
        )
    settings = {
        "probe_chats": size.probes,
        "probe_interval_s": size.probe_interval_s,
        "bursts": size.bursts,
        "burst_size": size.burst_size,
        "emails": size.emails,
        "sim_fast_flags": list(size.fast_flags),
        "sim_deep_flags": list(size.deep_flags),
        "lane": "voicelane.demo.sidecar_config with every feature on",
        "baseline": "voicelane.demo.sidecar_config with every feature off",
    }
    notes = [
        "Chat TTFA statistics cover the probe chats that were answered with audio; refused probes "
        "(429 rate_limited or queue_full) are counted under 'refused' and have no TTFA.",
        "The lane speaks the original text when the model misses the class deadline (counted as fallbacks); "
        "the baseline has no deadline.",
    ]
    if ctx.smoke:
        notes.append("Smoke size: near-instant simulated tiers; the figures check the harness, not the lane.")
    results = {name: variant for name, variant in variants.items()}
    return SuiteOutcome(settings=settings, results=results, ratios=ratios, notes=notes)
