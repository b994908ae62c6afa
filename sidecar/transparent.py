"""Transparent mode: the Ollama and OpenAI APIs, served through the lane.

An app pointed at the sidecar instead of its model server works unchanged, and its
calls still get admission, priority scheduling and the lane's tiers. The model a call
names decides what happens to it (see `resolve_model`); a name is never replaced:

- a plain text chat (string contents; only `temperature`, `num_predict` and `stop` among
  the options) runs through the whole lane, coalescing and failover included, and is
  answered in the API's own wire format from the lane's token stream;
- a chat carrying anything else (`format`, `tools`, `images`, `seed`, other options, …)
  is admitted and scheduled the same way, then forwarded with the caller's fields intact
  and only the lane's policy applied (model, `keep_alive`, `think`, the `num_predict`
  bound), and Ollama's own answer comes back byte for byte;
- a model no tier serves, model listings, `show`, `ps`, `version` and embeddings pass
  through untouched, so the caller sees the model server's own answers and errors.
"""

from __future__ import annotations

import contextlib
import json
import time
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
from aiohttp import web

from voicelane.core.refusals import LaneError, Refused
from voicelane.core.routing import RouteDecision
from voicelane.sidecar import streaming
from voicelane.sidecar.classify import default_class_for_text
from voicelane.sidecar.config import Protocol, RequestClass, Tier
from voicelane.sidecar.edge import REQUEST_ID, REQUEST_ID_KEY, check_text, decode_json_object, parse_class, read_body
from voicelane.sidecar.errors import ERROR_CODE_KEY, ApiError, bad_request, http_error
from voicelane.sidecar.lane import Lane, Submission
from voicelane.sidecar.metrics import SidecarMetrics
from voicelane.sidecar.upstream import UpstreamError

SOURCE_HEADER = "X-Voicelane-Source"
OVERRIDDEN_HEADER = "X-Voicelane-Overridden"
# The model name that lets the lane choose the tier by the text, as it does for /v1/text.
LANE_MODEL = "voicelane"
_OPTION_KEYS = ("num_predict", "temperature", "stop")
# The fields the lane's own token path carries; a call with any other goes through forwarding.
_LANE_FIELDS = {
    "ollama_chat": {"model", "messages", "stream", "options", "keep_alive", "think"},
    "ollama_generate": {"model", "prompt", "system", "stream", "options", "keep_alive", "think"},
    "openai": {"model", "messages", "stream", "temperature", "max_tokens", "stop"},
}
_UPSTREAM_PATHS = {"ollama_chat": "/api/chat", "ollama_generate": "/api/generate", "openai": "/v1/chat/completions"}
_FORWARD_CHUNK = 65536

Api = Literal["ollama_chat", "ollama_generate", "openai"]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# ----- which model, which tier ---------------------------------------------------------------------


def canonical_model(name: str) -> str:
    """Ollama's reading of a model name: without a tag it means `:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass(frozen=True)
class ModelTarget:
    """Where a call naming a model goes: one tier, the lane's choice (`tier` None), or outside the lane."""

    name: str
    tier: Tier | None
    lane: bool


def resolve_model(lane: Lane, name: str) -> ModelTarget:
    """The documented mapping of caller names: a tier's model pins that tier; `voicelane` (or a model
    both tiers serve) lets the lane route by the text; any other name is not the lane's model."""
    wanted = canonical_model(name)
    serving = [tier for tier in Tier if canonical_model(lane.config.upstreams.for_tier(tier).model) == wanted]
    if wanted == canonical_model(LANE_MODEL) or len(serving) == len(Tier):
        return ModelTarget(name, None, lane=True)
    if serving:
        return ModelTarget(name, serving[0], lane=True)
    return ModelTarget(name, None, lane=False)


def _model_name(payload: dict[str, Any], *, api: str) -> str:
    # Ollama's older clients name the model `name` on show; every other call says `model`.
    model = payload.get("model", payload.get("name") if api == "show" else None)
    if not isinstance(model, str) or not model.strip():
        raise bad_request("invalid_field", f"'model' is required: one of the lane's models or {LANE_MODEL!r}")
    return model


