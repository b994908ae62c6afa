"""The sidecar's HTTP server: routes, response formats and process lifecycle.

It only wires: requests are validated by `edge`, admitted and run by `lane`, and
answered here as JSON, NDJSON or (in transparent mode) the upstream's own format.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.resources
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pythonjsonlogger.json import JsonFormatter

from voicelane import __version__
from voicelane.core.guardian import PressureSource
from voicelane.core.refusals import LaneError
from voicelane.sidecar import streaming, transparent
from voicelane.sidecar.audio import wav_header
from voicelane.sidecar.config import RequestClass, SidecarConfig
from voicelane.sidecar.edge import (
    REQUEST_ID_KEY,
    ApiAppRunner,
    TextRequest,
    decode_json_object,
    parse_text_request,
    read_body,
)
from voicelane.sidecar.egress import ClientTooSlow
from voicelane.sidecar.errors import ERROR_CODE_KEY, ApiError, http_error
from voicelane.sidecar.followups import FollowUpStore
from voicelane.sidecar.lane import Lane, Submission, TextResult
from voicelane.sidecar.metrics import SidecarMetrics, gauge, plain_counter, plain_gauge
from voicelane.sidecar.pressure import LocalPressureSource
from voicelane.sidecar.reload import ConfigWatcher
from voicelane.sidecar.speech import AudioSubmission, Speaker
from voicelane.sidecar.ttfa import Alert, StageClock, TTFAMonitor
from voicelane.sidecar.tts.base import make_backend

log = logging.getLogger("voicelane.sidecar")
request_log = logging.getLogger("voicelane.sidecar.requests")

# Probes and scrapes come every few seconds; their lines are for debugging only.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})

LANE_KEY = web.AppKey("lane", Lane)
METRICS_KEY = web.AppKey("metrics", SidecarMetrics)
STATE_KEY = web.AppKey("state", dict)
SPEAKER_KEY = web.AppKey("speaker", Speaker)
MONITOR_KEY = web.AppKey("monitor", TTFAMonitor)
FOLLOWUPS_KEY = web.AppKey("followups", FollowUpStore)
# Set only when the sidecar runs from a configuration file.
WATCHER_KEY = web.AppKey("config_watcher", ConfigWatcher)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure leaves as structured JSON; an unexpected one is logged and still structured."""
    response = await _answer_or_refuse(request, handler)
    if response.status >= 400 and not response.prepared and not request.content.is_eof():
        # Refused before its body was read: aiohttp reads the rest away or gives up and closes, so the
        # answer says so, and the client sends its next request on a new connection.
        response.force_close()
    return response


