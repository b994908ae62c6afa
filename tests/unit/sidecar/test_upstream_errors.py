"""Which upstream errors fail over to the other tier: the tier's own failures, before any text went out."""

from __future__ import annotations

import pytest

from voicelane.sidecar.upstream import UpstreamError


@pytest.mark.parametrize(
    ("error", "fails_over"),
    [
        (UpstreamError("refused", "connection refused"), True),
        (UpstreamError("timeout", "no first token"), True),
        (UpstreamError("protocol", "no done marker"), True),
        (UpstreamError("server_error", "error line"), True),
        (UpstreamError("http_status", "queue full", status=503), True),
        (UpstreamError("http_status", "internal", status=500), True),
        (UpstreamError("http_status", "too many", status=429), True),
        (UpstreamError("http_status", "request timeout", status=408), True),
        # The server refused this request: the same answer would come again, and the other tier
        # answering instead would hide a misconfigured tier.
        (UpstreamError("http_status", "invalid api key", status=401), False),
        (UpstreamError("http_status", "forbidden", status=403), False),
        (UpstreamError("http_status", "model not found", status=404), False),
        (UpstreamError("http_status", "bad request", status=400), False),
        # The lane closed its own client (a reload or shutdown): not the tier's doing.
        (UpstreamError("cancelled", "the client was closed"), False),
        # Text already reached the caller: another tier would be heard as a seam.
        (UpstreamError("timeout", "stalled mid-stream", before_first_token=False), False),
        (UpstreamError("refused", "reset mid-stream", before_first_token=False), False),
    ],
    ids=repr,
)
def test_only_the_tiers_own_failures_before_the_first_token_fail_over(error: UpstreamError, fails_over: bool) -> None:
    assert error.fails_over is fails_over


def test_the_tiers_fault_and_the_requests_fault_are_told_apart() -> None:
    assert UpstreamError("http_status", "busy", status=503).retryable
    assert not UpstreamError("http_status", "unauthorized", status=401).retryable
    assert UpstreamError("timeout", "late", before_first_token=False).retryable  # the tier's, though too late to move
