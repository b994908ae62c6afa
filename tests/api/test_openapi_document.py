"""The OpenAPI description in the repository is valid, served as is, and matches the routes and limits in code."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

import voicelane.sidecar
from tests.support import hooked_sidecar
from voicelane.sidecar.config import LimitsConfig, RequestClass, SidecarConfig
from voicelane.sidecar.edge import REQUEST_ID
from voicelane.sidecar.server import Extensions, build_app

SPEC_PATH = Path(voicelane.sidecar.__file__).with_name("openapi.json")
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Registered only by the tests' own hooks, and deliberately not part of the API.
TEST_HOOKS = {("POST", hooked_sidecar.PRESSURE_PATH)}


def documented_operations() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in SPEC["paths"].items() for method in item if method in HTTP_METHODS}


def routed_operations(config: SidecarConfig, *, extensions: Extensions | None = None) -> set[tuple[str, str]]:
    app, _ = build_app(config, extensions=extensions)
    # aiohttp adds a HEAD route beside every GET by itself; OpenAPI leaves HEAD implicit too.
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def schema(name: str) -> dict[str, Any]:
    return SPEC["components"]["schemas"][name]


def test_document_is_valid_openapi_3_1() -> None:
    assert SPEC["openapi"].startswith("3.1")
    validate(SPEC)


def test_every_route_is_documented_and_every_documented_operation_is_routed() -> None:
    routed = routed_operations(SidecarConfig())
    assert routed == documented_operations()
    # The test hook stays out of the description, and is the only route that does.
    assert routed_operations(SidecarConfig(), extensions=hooked_sidecar.hook_extensions()) - routed == TEST_HOOKS


def test_every_operation_documents_its_refusals() -> None:
    for method, path in documented_operations():
        operation = SPEC["paths"][path][method.lower()]
        statuses = set(operation["responses"])
        assert "405" in statuses, f"{method} {path}"
        if "requestBody" in operation:
            assert {"400", "408", "413", "429", "502", "503", "504"} <= statuses, f"{method} {path}"


def test_request_limits_match_the_code() -> None:
    text = schema("TextRequest")["properties"]
    assert text["text"]["maxLength"] == LimitsConfig().max_text_chars
    assert schema("OllamaGenerateRequest")["properties"]["prompt"]["maxLength"] == LimitsConfig().max_text_chars
    assert schema("RequestClass")["enum"] == [c.value for c in RequestClass]
    assert text["format"]["enum"] == ["wav", "pcm"]
    assert text["request_id"]["maxLength"] == 128
    assert text["request_id"]["pattern"] == f"^{REQUEST_ID.pattern.removesuffix('{1,128}')}+$"


def test_non_blank_pattern_is_the_servers_idea_of_whitespace() -> None:
    # The server trims with str.strip(); the document must call the same texts blank.
    non_blank = re.compile(schema("TextRequest")["properties"]["text"]["pattern"])
    disagree = [hex(c) for c in range(sys.maxunicode + 1) if (non_blank.search(chr(c)) is None) != chr(c).isspace()]
    assert disagree == []


async def test_served_document_is_the_repository_file() -> None:
    app, _ = build_app(SidecarConfig(phrase_bank={"enabled": False}))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/openapi.json")
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.read() == SPEC_PATH.read_bytes()
