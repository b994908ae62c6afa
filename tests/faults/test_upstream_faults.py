"""Upstream faults injected by the simulator, against every way a client can ask.

Each case arms a fault on the fast tier only, or on both tiers, and asks through
/v1/text (whole and streamed), /v1/speak, and the transparent Ollama and OpenAI
APIs at once. What each client must get is decided by where the fault strikes:

- before the first token, fast only: a complete answer from the deep tier;
- before the first token, both tiers: a clear 502/503/504 with Retry-After (speech
  speaks the original text instead: chat always speaks);
- after the first token: no failover (the listener would hear a seam), so a whole
  answer becomes a 502 with Retry-After, a stream ends with an explicit error, and
  speech that has not started speaks the original text.

Never a hang, never a 500, never a cut stream that looks complete.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import requests

from tests.faults.conftest import FIRST_TOKEN_TIMEOUT_S, TOTAL_TIMEOUT_S, Lane
from tests.faults.wire import Reply, arm, assert_refusal, call, sim_stats
from voicelane.sidecar.audio import parse_wav

pytestmark = pytest.mark.timeout(120)

WAV_HEADER_BYTES = 44
CHAT_TTFA_TARGET_S = 3.0  # the default chat target
# A fault before the first token costs at most one first-token timeout per tier; after it,
# a stream is bounded by the idle and total timeouts. Anything slower is a hang.
BEFORE_FIRST_TOKEN_BOUND_S = 2 * FIRST_TOKEN_TIMEOUT_S + 3.0
AFTER_FIRST_TOKEN_BOUND_S = TOTAL_TIMEOUT_S + 3.0

_counter = itertools.count()


def unique_text() -> str:
    # One sentence with no clause mark: speech has no segment before the stream's end.
    return f"Mötet {next(_counter)} i morgon är flyttat till klockan tre på eftermiddagen."


@dataclass(frozen=True)
class Ask:
    name: str
    path: str
    body: Callable[[str], dict[str, Any]]


ASKS = (
    Ask("text", "/v1/text", lambda t: {"text": t, "source": "chat"}),
    Ask("text_stream", "/v1/text", lambda t: {"text": t, "source": "chat", "stream": True}),
    Ask("speak", "/v1/speak", lambda t: {"text": t, "source": "chat"}),
    Ask("ollama_chat", "/api/chat", lambda t: {"model": "voicelane", "messages": [{"role": "user", "content": t}]}),
    Ask(
        "ollama_whole",
        "/api/chat",
        lambda t: {"model": "voicelane", "stream": False, "messages": [{"role": "user", "content": t}]},
    ),
    Ask(
        "openai_stream",
        "/v1/chat/completions",
        lambda t: {"model": "voicelane", "stream": True, "messages": [{"role": "user", "content": t}]},
    ),
)

# Faults that strike before any token reaches the sidecar.
BEFORE_FIRST_TOKEN: dict[str, dict[str, Any]] = {
    "refuse": {},
    "http_503": {},
    "http_500": {},
    "stall_after_headers": {"hold_s": 60},
    "stall_first_token": {"hold_s": 60},
    "malformed_line": {"after_tokens": 0},
    "error_line": {"after_tokens": 0},
    "truncated": {"after_tokens": 0},
    "reset_mid_stream": {"after_tokens": 0},
}
# Faults that strike after the first token has been passed on. The fault comes two token
# intervals after the first token, so the sidecar has surely read and passed that one on
# (a token read together with the fault is never passed on, and the call may fail over).
AFTER_FIRST_TOKEN: dict[str, dict[str, Any]] = {
    "reset_mid_stream": {"after_tokens": 3},
    "malformed_line": {"after_tokens": 3},
    "error_line": {"after_tokens": 3},
    "truncated": {"after_tokens": 3},
    "oversized": {},
    # A stall between tokens longer than the idle timeout.
    "slow_tokens": {"tokens_per_s": 1 / (FIRST_TOKEN_TIMEOUT_S * 2.5)},
}


async def ask_all(lane: Lane) -> dict[str, tuple[str, Reply]]:
    """Every kind of request at once, each with a text of its own."""
    async with aiohttp.ClientSession() as session:

        async def one(ask: Ask) -> tuple[str, Reply]:
            text = unique_text()
            skip = WAV_HEADER_BYTES if ask.name == "speak" else 0
            return text, await call(session, lane.sidecar.url + ask.path, ask.body(text), skip_first=skip)

        replies = await asyncio.gather(*(one(ask) for ask in ASKS))
    return {ask.name: reply for ask, reply in zip(ASKS, replies, strict=True)}


def answered_text(name: str, reply: Reply) -> str:
    """The text of a complete, successful answer in the endpoint's own format."""
    assert reply.status == 200, reply.describe()
    assert reply.complete, reply.describe()
    if name == "text":
        return str(reply.json()["text"])
    if name == "text_stream":
        lines = reply.lines()
        assert lines[-1]["done"] is True, reply.describe()
        assert "error" not in lines[-1], reply.describe()
        return "".join(line["text"] for line in lines[:-1])
    if name == "ollama_chat":
        lines = reply.lines()
        assert not any("error" in line for line in lines), reply.describe()
        assert lines[-1]["done"] is True, reply.describe()
        return "".join(line["message"]["content"] for line in lines)
    if name == "ollama_whole":
        return str(reply.json()["message"]["content"])
    if name == "openai_stream":
        events = reply.sse_events()
        assert events[-1] == "[DONE]", reply.describe()
        return "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    raise AssertionError(name)


