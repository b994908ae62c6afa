"""The sidecar stays on loopback and keeps what people say out of its metrics, statistics and logs.

Personal data goes in through every text-carrying API (text, speech, email, transparent chat,
and a refused request); afterwards no trace of it may be in /metrics, /v1/stats or the process
log, while the log does name each request by its id. Only `--log-level debug` may log text.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.api.live import LiveLane, live_lane
from voicelane.cli import build_parser
from voicelane.sidecar.cli import flag_overrides
from voicelane.sidecar.config import load_config

pytestmark = pytest.mark.timeout(120)

PERSONAL = "Anna Svensson, 070-123 45 67, anna@example.com"
# Each piece on its own, so that a partial leak (a name in a label, a number in a log) is caught too.
TRACES = ("anna", "svensson", "070-123", "123 45 67", "example.com")
DEFAULT_ADDRESS = ("127.0.0.1", 8787)


def traces_in(text: str) -> list[str]:
    lowered = text.lower()
    return [trace for trace in TRACES if trace in lowered]


def log_records(lane: LiveLane) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lane.sidecar.log().splitlines() if line.startswith("{")]


def wait_for_request_lines(lane: LiveLane, request_ids: set[str], timeout_s: float = 5.0) -> set[str]:
    """The ids among `request_ids` with a finished-request line (streams log just after their last byte)."""
    deadline = time.monotonic() + timeout_s
    while True:
        logged = {r.get("request_id") for r in log_records(lane) if r.get("msg") == "request finished"}
        if request_ids <= logged or time.monotonic() > deadline:
            return request_ids & logged
        time.sleep(0.05)


def send_personal_data(url: str) -> set[str]:
    """Say PERSONAL through every API that takes text; returns the request ids used."""
    for source, request_id in (("chat", "privacy-text"), ("notification", "privacy-text-stream")):
        body: dict[str, Any] = {
            "text": PERSONAL,
            "source": source,
            "request_id": request_id,
            "stream": source == "notification",
        }
        assert requests.post(url + "/v1/text", json=body, timeout=30).status_code == 200
    for source, request_id in (("chat", "privacy-speak"), ("email", "privacy-email")):
        spoken = requests.post(
            url + "/v1/speak", json={"text": PERSONAL, "source": source, "request_id": request_id}, timeout=60
        )
        assert spoken.status_code == 200
        assert spoken.content
    chat: dict[str, Any] = {"model": "voicelane", "messages": [{"role": "user", "content": PERSONAL}], "stream": False}
    answered = requests.post(url + "/api/chat", json=chat, headers={"X-Request-Id": "privacy-chat"}, timeout=30)
    assert answered.status_code == 200
    refused = requests.post(
        url + "/api/chat",
        json=chat,
        headers={"X-Request-Id": "privacy-refused", "X-Voicelane-Source": "sms"},
        timeout=30,
    )
    assert refused.status_code == 400
    return {"privacy-text", "privacy-text-stream", "privacy-speak", "privacy-email", "privacy-chat", "privacy-refused"}


@pytest.fixture(scope="module")
def told_lane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveLane, set[str]]]:
    """A sidecar at the default log level that has been told PERSONAL through every API."""
    with live_lane(tmp_path_factory.mktemp("privacy-logs"), name="sidecar-info") as lane:
        yield lane, send_personal_data(lane.url)


# ----- binding ------------------------------------------------------------------------------------


def test_default_address_is_loopback_when_nothing_sets_one() -> None:
    args = build_parser().parse_args(["sidecar"])
    config = load_config(None, flags=flag_overrides(args), environ={})
    host, _, port = config.server.listen.rpartition(":")
    assert (host, int(port)) == DEFAULT_ADDRESS
    assert ipaddress.ip_address(host).is_loopback
    # Metrics share the loopback API address unless an operator opens a scrape address on purpose.
    assert config.server.metrics_listen is None


def _address_in_use(address: tuple[str, int]) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(address)
        except OSError:
            return True
    return False


def test_sidecar_started_without_an_address_listens_on_loopback_only(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("VOICELANE_SERVER__LISTEN", "VOICELANE_SERVER__METRICS_LISTEN"):
        monkeypatch.delenv(name, raising=False)
    if _address_in_use(DEFAULT_ADDRESS):
        pytest.skip("the default address 127.0.0.1:8787 is taken by another process")
    with live_lane(log_dir, listen=None, name="sidecar-default") as lane:
        listening = [
            c.laddr
            for c in psutil.Process(lane.sidecar.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening, "the sidecar listens nowhere"
        assert all(ipaddress.ip_address(address.ip).is_loopback for address in listening), listening
        assert {(address.ip, address.port) for address in listening} == {DEFAULT_ADDRESS}
        assert requests.get(lane.url + "/healthz", timeout=5).status_code == 200


# ----- what it keeps ------------------------------------------------------------------------------


def test_metrics_and_stats_carry_no_personal_data(told_lane: tuple[LiveLane, set[str]]) -> None:
    lane, _ = told_lane
    metrics = requests.get(lane.url + "/metrics", timeout=5)
    stats = requests.get(lane.url + "/v1/stats", timeout=5)
    followups = requests.get(lane.url + "/v1/followups/privacy-email", timeout=5)
    # The requests did happen and were counted, by class and outcome only.
    assert 'voicelane_requests_total{endpoint="speak",outcome="ok",request_class="email"}' in metrics.text
    assert stats.json()["ttfa"]["classes"]["chat"]["count"] >= 1
    assert followups.status_code == 200
    for name, body in (("/metrics", metrics.text), ("/v1/stats", stats.text), ("follow-ups", followups.text)):
        assert traces_in(body) == [], f"{name} shows personal data"


def test_log_names_requests_by_id_and_never_says_their_text(told_lane: tuple[LiveLane, set[str]]) -> None:
    lane, request_ids = told_lane
    assert wait_for_request_lines(lane, request_ids) == request_ids
    refused = [r for r in log_records(lane) if r.get("request_id") == "privacy-refused"]
    assert refused[-1]["status"] == 400
    assert refused[-1]["error_code"] == "unknown_source"
    assert traces_in(lane.sidecar.log()) == []


def test_debug_logging_is_what_lets_text_into_the_log(log_dir: Path) -> None:
    with live_lane(log_dir, sidecar_args=("--log-level", "debug"), name="sidecar-debug") as lane:
        body = {"text": PERSONAL, "source": "chat", "request_id": "privacy-debug"}
        assert requests.post(lane.url + "/v1/text", json=body, timeout=30).status_code == 200
        assert wait_for_request_lines(lane, {"privacy-debug"}) == {"privacy-debug"}
        said = [r for r in log_records(lane) if r.get("request_id") == "privacy-debug" and "text" in r]
        assert said
        assert said[0]["text"] == PERSONAL
