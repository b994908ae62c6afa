"""The edge filter: read, bound and validate a client's request before any work is done.

Everything a client can get wrong is answered here with 400/408/413 and a clear
message; later stages only ever see a well-formed `TextRequest`.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from voicelane.sidecar.config import LimitsConfig, RequestClass
from voicelane.sidecar.errors import ApiError, bad_request

VALID_CLASSES = ", ".join(c.value for c in RequestClass)
_READ_CHUNK = 16384
# Request ids are echoed in response headers and follow-up URLs: nothing that could break either.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


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
        raise ApiError(413, "body_too_large", f"request body of {declared} bytes exceeds {limits.max_body_bytes}")
    body = bytearray()

    async def _read() -> None:
        while True:
            chunk = await request.content.read(_READ_CHUNK)
            if not chunk:
                return
            body.extend(chunk)
            if len(body) > limits.max_body_bytes:
                raise ApiError(413, "body_too_large", f"request body exceeds {limits.max_body_bytes} bytes")

    try:
        await asyncio.wait_for(_read(), timeout=limits.body_read_timeout_s)
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"request body not received within {limits.body_read_timeout_s} s"
        ) from None
    return bytes(body)


def decode_json_object(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request("invalid_utf8", f"request body is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise bad_request("invalid_json", "request body is empty; expected a JSON object")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request("invalid_json", f"request body is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(value, dict):
        raise bad_request("invalid_json", f"request body must be a JSON object, got {type(value).__name__}")
    return value


def _optional_str(payload: dict[str, Any], key: str, *, max_len: int = 64) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise bad_request("invalid_field", f"'{key}' must be a non-empty string of at most {max_len} characters")
    return value.strip()


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
    if value is None:
        raise bad_request("missing_source", f"'source' is required; valid classes: {VALID_CLASSES}")
    try:
        return RequestClass(value)
    except (ValueError, TypeError):
        raise bad_request(
            "unknown_source",
            f"unknown source {value!r}; valid classes: {VALID_CLASSES}",
            valid=[c.value for c in RequestClass],
        ) from None


def parse_text_request(payload: dict[str, Any], limits: LimitsConfig, *, default_lang: str) -> TextRequest:
    text = check_text(payload.get("text"), limits)
    request_class = parse_class(payload.get("source"))
    lang = _optional_str(payload, "lang", max_len=16) or default_lang
    target_lang = _optional_str(payload, "target_lang", max_len=16) or lang
    request_id = payload.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id)):
        raise bad_request("invalid_field", "'request_id' must be 1 to 128 letters, digits or . _ : -")
    request_id = request_id or uuid.uuid4().hex
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("invalid_field", "'stream' must be true or false")
    voice = _optional_str(payload, "voice", max_len=64)
    audio_format = payload.get("format", "wav")
    if audio_format not in ("wav", "pcm"):
        raise bad_request("invalid_field", '\'format\' must be "wav" or "pcm"')
    return TextRequest(
        text=text,
        request_class=request_class,
        lang=lang,
        target_lang=target_lang,
        request_id=request_id,
        stream=stream,
        voice=voice,
        audio_format=audio_format,
    )
