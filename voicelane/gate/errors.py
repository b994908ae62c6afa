"""The gate's refusals on the wire: one table from the lane's typed refusals and failures to HTTP.

The gate decides as the core does, in `voicelane.core.refusals` values (`Refused`, `Failed`); this
module alone chooses each one's status and a failure's `Retry-After`. Answers keep Ollama's error
shape, `{"error": message}`, with the lane's code beside the message and in `X-Voicelane-Error`,
so an Ollama client reads the message and a sidecar reads the code.
"""

from __future__ import annotations

from aiohttp import web

from voicelane.core.refusals import Failure, LaneError, Refusal
from voicelane.sidecar.errors import ApiError

ERROR_HEADER = "X-Voicelane-Error"

# The one place that gives the gate's refusals and failures an HTTP status. Its refusals answer
# as the sidecar's do; a model server that cannot be reached is a 502, as behind any proxy (the
# sidecar's 503 means no tier at all could be tried, which the gate with its one server never says).
HTTP_STATUS: dict[Refusal | Failure, int] = {
    Refusal.QUEUE_FULL: 429,
    Refusal.GUARDIAN_EMERGENCY: 503,
    Refusal.DEADLINE_PASSED: 503,
    Failure.UPSTREAM_UNAVAILABLE: 502,
}
# A failure's Retry-After; a refusal brings its own (the scheduler's or the guardian's setting).
FAILURE_RETRY_AFTER_S: dict[Failure, float] = {
    # The gate holds no health state of its own to wait for: the next call tries the server afresh.
    Failure.UPSTREAM_UNAVAILABLE: 1,
}
# What `voicelane_gate_rejects_total{reason}` counts: the refusals, not the failures.
REJECT_REASONS: tuple[Refusal, ...] = tuple(reason for reason in HTTP_STATUS if isinstance(reason, Refusal))


def http_error(exc: LaneError) -> ApiError:
    """The HTTP error to answer for a refusal or failure of the gate, by the table above."""
    retry_after_s = exc.retry_after_s
    if retry_after_s is None and isinstance(exc.reason, Failure):
        retry_after_s = FAILURE_RETRY_AFTER_S[exc.reason]
    return ApiError(HTTP_STATUS[exc.reason], exc.code, exc.message, retry_after_s=retry_after_s)


def ollama_error(error: ApiError) -> web.Response:
    """`error` in Ollama's shape, its code beside the message and in `X-Voicelane-Error`."""
    headers = {**error.headers(), ERROR_HEADER: error.code}
    return web.json_response({"error": error.message, "code": error.code}, status=error.status, headers=headers)
