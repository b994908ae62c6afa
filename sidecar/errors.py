"""Structured API errors: every refusal the sidecar makes has a status, a code and a message.

Clients see `{"error": {"code", "message"}}` and, for refusals that clear with time,
a `Retry-After` header; nothing a client sends can turn into a 500. The lane's own
refusals and failures (voicelane.core.refusals) become HTTP errors through one table here.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from voicelane.core.refusals import Failure, LaneError, Refusal

# The code of an error answer, kept on the response for the request log (`sidecar.server`), whose
# line names it even when the answer's format carries no `X-Voicelane-Error`. Defined here, where
# answers are made, since the server imports this module and not the other way round.
ERROR_CODE_KEY = web.ResponseKey("error_code", str)


class ApiError(Exception):
    """A refusal to send to the client as JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after_s: float | None = None,
        details: dict[str, Any] | None = None,
        close_connection: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.details = details or {}
        # Set when the connection cannot carry another request (a body that could not be read to its
        # end): the answer then says `Connection: close`, so no client sends its next request into it.
        self.close_connection = close_connection

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}

    def response(self, extra_headers: dict[str, str] | None = None) -> web.Response:
        response = web.json_response(
            self.body(), status=self.status, headers={**self.headers(), **(extra_headers or {})}
        )
        response[ERROR_CODE_KEY] = self.code
        self.apply_connection(response)
        return response

    def apply_connection(self, response: web.StreamResponse) -> None:
        if self.close_connection:
            response.force_close()


def bad_request(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(400, code, message, details=details or None)


# The one place that gives the lane's refusals and failures an HTTP status, and a failure its
# Retry-After (a refusal brings its own: the scheduler's setting or the token bucket's refill).
HTTP_STATUS: dict[Refusal | Failure, int] = {
    Refusal.QUEUE_FULL: 429,
    Refusal.RATE_LIMITED: 429,
    Refusal.GUARDIAN_EMERGENCY: 503,
    Refusal.DEADLINE_PASSED: 503,
    Failure.UPSTREAM_UNAVAILABLE: 503,
    Failure.UPSTREAM_INTERRUPTED: 502,
    Failure.UPSTREAM_TIMEOUT: 504,
    Failure.UPSTREAM_FAILED: 502,
}
FAILURE_RETRY_AFTER_S: dict[Failure, float] = {
    # No tier is up: the health checks need a few intervals to find one again.
    Failure.UPSTREAM_UNAVAILABLE: 5,
    # A broken stream is most often one bad call: asking again at once is reasonable.
    Failure.UPSTREAM_INTERRUPTED: 1,
    Failure.UPSTREAM_TIMEOUT: 2,
    Failure.UPSTREAM_FAILED: 2,
}


def http_error(exc: ApiError | LaneError) -> ApiError:
    """The HTTP error to answer for `exc`: an ApiError as it is, a lane refusal or failure by the table above."""
    if isinstance(exc, ApiError):
        return exc
    retry_after_s = exc.retry_after_s
    if retry_after_s is None and isinstance(exc.reason, Failure):
        retry_after_s = FAILURE_RETRY_AFTER_S[exc.reason]
    return ApiError(HTTP_STATUS[exc.reason], exc.code, exc.message, retry_after_s=retry_after_s)
