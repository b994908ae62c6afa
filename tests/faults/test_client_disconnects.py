"""Clients that leave mid-request: shared work goes on for those still listening, stops otherwise.

The simulator's `in_flight` says whether model work still runs upstream; the sidecar's
`/v1/stats` says whether any flight (shared model work) is left running inside it.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.faults.conftest import fault_config
from tests.faults.wire import sidecar_stats, sim_stats, wait_until_async

pytestmark = pytest.mark.timeout(90)

# 40 words at 5 tokens/s: 8 s of generation, so work that outlives its client is plain to see.
LONG_TEXT = " ".join(f"ord{i}" for i in range(40)) + "."
SLOW_SIM = ("--ttft-ms", "50", "--tokens-per-s", "5", "--parallel", "4")
# Targets far away, so speech waits for the model rather than falling back on its own.
PATIENT = fault_config(ttfa={"targets": {"chat": 60.0, "notification": 60.0, "email_tldr": 60.0}})


async def assert_everything_stops(sim_url: str, sidecar_url: str) -> None:
    """Upstream generation ends and no flight is left running, long before the reply would have."""
    await wait_until_async(lambda: sim_stats(sim_url)["in_flight"] == 0, timeout_s=3, what="upstream work to stop")
    await wait_until_async(
        lambda: sidecar_stats(sidecar_url)["single_flight"]["running"] == 0,
        timeout_s=3,
        what="no flight left running in the sidecar",
    )


async def wait_for_upstream_work(sim_url: str) -> None:
    await wait_until_async(lambda: sim_stats(sim_url)["in_flight"] >= 1, timeout_s=5, what="upstream work to start")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/text", {"source": "chat"}),
        ("/v1/text", {"source": "chat", "stream": True}),
        ("/v1/speak", {"source": "chat"}),
        ("/api/chat", {"model": "voicelane"}),
        ("/v1/chat/completions", {"model": "voicelane", "stream": True}),
    ],
    ids=["text", "text_stream", "speak", "ollama_chat", "openai_stream"],
)
async def test_work_stops_when_its_only_client_leaves(start_sim, start_sidecar, path: str, body: dict) -> None:
    sim = start_sim(*SLOW_SIM)
    sidecar = start_sidecar(sim.url, config=PATIENT)
    payload = dict(body)
    if "model" in payload:
        payload["messages"] = [{"role": "user", "content": LONG_TEXT}]
    else:
        payload["text"] = LONG_TEXT
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(sidecar.url + path, json=payload))
        await wait_for_upstream_work(sim.url)
        await asyncio.sleep(0.5)  # tokens are flowing (or, for whole answers, being gathered)
        request.cancel()
    await assert_everything_stops(sim.url, sidecar.url)
    stats = sidecar_stats(sidecar.url)
    assert stats["single_flight"]["cancellations"] >= 1
    assert sum(stats["queue"]["running"].values()) == 0
    # Nothing is wedged: the next request is answered at once.
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            sidecar.url + "/v1/text", json={"text": "Nästa.", "source": "chat"}, timeout=aiohttp.ClientTimeout(10)
        ) as response,
    ):
        assert response.status == 200


async def test_a_waiting_client_that_leaves_gives_up_its_place(start_sim, start_sidecar) -> None:
    sim = start_sim(*SLOW_SIM)
    sidecar = start_sidecar(sim.url, config=fault_config(scheduler={"max_running_per_priority": 1, "max_waiting": 1}))
    async with aiohttp.ClientSession() as session:
        running = asyncio.create_task(
            session.post(sidecar.url + "/v1/text", json={"text": LONG_TEXT, "source": "chat"})
        )
        await wait_for_upstream_work(sim.url)
        # Of the same length, so of the same priority: it has to wait for the running one.
        waiting = asyncio.create_task(
            session.post(sidecar.url + "/v1/text", json={"text": LONG_TEXT + " Igen.", "source": "chat"})
        )
        await wait_until_async(
            lambda: sidecar_stats(sidecar.url)["queue"]["waiting_total"] == 1, timeout_s=5, what="a waiter"
        )
        waiting.cancel()
        await wait_until_async(
            lambda: sidecar_stats(sidecar.url)["queue"]["waiting_total"] == 0,
            timeout_s=3,
            what="the waiter to leave the queue",
        )
        running.cancel()
    await assert_everything_stops(sim.url, sidecar.url)


@pytest.mark.parametrize("path", ["/v1/text", "/v1/speak"])
async def test_shared_work_continues_for_the_joiner_when_the_leader_leaves(start_sim, start_sidecar, path) -> None:
    sim = start_sim("--ttft-ms", "50", "--tokens-per-s", "20", "--parallel", "4")
    sidecar = start_sidecar(sim.url, config=PATIENT)
    text = " ".join(f"ord{i}" for i in range(30)) + "."  # 1.5 s of tokens
    payload = (
        {"text": text, "source": "chat", "stream": True} if path == "/v1/text" else {"text": text, "source": "chat"}
    )
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as leader, aiohttp.ClientSession(timeout=timeout) as joiner:
        leading = asyncio.create_task(leader.post(sidecar.url + path, json=payload))
        await wait_for_upstream_work(sim.url)
        joining = asyncio.create_task(joiner.post(sidecar.url + path, json=payload))
        await asyncio.sleep(0.3)
        leading.cancel()
        await leader.close()
        response = await joining
        body = await response.read()
    assert response.status == 200
    if path == "/v1/text":
        lines = [json.loads(line) for line in body.splitlines()]
        assert lines[-1]["done"] is True
        assert "error" not in lines[-1]
        assert lines[-1]["shared"] is True
        assert "".join(line["text"] for line in lines[:-1]).strip() == text
    else:
        assert response.headers["X-Voicelane-Shared"] == "true"
        assert len(body) > 44 + 22050  # a whole sentence of audio, not a stub
    assert sim_stats(sim.url)["calls"]["/api/chat"] == 1
    await assert_everything_stops(sim.url, sidecar.url)
