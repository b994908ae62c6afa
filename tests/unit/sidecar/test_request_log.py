"""The request log names the code of every error answer, including those whose format carries no code header."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from voicelane.sidecar.errors import ApiError
from voicelane.sidecar.server import request_log_middleware


async def refuse(_request: web.Request) -> web.Response:
    # The sidecar's own format: the code is in the body only, no `X-Voicelane-Error` header.
    return ApiError(429, "queue_full", "too many requests are waiting for the model", retry_after_s=1).response()


@pytest.mark.filterwarnings("error::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_the_request_line_names_the_refusals_code(caplog: pytest.LogCaptureFixture) -> None:
    app = web.Application(middlewares=[request_log_middleware])
    app.router.add_post("/v1/text", refuse)
    caplog.set_level(logging.INFO, logger="voicelane.sidecar.requests")
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.post("/v1/text", json={"text": "Hej."})
        assert response.status == 429
        assert "X-Voicelane-Error" not in response.headers
    (line,) = [record for record in caplog.records if record.getMessage() == "request finished"]
    assert (line.__dict__["status"], line.__dict__["error_code"]) == (429, "queue_full")
