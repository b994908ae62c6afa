"""Every bad input gets its status code and a JSON error, never a 500."""

from __future__ import annotations

import json
import socket

import pytest
import requests

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def sidecar_url(tmp_path_factory: pytest.TempPathFactory):
    from voicelane.processes import free_port, running, voicelane_argv

    logs = tmp_path_factory.mktemp("logs")
    sim_port, port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    with (
        running(
            voicelane_argv("sim", "--listen", f"127.0.0.1:{sim_port}", "--ttft-ms", "5"),
            ready_url=sim_url + "/api/version",
            log_dir=logs,
            name="sim",
        ),
        running(
            voicelane_argv("sidecar", "--listen", f"127.0.0.1:{port}", "--fast-url", sim_url, "--deep-url", sim_url),
            ready_url=f"http://127.0.0.1:{port}/healthz",
            log_dir=logs,
            name="sidecar",
        ),
    ):
        yield f"http://127.0.0.1:{port}"


def error_of(response: requests.Response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (json.dumps({"source": "chat"}).encode(), 400, "missing_text"),
        (json.dumps({"text": "   ", "source": "chat"}).encode(), 400, "empty_text"),
        (json.dumps({"text": 42, "source": "chat"}).encode(), 400, "invalid_text"),
        (json.dumps({"text": "Hej", "source": "sms"}).encode(), 400, "unknown_source"),
        (json.dumps({"text": "Hej"}).encode(), 400, "missing_source"),
        (b'{"text": "\xff\xfe", "source": "chat"}', 400, "invalid_utf8"),
        (json.dumps({"text": "x" * 4097, "source": "chat"}).encode(), 413, "text_too_long"),
        (json.dumps({"text": "Hej", "source": "chat", "stream": "yes"}).encode(), 400, "invalid_field"),
    ],
)
def test_bad_text_requests(sidecar_url: str, body: bytes, status: int, code: str) -> None:
    response = requests.post(
        sidecar_url + "/v1/text", data=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code
    assert error["message"]


def test_unknown_class_message_lists_the_valid_ones(sidecar_url: str) -> None:
    error = error_of(requests.post(sidecar_url + "/v1/text", json={"text": "Hej", "source": "sms"}, timeout=10))
    for valid in ("chat", "notification", "email_tldr", "email_segment"):
        assert valid in error["message"]


def test_oversized_body_is_refused_before_it_is_read(sidecar_url: str) -> None:
    # Declare 10 MB and send only the headers: the answer must come without the body.
    host, port = sidecar_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
        )
        head = sock.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 413")


def test_chunked_body_over_the_limit_is_refused(sidecar_url: str) -> None:
    def chunks():
        for _ in range(100):
            yield b" " * 1024

    response = requests.post(sidecar_url + "/v1/text", data=chunks(), timeout=10)
    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"


def test_unknown_path_and_method_are_json(sidecar_url: str) -> None:
    assert error_of(requests.get(sidecar_url + "/nope", timeout=5))["code"] == "not_found"
    wrong_method = requests.get(sidecar_url + "/v1/text", timeout=5)
    assert wrong_method.status_code == 405
    assert error_of(wrong_method)["code"] == "method_not_allowed"


def test_health_ready_stats_and_metrics(sidecar_url: str) -> None:
    assert requests.get(sidecar_url + "/healthz", timeout=5).json() == {"status": "ok"}
    stats = requests.get(sidecar_url + "/v1/stats", timeout=5).json()
    assert set(stats) >= {"queue", "guardian", "upstreams", "cache", "single_flight"}
    metrics = requests.get(sidecar_url + "/metrics", timeout=5)
    assert metrics.headers["Content-Type"].startswith("text/plain")
    for family in ("voicelane_requests_total", "voicelane_queue_depth", "voicelane_upstream_circuit_open"):
        assert f"# TYPE {family}" in metrics.text
