"""Incremental decoders for streamed chat replies: Ollama's NDJSON and OpenAI's server-sent events.

Bytes go in as they arrive, in pieces of any size (a line, a UTF-8 character or an
event may be split across reads); tokens and the done marker come out. Anything that
breaks the format raises `StreamFault` instead of being skipped, because a skipped
line is a silently missing piece of what the listener hears.

The SSE side is written here rather than taken from a library: only the `data:` field
of a strict subset is needed, fed from aiohttp's byte stream, and it must reject
malformed events, which lenient parsers drop.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_LINE_BYTES = 1024 * 1024
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


class StreamFault(Exception):
    """The stream broke its format (`protocol`) or carried the server's own error (`server_error`)."""

    def __init__(self, kind: Literal["protocol", "server_error"], message: str) -> None:
        super().__init__(message)
        self.kind: Literal["protocol", "server_error"] = kind
        self.message = message


@dataclass
class Decoded:
    tokens: list[str] = field(default_factory=list)
    done: bool = False
    # A broken line after good ones in the same read: the tokens before it are still the caller's.
    fault: StreamFault | None = None


class LineSplitter:
    """Complete lines (without their newline) out of arbitrary byte pieces."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._pending = bytearray()
        self._max = max_line_bytes

    def feed(self, data: bytes) -> list[str]:
        self._pending += data
        *complete, rest = self._pending.split(b"\n")
        if len(rest) > self._max:
            raise StreamFault("protocol", f"a line longer than {self._max} bytes")
        self._pending = bytearray(rest)
        lines = []
        for raw in complete:
            try:
                lines.append(raw.rstrip(b"\r").decode("utf-8"))
            except UnicodeDecodeError:
                raise StreamFault("protocol", "a line that is not valid UTF-8") from None
        return lines

    @property
    def pending(self) -> bytes:
        return bytes(self._pending)


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise StreamFault("protocol", f"{what} is not JSON: {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise StreamFault("protocol", f"{what} is not a JSON object: {text[:80]!r}")
    return value


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


class StreamDecoder(ABC):
    def __init__(self) -> None:
        self._lines = LineSplitter()
        self.done = False
        self.done_reason: str | None = None

    def feed(self, data: bytes) -> Decoded:
        """The tokens `data` completes; a fault ends the stream after the tokens before it."""
        decoded = Decoded()
        for line in self._lines.feed(data):
            if self.done:
                break
            try:
                self._line(line, decoded)
            except StreamFault as fault:
                decoded.fault = fault
                break
        decoded.done = self.done
        return decoded

    def finish(self) -> Decoded:
        """The body ended: flush a last unterminated line, then insist on the done marker."""
        decoded = Decoded()
        if not self.done:
            tail = self._lines.pending
            if tail.strip():
                try:
                    text = tail.decode("utf-8")
                except UnicodeDecodeError:
                    raise StreamFault("protocol", "a line that is not valid UTF-8") from None
                self._line(text.rstrip("\r"), decoded)
            self._line("", decoded)
        if not self.done:
            raise StreamFault("protocol", "the stream ended without its done marker")
        decoded.done = True
        return decoded

    @abstractmethod
    def _line(self, line: str, decoded: Decoded) -> None: ...


class OllamaChatDecoder(StreamDecoder):
    """`/api/chat` NDJSON: `message.content` per line; `done: true` ends; `{"error": ...}` is a failure."""

    def _line(self, line: str, decoded: Decoded) -> None:
        if not line.strip():
            return
        chunk = _json_object(line, "a stream line")
        if "error" in chunk:
            raise StreamFault("server_error", _error_text(chunk["error"]))
        message = chunk.get("message")
        if message is not None and not isinstance(message, dict):
            raise StreamFault("protocol", "a stream line whose 'message' is not an object")
        content = message.get("content") if message else None
        if content is not None and not isinstance(content, str):
            raise StreamFault("protocol", "a stream line whose content is not a string")
        if content:
            decoded.tokens.append(content)
        if chunk.get("done") is True:
            self.done = True
            reason = chunk.get("done_reason")
            self.done_reason = reason if isinstance(reason, str) else None


class OpenAIChatDecoder(StreamDecoder):
    """`/v1/chat/completions` SSE: `data:` events of chat.completion.chunk, ended by `data: [DONE]`."""

    def __init__(self) -> None:
        super().__init__()
        self._data: list[str] = []

    def _line(self, line: str, decoded: Decoded) -> None:
        if not line:
            self._dispatch(decoded)
            return
        if line.startswith(":"):
            return  # an SSE comment, e.g. a keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        elif not _FIELD_NAME.fullmatch(name):
            # Unknown field names are ignored by the SSE rules; text that cannot be a
            # field name at all is a broken stream.
            raise StreamFault("protocol", f"a line that is not an SSE field: {line[:80]!r}")

    def _dispatch(self, decoded: Decoded) -> None:
        if not self._data:
            return
        data = "\n".join(self._data)
        self._data = []
        if data.strip() == "[DONE]":
            self.done = True
            return
        chunk = _json_object(data, "an event")
        if "error" in chunk:
            raise StreamFault("server_error", _error_text(chunk["error"]))
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise StreamFault("protocol", "an event without a 'choices' list")
        for choice in choices:
            if not isinstance(choice, dict):
                raise StreamFault("protocol", "a choice that is not an object")
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if content is not None and not isinstance(content, str):
                raise StreamFault("protocol", "a delta whose content is not a string")
            if content:
                decoded.tokens.append(content)
            if choice.get("finish_reason"):
                self.done_reason = str(choice["finish_reason"])