def _tier_for_passthrough(lane: Lane, model: str | None, *, protocols: tuple[Protocol, ...]) -> Tier:
    """The tier whose server gets a call outside the lane: the one serving `model`, else deep first."""
    candidates = [tier for tier in (Tier.DEEP, Tier.FAST) if lane.config.upstreams.for_tier(tier).protocol in protocols]
    if not candidates:
        raise ApiError(
            501, "not_supported", "no tier of this lane speaks Ollama's API; use the OpenAI-compatible endpoints"
        )
    if model is not None:
        wanted = canonical_model(model)
        for tier in candidates:
            if canonical_model(lane.config.upstreams.for_tier(tier).model) == wanted:
                return tier
    return candidates[0]


# ----- validation at the edge ----------------------------------------------------------------------


def _text_parts(content: list[Any], index: int) -> list[str] | None:
    """The texts of an OpenAI content-part list, or None if it holds other parts (images…)."""
    texts: list[str] = []
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request("invalid_messages", f"messages[{index}].content parts must be objects with a 'type'")
        if ("text" in part and not isinstance(part["text"], str)) or (part["type"] == "text" and "text" not in part):
            raise bad_request("invalid_messages", f"messages[{index}].content text parts need a string 'text'")
        if part["type"] != "text":
            return None
        texts.append(part["text"])
    return texts


def _messages(payload: dict[str, Any], lane: Lane, *, api: Api) -> list[dict[str, str]] | None:
    """The messages as the lane's token path takes them, or None if only forwarding keeps them whole."""
    raw = payload.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("invalid_messages", "'messages' must be a non-empty list of {role, content}")
    messages: list[dict[str, str]] = []
    plain = True
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise bad_request("invalid_messages", f"messages[{index}] must be an object with a string 'role'")
        content = item.get("content")
        if _present(item, set(item) - {"role", "content"}):
            plain = False  # images, tool calls, tool names, thinking: Ollama's to read
        if isinstance(content, str):
            messages.append({"role": item["role"], "content": content})
        elif api == "openai" and isinstance(content, list):
            texts = _text_parts(content, index)
            if texts is None:
                plain = False
            else:
                # As Ollama's OpenAI layer does: each text part is a message of its own.
                messages.extend({"role": item["role"], "content": text} for text in texts)
        elif content is None and _present(item, set(item) - {"role", "content"}):
            plain = False  # e.g. an assistant turn that only holds tool calls
        else:
            shape = "a string or a list of content parts" if api == "openai" else "a string"
            raise bad_request("invalid_messages", f"messages[{index}].content must be {shape}")
    check_text("".join(m["content"] for m in messages), lane.config.limits, field="messages")
    return messages if plain and messages else None


def _present(body: dict[str, Any], keys: set[str]) -> bool:
    """True if any of `keys` holds something: Ollama's own client sends `"tools": []` with every chat."""
    return any(body[key] not in (None, "", [], {}) for key in keys)


def _request_id(request: web.Request) -> str:
    """The caller's X-Request-Id, which is echoed in the answer's headers, or a new one."""
    given = request.headers.get("X-Request-Id")
    if not given:
        return uuid.uuid4().hex
    if not REQUEST_ID.fullmatch(given):
        raise bad_request("invalid_field", "the X-Request-Id header must be 1 to 128 letters, digits or . _ : -")
    return given


def _source(request: web.Request) -> RequestClass | None:
    header = request.headers.get(SOURCE_HEADER)
    # Present but empty is an unknown class too, not "absent": a client meant to set it.
    return parse_class(header) if header is not None else None


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


def _check_format(payload: dict[str, Any]) -> None:
    if "format" in payload and payload["format"] not in ("", "json", None) and not isinstance(payload["format"], dict):
        raise bad_request("invalid_field", "'format' must be \"json\" or a JSON schema object")


@dataclass
class Call:
    """One validated chat or generate call and how the lane will run it."""

    api: Api
    payload: dict[str, Any]
    target: ModelTarget
    messages: list[dict[str, str]] | None  # None: forwarded with the caller's fields intact
    options: dict[str, Any]
    request_class: RequestClass
    text: str  # what routing and priority read: the last user turn

    @property
    def stream_default(self) -> bool:
        return self.api != "openai"


