"""The edge filter: read, bound and validate a client's request before any work is done.

Everything a client can get wrong is answered here with 400/408/413 and a clear
message; later stages only ever see a well-formed `TextRequest`, whose fields are checked
by the wire model the OpenAPI document is built from (`wire_models.TextRequest`). The rules for a JSON
body hold for every JSON endpoint (the transparent ones and the operator's webhook too):
it must be UTF-8, decode as its Content-Encoding says, nest at most `MAX_JSON_DEPTH`
levels, and hold only strings UTF-8 can carry; a string with a lone surrogate escape
(`"\\ud800"`) is refused with `invalid_unicode`, naming the field.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from voicelane.sidecar import wire_models as wire
from voicelane.sidecar.config import LimitsConfig, RequestClass
from voicelane.sidecar.errors import ApiError, bad_request

log = logging.getLogger("voicelane.sidecar")
request_log = logging.getLogger("voicelane.sidecar.requests")

VALID_CLASSES = ", ".join(c.value for c in RequestClass)
_READ_CHUNK = 16384
# Request ids are echoed in response headers and follow-up URLs: nothing that could break either.
REQUEST_ID = re.compile(f"{wire.REQUEST_ID_CHARS}{{1,{wire.REQUEST_ID_MAX}}}")
# Where a handler puts the request's id once it knows it (a body field, a header), for the request log.
REQUEST_ID_KEY = "request_id"
# Far deeper than any real request (a tool's JSON schema included), and far from Python's recursion
# limit, which the parser and every later walk of the body (re-encoding it for the model server) share.
MAX_JSON_DEPTH = 128
# A JSON escape may name half of a surrogate pair on its own; no UTF-8 encoder can write that.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class TextRequest:
    """A validated request to turn text into spoken-ready text or audio."""

    text: str
    request_class: RequestClass
    lang: str
    target_lang: str
    request_id: str
    stream: bool = False
    voice: str | None = None
    audio_format: str = "wav"


async def read_body(request: web.Request, limits: LimitsConfig) -> bytes:
    """Read the body with a size cap and a time cap, refusing early rather than buffering everything."""
    declared = request.content_length
    if declared is not None and declared > limits.max_body_bytes:
        raise ApiError(
            413,
            "body_too_large",
            f"request body of {declared} bytes exceeds {limits.max_body_bytes}",
            close_connection=True,
        )
    body = bytearray()

    async def _read() -> None:
        while True:
            chunk = await request.content.read(_READ_CHUNK)
            if not chunk:
                return
            body.extend(chunk)
            if len(body) > limits.max_body_bytes:
                raise ApiError(
                    413,
                    "body_too_large",
                    f"request body exceeds {limits.max_body_bytes} bytes",
                    close_connection=True,
                )

    try:
        await asyncio.wait_for(_read(), timeout=limits.body_read_timeout_s)
    except TimeoutError:
        raise ApiError(
            408,
            "body_timeout",
            f"request body not received within {limits.body_read_timeout_s} s",
            close_connection=True,
        ) from None
    except web.RequestPayloadError as exc:
        raise unreadable_body(request, exc) from None
    return bytes(body)


def unreadable_body(request: web.BaseRequest, exc: web.RequestPayloadError) -> ApiError:
    """The refusal of a body aiohttp could not read: not what its Content-Encoding says, or broken framing."""
    cause = exc.__cause__
    if isinstance(cause, ContentEncodingError):
        encoding = request.headers.get("Content-Encoding", "")
        code, message = (
            "invalid_content_encoding",
            f"the body does not decode as its Content-Encoding header says ({encoding})",
        )
    else:
        reason = cause.message if isinstance(cause, HttpProcessingError) else str(exc)
        code, message = "invalid_body", f"request body could not be read: {parser_reason(reason)}"
    # Where this body ends is unknown, so nothing after it on the connection can be read as a request.
    return ApiError(400, code, message, close_connection=True)


def parse_json(text: str) -> Any:
    """`text` as JSON under the edge's rules (see the module's description), or a 400 saying why not."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request("invalid_json", f"request body is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise _too_deep() from None
    check_json_value(value)
    return value


def _too_deep() -> ApiError:
    return bad_request("invalid_json", f"request body nests deeper than {MAX_JSON_DEPTH} levels")


