"""Suite `fleet`: four app pods' sidecars share one model server, straight to it and through the gate.

One sidecar (an app pod with a conversation) sends chat probes at a steady pace, first alone and
then while the three others (app pods reading emails and long texts aloud) flood the same model
server from closed loops: long texts (priority 1) and email segments (priority 2), each retried
0.2 s after a refusal. The model server is the simulator speaking Ollama's protocol with one or two
parallel slots and Ollama's first-come queue behind them (`--backend sim`), or a real Ollama server
with the shipped SmolLM2 model, two parallel slots, on loopback (`--backend ollama`; the fast tier
of `voicelane stack`, with the sample lane's settings but for its slots). Two variants in one run,
each on fresh processes (the model server too): `direct` (every sidecar calls the model server, as without a gate) and `gate` (every
sidecar calls `voicelane gate` in front of it). Also measured per variant: 20 identical
notifications sent at once, spread over the four sidecars (the model server's calls counted), and
for the gate alone its cost on an idle path (time to the first byte of a one-token call through
the gate and straight to the server, p50 and p99) and its RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import requests

from voicelane.bench.context import SuiteContext
from voicelane.bench.envelope import SuiteOutcome
from voicelane.bench.procs import ProcessMeter, Service, start_gate, start_sidecar, start_sim, wait_sidecar_idle
from voicelane.bench.speech import by_label, raw
from voicelane.bench.stats import ratio, summarize
from voicelane.demo import FEATURES, Tiers, sidecar_config
from voicelane.processes import ManagedProcess, ProcessFailed, free_port
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
# On Ollama the model's own pace sets the times; the server's flags are its slots alone.
OLLAMA_SIZES = {
    "smoke": Size(2, 0.5, 0.5, 2, 4, 5, ()),
    "full": Size(20, 1.2, 3.0, 2, 20, 100, ()),
}
# Ollama writes a call's log line as it ends, a moment after the last byte the caller read.
MODEL_CALL_LOG_SETTLE_S = 0.5
# Ollama's request log line (gin) for a finished model call: `| POST     "/api/chat"`.
OLLAMA_MODEL_CALL = re.compile(r'\|\s+POST\s+"/api/(?:chat|generate)"')


@dataclass(frozen=True)
class ModelServer:
    """The one model server the four sidecars share: where it answers, its model, its count of model calls."""

    url: str
    model: str
    model_calls: Callable[[], int]
    description: dict[str, Any]


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


def _sim_server(stack: contextlib.ExitStack, size: Size, logs: Path, name: str) -> ModelServer:
    sim = start_sim(stack, (*size.server_flags, "--parallel", str(size.slots)), logs, name)

    def model_calls() -> int:
        calls: dict[str, int] = sim.get("/sim/stats")["calls"]
        return sum(n for path, n in calls.items() if path in ("/api/chat", "/api/generate"))

    flags = [*size.server_flags, "--parallel", str(size.slots)]
    return ModelServer(sim.url, "sim-fast", model_calls, {"backend": "voicelane sim", "flags": flags})


@contextlib.contextmanager
def _running_ollama(slots: int, folder: Path) -> Iterator[tuple[ManagedProcess, str, str]]:
    """The fast tier's `ollama serve` of `voicelane stack` on a free loopback port, with `slots` parallel
    slots, its model loaded; yields the process, its URL and the model's name.

    `voicelane.stack.ollama.running_tier` gives each tier the sample lane's slots (the fast tier 1);
    this suite chooses its own, so the server is started here with that one setting changed.
    """
    from voicelane.cache import cache_dir
    from voicelane.stack.build import ensure_model, ensure_ollama
    from voicelane.stack.ollama import MODEL_NAMES, StackError, has_model, import_model, load_model, server_environment

    binary, gguf = ensure_ollama(), ensure_model()
    folder.mkdir(parents=True, exist_ok=True)
    models = cache_dir() / "ollama-models"
    models.mkdir(parents=True, exist_ok=True)
    listen = f"127.0.0.1:{free_port()}"
    url, model = f"http://{listen}", MODEL_NAMES["fast"]
    environment = {**server_environment("fast", listen, folder, models), "OLLAMA_NUM_PARALLEL": str(slots)}
    process = ManagedProcess([str(binary), "serve"], folder / "ollama.log", env=environment).start()
    try:
        try:
            process.wait_http(url + "/api/version", timeout_s=60)
        except ProcessFailed as exc:
            raise StackError(f"ollama serve on {listen} did not start: {exc}") from exc
        if not has_model(url, model):
            import_model(binary, url, model, gguf, folder)
        load_model(url, model)
        yield process, url, model
    finally:
        process.stop()


def _ollama_server(stack: contextlib.ExitStack, size: Size, logs: Path, name: str) -> ModelServer:
    from voicelane.stack.ollama import sample_lane_environment

    process, url, model = stack.enter_context(_running_ollama(size.slots, logs / name))

    def model_calls() -> int:
        # Ollama counts nothing itself; its request log has one line per finished call.
        return len(OLLAMA_MODEL_CALL.findall(process.log()))

    settings = {**sample_lane_environment("fast"), "OLLAMA_NUM_PARALLEL": str(size.slots)}
    description = {"backend": "Ollama, the fast tier of `voicelane stack`", "model": model, "settings": settings}
    return ModelServer(url, model, model_calls, description)


def _variant(ctx: SuiteContext, name: str, gated: bool, size: Size) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        start_server = _ollama_server if ctx.backend == "ollama" else _sim_server
        server = start_server(stack, size, ctx.logs, f"{name}-server")
        url = server.url
        gate = None
        if gated:
            gate = start_gate(stack, server.url, size.slots, ctx.logs, f"{name}-gate")
            url = gate.url
        tiers = Tiers(url, url, "ollama", server.model, server.model, fast_slots=size.slots, deep_slots=size.slots)
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

        if gate is not None:
            # A call the gate still serves for the flood would end inside the window counted below.
            _wait_gate_idle(gate)
        before = _settled_model_calls(server)
        statuses = asyncio.run(
            _identical([s.url for s in sidecars], size.identical, f"Paketet från {name} har kommit.")
        )
        identical = {
            "sent": size.identical,
            "statuses": dict(Counter(map(str, statuses))),
            "model_calls": _settled_model_calls(server) - before,
        }
        ctx.say(
            f"{name}: {size.identical} identical requests over {SIDECARS} sidecars, {identical['model_calls']} model calls"
        )

        result: dict[str, Any] = {
            "chat": chats,
            "flood": flood,
            "identical": identical,
            "raw": {"alone": raw(alone), "flood": raw(flooded)},
            "model_server": server.description,
        }
        if gate is not None:
            result["gate_overhead"] = asyncio.run(_gate_overhead(server, gate, size.overhead_calls))
    return result


def _settled_model_calls(server: ModelServer, timeout_s: float = 30.0) -> int:
    """The server's count of model calls once it has stayed the same for a moment (calls cancelled or
    finished a moment ago are counted by then); the last count read after `timeout_s`."""
    count = server.model_calls()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(MODEL_CALL_LOG_SETTLE_S)
        again = server.model_calls()
        if again == count:
            break
        count = again
    return count


def _wait_gate_idle(gate: Service, timeout_s: float = 120.0) -> bool:
    """Wait until the gate has no model call running or waiting (its own /metrics); False on timeout."""
    from prometheus_client.parser import text_string_to_metric_families

    busy_families = {"voicelane_gate_running_requests", "voicelane_gate_queued_requests"}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = requests.get(gate.url + "/metrics", timeout=10).text
        busy = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name in busy_families
            for sample in family.samples
        )
        if not busy:
            return True
        time.sleep(0.2)
    return False


async def _first_byte_s(session: aiohttp.ClientSession, url: str, model: str) -> float:
    body = {"model": model, "prompt": "Hej", "stream": True, "options": {"num_predict": 1}}
    sent = time.monotonic()
    async with session.post(url + "/api/generate", json=body) as r:
        await r.content.readany()
        at = time.monotonic() - sent
        await r.read()
    return at


async def _gate_overhead(server: ModelServer, gate: Service, calls: int) -> dict[str, Any]:
    """One-token calls one at a time, alternating straight to the server and through the idle gate."""
    meter: ProcessMeter = gate.meter
    direct, gated = [], []
    async with aiohttp.ClientSession() as session:
        for _ in range(calls):
            direct.append(await _first_byte_s(session, server.url, server.model))
            gated.append(await _first_byte_s(session, gate.url, server.model))
            meter.rss_bytes()
    return {
        "direct_first_byte_s": summarize(direct),
        "gate_first_byte_s": summarize(gated),
        "gate_rss_bytes": meter.peak_rss_bytes,
    }


def run(ctx: SuiteContext) -> SuiteOutcome:
    size = (OLLAMA_SIZES if ctx.backend == "ollama" else SIZES)[ctx.size]
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
        "backend": ctx.backend,
        "model_server_slots": size.slots,
        "model_server": variants["gate"]["model_server"],
        "gate": f"voicelane gate --slots {size.slots} (one slot kept for chats)",
        "sidecars_config": "voicelane.demo.sidecar_config with every feature on, both tiers the one server",
        "identical_requests": size.identical,
    }
    notes = [
        "Chat TTFA statistics cover the probes answered with audio; a probe the sidecar answered from the "
        "original text because the model missed the deadline counts as a fallback.",
        "Model calls are the server's own count of /api/chat and /api/generate calls: the simulator's "
        "/sim/stats, or the lines of Ollama's request log.",
    ]
    if ctx.smoke:
        notes.append("Smoke size: a few requests; the figures check the harness, not the gate.")
    return SuiteOutcome(settings=settings, results=variants, ratios=ratios, notes=notes)