def _parse_call(payload: dict[str, Any], request: web.Request, lane: Lane, *, api: Api) -> Call:
    if not isinstance(payload.get("stream", False), bool):
        raise bad_request("invalid_field", "'stream' must be true or false")
    target = resolve_model(lane, _model_name(payload, api=api))
    if api == "ollama_generate":
        prompt = check_text(payload.get("prompt"), lane.config.limits, field="prompt")
        if payload.get("system") is not None and not isinstance(payload["system"], str):
            raise bad_request("invalid_field", "'system' must be a string")
        messages: list[dict[str, str]] | None = [{"role": "user", "content": prompt}]
        if payload.get("system"):
            messages = [{"role": "system", "content": payload["system"]}, {"role": "user", "content": prompt}]
    else:
        messages = _messages(payload, lane, api=api)
    _check_format(payload)
    options: dict[str, Any]
    if api == "openai":
        options = {k: payload[k] for k in ("temperature", "stop") if k in payload and payload[k] is not None}
        if payload.get("max_tokens") is not None:
            options["num_predict"] = payload["max_tokens"]
    else:
        raw_options = payload.get("options")
        raw_options = {} if raw_options is None else raw_options
        if not isinstance(raw_options, dict):
            raise bad_request("invalid_field", "'options' must be an object")
        options = {k: raw_options[k] for k in _OPTION_KEYS if k in raw_options}
        if _present(raw_options, set(raw_options) - set(_OPTION_KEYS)):
            messages = None  # seed, top_k, …: only forwarding passes them on
    _check_options(options)
    if _present(payload, set(payload) - _LANE_FIELDS[api]):
        messages = None
    text = _last_user_text(payload, api)
    request_class = _source(request) or default_class_for_text(text, lane.config.classes)
    return Call(api, payload, target, messages, options, request_class, text)


def _last_user_text(payload: dict[str, Any], api: Api) -> str:
    if api == "ollama_generate":
        return str(payload.get("prompt") or "")
    for item in reversed(payload.get("messages") or []):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _overridden(call: Call, lane: Lane, tier: Tier) -> list[str]:
    """The caller's fields the lane's policy sets otherwise (named in a response header)."""
    upstream = lane.config.upstreams.for_tier(tier)
    names = []
    if call.api != "openai":
        if "keep_alive" in call.payload and call.payload["keep_alive"] != upstream.keep_alive:
            names.append("keep_alive")
        if call.payload.get("think") not in (None, False):
            names.append("think")
    if call.options.get("num_predict", 0) > upstream.num_predict:
        names.append("num_predict" if call.api != "openai" else "max_tokens")
    return names


# ----- the handlers --------------------------------------------------------------------------------


def _headers(submission: Submission) -> dict[str, str]:
    return {
        "X-Request-Id": submission.job.request_id,
        "X-Voicelane-Shared": "true" if submission.shared else "false",
        "X-Voicelane-Cached": "true" if submission.cached is not None else "false",
        "X-Voicelane-Priority": str(submission.job.priority),
    }


def _count(metrics: SidecarMetrics, endpoint: str, request_class: RequestClass | None, outcome: str) -> None:
    metrics.requests.labels(endpoint, request_class.value if request_class else "unknown", outcome).inc()


def _served_model(lane: Lane, tier: str | Tier) -> str:
    return lane.config.upstreams.for_tier(Tier(tier)).model


