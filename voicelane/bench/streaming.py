"""Suite `streaming`: time to first audio with sentence streaming against waiting for the full text.

Multi-sentence chat messages are spoken one at a time through two sidecars in front of the
same model tiers: one speaks each sentence as soon as the model completes it (the lane), the
other waits for the whole rewrite before speaking (`tts.sentence_streaming: false`, the
baseline's behaviour); the order alternates per message. On `--backend llama` the model is
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
from voicelane.bench.speech import by_label, raw, speak_sequentially
from voicelane.bench.stats import ratio, summarize
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
VARIANTS = {
    "streaming": set(FEATURES),
    "full_text": set(FEATURES) - {"streaming"},
}
OVERRIDES = {
    "ttfa": {"targets": {"chat": 60, "notification": 60, "email_tldr": 60}},
    "phrase_bank": {"enabled": False},
}


@dataclass(frozen=True)
class Size:
    messages: int


SIZES = {"smoke": Size(1), "full": Size(len(MESSAGES))}


def run(ctx: SuiteContext) -> SuiteOutcome:
    size = SIZES[ctx.size]
    measured: dict[str, list[Measurement]] = {name: [] for name in VARIANTS}
    with contextlib.ExitStack() as stack:
        tiers, tier_description = start_tiers(ctx, stack)
        sidecars: dict[str, Service] = {}
        for name, enabled in VARIANTS.items():
            config = {**sidecar_config(tiers, enabled=enabled), **OVERRIDES}
            sidecars[name] = start_sidecar(stack, config, ctx.logs, f"{name}-sidecar")
        for index, text in enumerate(MESSAGES[: size.messages]):
            order = list(VARIANTS) if index % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                step = Step(0.0, "chat", "chat", text)
                measured[name] += asyncio.run(speak_sequentially(sidecars[name].url, [step]))
            ctx.say(
                f"message {index}: TTFA streaming {measured['streaming'][-1].ttfa_s}, "
                f"full text {measured['full_text'][-1].ttfa_s}"
            )
        stages = {name: sidecar.get("/v1/stats").get("ttfa") for name, sidecar in sidecars.items()}
    results: dict[str, Any] = {}
    for name, measurements in measured.items():
        results[name] = {
            **by_label(measurements)["chat"],
            "total_s": summarize(m.total_s for m in measurements if m.ttfa_s is not None),
            "sidecar_ttfa_stats": stages[name],
            "raw": raw(measurements),
        }
    ratios = {
        f"full_text_vs_streaming_ttfa_{q}": ratio(results["full_text"]["ttfa_s"][q], results["streaming"]["ttfa_s"][q])
        for q in ("p50", "p95", "mean")
    }
    ratios["full_text_vs_streaming_total_p50"] = ratio(
        results["full_text"]["total_s"]["p50"], results["streaming"]["total_s"]["p50"]
    )
    settings = {
        "messages": size.messages,
        "texts": list(MESSAGES[: size.messages]),
        "tiers": tier_description,
        "variants": {
            "streaming": "voicelane.demo.sidecar_config, every feature on",
            "full_text": "the same with tts.sentence_streaming false",
        },
        "overrides": OVERRIDES,
    }
    notes = [
        "Messages are spoken one at a time (no queueing); the variant that goes first alternates per message.",
    ]
    if ctx.backend == "llama":
        notes.append("The model's wording varies per message; both variants receive the same rewrite prompt.")
    if ctx.smoke:
        notes.append("Smoke size: one message; the figures check the harness.")
    return SuiteOutcome(settings=settings, results=results, ratios=ratios, notes=notes)
