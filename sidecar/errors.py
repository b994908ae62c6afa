"""Structured API errors: every refusal the sidecar makes has a status, a code and a message.

Clients see `{"error": {"code", "message"}}` and, for refusals that clear with time,
a `Retry-After` header; nothing a client sends can turn into a 500.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web


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
        response["error_code"] = self.code  # for the request log
        self.apply_connection(response)
        return response

    def apply_connection(self, response: web.StreamResponse) -> None:
        if self.close_connection:
            response.force_close()


def bad_request(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(400, code, message, details=details or None)
