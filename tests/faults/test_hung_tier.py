"""A model that hangs while its health check answers: the fast tier accepts every chat and never
answers, not even with headers, while its status endpoint keeps answering (a stuck model runner).

At 2 short chats a second, half spoken and half as text, every chat must be answered within its
class target (first audio or first token within 3.0 s), by the deep tier or by speaking the
original text when the deadline comes, except the few calls that met the hung tier before the
lane judged it; and the fast tier's circuit must open within three first-token timeouts, which
health checks alone would never allow. When the model answers again, so does the tier.

The default run uses a 4 s first-token timeout and 1 s health interval for 20 s; the `soak` run
is the reported scenario with the default settings (10 s and 5 s) for 30 s.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import aiohttp
import pytest
import requests

from tests.faults.wire import Reply, arm, call, sidecar_stats, sim_stats, wait_until_async

CHAT_TTFA_TARGET_S = 3.0  # the default chat target
WAV_HEADER_BYTES = 44
OFFERED_PER_S = 2.0
# The lane must answer at least this share of chats within the target.
ANSWERED_SHARE = 0.95
WARM_UP_CHATS = 5

_counter = itertools.count()


def chat_text() -> str:
    return f"Mötet {next(_counter)} är flyttat till klockan tre."


@dataclass
class Chat:
    path: str
    sent_at: float  # seconds after the fault was armed
    reply: Reply

    @property
    def first_s(self) -> float | None:
        """Time to the first audio (speech) or the first token (text)."""
        return self.reply.first_byte_s

    @property
    def answered_in_time(self) -> bool:
        return (
            self.reply.status == 200
            and self.reply.complete
            and self.first_s is not None
            and self.first_s <= CHAT_TTFA_TARGET_S
        )

    @property
    def answered_by(self) -> str:
        if self.reply.status != 200:
            return f"HTTP {self.reply.status}"
        if self.path == "/v1/speak":
            return self.reply.headers.get("X-Voicelane-Tier", "?")
        return str(self.reply.lines()[-1].get("tier", "error"))


@dataclass
class Observed:
    chats: list[Chat] = field(default_factory=list)
    circuit_open_at: float | None = None


async def ask(session: aiohttp.ClientSession, sidecar_url: str, path: str) -> Reply:
    if path == "/v1/speak":
        body = {"text": chat_text(), "source": "chat"}
        return await call(session, sidecar_url + path, body, skip_first=WAV_HEADER_BYTES)
    return await call(session, sidecar_url + path, {"text": chat_text(), "source": "chat", "stream": True})


async def watch_circuit(sidecar_url: str, armed_at: float, observed: Observed, stop: asyncio.Event) -> None:
    while not stop.is_set() and observed.circuit_open_at is None:
        stats = await asyncio.to_thread(sidecar_stats, sidecar_url)
        if stats["upstreams"]["fast"]["circuit"] == "open":
            observed.circuit_open_at = time.monotonic() - armed_at
        await asyncio.sleep(0.1)


async def chats_at_a_steady_pace(sidecar_url: str, seconds: float, armed_at: float, observed: Observed) -> None:
    """Open loop: a chat every half second whatever happens to the earlier ones, spoken and text in turn."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(path: str) -> None:
            sent_at = time.monotonic() - armed_at
            observed.chats.append(Chat(path, sent_at, await ask(session, sidecar_url, path)))

        tasks = []
        for number in range(int(seconds * OFFERED_PER_S)):
            await asyncio.sleep(max(0.0, armed_at + number / OFFERED_PER_S - time.monotonic()))
            tasks.append(asyncio.create_task(one("/v1/speak" if number % 2 == 0 else "/v1/text")))
        await asyncio.gather(*tasks)


