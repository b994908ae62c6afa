"""Admission over real HTTP: priorities, idle-only segments, queue cap, rate limit, guardian."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.timeout(90)


async def post_text(session: aiohttp.ClientSession, url: str, text: str, source: str, **extra: Any) -> dict[str, Any]:
    """POST /v1/text; returns status, body, headers and client-side send/finish times."""
    sent = time.monotonic()
    async with session.post(url + "/v1/text", json={"text": text, "source": source, **extra}) as response:
        body = await response.json()
        return {
            "status": response.status,
            "body": body,
            "headers": response.headers,
            "sent": sent,
            "finished": time.monotonic(),
        }


def dispatched_at(reply: dict[str, Any]) -> float:
    return float(reply["sent"] + reply["body"]["timings"]["dispatched"])


async def test_higher_priority_and_idle_only_segments(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "300", "--tokens-per-s", "200", "--parallel", "8")
    sidecar = start_sidecar(
        sim.url, config={"scheduler": {"max_waiting": 3}, "rate_limit": {"burst": 20, "sustained_per_s": 20}}
    )
    async with aiohttp.ClientSession() as session:
        # Occupy the priority-0 and priority-1 slots, then queue one of each priority behind them.
        busy_chat = asyncio.create_task(post_text(session, sidecar.url, "First chat message.", "chat"))
        busy_tldr = asyncio.create_task(post_text(session, sidecar.url, "A summary of the first email.", "email_tldr"))
        await asyncio.sleep(0.1)
        segment = asyncio.create_task(post_text(session, sidecar.url, "A segment of a long email.", "email_segment"))
        await asyncio.sleep(0.05)
        tldr = asyncio.create_task(post_text(session, sidecar.url, "Summary of another email.", "email_tldr"))
        await asyncio.sleep(0.05)
        chat = asyncio.create_task(post_text(session, sidecar.url, "Second chat message.", "chat"))
        replies = await asyncio.gather(busy_chat, busy_tldr, segment, tldr, chat)
    assert [r["status"] for r in replies] == [200] * 5
    first_chat, first_tldr, seg, second_tldr, second_chat = replies
    assert [r["body"]["priority"] for r in replies] == [0, 1, 2, 1, 0]
    # The segment arrived before the later chat and TL;DR, yet ran only once both levels were idle.
    others_done = max(r["finished"] for r in (first_chat, first_tldr, second_tldr, second_chat))
    assert dispatched_at(seg) >= others_done - 0.05
    assert dispatched_at(second_chat) < dispatched_at(seg)
    assert dispatched_at(second_tldr) < dispatched_at(seg)


async def test_fourth_waiter_is_refused_with_retry_after(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "1500", "--parallel", "8")
    sidecar = start_sidecar(sim.url, config={"rate_limit": {"burst": 20, "sustained_per_s": 20}})
    async with aiohttp.ClientSession() as session:
        running_one = asyncio.create_task(post_text(session, sidecar.url, "running", "chat"))
        await asyncio.sleep(0.1)
        waiters = []
        for index in range(3):
            waiters.append(asyncio.create_task(post_text(session, sidecar.url, f"waiting {index}", "chat")))
            await asyncio.sleep(0.05)
        refused = await post_text(session, sidecar.url, "one too many", "chat")
        accepted = await asyncio.gather(running_one, *waiters)
    assert refused["status"] == 429
    assert refused["body"]["error"]["code"] == "queue_full"
    assert int(refused["headers"]["Retry-After"]) >= 1
    assert [r["status"] for r in accepted] == [200, 200, 200, 200]


async def test_token_bucket_exhaustion_returns_429(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "5", "--parallel", "8")
    sidecar = start_sidecar(sim.url, config={"rate_limit": {"burst": 3, "sustained_per_s": 0.2}})
    async with aiohttp.ClientSession() as session:
        replies = [await post_text(session, sidecar.url, f"unique text {i}", "chat") for i in range(4)]
        # A repeat of an answered text is a cache hit and needs no token.
        repeat = await post_text(session, sidecar.url, "unique text 0", "chat")
    assert [r["status"] for r in replies] == [200, 200, 200, 429]
    assert replies[3]["body"]["error"]["code"] == "rate_limited"
    assert int(replies[3]["headers"]["Retry-After"]) >= 1
    assert repeat["status"] == 200
    assert repeat["body"]["cached"] is True


async def test_guardian_blocks_after_sustained_pressure_and_unblocks(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "5")
    sidecar = start_sidecar(sim.url)
    async with aiohttp.ClientSession() as session:
        warm = await post_text(session, sidecar.url, "Hej!", "chat")
        assert warm["status"] == 200
        # High pressure for 20 s of (advanced) time: checks at 0, 5, 10, 15, 20 s; only those
        # where both figures have held for 10 s fail, and three failures block.
        async with session.post(
            sidecar.url + "/v1/test/pressure",
            json={"cpu_percent": 95, "memory_percent": 90, "run_checks": 5, "advance_s": 5},
        ) as response:
            checks = await response.json()
        assert checks["checks_failed"] == [False, False, True, True, True]
        assert checks["guardian"]["blocked"] is True

        blocked = await post_text(session, sidecar.url, "A new message needs the model.", "chat")
        assert blocked["status"] == 503
        assert blocked["body"]["error"]["code"] == "guardian_emergency"
        assert int(blocked["headers"]["Retry-After"]) >= 1
        cached = await post_text(session, sidecar.url, "Hej!", "chat")
        assert cached["status"] == 200
        assert cached["body"]["cached"] is True

        async with session.get(sidecar.url + "/v1/stats") as response:
            stats = await response.json()
        assert stats["guardian"]["blocked"] is True
        assert "local" in stats["guardian"]["failing_sources"]

        async with session.post(
            sidecar.url + "/v1/test/pressure", json={"cpu_percent": 20, "memory_percent": 30, "run_checks": 1}
        ) as response:
            assert (await response.json())["guardian"]["blocked"] is False
        unblocked = await post_text(session, sidecar.url, "A new message needs the model.", "chat")
        assert unblocked["status"] == 200


async def test_pressure_that_eases_before_the_sustain_time_never_blocks(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "5")
    sidecar = start_sidecar(sim.url)
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            async with session.post(
                sidecar.url + "/v1/test/pressure",
                json={"cpu_percent": 95, "memory_percent": 90, "run_checks": 2, "advance_s": 4},
            ) as response:
                assert (await response.json())["checks_failed"] == [False, False]
            async with session.post(
                sidecar.url + "/v1/test/pressure", json={"cpu_percent": 95, "memory_percent": 10, "run_checks": 1}
            ) as response:
                assert (await response.json())["guardian"]["blocked"] is False
