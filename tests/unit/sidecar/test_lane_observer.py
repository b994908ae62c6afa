"""What the lane tells its observer, in order, and how the sidecar's Prometheus observer counts it.

The lane keeps no metrics itself: a test observer records each call, so the decisions a request
meets (cache, coalescing, admission, dispatch, first token, failover, end) are seen as they happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from voicelane.core.refusals import Refused
from voicelane.sidecar.config import RequestClass, SidecarConfig, Tier, build_config
from voicelane.sidecar.lane import Lane, TextResult
from voicelane.sidecar.metrics import SidecarMetrics
from voicelane.sidecar.upstream import ChatRequest, UpstreamClient, UpstreamError

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """A LaneObserver that writes down every call."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def looked_up(self, *, hit: bool) -> None:
        self.seen.append(("looked_up", hit))

    def coalesced(self, *, joined: bool) -> None:
        self.seen.append(("coalesced", joined))

    def admitted(self, priority: int) -> None:
        self.seen.append(("admitted", priority))

    def refused(self, refusal: Refused) -> None:
        self.seen.append(("refused", refusal.code))

    def dispatched(self, priority: int, waited_s: float) -> None:
        self.seen.append(("dispatched", priority))

    def first_token(self, tier: str, seconds: float) -> None:
        self.seen.append(("first_token", tier))

    def call_done(self, tier: str) -> None:
        self.seen.append(("call_done", tier))

    def call_failed(self, tier: str, kind: str) -> None:
        self.seen.append(("call_failed", tier, kind))

    def failed_over(self, from_tier: str, to_tier: str) -> None:
        self.seen.append(("failed_over", from_tier, to_tier))

    def pressure_checked(self, *, failed: bool) -> None:
        self.seen.append(("pressure_checked", failed))


class StandInServer(UpstreamClient):
    def __init__(self, config: Any) -> None:
        self.config = config
        self.failure: UpstreamError | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[str]:
        if self.failure is not None:
            raise self.failure
        await self.gate.wait()
        for token in ("Hej", " då", "."):
            yield token

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def make_lane(observer: Any, **settings: Any) -> tuple[Lane, dict[Tier, StandInServer]]:
    config = build_config(
        {
            "upstreams": {
                "fast": {"url": "http://127.0.0.1:1", "model": "fast"},
                "deep": {"url": "http://127.0.0.1:2", "model": "deep"},
            },
            "phrase_bank": {"enabled": False},
            **settings,
        }
    )
    assert isinstance(config, SidecarConfig)
    servers: dict[Tier, StandInServer] = {}

    def factory(upstream: Any) -> StandInServer:
        server = servers[Tier.FAST if upstream.model == "fast" else Tier.DEEP] = StandInServer(upstream)
        return server

    return Lane(config, observer, client_factory=factory), servers


async def ask(lane: Lane, text: str) -> TextResult:
    job = lane.text_job(text=text, request_class=RequestClass.CHAT, target_lang="sv", request_id=text)
    return await lane.submit(job).result()


async def test_an_answered_chat_then_the_same_chat_from_the_cache() -> None:
    recorder = Recorder()
    lane, _ = make_lane(recorder)
    await ask(lane, "Ses i morgon.")
    assert recorder.seen == [
        ("looked_up", False),
        ("admitted", 0),
        ("coalesced", False),  # admitted first: only a new leader asks the door
        ("dispatched", 0),
        ("first_token", "fast"),
        ("call_done", "fast"),
    ]
    recorder.seen.clear()
    await ask(lane, "Ses i morgon.")
    assert recorder.seen == [("looked_up", True)]


async def test_a_request_that_joins_a_running_one_is_neither_admitted_nor_dispatched() -> None:
    recorder = Recorder()
    lane, servers = make_lane(recorder)
    servers[Tier.FAST].gate.clear()
    leader = asyncio.create_task(ask(lane, "Ses i morgon."))
    await asyncio.sleep(0.01)
    joiner = asyncio.create_task(ask(lane, "Ses i morgon."))
    await asyncio.sleep(0.01)
    servers[Tier.FAST].gate.set()
    assert (await leader).text == (await joiner).text == "Hej då."
    assert recorder.seen.count(("coalesced", True)) == 1
    assert recorder.seen.count(("admitted", 0)) == recorder.seen.count(("dispatched", 0)) == 1


async def test_a_refusal_is_reported_and_nothing_is_dispatched() -> None:
    recorder = Recorder()
    lane, _ = make_lane(recorder, rate_limit={"burst": 1, "sustained_per_s": 0.001})
    await ask(lane, "Första.")
    recorder.seen.clear()
    with pytest.raises(Refused):
        await ask(lane, "Andra.")
    assert recorder.seen == [("looked_up", False), ("refused", "rate_limited")]


async def test_a_failed_call_and_the_failover_that_answers() -> None:
    recorder = Recorder()
    lane, servers = make_lane(recorder)
    servers[Tier.FAST].failure = UpstreamError("http_status", "HTTP 503: busy", status=503)
    assert (await ask(lane, "Hallå.")).tier == "deep"
    assert recorder.seen[-4:] == [
        ("call_failed", "fast", "http_status"),
        ("failed_over", "fast", "deep"),
        ("first_token", "deep"),
        ("call_done", "deep"),
    ]


async def test_the_prometheus_observer_counts_what_the_lane_reports() -> None:
    metrics = SidecarMetrics()
    lane, servers = make_lane(metrics, rate_limit={"burst": 2, "sustained_per_s": 0.001})
    servers[Tier.FAST].failure = UpstreamError("http_status", "HTTP 503: busy", status=503)
    await ask(lane, "Hallå.")
    await ask(lane, "Hallå igen.")
    with pytest.raises(Refused):
        await ask(lane, "Och igen.")

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("voicelane_admission_decisions_total", decision="allowed", reason="ok") == 2
    assert sample("voicelane_admission_decisions_total", decision="rejected", reason="rate_limited") == 1
    assert sample("voicelane_failovers_total", from_tier="fast", to_tier="deep") == 2
    assert sample("voicelane_upstream_errors_total", tier="fast", kind="http_status") == 2
    assert sample("voicelane_upstream_requests_total", tier="fast", outcome="error") == 2
    assert sample("voicelane_upstream_requests_total", tier="deep", outcome="ok") == 2
    assert sample("voicelane_upstream_time_to_first_token_seconds_count", tier="deep") == 2
    assert sample("voicelane_queue_wait_seconds_count", priority="0") == 2
    assert sample("voicelane_cache_lookups_total", result="miss", kind="text") == 3
    assert sample("voicelane_singleflight_requests_total", role="leader") == 2
