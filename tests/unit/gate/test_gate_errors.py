"""The gate's refusal table: every refusal or failure the gate can make has its row, and clients see it unchanged."""

from __future__ import annotations

import ast
import contextlib
import itertools
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

import voicelane.gate
from voicelane.core.refusals import Failed, Failure, LaneError, Refusal, Refused
from voicelane.gate.errors import HTTP_STATUS, http_error, ollama_error
from voicelane.gate.server import Gate, GateSettings

GATE_PACKAGE = Path(voicelane.gate.__file__).parent


def reasons_named_in(source: str) -> set[Refusal | Failure]:
    """Every `Refusal.X` and `Failure.X` a module's code names."""
    enums: dict[str, type[Refusal] | type[Failure]] = {"Refusal": Refusal, "Failure": Failure}
    return {
        enums[node.value.id][node.attr]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in enums
    }


def test_every_refusal_and_failure_the_gate_makes_has_one_row_in_its_table_and_no_row_is_idle() -> None:
    made = set().union(
        *(reasons_named_in(module.read_text()) for module in GATE_PACKAGE.glob("*.py") if module.name != "errors.py")
    )
    assert made, "the gate names none of the core's reasons: the scan is broken"
    assert made == set(HTTP_STATUS)


@pytest.mark.parametrize(
    ("refusal", "status", "retry_after"),
    [
        (Refused(Refusal.QUEUE_FULL, "64 calls already wait", retry_after_s=1), 429, "1"),
        (Refused(Refusal.GUARDIAN_EMERGENCY, "under sustained pressure", retry_after_s=5), 503, "5"),
        (Refused(Refusal.DEADLINE_PASSED, "the deadline passed in the queue", retry_after_s=1), 503, "1"),
        (Failed(Failure.UPSTREAM_UNAVAILABLE, "the model server failed"), 502, "1"),
    ],
)
def test_each_row_answers_in_ollamas_shape_with_the_code_beside_it_and_in_a_header(
    refusal: LaneError, status: int, retry_after: str
) -> None:
    response = ollama_error(http_error(refusal))
    assert response.status == status
    assert response.headers["X-Voicelane-Error"] == refusal.code
    assert response.headers["Retry-After"] == retry_after
    assert response.content_type == "application/json"
    assert json.loads(response.text or "") == {"error": refusal.message, "code": refusal.code}


def test_the_rejects_metric_keeps_its_reasons() -> None:
    gate = Gate(GateSettings("http://127.0.0.1:1"))
    body, _ = gate.metrics.exposition()
    (rejects,) = (
        family for family in text_string_to_metric_families(body.decode()) if family.name == "voicelane_gate_rejects"
    )
    reasons = {sample.labels["reason"] for sample in rejects.samples if sample.name == "voicelane_gate_rejects_total"}
    assert reasons == {"queue_full", "guardian_emergency", "deadline_passed"}


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port that refuses connections: bound, so no one else takes it, and never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.asynccontextmanager
async def served(gate: Gate) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(gate.app(), host="127.0.0.1")) as client:
        yield client


async def test_a_call_whose_deadline_passed_in_the_queue_is_refused_and_counted(closed_port: int) -> None:
    # Each reading of the clock is ten seconds after the last: any wait outlasts a one-second deadline.
    gate = Gate(GateSettings(f"http://127.0.0.1:{closed_port}"), clock=itertools.count(0, 10).__next__)
    async with served(gate) as client:
        response = await client.post("/api/chat", json={"model": "m"}, headers={"X-Voicelane-Deadline-Ms": "1000"})
        assert response.status == 503
        assert response.headers["X-Voicelane-Error"] == "deadline_passed"
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["code"] == "deadline_passed"
    body, _ = gate.metrics.exposition()
    assert b'voicelane_gate_rejects_total{reason="deadline_passed"} 1.0' in body


async def test_a_model_server_that_cannot_be_reached_is_a_502_and_not_a_reject(closed_port: int) -> None:
    gate = Gate(GateSettings(f"http://127.0.0.1:{closed_port}"))
    async with served(gate) as client:
        for path in ("/api/chat", "/api/tags"):  # a queued model call and a passed-through one
            response = await client.request("POST" if path == "/api/chat" else "GET", path, json={"model": "m"})
            assert response.status == 502, path
            assert response.headers["X-Voicelane-Error"] == "upstream_unavailable"
            assert response.headers["Retry-After"] == "1"
            assert (await response.json())["error"].startswith("the model server failed")
    body, _ = gate.metrics.exposition()
    assert b"upstream_unavailable" not in body
