"""Streaming answers to clients, bounded by how long a client may stop reading.

aiohttp waits without limit for a client that keeps its connection open but takes no
more data (its TCP window stays shut): the handler, the connection and everything the
answer holds (a whole email's audio, say) stay pinned for as long as the client likes.
A `BoundedStreamResponse` gives every write `send_timeout_s` to go out; past that it
resets the connection and raises `ClientTooSlow`, which the server answers by closing
quietly. A client that reads slowly but steadily (playing audio as it comes) never
trips it: only a write that makes no headway for the whole bound does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter


class ClientTooSlow(ConnectionResetError):
    """A client took none of a streamed answer for `timeout_s`; its connection was reset."""

    def __init__(self, response: web.StreamResponse, timeout_s: float) -> None:
        super().__init__(f"the client took none of the answer for {timeout_s:g} s; connection reset")
        self.response = response
        self.timeout_s = timeout_s


class BoundedStreamResponse(web.StreamResponse):
    """A StreamResponse whose writes each get at most `send_timeout_s` to go out."""

    def __init__(self, *, send_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.send_timeout_s = send_timeout_s
        self._client: web.BaseRequest | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        self._client = request
        return await super().prepare(request)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._bounded(super().write(data))

    async def write_eof(self, data: bytes = b"") -> None:
        await self._bounded(super().write_eof(data))

    async def _bounded(self, sending: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(self.send_timeout_s):
                await sending
        except TimeoutError:
            self._reset()
            raise ClientTooSlow(self, self.send_timeout_s) from None

    def _reset(self) -> None:
        transport = self._client.transport if self._client is not None else None
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close with a reset, so the kernel drops the unsent bytes now rather
            # than keep offering them to a peer that takes none.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
