"""A realistic mixed voice workload and the client that replays it, measuring TTFA per request.

The demo and the benchmarks both replay a script of timed steps against a sidecar over
real HTTP and measure, client-side, the time from sending a request to receiving its
first audio byte. Raw PCM is requested so the first body byte is audio, not a header.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

# Chat templates: filled with a name and a number so that, as in real chat, texts rarely repeat
# exactly; repeats are the duplicate scenario's job.
CHATS = (
    "Hej {name}! Ses vi vid lunch klockan {hour}?",
    "Kan du ringa mig, {name}? Jag är ledig om {minutes} minuter.",
    "Tack {name} för hjälpen med rapporten, sida {minutes} blev jättebra.",
    "{name}, I'm running {minutes} minutes late, start without me.",
    "Perfekt {name}, då bokar jag ett bord till klockan {hour}.",
    "Did you get the {minutes} slides I sent this morning, {name}?",
    "Vi flyttar mötet till rum {minutes}, säg till {name}.",
    "Great work on release {minutes}, {name}, the team is impressed.",
)
NAMES = ("Anna", "Erik", "Maria", "Sam", "Lena", "Omar", "Sara", "Johan")
NOTIFICATIONS = (
    "Ditt paket har levererats till brevlådan.",
    "Påminnelse: tandläkare i morgon kl. 09.30.",
    "Your build finished successfully.",
    "Batteriet är nere på 15 procent.",
    "Ny kommentar på ditt inlägg.",
)
EMAILS = (
    "Hej alla! Här kommer en sammanfattning av veckans arbete. Vi har slutfört migreringen av "
    "databasen och alla tjänster körs nu mot det nya klustret. Nästa vecka fokuserar vi på "
    "prestanda: svarstiderna för sökningen ska ner under 200 ms. Anna tar ansvar för mätningarna "
    "och Erik ser över indexen. Budgeten för kvartalet ligger fortfarande inom ramen, men vi behöver "
    "prioritera om två mindre projekt. Hör av er om ni har frågor. Hälsningar, Maria",
    "Hi team, quick update on the customer rollout. Three of the five pilot sites are live and the "
    "feedback has been positive overall. The main complaint is the login flow on older tablets, "
    "which we will fix in the next patch. Please review the attached plan before Thursday's meeting "
    "and add your comments. We also need a volunteer to run the training session next week. Thanks, Sam",
)


@dataclass(frozen=True)
class Step:
    """One request of the script: when to send it (seconds from the start) and what."""

    at_s: float
    label: str  # chat, notification, email, duplicate, burst
    source: str
    text: str


@dataclass
class Measurement:
    step: Step
    status: int
    started_s: float
    ttfa_s: float | None
    total_s: float
    audio_bytes: int
    tier: str | None
    shared: bool
    fallback: str | None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["step"] = asdict(self.step)
        return data


def mixed_workload(*, duration_s: float = 20.0, seed: int = 7, pace: float = 1.0) -> list[Step]:
    """Chats and notifications through the run, a few emails, duplicates within 2 s, one burst.

    `pace` stretches the gaps between chats and notifications: a real model on a small
    machine answers a few requests per second at most, and a steady load far beyond that
    only measures the queue cap.
    """
    rng = random.Random(seed)
    steps: list[Step] = []
    t = 0.5
    while t < duration_s:
        chat = rng.choice(CHATS).format(name=rng.choice(NAMES), hour=rng.randint(8, 18), minutes=rng.randint(2, 59))
        steps.append(Step(round(t, 3), "chat", "chat", chat))
        t += rng.uniform(0.8, 1.6) * pace
    t = 1.0
    while t < duration_s:
        steps.append(Step(round(t, 3), "notification", "notification", rng.choice(NOTIFICATIONS)))
        t += rng.uniform(2.0, 3.5) * pace
    for index, email in enumerate(EMAILS):
        steps.append(Step(round(2.0 + index * duration_s / 2.5, 3), "email", "email", email))
    # The same notification from four devices within two seconds, three of them at once.
    dup_at = duration_s * 0.35
    dup_text = "Ditt möte börjar om fem minuter."
    steps.extend(Step(round(dup_at + d, 3), "duplicate", "notification", dup_text) for d in (0.0, 0.05, 0.1, 1.2))
    # A burst beyond the rate limit: twelve distinct chats at once.
    burst_at = duration_s * 0.6
    steps.extend(Step(round(burst_at, 3), "burst", "chat", f"Snabbt meddelande nummer {n}.") for n in range(12))
    return sorted(steps, key=lambda s: s.at_s)


async def _one(session: aiohttp.ClientSession, url: str, step: Step, start: float) -> Measurement:
    await asyncio.sleep(max(0.0, start + step.at_s - time.monotonic()))
    sent = time.monotonic()
    ttfa: float | None = None
    size = 0
    try:
        async with session.post(
            url + "/v1/speak", json={"text": step.text, "source": step.source, "format": "pcm"}
        ) as r:
            if r.status == 200:
                async for chunk in r.content.iter_any():
                    if chunk and ttfa is None:
                        ttfa = time.monotonic() - sent
                    size += len(chunk)
            else:
                await r.read()
            return Measurement(
                step,
                r.status,
                sent - start,
                ttfa,
                time.monotonic() - sent,
                size,
                r.headers.get("X-Voicelane-Tier"),
                r.headers.get("X-Voicelane-Shared") == "true",
                r.headers.get("X-Voicelane-Fallback"),
            )
    except (aiohttp.ClientError, TimeoutError):
        return Measurement(step, 0, sent - start, None, time.monotonic() - sent, size, None, False, None)


@dataclass(frozen=True)
class ReplayProgress:
    """How far a replay has come: steps whose time has come, steps answered, seconds since its start."""

    total: int
    sent: int
    done: int
    elapsed_s: float


async def replay(
    url: str,
    steps: Sequence[Step],
    *,
    timeout_s: float = 120.0,
    progress: Callable[[ReplayProgress], None] | None = None,
    progress_every_s: float = 5.0,
) -> list[Measurement]:
    """Send every step at its time (concurrently, as independent clients would) and measure each.

    With `progress`, it is called every `progress_every_s` while requests are outstanding, so a
    long replay (a baseline draining its backlog) shows it is moving.
    """
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=0)
    done = 0

    async def measured(session: aiohttp.ClientSession, step: Step, start: float) -> Measurement:
        nonlocal done
        try:
            return await _one(session, url, step, start)
        finally:
            done += 1

    async def report(start: float) -> None:
        assert progress is not None
        while True:
            await asyncio.sleep(progress_every_s)
            now = time.monotonic()
            sent = sum(1 for step in steps if start + step.at_s <= now)
            progress(ReplayProgress(len(steps), sent, done, now - start))

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.monotonic() + 0.05
        reporter = asyncio.create_task(report(start)) if progress is not None else None
        try:
            return list(await asyncio.gather(*(measured(session, step, start) for step in steps)))
        finally:
            if reporter is not None:
                reporter.cancel()


def quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q * 100) - 1))]


def summarize(measurements: Sequence[Measurement]) -> dict[str, dict[str, Any]]:
    """Per label: count, TTFA p50/p95 of the answered ones, and how many were refused or failed."""
    summary: dict[str, dict[str, Any]] = {}
    for label in ("chat", "notification", "email", "duplicate", "burst"):
        subset = [m for m in measurements if m.step.label == label]
        if not subset:
            continue
        answered = [m.ttfa_s for m in subset if m.ttfa_s is not None]
        summary[label] = {
            "count": len(subset),
            "answered": len(answered),
            "refused": sum(1 for m in subset if m.status in (429, 503)),
            "failed": sum(1 for m in subset if m.status not in (200, 429, 503)),
            "shared": sum(1 for m in subset if m.shared),
            "fallbacks": sum(1 for m in subset if m.fallback),
            "p50_s": quantile(answered, 0.50),
            "p95_s": quantile(answered, 0.95),
        }
    return summary
