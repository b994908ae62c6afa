"""What every upstream client offers the router: a token stream, a health probe, and one error type.

`UpstreamError.kind` is the vocabulary routing and metrics use:

- `refused`: no connection, or the server closed it before answering;
- `timeout`: nothing within connect, first-token, idle-between-tokens or total time;
- `http_status`: an answer with a non-2xx status (`status` says which);
- `protocol`: a stream that is malformed, too large, or ends without its done marker;
- `server_error`: the server reported an error inside an otherwise good stream;
- `cancelled`: the client was closed while the call ran.

`before_first_token` says whether any text reached the caller; only such calls may
fail over to another tier without the listener hearing a seam.

`retryable` says whose fault it was. The tier's (it is down, overloaded, stalled or
broken: `refused`, `timeout`, `protocol`, `server_error`, HTTP 5xx, 408, 425 and 429):
the call counts against the tier's circuit and, before its first token, fails over.
Not the tier's (the server refused this request: any other 4xx, such as a rejected key,
an unknown model or a bad field; or the lane closed its own client): the answer is the
same on a retry, so the call neither fails over, which would hide a misconfigured tier
behind the other one, nor counts against the circuit, which a client could otherwise
open with bad requests. `UpstreamError.fails_over` is that rule in code. (A tier whose
status endpoint refuses the lane as well, as one key guards both, fails its health checks
and its circuit opens like any unhealthy tier's.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal

import aiohttp

from voicelane.core.gate_headers import CallInfo
from voicelane.sidecar.config import Protocol, UpstreamConfig

ErrorKind = Literal["refused", "timeout", "http_status", "protocol", "server_error", "cancelled"]

# Statuses worth retrying elsewhere or later: the server is overloaded or broken, the request is fine.
_RETRYABLE_STATUSES = frozenset({408, 425, 429})


class UpstreamError(Exception):
    """A failed upstream call, classified for routing, circuits and metrics."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        before_first_token: bool = True,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.status = status
        self.before_first_token = before_first_token
        self.retryable = self._default_retryable(kind, status) if retryable is None else retryable

    @property
    def fails_over(self) -> bool:
        """Whether the lane may try the other tier: the tier failed, and no text reached the caller yet."""
        return self.retryable and self.before_first_token

    @staticmethod
    def _default_retryable(kind: ErrorKind, status: int | None) -> bool:
        # A 503 from Ollama means its queue is full: a failure of that tier, not of the request.
        if kind == "http_status":
            return status is not None and (status >= 500 or status in _RETRYABLE_STATUSES)
        return kind != "cancelled"

    def __repr__(self) -> str:
        return (
            f"UpstreamError(kind={self.kind!r}, status={self.status!r}, "
            f"before_first_token={self.before_first_token!r}, retryable={self.retryable!r}, message={self.message!r})"
        )


@dataclass(frozen=True)
class ChatRequest:
    """One chat call. Fields left as None take the upstream's configured value."""

    messages: Sequence[Mapping[str, str]]
    model: str | None = None
    num_predict: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] | None = None
    keep_alive: str | None = None
    # What a gate in front of the server needs to order and coalesce the call (sent as headers).
    call_info: CallInfo | None = None


class UpstreamClient(ABC):
    """A pooled client for one model server."""

    config: UpstreamConfig

    @abstractmethod
    def stream_chat(self, request: ChatRequest) -> AsyncIterator[str]:
        """Yield content tokens as they arrive.

        Raises UpstreamError on any failure; a stream that ends without the server's
        done marker raises (kind `protocol`) rather than looking complete.
        """

    def forward(
        self, method: str, path: str, body: bytes | None = None
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """Send `body` as it is to `path` on this server and hold its answer open for reading.

        Raises UpstreamError (`refused`, `timeout`) if no answer comes; any status is an answer.
        """
        raise UpstreamError("refused", f"{type(self).__name__} cannot forward requests")

    @abstractmethod
    async def health(self) -> bool:
        """True if the server answers its cheap status endpoint; never raises."""

    @abstractmethod
    async def close(self) -> None:
        """Release pooled connections; calls still running fail with kind `cancelled`."""


def make_client(config: UpstreamConfig) -> UpstreamClient:
    """The client for `config.protocol`."""
    if config.protocol is Protocol.OPENAI:
        from voicelane.sidecar.upstream.openai import OpenAIClient

        return OpenAIClient(config)
    from voicelane.sidecar.upstream.ollama import OllamaClient

    return OllamaClient(config)
