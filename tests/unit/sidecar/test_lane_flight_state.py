"""What a request reports about its own work (answering tier, dispatch time) comes from the flight it
holds: right for a joiner, and right for each of two identical requests when single-flight is off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from voicelane.core.flight_state import Dispatched, Done, FirstToken, WorkFailed
from voicelane.core.refusals import Failed, Failure
from voicelane.sidecar.config import RequestClass, SidecarConfig, build_config
from voicelane.sidecar.lane import Lane, Submission
from voicelane.sidecar.metrics import SidecarMetrics
from voicelane.sidecar.upstream import ChatRequest, UpstreamClient, UpstreamError

pytestmark = pytest.mark.timeout(30)

REPLY = ("Vi", " ses", ".")


class HeldCall:
    def __init__(self) -> None:
        self.allowed = 0
        self.progress = asyncio.Event()

    def release(self, tokens: int = len(REPLY)) -> None:
        self.allowed += tokens
        self.progress.set()


class StandInServer(UpstreamClient):
    """Sends each call's tokens only as the test releases them; fails every call when told to."""

    def __init__(self, config: Any, calls: list[HeldCall]) -> None:
        self.config = config
        self.calls = calls
        self.failure: UpstreamError | None = None

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[str]:
        if self.failure is not None:
            raise self.failure
        call = HeldCall()
        self.calls.append(call)
        for sent, token in enumerate(REPLY):
            while sent >= call.allowed:
                call.progress.clear()
                await call.progress.wait()
            yield token

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def make_lane(calls: list[HeldCall], servers: list[StandInServer], **settings: Any) -> Lane:
    config = build_config(
        {
            "upstreams": {
                "fast": {"url": "http://127.0.0.1:1", "model": "fast"},
                "deep": {"url": "http://127.0.0.1:2", "model": "deep"},
            },
            "phrase_bank": {"enabled": False},
            "cache": {"enabled": False},
            "rate_limit": {"burst": 100, "sustained_per_s": 100},
            "scheduler": {"max_running_per_priority": 4},
            **settings,
        }
    )
    assert isinstance(config, SidecarConfig)

    def factory(upstream: Any) -> StandInServer:
        servers.append(StandInServer(upstream, calls))
        return servers[-1]

    return Lane(config, SidecarMetrics(), client_factory=factory)


def submit(lane: Lane, text: str) -> tuple[Submission, asyncio.Task[Any]]:
    submission = lane.submit(
        lane.text_job(text=text, request_class=RequestClass.CHAT, target_lang="sv", request_id=text)
    )
    return submission, asyncio.create_task(submission.result())


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_with_single_flight_off_each_identical_request_keeps_its_own_tier_and_dispatch_time() -> None:
    calls: list[HeldCall] = []
    lane = make_lane(calls, [], single_flight={"enabled": False})
    (first, first_done), (second, second_done) = submit(lane, "Ses i morgon?"), submit(lane, "Ses i morgon?")
    await settle()
    assert len(calls) == 2  # not shared: two model calls
    assert first.tier() is None
    assert second.tier() is None
    for call in calls:
        call.release(1)
    await settle()
    assert first.tier() == second.tier() == "fast"
    assert first.dispatched_at is not None
    assert second.dispatched_at is not None
    calls[0].release()
    await first_done
    # The other request's work, under the same key, still says where it runs.
    assert second.tier() == "fast"
    assert second.dispatched_at is not None
    calls[1].release()
    assert (await second_done).tier == "fast"


async def test_a_joiner_reports_the_leaders_tier_from_its_first_token_on() -> None:
    calls: list[HeldCall] = []
    lane = make_lane(calls, [])
    leader, leader_done = submit(lane, "Ses i morgon?")
    joiner, joiner_done = submit(lane, "Ses i morgon?")
    await settle()
    assert joiner.shared
    assert len(calls) == 1
    assert joiner.tier() is None
    calls[0].release(1)
    await settle()
    assert joiner.tier() == leader.tier() == "fast"
    assert joiner.dispatched_at == leader.dispatched_at is not None
    calls[0].release()
    await asyncio.gather(leader_done, joiner_done)
    assert joiner.flight is not None
    assert [type(event) for event in joiner.flight.state.events] == [Dispatched, FirstToken, Done]


async def test_a_failed_flight_records_why() -> None:
    servers: list[StandInServer] = []
    lane = make_lane([], servers)
    for server in servers:
        server.failure = UpstreamError("http_status", "HTTP 401: invalid api key", status=401)
    submission, done = submit(lane, "Hallå?")
    with pytest.raises(Failed):
        await done
    assert submission.flight is not None
    failed = submission.flight.state.latest(WorkFailed)
    assert failed is not None
    assert failed.error.reason is Failure.UPSTREAM_FAILED
    assert submission.tier() is None