async def _answer_or_refuse(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except (ApiError, LaneError) as caught:
        exc = http_error(caught)
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        error = ApiError(exc.status, code, f"{request.method} {request.path}: {exc.reason}")
        # A 405 must name the methods the path does support (RFC 9110).
        return error.response({"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None)
    except ClientTooSlow as exc:
        # Its connection is reset already; handing back the response ends the request quietly.
        log.warning("%s %s: %s", request.method, request.path, exc)
        return exc.response
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return ApiError(500, "internal_error", "the sidecar failed to handle this request").response()


@web.middleware
async def request_log_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """One structured line per request as it ends: its id, route, status and error code, never its text."""
    started = time.monotonic()
    resource = request.match_info.route.resource
    # The route's template rather than the path, which holds whatever a client put in it.
    route = resource.canonical if resource is not None else None
    fields: dict[str, Any] = {
        "request_id": request.headers.get("X-Request-Id"),
        "method": request.method,
        "route": route,
    }
    try:
        response = await handler(request)
    except (asyncio.CancelledError, ConnectionResetError):
        # A client that leaves is no error: this one line is all the log says of it.
        fields["request_id"] = request.get(REQUEST_ID_KEY) or fields["request_id"]
        request_log.info("request abandoned by the client", extra=fields)
        raise
    fields.update(
        request_id=response.headers.get("X-Request-Id") or request.get(REQUEST_ID_KEY) or fields["request_id"],
        status=response.status,
        error_code=response.get(ERROR_CODE_KEY) or response.headers.get("X-Voicelane-Error"),
        duration_s=round(time.monotonic() - started, 6),
    )
    request_log.log(logging.DEBUG if route in _QUIET_ROUTES else logging.INFO, "request finished", extra=fields)
    return response


# ----- /v1/text -----------------------------------------------------------------------------------


async def handle_text(request: web.Request) -> web.StreamResponse:
    lane = request.app[LANE_KEY]
    metrics = request.app[METRICS_KEY]
    received = time.monotonic()
    payload = decode_json_object(await read_body(request, lane.config.limits))
    text_request = parse_text_request(payload, lane.config.limits, default_lang=lane.config.default_lang)
    request[REQUEST_ID_KEY] = text_request.request_id
    log.debug("text received", extra={"request_id": text_request.request_id, "text": text_request.text})
    job = lane.text_job(
        text=text_request.text,
        request_class=text_request.request_class,
        target_lang=text_request.target_lang,
        request_id=text_request.request_id,
    )
    try:
        submission = lane.submit(job, received=received)
        if text_request.stream:
            response = await _stream_ndjson(request, submission, received)
        else:
            result = await submission.result()
            response = web.json_response(
                _text_body(submission, result, received), headers={"X-Request-Id": job.request_id}
            )
    except (ApiError, LaneError) as caught:
        exc = http_error(caught)
        metrics.requests.labels("text", job.request_class.value, exc.code).inc()
        return exc.response({"X-Request-Id": job.request_id})
    metrics.requests.labels("text", job.request_class.value, "ok").inc()
    return response


def _text_body(submission: Submission, result: TextResult, received: float) -> dict[str, Any]:
    timings = {stage: round(value, 6) for stage, value in result.timings.items()}
    timings["total"] = round(time.monotonic() - received, 6)
    return {
        "text": result.text,
        "tier": result.tier,
        "cached": submission.cached is not None,
        "shared": submission.shared,
        "request_id": submission.job.request_id,
        "priority": result.priority,
        "timings": timings,
    }


async def _stream_ndjson(request: web.Request, submission: Submission, received: float) -> web.StreamResponse:
    async def lines() -> AsyncIterator[dict[str, Any]]:
        # Closed however the answer ends (a client gone mid-write included), so its hold on the
        # shared work goes at once; an abandoned generator would keep the model busy until collected.
        async with contextlib.aclosing(submission.tokens()) as tokens:
            async for token in tokens:
                yield {"text": token}

    async def final() -> dict[str, Any]:
        return {"done": True, **_text_body(submission, await submission.result(), received)}

    def incomplete(failure: ApiError) -> dict[str, Any]:
        # Headers are gone already: say plainly that this stream is not complete.
        return {"done": True, **failure.body()}

    streamed = await streaming.stream(
        request,
        lines(),
        streaming.Ndjson(),
        headers={"X-Request-Id": submission.job.request_id},
        send_timeout_s=request.app[LANE_KEY].config.limits.send_timeout_s,
        breaks=streaming.lane_failure,
        final=final,
        error_frame=incomplete,
    )
    return streamed.response


# ----- /v1/speak ----------------------------------------------------------------------------------


async def handle_speak(request: web.Request) -> web.StreamResponse:
    speaker = request.app[SPEAKER_KEY]
    lane = speaker.lane
    stages = StageClock(time.monotonic())
    payload = decode_json_object(await read_body(request, lane.config.limits))
    speak_request = parse_text_request(payload, lane.config.limits, default_lang=lane.config.default_lang)
    request[REQUEST_ID_KEY] = speak_request.request_id
    log.debug("text received", extra={"request_id": speak_request.request_id, "text": speak_request.text})
    try:
        submission = speaker.submit(speak_request, stages)
    except (ApiError, LaneError) as caught:
        exc = http_error(caught)
        _finish_speech(request.app, speak_request.request_class, stages, outcome=exc.code)
        return exc.response({"X-Request-Id": speak_request.request_id})
    return await _stream_speech(request, speak_request, submission, stages)


async def _stream_speech(
    request: web.Request, speak_request: TextRequest, submission: AudioSubmission, stages: StageClock
) -> web.StreamResponse:
    speaker = request.app[SPEAKER_KEY]
    audio = streaming.Audio(speaker.backend.sample_rate, wav=speak_request.audio_format == "wav")

    async def chunks() -> AsyncIterator[bytes]:
        # Closed however the answer ends, so a client that leaves lets go of the shared audio at once.
        async with contextlib.aclosing(submission.chunks()) as audio_chunks:
            async for chunk in audio_chunks:
                yield chunk
                stages.mark("first_audio_sent")  # resumed once the chunk is written

    try:
        # Audio has no error frame: a failure once it flows ends the connection before the final chunk.
        streamed = await streaming.stream(
            request,
            chunks(),
            audio,
            headers=functools.partial(_speech_headers, request.app, submission, audio),
            send_timeout_s=speaker.lane.config.limits.send_timeout_s,
            breaks=streaming.lane_failure,
        )
    except (ApiError, LaneError) as caught:
        exc = http_error(caught)
        _finish_speech(request.app, speak_request.request_class, stages, outcome=exc.code)
        return exc.response({"X-Request-Id": speak_request.request_id})
    outcome = "ok" if streamed.failure is None else streamed.failure.code
    _finish_speech(request.app, speak_request.request_class, stages, outcome=outcome)
    return streamed.response


async def _speech_headers(app: web.Application, submission: AudioSubmission, audio: streaming.Audio) -> dict[str, str]:
    speaker = app[SPEAKER_KEY]
    request = submission.request
    headers = {
        "X-Request-Id": request.request_id,
        "X-Voicelane-Tier": await submission.tier(),
        "X-Voicelane-Priority": str(submission.priority),
        "X-Voicelane-Shared": "true" if submission.shared else "false",
        "X-Voicelane-Sample-Rate": str(speaker.backend.sample_rate),
        "X-Voicelane-Channels": "1",
        "X-Voicelane-Sample-Format": "s16le",
    }
    if submission.meta.fallback:
        headers["X-Voicelane-Fallback"] = submission.meta.fallback
    headers["Content-Type"] = audio.content_type
    if request.request_class is RequestClass.EMAIL:
        followups = app[FOLLOWUPS_KEY].enqueue_email(request)
        headers["X-Voicelane-Followups"] = f"/v1/followups/{request.request_id}"
        headers["X-Voicelane-Followup-Count"] = str(len(followups))
    return headers


def _finish_speech(app: web.Application, request_class: RequestClass, stages: StageClock, *, outcome: str) -> None:
    metrics, monitor = app[METRICS_KEY], app[MONITOR_KEY]
    stages.mark("done")
    metrics.requests.labels("speak", request_class.value, outcome).inc()
    result = monitor.record(request_class, stages, error=outcome != "ok")
    for stage, seconds in result.stages.items():
        metrics.stage.labels(request_class.value, stage).observe(seconds)
    if result.ttfa_s is not None:
        metrics.ttfa.labels(request_class.value).observe(result.ttfa_s)
        metrics.ttfa_target.labels(request_class.value, "true" if result.within_target else "false").inc()


async def handle_followups(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    followups = request.app[FOLLOWUPS_KEY].get(request_id)
    if followups is None:
        raise ApiError(404, "unknown_email", f"no follow-ups for request id {request_id!r}")
    return web.json_response({"request_id": request_id, "segments": [f.describe(request_id) for f in followups]})


async def handle_followup_audio(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    followups = request.app[FOLLOWUPS_KEY].get(request_id)
    try:
        index = int(request.match_info["index"])
    except ValueError:
        raise ApiError(400, "invalid_field", "segment index must be an integer") from None
    if followups is None or not 0 <= index < len(followups):
        raise ApiError(404, "unknown_segment", f"no follow-up {index} for request id {request_id!r}")
    followup = followups[index]
    if followup.status == "failed":
        raise ApiError(502, "segment_failed", f"segment {index} could not be produced: {followup.error}")
    if followup.status == "evicted":
        raise ApiError(410, "segment_evicted", f"segment {index}'s audio was let go for newer follow-ups")
    if followup.status != "ready":
        raise ApiError(409, "segment_pending", f"segment {index} is {followup.status}", retry_after_s=1)
    audio_format = request.query.get("format", "wav")
    if audio_format not in ("wav", "pcm"):
        raise ApiError(400, "invalid_field", "format must be wav or pcm")
    body = followup.pcm
    if audio_format == "wav":
        body = wav_header(followup.sample_rate, data_bytes=len(body)) + body
    return web.Response(
        body=body,
        headers={
            "Content-Type": "audio/wav" if audio_format == "wav" else "application/octet-stream",
            "X-Voicelane-Sample-Rate": str(followup.sample_rate),
        },
    )


# ----- observation ----------------------------------------------------------------------------------


async def handle_stats(request: web.Request) -> web.Response:
    lane = request.app[LANE_KEY]
    state = request.app[STATE_KEY]
    minutes: float | None = None
    if "minutes" in request.query:
        try:
            minutes = float(request.query["minutes"])
        except ValueError:
            raise ApiError(400, "invalid_field", "minutes must be a number") from None
        if not 0 < minutes <= 7 * 24 * 60:
            raise ApiError(400, "invalid_field", "minutes must be between 0 and 10080")
    speaker = request.app[SPEAKER_KEY]
    body = {
        "version": __version__,
        "uptime_s": round(time.monotonic() - state["started"], 3),
        **lane.snapshot(),
        "single_flight": _flight_stats(lane.flights.stats(), speaker.flights.stats()),
        "ttfa": request.app[MONITOR_KEY].stats(minutes),
        "tts": {"backend": lane.config.tts.backend, "syntheses": speaker.backend.calls},
        "phrase_bank": state.get("phrase_bank", {}),
        "followups": request.app[FOLLOWUPS_KEY].stats(),
    }
    return web.json_response(body)


def _flight_stats(text: dict[str, int], speech: dict[str, int]) -> dict[str, Any]:
    """Totals over model-text flights and spoken-audio flights, with each kind's own figures."""
    totals: dict[str, Any] = {key: text.get(key, 0) + speech.get(key, 0) for key in text.keys() | speech.keys()}
    return {**totals, "text": text, "speech": speech}


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    lane = request.app[LANE_KEY]
    passthrough = lane.config.prompts.passthrough
    healthy = [tier.value for tier, ok in lane.healthy.items() if ok]
    ready = passthrough or bool(healthy)
    body = {"ready": ready, "healthy_tiers": healthy, "passthrough": passthrough}
    return web.json_response(body, status=200 if ready else 503)


@functools.cache
def openapi_document() -> bytes:
    """The OpenAPI description of this API, shipped in the package beside this module."""
    return importlib.resources.files("voicelane.sidecar").joinpath("openapi.json").read_bytes()


async def handle_openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_document(), content_type="application/json")


async def handle_metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _state_metrics(lane: Lane) -> Callable[[], list[Any]]:
    def collect() -> list[Any]:
        queue = lane.scheduler.snapshot()
        guardian = lane.guardian.snapshot()
        cache = lane.cache.stats()
        return [
            gauge(
                "voicelane_queue_depth",
                "Requests waiting for a model slot, by priority.",
                ["priority"],
                [([str(p)], float(n)) for p, n in queue["waiting"].items()],
            ),
            gauge(
                "voicelane_queue_running",
                "Requests holding a model slot, by priority.",
                ["priority"],
                [([str(p)], float(n)) for p, n in queue["running"].items()],
            ),
            plain_gauge(
                "voicelane_guardian_blocked", "1 while the guardian blocks new model work.", float(guardian["blocked"])
            ),
            plain_counter(
                "voicelane_guardian_emergency_blocks",
                "Times the guardian entered the blocked state.",
                float(guardian["emergency_blocks"]),
            ),
            gauge(
                "voicelane_ttfa_target_seconds",
                "The TTFA target of each class in the running configuration.",
                ["request_class"],
                [
                    ([cls.value], lane.config.ttfa.targets.for_class(cls))
                    for cls in RequestClass
                    if cls is not RequestClass.EMAIL_SEGMENT
                ],
            ),
            plain_gauge(
                "voicelane_admission_rate_per_second",
                "Admission attempts per second, recent.",
                float(guardian["current_rps"]),
            ),
            gauge(
                "voicelane_upstream_circuit_open",
                "1 while a tier's circuit is open.",
                ["tier"],
                [([tier.value], float(c.is_open)) for tier, c in lane.circuits.items()],
            ),
            gauge(
                "voicelane_upstream_healthy",
                "1 when a tier's last health check passed.",
                ["tier"],
                # A tier not yet checked has no sample: "unknown" is not "down".
                [([tier.value], float(ok)) for tier, ok in lane.healthy.items() if ok is not None],
            ),
            plain_gauge("voicelane_cache_entries", "Entries in the result cache.", float(cache["entries"])),
            plain_gauge("voicelane_cache_bytes", "Bytes held by the result cache.", float(cache["bytes"])),
        ]

    return collect


# ----- application ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Extensions:
    """What a program embedding the sidecar adds or swaps in (its tests do): routes, the pressure, the clock.

    The shipped command uses none of it; a test registers its own hooks through it, so that
    no test route or test clock lives in the server itself.
    """

    routes: tuple[web.RouteDef, ...] = ()
    local_pressure: PressureSource | None = None
    clock: Callable[[], float] = time.monotonic


def build_app(
    config: SidecarConfig,
    *,
    config_path: Path | None = None,
    flags: dict[str, Any] | None = None,
    extensions: Extensions | None = None,
) -> tuple[web.Application, web.Application | None]:
    """The API app and, when metrics listen elsewhere, a second app serving only /metrics."""
    extensions = extensions or Extensions()
    metrics = SidecarMetrics()
    local_pressure = extensions.local_pressure or LocalPressureSource()
    lane = Lane(config, metrics, local_pressure=local_pressure, clock=extensions.clock)
    metrics.add_state(_state_metrics(lane))
    metrics.initialize_series(c.value for c in RequestClass if c is not RequestClass.EMAIL_SEGMENT)

    def count_alert(alert: Alert) -> None:
        metrics.alerts.labels(alert.request_class, alert.kind).inc()

    monitor = TTFAMonitor(config.ttfa, on_alert=count_alert)
    speaker = Speaker(lane, make_backend(config.tts), metrics, monitor)
    followups = FollowUpStore(speaker)

    app = web.Application(
        middlewares=[request_log_middleware, error_middleware], client_max_size=config.limits.max_body_bytes
    )
    app[LANE_KEY] = lane
    app[METRICS_KEY] = metrics
    state: dict[str, Any] = {"started": time.monotonic(), "phrase_bank": {"prepared": 0, "total": 0}}
    app[STATE_KEY] = state
    app[SPEAKER_KEY] = speaker
    app[MONITOR_KEY] = monitor
    app[FOLLOWUPS_KEY] = followups
    app.router.add_post("/v1/text", handle_text)
    app.router.add_post("/v1/speak", handle_speak)
    app.router.add_get("/v1/followups/{request_id}", handle_followups)
    app.router.add_get("/v1/followups/{request_id}/{index}", handle_followup_audio)
    app.router.add_get("/v1/stats", handle_stats)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/openapi.json", handle_openapi)
    transparent.add_routes(app, LANE_KEY, METRICS_KEY)
    app.router.add_routes(extensions.routes)

    metrics_app: web.Application | None = None
    if config.server.metrics_listen and config.server.metrics_listen != config.server.listen:
        metrics_app = web.Application(middlewares=[error_middleware])
        metrics_app[LANE_KEY] = lane
        metrics_app[METRICS_KEY] = metrics
        metrics_app.router.add_get("/metrics", handle_metrics)
        # The API binds loopback, where the kubelet cannot reach it: probes use this listener.
        metrics_app.router.add_get("/healthz", handle_healthz)
        metrics_app.router.add_get("/readyz", handle_readyz)
    else:
        app.router.add_get("/metrics", handle_metrics)

    def apply_config(new: SidecarConfig) -> None:
        lane.reconfigure(new)
        monitor.reconfigure(new.ttfa)

    watcher = ConfigWatcher(config_path, flags or {}, on_change=apply_config, metrics=metrics) if config_path else None
    if watcher is not None:
        app[WATCHER_KEY] = watcher
    background: list[asyncio.Task[None]] = []

    async def prepare_phrase_bank() -> None:
        state["phrase_bank"] = {
            "prepared": 0,
            "total": len(config.phrase_bank.phrases) if config.phrase_bank.enabled else 0,
        }
        state["phrase_bank"]["prepared"] = await speaker.prepare_phrase_bank()

    async def on_startup(_: web.Application) -> None:
        await lane.start()
        followups.start()
        background.append(asyncio.create_task(prepare_phrase_bank(), name="voicelane-phrase-bank"))
        if watcher is not None:
            watcher.start()

    async def on_cleanup(_: web.Application) -> None:
        if watcher is not None:
            await watcher.stop()
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await followups.stop()
        await speaker.backend.close()
        await lane.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app, metrics_app


def _split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def _serve_async(
    config: SidecarConfig, *, config_path: Path | None, flags: dict[str, Any], extensions: Extensions | None
) -> None:
    app, metrics_app = build_app(config, config_path=config_path, flags=flags, extensions=extensions)
    runners: list[web.AppRunner] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # SIGHUP means "re-read your configuration" by convention; its default action would end the process.
    loop.add_signal_handler(signal.SIGHUP, functools.partial(_reload_on_hangup, app.get(WATCHER_KEY)))
    try:
        for application, address in ((app, config.server.listen), (metrics_app, config.server.metrics_listen)):
            if application is None or address is None:
                continue
            # Handler cancellation: a client that disconnects stops its handler, so work nobody
            # waits for any more (a queued request, a whole answer being gathered) is let go.
            runner = ApiAppRunner(
                application,
                access_log=None,
                shutdown_timeout=config.server.shutdown_grace_s,
                handler_cancellation=True,
            )
            await runner.setup()
            runners.append(runner)
            host, port = _split_hostport(address)
            await web.TCPSite(runner, host, port).start()
            log.info("listening on %s", address)
        await stop.wait()
    finally:
        for started in reversed(runners):
            await started.cleanup()


def _reload_on_hangup(watcher: ConfigWatcher | None) -> None:
    if watcher is None:
        log.info("SIGHUP: the sidecar runs without a configuration file, so there is nothing to re-read")
        return
    watcher.reload_now(reason="SIGHUP")


# Where the hard limit is unlimited, the kernel still refuses more than its nr_open (2**20 by default).
_OPEN_FILES_CAP = 1 << 20


def _lift_open_file_limit() -> None:
    """Raise the soft limit on open files to the hard one: every client connection is a file.

    Container runtimes commonly start processes with a soft limit of 1,024. A thousand idle
    connections exhaust that, and the server then stops accepting anyone, /healthz included.
    """
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _OPEN_FILES_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, exc)
            return
        soft = wanted
    log.info("open-file limit: %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)


def serve(
    config: SidecarConfig,
    *,
    config_path: Path | None,
    flags: dict[str, Any],
    extensions: Extensions | None = None,
) -> int:
    # One JSON object per line, with each record's extra fields (request ids) as keys of their own.
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger", "message": "msg"},
        )
    )
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    _lift_open_file_limit()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_async(config, config_path=config_path, flags=flags, extensions=extensions))
    return 0
