"""Why model work was not done, as typed values: refused at the door, or failed on the way.

The core, the lane and the gate raise these; each shell maps them to its own wire (the sidecar's
HTTP table is `voicelane.sidecar.errors.http_error`, the gate's `voicelane.gate.errors.http_error`).
A refusal carries the seconds after which a retry may succeed, since only the part that refused
knows them (the scheduler's setting, the token bucket's refill); a failure's retry hint is the
shell's to choose.
"""

from __future__ import annotations

from enum import StrEnum


class Refusal(StrEnum):
    """New model work was not started; nothing ran. The values are the codes clients see."""

    QUEUE_FULL = "queue_full"
    RATE_LIMITED = "rate_limited"
    GUARDIAN_EMERGENCY = "guardian_emergency"
    DEADLINE_PASSED = "deadline_passed"  # the caller's first-token deadline ran out while it waited


class Failure(StrEnum):
    """Model work started and did not produce a whole answer. The values are the codes clients see."""

    UPSTREAM_UNAVAILABLE = "upstream_unavailable"  # no tier could be tried
    UPSTREAM_INTERRUPTED = "upstream_interrupted"  # the stream broke off after its first token
    UPSTREAM_TIMEOUT = "upstream_timeout"  # no first token in time
    UPSTREAM_FAILED = "upstream_failed"  # every tier tried failed, or the server refused the request


class LaneError(Exception):
    """Model work not done: the reason, a message for the caller, and when a retry may succeed (if known)."""

    reason: Refusal | Failure

    def __init__(self, reason: Refusal | Failure, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def code(self) -> str:
        return self.reason.value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason.name}, {self.message!r}, retry_after_s={self.retry_after_s!r})"


class Refused(LaneError):
    """Admission said no (full waiting room, rate limit, guardian, a deadline spent waiting): the caller may come
    back after `retry_after_s`."""

    reason: Refusal

    def __init__(self, reason: Refusal, message: str, *, retry_after_s: float) -> None:
        super().__init__(reason, message, retry_after_s=retry_after_s)


class Failed(LaneError):
    """The model work ran and failed; the tier's own error is the message."""

    reason: Failure

    def __init__(self, reason: Failure, message: str) -> None:
        super().__init__(reason, message)
