"""The gate's HTTP shell: an Ollama endpoint that queues model calls by priority in front of one model server.

Every model call (`/api/chat`, `/api/generate`, `/v1/chat/completions`, `/v1/completions`) takes a
slot of the server's parallel slots through the lane's priority scheduler, whoever sent it: the
sidecars of every app pod say the call's priority, class, deadline and key in headers
(`voicelane.core.gate_headers`). Identical calls (same path, priority and key) share one model
call and its stream, replayed from the first byte to every caller that joins. A caller that
disconnects leaves the queue; the model call is cancelled when its last caller has gone. While the
guardian is blocked, model calls get 503 `guardian_emergency`; a full waiting room, 429
`queue_full`; both with `Retry-After`. Everything else Ollama serves passes through unqueued.

Refusals and failures are decided as the core's typed values (`voicelane.core.refusals`) and
answered through the one table in `voicelane.gate.errors`, in Ollama's error shape
(`{"error": message}`) with the lane's code beside it and in `X-Voicelane-Error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from voicelane.core.broadcast import Broadcast
from voicelane.core.gate_headers import GATE_HEADERS, CallInfo, GateHeaderError, read_call_info
from voicelane.core.guardian import Guardian, PressureSource
from voicelane.core.refusals import Failed, Failure, LaneError, Refusal, Refused
from voicelane.core.scheduler import PriorityScheduler, QueueFull, Ticket
from voicelane.core.singleflight import FlightCancelled, SingleFlight
from voicelane.gate.errors import http_error, ollama_error
from voicelane.gate.metrics import GateMetrics
from voicelane.gate.models import LoadedModels
from voicelane.sidecar.config import GuardianConfig, RateLimitConfig, SchedulerConfig
from voicelane.sidecar.errors import bad_request

logger = logging.getLogger("voicelane.gate")

MODEL_CALLS = frozenset({"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"})
SERVER = "server"  # the scheduler's one tier: the model server behind this gate
# Hop-by-hop headers and those aiohttp sets itself are not copied between the two connections.
_NOT_COPIED = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding", "upgrade"}
)
# The lane's scheduling headers are the gate's business, not the model server's.
_NOT_FORWARDED = _NOT_COPIED | {header.lower() for header in GATE_HEADERS}
# The guardian here only watches pressure; admission rates are the sidecars' business.
_NO_RATE_LIMIT = RateLimitConfig(burst=100_000, sustained_per_s=100_000)


@dataclass(frozen=True)
class GateSettings:
    upstream: str  # the model server, e.g. http://127.0.0.1:11434
    slots: int = 1  # the server's parallel slots (OLLAMA_NUM_PARALLEL)
    reserved_for_priority_0: int = 1  # of those, kept free for chats (never the last slot)
    max_waiting: int = 64  # across priorities
    max_waiting_per_priority: dict[int, int] = field(default_factory=lambda: {0: 32, 1: 16, 2: 8})
    retry_after_s: int = 1  # sent with a full waiting room's 429 and a deadline that passed in it
    coalesce_window_s: float = 2.0  # a finished call is replayed to identical calls this long
    model: str | None = None  # readiness waits until the server has this model loaded
    models_interval_s: float = 5.0
    guardian: GuardianConfig = field(default_factory=lambda: GuardianConfig(sources=("local",)))
    upstream_timeout_s: float = 600.0


@dataclass(frozen=True)
class _Head:
    """The model server's status and content type: the first item of every call's stream."""

    status: int
    content_type: str


Chunk = _Head | bytes


class Gate:
    """The gate's state: scheduler, flights, guardian, loaded models and metrics, and its aiohttp app."""

    def __init__(
        self,
        settings: GateSettings,
        *,
        pressure: PressureSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.scheduler = PriorityScheduler(
            SchedulerConfig(
                max_running_per_priority=settings.slots,
                max_waiting=settings.max_waiting,
                retry_after_s=settings.retry_after_s,
            ),
            tier_slots={SERVER: settings.slots},
            max_waiting_per_priority=settings.max_waiting_per_priority,
            reserved_slots=settings.reserved_for_priority_0,
            clock=clock,
        )
        self.flights: SingleFlight[Any, Chunk] = SingleFlight(window_s=settings.coalesce_window_s, clock=clock)
        self.guardian = Guardian(settings.guardian, _NO_RATE_LIMIT, local=pressure, clock=clock)
        self.models = LoadedModels(settings.upstream, settings.model)
        self.metrics = GateMetrics(self)  # last: it reads the state above at registration
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ----- the app -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        for path in sorted(MODEL_CALLS):
            app.router.add_post(path, self._model_call)
        app.router.add_route("*", "/{tail:.*}", self._pass_through)
        app.cleanup_ctx.append(self._lifetime)
        return app

    def metrics_app(self) -> web.Application:
        """/metrics, /healthz and /readyz alone: for a port a NetworkPolicy opens to scrapers and kubelets,
        while the port that takes model calls stays open to the lane's own pods only."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _lifetime(self, _app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=self.settings.upstream_timeout_s, sock_connect=5)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        self._tasks = [
            asyncio.create_task(self._watch_models(), name="gate:models"),
            asyncio.create_task(self._watch_pressure(), name="gate:guardian"),
        ]
        yield
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flights.close()
        await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the gate's app is not running"
        return self._session

    # ----- background --------------------------------------------------------------------------

    async def _watch_models(self) -> None:
        while True:
            await self.models.refresh(self.session)
            await asyncio.sleep(self.settings.models_interval_s)

    async def _watch_pressure(self) -> None:
        while True:
            result = await asyncio.to_thread(self.guardian.check)
            self.metrics.guardian_checks.labels("failed" if result.failed else "ok").inc()
            await asyncio.sleep(self.settings.guardian.sample_interval_s)

    # ----- own endpoints -----------------------------------------------------------------------

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, why = self.models.ready()
        return web.json_response({"ready": ready, "reason": why}, status=200 if ready else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    # ----- model calls -------------------------------------------------------------------------

    async def _model_call(self, request: web.Request) -> web.StreamResponse:
        arrived = self.clock()
        try:
            info = read_call_info(request.headers)
        except GateHeaderError as exc:
            return ollama_error(bad_request("invalid_header", str(exc)))
        body = await request.read()
        if self.guardian.blocked:
            message = "the model server is under sustained pressure; model work is paused"
            self.metrics.requests.labels(str(info.priority), info.request_class, "refused").inc()
            return self._refuse(
                Refused(Refusal.GUARDIAN_EMERGENCY, message, retry_after_s=self.settings.guardian.retry_after_s)
            )
        key: Any = (request.path, info.priority, info.key) if info.key else object()
        forwarded = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        flight = self.flights.join(key, self._producer(request.path, body, forwarded, info, arrived))
        self.metrics.calls.labels(str(info.priority), "joiner" if flight.shared else "leader").inc()
        response: web.StreamResponse | None = None
        outcome = "ok"
        try:
            async with flight.subscribe() as stream:
                async for chunk in stream:
                    if isinstance(chunk, _Head):
                        response = web.StreamResponse(status=chunk.status, headers={"Content-Type": chunk.content_type})
                        if flight.shared:
                            response.headers["X-Voicelane-Shared"] = "true"
                        await response.prepare(request)
                    else:
                        assert response is not None
                        await response.write(chunk)
        except Refused as exc:
            outcome = "refused"  # by reason in voicelane_gate_rejects_total
            return self._refuse(exc)
        except (TimeoutError, aiohttp.ClientError, FlightCancelled) as exc:
            outcome = "upstream_failed"
            if response is None:
                return self._refuse(Failed(Failure.UPSTREAM_UNAVAILABLE, f"the model server failed: {exc}"))
            raise ConnectionResetError("the model server's stream broke off") from exc
        finally:
            self.metrics.requests.labels(str(info.priority), info.request_class, outcome).inc()
        assert response is not None
        await response.write_eof()
        return response

    def _producer(
        self, path: str, body: bytes, headers: dict[str, str], info: CallInfo, arrived: float
    ) -> Callable[[Broadcast[Chunk]], Awaitable[None]]:
        async def produce(out: Broadcast[Chunk]) -> None:
            async with self._slot(info.priority) as ticket:
                started = self.clock()
                self.metrics.queue_wait.labels(str(info.priority)).observe(started - arrived)
                if info.deadline_ms is not None and started - arrived > info.deadline_ms / 1000:
                    message = "the caller's first-token deadline passed in the queue"
                    raise Refused(Refusal.DEADLINE_PASSED, message, retry_after_s=self.settings.retry_after_s)
                async with self.session.post(self.settings.upstream + path, data=body, headers=headers) as upstream:
                    out.publish(_Head(upstream.status, upstream.headers.get("Content-Type", "application/json")))
                    tail = b""
                    first = True
                    async for data in upstream.content.iter_any():
                        if first:
                            first = False
                            # Past its first token a call no longer holds its level's place (the slot it keeps).
                            self.scheduler.settle(ticket)
                            if upstream.status == 200:
                                self.metrics.ttft.labels(str(info.priority)).observe(self.clock() - started)
                        tail = (tail + data)[-4096:]
                        out.publish(data)
                    self.metrics.observe_final(tail)

        return produce

    @contextlib.asynccontextmanager
    async def _slot(self, priority: int) -> AsyncIterator[Ticket]:
        """A slot of the model server for the body; refused when the waiting room is full."""
        try:
            async with self.scheduler.slot(priority, SERVER) as ticket:
                yield ticket
        except QueueFull as exc:
            message = f"{exc.waiting} calls already wait for this model server"
            raise Refused(Refusal.QUEUE_FULL, message, retry_after_s=exc.retry_after_s) from None

    def _refuse(self, refusal: LaneError) -> web.Response:
        """Answer a refusal or failure by the gate's table; refusals are counted by reason."""
        if isinstance(refusal, Refused):
            self.metrics.rejects.labels(refusal.code).inc()
        return ollama_error(http_error(refusal))

    # ----- everything else ---------------------------------------------------------------------

    async def _pass_through(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_COPIED}
        body = await request.read() if request.can_read_body else None
        url = self.settings.upstream + request.rel_url.path_qs
        try:
            async with self.session.request(request.method, url, data=body, headers=headers) as upstream:
                response = web.StreamResponse(status=upstream.status)
                for name, value in upstream.headers.items():
                    if name.lower() not in _NOT_COPIED:
                        response.headers[name] = value
                await response.prepare(request)
                async for data in upstream.content.iter_any():
                    await response.write(data)
                await response.write_eof()
                return response
        except (TimeoutError, aiohttp.ClientError) as exc:
            return self._refuse(Failed(Failure.UPSTREAM_UNAVAILABLE, f"the model server failed: {exc}"))
