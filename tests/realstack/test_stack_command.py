"""`voicelane stack` as a user runs it: both tiers loaded before the ready line, the sample lane's
settings, a sidecar in front on request, loopback only, and SIGTERM stops everything it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from voicelane.processes import free_port, voicelane_argv
from voicelane.stack.ollama import MODEL_NAMES, sample_lane_environment

pytestmark = [pytest.mark.realstack, pytest.mark.timeout(600)]


@dataclass
class RunningStack:
    process: subprocess.Popen[str]
    ready_line: str
    ports: dict[str, int]
    stderr_path: Path

    def tree(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    folder = tmp_path_factory.mktemp("stack-command")
    ports = {"fast": free_port(), "deep": free_port(), "sidecar": free_port()}
    stderr_path = folder / "stderr.log"
    binary = os.environ.get("VOICELANE_TEST_OLLAMA_BINARY")
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            voicelane_argv(
                "stack",
                "--fast-listen",
                f"127.0.0.1:{ports['fast']}",
                "--deep-listen",
                f"127.0.0.1:{ports['deep']}",
                "--sidecar",
                f"127.0.0.1:{ports['sidecar']}",
                "--dir",
                str(folder / "state"),
                *(["--ollama", binary] if binary else []),
            ),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    ready = process.stdout.readline().strip()  # the only line on stdout, printed once everything is up
    running = RunningStack(process, ready, ports, stderr_path)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_ready_is_one_line_naming_both_tiers(stack: RunningStack) -> None:
    assert stack.ready_line == (
        f"ready fast=http://127.0.0.1:{stack.ports['fast']} deep=http://127.0.0.1:{stack.ports['deep']}"
    ), stack.stderr_path.read_text()


def test_both_models_are_loaded_when_ready_is_printed(stack: RunningStack) -> None:
    for tier in ("fast", "deep"):
        listed = requests.get(f"http://127.0.0.1:{stack.ports[tier]}/api/ps", timeout=10).json()["models"]
        assert [entry["name"] for entry in listed] == [MODEL_NAMES[tier]]


def test_each_server_runs_with_the_sample_lanes_settings(stack: RunningStack) -> None:
    servers = {}
    for child in stack.tree():
        command = child.cmdline()
        if command[1:] == ["serve"]:
            environ = child.environ()
            servers[environ["OLLAMA_HOST"]] = environ
    assert set(servers) == {f"127.0.0.1:{stack.ports['fast']}", f"127.0.0.1:{stack.ports['deep']}"}
    for tier in ("fast", "deep"):
        environ = servers[f"127.0.0.1:{stack.ports[tier]}"]
        expected = sample_lane_environment(tier)
        assert {name: environ.get(name) for name in expected} == expected
        assert environ["OLLAMA_NO_CLOUD"] == "1"
    # The sample lane gives the tiers different slots and queues; the stack must not flatten them.
    assert (
        sample_lane_environment("fast")["OLLAMA_NUM_PARALLEL"] != sample_lane_environment("deep")["OLLAMA_NUM_PARALLEL"]
    )


def test_the_sidecar_in_front_answers_through_the_fast_tier(stack: RunningStack) -> None:
    response = requests.post(
        f"http://127.0.0.1:{stack.ports['sidecar']}/v1/text",
        json={"text": "Hi there!", "source": "chat"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["text"].strip()


def test_every_socket_of_the_stack_is_on_loopback(stack: RunningStack) -> None:
    checked = 0
    for process in [psutil.Process(stack.process.pid), *stack.tree()]:
        for connection in process.net_connections(kind="inet"):
            checked += 1
            assert connection.laddr.ip == "127.0.0.1", (process.cmdline(), connection)
            if connection.raddr:
                assert connection.raddr.ip == "127.0.0.1", (process.cmdline(), connection)
    assert checked >= 3  # two servers and the sidecar listen at least


def test_sigterm_stops_everything_it_started(stack: RunningStack) -> None:
    started = stack.tree()
    assert any(re.search(r"ollama$", child.cmdline()[0]) for child in started)
    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait(timeout=60) == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(child) for child in started):
        time.sleep(0.2)
    assert not [child.pid for child in started if _alive(child)]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
