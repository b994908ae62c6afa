"""Faults the simulator injects on command, and which request each armed fault hits next.

A fault is armed through `POST /sim/faults` for the next N matching requests (or until
cleared). Without `paths` it hits the model endpoints (chat, generate, completions,
speech) but not health or listing endpoints, so a one-shot fault is not consumed by a
background health probe; `paths: ["*"]` includes every endpoint.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EndpointKind = Literal["generate", "speech", "meta"]


class Fault(StrEnum):
    REFUSE = "refuse"  # close the connection without any response
    RESET_MID_STREAM = "reset_mid_stream"  # a few tokens, then abort the transport
    STALL_AFTER_HEADERS = "stall_after_headers"  # response headers, then nothing at all
    STALL_FIRST_TOKEN = "stall_first_token"  # response headers, then the first token only after hold_s
    MALFORMED_LINE = "malformed_line"  # a line that is not JSON / not a valid SSE event, mid-stream
    ERROR_LINE = "error_line"  # Ollama's mid-stream {"error": "..."} line, then the stream ends
    TRUNCATED = "truncated"  # a few tokens, then a clean end of the body without the done marker
    HTTP_503 = "http_503"  # Ollama's queue-full answer
    HTTP_500 = "http_500"
    SLOW_TOKENS = "slow_tokens"  # the token rate drops to tokens_per_s
    OVERSIZED = "oversized"  # keeps streaming far past num_predict / max_tokens
    GARBAGE_AUDIO = "garbage_audio"  # the speech endpoint answers with bytes that are not audio
    # A stuck model runner: the request is read and takes its place (a parallel slot, or the queue
    # behind one) but nothing is ever answered, not even headers, while the health and listing
    # endpoints, which never touch the runner, keep answering. Ollama sends its headers with the
    # first token, so a client sees an open connection and silence.
    HANG = "hang"


_STREAM_SHAPED = frozenset({"generate", "speech"})
APPLIES_TO: dict[Fault, frozenset[str]] = {
    Fault.REFUSE: frozenset({"generate", "speech", "meta"}),
    Fault.HTTP_503: frozenset({"generate", "speech", "meta"}),
    Fault.HTTP_500: frozenset({"generate", "speech", "meta"}),
    Fault.STALL_AFTER_HEADERS: frozenset({"generate", "speech", "meta"}),
    Fault.HANG: frozenset({"generate", "speech", "meta"}),
    Fault.RESET_MID_STREAM: _STREAM_SHAPED,
    Fault.STALL_FIRST_TOKEN: _STREAM_SHAPED,
    Fault.SLOW_TOKENS: _STREAM_SHAPED,
    Fault.TRUNCATED: _STREAM_SHAPED,
    Fault.MALFORMED_LINE: frozenset({"generate"}),
    Fault.ERROR_LINE: frozenset({"generate"}),
    Fault.OVERSIZED: frozenset({"generate"}),
    Fault.GARBAGE_AUDIO: frozenset({"speech"}),
}


class FaultSpec(BaseModel):
    """The body of `POST /sim/faults`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: Fault
    count: int | None = Field(None, ge=1, description="Requests it hits; omitted: until cleared.")
    paths: tuple[str, ...] | None = Field(None, description="Endpoints it hits; omitted: the model endpoints.")
    after_tokens: int = Field(2, ge=0, le=100_000, description="Tokens sent before a mid-stream fault.")
    tokens_per_s: float = Field(1.0, gt=0, le=100_000, description="Token rate under slow_tokens.")
    hold_s: float = Field(3600.0, gt=0, le=86_400, description="How long a stall lasts.")
    message: str = Field("simulated upstream failure", max_length=10_000)


@dataclass
class ArmedFault:
    spec: FaultSpec
    remaining: int | None

    def describe(self) -> dict[str, object]:
        return {**self.spec.model_dump(mode="json"), "remaining": self.remaining}


class FaultBook:
    """Armed faults in the order they were armed; the first that matches a request is used."""

    def __init__(self) -> None:
        self._armed: list[ArmedFault] = []
        self.injected: Counter[str] = Counter()

    def arm(self, spec: FaultSpec) -> ArmedFault:
        armed = ArmedFault(spec, spec.count)
        self._armed.append(armed)
        return armed

    def take(self, path: str, kind: EndpointKind) -> FaultSpec | None:
        """The fault to inject into this request, if any (and count it as used)."""
        for armed in self._armed:
            spec = armed.spec
            if kind not in APPLIES_TO[spec.fault]:
                continue
            if spec.paths is None:
                if kind == "meta":
                    continue
            elif path not in spec.paths and "*" not in spec.paths:
                continue
            if armed.remaining is not None:
                armed.remaining -= 1
                if armed.remaining <= 0:
                    self._armed.remove(armed)
            self.injected[spec.fault.value] += 1
            return spec
        return None

    def clear(self) -> None:
        self._armed.clear()

    def reset(self) -> None:
        self._armed.clear()
        self.injected.clear()

    def armed(self) -> list[dict[str, object]]:
        return [armed.describe() for armed in self._armed]
