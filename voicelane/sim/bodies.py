"""Reading request bodies and writing JSON answers the way the simulated APIs do.

Bad input never becomes a traceback: it raises `BadRequest`, which the server turns
into the API's own error shape (`{"error": "..."}` for Ollama, `{"error": {...}}` for OpenAI).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from voicelane.sim.faults import FaultSpec
from voicelane.sim.state import Simulator
from voicelane.sim.wire import dumps

SIMULATOR = web.AppKey("simulator", Simulator)
MAX_BODY_BYTES = 16 * 1024 * 1024


class BadRequest(Exception):
    """A client error with its status and message, answered in the endpoint's error format."""

    def __init__(self, message: str, status: int = 400, *, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind


def simulator(request: web.Request) -> Simulator:
    return request.app[SIMULATOR]


def injected_fault(request: web.Request) -> FaultSpec | None:
    fault = request.get("fault")
    return fault if isinstance(fault, FaultSpec) else None


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON in request body: {exc.msg} at offset {exc.pos}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def json_answer(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps(payload), content_type="application/json", charset="utf-8")


def field(body: dict[str, Any], name: str, expected: type | tuple[type, ...], default: Any = None) -> Any:
    """`body[name]` if it has the expected JSON type, the default if absent; BadRequest otherwise."""
    value = body.get(name, default)
    if value is None or value is default:
        return value
    # JSON has no separate bool, but Python's bool is an int: keep them apart.
    if isinstance(value, bool) and bool not in (expected if isinstance(expected, tuple) else (expected,)):
        raise BadRequest(f"field {name!r} has the wrong type: bool")
    if not isinstance(value, expected):
        raise BadRequest(f"field {name!r} has the wrong type: {type(value).__name__}")
    return value


def string_list(value: object, name: str) -> list[str]:
    """A stop list as the APIs accept it: one string or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise BadRequest(f"field {name!r} must be a string or a list of strings")


def messages_field(body: dict[str, Any], *, required: bool) -> list[dict[str, Any]]:
    """The chat messages, each an object with a string role."""
    messages = body.get("messages")
    if messages is None:
        if required:
            raise BadRequest("field 'messages' is required")
        return []
    if not isinstance(messages, list):
        raise BadRequest("field 'messages' must be a list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{index}] must be an object with a string 'role'")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(f"messages[{index}].content must be a string")
    if required and not messages:
        raise BadRequest("field 'messages' must not be empty")
    return messages
