"""Transparent mode: the Ollama and OpenAI chat APIs, served through the lane.

An app pointed at the sidecar instead of its model server works unchanged, and its
calls still get admission, priority scheduling, coalescing and fast/deep routing.
Responses are produced in each API's own wire format from the lane's token stream.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from voicelane import __version__
from voicelane.sidecar.config import RequestClass, Tier
from voicelane.sidecar.edge import check_text, decode_json_object, parse_class, read_body
from voicelane.sidecar.egress import BoundedStreamResponse
from voicelane.sidecar.errors import ApiError, bad_request
from voicelane.sidecar.lane import Lane, Submission
from voicelane.sidecar.metrics import SidecarMetrics

SOURCE_HEADER = "X-Voicelane-Source"
_OPTION_KEYS = ("num_predict", "temperature", "stop")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _messages(payload: dict[str, Any], lane: Lane) -> list[dict[str, str]]:
    raw = payload.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("invalid_messages", "'messages' must be a non-empty list of {role, content}")
    messages: list[dict[str, str]] = []
    for index, item in enumerate(raw):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("role"), str)
            or not isinstance(item.get("content"), str)
        ):
            raise bad_request(
                "invalid_messages", f"messages[{index}] must be an object with string 'role' and 'content'"
            )
        messages.append({"role": item["role"], "content": item["content"]})
    check_text("".join(m["content"] for m in messages), lane.config.limits, field="messages")
    return messages


def _source(request: web.Request) -> RequestClass | None:
    header = request.headers.get(SOURCE_HEADER)
    # Present but empty is an unknown class too, not "absent": a client meant to set it.
    return parse_class(header) if header is not None else None


def _served_model(lane: Lane, submission: Submission, tier: str | None) -> str:
    try:
        return lane.config.upstreams.for_tier(Tier(tier or submission.job.route.tier.value)).model
    except ValueError:
        return lane.config.upstreams.for_tier(submission.job.route.tier).model


def _headers(submission: Submission) -> dict[str, str]:
    return {
        "X-Request-Id": submission.job.request_id,
        "X-Voicelane-Shared": "true" if submission.shared else "false",
        "X-Voicelane-Cached": "true" if submission.cached is not None else "false",
        "X-Voicelane-Priority": str(submission.job.priority),
    }


async def _admit(request: web.Request, lane: Lane, *, api: str) -> tuple[dict[str, Any], Submission]:
    payload = decode_json_object(await read_body(request, lane.config.limits))
    if not isinstance(payload.get("stream", False), bool):
        raise bad_request("invalid_field", "'stream' must be true or false")
    if api == "ollama_generate":
        prompt = check_text(payload.get("prompt"), lane.config.limits, field="prompt")
        messages = [{"role": "user", "content": prompt}]
        if isinstance(payload.get("system"), str) and payload["system"]:
            messages.insert(0, {"role": "system", "content": payload["system"]})
    else:
        messages = _messages(payload, lane)
    options: dict[str, Any]
    if api == "openai":
        options = {k: payload[k] for k in ("temperature", "stop") if k in payload}
        if "max_tokens" in payload:
            options["num_predict"] = payload["max_tokens"]
    else:
        raw_options = payload.get("options")
        raw_options = {} if raw_options is None else raw_options
        if not isinstance(raw_options, dict):
            raise bad_request("invalid_field", "'options' must be an object")
        options = {k: raw_options[k] for k in _OPTION_KEYS if k in raw_options}
    _check_options(options)
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    job = lane.chat_job(
        messages=messages, request_class=_source(request), request_id=request_id, options=options, api=api
    )
    return payload, lane.submit(job)


def _is_number(value: Any) -> bool:
    # JSON true/false arrive as bool, which Python counts as an int.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_options(options: dict[str, Any]) -> None:
    num_predict = options.get("num_predict", 1)
    if isinstance(num_predict, float) and num_predict.is_integer():
        # JSON does not tell 1.0 from 1.
        num_predict = options["num_predict"] = int(num_predict)
    if isinstance(num_predict, bool) or not isinstance(num_predict, int) or num_predict < 1:
        raise bad_request("invalid_field", "num_predict/max_tokens must be a positive integer")
    if "temperature" in options and not _is_number(options["temperature"]):
        raise bad_request("invalid_field", "temperature must be a number")
    if "stop" in options:
        stop = options["stop"]
        if isinstance(stop, str):
            options["stop"] = [stop]
        elif not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad_request("invalid_field", "stop must be a string or a list of strings")


def _count(metrics: SidecarMetrics, endpoint: str, submission: Submission | None, outcome: str) -> None:
    request_class = submission.job.request_class.value if submission else "unknown"
    metrics.requests.labels(endpoint, request_class, outcome).inc()


def add_routes(app: web.Application, lane_key: web.AppKey[Lane], metrics_key: web.AppKey[SidecarMetrics]) -> None:
    """Register the Ollama- and OpenAI-compatible endpoints on `app`."""

    async def ollama_chat(request: web.Request) -> web.StreamResponse:
        return await _ollama(request, api="ollama_chat")

    async def ollama_generate(request: web.Request) -> web.StreamResponse:
        return await _ollama(request, api="ollama_generate")

    async def _ollama(request: web.Request, *, api: str) -> web.StreamResponse:
        lane, metrics = request.app[lane_key], request.app[metrics_key]
        endpoint = "api_chat" if api == "ollama_chat" else "api_generate"
        started = time.monotonic_ns()
        try:
            payload, submission = await _admit(request, lane, api=api)
        except ApiError as exc:
            _count(metrics, endpoint, None, exc.code)
            return _ollama_error(exc)
        content_key = "message" if api == "ollama_chat" else "response"

        def line(token: str, done: bool, tier: str | None) -> dict[str, Any]:
            body: dict[str, Any] = {
                "model": _served_model(lane, submission, tier),
                "created_at": _now_iso(),
                "done": done,
            }
            body[content_key] = {"role": "assistant", "content": token} if content_key == "message" else token
            return body

        def final(tier: str | None, text: str | None = None) -> dict[str, Any]:
            body = line(text or "", True, tier)
            body.update(done_reason="stop", total_duration=time.monotonic_ns() - started, load_duration=0)
            return body

        try:
            if payload.get("stream", True) is False:
                result = await submission.result()
                _count(metrics, endpoint, submission, "ok")
                return web.json_response(final(result.tier, result.text), headers=_headers(submission))
            tokens = submission.tokens()
            first = await anext(tokens, None)
        except ApiError as exc:
            _count(metrics, endpoint, submission, exc.code)
            return _ollama_error(exc)
        response = BoundedStreamResponse(
            headers={"Content-Type": "application/x-ndjson", **_headers(submission)},
            send_timeout_s=lane.config.limits.send_timeout_s,
        )
        try:
            await response.prepare(request)
            if first is not None:
                await response.write(_ndjson(line(first, False, None)))
            async for token in tokens:
                await response.write(_ndjson(line(token, False, None)))
            result = await submission.result()
            await response.write(_ndjson(final(result.tier)))
            _count(metrics, endpoint, submission, "ok")
        except ApiError as exc:
            # Ollama reports a failure after the headers as an error line, which its clients raise.
            await response.write(_ndjson({"error": exc.message}))
            _count(metrics, endpoint, submission, exc.code)
        finally:
            # However the handler ends (a client gone included), its hold on the shared work goes now.
            await tokens.aclose()
        await response.write_eof()
        return response

    async def openai_chat(request: web.Request) -> web.StreamResponse:
        lane, metrics = request.app[lane_key], request.app[metrics_key]
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        try:
            payload, submission = await _admit(request, lane, api="openai")
        except ApiError as exc:
            _count(metrics, "v1_chat_completions", None, exc.code)
            return _openai_error(exc)

        def chunk(delta: dict[str, Any], finish: str | None, tier: str | None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": _served_model(lane, submission, tier),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        try:
            if not payload.get("stream", False):
                result = await submission.result()
                _count(metrics, "v1_chat_completions", submission, "ok")
                return web.json_response(
                    {
                        "id": completion_id,
                        "object": "chat.completion",
                        "created": created,
                        "model": _served_model(lane, submission, result.tier),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": result.text},
                                "finish_reason": "stop",
                            }
                        ],
                    },
                    headers=_headers(submission),
                )
            tokens = submission.tokens()
            first = await anext(tokens, None)
        except ApiError as exc:
            _count(metrics, "v1_chat_completions", submission, exc.code)
            return _openai_error(exc)
        response = BoundedStreamResponse(
            headers={"Content-Type": "text/event-stream", **_headers(submission)},
            send_timeout_s=lane.config.limits.send_timeout_s,
        )
        try:
            await response.prepare(request)
            await response.write(_sse(chunk({"role": "assistant", "content": first or ""}, None, None)))
            async for token in tokens:
                await response.write(_sse(chunk({"content": token}, None, None)))
            result = await submission.result()
            await response.write(_sse(chunk({}, "stop", result.tier)))
            await response.write(b"data: [DONE]\n\n")
            _count(metrics, "v1_chat_completions", submission, "ok")
        except ApiError as exc:
            # No [DONE]: a client must not take a broken stream for a complete one.
            await response.write(_sse({"error": {"message": exc.message, "type": exc.code, "code": exc.code}}))
            _count(metrics, "v1_chat_completions", submission, exc.code)
        finally:
            await tokens.aclose()
        await response.write_eof()
        return response

    async def ollama_version(request: web.Request) -> web.Response:
        return web.json_response({"version": __version__})

    async def ollama_tags(request: web.Request) -> web.Response:
        lane = request.app[lane_key]
        models = sorted({lane.config.upstreams.fast.model, lane.config.upstreams.deep.model})
        return web.json_response({"models": [{"name": m, "model": m, "modified_at": _now_iso()} for m in models]})

    async def openai_models(request: web.Request) -> web.Response:
        lane = request.app[lane_key]
        models = sorted({lane.config.upstreams.fast.model, lane.config.upstreams.deep.model})
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "voicelane"} for m in models]}
        )

    app.router.add_post("/api/chat", ollama_chat)
    app.router.add_post("/api/generate", ollama_generate)
    app.router.add_get("/api/version", ollama_version)
    app.router.add_get("/api/tags", ollama_tags)
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_get("/v1/models", openai_models)


def _ollama_error(exc: ApiError) -> web.Response:
    # Ollama's error body is {"error": "..."}; keep the code in a header for machines.
    return web.json_response(
        {"error": exc.message}, status=exc.status, headers={**exc.headers(), "X-Voicelane-Error": exc.code}
    )


def _openai_error(exc: ApiError) -> web.Response:
    body = {"error": {"message": exc.message, "type": exc.code, "code": exc.code}}
    response = web.json_response(body, status=exc.status, headers=exc.headers())
    response["error_code"] = exc.code  # for the request log
    return response


def _ndjson(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode() + b"\n"


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"
