"""Assembles the simulator's aiohttp application and runs it until told to stop.

The one middleware here counts every call, enforces the optional API key, and injects
armed faults that need no knowledge of the endpoint (refuse, 503, 500, stall after
headers, hang); stream-shaped faults are handed to the endpoint through the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from voicelane.sim import control_api, ollama_api, openai_api
from voicelane.sim.bodies import MAX_BODY_BYTES, SIMULATOR, BadRequest, json_answer
from voicelane.sim.faults import EndpointKind, Fault
from voicelane.sim.playback import abort, hang_then_abort, stall_then_abort
from voicelane.sim.state import ServerBusy, SimSettings, Simulator
from voicelane.sim.wire import BUSY_MESSAGE, ollama_error, openai_error

log = logging.getLogger("voicelane.sim")

ENDPOINT_KINDS: dict[str, EndpointKind] = {
    "/api/chat": "generate",
    "/api/generate": "generate",
    "/v1/chat/completions": "generate",
    "/v1/audio/speech": "speech",
}
_STREAM_CONTENT_TYPES = {
    "/api/chat": "application/x-ndjson",
    "/api/generate": "application/x-ndjson",
    "/api/pull": "application/x-ndjson",
    "/v1/chat/completions": "text/event-stream",
    "/v1/audio/speech": "audio/pcm",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(path: str, message: str, status: int, *, kind: str = "api_error", code: str | None = None) -> web.Response:
    payload = openai_error(message, kind=kind, code=code) if path.startswith("/v1/") else ollama_error(message)
    return json_answer(payload, status)


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    request["arrived"] = asyncio.get_running_loop().time()
    path = request.path
    if path.startswith("/sim/"):
        try:
            return await handler(request)
        except BadRequest as exc:
            return json_answer({"error": exc.message}, exc.status)
    sim = request.app[SIMULATOR]
    sim.calls[path] += 1
    try:
        response = await _answer(request, handler, sim)
    except web.HTTPException as exc:
        sim.responses[f"{path} {exc.status}"] += 1
        raise
    outcome = "aborted" if request.get("aborted") else str(response.status)
    sim.responses[f"{path} {outcome}"] += 1
    return response


async def _answer(request: web.Request, handler: Handler, sim: Simulator) -> web.StreamResponse:
    path = request.path
    api_key = sim.settings.api_key
    if path.startswith("/v1/") and api_key and request.headers.get("Authorization") != f"Bearer {api_key}":
        return _error(path, "Incorrect API key provided", 401, kind="invalid_request_error", code="invalid_api_key")
    if request.match_info.http_exception is None:
        fault = sim.faults.take(path, ENDPOINT_KINDS.get(path, "meta"))
        if fault is not None:
            if fault.fault is Fault.REFUSE:
                abort(request)
                return web.Response()
            if fault.fault is Fault.HTTP_503:
                return _error(path, BUSY_MESSAGE, 503)
            if fault.fault is Fault.HTTP_500:
                return _error(path, fault.message, 500)
            if fault.fault is Fault.STALL_AFTER_HEADERS:
                content_type = _STREAM_CONTENT_TYPES.get(path, "application/json; charset=utf-8")
                return await stall_then_abort(request, content_type, fault.hold_s)
            if fault.fault is Fault.HANG:
                try:
                    return await hang_then_abort(request, sim, fault.hold_s)
                except ServerBusy:
                    return _error(path, BUSY_MESSAGE, 503)
            request["fault"] = fault
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(path, exc.message, exc.status, kind=exc.kind)


def build_app(sim: Simulator) -> web.Application:
    app = web.Application(middlewares=[_observe], client_max_size=MAX_BODY_BYTES)
    app[SIMULATOR] = sim
    protocol = sim.settings.protocol
    if protocol in ("ollama", "both"):
        ollama_api.add_routes(app)
    if protocol in ("openai", "both"):
        openai_api.add_routes(app)
    control_api.add_routes(app)
    return app


async def serve(settings: SimSettings, stop: asyncio.Event) -> None:
    """Serve until `stop` is set. Handlers are cancelled when their client disconnects, as a model
    server stops generating for a client that left, so stalls and long streams end with it."""
    sim = Simulator(settings)
    runner = web.AppRunner(build_app(sim), handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        await site.start()
        addresses = ", ".join(f"http://{host}:{port}" for host, port, *_ in runner.addresses)
        log.info("voicelane sim (%s) listening on %s", settings.protocol, addresses)
        await stop.wait()
        log.info("voicelane sim stopping")
    finally:
        await runner.cleanup()