def check_json_value(value: Any) -> None:
    """Refuse a decoded body that nests too deeply or holds a string (or key) UTF-8 cannot carry.

    Walked with a stack of its own, not by recursion, so that no depth can exhaust Python's.
    """
    pending: list[tuple[Any, str, int]] = [(value, "", 1)]  # (value, its field, the level it is on)
    while pending:
        node, path, level = pending.pop()
        if isinstance(node, dict | list) and level > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(node, str):
            _check_unicode(node, path or "body", what="holds")
        elif isinstance(node, dict):
            children = []
            for key, item in node.items():
                child = f"{path}.{_printable(key)}" if path else _printable(key)
                _check_unicode(key, child, what="is named with")
                children.append((item, child, level + 1))
            pending.extend(reversed(children))  # in document order: the first bad field is the one named
        elif isinstance(node, list):
            pending.extend((item, f"{path}[{index}]", level + 1) for index, item in reversed(list(enumerate(node))))


def _check_unicode(text: str, field: str, *, what: str) -> None:
    found = _LONE_SURROGATE.search(text)
    if found is not None:
        escape = f"\\u{ord(found.group()):04x}"
        raise bad_request(
            "invalid_unicode",
            f"'{field}' {what} a lone surrogate escape ({escape}), which is not a character: "
            "strings must be Unicode text",
            field=field,
        )


