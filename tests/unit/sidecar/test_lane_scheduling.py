"""How the lane holds model slots: a chat stops blocking the next one once its first sentence is out,
a tier is never sent more calls than its slots, and a chat takes another tier's free slot when its
own tier is full. The model servers are stand-ins whose every token the test releases by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from voicelane.sidecar.config import RequestClass, SidecarConfig, build_config
from voicelane.sidecar.lane import Lane, TextResult
from voicelane.sidecar.metrics import SidecarMetrics
from voicelane.sidecar.upstream import ChatRequest, UpstreamClient

LONG_EMAIL = (
    "Hej alla! Budgeten för kvartalet ligger inom ramen, men vi behöver prioritera om två mindre projekt "
    "innan fredag. Hör av er om ni har frågor. Hälsningar, Maria"
)
# A reply whose first sentence is complete once the third token is followed by a fourth.
REPLY = ("Hej", " Anna", "!", " Vi", " ses", " snart", ".")


class HeldCall:
    """One call to a stand-in model server: it sends a token each time the test says so."""

    def __init__(self, tier: str, request: ChatRequest) -> None:
        self.tier, self.text = tier, request.messages[-1]["content"]
        self.num_predict, self.stop = request.num_predict, request.stop
        self.allowed = 0
        self.sent = 0
        self.progress = asyncio.Event()

    def release(self, tokens: int) -> None:
        self.allowed += tokens
        self.progress.set()


class StandInServer(UpstreamClient):
    def __init__(self, config: Any, calls: list[HeldCall]) -> None:
        self.config = config
        self.calls = calls

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[str]:
        call = HeldCall(self.config.model, request)
        self.calls.append(call)
        while call.sent < len(REPLY):
            while call.sent >= call.allowed:
                call.progress.clear()
                await call.progress.wait()
            yield REPLY[call.sent]
            call.sent += 1

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def make_lane(calls: list[HeldCall], **settings: Any) -> Lane:
    upstreams = settings.pop("upstreams", {})
    config = build_config(
        {
            "upstreams": {
                "fast": {"url": "http://127.0.0.1:1", "model": "fast", **upstreams.get("fast", {})},
                "deep": {"url": "http://127.0.0.1:2", "model": "deep", **upstreams.get("deep", {})},
            },
            "phrase_bank": {"enabled": False},
            "rate_limit": {"burst": 100, "sustained_per_s": 100},
            **settings,
        }
    )
    assert isinstance(config, SidecarConfig)
    return Lane(config, SidecarMetrics(), client_factory=lambda upstream: StandInServer(upstream, calls))


def ask(lane: Lane, text: str, source: RequestClass = RequestClass.CHAT) -> asyncio.Task[TextResult]:
    job = lane.text_job(text=text, request_class=source, target_lang="sv", request_id=text)
    return asyncio.create_task(lane.submit(job).result())


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def call_for(calls: list[HeldCall], text: str) -> HeldCall:
    return next(call for call in calls if text in call.text)


async def finish(calls: list[HeldCall], *tasks: asyncio.Task[TextResult]) -> list[TextResult]:
    for call in calls:
        call.release(len(REPLY))
    while not all(task.done() for task in tasks):
        for call in calls:
            call.release(len(REPLY))
        await settle()
    return [task.result() for task in tasks]


async def test_the_next_chat_starts_once_the_first_chats_first_sentence_is_out() -> None:
    calls: list[HeldCall] = []
    lane = make_lane(calls)
    first = ask(lane, "Första meddelandet.")
    second = ask(lane, "Andra meddelandet.")
    await settle()
    assert [c.text for c in calls] == ["Första meddelandet."]
    call_for(calls, "Första").release(3)  # "Hej Anna!" — not yet known to be a whole sentence
    await settle()
    assert len(calls) == 1
    call_for(calls, "Första").release(1)  # " Vi": the first sentence is complete
    await settle()
    assert [c.text for c in calls] == ["Första meddelandet.", "Andra meddelandet."]
    assert call_for(calls, "Första").sent < len(REPLY)  # the first one is still generating
    assert lane.scheduler.snapshot()["running"][0] == 2
    results = await finish(calls, first, second)
    assert [r.text for r in results] == ["".join(REPLY)] * 2


async def test_without_priorities_each_request_holds_its_place_until_it_ends() -> None:
    calls: list[HeldCall] = []
    lane = make_lane(calls, scheduler={"priorities": False})
    first = ask(lane, "Första meddelandet.")
    second = ask(lane, "Andra meddelandet.")
    await settle()
    call_for(calls, "Första").release(len(REPLY) - 1)
    await settle()
    assert len(calls) == 1
    await finish(calls, first, second)
    assert len(calls) == 2


async def test_a_tier_is_never_sent_more_calls_than_its_slots() -> None:
    calls: list[HeldCall] = []
    lane = make_lane(calls, upstreams={"fast": {"parallel_slots": 1}}, routing={"mode": "fast_only"})
    first = ask(lane, "Första meddelandet.")
    second = ask(lane, "Andra meddelandet.")
    await settle()
    call_for(calls, "Första").release(len(REPLY) - 1)  # past its first sentence, not finished
    await settle()
    assert len(calls) == 1
    await finish(calls, first, second)
    assert [c.tier for c in calls] == ["fast", "fast"]


async def test_a_chat_whose_tier_is_full_is_answered_on_a_free_slot_of_the_other_tier() -> None:
    calls: list[HeldCall] = []
    short_replies = {"parallel_slots": 1, "num_predict": 64, "stop": ["\n\n"]}
    lane = make_lane(calls, upstreams={"fast": short_replies, "deep": {"parallel_slots": 2, "num_predict": 400}})
    first = ask(lane, "Första meddelandet.")
    second = ask(lane, "Andra meddelandet.")
    await settle()
    call_for(calls, "Första").release(4)
    await settle()
    assert [(c.text, c.tier) for c in calls] == [("Första meddelandet.", "fast"), ("Andra meddelandet.", "deep")]
    # The deep server answers, but the reply is as short as the chat's own tier asks.
    assert (call_for(calls, "Andra").num_predict, call_for(calls, "Andra").stop) == (64, ("\n\n",))
    first_result, second_result = await finish(calls, first, second)
    assert (first_result.tier, second_result.tier) == ("fast", "deep")
    assert lane.scheduler.snapshot()["borrowed_total"] == 1


async def test_when_tiers_share_cpus_a_chat_joins_the_busy_tier_instead_of_starting_the_other() -> None:
    calls: list[HeldCall] = []
    lane = make_lane(
        calls,
        upstreams={"fast": {"parallel_slots": 1}, "deep": {"parallel_slots": 2}},
        scheduler={"tiers_share_cpus": True},
    )
    summary = ask(lane, LONG_EMAIL, RequestClass.EMAIL_TLDR)  # long: the deep tier's
    await settle()
    assert [c.tier for c in calls] == ["deep"]
    chat = ask(lane, "Ses vi vid lunch?")
    await settle()
    assert [(c.text, c.tier) for c in calls][1] == ("Ses vi vid lunch?", "deep")
    await finish(calls, summary, chat)


@pytest.mark.parametrize("mode", ["fast_only", "deep_only"])
async def test_a_tier_forced_by_the_routing_mode_is_never_swapped_for_a_free_one(mode: str) -> None:
    calls: list[HeldCall] = []
    lane = make_lane(
        calls,
        upstreams={"fast": {"parallel_slots": 1}, "deep": {"parallel_slots": 1}},
        routing={"mode": mode},
    )
    first = ask(lane, "Första meddelandet.")
    second = ask(lane, "Andra meddelandet.")
    await settle()
    call_for(calls, "Första").release(4)
    await settle()
    assert len(calls) == 1
    await finish(calls, first, second)
    assert {c.tier for c in calls} == {mode.removesuffix("_only")}
