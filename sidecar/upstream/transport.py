"""The HTTP side shared by both upstream clients: one pooled session, the timeouts, and error mapping.

A protocol module says which path to call, with which body and headers, and how to
decode the stream; this module makes the call and turns every way it can go wrong
into an `UpstreamError` of the right kind.

Timeouts (all from `UpstreamConfig`): connecting is bounded by `connect_timeout_s`;
the first token must arrive within `first_token_timeout_s` of the call starting
(headers that come early do not count); after it, each further piece of the stream
must come within the idle timeout; the whole call is bounded by `total_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from voicelane.sidecar.config import UpstreamConfig
from voicelane.sidecar.upstream.base import ChatRequest, ErrorKind, UpstreamClient, UpstreamError
from voicelane.sidecar.upstream.decoding import StreamDecoder, StreamFault

MAX_ERROR_BODY_BYTES = 64 * 1024
# A server that honours the token bound sends at most one content chunk per token; the
# slack covers servers that flush a stray whitespace or role chunk.
CHUNK_SLACK = 8
# Characters per token beyond which a reply is treated as a runaway, whatever its chunking.
MAX_CHARS_PER_TOKEN = 64


def _error_message(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return text[:300] or "(empty body)"
    if isinstance(payload, dict) and "error" in payload:
        error = payload["error"]
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    return text[:300]


class HttpUpstreamClient(UpstreamClient):
    """A streaming chat client over one pooled aiohttp session, created lazily in the running loop."""

    health_path: str
    chat_path: str

    def __init__(self, config: UpstreamConfig, *, idle_timeout_s: float | None = None) -> None:
        self.config = config
        self.base_url = config.url.rstrip("/")
        # With no separate setting, a pause between tokens longer than the wait allowed for the
        # first token means the server has stalled.
        self.idle_timeout_s = idle_timeout_s if idle_timeout_s is not None else config.first_token_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._streaming: set[aiohttp.ClientResponse] = set()
        self._closed = False

    # ----- what each protocol provides -------------------------------------------------------

    @abstractmethod
    def chat_body(self, request: ChatRequest) -> dict[str, Any]: ...

    @abstractmethod
    def decoder(self) -> StreamDecoder: ...

    @abstractmethod
    def health_ok(self, payload: object) -> bool: ...

    def headers(self) -> dict[str, str]:
        return {}

    # ----- session -----------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise UpstreamError("cancelled", f"the client for {self.base_url} is closed")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.config.max_connections),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s),
                headers=self.headers(),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        self._closed = True
        # Closing the session drops the connections but leaves a pending body read waiting
        # forever; wake each running stream so its caller gets a `cancelled` error at once.
        for response in list(self._streaming):
            response.content.set_exception(aiohttp.ClientConnectionError("the client was closed"))
        if self._session is not None:
            await self._session.close()

    # ----- calls -------------------------------------------------------------------------------

    async def health(self) -> bool:
        timeout = min(self.config.health_interval_s, self.config.connect_timeout_s * 2)
        try:
            async with asyncio.timeout(timeout):
                async with self.session().get(self.base_url + self.health_path) as response:
                    if response.status != 200:
                        return False
                    return self.health_ok(await response.json(content_type=None))
        except asyncio.CancelledError:
            raise
        except Exception:  # a probe reports what it saw; it must never take its caller down
            return False

    @contextlib.asynccontextmanager
    async def forward(self, method: str, path: str, body: bytes | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        # Each read must come within the first-token wait: a forwarded answer is a stream too.
        timeout = aiohttp.ClientTimeout(
            total=self.config.total_timeout_s,
            sock_connect=self.config.connect_timeout_s,
            sock_read=self.config.first_token_timeout_s,
        )
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            response = await self.session().request(
                method, self.base_url + path, data=body, headers=headers, timeout=timeout
            )
        except TimeoutError as exc:
            raise self._timeout_error(exc, first_token=True, deadline_is_total=False) from None
        except aiohttp.ClientError as exc:
            raise self._connection_error(exc, before_first_token=True, response_started=False) from exc
        self._streaming.add(response)
        try:
            yield response
        finally:
            self._streaming.discard(response)
            if response.content.at_eof():
                response.release()
            else:
                # An unfinished body cannot be reused: drop the connection rather than pool it.
                response.close()

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        total_deadline = started + self.config.total_timeout_s
        first_token_deadline = min(started + self.config.first_token_timeout_s, total_deadline)
        max_tokens = request.num_predict if request.num_predict is not None else self.config.num_predict
        session = self.session()
        try:
            async with asyncio.timeout_at(first_token_deadline):
                headers = request.call_info.headers() if request.call_info is not None else None
                response = await session.post(
                    self.base_url + self.chat_path, json=self.chat_body(request), headers=headers
                )
        except TimeoutError as exc:
            raise self._timeout_error(
                exc, first_token=True, deadline_is_total=first_token_deadline == total_deadline
            ) from None
        except aiohttp.ClientError as exc:
            raise self._connection_error(exc, before_first_token=True, response_started=False) from exc

        tokens = 0
        chars = 0
        finished = False
        self._streaming.add(response)
        try:
            if not 200 <= response.status < 300:
                raise await self._status_error(response, min(total_deadline, loop.time() + 2.0))
            decoder = self.decoder()
            while True:
                waiting_first = tokens == 0
                deadline = (
                    first_token_deadline if waiting_first else min(loop.time() + self.idle_timeout_s, total_deadline)
                )
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await response.content.readany()
                    decoded = decoder.feed(data) if data else decoder.finish()
                except TimeoutError as exc:
                    raise self._timeout_error(
                        exc,
                        first_token=waiting_first,
                        deadline_is_total=deadline >= total_deadline,
                    ) from None
                except StreamFault as fault:
                    raise UpstreamError(fault.kind, fault.message, before_first_token=tokens == 0) from None
                except aiohttp.ClientError as exc:
                    raise self._connection_error(exc, before_first_token=tokens == 0, response_started=True) from exc
                for token in decoded.tokens:
                    tokens += 1
                    chars += len(token)
                    if tokens > max_tokens + CHUNK_SLACK or chars > max_tokens * MAX_CHARS_PER_TOKEN + 1024:
                        raise UpstreamError(
                            "protocol",
                            f"the reply runs past its bound of {max_tokens} tokens",
                            before_first_token=False,
                        )
                    yield token
                if decoded.fault is not None:
                    raise UpstreamError(decoded.fault.kind, decoded.fault.message, before_first_token=tokens == 0)
                if decoded.done:
                    finished = True
                    return
        finally:
            self._streaming.discard(response)
            if finished:
                response.release()
            else:
                # An unfinished body cannot be reused: drop the connection rather than return it to the pool.
                response.close()

    # ----- error mapping -------------------------------------------------------------------------

    def _timeout_error(self, exc: BaseException, *, first_token: bool, deadline_is_total: bool) -> UpstreamError:
        if self._closed:
            return UpstreamError("cancelled", "the client was closed", before_first_token=first_token)
        if isinstance(exc, aiohttp.ServerTimeoutError):
            what = f"could not connect to {self.base_url} within {self.config.connect_timeout_s} s"
        elif deadline_is_total:
            what = f"the call to {self.base_url} took longer than {self.config.total_timeout_s} s"
        elif first_token:
            what = f"no first token from {self.base_url} within {self.config.first_token_timeout_s} s"
        else:
            what = f"{self.base_url} sent nothing for {self.idle_timeout_s} s mid-stream"
        return UpstreamError("timeout", what, before_first_token=first_token)

    def _connection_error(
        self, exc: aiohttp.ClientError, *, before_first_token: bool, response_started: bool
    ) -> UpstreamError:
        if self._closed:
            return UpstreamError("cancelled", "the client was closed", before_first_token=before_first_token)
        if isinstance(exc, aiohttp.ClientConnectorError):
            kind: ErrorKind = "refused"
            what = f"cannot connect to {self.base_url}: {exc.os_error.strerror or exc.os_error}"
        elif not response_started and isinstance(exc, aiohttp.ClientConnectionError):
            kind, what = "refused", f"{self.base_url} closed the connection without answering"
        elif isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            kind, what = "protocol", f"the stream from {self.base_url} broke off: {exc or type(exc).__name__}"
        else:
            kind, what = "protocol", f"a malformed HTTP answer from {self.base_url}: {exc}"
        return UpstreamError(kind, what, before_first_token=before_first_token)

    async def _status_error(self, response: aiohttp.ClientResponse, deadline: float) -> UpstreamError:
        raw = bytearray()
        try:
            async with asyncio.timeout_at(deadline):
                while len(raw) < MAX_ERROR_BODY_BYTES and (piece := await response.content.readany()):
                    raw += piece
        except (TimeoutError, aiohttp.ClientError):
            pass  # the status alone says enough
        message = _error_message(bytes(raw[:MAX_ERROR_BODY_BYTES]))
        return UpstreamError(
            "http_status",
            f"{self.base_url} answered HTTP {response.status}: {message}",
            status=response.status,
        )