def add_routes(app: web.Application, lane_key: web.AppKey[Lane], metrics_key: web.AppKey[SidecarMetrics]) -> None:
    """Register the Ollama- and OpenAI-compatible endpoints on `app`."""

    async def chat_call(request: web.Request, *, api: Api) -> web.StreamResponse:
        lane, metrics = request.app[lane_key], request.app[metrics_key]
        endpoint = {"ollama_chat": "api_chat", "ollama_generate": "api_generate", "openai": "v1_chat_completions"}[api]
        error = _openai_error if api == "openai" else _ollama_error
        raw = b""
        try:
            request_id = request[REQUEST_ID_KEY] = _request_id(request)
            raw = await read_body(request, lane.config.limits)
            call = _parse_call(decode_json_object(raw), request, lane, api=api)
        except ApiError as exc:
            _count(metrics, endpoint, None, exc.code)
            return error(exc)
        if not call.target.lane:
            # Not the lane's model: its server answers as it is, the 404 for an unknown one included.
            protocols = (Protocol.OLLAMA,) if api != "openai" else (Protocol.OLLAMA, Protocol.OPENAI)
            try:
                tier = _tier_for_passthrough(lane, call.target.name, protocols=protocols)
            except ApiError as exc:
                return error(exc)
            _count(metrics, endpoint, call.request_class, "passed_through")
            return await _relay(request, lane, tier, _UPSTREAM_PATHS[api], raw, error, {"X-Request-Id": request_id})
        if call.messages is None:
            return await _forward_call(request, lane, metrics, call, endpoint=endpoint, request_id=request_id)
        return await _lane_call(request, lane, metrics, call, endpoint=endpoint, request_id=request_id)

    async def ollama_chat(request: web.Request) -> web.StreamResponse:
        return await chat_call(request, api="ollama_chat")

    async def ollama_generate(request: web.Request) -> web.StreamResponse:
        return await chat_call(request, api="ollama_generate")

    async def openai_chat(request: web.Request) -> web.StreamResponse:
        return await chat_call(request, api="openai")

    def by_model(
        path: str, *, api: str, protocols: tuple[Protocol, ...]
    ) -> Callable[..., Awaitable[web.StreamResponse]]:
        """A call about one model (show, embeddings): untouched, to the server of the tier serving it."""
        error = _openai_error if path.startswith("/v1/") else _ollama_error

        async def handler(request: web.Request) -> web.StreamResponse:
            lane = request.app[lane_key]
            try:
                raw = await read_body(request, lane.config.limits)
                tier = _tier_for_passthrough(lane, _model_name(decode_json_object(raw), api=api), protocols=protocols)
            except ApiError as exc:
                return error(exc)
            return await _relay(request, lane, tier, path, raw, error)

        return handler

    def listing(path: str, *, key: str, protocols: tuple[Protocol, ...]) -> Callable[..., Awaitable[web.Response]]:
        """A listing both tiers' servers contribute to (models, loaded models); one server's as it is."""
        error = _openai_error if path.startswith("/v1/") else _ollama_error

        async def handler(request: web.Request) -> web.Response:
            lane = request.app[lane_key]
            try:
                return await _merged_listing(lane, path, key=key, protocols=protocols)
            except ApiError as exc:
                return error(exc)

        return handler

    async def ollama_version(request: web.Request) -> web.StreamResponse:
        lane = request.app[lane_key]
        try:
            tier = _tier_for_passthrough(lane, None, protocols=(Protocol.OLLAMA,))
        except ApiError as exc:
            return _ollama_error(exc)
        return await _relay(request, lane, tier, "/api/version", None, _ollama_error)

    both = (Protocol.OLLAMA, Protocol.OPENAI)
    app.router.add_post("/api/chat", ollama_chat)
    app.router.add_post("/api/generate", ollama_generate)
    app.router.add_post("/api/show", by_model("/api/show", api="show", protocols=(Protocol.OLLAMA,)))
    app.router.add_post("/api/embed", by_model("/api/embed", api="embed", protocols=(Protocol.OLLAMA,)))
    app.router.add_get("/api/version", ollama_version)
    app.router.add_get("/api/tags", listing("/api/tags", key="models", protocols=(Protocol.OLLAMA,)))
    app.router.add_get("/api/ps", listing("/api/ps", key="models", protocols=(Protocol.OLLAMA,)))
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_post("/v1/embeddings", by_model("/v1/embeddings", api="embed", protocols=both))
    app.router.add_get("/v1/models", listing("/v1/models", key="data", protocols=both))


# ----- the lane's token path -----------------------------------------------------------------------


def _submit(lane: Lane, call: Call, request_id: str) -> Submission:
    assert call.messages is not None
    # The model named is part of what is coalesced on: two names, two answers.
    options = {**call.options, "model": canonical_model(call.target.name)}
    job = lane.chat_job(
        messages=call.messages,
        request_class=call.request_class,
        request_id=request_id,
        options=options,
        api=call.api,
    )
    if call.target.tier is not None:
        job = replace(job, route=RouteDecision(call.target.tier, (f"model:{call.target.name}",)))
    return lane.submit(job)


