"""What the simulated model says: the reply text, its word-sized tokens, and where generation stops.

By default the reply echoes the last user message, so a test can send a text through a
whole pipeline and recognise it at the far end. Truncation follows the real servers:
a stop sequence ends the reply before it (reason "stop"), the token bound cuts it
(reason "length").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

ReplyMode = Literal["echo", "fixed"]
DEFAULT_FIXED_REPLY = "Hello from the VoiceLane simulator."

_TOKEN = re.compile(r"\s*\S+\s*")


def tokenize(text: str) -> list[str]:
    """Word-sized tokens, each word with the whitespace after it; joined they give `text` back."""
    tokens = _TOKEN.findall(text)
    if not tokens and text:
        return [text]
    return tokens


def count_tokens(texts: Iterable[str]) -> int:
    return sum(len(tokenize(text)) for text in texts)


def last_user_content(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def content_text(content: object) -> str:
    """Message content as text: a string, or the text parts of an OpenAI content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


@dataclass(frozen=True)
class Reply:
    tokens: tuple[str, ...]
    done_reason: Literal["stop", "length"]

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def choose_text(mode: ReplyMode, fixed_text: str, prompt_text: str) -> str:
    return prompt_text if mode == "echo" else fixed_text


def generate_reply(text: str, *, max_tokens: int | None = None, stop: Sequence[str] = ()) -> Reply:
    """Cut `text` at the first stop sequence, then at `max_tokens` tokens (None or negative: no bound)."""
    cut = len(text)
    for sequence in stop:
        if sequence:
            position = text.find(sequence)
            if 0 <= position < cut:
                cut = position
    tokens = tokenize(text[:cut])
    if max_tokens is not None and max_tokens >= 0 and len(tokens) > max_tokens:
        return Reply(tuple(tokens[:max_tokens]), "length")
    return Reply(tuple(tokens), "stop")


def oversized_tokens(text: str, count: int) -> tuple[str, ...]:
    """`count` tokens that keep repeating the reply: a server ignoring its token bound."""
    base = tokenize(text) or ["more "]
    if not base[-1][-1:].isspace():
        base[-1] += " "
    return tuple(base[index % len(base)] for index in range(count))


EMBEDDING_DIMENSIONS = 8


def embedding(text: str) -> list[float]:
    """A stable unit vector for `text`: the same input always embeds the same, as on a real server."""
    import hashlib
    import math

    digest = hashlib.sha256(text.encode("utf-8")).digest()
    raw = [(byte - 127.5) / 127.5 for byte in digest[:EMBEDDING_DIMENSIONS]]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [round(value / norm, 6) for value in raw]


def embedding_inputs(value: object) -> list[str] | None:
    """`input` as Ollama and OpenAI take it (a string or a list of strings), or None if it is neither."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return list(value)
    return None
