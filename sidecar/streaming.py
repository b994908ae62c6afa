"""Streamed answers: one writer for every streaming endpoint, one encoder per wire format.

An answer streams in three parts. Until its first frame is ready nothing is sent, so a
refusal still gets its own status: a failure then is the caller's to answer. Then the
headers go, and the frames as they come, each write bounded by `BoundedStreamResponse`
(a client that takes none of it is cut off). A complete body ends with its final frame
and the end of the body. A source that fails once the headers are gone can no longer
change the status: the format's error frame ends the body where the format has one
(NDJSON, SSE), and otherwise (audio, a relayed body) the connection is closed before
the body's last chunk, which every HTTP client reports as an incomplete response.
However the answer ends, a client that left included, its source is closed, so the
source's hold on shared work goes at once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import web

from voicelane.core.refusals import LaneError
from voicelane.sidecar.audio import wav_header
from voicelane.sidecar.egress import BoundedStreamResponse
from voicelane.sidecar.errors import ApiError, http_error

Item = TypeVar("Item")
ItemContra = TypeVar("ItemContra", contravariant=True)
Failure = TypeVar("Failure", bound=BaseException)


class Encoder(Protocol[ItemContra]):
    """One wire format: its content type, how its body opens, how a frame is spelled, how it ends."""

    @property
    def content_type(self) -> str | None: ...

    def opening(self) -> bytes: ...

    def frame(self, item: ItemContra) -> bytes: ...

    def last(self, item: ItemContra) -> bytes:
        """The final frame of a complete body, with whatever marks the body as complete."""
        ...


def _json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


class Ndjson:
    """Newline-delimited JSON: one object a line (the sidecar's /v1/text stream, Ollama's streams)."""

    content_type = "application/x-ndjson"

    def opening(self) -> bytes:
        return b""

    def frame(self, item: Mapping[str, Any]) -> bytes:
        return _json(item) + b"\n"

    def last(self, item: Mapping[str, Any]) -> bytes:
        return self.frame(item)


@dataclass(frozen=True)
class ServerSentEvents:
    """Server-sent events, one `data:` event per object; `done` follows the last event of a complete body.

    OpenAI's streams end with `data: [DONE]`; a stream cut by an error has no such event,
    so no client takes it for a complete one.
    """

    done: str | None = None
    content_type = "text/event-stream"

    def opening(self) -> bytes:
        return b""

    def frame(self, item: Mapping[str, Any]) -> bytes:
        return b"data: " + _json(item) + b"\n\n"

    def last(self, item: Mapping[str, Any]) -> bytes:
        # One write with its final event, as one chunk of the body.
        ending = f"data: {self.done}\n\n".encode() if self.done is not None else b""
        return self.frame(item) + ending


@dataclass(frozen=True)
class Audio:
    """16-bit mono PCM as it is synthesised, raw or behind a WAV header of unknown length."""

    sample_rate: int
    wav: bool

    @property
    def content_type(self) -> str:
        return "audio/wav" if self.wav else "application/octet-stream"

    def opening(self) -> bytes:
        return wav_header(self.sample_rate) if self.wav else b""

    def frame(self, item: bytes) -> bytes:
        return item

    def last(self, item: bytes) -> bytes:
        return item


class Passthrough:
    """Bytes as another server sent them; its content type travels in the headers it sent."""

    content_type = None

    def opening(self) -> bytes:
        return b""

    def frame(self, item: bytes) -> bytes:
        return item

    def last(self, item: bytes) -> bytes:
        return item


@dataclass
class Streamed(Generic[Failure]):
    """An answer that was streamed: its response, and what broke its body after the headers, if anything."""

    response: web.StreamResponse
    failure: Failure | None = None


async def stream(
    request: web.Request,
    source: AsyncIterator[Item],
    encoder: Encoder[Item],
    *,
    headers: Mapping[str, str] | Callable[[], Awaitable[Mapping[str, str]]],
    send_timeout_s: float,
    breaks: Callable[[BaseException], Failure | None],
    status: int = 200,
    wait_for_first: bool = True,
    final: Callable[[], Awaitable[Item]] | None = None,
    error_frame: Callable[[Failure], Item] | None = None,
) -> Streamed[Failure]:
    """Stream `source` to the client in `encoder`'s format, then `final()`'s frame.

    With `wait_for_first`, nothing is sent before the source's first frame (or its end):
    whatever fails until then is raised to the caller. `headers` may be a coroutine
    function, called only once that first frame is there (headers that say what the
    answer turned out to be). After the headers, an exception that `breaks` turns into a
    failure ends the body: with `error_frame(failure)` when given, else by closing the
    connection before the last chunk; the failure is returned. One it turns into None
    (a client that left, above all) propagates.
    """
    try:
        pending: list[Item] = []
        if wait_for_first:
            with contextlib.suppress(StopAsyncIteration):
                pending.append(await anext(source))
        response = BoundedStreamResponse(
            status=status, headers=await _with_type(headers, encoder), send_timeout_s=send_timeout_s
        )
        await response.prepare(request)
        try:
            opening = encoder.opening()
            if opening:
                await response.write(opening)
            for item in pending:
                await response.write(encoder.frame(item))
            pending.clear()
            async for item in source:
                await response.write(encoder.frame(item))
            if final is not None:
                await response.write(encoder.last(await final()))
        except BaseException as exc:
            failure = breaks(exc)
            if failure is None:
                raise
            if error_frame is None:
                if request.transport is not None:
                    request.transport.close()
                return Streamed(response, failure)
            await response.write(encoder.frame(error_frame(failure)))
            await response.write_eof()
            return Streamed(response, failure)
        await response.write_eof()
        return Streamed(response)
    finally:
        if isinstance(source, AsyncGenerator):
            await source.aclose()


def lane_failure(exc: BaseException) -> ApiError | None:
    """A lane's refusal or failure, as the HTTP error that says it; None for anything else."""
    return http_error(exc) if isinstance(exc, ApiError | LaneError) else None


async def _with_type(
    headers: Mapping[str, str] | Callable[[], Awaitable[Mapping[str, str]]], encoder: Encoder[Any]
) -> dict[str, str]:
    given = dict(await headers()) if callable(headers) else dict(headers)
    if encoder.content_type is None or "Content-Type" in given:
        return given
    return {"Content-Type": encoder.content_type, **given}