async def run_hung_tier(
    start_sim, start_sidecar, *, seconds: float, first_token_timeout_s: float, health_interval_s: float
) -> None:
    fast = start_sim("--parallel", "4", name="fast")
    deep = start_sim("--parallel", "4", name="deep")
    upstream = {"first_token_timeout_s": first_token_timeout_s, "health_interval_s": health_interval_s}
    sidecar = start_sidecar(fast.url, deep.url, config={"upstreams": {"fast": upstream, "deep": upstream}})
    async with aiohttp.ClientSession() as session:
        for _ in range(WARM_UP_CHATS):  # the model worked until now
            warm = await ask(session, sidecar.url, "/v1/text")
            assert warm.lines()[-1]["tier"] == "fast", warm.describe()

    arm(fast.url, "hang")
    armed_at = time.monotonic()
    observed = Observed()
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_circuit(sidecar.url, armed_at, observed, stop))
    await chats_at_a_steady_pace(sidecar.url, seconds, armed_at, observed)
    stop.set()
    await watcher

    chats = observed.chats
    in_time = [chat for chat in chats if chat.answered_in_time]
    late = [chat for chat in chats if not chat.answered_in_time]
    by: dict[str, int] = {}
    for chat in chats:
        by[chat.answered_by] = by.get(chat.answered_by, 0) + 1
    firsts = sorted(chat.first_s for chat in chats if chat.first_s is not None)
    stats = sidecar_stats(sidecar.url)
    print(
        f"\nhung fast tier, {seconds:g} s at {OFFERED_PER_S:g} chats/s (first-token timeout {first_token_timeout_s:g} s,"
        f" health every {health_interval_s:g} s): {len(in_time)} of {len(chats)} answered within "
        f"{CHAT_TTFA_TARGET_S} s; answered by {by}; first audio or token median {firsts[len(firsts) // 2]:.2f} s, "
        f"max {firsts[-1]:.2f} s; circuit open after {observed.circuit_open_at} s; late: "
        + ", ".join(f"{c.path} sent at {c.sent_at:.1f} s: {c.answered_by} first {c.first_s}" for c in late)
    )
    for chat in chats:
        # Nothing but answers; a chat is never refused because one tier hangs.
        assert chat.reply.status == 200, chat.reply.describe()
        assert chat.reply.complete, chat.reply.describe()
    assert len(in_time) >= ANSWERED_SHARE * len(chats), [f"{c.path} at {c.sent_at:.1f}: {c.first_s}" for c in late]
    # Judged by real work: the circuit opened within three calls' first-token timeouts (plus the
    # health interval that starts the probes and a second of polling), though every health check passed.
    assert observed.circuit_open_at is not None, stats["upstreams"]
    assert observed.circuit_open_at <= 3 * first_token_timeout_s + health_interval_s + 1.0
    assert stats["upstreams"]["fast"]["healthy"] is True
    # Only the chats that met the hung tier before it was judged ever went to it.
    assert by.get("fast", 0) == 0, by
    assert by.get("deep", 0) >= len(chats) / 2, by

    # The model answers again: within a few probes the tier takes chats again.
    requests.delete(fast.url + "/sim/faults", timeout=5).raise_for_status()
    cleared_at = time.monotonic()

    def fast_again() -> bool:
        upstreams = sidecar_stats(sidecar.url)["upstreams"]["fast"]
        return upstreams["circuit"] == "closed" and not upstreams["stalled"]

    await wait_until_async(fast_again, timeout_s=2 * first_token_timeout_s + 3 * health_interval_s, what="fast back")
    async with aiohttp.ClientSession() as session:
        again = await ask(session, sidecar.url, "/v1/text")
    assert again.lines()[-1]["tier"] == "fast", again.describe()
    print(f"fast tier back {time.monotonic() - cleared_at:.1f} s after the model answered again")
    assert sim_stats(fast.url)["faults_injected"]["hang"] >= 3


@pytest.mark.timeout(150)
async def test_a_hung_model_behind_a_healthy_status_endpoint_is_routed_around(start_sim, start_sidecar) -> None:
    await run_hung_tier(start_sim, start_sidecar, seconds=20, first_token_timeout_s=4.0, health_interval_s=1.0)


@pytest.mark.soak
@pytest.mark.timeout(300)
async def test_a_hung_model_with_the_default_settings_for_thirty_seconds(start_sim, start_sidecar) -> None:
    await run_hung_tier(start_sim, start_sidecar, seconds=30, first_token_timeout_s=10.0, health_interval_s=5.0)


@pytest.mark.timeout(30)
async def test_the_simulated_hang_sends_nothing_while_the_status_endpoint_answers(start_sim) -> None:
    sim = start_sim()
    arm(sim.url, "hang")
    async with aiohttp.ClientSession() as session:
        chat = asyncio.create_task(
            session.post(sim.url + "/api/chat", json={"model": "m", "messages": [{"role": "user", "content": "Hej"}]})
        )
        done, _ = await asyncio.wait({chat}, timeout=1.5)
        assert not done, "a hung model sends not even its headers"
        async with session.get(sim.url + "/api/version") as version:
            assert version.status == 200
            assert "version" in await version.json()
        assert sim_stats(sim.url)["in_flight"] == 1  # the stuck call holds its slot
        chat.cancel()
