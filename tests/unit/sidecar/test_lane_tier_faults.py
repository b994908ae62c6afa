"""How the lane judges its tiers and what it admits, against stand-in model servers.

A tier whose chats hang while its status endpoint answers must not hold up the chats behind
it, must be routed around, and must have its circuit opened by real work (a health check
cannot close it); a tier that refuses the request itself (a rejected key) is not failed over
from; and lower-priority work never takes the waiting room's last place from a chat.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from voicelane.core.refusals import Failed, Failure, LaneError, Refusal, Refused
from voicelane.sidecar.config import RequestClass, SidecarConfig, Tier, build_config
from voicelane.sidecar.errors import http_error
from voicelane.sidecar.lane import Lane, TextResult
from voicelane.sidecar.metrics import SidecarMetrics
from voicelane.sidecar.upstream import ChatRequest, UpstreamClient, UpstreamError

pytestmark = pytest.mark.timeout(30)

# A chat's listener waits this long for audio (target 0.5 s less 0.3 s of speech): the
# patience of a call on a tier with no usual first-token time yet.
DEADLINE_S = 0.2


class StandInServer(UpstreamClient):
    """A model server that answers, hangs (accepts and never answers), or fails, as the test sets."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.behaviour: str | UpstreamError = "answer"
        self.calls: list[str] = []
        self.health_checks = 0

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[str]:
        self.calls.append(request.messages[-1]["content"])
        if isinstance(self.behaviour, UpstreamError):
            raise self.behaviour
        if self.behaviour == "hang":
            await asyncio.Event().wait()
        for token in ("Hej", " då", "."):
            yield token

    async def health(self) -> bool:
        self.health_checks += 1
        return True  # the status endpoint answers whatever the model does

    async def close(self) -> None:
        return None


def make_lane(**settings: Any) -> tuple[Lane, dict[Tier, StandInServer]]:
    config = build_config(
        {
            "upstreams": {
                "fast": {"url": "http://127.0.0.1:1", "model": "fast"},
                "deep": {"url": "http://127.0.0.1:2", "model": "deep"},
            },
            "phrase_bank": {"enabled": False},
            "rate_limit": {"burst": 100, "sustained_per_s": 100},
            "ttfa": {"targets": {"chat": DEADLINE_S + 0.3}, "expected_tts_s": 0.3},
            **settings,
        }
    )
    assert isinstance(config, SidecarConfig)
    servers: dict[Tier, StandInServer] = {}

    def factory(upstream: Any) -> StandInServer:
        server = StandInServer(upstream)
        servers[Tier.FAST if upstream.model == "fast" else Tier.DEEP] = server
        return server

    return Lane(config, SidecarMetrics(), client_factory=factory), servers


def ask(lane: Lane, text: str, source: RequestClass = RequestClass.CHAT) -> asyncio.Task[TextResult]:
    job = lane.text_job(text=text, request_class=source, target_lang="sv", request_id=text)
    return asyncio.create_task(lane.submit(job).result())


async def stop(lane: Lane, *tasks: asyncio.Task[Any]) -> None:
    """End the calls still hanging, and the tasks waiting for them."""
    await lane.flights.close()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, LaneError, Exception):
            await task


async def test_a_chat_behind_a_hung_call_is_answered_by_the_other_tier_long_before_the_timeout() -> None:
    lane, servers = make_lane()
    servers[Tier.FAST].behaviour = "hang"
    stuck = ask(lane, "Första.")
    await asyncio.sleep(0.05)
    behind = ask(lane, "Andra.")  # waits for the level's place the stuck call holds
    await asyncio.sleep(0.05)
    assert lane.scheduler.snapshot()["waiting"][0] == 1
    started = asyncio.get_running_loop().time()
    result = await asyncio.wait_for(behind, timeout=2.0)
    assert result.tier == "deep"
    # Answered once the stuck call was overdue (its patience), not after the 10 s first-token timeout.
    assert asyncio.get_running_loop().time() - started < DEADLINE_S + 0.5
    assert lane.snapshot()["upstreams"]["fast"]["stalled"] is True
    # While the fast tier stalls, new chats go straight to the deep tier and never queue for it.
    later = await asyncio.wait_for(ask(lane, "Tredje."), timeout=1.0)
    assert later.tier == "deep"
    assert servers[Tier.FAST].calls == ["Första."]
    await stop(lane, stuck)


