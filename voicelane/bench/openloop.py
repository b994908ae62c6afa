"""An open-loop HTTP load generator: requests leave on a fixed schedule, whatever the server does.

A closed loop (send, wait, send) slows down with the server and hides its worst moments;
here request i is due at start + i / rate and is sent then even if earlier ones are still
waiting. Latency is counted from the moment a request was due, not from when the client
managed to send it, so a client that falls behind shows up as latency instead of vanishing
(`send_lag_s` says how far behind it fell).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True)
class Call:
    """One request: a path on the target and its JSON body."""

    path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Sample:
    due_s: float  # seconds from the start of the run
    send_lag_s: float  # how late the client sent it
    latency_s: float | None  # due → last body byte; None when the request failed
    status: int  # HTTP status; 0 when no response came

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.latency_s is not None


async def _one(session: aiohttp.ClientSession, url: str, call: Call, due: float, start: float) -> Sample:
    sent = time.monotonic()
    try:
        async with session.post(url + call.path, json=call.body) as response:
            await response.read()
            done = time.monotonic()
            return Sample(due - start, sent - due, done - due, response.status)
    except (aiohttp.ClientError, TimeoutError):
        return Sample(due - start, sent - due, None, 0)


async def run_open_loop(url: str, calls: Sequence[Call], rate_per_s: float, *, timeout_s: float = 30.0) -> list[Sample]:
    """Send `calls` to `url` at `rate_per_s` on a fixed schedule; one sample per call, in order."""
    if rate_per_s <= 0:
        raise ValueError("rate_per_s must be positive")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        start = time.monotonic() + 0.05
        tasks: list[asyncio.Task[Sample]] = []
        for index, call in enumerate(calls):
            due = start + index / rate_per_s
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, url, call, due, start)))
        return list(await asyncio.gather(*tasks))
