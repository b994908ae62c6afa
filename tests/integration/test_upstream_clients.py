"""The sidecar's upstream clients against the simulator: whole replies, incremental tokens, and every fault.

The rule under test: a call either yields the complete reply and ends on the server's
done marker, or raises an UpstreamError of the right kind; a broken stream is never
passed off as complete. The stream decoders are also checked alone, fed in pieces.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import requests

from voicelane.processes import free_port, running, voicelane_argv
from voicelane.sidecar.config import Protocol, UpstreamConfig
from voicelane.sidecar.upstream import ChatRequest, UpstreamClient, UpstreamError, make_client
from voicelane.sidecar.upstream.decoding import OllamaChatDecoder, OpenAIChatDecoder, StreamFault
from voicelane.sidecar.upstream.ollama import OllamaClient
from voicelane.sidecar.upstream.openai import OpenAIClient

pytestmark = pytest.mark.timeout(60)

MODEL = "llama3.2:1b"
API_KEY = "test-key"
TEXT = "one two three four five six"
PROTOCOLS = [Protocol.OLLAMA, Protocol.OPENAI]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    argv = voicelane_argv(
        "sim",
        "--listen",
        f"127.0.0.1:{port}",
        "--ttft-ms",
        "5",
        "--tokens-per-s",
        "1000",
        "--parallel",
        "8",
        "--model",
        MODEL,
        "--api-key",
        API_KEY,
    )
    url = f"http://127.0.0.1:{port}"
    with running(argv, ready_url=url + "/sim/stats", log_dir=tmp_path_factory.mktemp("sim-logs"), name="sim"):
        yield url


@pytest.fixture(autouse=True)
def fresh_sim(request: pytest.FixtureRequest) -> None:
    if "sim" in request.fixturenames:
        requests.post(request.getfixturevalue("sim") + "/sim/reset", timeout=5).raise_for_status()


async def sim_control(sim: str, path: str, body: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session, session.post(sim + path, json=body) as response:
        response.raise_for_status()


def config(url: str, protocol: Protocol, **overrides: Any) -> UpstreamConfig:
    settings: dict[str, Any] = {
        "url": url,
        "protocol": protocol,
        "model": MODEL,
        "api_key": API_KEY if protocol is Protocol.OPENAI else None,
        "connect_timeout_s": 1.0,
        "first_token_timeout_s": 2.0,
        "total_timeout_s": 10.0,
        "num_predict": 64,
        **overrides,
    }
    return UpstreamConfig(**settings)


@pytest.fixture
async def open_client() -> AsyncIterator[Any]:
    clients: list[UpstreamClient] = []

    def open_(cfg: UpstreamConfig) -> UpstreamClient:
        client = make_client(cfg)
        clients.append(client)
        return client

    yield open_
    for client in clients:
        await client.close()


def ask(text: str = TEXT, **fields: Any) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **fields)


async def collect(client: UpstreamClient, request: ChatRequest) -> list[str]:
    return [token async for token in client.stream_chat(request)]


async def collect_until_error(client: UpstreamClient, request: ChatRequest) -> tuple[list[str], UpstreamError]:
    tokens: list[str] = []

    async def consume() -> None:
        async for token in client.stream_chat(request):
            tokens.append(token)

    with pytest.raises(UpstreamError) as failure:
        await consume()
    return tokens, failure.value


# ----- normal operation ------------------------------------------------------------------------


def test_factory_picks_the_client_for_the_protocol() -> None:
    assert isinstance(make_client(config("http://127.0.0.1:1", Protocol.OLLAMA)), OllamaClient)
    assert isinstance(make_client(config("http://127.0.0.1:1", Protocol.OPENAI)), OpenAIClient)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_streams_the_whole_reply_token_by_token(sim: str, open_client: Any, protocol: Protocol) -> None:
    client = open_client(config(sim, protocol))
    assert await collect(client, ask()) == ["one ", "two ", "three ", "four ", "five ", "six"]
    assert await client.health() is True


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_tokens_arrive_as_they_are_generated(sim: str, open_client: Any, protocol: Protocol) -> None:
    await sim_control(sim, "/sim/config", {"tokens_per_s": 20})
    client = open_client(config(sim, protocol))
    arrivals = [time.monotonic() async for _ in client.stream_chat(ask())]
    assert len(arrivals) == 6
    # Six tokens 50 ms apart: the first is in hand long before the last is produced.
    assert arrivals[-1] - arrivals[0] > 0.15


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_token_bound_and_stop_sequences_reach_the_server(sim: str, open_client: Any, protocol: Protocol) -> None:
    client = open_client(config(sim, protocol))
    assert await collect(client, ask(num_predict=2)) == ["one ", "two "]
    assert "".join(await collect(client, ask(stop=("four",)))) == "one two three "


async def loaded_models(sim: str) -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(sim + "/api/ps") as response:
        return [model["model"] for model in (await response.json())["models"]]


async def test_ollama_keep_alive_comes_from_config(sim: str, open_client: Any) -> None:
    await collect(open_client(config(sim, Protocol.OLLAMA, keep_alive="0")), ask())
    assert await loaded_models(sim) == []
    await collect(open_client(config(sim, Protocol.OLLAMA, keep_alive="15m")), ask())
    assert await loaded_models(sim) == [MODEL]


async def test_openai_client_sends_its_bearer_token(sim: str, open_client: Any) -> None:
    anonymous = open_client(config(sim, Protocol.OPENAI, api_key=None))
    _, error = await collect_until_error(anonymous, ask())
    assert (error.kind, error.status, error.retryable) == ("http_status", 401, False)
    assert await anonymous.health() is False
    assert await collect(open_client(config(sim, Protocol.OPENAI)), ask("authorised")) == ["authorised"]


# ----- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_unknown_model_is_a_client_error_not_worth_retrying(
    sim: str, open_client: Any, protocol: Protocol
) -> None:
    client = open_client(config(sim, protocol, model="missing:7b"))
    _, error = await collect_until_error(client, ask())
    assert (error.kind, error.status, error.retryable, error.before_first_token) == (
        "http_status",
        404,
        False,
        True,
    )
    assert "missing:7b" in str(error)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_nothing_listening_is_refused(open_client: Any, protocol: Protocol) -> None:
    client = open_client(config(f"http://127.0.0.1:{free_port()}", protocol))
    _, error = await collect_until_error(client, ask())
    assert (error.kind, error.before_first_token, error.retryable) == ("refused", True, True)
    assert await client.health() is False


# fault body, expected kind, whether the failure came before any token, expected status
FAULTS: list[tuple[dict[str, Any], str, bool, int | None]] = [
    ({"fault": "refuse"}, "refused", True, None),
    ({"fault": "http_503"}, "http_status", True, 503),
    ({"fault": "http_500"}, "http_status", True, 500),
    ({"fault": "stall_after_headers"}, "timeout", True, None),
    ({"fault": "stall_first_token"}, "timeout", True, None),
    ({"fault": "reset_mid_stream"}, "protocol", False, None),
    ({"fault": "truncated"}, "protocol", False, None),
    ({"fault": "malformed_line"}, "protocol", False, None),
    ({"fault": "error_line", "message": "runner crashed"}, "server_error", False, None),
    ({"fault": "slow_tokens", "tokens_per_s": 1}, "timeout", False, None),
    ({"fault": "oversized"}, "protocol", False, None),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("fault", "kind", "before_first_token", "status"), FAULTS, ids=[f[0]["fault"] for f in FAULTS])
async def test_each_fault_raises_its_kind_and_never_looks_complete(
    sim: str,
    open_client: Any,
    protocol: Protocol,
    fault: dict[str, Any],
    kind: str,
    before_first_token: bool,
    status: int | None,
) -> None:
    client = open_client(config(sim, protocol, first_token_timeout_s=0.4, num_predict=8))
    await sim_control(sim, "/sim/faults", {**fault, "count": 1})
    started = time.monotonic()

    tokens, error = await collect_until_error(client, ask())

    assert (error.kind, error.before_first_token, error.status) == (kind, before_first_token, status)
    assert time.monotonic() - started < 5, "a fault must end the call promptly, never hang it"
    assert (tokens == []) is before_first_token
    if kind in ("refused", "timeout", "http_status"):
        assert error.retryable
    # The client recovers: the next call on the same pooled session gets the whole reply.
    assert "".join(await collect(client, ask())) == TEXT


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_total_timeout_bounds_a_slow_but_steady_stream(sim: str, open_client: Any, protocol: Protocol) -> None:
    await sim_control(sim, "/sim/config", {"tokens_per_s": 10})
    client = open_client(config(sim, protocol, total_timeout_s=0.3))
    tokens, error = await collect_until_error(client, ask())
    assert error.kind == "timeout"
    assert 0 < len(tokens) < 6


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_closing_the_client_cancels_a_running_stream(sim: str, protocol: Protocol) -> None:
    await sim_control(sim, "/sim/config", {"tokens_per_s": 5})
    client = make_client(config(sim, protocol))
    stream = client.stream_chat(ask())
    assert await anext(stream) == "one "
    started = time.monotonic()
    closing = asyncio.create_task(client.close())
    with pytest.raises(UpstreamError) as failure:
        await anext(stream)
    await closing
    assert time.monotonic() - started < 1.0, "close() must end a waiting stream at once, not at its timeout"
    assert (failure.value.kind, failure.value.before_first_token, failure.value.retryable) == (
        "cancelled",
        False,
        False,
    )
    with pytest.raises(UpstreamError, match="closed"):
        await anext(client.stream_chat(ask()))


# ----- decoders alone ----------------------------------------------------------------------------

OLLAMA_STREAM = (
    '{"message":{"role":"assistant","content":"Hej "},"done":false}\n'
    '{"message":{"role":"assistant","content":"världen"},"done":false}\n'
    '{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}\n'
).encode()
OPENAI_STREAM = (
    ": keep-alive\n\n"
    'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hej "},"finish_reason":null}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{"content":"världen"},"finish_reason":null}]}\r\n\r\n'
    'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    "data: [DONE]\n\n"
).encode()


def feed_in_pieces(decoder: OllamaChatDecoder | OpenAIChatDecoder, data: bytes, size: int) -> list[str]:
    tokens: list[str] = []
    for offset in range(0, len(data), size):
        tokens += decoder.feed(data[offset : offset + size]).tokens
    tokens += decoder.finish().tokens
    return tokens


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_decoders_reassemble_lines_and_characters_split_across_reads(size: int) -> None:
    assert feed_in_pieces(OllamaChatDecoder(), OLLAMA_STREAM, size) == ["Hej ", "världen"]
    assert feed_in_pieces(OpenAIChatDecoder(), OPENAI_STREAM, size) == ["Hej ", "världen"]


def test_decoders_refuse_streams_without_their_done_marker() -> None:
    with pytest.raises(StreamFault, match="done marker") as ollama_cut:
        feed_in_pieces(OllamaChatDecoder(), OLLAMA_STREAM.rsplit(b"\n", 2)[0], 5)
    assert ollama_cut.value.kind == "protocol"
    with pytest.raises(StreamFault, match="done marker"):
        feed_in_pieces(OpenAIChatDecoder(), OPENAI_STREAM.replace(b"data: [DONE]\n\n", b""), 5)


def test_decoders_report_error_lines_and_garbage() -> None:
    error_line = OllamaChatDecoder().feed(b'{"error":"out of memory"}\n').fault
    assert error_line is not None
    assert (error_line.kind, error_line.message) == ("server_error", "out of memory")
    sse_error = OpenAIChatDecoder().feed(b'data: {"error":{"message":"overloaded"}}\n\n').fault
    assert sse_error is not None
    assert (sse_error.kind, sse_error.message) == ("server_error", "overloaded")
    for garbage in (b"<html>502</html>\n", b"[1, 2]\n"):
        broken = OllamaChatDecoder().feed(garbage).fault
        assert broken is not None
        assert broken.kind == "protocol"
    assert OpenAIChatDecoder().feed(b'{"choices": []}\n\n').fault is not None


def test_tokens_read_together_with_a_broken_line_still_reach_the_caller() -> None:
    good = b'{"message":{"content":"Hej"},"done":false}\n{"message":{"content":" Anna"},"done":false}\n'
    decoded = OllamaChatDecoder().feed(good + b"<html>502</html>\n")
    assert decoded.tokens == ["Hej", " Anna"]
    assert decoded.fault is not None
    assert decoded.fault.kind == "protocol"
