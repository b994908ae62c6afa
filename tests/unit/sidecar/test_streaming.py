"""The streaming writer over real HTTP: what a client sees when a stream starts, ends, breaks or is left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from voicelane.sidecar import streaming
from voicelane.sidecar.audio import wav_header
from voicelane.sidecar.errors import ApiError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def refused() -> ApiError:
    return ApiError(503, "guardian_emergency", "the model is overloaded", retry_after_s=2)


async def serve(handler: Handler) -> TestClient[web.Request, web.Application]:
    app = web.Application()
    app.router.add_get("/", handler)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


async def raw_get(client: TestClient[web.Request, web.Application]) -> bytes:
    """The whole answer as bytes on the wire, chunk framing included."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data


async def test_a_failure_before_the_first_frame_is_the_callers_to_answer_with_a_status() -> None:
    async def source() -> AsyncIterator[dict[str, Any]]:
        raise refused()
        yield {}  # pragma: no cover - makes this a generator

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            streamed = await streaming.stream(
                request,
                source(),
                streaming.Ndjson(),
                headers={},
                send_timeout_s=5,
                breaks=streaming.lane_failure,
            )
        except ApiError as exc:
            return exc.response()
        return streamed.response

    client = await serve(handler)
    try:
        response = await client.get("/")
        assert response.status == 503
        assert response.headers["Retry-After"] == "2"
        assert (await response.json())["error"]["code"] == "guardian_emergency"
    finally:
        await client.close()


async def test_ndjson_that_breaks_after_the_headers_ends_with_its_error_frame_and_a_complete_body() -> None:
    async def source() -> AsyncIterator[dict[str, Any]]:
        yield {"text": "Hej"}
        raise refused()

    async def handler(request: web.Request) -> web.StreamResponse:
        streamed = await streaming.stream(
            request,
            source(),
            streaming.Ndjson(),
            headers={"X-Request-Id": "r1"},
            send_timeout_s=5,
            breaks=streaming.lane_failure,
            error_frame=lambda failure: {"done": True, **failure.body()},
        )
        failures.append(streamed.failure)
        return streamed.response

    failures: list[ApiError | None] = []
    client = await serve(handler)
    try:
        response = await client.get("/")
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        assert response.headers["X-Request-Id"] == "r1"
        body = await response.read()  # raises if the body was cut
        assert body == (
            b'{"text": "Hej"}\n'
            b'{"done": true, "error": {"code": "guardian_emergency", "message": "the model is overloaded"}}\n'
        )
    finally:
        await client.close()
    assert [failure.code if failure else None for failure in failures] == ["guardian_emergency"]


async def test_a_complete_openai_stream_sends_its_last_event_and_done_as_one_chunk() -> None:
    async def source() -> AsyncIterator[dict[str, Any]]:
        yield {"n": 1}

    async def final() -> dict[str, Any]:
        return {"n": "ä"}

    async def handler(request: web.Request) -> web.StreamResponse:
        return (
            await streaming.stream(
                request,
                source(),
                streaming.ServerSentEvents(done="[DONE]"),
                headers={},
                send_timeout_s=5,
                breaks=streaming.lane_failure,
                final=final,
            )
        ).response

    client = await serve(handler)
    try:
        wire = await raw_get(client)
    finally:
        await client.close()
    head, _, body = wire.partition(b"\r\n\r\n")
    assert b"Content-Type: text/event-stream" in head
    assert b"Transfer-Encoding: chunked" in head
    chunks = [b'data: {"n": 1}\n\n', 'data: {"n": "ä"}\n\ndata: [DONE]\n\n'.encode()]
    assert body == b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for chunk in chunks) + b"0\r\n\r\n"


async def test_audio_that_breaks_after_the_headers_is_cut_before_the_final_chunk() -> None:
    async def source() -> AsyncIterator[bytes]:
        yield b"\x01\x00" * 8
        raise refused()

    async def handler(request: web.Request) -> web.StreamResponse:
        streamed = await streaming.stream(
            request,
            source(),
            streaming.Audio(16000, wav=True),
            headers={},
            send_timeout_s=5,
            breaks=streaming.lane_failure,
        )
        failures.append(streamed.failure)
        return streamed.response

    failures: list[ApiError | None] = []
    client = await serve(handler)
    try:
        wire = await raw_get(client)
        response = await client.get("/")
        assert response.status == 200
        assert response.headers["Content-Type"] == "audio/wav"
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    finally:
        await client.close()
    _, _, body = wire.partition(b"\r\n\r\n")
    header = wav_header(16000)
    assert body.startswith(f"{len(header):x}\r\n".encode() + header + b"\r\n")
    assert b"\x01\x00" * 8 in body
    assert not body.endswith(b"0\r\n\r\n")
    assert [failure.code if failure else None for failure in failures] == ["guardian_emergency"] * 2


async def test_headers_computed_after_the_first_frame_and_the_source_closed_when_the_client_leaves() -> None:
    closed = asyncio.Event()
    calls: list[str] = []

    async def source() -> AsyncIterator[bytes]:
        try:
            calls.append("first frame")
            yield b"x" * 1024
            while True:
                await asyncio.sleep(0.01)
                yield b"x" * 1024
        finally:
            closed.set()

    async def headers() -> dict[str, str]:
        calls.append("headers")
        return {"X-Voicelane-Tier": "fast"}

    async def handler(request: web.Request) -> web.StreamResponse:
        return (
            await streaming.stream(
                request,
                source(),
                streaming.Audio(16000, wav=False),
                headers=headers,
                send_timeout_s=5,
                breaks=streaming.lane_failure,
            )
        ).response

    client = await serve(handler)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"X-Voicelane-Tier: fast" in head
        assert b"Content-Type: application/octet-stream" in head
        writer.close()
        await asyncio.wait_for(closed.wait(), timeout=5)
    finally:
        await client.close()
    assert calls == ["first frame", "headers"]