async def _lane_call(
    request: web.Request, lane: Lane, metrics: SidecarMetrics, call: Call, *, endpoint: str, request_id: str
) -> web.StreamResponse:
    error = _openai_error if call.api == "openai" else _ollama_error
    started = time.monotonic_ns()
    try:
        submission = _submit(lane, call, request_id)
        headers = _headers(submission)
        overridden = _overridden(call, lane, submission.job.route.tier)
        if overridden:
            headers[OVERRIDDEN_HEADER] = ",".join(overridden)
        if not call.payload.get("stream", call.stream_default):
            result = await submission.result()
            _count(metrics, endpoint, call.request_class, "ok")
            body = _final_body(call, lane, result.tier, result.text, started=started)
            return web.json_response(body, headers=headers)
    except (ApiError, LaneError) as caught:
        exc = http_error(caught)
        _count(metrics, endpoint, call.request_class, exc.code)
        return error(exc)
    wire: _Wire = _OpenAIWire(call, lane) if call.api == "openai" else _OllamaWire(call, lane)

    async def frames() -> AsyncIterator[dict[str, Any]]:
        # Closed however the answer ends (a client gone included), so its hold on the shared work goes now.
        async with contextlib.aclosing(submission.tokens()) as tokens:
            first = await anext(tokens, None)
            answering = submission.tier() or submission.job.route.tier.value
            opening = wire.first(first, answering)
            if opening is not None:
                yield opening
            async for token in tokens:
                yield wire.token(token, answering)

    async def final() -> dict[str, Any]:
        return wire.end((await submission.result()).tier, started=started)

    try:
        streamed = await streaming.stream(
            request,
            frames(),
            wire.encoder,
            headers=headers,
            send_timeout_s=lane.config.limits.send_timeout_s,
            breaks=streaming.lane_failure,
            final=final,
            # After the headers a failure is an error line (Ollama) or event (OpenAI), which clients
            # raise; an OpenAI stream then has no [DONE], so it cannot be taken for a complete one.
            error_frame=wire.error,
        )
    except (ApiError, LaneError) as caught:
        exc = http_error(caught)
        _count(metrics, endpoint, call.request_class, exc.code)
        return error(exc)
    outcome = "ok" if streamed.failure is None else streamed.failure.code
    _count(metrics, endpoint, call.request_class, outcome)
    return streamed.response


def _final_body(call: Call, lane: Lane, tier: str, text: str, *, started: int) -> dict[str, Any]:
    if call.api == "openai":
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": _served_model(lane, tier),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
    return _OllamaWire(call, lane).line(text, tier, done=True, started=started)


class _Wire(typing.Protocol):
    """The frames of one API's token stream; its encoder spells them on the wire."""

    encoder: streaming.Encoder[dict[str, Any]]

    def first(self, token: str | None, tier: str) -> dict[str, Any] | None: ...
    def token(self, token: str, tier: str) -> dict[str, Any]: ...
    def end(self, tier: str, *, started: int) -> dict[str, Any]: ...
    def error(self, exc: ApiError) -> dict[str, Any]: ...


class _OllamaWire:
    encoder: streaming.Encoder[dict[str, Any]] = streaming.Ndjson()

    def __init__(self, call: Call, lane: Lane) -> None:
        self.call, self.lane = call, lane

    def line(self, token: str, tier: str, *, done: bool, started: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": _served_model(self.lane, tier), "created_at": _now_iso()}
        if self.call.api == "ollama_chat":
            body["message"] = {"role": "assistant", "content": token}
        else:
            body["response"] = token
        body["done"] = done
        if done and started is not None:
            body.update(done_reason="stop", total_duration=time.monotonic_ns() - started, load_duration=0)
        return body

    def first(self, token: str | None, tier: str) -> dict[str, Any] | None:
        return self.line(token, tier, done=False) if token is not None else None

    def token(self, token: str, tier: str) -> dict[str, Any]:
        return self.line(token, tier, done=False)

    def end(self, tier: str, *, started: int) -> dict[str, Any]:
        return self.line("", tier, done=True, started=started)

    def error(self, exc: ApiError) -> dict[str, Any]:
        return {"error": exc.message}


class _OpenAIWire:
    encoder: streaming.Encoder[dict[str, Any]] = streaming.ServerSentEvents(done="[DONE]")

    def __init__(self, call: Call, lane: Lane) -> None:
        self.lane = lane
        self.completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def chunk(self, delta: dict[str, Any], finish: str | None, tier: str) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": _served_model(self.lane, tier),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def first(self, token: str | None, tier: str) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": token or ""}, None, tier)

    def token(self, token: str, tier: str) -> dict[str, Any]:
        return self.chunk({"content": token}, None, tier)

    def end(self, tier: str, *, started: int) -> dict[str, Any]:
        # The encoder follows it with [DONE], the mark of a complete stream.
        return self.chunk({}, "stop", tier)

    def error(self, exc: ApiError) -> dict[str, Any]:
        return {"error": {"message": exc.message, "type": exc.code, "code": exc.code}}


