"""What a sidecar tells the model-side gate about a model call, as request headers, and how both read them.

A sidecar knows a call's priority, class, how long its caller waits for the first token and the
normalized key that makes two calls the same; the gate in front of the model server needs all four
to order and coalesce the calls of every app pod. Headers keep the model request itself untouched,
so the gate stays a transparent Ollama endpoint and a caller without a sidecar still works: it gets
`DEFAULT_PRIORITY`, the class `direct`, no deadline and no coalescing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

PRIORITY_HEADER = "X-Voicelane-Priority"
CLASS_HEADER = "X-Voicelane-Class"
DEADLINE_HEADER = "X-Voicelane-Deadline-Ms"
KEY_HEADER = "X-Voicelane-Key"
GATE_HEADERS = (PRIORITY_HEADER, CLASS_HEADER, DEADLINE_HEADER, KEY_HEADER)

# A caller without a sidecar is neither a chat (0) nor background work (2): it waits behind chats
# and is never starved by email segments.
DEFAULT_PRIORITY = 1
DIRECT_CLASS = "direct"
PRIORITIES = (0, 1, 2)
MAX_DEADLINE_MS = 600_000
_MILLISECONDS = re.compile(r"^[0-9]{1,7}$")
_CLASS = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# The sidecars' keys are hex digests; anything this tame is accepted, so other callers may coalesce too.
_KEY = re.compile(r"^[A-Za-z0-9:_.-]{1,128}$")


class GateHeaderError(ValueError):
    """A gate header is malformed; `header` names it."""

    def __init__(self, header: str, message: str) -> None:
        self.header = header
        super().__init__(f"{header}: {message}")


@dataclass(frozen=True)
class CallInfo:
    """One model call as the gate schedules it."""

    priority: int = DEFAULT_PRIORITY
    request_class: str = DIRECT_CLASS
    deadline_ms: int | None = None  # how long the caller waits for the first token, from arrival
    key: str | None = None  # identical calls share one model call; None: never coalesced

    def headers(self) -> dict[str, str]:
        out = {PRIORITY_HEADER: str(self.priority), CLASS_HEADER: self.request_class}
        if self.deadline_ms is not None:
            out[DEADLINE_HEADER] = str(self.deadline_ms)
        if self.key is not None:
            out[KEY_HEADER] = self.key
        return out


def read_call_info(headers: Mapping[str, str]) -> CallInfo:
    """The call's scheduling facts from its headers (defaults where absent); GateHeaderError if malformed."""
    priority = DEFAULT_PRIORITY
    raw = headers.get(PRIORITY_HEADER)
    if raw is not None:
        if raw.strip() not in {str(p) for p in PRIORITIES}:
            raise GateHeaderError(PRIORITY_HEADER, f"must be one of {', '.join(map(str, PRIORITIES))}")
        priority = int(raw)
    request_class = headers.get(CLASS_HEADER, DIRECT_CLASS).strip()
    if not _CLASS.match(request_class):
        raise GateHeaderError(CLASS_HEADER, "must be a class name: lower-case letters, digits and _")
    deadline_ms = None
    raw = headers.get(DEADLINE_HEADER)
    if raw is not None:
        if not _MILLISECONDS.match(raw.strip()) or not 1 <= int(raw) <= MAX_DEADLINE_MS:
            raise GateHeaderError(DEADLINE_HEADER, f"must be whole milliseconds from 1 to {MAX_DEADLINE_MS}")
        deadline_ms = int(raw)
    key = headers.get(KEY_HEADER)
    if key is not None and not _KEY.match(key):
        raise GateHeaderError(KEY_HEADER, "must be 1-128 characters of letters, digits and :_.-")
    return CallInfo(priority, request_class, deadline_ms, key)
