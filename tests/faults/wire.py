"""Client-side helpers for the fault suite: calls with hard timeouts that tell complete from cut.

Every call here has a client timeout well below pytest's, so a hang shows up as a
failed assertion naming the request rather than as a killed test run. A response
counts as complete only if its body ended the way HTTP says it must (the final chunk
of a chunked body, or the declared length); a connection that ends early is `cut`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import requests

# Fault responses must come within the class deadline; this is the outer bound a case waits.
CALL_TIMEOUT_S = 20.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # the body ended as HTTP framing says it must
    elapsed_s: float
    first_byte_s: float | None = None  # time to the first body byte after the headers
    error: str | None = None  # why the body was cut, if it was

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    def sse_events(self) -> list[str]:
        return [line[len("data: ") :] for line in self.body.decode().splitlines() if line.startswith("data: ")]

    def describe(self) -> str:
        return f"HTTP {self.status} complete={self.complete} after {self.elapsed_s:.2f}s: {self.body[:300]!r}"


@dataclass
class Timer:
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


async def call(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = CALL_TIMEOUT_S,
    skip_first: int = 0,
) -> Reply:
    """POST `payload` and read the whole answer; a body that breaks off is reported, not raised.

    `skip_first` bytes are not counted for `first_byte_s` (a WAV header is not audio).
    """
    timer = Timer()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=payload, headers=headers) as response:
                body = bytearray()
                first_byte_s: float | None = None
                error: str | None = None
                try:
                    async for piece in response.content.iter_any():
                        body += piece
                        if first_byte_s is None and len(body) > skip_first:
                            first_byte_s = timer.elapsed()
                    complete = True
                except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError) as exc:
                    complete, error = False, f"{type(exc).__name__}: {exc}"
                return Reply(
                    response.status, dict(response.headers), bytes(body), complete, timer.elapsed(), first_byte_s, error
                )
    except TimeoutError:
        raise AssertionError(f"POST {url} hung: no complete answer within {timeout_s} s") from None


def assert_refusal(reply: Reply, *codes: str) -> None:
    """A clear refusal: a retryable status, a JSON error with a code, and Retry-After."""
    assert reply.status in RETRY_STATUSES, reply.describe()
    assert reply.complete, reply.describe()
    assert int(reply.headers["Retry-After"]) >= 1, reply.describe()
    body = reply.json()
    code = body["error"]["code"] if isinstance(body.get("error"), dict) else reply.headers.get("X-Voicelane-Error")
    assert code, reply.describe()
    if codes:
        assert code in codes, reply.describe()


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def wait_until_async(
    predicate: Callable[[], bool], *, timeout_s: float, what: str, interval_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def arm(sim_url: str, fault: str, **spec: Any) -> None:
    response = requests.post(sim_url + "/sim/faults", json={"fault": fault, **spec}, timeout=5)
    assert response.status_code == 200, response.text


def sim_stats(sim_url: str) -> dict[str, Any]:
    stats: dict[str, Any] = requests.get(sim_url + "/sim/stats", timeout=5).json()
    return stats


def sidecar_stats(sidecar_url: str) -> dict[str, Any]:
    stats: dict[str, Any] = requests.get(sidecar_url + "/v1/stats", timeout=5).json()
    return stats


def metric_value(metrics_text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = {f'{k}="{v}"' for k, v in (labels or {}).items()}
    for line in metrics_text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        present = set(label_text.rstrip("}").split(",")) if label_text else set()
        if wanted <= present:
            return float(value)
    return 0.0