def assert_spoken(reply: Reply, *, tier: str | None = None, fallback: str | None = None) -> None:
    assert reply.status == 200, reply.describe()
    assert reply.complete, reply.describe()
    rate, channels, width, pcm = parse_wav(reply.body)
    assert (channels, width) == (1, 2)
    # Audio of a whole sentence, not a click: more than half a second of it.
    assert len(pcm) > rate * width * 0.5, len(pcm)
    if tier is not None:
        assert reply.headers["X-Voicelane-Tier"] == tier, reply.headers
    if fallback is None:
        assert "X-Voicelane-Fallback" not in reply.headers, reply.headers
    else:
        assert reply.headers.get("X-Voicelane-Fallback") in {"model_failure", "deadline"}, reply.headers


def assert_stream_ends_in_error(name: str, reply: Reply) -> None:
    """A stream whose headers went out before the fault: it must say it broke, not look whole."""
    assert reply.status == 200, reply.describe()
    if name == "text_stream":
        lines = reply.lines()
        assert lines[-1]["done"] is True, reply.describe()
        assert lines[-1]["error"]["code"], reply.describe()
    elif name == "ollama_chat":
        lines = reply.lines()
        assert "error" in lines[-1], reply.describe()
        assert not any(line.get("done") is True for line in lines), reply.describe()
    elif name == "openai_stream":
        events = reply.sse_events()
        assert "[DONE]" not in events, reply.describe()
        assert "error" in json.loads(events[-1]), reply.describe()
    else:
        raise AssertionError(name)


@pytest.mark.parametrize("fault", sorted(BEFORE_FIRST_TOKEN))
async def test_fault_on_fast_tier_before_first_token_is_answered_by_deep(shared_lane: Lane, fault: str) -> None:
    shared_lane.reset()
    arm(shared_lane.fast.url, fault, count=len(ASKS), **BEFORE_FIRST_TOKEN[fault])
    replies = await ask_all(shared_lane)
    for name, (text, reply) in replies.items():
        assert reply.elapsed_s < BEFORE_FIRST_TOKEN_BOUND_S, (name, reply.describe())
        if name == "speak":
            assert_spoken(reply, tier="deep")
        else:
            assert answered_text(name, reply).strip() == text, (name, reply.describe())
    assert not sim_stats(shared_lane.fast.url)["faults_armed"], "every request met the fault"


@pytest.mark.parametrize("fault", sorted(BEFORE_FIRST_TOKEN))
async def test_fault_on_both_tiers_before_first_token_is_refused_clearly(shared_lane: Lane, fault: str) -> None:
    shared_lane.reset()
    for sim in (shared_lane.fast, shared_lane.deep):
        arm(sim.url, fault, count=len(ASKS), **BEFORE_FIRST_TOKEN[fault])
    replies = await ask_all(shared_lane)
    for name, (_, reply) in replies.items():
        assert reply.elapsed_s < BEFORE_FIRST_TOKEN_BOUND_S, (name, reply.describe())
        if name == "speak":
            # Chat always speaks: the original text, since no model could rewrite it.
            assert_spoken(reply, fallback="model_failure")
        else:
            assert_refusal(reply)
            assert reply.status in (502, 503, 504), (name, reply.describe())