# ----- forwarding ----------------------------------------------------------------------------------


def _policy_body(call: Call, lane: Lane, tier: Tier) -> bytes:
    """The caller's body with only the lane's policy applied: the tier's model, keep-alive, no
    thinking, the token bound, and the tier's temperature and stop where the caller set none."""
    upstream = lane.config.upstreams.for_tier(tier)
    body = dict(call.payload)
    body["model"] = upstream.model
    num_predict = min(int(call.options.get("num_predict", upstream.num_predict)), upstream.num_predict)
    if call.api == "openai":
        body["max_tokens"] = num_predict
        body.pop("max_completion_tokens", None)
        body.setdefault("temperature", upstream.temperature)
        if "stop" not in body and upstream.stop:
            body["stop"] = list(upstream.stop)
    else:
        body["keep_alive"] = upstream.keep_alive
        # Reasoning models would otherwise spend the time to first token thinking silently.
        body["think"] = False
        options = dict(body.get("options") or {})
        options["num_predict"] = num_predict
        options.setdefault("temperature", upstream.temperature)
        options["stop"] = list(call.options.get("stop", upstream.stop))
        body["options"] = options
    return json.dumps(body, ensure_ascii=False).encode()


async def _forward_call(
    request: web.Request, lane: Lane, metrics: SidecarMetrics, call: Call, *, endpoint: str, request_id: str
) -> web.StreamResponse:
    """Admission and a priority slot as for any model work, then the call as the caller made it."""
    error = _openai_error if call.api == "openai" else _ollama_error
    tier = call.target.tier or lane.route(call.text).tier
    upstream = lane.config.upstreams.for_tier(tier)
    if call.api != "openai" and upstream.protocol is not Protocol.OLLAMA:
        exc = ApiError(
            501,
            "not_supported",
            f"the {tier.value} tier speaks the OpenAI API; use /v1/chat/completions for calls with these fields",
        )
        _count(metrics, endpoint, call.request_class, exc.code)
        return error(exc)
    priority = lane.priority(call.request_class, call.text)
    headers = {"X-Request-Id": request_id, "X-Voicelane-Priority": str(priority)}
    overridden = _overridden(call, lane, tier)
    if overridden:
        headers[OVERRIDDEN_HEADER] = ",".join(overridden)
    try:
        lane.admit_forwarded(priority)
        async with lane.forwarded_slot(priority, tier):
            response = await _relay(
                request, lane, tier, _UPSTREAM_PATHS[call.api], _policy_body(call, lane, tier), error, headers
            )
    except Refused as refused:
        _count(metrics, endpoint, call.request_class, refused.code)
        return error(http_error(refused), headers)
    _count(metrics, endpoint, call.request_class, "ok" if response.status < 400 else f"http_{response.status}")
    return response


