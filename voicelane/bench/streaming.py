"""Suite `streaming`: time to first audio with sentence streaming against waiting for the full text.

Multi-sentence chat messages are spoken one at a time through two sidecars in front of the
same model tiers: one speaks each sentence as soon as the model completes it (the lane), the
other waits for the whole rewrite before speaking (`tts.sentence_streaming: false`, the
baseline's behaviour); the order alternates per message. On `--backend ollama` the model is
the real local one; on `--backend sim` the simulated tiers. Both sidecars get TTFA targets of
60 s, so no answer is replaced by the deadline fallback and the pipeline itself is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from voicelane.bench.context import SuiteContext
from voicelane.bench.envelope import SuiteOutcome
from voicelane.bench.procs import Service, start_sidecar
from voicelane.bench.speech import raw, speak_sequentially
from voicelane.bench.stats import percentile, ratio, summarize
from voicelane.bench.tiers import start_tiers
from voicelane.demo import FEATURES, sidecar_config
from voicelane.workload import Measurement, Step

MESSAGES = (
    "Hej! Ses vi vid lunch idag? Jag har bokat bord på det nya stället vid torget. "
    "Säg till om du inte hinner, så flyttar jag bokningen.",
    "Tack för mötet i morse. Jag skickar protokollet i eftermiddag. Kan du kolla siffrorna i bilaga två före fredag?",
    "Tåget är försenat en halvtimme. Börja mötet utan mig. Jag ringer in så fort jag sitter på tåget.",
    "Paketet kom fram i dag. Det var tyvärr fel storlek på skorna. "
    "Jag skickar tillbaka dem i morgon och beställer en storlek större.",
    "Grattis på födelsedagen! Vi ses på middagen i kväll klockan sju. Ta med dig jackan, det ska bli kallt.",
    "Servern startades om i natt. Allt fungerar igen sedan klockan fem. Vi skriver en rapport om vad som hände.",
    "Glöm inte tandläkaren i morgon. Tiden är kvart över nio. Ring dem om du behöver boka om.",
    "Jag har läst ditt förslag. Det ser bra ut i stort. Vi behöver bara diskutera budgeten innan vi bestämmer oss.",
)
# The cache is off in both, so that a message repeated in a later round reaches the model again.
WARM_UP = "Det här är en uppvärmning. Den räknas inte."
VARIANTS = {
    "streaming": set(FEATURES) - {"cache"},
    "full_text": set(FEATURES) - {"cache", "streaming"},
}
OVERRIDES = {
    "ttfa": {"targets": {"chat": 60, "notification": 60, "email_tldr": 60}},
    "phrase_bank": {"enabled": False},
}


@dataclass(frozen=True)
class Size:
    messages: int
    rounds: int  # every message once per round; the variant that goes first alternates


SIZES = {"smoke": Size(1, 1), "full": Size(len(MESSAGES), 2)}


def run(ctx: SuiteContext) -> SuiteOutcome:
    size = SIZES[ctx.size]
    measured: dict[str, list[Measurement]] = {name: [] for name in VARIANTS}
    with contextlib.ExitStack() as stack:
        tiers, tier_description = start_tiers(ctx, stack)
        sidecars: dict[str, Service] = {}
        for name, enabled in VARIANTS.items():
            config = {**sidecar_config(tiers, enabled=enabled), **OVERRIDES}
            sidecars[name] = start_sidecar(stack, config, ctx.logs, f"{name}-sidecar")
        for sidecar in sidecars.values():
            # Not measured: the model server's first request pays for loading its caches.
            asyncio.run(speak_sequentially(sidecar.url, [Step(0.0, "warm-up", "chat", WARM_UP)]))
        for round_index in range(size.rounds):
            for index, text in enumerate(MESSAGES[: size.messages]):
                # A model server may reuse the prompt it just processed: whoever goes second gains, so
                # each message goes first once per variant over two rounds.
                first = (index + round_index) % 2 == 0
                for name in list(VARIANTS) if first else list(reversed(VARIANTS)):
                    step = Step(float(round_index), f"message-{index}", "chat", text)
                    measured[name] += asyncio.run(speak_sequentially(sidecars[name].url, [step]))
                ctx.say(
                    f"round {round_index} message {index}: TTFA streaming {_seconds(measured['streaming'][-1].ttfa_s)}, "
                    f"full text {_seconds(measured['full_text'][-1].ttfa_s)}"
                )
        stages = {name: sidecar.get("/v1/stats").get("ttfa") for name, sidecar in sidecars.items()}
    results: dict[str, Any] = {}
    for name, measurements in measured.items():
        answered = [m for m in measurements if m.ttfa_s is not None]
        results[name] = {
            "sent": len(measurements),
            "answered": len(answered),
            "failed": len(measurements) - len(answered),
            "fallbacks": sum(1 for m in measurements if m.fallback),
            "ttfa_s": summarize(m.ttfa_s for m in answered),
            "total_s": summarize(m.total_s for m in answered),
            "per_message_mean_ttfa_s": _per_message_mean(measurements),
            "sidecar_ttfa_stats": stages[name],
            "raw": raw(measurements),
        }
    ratios = {
        f"full_text_vs_streaming_ttfa_{q}": ratio(results["full_text"]["ttfa_s"][q], results["streaming"]["ttfa_s"][q])
        for q in ("p50", "p95", "mean")
    }
    # Per message, both variants saw the same model output and (over the rounds) the same order,
    # so the median of the per-message ratios is the least disturbed by a busy machine.
    paired = [
        ratio(results["full_text"]["per_message_mean_ttfa_s"].get(label), mean_streaming)
        for label, mean_streaming in results["streaming"]["per_message_mean_ttfa_s"].items()
    ]
    median = percentile([r for r in paired if r is not None], 0.5)
    ratios["full_text_vs_streaming_ttfa_median_of_per_message_ratios"] = None if median is None else round(median, 4)
    ratios["full_text_vs_streaming_total_p50"] = ratio(
        results["full_text"]["total_s"]["p50"], results["streaming"]["total_s"]["p50"]
    )
    settings = {
        "messages": size.messages,
        "rounds": size.rounds,
        "texts": list(MESSAGES[: size.messages]),
        "tiers": tier_description,
        "variants": {
            "streaming": "voicelane.demo.sidecar_config, every feature on except the cache",
            "full_text": "the same with tts.sentence_streaming false",
        },
        "overrides": OVERRIDES,
    }
    notes = [
        "Each sidecar speaks one warm-up message first, not counted. Messages are spoken one at a time "
        "(no queueing); per round, the variant that goes first alternates per message, and across rounds "
        "every message goes first once for each variant.",
    ]
    if ctx.backend == "ollama":
        notes.append("The model's wording varies per message; both variants receive the same rewrite prompt.")
    if ctx.smoke:
        notes.append("Smoke size: one message; the figures check the harness.")
    return SuiteOutcome(settings=settings, results=results, ratios=ratios, notes=notes)


def _per_message_mean(measurements: list[Measurement]) -> dict[str, float]:
    by_message: dict[str, list[float]] = {}
    for m in measurements:
        if m.ttfa_s is not None:
            by_message.setdefault(m.step.label, []).append(m.ttfa_s)
    return {label: round(sum(values) / len(values), 6) for label, values in sorted(by_message.items())}


def _seconds(value: float | None) -> str:
    """A TTFA for the progress line; a request that got no audio says so instead of crashing the run."""
    return "no audio" if value is None else f"{value:.3f} s"
