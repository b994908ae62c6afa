"""`voicelane sim` is a faithful stand-in for Ollama and OpenAI-compatible servers.

The proof of the Ollama side is the official `ollama` Python client talking to it:
if that client streams, lists, pulls and raises errors correctly against the
simulator, the wire format matches. The OpenAI side is checked by parsing its SSE.
The latency model and reply rules are checked directly, without sockets.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
import wave
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest
import requests

from voicelane.processes import free_port, running, voicelane_argv
from voicelane.sim import audio
from voicelane.sim.latency import Admission, LatencyProfile, ModelResidency, SlotBook, parse_keep_alive
from voicelane.sim.replies import generate_reply, tokenize

pytestmark = pytest.mark.timeout(60)

MODEL = "llama3.2:1b"
BUSY = "server busy, please try again.  maximum pending requests exceeded"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    argv = voicelane_argv(
        "sim",
        "--listen",
        f"127.0.0.1:{port}",
        "--ttft-ms",
        "10",
        "--tokens-per-s",
        "500",
        "--load-ms",
        "60",
        "--parallel",
        "4",
        "--model",
        MODEL,
        "--model",
        "llama3.1:8b",
    )
    url = f"http://127.0.0.1:{port}"
    with running(argv, ready_url=url + "/sim/stats", log_dir=tmp_path_factory.mktemp("sim-logs"), name="sim"):
        yield url


@pytest.fixture(autouse=True)
def fresh_sim(request: pytest.FixtureRequest) -> None:
    if "sim" in request.fixturenames:
        url = request.getfixturevalue("sim")
        requests.post(url + "/sim/reset", timeout=5).raise_for_status()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def control(sim: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = requests.post(sim + path, json=body or {}, timeout=5)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def stats(sim: str) -> dict[str, Any]:
    result: dict[str, Any] = requests.get(sim + "/sim/stats", timeout=5).json()
    return result


async def acontrol(sim: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.post(sim + path, json=body or {}) as response:
        response.raise_for_status()
        result: dict[str, Any] = await response.json()
        return result


async def astats(sim: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(sim + "/sim/stats") as response:
        result: dict[str, Any] = await response.json()
        return result


# ----- Ollama API through the official client --------------------------------------------------


async def test_official_client_streams_chat_word_by_word_with_final_statistics(sim: str) -> None:
    client = ollama.AsyncClient(host=sim)
    parts = [part async for part in await client.chat(model=MODEL, messages=user("One two three four."), stream=True)]

    assert [p.message.content for p in parts[:-1]] == ["One ", "two ", "three ", "four."]
    assert all(p.done is False and p.model == MODEL and p.created_at for p in parts[:-1])
    final = parts[-1]
    assert final.done is True
    assert final.done_reason == "stop"
    assert final.message.content == ""
    assert final.eval_count == 4
    assert final.prompt_eval_count == 4
    assert (final.load_duration or 0) >= 60_000_000
    assert (final.total_duration or 0) >= (final.load_duration or 0) + (final.eval_duration or 0) > 0


async def test_official_client_non_streaming_chat_and_generate(sim: str) -> None:
    client = ollama.AsyncClient(host=sim)
    reply = await client.chat(model=MODEL, messages=user("Hello there, friend."))
    assert reply.message.content == "Hello there, friend."
    assert reply.message.role == "assistant"
    assert (reply.done, reply.done_reason) == (True, "stop")

    generated = await client.generate(model=MODEL, prompt="Say this back.")
    assert generated.response == "Say this back."
    streamed = [p async for p in await client.generate(model=MODEL, prompt="Say it again.", stream=True)]
    assert "".join(p.response or "" for p in streamed) == "Say it again."
    assert (streamed[-1].done, streamed[-1].eval_count) == (True, 3)


def test_num_predict_truncates_and_stop_ends_the_reply(sim: str) -> None:
    client = ollama.Client(host=sim)
    text = "one two three four five"
    bounded = client.chat(model=MODEL, messages=user(text), options={"num_predict": 2})
    assert bounded.message.content == "one two "
    assert bounded.done_reason == "length"
    assert bounded.eval_count == 2

    stopped = client.chat(model=MODEL, messages=user(text), options={"stop": ["three"]})
    assert stopped.message.content == "one two "
    assert stopped.done_reason == "stop"


def test_model_loads_once_and_stays_for_keep_alive(sim: str) -> None:
    client = ollama.Client(host=sim)
    assert client.ps().models == []

    first = client.chat(model=MODEL, messages=user("Hi."), keep_alive="15m")
    second = client.chat(model=MODEL, messages=user("Hi."), keep_alive="15m")
    assert (first.load_duration or 0) >= 60_000_000
    assert second.load_duration == 0

    loaded = client.ps().models
    assert [m.model for m in loaded] == [MODEL]
    assert loaded[0].expires_at is not None
    minutes_left = (loaded[0].expires_at - datetime.now(UTC)).total_seconds() / 60
    assert 14 < minutes_left <= 15

    client.chat(model=MODEL, messages=user("Bye."), keep_alive=0)
    assert client.ps().models == []


def test_list_show_and_pull_progress(sim: str) -> None:
    client = ollama.Client(host=sim)
    listed = client.list().models
    assert {m.model for m in listed} == {MODEL, "llama3.1:8b"}
    small = next(m for m in listed if m.model == MODEL)
    assert small.details is not None
    assert small.details.parameter_size == "1B"
    assert all((small.digest, small.size, small.modified_at))

    assert client.show(MODEL).details is not None

    progress = list(client.pull("qwen2.5:0.5b", stream=True))
    assert progress[0].status == "pulling manifest"
    assert progress[-1].status == "success"
    completed = [p.completed or 0 for p in progress if p.total]
    assert completed == sorted(completed)
    assert completed[-1] == next(p.total for p in progress if p.total)
    assert "qwen2.5:0.5b" in {m.model for m in client.list().models}
    assert client.chat(model="qwen2.5:0.5b", messages=user("Now it works.")).message.content == "Now it works."


def test_errors_have_ollama_bodies_and_statuses(sim: str) -> None:
    client = ollama.Client(host=sim)
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat(model="nope", messages=user("Hi."))
    assert unknown.value.status_code == 404
    assert unknown.value.error == "model 'nope' not found"

    bad_json = requests.post(sim + "/api/chat", data=b"{not json", timeout=5)
    assert bad_json.status_code == 400
    assert "invalid JSON" in bad_json.json()["error"]
    no_model = requests.post(sim + "/api/chat", json={"messages": user("x")}, timeout=5)
    assert (no_model.status_code, no_model.json()) == (400, {"error": "model is required"})
    bad_keep_alive = requests.post(sim + "/api/chat", json={"model": MODEL, "keep_alive": "soon"}, timeout=5)
    assert bad_keep_alive.status_code == 400
    assert requests.get(sim + "/api/version", timeout=5).json()["version"]


async def test_queue_overflow_answers_503_like_ollama(sim: str) -> None:
    await acontrol(sim, "/sim/config", {"parallel": 1, "max_queue": 1, "tokens_per_s": 5})
    client = ollama.AsyncClient(host=sim)
    first_part: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def running_call() -> None:
        async for _ in await client.chat(model=MODEL, messages=user("a b c d e f g h"), stream=True):
            if not first_part.done():
                first_part.set_result(None)

    running_task = asyncio.create_task(running_call())
    await first_part
    queued_task = asyncio.create_task(client.chat(model=MODEL, messages=user("queued")))
    for _ in range(200):
        if (await astats(sim))["queued"] == 1:
            break
        await asyncio.sleep(0.01)
    assert (await astats(sim))["queued"] == 1

    with pytest.raises(ollama.ResponseError) as busy:
        await client.chat(model=MODEL, messages=user("one too many"))
    assert busy.value.status_code == 503
    assert busy.value.error == BUSY

    running_task.cancel()
    await asyncio.gather(running_task, return_exceptions=True)
    assert (await queued_task).message.content == "queued"
    after = await astats(sim)
    assert after["max_concurrent_seen"] == 1
    assert after["rejected_busy"] == 1
    assert after["in_flight"] == 0


def test_stats_count_calls_per_endpoint_and_reset_zeroes_them(sim: str) -> None:
    client = ollama.Client(host=sim)
    client.chat(model=MODEL, messages=user("a"))
    client.chat(model=MODEL, messages=user("b"))
    client.list()
    requests.get(sim + "/v1/models", timeout=5)
    counted = stats(sim)
    assert counted["calls"] == {"/api/chat": 2, "/api/tags": 1, "/v1/models": 1}
    assert counted["in_flight"] == 0

    assert control(sim, "/sim/reset")["calls"] == {}
    assert stats(sim)["calls"] == {}


# ----- OpenAI API ----------------------------------------------------------------------------


def sse_events(raw: str) -> list[str]:
    events = [block for block in raw.split("\n\n") if block]
    assert all(block.startswith("data: ") and "\n" not in block for block in events), raw
    return [block[len("data: ") :] for block in events]


def test_openai_chat_completion_streams_sse_chunks_then_done(sim: str) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": user("Stream me please."), "stream": True}
    response = requests.post(sim + "/v1/chat/completions", json=body, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")

    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[:-1]]
    assert contents == ["Stream ", "me ", "please."]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_openai_whole_completion_has_usage_and_length_limit(sim: str) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": user("one two three four"), "max_tokens": 3}
    completion = requests.post(sim + "/v1/chat/completions", json=body, timeout=5).json()
    assert completion["object"] == "chat.completion"
    choice = completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "one two three "}
    assert choice["finish_reason"] == "length"
    assert completion["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}

    models = requests.get(sim + "/v1/models", timeout=5).json()
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} == {MODEL, "llama3.1:8b"}

    unknown = requests.post(sim + "/v1/chat/completions", json={**body, "model": "gpt-9"}, timeout=5)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "model 'gpt-9' not found"


def test_speech_returns_24khz_audio_proportional_to_text(sim: str) -> None:
    text = "Hello there."
    body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "pcm"}
    pcm = requests.post(sim + "/v1/audio/speech", json=body, timeout=5)
    assert pcm.status_code == 200
    assert len(pcm.content) == len(text) * 24_000 * 60 // 1000 * 2

    wav = requests.post(sim + "/v1/audio/speech", json={**body, "response_format": "wav", "speed": 2.0}, timeout=5)
    with wave.open(io.BytesIO(wav.content)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (24_000, 1, 2)
        assert reader.getnframes() == len(text) * 24_000 * 30 // 1000
        assert any(reader.readframes(reader.getnframes()))

    bad = requests.post(sim + "/v1/audio/speech", json={**body, "response_format": "mp3"}, timeout=5)
    assert bad.status_code == 400
    assert "pcm, wav" in bad.json()["error"]["message"]

    control(sim, "/sim/faults", {"fault": "garbage_audio", "count": 1})
    garbage = requests.post(sim + "/v1/audio/speech", json={**body, "response_format": "wav"}, timeout=5)
    assert garbage.status_code == 200
    assert not garbage.content.startswith(b"RIFF")
    assert len(garbage.content) % 2 == 1


# ----- faults --------------------------------------------------------------------------------


async def test_official_client_raises_on_mid_stream_error_line(sim: str) -> None:
    await acontrol(sim, "/sim/faults", {"fault": "error_line", "count": 1, "message": "model runner crashed"})
    client = ollama.AsyncClient(host=sim)
    received: list[str] = []

    async def read_all(parts: AsyncIterator[ollama.ChatResponse]) -> None:
        async for part in parts:
            received.append(part.message.content or "")

    with pytest.raises(ollama.ResponseError, match="model runner crashed"):
        await read_all(await client.chat(model=MODEL, messages=user("one two three four"), stream=True))
    assert received == ["one ", "two "]


async def test_faults_are_used_up_by_count_and_limited_to_their_paths(sim: str) -> None:
    await acontrol(sim, "/sim/faults", {"fault": "http_500", "count": 2, "paths": ["/api/generate"]})
    client = ollama.AsyncClient(host=sim)
    assert (await client.chat(model=MODEL, messages=user("untouched"))).message.content == "untouched"
    for _ in range(2):
        with pytest.raises(ollama.ResponseError) as failed:
            await client.generate(model=MODEL, prompt="x")
        assert failed.value.status_code == 500
    assert (await client.generate(model=MODEL, prompt="fine again")).response == "fine again"
    assert (await astats(sim))["faults_injected"] == {"http_500": 2}


async def test_refuse_and_reset_break_the_connection(sim: str) -> None:
    async with aiohttp.ClientSession() as session:
        await acontrol(sim, "/sim/faults", {"fault": "refuse", "count": 1})
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.post(sim + "/api/chat", json={"model": MODEL, "messages": user("x")})

        await acontrol(sim, "/sim/faults", {"fault": "reset_mid_stream", "count": 1, "after_tokens": 1})
        async with session.post(sim + "/api/chat", json={"model": MODEL, "messages": user("a b c")}) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()


async def test_stalls_hold_the_stream_until_the_client_leaves(sim: str) -> None:
    await acontrol(sim, "/sim/faults", {"fault": "stall_after_headers", "count": 1})
    body = {"model": MODEL, "messages": user("a")}
    async with aiohttp.ClientSession() as session, session.post(sim + "/api/chat", json=body) as response:
        assert response.status == 200
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(response.content.readany(), 0.3)
    await acontrol(sim, "/sim/faults", {"fault": "stall_first_token", "count": 1, "hold_s": 0.3})
    started = time.monotonic()
    reply = await ollama.AsyncClient(host=sim).chat(model=MODEL, messages=user("late but whole"))
    assert reply.message.content == "late but whole"
    assert time.monotonic() - started >= 0.3


def test_fault_and_config_bodies_are_validated(sim: str) -> None:
    unknown = requests.post(sim + "/sim/faults", json={"fault": "meltdown"}, timeout=5)
    assert unknown.status_code == 400
    assert "fault" in unknown.json()["error"]
    assert requests.post(sim + "/sim/faults", json={"fault": "refuse", "count": 0}, timeout=5).status_code == 400
    assert requests.post(sim + "/sim/config", json={"tokens_per_s": 0}, timeout=5).status_code == 400
    assert requests.post(sim + "/sim/config", json={"warp": 9}, timeout=5).status_code == 400

    control(sim, "/sim/faults", {"fault": "http_503"})
    assert requests.get(sim + "/sim/faults", timeout=5).json()["armed"][0]["fault"] == "http_503"
    assert requests.delete(sim + "/sim/faults", timeout=5).json() == {"armed": []}
    assert ollama.Client(host=sim).chat(model=MODEL, messages=user("ok")).message.content == "ok"


# ----- process behaviour -----------------------------------------------------------------------


def test_protocol_choice_limits_the_endpoints_and_sigterm_stops_it(log_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = voicelane_argv("sim", "--listen", f"127.0.0.1:{port}", "--protocol", "openai", "--ttft-ms", "1")
    with running(argv, ready_url=url + "/sim/stats", log_dir=log_dir, name="openai-only") as process:
        assert requests.get(url + "/v1/models", timeout=5).status_code == 200
        assert requests.post(url + "/api/chat", json={"model": MODEL}, timeout=5).status_code == 404
        started = time.monotonic()
        assert process.stop() == 0
        assert time.monotonic() - started < 5


# ----- latency model and replies, without sockets -----------------------------------------------


def test_slots_run_then_queue_then_reject_and_promote_in_order() -> None:
    book = SlotBook(parallel=2, max_queue=2)
    assert [book.request(t) for t in (1, 2, 3, 4, 5)] == [
        Admission.RUN,
        Admission.RUN,
        Admission.WAIT,
        Admission.WAIT,
        Admission.REJECT,
    ]
    assert book.withdraw(3) is True
    assert book.release() == [4]
    assert book.release() == []
    assert (book.running, book.max_running_seen, book.rejected) == (1, 2, 1)
    book.request(6)
    book.request(7)
    assert book.resize(parallel=3) == [7]


def test_model_loads_on_first_call_shares_the_load_and_unloads_after_keep_alive() -> None:
    now = [100.0]
    residency = ModelResidency(clock=lambda: now[0])
    assert residency.begin("m", 2.0) == 2.0
    now[0] += 0.5
    assert residency.begin("m", 2.0) == 1.5  # a second caller waits for the same load
    residency.end("m", 10.0)
    residency.end("m", 10.0)
    now[0] += 9.0
    assert residency.begin("m", 2.0) == 0.0
    residency.end("m", 10.0)
    assert set(residency.loaded()) == {"m"}
    now[0] += 11.0
    assert residency.loaded() == {}
    assert residency.begin("m", 2.0) == 2.0


def test_keep_alive_parsing_and_token_schedule() -> None:
    assert parse_keep_alive("15m") == 900
    assert parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive("300ms") == pytest.approx(0.3)
    assert parse_keep_alive(0) == 0
    assert parse_keep_alive("-1") == math.inf
    assert parse_keep_alive(None) == 300
    with pytest.raises(ValueError, match="keep_alive"):
        parse_keep_alive("soon")
    assert LatencyProfile(ttft_s=0.1, tokens_per_s=10).token_offsets(3) == pytest.approx([0.1, 0.2, 0.3])


def test_reply_tokens_are_words_with_their_whitespace() -> None:
    assert tokenize("  Hi there,\nfriend. ") == ["  Hi ", "there,\n", "friend. "]
    assert "".join(tokenize("a  b\tc")) == "a  b\tc"
    assert generate_reply("a b c d", max_tokens=2).tokens == ("a ", "b ")
    assert generate_reply("a b STOP c", stop=["STOP"]).text == "a b "
    assert audio.pcm_length("abc") == 3 * 1440 * 2