async def _relay(
    request: web.Request,
    lane: Lane,
    tier: Tier,
    path: str,
    body: bytes | None,
    error: Callable[..., web.Response],
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Send `body` to the tier's server and stream its answer back: status, type and bytes as they are.

    Also the whole of a pass-through call, one the lane has no policy for (no extra headers then)."""
    headers = headers or {}
    method = "POST" if body is not None else "GET"
    circuit = lane.circuits[tier]
    try:
        async with lane.clients[tier].forward(method, path, body) as answer:
            if answer.status >= 500:
                circuit.record_failure()  # e.g. its queue is full: the tier is in trouble, not the call
            else:
                circuit.record_success()
            return await _stream_back(request, lane, answer, headers)
    except UpstreamError as exc:
        circuit.record_failure()
        status = 504 if exc.kind == "timeout" else 502
        code = "upstream_timeout" if exc.kind == "timeout" else "upstream_failed"
        return error(ApiError(status, code, f"the {tier.value} tier did not answer: {exc}", retry_after_s=2), headers)


async def _stream_back(
    request: web.Request, lane: Lane, answer: aiohttp.ClientResponse, headers: dict[str, str]
) -> web.StreamResponse:
    passed = {name: answer.headers[name] for name in ("Content-Type", "Retry-After") if name in answer.headers}
    # The status is sent at once; a failure of the tier's server later ends the body without its
    # final chunk, which clients report as incomplete.
    streamed = await streaming.stream(
        request,
        answer.content.iter_chunked(_FORWARD_CHUNK),
        streaming.Passthrough(),
        headers={**passed, **headers},
        status=answer.status,
        send_timeout_s=lane.config.limits.send_timeout_s,
        breaks=_relay_failure,
        wait_for_first=False,
    )
    return streamed.response


def _relay_failure(exc: BaseException) -> Exception | None:
    """What breaks a relayed body: the tier's server failing or stalling mid-answer."""
    return exc if isinstance(exc, aiohttp.ClientError | TimeoutError) else None


async def _merged_listing(lane: Lane, path: str, *, key: str, protocols: tuple[Protocol, ...]) -> web.Response:
    """One server's listing as it is; with two servers, their entries together, each name once."""
    servers: dict[str, Tier] = {}
    for tier in (Tier.DEEP, Tier.FAST):
        upstream = lane.config.upstreams.for_tier(tier)
        if upstream.protocol in protocols:
            servers.setdefault(upstream.url.rstrip("/"), tier)
    if not servers:
        raise ApiError(501, "not_supported", "no tier of this lane speaks Ollama's API")
    answers: list[tuple[int, str, bytes]] = []
    failures: list[str] = []
    for tier in servers.values():
        try:
            async with lane.clients[tier].forward("GET", path) as answer:
                answers.append(
                    (answer.status, answer.headers.get("Content-Type", "application/json"), await answer.read())
                )
        except (UpstreamError, aiohttp.ClientError, TimeoutError) as exc:
            failures.append(f"{tier.value}: {exc}")
    if len(answers) == 1 and not failures:
        status, content_type, raw = answers[0]
        return web.Response(status=status, body=raw, headers={"Content-Type": content_type})
    entries: dict[str, Any] = {}
    listing: dict[str, Any] = {}
    for status, _, raw in answers:
        try:
            document = json.loads(raw) if status == 200 else None
        except ValueError:
            document = None
        if not isinstance(document, dict) or not isinstance(document.get(key), list):
            failures.append(f"an answer of HTTP {status} without a {key!r} list")
            continue
        listing = {**document, **listing}
        for entry in document[key]:
            name = entry.get("id", entry.get("name")) if isinstance(entry, dict) else None
            entries.setdefault(str(name), entry)
    if not listing:
        raise ApiError(
            502, "upstream_failed", f"no tier's server answered {path}: {'; '.join(failures)}", retry_after_s=2
        )
    listing[key] = [entries[name] for name in sorted(entries)]
    return web.json_response(listing)


# ----- errors and wire formats ---------------------------------------------------------------------


def _ollama_error(exc: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    # Ollama's error body is {"error": "..."}; keep the code in a header for machines.
    response = web.json_response(
        {"error": exc.message},
        status=exc.status,
        headers={**(headers or {}), **exc.headers(), "X-Voicelane-Error": exc.code},
    )
    exc.apply_connection(response)
    return response


def _openai_error(exc: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": exc.message, "type": exc.code, "code": exc.code}}
    response = web.json_response(body, status=exc.status, headers={**(headers or {}), **exc.headers()})
    response[ERROR_CODE_KEY] = exc.code
    exc.apply_connection(response)
    return response
