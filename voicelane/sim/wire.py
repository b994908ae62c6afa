"""Wire formats of the simulated APIs: Ollama NDJSON chat/generate and OpenAI SSE chat completions.

A dialect turns tokens, the end of a reply and failures into the exact bytes each API
sends, so the server's streaming loop is the same for every endpoint and the formats
can be checked without a socket.
"""

from __future__ import annotations

import json
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# The status text real Ollama sends when parallel slots and its queue are full.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
SIM_VERSION = "0.12.6"


def timestamp(wall: float) -> str:
    """RFC 3339 with the local offset, as Ollama writes `created_at` and `expires_at`."""
    return datetime.fromtimestamp(wall, UTC).astimezone().isoformat()


def dumps(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def ollama_error(message: str) -> dict[str, Any]:
    return {"error": message}


def openai_error(message: str, *, kind: str = "api_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


@dataclass(frozen=True)
class Timings:
    """What a finished generation reports about itself (Ollama's statistics fields)."""

    load_s: float
    prompt_eval_s: float
    eval_s: float
    total_s: float
    prompt_tokens: int
    eval_tokens: int

    def ollama_fields(self) -> dict[str, int]:
        return {
            "total_duration": ns(self.total_s),
            "load_duration": ns(self.load_s),
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": ns(self.prompt_eval_s),
            "eval_count": self.eval_tokens,
            "eval_duration": ns(self.eval_s),
        }

    def openai_usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.eval_tokens,
            "total_tokens": self.prompt_tokens + self.eval_tokens,
        }


class Dialect(ABC):
    """One API's framing of a generated reply."""

    content_type: str
    whole_content_type = "application/json; charset=utf-8"

    def __init__(self, model: str, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.model = model
        self.wall_clock = wall_clock

    @abstractmethod
    def token_frame(self, token: str) -> bytes: ...

    @abstractmethod
    def final_frames(self, done_reason: str, timings: Timings) -> bytes: ...

    @abstractmethod
    def malformed_frame(self) -> bytes: ...

    @abstractmethod
    def error_frame(self, message: str) -> bytes: ...

    @abstractmethod
    def whole(self, text: str, done_reason: str, timings: Timings) -> dict[str, Any]: ...

    @abstractmethod
    def error_body(self, message: str, *, kind: str = "api_error", code: str | None = None) -> dict[str, Any]: ...


class OllamaDialect(Dialect):
    """NDJSON: one JSON object per line, the last with `done: true` and the statistics."""

    content_type = "application/x-ndjson"

    def __init__(self, model: str, *, chat: bool, wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__(model, wall_clock=wall_clock)
        self.chat = chat

    def _content(self, text: str) -> dict[str, Any]:
        if self.chat:
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    def _line(self, payload: dict[str, Any]) -> bytes:
        return dumps(payload) + b"\n"

    def token_frame(self, token: str) -> bytes:
        return self._line(
            {
                "model": self.model,
                "created_at": timestamp(self.wall_clock()),
                **self._content(token),
                "done": False,
            }
        )

    def final_frames(self, done_reason: str, timings: Timings) -> bytes:
        return self._line(self.whole("", done_reason, timings))

    def malformed_frame(self) -> bytes:
        return b'{"model":"' + self.model.encode() + b'","message":{"role":"assist\n'

    def error_frame(self, message: str) -> bytes:
        return self._line(ollama_error(message))

    def whole(self, text: str, done_reason: str, timings: Timings) -> dict[str, Any]:
        return {
            "model": self.model,
            "created_at": timestamp(self.wall_clock()),
            **self._content(text),
            "done": True,
            "done_reason": done_reason,
            **timings.ollama_fields(),
        }

    def control(self, done_reason: str) -> dict[str, Any]:
        """The answer to a load/unload-only call (no messages or prompt)."""
        return {
            "model": self.model,
            "created_at": timestamp(self.wall_clock()),
            **self._content(""),
            "done_reason": done_reason,
            "done": True,
        }

    def error_body(self, message: str, *, kind: str = "api_error", code: str | None = None) -> dict[str, Any]:
        return ollama_error(message)


class OpenAIChatDialect(Dialect):
    """SSE: `data: {chat.completion.chunk}` events, a chunk with finish_reason, then `data: [DONE]`."""

    content_type = "text/event-stream"

    def __init__(self, model: str, *, include_usage: bool = False, wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__(model, wall_clock=wall_clock)
        self.include_usage = include_usage
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(wall_clock())
        self._sent_role = False

    @staticmethod
    def _event(payload: object) -> bytes:
        return b"data: " + dumps(payload) + b"\n\n"

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_voicelane_sim",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def token_frame(self, token: str) -> bytes:
        delta: dict[str, Any] = {"content": token}
        if not self._sent_role:
            delta = {"role": "assistant", **delta}
            self._sent_role = True
        return self._event(self._chunk(delta, None))

    def final_frames(self, done_reason: str, timings: Timings) -> bytes:
        frames = self._event(self._chunk({}, done_reason))
        if self.include_usage:
            usage_chunk = {**self._chunk({}, None), "choices": [], "usage": timings.openai_usage()}
            frames += self._event(usage_chunk)
        return frames + b"data: [DONE]\n\n"

    def malformed_frame(self) -> bytes:
        return b'data: {"id":"' + self.id.encode() + b'","choices":[{"delta":{"content":\n\n'

    def error_frame(self, message: str) -> bytes:
        return self._event(openai_error(message))

    def whole(self, text: str, done_reason: str, timings: Timings) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_voicelane_sim",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": done_reason}],
            "usage": timings.openai_usage(),
        }

    def error_body(self, message: str, *, kind: str = "api_error", code: str | None = None) -> dict[str, Any]:
        return openai_error(message, kind=kind, code=code)
