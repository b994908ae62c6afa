"""The HTTP table: every refusal and failure the lane raises reaches clients with its status, code and Retry-After."""

from __future__ import annotations

import pytest

from voicelane.core.guardian import AdmissionDecision
from voicelane.core.refusals import Failed, Failure, Refusal, Refused
from voicelane.sidecar.errors import ApiError, http_error


@pytest.mark.parametrize(
    ("failure", "status", "retry_after"),
    [
        (Failure.UPSTREAM_UNAVAILABLE, 503, "5"),
        (Failure.UPSTREAM_INTERRUPTED, 502, "1"),
        (Failure.UPSTREAM_TIMEOUT, 504, "2"),
        (Failure.UPSTREAM_FAILED, 502, "2"),
    ],
)
def test_a_failure_gets_its_status_and_the_tables_retry_after(failure: Failure, status: int, retry_after: str) -> None:
    answer = http_error(Failed(failure, "the model did not answer"))
    assert answer.status == status
    assert answer.body() == {"error": {"code": failure.value, "message": "the model did not answer"}}
    assert answer.headers() == {"Retry-After": retry_after}


@pytest.mark.parametrize(
    ("refusal", "status"),
    [(Refusal.QUEUE_FULL, 429), (Refusal.RATE_LIMITED, 429), (Refusal.GUARDIAN_EMERGENCY, 503)],
)
def test_a_refusal_keeps_the_retry_after_its_refuser_chose(refusal: Refusal, status: int) -> None:
    answer = http_error(Refused(refusal, "not now", retry_after_s=2.2))
    assert (answer.status, answer.code) == (status, refusal.value)
    assert answer.headers() == {"Retry-After": "3"}  # whole seconds, rounded up


def test_every_reason_the_lane_can_give_has_a_status() -> None:
    for reason in [*Refusal, *Failure]:
        error = Refused(reason, "x", retry_after_s=1) if isinstance(reason, Refusal) else Failed(reason, "x")
        assert 400 <= http_error(error).status < 600


def test_the_guardians_refusals_say_why_in_words() -> None:
    blocked = http_error(AdmissionDecision(False, Refusal.GUARDIAN_EMERGENCY, 5).refused())
    assert (blocked.status, blocked.code, blocked.headers()) == (503, "guardian_emergency", {"Retry-After": "5"})
    assert "sustained pressure" in blocked.message
    limited = http_error(AdmissionDecision(False, Refusal.RATE_LIMITED, 1).refused())
    assert (limited.status, limited.message) == (429, "rate limit exceeded")
    with pytest.raises(ValueError):
        AdmissionDecision(True).refused()


def test_an_api_error_passes_as_it_is() -> None:
    error = ApiError(413, "text_too_long", "too long")
    assert http_error(error) is error
