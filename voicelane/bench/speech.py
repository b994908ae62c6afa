"""Spoken requests measured from the client: TTFA per request, and summaries per label.

TTFA is measured the way the demo measures it (voicelane.workload): from sending
`POST /v1/speak` with `"format": "pcm"` to the first body byte, which is then audio.
`speak_sequentially` reuses one connection for a closed loop of requests (cache hits,
one-at-a-time comparisons); timed, concurrent scripts go through `workload.replay`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from voicelane.bench.stats import summarize
from voicelane.workload import Measurement, Step


async def speak_sequentially(url: str, steps: Sequence[Step], *, timeout_s: float = 120.0) -> list[Measurement]:
    """Send each step after the previous one finished (their `at_s` is ignored), on one kept-alive connection."""
    measurements: list[Measurement] = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        start = time.monotonic()
        for step in steps:
            measurements.append(await speak_once(session, url, step, start))
    return measurements


async def speak_once(session: aiohttp.ClientSession, url: str, step: Step, start: float) -> Measurement:
    sent = time.monotonic()
    ttfa: float | None = None
    size = 0
    body = {"text": step.text, "source": step.source, "format": "pcm"}
    try:
        async with session.post(url + "/v1/speak", json=body) as response:
            if response.status == 200:
                async for chunk in response.content.iter_any():
                    if chunk and ttfa is None:
                        ttfa = time.monotonic() - sent
                    size += len(chunk)
            else:
                await response.read()
            headers = response.headers
            return Measurement(
                step,
                response.status,
                sent - start,
                ttfa,
                time.monotonic() - sent,
                size,
                headers.get("X-Voicelane-Tier"),
                headers.get("X-Voicelane-Shared") == "true",
                headers.get("X-Voicelane-Fallback"),
            )
    except (aiohttp.ClientError, TimeoutError):
        return Measurement(step, 0, sent - start, None, time.monotonic() - sent, size, None, False, None)


def by_label(measurements: Sequence[Measurement]) -> dict[str, dict[str, Any]]:
    """Per label: how many were sent, answered with audio, refused (429/503), failed; TTFA statistics."""
    labels = sorted({m.step.label for m in measurements})
    report: dict[str, dict[str, Any]] = {}
    for label in labels:
        subset = [m for m in measurements if m.step.label == label]
        report[label] = {
            "sent": len(subset),
            "answered": sum(1 for m in subset if m.ttfa_s is not None),
            "refused": sum(1 for m in subset if m.status in (429, 503)),
            "failed": sum(
                1 for m in subset if m.status not in (200, 429, 503) or (m.status == 200 and m.ttfa_s is None)
            ),
            "shared": sum(1 for m in subset if m.shared),
            "fallbacks": sum(1 for m in subset if m.fallback),
            "statuses": _statuses(subset),
            "ttfa_s": summarize(m.ttfa_s for m in subset),
        }
    return report


def raw(measurements: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Each request compactly: label, when it was sent, status, TTFA, total time, tier, shared, fallback."""
    return [
        {
            "label": m.step.label,
            "sent_s": round(m.started_s, 4),
            "status": m.status,
            "ttfa_s": None if m.ttfa_s is None else round(m.ttfa_s, 5),
            "total_s": round(m.total_s, 5),
            "audio_bytes": m.audio_bytes,
            "tier": m.tier,
            "shared": m.shared,
            "fallback": m.fallback,
        }
        for m in measurements
    ]


def _statuses(measurements: Sequence[Measurement]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in measurements:
        counts[str(m.status)] = counts.get(str(m.status), 0) + 1
    return counts
