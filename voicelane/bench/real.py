"""Suite `real`: the demo's mixed workload on the real local stack, TTFA per class against its target.

The workload of `voicelane demo` (chats, notifications, emails with a TL;DR and segments,
duplicates within 2 s, a burst beyond the rate limit) is replayed through the lane and,
in the same run, through the baseline with every lane feature off, both in front of the
local Ollama stack with the shipped small model (`--backend sim`: the simulated tiers instead).
Reported per label: TTFA p50/p95 of the answered requests, how many were refused or spoken
from the fallback, the class target, the share within it, and baseline/lane ratios. After the
workload (and its email segments) has drained, each variant also speaks chats one at a time on
the idle machine: the unloaded chat TTFA.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from voicelane.bench.context import SuiteContext
from voicelane.bench.envelope import SuiteOutcome
from voicelane.bench.procs import start_sidecar, wait_sidecar_idle
from voicelane.bench.speech import by_label, raw, speak_sequentially
from voicelane.bench.stats import ratio
from voicelane.bench.tiers import start_tiers
from voicelane.demo import FEATURES, Tiers, sidecar_config
from voicelane.sidecar.config import TTFATargets
from voicelane.workload import CHATS, NAMES, Measurement, Step, mixed_workload, replay

# Which class target each label of the workload is held to.
TARGET_CLASS = {"chat": "chat", "burst": "chat", "notification": "notification", "duplicate": "notification"}
TARGET_CLASS_EMAIL = "email_tldr"


@dataclass(frozen=True)
class Size:
    duration_s: float
    labels: tuple[str, ...] | None  # keep only the first request of each of these labels (smoke)
    drain: bool  # wait for email segments between the variants
    unloaded_chats: int  # chats spoken one at a time after the workload


# The smoke run skips the email and the burst: on the real model their long replies dominate it.
SIZES = {"smoke": Size(3.0, ("chat", "notification", "duplicate"), False, 1), "full": Size(30.0, None, True, 12)}
UNLOADED = "unloaded_chat"


def workload(size: Size) -> list[Step]:
    steps = mixed_workload(duration_s=size.duration_s)
    if size.labels is None:
        return steps
    kept: dict[str, Step] = {}
    for step in steps:
        if step.label in size.labels:
            kept.setdefault(step.label, step)
    return sorted(kept.values(), key=lambda s: s.at_s)


def unloaded_chats(count: int, workload_texts: set[str]) -> list[Step]:
    """Chats in the workload's style whose texts the workload never sends (so none is a cache hit)."""
    steps: list[Step] = []
    for index in range(len(CHATS) * len(NAMES)):
        text = CHATS[index % len(CHATS)].format(name=NAMES[index // len(CHATS)], hour=13, minutes=61 + index)
        if text not in workload_texts:
            steps.append(Step(0.0, UNLOADED, "chat", text))
        if len(steps) == count:
            break
    return steps


def target_for(label: str) -> float:
    targets = TTFATargets()
    name = TARGET_CLASS.get(label, TARGET_CLASS_EMAIL)
    value: float = getattr(targets, name)
    return value


def _variant(
    ctx: SuiteContext, name: str, enabled: set[str], steps: list[Step], tiers: Tiers, size: Size
) -> dict[str, Any]:
    with contextlib.ExitStack() as inner:
        sidecar = start_sidecar(inner, sidecar_config(tiers, enabled=enabled), ctx.logs, f"{name}-sidecar")
        measured: list[Measurement] = asyncio.run(replay(sidecar.url, steps, timeout_s=600.0))
        # The email segments still running would compete with the next variant for the model.
        drained = wait_sidecar_idle(sidecar, timeout_s=600.0) if size.drain else None
        # Read before the unloaded chats, so the stage breakdown is the workload's alone.
        stats = sidecar.get("/v1/stats")
        alone = unloaded_chats(size.unloaded_chats, {step.text for step in steps})
        unloaded: list[Measurement] = asyncio.run(speak_sequentially(sidecar.url, alone, timeout_s=120.0))
    per_label = by_label(measured)
    for label, entry in per_label.items():
        target = target_for(label)
        entry["target_class"] = TARGET_CLASS.get(label, TARGET_CLASS_EMAIL)
        entry["target_s"] = target
        within = sum(1 for m in measured if m.step.label == label and m.ttfa_s is not None and m.ttfa_s <= target)
        entry["within_target"] = within
        entry["within_target_share_of_sent"] = ratio(within, entry["sent"])
        entry["p95_within_target"] = entry["ttfa_s"]["p95"] is not None and entry["ttfa_s"]["p95"] <= target
    chats = per_label.get("chat", {}).get("ttfa_s", {})
    unloaded_summary = by_label(unloaded).get(UNLOADED, {})
    alone_chats = unloaded_summary.get("ttfa_s", {})
    ctx.say(
        f"{name}: chat p50 {chats.get('p50')} s p95 {chats.get('p95')} s; drained afterwards: {drained}; "
        f"unloaded chat p50 {alone_chats.get('p50')} s p95 {alone_chats.get('p95')} s"
    )
    return {
        "features": sorted(enabled),
        "per_label": per_label,
        "unloaded_chat": {**unloaded_summary, "raw": raw(unloaded)},
        "drained_after_replay": drained,
        "sidecar_stats": {
            key: stats.get(key) for key in ("guardian", "single_flight", "cache", "tts", "ttfa", "followups")
        },
        "raw": raw(measured),
    }


def run(ctx: SuiteContext) -> SuiteOutcome:
    size = SIZES[ctx.size]
    steps = workload(size)
    with contextlib.ExitStack() as stack:
        tiers, tier_description = start_tiers(ctx, stack)
        lane = _variant(ctx, "lane", set(FEATURES), steps, tiers, size)
        baseline = _variant(ctx, "baseline", set(), steps, tiers, size)
    ratios: dict[str, float | None] = {}
    for label in sorted(set(lane["per_label"]) | set(baseline["per_label"])):
        for q in ("p50", "p95"):
            lane_q = lane["per_label"].get(label, {}).get("ttfa_s", {}).get(q)
            base_q = baseline["per_label"].get(label, {}).get("ttfa_s", {}).get(q)
            ratios[f"baseline_vs_lane_{label}_ttfa_{q}"] = ratio(base_q, lane_q)
        ratios[f"lane_{label}_p95_vs_target"] = ratio(
            lane["per_label"].get(label, {}).get("ttfa_s", {}).get("p95"), target_for(label)
        )
    for q in ("p50", "p95"):
        ratios[f"baseline_vs_lane_{UNLOADED}_ttfa_{q}"] = ratio(
            baseline["unloaded_chat"].get("ttfa_s", {}).get(q), lane["unloaded_chat"].get("ttfa_s", {}).get(q)
        )
    settings = {
        "workload": f"voicelane.workload.mixed_workload(duration_s={size.duration_s})"
        + (f", only the first {', '.join(size.labels)}" if size.labels else ""),
        "requests": len(steps),
        "unloaded_chats": size.unloaded_chats,
        "by_label": {label: sum(1 for s in steps if s.label == label) for label in sorted({s.label for s in steps})},
        "tiers": tier_description,
        "targets_s": TTFATargets().model_dump(),
        "lane": "voicelane.demo.sidecar_config, every feature on",
        "baseline": "voicelane.demo.sidecar_config, every feature off",
    }
    notes = [
        "Targets: chat and burst are chats (3.0 s), notification and duplicate are notifications (2.5 s), "
        "email is held to the email TL;DR target (3.5 s).",
        "TTFA statistics cover answered requests; refused ones (429/503) are counted separately. The lane speaks "
        "the original text when the model misses the deadline (fallbacks).",
        "The lane runs first, then the baseline, one after the other on the same model servers.",
        "Unloaded chats: after the workload and its email segments are done, chats in the workload's style "
        "(texts it never sent) are spoken one at a time; the stage breakdown in sidecar_stats.ttfa leaves them out.",
    ]
    if ctx.smoke:
        notes.append("Smoke size: one chat, notification and duplicate, no drain; the figures check the harness.")
    return SuiteOutcome(settings=settings, results={"lane": lane, "baseline": baseline}, ratios=ratios, notes=notes)