@pytest.mark.parametrize("fault", sorted(AFTER_FIRST_TOKEN))
async def test_fault_after_first_token_is_never_passed_off_as_complete(shared_lane: Lane, fault: str) -> None:
    shared_lane.reset()
    deep_calls = sim_stats(shared_lane.deep.url)["calls"].get("/api/chat", 0)
    arm(shared_lane.fast.url, fault, count=len(ASKS), **AFTER_FIRST_TOKEN[fault])
    # Tokens 50 ms apart; an oversized reply needs the usual pace to overrun its bound in time.
    pace = {"tokens_per_s": 200 if fault == "oversized" else 20}
    requests.post(shared_lane.fast.url + "/sim/config", json=pace, timeout=5).raise_for_status()
    try:
        replies = await ask_all(shared_lane)
    finally:
        requests.post(shared_lane.fast.url + "/sim/config", json={"tokens_per_s": 200}, timeout=5)
    for name, (_, reply) in replies.items():
        assert reply.elapsed_s < AFTER_FIRST_TOKEN_BOUND_S, (name, reply.describe())
        if name == "speak" and fault == "oversized":
            # The runaway reply completed sentences that were spoken before it overran its bound:
            # audio already flowed, so the connection ends without the final chunk.
            assert reply.status == 200, reply.describe()
            assert not reply.complete, reply.describe()
        elif name == "speak":
            # The sentence never completed, so nothing was spoken yet: the original text is.
            assert_spoken(reply, fallback="model_failure")
        elif name in ("text", "ollama_whole"):
            assert_refusal(reply)
            assert reply.status == 502, (name, reply.describe())
        else:
            assert_stream_ends_in_error(name, reply)
    # No failover after the first token: the deep tier was never asked.
    assert sim_stats(shared_lane.deep.url)["calls"].get("/api/chat", 0) == deep_calls


@pytest.mark.parametrize(
    ("tokens_per_s", "whole", "spoken_by"),
    [(3.0, True, "fast"), (1.2, False, "fallback")],
    ids=["slow_within_total_timeout", "slower_than_total_timeout"],
)
async def test_slow_tokens_answer_late_or_time_out_and_speech_keeps_its_deadline(
    shared_lane: Lane, tokens_per_s: float, whole: bool, spoken_by: str
) -> None:
    # Gaps between tokens stay under the idle timeout: the stream is slow, never stalled.
    shared_lane.reset()
    arm(shared_lane.fast.url, "slow_tokens", count=len(ASKS), tokens_per_s=tokens_per_s)
    replies = await ask_all(shared_lane)
    for name, (text, reply) in replies.items():
        assert reply.elapsed_s < AFTER_FIRST_TOKEN_BOUND_S, (name, reply.describe())
        if name == "speak":
            # The sentence cannot be complete by the chat deadline (target 3.0 s less the expected
            # 0.3 s of speech). At 3 tokens/s its first words are, and are spoken early; at 1.2/s
            # not even those (20 characters take five tokens): the original text is spoken
            # instead. Either way on time.
            if spoken_by == "fast":
                assert_spoken(reply, tier="fast")
            else:
                assert_spoken(reply, fallback="deadline")
                assert reply.headers["X-Voicelane-Fallback"] == "deadline"
            assert reply.first_byte_s is not None
            assert reply.first_byte_s < CHAT_TTFA_TARGET_S + 1.0, reply.first_byte_s
        elif whole:
            assert answered_text(name, reply).strip() == text, (name, reply.describe())
        elif name in ("text", "ollama_whole"):
            assert_refusal(reply)
            assert reply.status == 502, (name, reply.describe())
        else:
            assert_stream_ends_in_error(name, reply)


async def test_model_breaking_off_after_speech_began_cuts_the_audio(shared_lane: Lane) -> None:
    shared_lane.reset()
    requests.post(shared_lane.fast.url + "/sim/config", json={"tokens_per_s": 20}, timeout=5).raise_for_status()
    # The first sentence is complete (and spoken) before the stream breaks in the second.
    arm(shared_lane.fast.url, "reset_mid_stream", count=1, after_tokens=7)
    try:
        async with aiohttp.ClientSession() as session:
            reply = await call(
                session,
                shared_lane.sidecar.url + "/v1/speak",
                {"text": "Mötet är flyttat. Vi ses klockan tre i morgon på kontoret.", "source": "chat"},
            )
    finally:
        requests.post(shared_lane.fast.url + "/sim/config", json={"tokens_per_s": 200}, timeout=5)
    assert reply.elapsed_s < AFTER_FIRST_TOKEN_BOUND_S, reply.describe()
    assert reply.status == 200, reply.describe()
    assert reply.headers["X-Voicelane-Tier"] == "fast"
    # Audio of the first sentence went out; then the connection ended without the final chunk.
    assert len(reply.body) > WAV_HEADER_BYTES + 22050
    assert not reply.complete, reply.describe()


