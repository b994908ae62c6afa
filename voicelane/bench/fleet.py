"""Suite `fleet`: four app pods' sidecars share one model server, straight to it and through the gate.

One sidecar (an app pod with a conversation) sends chat probes at a steady pace, first alone and
then while the three others (app pods reading emails and long texts aloud) flood the same model
server from closed loops: long texts (priority 1) and email segments (priority 2), each retried
0.2 s after a refusal. The model server is the simulator speaking Ollama's protocol with one or two
parallel slots and Ollama's first-come queue behind them. Two variants in one run, each on fresh
processes: `direct` (every sidecar calls the model server, as without a gate) and `gate` (every
sidecar calls `voicelane gate` in front of it). Also measured per variant: 20 identical
notifications sent at once, spread over the four sidecars (the model server's calls counted), and
for the gate alone its cost on an idle path (time to the first byte of a one-token call through
the gate and straight to the server, p50 and p99) and its RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp

from voicelane.bench.context import SuiteContext
from voicelane.bench.envelope import SuiteOutcome
from voicelane.bench.procs import Service, start_gate, start_sidecar, start_sim, wait_sidecar_idle
from voicelane.bench.speech import by_label, raw
from voicelane.bench.stats import ratio, summarize
from voicelane.demo import FEATURES, Tiers, sidecar_config
from voicelane.workload import EMAILS, Measurement, Step, replay

SIDECARS = 4
FLOODERS = 3
RETRY_AFTER_REFUSAL_S = 0.2
LONG_TEXT = (
    "Hej alla, här kommer en längre sammanfattning av veckan: leveransen är klar, kunden har godkänt "
    "testerna, vi har två öppna ärenden kvar och nästa möte är på torsdag klockan tio i stora rummet."
)


@dataclass(frozen=True)
class Size:
    probes: int
    probe_interval_s: float
    warmup_s: float
    slots: int
    identical: int
    overhead_calls: int
    server_flags: tuple[str, ...]


SIZES = {
    "smoke": Size(3, 0.5, 0.5, 2, 8, 10, ("--ttft-ms", "20", "--tokens-per-s", "400")),
    "full": Size(20, 1.2, 2.0, 2, 20, 200, ("--ttft-ms", "250", "--tokens-per-s", "30")),
}


def probe_steps(size: Size, phase: str) -> list[Step]:
    return [
        Step(round(i * size.probe_interval_s, 3), "chat", "chat", f"Hej {phase} {i}, ses vi vid lunch?")
        for i in range(size.probes)
    ]


async def _closed_loop(url: str, source: str, texts: list[str], stop: asyncio.Event, counts: Counter[int]) -> None:
    """One client that sends its next text as soon as the last is done, pausing briefly after a refusal."""
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        n = 0
        while not stop.is_set():
            text = f"({n}) {texts[n % len(texts)]}"
            n += 1
            try:
                async with session.post(url + "/v1/speak", json={"text": text, "source": source, "format": "pcm"}) as r:
                    await r.read()
                    counts[r.status] += 1
                    refused = r.status in (429, 503)
            except (aiohttp.ClientError, TimeoutError):
                counts[0] += 1
                refused = True
            if refused:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY_AFTER_REFUSAL_S)


async def _probes_under_flood(
    prober: str, flooders: list[str], size: Size, phase: str
) -> tuple[list[Measurement], dict]:
    stop = asyncio.Event()
    counts: dict[str, Counter[int]] = {"long_text": Counter(), "email_segment": Counter()}
    loops = []
    for url in flooders:
        loops.append(asyncio.create_task(_closed_loop(url, "chat", [LONG_TEXT], stop, counts["long_text"])))
        loops.append(
            asyncio.create_task(_closed_loop(url, "email_segment", list(EMAILS), stop, counts["email_segment"]))
        )
    await asyncio.sleep(size.warmup_s)
    started = time.monotonic()
    measured = await replay(prober, probe_steps(size, phase), timeout_s=120.0)
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.gather(*loops)
    flood = {
        kind: {"statuses": {str(k): v for k, v in sorted(c.items())}, "answered_per_s": round(c[200] / elapsed, 3)}
        for kind, c in counts.items()
    }
    return measured, flood


async def _identical(sidecars: list[str], count: int, text: str) -> list[int]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one(url: str) -> int:
            async with session.post(url + "/v1/speak", json={"text": text, "source": "notification"}) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(sidecars[i % len(sidecars)]) for i in range(count))))


def _model_calls(server: Service) -> int:
    calls: dict[str, int] = server.get("/sim/stats")["calls"]
    return sum(n for path, n in calls.items() if path in ("/api/chat", "/api/generate"))


def _variant(ctx: SuiteContext, name: str, gated: bool, size: Size) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        server = start_sim(stack, (*size.server_flags, "--parallel", str(size.slots)), ctx.logs, f"{name}-server")
        url = server.url
        gate = None
        if gated:
            gate = start_gate(stack, server.url, size.slots, ctx.logs, f"{name}-gate")
            url = gate.url
        tiers = Tiers(url, url, "ollama", "sim-fast", "sim-fast", fast_slots=size.slots, deep_slots=size.slots)
        config = sidecar_config(tiers, enabled=set(FEATURES))
        sidecars = [start_sidecar(stack, config, ctx.logs, f"{name}-sidecar-{n}") for n in range(SIDECARS)]
        prober, flooders = sidecars[0].url, [s.url for s in sidecars[1 : 1 + FLOODERS]]

        alone = asyncio.run(replay(prober, probe_steps(size, f"{name}-alone"), timeout_s=120.0))
        flooded, flood = asyncio.run(_probes_under_flood(prober, flooders, size, f"{name}-flood"))
        for sidecar in sidecars:
            wait_sidecar_idle(sidecar)
        chats = {"alone": by_label(alone).get("chat", {}), "flood": by_label(flooded).get("chat", {})}
        ctx.say(
            f"{name}: chat p95 alone {chats['alone'].get('ttfa_s', {}).get('p95')} s, "
            f"under the flood {chats['flood'].get('ttfa_s', {}).get('p95')} s"
        )

        before = _model_calls(server)
        statuses = asyncio.run(
            _identical([s.url for s in sidecars], size.identical, f"Paketet från {name} har kommit.")
        )
        identical = {
            "sent": size.identical,
            "statuses": dict(Counter(map(str, statuses))),
            "model_calls": _model_calls(server) - before,
        }
        ctx.say(
            f"{name}: {size.identical} identical requests over {SIDECARS} sidecars, {identical['model_calls']} model calls"
        )

        result: dict[str, Any] = {
            "chat": chats,
            "flood": flood,
            "identical": identical,
            "raw": {"alone": raw(alone), "flood": raw(flooded)},
        }
        if gate is not None:
            result["gate_overhead"] = asyncio.run(_gate_overhead(server.url, gate, size.overhead_calls))
    return result


async def _first_byte_s(session: aiohttp.ClientSession, url: str) -> float:
    body = {"model": "sim-fast", "prompt": "Hej", "stream": True, "options": {"num_predict": 1}}
    sent = time.monotonic()
    async with session.post(url + "/api/generate", json=body) as r:
        await r.content.readany()
        at = time.monotonic() - sent
        await r.read()
    return at


async def _gate_overhead(server: str, gate: Service, calls: int) -> dict[str, Any]:
    """One-token calls one at a time, alternating straight to the server and through the idle gate."""
    meter = gate.meter
    direct, gated = [], []
    async with aiohttp.ClientSession() as session:
        for _ in range(calls):
            direct.append(await _first_byte_s(session, server))
            gated.append(await _first_byte_s(session, gate.url))
            meter.rss_bytes()
    return {
        "direct_first_byte_s": summarize(direct),
        "gate_first_byte_s": summarize(gated),
        "gate_rss_bytes": meter.peak_rss_bytes,
    }


def run(ctx: SuiteContext) -> SuiteOutcome:
    size = SIZES[ctx.size]
    variants = {"direct": _variant(ctx, "direct", False, size), "gate": _variant(ctx, "gate", True, size)}

    def chat(variant: str, phase: str, q: str) -> float | None:
        value: float | None = variants[variant]["chat"][phase].get("ttfa_s", {}).get(q)
        return value

    ratios: dict[str, float | None] = {}
    for q in ("p50", "p95"):
        for variant in variants:
            ratios[f"{variant}_chat_flood_vs_alone_{q}"] = ratio(chat(variant, "flood", q), chat(variant, "alone", q))
        ratios[f"direct_vs_gate_chat_under_flood_{q}"] = ratio(chat("direct", "flood", q), chat("gate", "flood", q))
    overhead = variants["gate"]["gate_overhead"]
    for q in ("p50", "p99"):
        ratios[f"gate_vs_direct_idle_first_byte_{q}"] = ratio(
            overhead["gate_first_byte_s"].get(q), overhead["direct_first_byte_s"].get(q)
        )
    settings = {
        "sidecars": SIDECARS,
        "flooding_sidecars": FLOODERS,
        "flood": "per flooding sidecar one closed loop of long texts (chat, priority 1) and one of email "
        f"segments (priority 2), {RETRY_AFTER_REFUSAL_S} s pause after a refusal",
        "probes": size.probes,
        "probe_interval_s": size.probe_interval_s,
        "model_server_slots": size.slots,
        "model_server_flags": list(size.server_flags),
        "gate": f"voicelane gate --slots {size.slots} (one slot kept for chats)",
        "sidecars_config": "voicelane.demo.sidecar_config with every feature on, both tiers the one server",
        "identical_requests": size.identical,
    }
    notes = [
        "Chat TTFA statistics cover the probes answered with audio; a probe the sidecar answered from the "
        "original text because the model missed the deadline counts as a fallback.",
        "Model calls are the simulator's own count of /api/chat and /api/generate calls.",
    ]
    if ctx.smoke:
        notes.append("Smoke size: a near-instant model server; the figures check the harness, not the gate.")
    return SuiteOutcome(settings=settings, results=variants, ratios=ratios, notes=notes)