def _printable(key: str) -> str:
    # A key is named as the client sent it, its surrogates written as their escapes.
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def decode_json_object(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request("invalid_utf8", f"request body is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise bad_request("invalid_json", "request body is empty; expected a JSON object")
    value = parse_json(text)
    if not isinstance(value, dict):
        raise bad_request("invalid_json", f"request body must be a JSON object, got {type(value).__name__}")
    return value


def check_text(value: Any, limits: LimitsConfig, *, field: str = "text") -> str:
    if value is None:
        raise bad_request("missing_text", f"'{field}' is required")
    if not isinstance(value, str):
        raise bad_request("invalid_text", f"'{field}' must be a string")
    if not value.strip():
        raise bad_request("empty_text", f"'{field}' must not be empty")
    if len(value) > limits.max_text_chars:
        raise ApiError(
            413, "text_too_long", f"'{field}' has {len(value)} characters; the limit is {limits.max_text_chars}"
        )
    return value


def parse_class(value: Any) -> RequestClass:
    try:
        return RequestClass(value)
    except (ValueError, TypeError):
        raise parse_class_refusal(value) from None


def parse_class_refusal(value: Any) -> ApiError:
    """Why `value` is not a request class: missing, or not one of them."""
    if value is None:
        return bad_request("missing_source", f"'source' is required; valid classes: {VALID_CLASSES}")
    return bad_request(
        "unknown_source",
        f"unknown source {value!r}; valid classes: {VALID_CLASSES}",
        valid=[c.value for c in RequestClass],
    )


# The message of each field's `invalid_field` refusal, once the text has passed (see `parse_text_request`).
_FIELD_REFUSALS = {
    "lang": f"'lang' must be a non-empty string of at most {wire.LANG_MAX} characters",
    "target_lang": f"'target_lang' must be a non-empty string of at most {wire.LANG_MAX} characters",
    "request_id": f"'request_id' must be 1 to {wire.REQUEST_ID_MAX} letters, digits or . _ : -",
    "stream": "'stream' must be true or false",
    "voice": f"'voice' must be a non-empty string of at most {wire.VOICE_MAX} characters",
    "format": '\'format\' must be "wav" or "pcm"',
}


def parse_text_request(payload: dict[str, Any], limits: LimitsConfig, *, default_lang: str) -> TextRequest:
    """The body of /v1/text or /v1/speak, validated by its wire model (the one the OpenAPI document is made
    from), with each field's refusal named as the API's error codes say."""
    # The text first: its refusals are codes of their own, and its length limit is the configured one,
    # which the wire model only states (at its default).
    text = check_text(payload.get("text"), limits)
    try:
        body = wire.TextRequest.model_validate(payload)
    except ValidationError as exc:
        raise _field_refusal(exc.errors()[0], payload) from None
    lang = body.lang or default_lang
    return TextRequest(
        text=text,
        request_class=body.source,
        lang=lang,
        target_lang=body.target_lang or lang,
        request_id=body.request_id or uuid.uuid4().hex,
        stream=body.stream,
        voice=body.voice,
        audio_format=body.format,
    )


def _field_refusal(error: ErrorDetails, payload: dict[str, Any]) -> ApiError:
    """The API's refusal for the first field the wire model refused (the fields are checked in order)."""
    field = str(error["loc"][0])
    if field == "source":
        return parse_class_refusal(payload.get("source"))
    if field in _FIELD_REFUSALS:
        return bad_request("invalid_field", _FIELD_REFUSALS[field])
    # The text's rules are checked before the model; a field the table misses still gets a clear 400.
    return bad_request("invalid_field", f"'{field}': {error['msg']}", field=field)


# ----- the HTTP layer's own refusals ---------------------------------------------------------------


class ApiRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, with the refusals it makes itself answered and logged as the API's are.

    aiohttp's HTTP parser refuses some requests before any route sees them (headers too large or too
    many, Content-Length beside Transfer-Encoding, a bad chunk size); aiohttp answers those in plain
    text and logs each at ERROR with a traceback, so any client could flood the log. Here they get the
    API's JSON error and one info line, and a client that leaves mid-answer is no error at all.
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        # When aiohttp's parser fails part-way through a body (a bad chunk size in a later packet, a
        # deflate body that ends unfinished), it queues its refusal for after the request being read
        # and leaves that request's body open: its handler would wait for the rest until the body
        # timeout. That body fails at once instead, with the parser's reason.
        receiving: web.BaseRequest | None = getattr(self, "_current_request", None)
        pending = getattr(self, "_messages", None)
        queued = len(pending) if pending is not None else 0
        super().data_received(data)
        if receiving is None or pending is None or receiving.content.is_eof() or receiving.content.exception():
            return
        for message, _ in list(pending)[queued:]:
            refusal = getattr(message, "exc", None)
            if isinstance(refusal, HttpProcessingError):
                failed = web.RequestPayloadError(refusal.message)
                failed.__cause__ = refusal
                receiving.content.set_exception(failed)
                return

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            # The client left while its answer was being written (the request log has its line): aiohttp
            # ends the connection quietly when this raises ConnectionError.
            raise ConnectionError("the client left before its answer was complete") from exc
        if isinstance(exc, ContentEncodingError) and "install" in exc.message:
            # aiohttp decodes gzip and deflate; for any other coding it names the package it would need.
            reason = "unsupported Content-Encoding"
            error = bad_request("invalid_content_encoding", f"{reason}: gzip and deflate are the codings read")
        elif isinstance(exc, ContentEncodingError):
            reason = "the body does not decode as its Content-Encoding header says"
            error = bad_request("invalid_content_encoding", reason)
        elif isinstance(exc, HttpProcessingError):
            reason = parser_reason(exc.message or message or "")
            error = ApiError(status, "invalid_http", f"not a valid HTTP request: {reason}")
        else:
            # Only a fault of the sidecar's own gets here: the middlewares answer everything else.
            log.error("internal error outside the request handlers", exc_info=exc)
            error = ApiError(status, "internal_error", "the sidecar failed to handle this request")
            reason = "internal error"
        request_log.info(
            "request refused by the HTTP parser" if error.status < 500 else "request failed",
            extra={"status": error.status, "error_code": error.code, "reason": reason},
        )
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had begun: the connection is closed instead")
        response = error.response()
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError | HttpProcessingError | ConnectionError):
            # A broken body its handler has refused already, met again while aiohttp drains it before
            # closing the connection (or a client gone meanwhile): nothing new to report.
            log.debug("connection closed after an unreadable request body: %s", parser_reason(str(exc)))
            return
        super().log_exception(*args, **kw)


def parser_reason(text: str) -> str:
    """aiohttp's reason for a refusal, without the status it begins with and the input it quotes.

    The quoted input may be long, and is whatever the client sent (a header's value, say): it goes
    neither into the answer nor into the log.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith("message:"):  # str() of an HttpProcessingError: "400, message:"
        lines = lines[1:]
    reason = lines[0] if lines else "malformed request"
    return reason.split(": b'", 1)[0].split(': b"', 1)[0].rstrip(":.")[:200]


class ApiServer(web.Server):
    """aiohttp's server, with `ApiRequestHandler` for each connection."""

    def __call__(self) -> web.RequestHandler:
        return ApiRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiAppRunner(web.AppRunner):
    """An AppRunner whose server answers with `ApiRequestHandler`."""

    async def _make_server(self) -> web.Server:
        standard = await super()._make_server()  # starts the app up, as every runner does
        return ApiServer(
            standard.request_handler,
            request_factory=standard.request_factory,
            handler_cancellation=standard.handler_cancellation,
            loop=standard._loop,
            **standard._kwargs,
        )