async def test_503_storm_on_one_tier_is_answered_by_the_other_or_refused_clearly(start_sim, start_sidecar) -> None:
    fast = start_sim("--ttft-ms", "20", "--parallel", "8", name="fast")
    deep = start_sim("--ttft-ms", "20", "--parallel", "8", name="deep")
    # The real admission settings: circuits open after 3 failures, and the guardian watches
    # upstream saturation (a short window keeps the test short).
    config = {
        "rate_limit": {"burst": 100, "sustained_per_s": 100},
        "guardian": {"upstream_window_s": 3.0},
    }
    sidecar = start_sidecar(fast.url, deep.url, config=config)
    arm(fast.url, "http_503")
    statuses: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for index in range(30):
            reply = await call(session, sidecar.url + "/v1/text", {"text": f"Storm {index}.", "source": "chat"})
            assert reply.elapsed_s < BEFORE_FIRST_TOKEN_BOUND_S, reply.describe()
            if reply.status == 200:
                assert reply.json()["tier"] == "deep", reply.describe()
                assert reply.json()["text"].strip() == f"Storm {index}."
                statuses["deep"] += 1
            else:
                assert_refusal(reply, "guardian_emergency", "upstream_unavailable")
                assert reply.status == 503, reply.describe()
                statuses[reply.json()["error"]["code"]] += 1
            await asyncio.sleep(0.2)
    print(f"\n503 storm on the fast tier: {dict(statuses)}")
    assert statuses["deep"] > 0, statuses
    assert sim_stats(fast.url)["faults_injected"]["http_503"] >= 3

    # The storm passes: within seconds the fast tier answers again.
    requests.delete(fast.url + "/sim/faults", timeout=5)

    async def fast_again(attempt: int) -> bool:
        async with aiohttp.ClientSession() as session:
            # A text of its own each time: an answer the deep tier gave would be served from the cache.
            body = {"text": f"Lugnt igen {attempt}?", "source": "chat"}
            reply = await call(session, sidecar.url + "/v1/text", body)
        return reply.status == 200 and reply.json()["tier"] == "fast"

    deadline = asyncio.get_running_loop().time() + 15
    attempts = itertools.count()
    while not await fast_again(next(attempts)):
        assert asyncio.get_running_loop().time() < deadline, "the fast tier never came back"
        await asyncio.sleep(0.5)


async def test_a_tier_that_refuses_the_lanes_key_is_not_failed_over_from(start_sim, start_sidecar) -> None:
    # The fast tier's server wants another key: every call to it is refused with 401. That is the
    # tier's configuration, not a failure another tier should paper over, nor one that counts towards
    # opening its circuit (a client could otherwise open circuits with bad requests).
    fast = start_sim("--protocol", "openai", "--api-key", "the-right-key", "--ttft-ms", "20", name="fast")
    deep = start_sim("--ttft-ms", "20", name="deep")
    # Health checks (which the same key guards) are rare here, so only the calls could open the circuit.
    fast_upstream = {"protocol": "openai", "api_key": "a-wrong-key", "health_interval_s": 60}
    sidecar = start_sidecar(fast.url, deep.url, config={"upstreams": {"fast": fast_upstream}})
    async with aiohttp.ClientSession() as session:
        for index in range(4):
            text = f"Nyckeln {index} är fel."
            reply = await call(session, sidecar.url + "/v1/text", {"text": text, "source": "chat"})
            assert_refusal(reply, "upstream_failed")
            assert reply.status == 502, reply.describe()
            assert "refused the request" in reply.json()["error"]["message"], reply.describe()
            assert "401" in reply.json()["error"]["message"], reply.describe()
        spoken = await call(
            session, sidecar.url + "/v1/speak", {"text": "Nyckeln är fortfarande fel.", "source": "chat"}
        )
        # A chat always speaks: the original text, since the tier it was routed to refused it.
        assert_spoken(spoken, fallback="model_failure")
        # The deep tier is healthy and answers what is routed to it.
        long_text = "Ett längre meddelande om mötet i morgon, som går till den djupa nivån. " * 3
        deep_reply = await call(session, sidecar.url + "/v1/text", {"text": long_text, "source": "chat"})
        assert deep_reply.status == 200, deep_reply.describe()
        assert deep_reply.json()["tier"] == "deep"
    assert sim_stats(deep.url)["calls"].get("/api/chat", 0) == 1  # the long text only: nothing failed over
    # Five refused calls, and one refused health check at start: counted, they would have opened it.
    fast_state = requests.get(sidecar.url + "/v1/stats", timeout=5).json()["upstreams"]["fast"]
    assert fast_state["circuit"] == "closed", fast_state
    assert sim_stats(fast.url)["responses"].get("/v1/chat/completions 401", 0) == 5