async def test_a_tier_that_answers_again_is_no_longer_routed_around() -> None:
    lane, servers = make_lane()
    servers[Tier.FAST].behaviour = "hang"
    stuck = ask(lane, "Första.")
    await asyncio.sleep(DEADLINE_S + 0.1)
    assert lane.first_tokens[Tier.FAST].stalled
    servers[Tier.FAST].behaviour = "answer"
    await lane._probe(Tier.FAST)  # status answers, and the tier is in doubt: a real generation too
    await asyncio.sleep(0.05)
    assert not lane.first_tokens[Tier.FAST].stalled
    assert servers[Tier.FAST].calls[-1] == "Hi"
    assert (await ask(lane, "Andra.")).tier == "fast"
    await stop(lane, stuck)


async def test_health_checks_cannot_close_a_circuit_that_real_calls_opened() -> None:
    lane, servers = make_lane()
    servers[Tier.FAST].behaviour = UpstreamError("timeout", "no first token")
    for index in range(3):
        assert (await ask(lane, f"Meddelande {index}.")).tier == "deep"
        await lane._probe(Tier.FAST)  # the status endpoint answers between the failed calls
        await asyncio.sleep(0)
    circuit = lane.circuits[Tier.FAST]
    assert circuit.is_open
    # Open on failed calls: each check sends a real generation, which fails as the calls did.
    calls_before = len(servers[Tier.FAST].calls)
    for _ in range(3):
        await lane._probe(Tier.FAST)
        await asyncio.sleep(0)
    assert circuit.is_open
    assert servers[Tier.FAST].calls[calls_before:] == ["Hi"] * 3
    servers[Tier.FAST].behaviour = "answer"
    await lane._probe(Tier.FAST)
    await asyncio.sleep(0)
    assert not circuit.is_open


async def test_a_refused_key_is_not_failed_over_nor_counted_against_the_tier() -> None:
    lane, servers = make_lane()
    servers[Tier.FAST].behaviour = UpstreamError("http_status", "HTTP 401: invalid api key", status=401)
    for index in range(4):
        with pytest.raises(Failed) as refused:
            await ask(lane, f"Meddelande {index}.")
        assert refused.value.reason is Failure.UPSTREAM_FAILED
        answer = http_error(refused.value)
        assert (answer.status, answer.code, answer.headers()) == (502, "upstream_failed", {"Retry-After": "2"})
        assert "refused the request" in refused.value.message
        assert "401" in refused.value.message
    assert servers[Tier.DEEP].calls == []
    assert not lane.circuits[Tier.FAST].is_open
    assert lane.circuits[Tier.FAST].snapshot()["consecutive_failures"] == 0


async def test_a_busy_tier_is_failed_over_from() -> None:
    lane, servers = make_lane()
    servers[Tier.FAST].behaviour = UpstreamError("http_status", "HTTP 503: server busy", status=503)
    assert (await ask(lane, "Meddelande.")).tier == "deep"
    assert lane.circuits[Tier.FAST].snapshot()["consecutive_failures"] == 1


async def test_lower_priorities_leave_the_last_waiting_place_to_chats() -> None:
    lane, servers = make_lane(scheduler={"max_waiting": 3})
    servers[Tier.FAST].behaviour = "hang"
    servers[Tier.DEEP].behaviour = "hang"
    long_chat = "Ett långt meddelande om mötet i morgon. " * 5  # priority 1
    running = [ask(lane, long_chat + "a"), ask(lane, "Första.")]
    await asyncio.sleep(0.01)
    waiting = [ask(lane, long_chat + "b"), ask(lane, long_chat + "c")]
    await asyncio.sleep(0.01)
    assert lane.scheduler.snapshot()["waiting_total"] == 2
    with pytest.raises(Refused) as refused:
        lane.submit(
            lane.text_job(text=long_chat + "d", request_class=RequestClass.CHAT, target_lang="sv", request_id="d")
        )
    assert refused.value.reason is Refusal.QUEUE_FULL
    answer = http_error(refused.value)
    assert (answer.status, answer.code, answer.headers()) == (429, "queue_full", {"Retry-After": "1"})
    with pytest.raises(Refused):
        lane.admit_forwarded(1)  # the transparent API's door is the same
    # The chat behind the running one still gets the last place.
    lane.submit(lane.text_job(text="Andra.", request_class=RequestClass.CHAT, target_lang="sv", request_id="e"))
    await asyncio.sleep(0.01)
    assert lane.scheduler.snapshot()["waiting"][0] == 1
    await stop(lane, *running, *waiting)
