"""The shell in the rendered pods, run against a stand-in `ollama` command.

The probes must pass only when the model is in `ollama ps` (loaded), the pull must
fail only when the model is neither pullable nor already stored, and the warmer must
load the model at once and again whenever it drops out of memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from voicelane.operator.render import render_children

FAKE_OLLAMA = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
echo "$OLLAMA_HOST" >> "$FAKE_LOG.hosts"
case "$1" in
  ps)
    echo "NAME                 ID              SIZE      PROCESSOR    UNTIL"
    if [ -n "${FAKE_LOADED:-}" ]; then
      echo "$FAKE_LOADED    a80c4f17acd5    2.8 GB    100% CPU     4 minutes from now"
    fi ;;
  # As the real CLI, with FAKE_LIST_NEEDS_SERVE: `list` fails until a server has started.
  list) if [ -n "${FAKE_LIST_NEEDS_SERVE:-}" ] && [ ! -e "$FAKE_LOG.serving" ]; then exit 1; fi ;;
  run)
    # As the real CLI: a spinner on stderr even without a terminal, then any error on a line of its own.
    printf '\033[?25l\033[1G\342\240\213 \033[K' >&2
    if [ "${FAKE_RUN_STATUS:-0}" != 0 ]; then printf '\nError: model runner has unexpectedly stopped\n' >&2; fi
    exit "${FAKE_RUN_STATUS:-0}" ;;
  serve) touch "$FAKE_LOG.serving"; exec sleep 30 ;;
  pull) exit "${FAKE_PULL_STATUS:-0}" ;;
  show) exit "${FAKE_SHOW_STATUS:-0}" ;;
esac
"""


@pytest.fixture
def fake_ollama(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "ollama"
    program.write_text(FAKE_OLLAMA, encoding="utf-8")
    program.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "calls.log")}


def pod(sample_lane: dict, tier: str = "fast") -> dict[str, Any]:
    [deployment] = [
        c for c in render_children(sample_lane) if c["kind"] == "Deployment" and c["metadata"]["name"].endswith(tier)
    ]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container_env(spec: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var["value"] for var in spec["env"] if "value" in var}


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(
    ("loaded", "ready"),
    [("llama3.2:1b", True), ("", False), ("llama3.2:1b-instruct", False), ("llama3.1:8b", False)],
)
def test_readiness_passes_only_with_the_model_loaded(
    sample_lane: dict, fake_ollama: dict[str, str], loaded: str, ready: bool
) -> None:
    [server] = [c for c in pod(sample_lane)["containers"] if c["name"] == "ollama"]
    env = {**container_env(server), **fake_ollama, "FAKE_LOADED": loaded}
    for probe in ("startupProbe", "readinessProbe"):
        assert (run(server[probe]["exec"]["command"], env).returncode == 0) is ready


def test_probes_ask_on_loopback_at_the_port_the_server_listens_on(
    sample_lane: dict, fake_ollama: dict[str, str]
) -> None:
    [server] = [c for c in pod(sample_lane)["containers"] if c["name"] == "ollama"]
    env = {**container_env(server), **fake_ollama, "FAKE_LOADED": "llama3.2:1b"}
    assert env["OLLAMA_HOST"] == "0.0.0.0:11434"  # the server's listen address
    for listen, asked in (("0.0.0.0:11434", "127.0.0.1:11434"), ("0.0.0.0:18080", "127.0.0.1:18080")):
        result = run(server["readinessProbe"]["exec"]["command"], {**env, "OLLAMA_HOST": listen})
        assert result.returncode == 0, result.stderr
        hosts = Path(fake_ollama["FAKE_LOG"] + ".hosts").read_text(encoding="utf-8").splitlines()
        assert hosts[-1] == asked


@pytest.mark.parametrize(
    ("pull_status", "show_status", "succeeds"),
    [(0, 1, True), (1, 0, True), (1, 1, False)],
    ids=["pulled", "pull-failed-but-stored", "pull-failed-and-missing"],
)
def test_pull_init_container(
    sample_lane: dict, fake_ollama: dict[str, str], pull_status: int, show_status: int, succeeds: bool
) -> None:
    [pull] = pod(sample_lane)["initContainers"]
    env = {
        **container_env(pull),
        **fake_ollama,
        "FAKE_PULL_STATUS": str(pull_status),
        "FAKE_SHOW_STATUS": str(show_status),
        "FAKE_LIST_NEEDS_SERVE": "1",
    }
    result = run(pull["command"], env)
    assert (result.returncode == 0) is succeeds, result.stderr
    # The script pulls only once its private server answers (`list` fails until `serve` ran).
    calls = Path(fake_ollama["FAKE_LOG"]).read_text(encoding="utf-8").splitlines()
    assert "serve" in calls
    assert calls.index("serve") < calls.index("pull llama3.2:1b")


def wait_for_calls(log: Path, wanted: str, count: int, deadline_s: float = 10.0) -> list[str]:
    give_up = time.monotonic() + deadline_s
    while time.monotonic() < give_up:
        calls = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        if calls.count(wanted) >= count:
            return calls
        time.sleep(0.02)
    raise AssertionError(f"{wanted!r} not called {count} times: {calls}")


def start_warmer(sample_lane: dict, fake_ollama: dict[str, str], **extra: str) -> subprocess.Popen[str]:
    [warmer] = [c for c in pod(sample_lane)["containers"] if c["name"] == "warmer"]
    env = {**container_env(warmer), **fake_ollama, "VOICELANE_CHECK_SECONDS": "0.05", **extra}
    return subprocess.Popen(warmer["command"], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=10)


def test_warmer_reloads_a_model_that_dropped_out(sample_lane: dict, fake_ollama: dict[str, str]) -> None:
    warmer = start_warmer(sample_lane, fake_ollama)  # nothing loaded: every check reloads
    try:
        calls = wait_for_calls(Path(fake_ollama["FAKE_LOG"]), "run --keepalive=15m llama3.2:1b ", 3)
    finally:
        assert stop(warmer) == 0  # exits promptly and cleanly on SIGTERM
    assert calls[0] == "list"  # waits for the server first
    assert "ps" in calls


def test_warmer_leaves_a_resident_model_alone_until_the_rewarm_interval(
    sample_lane: dict, fake_ollama: dict[str, str]
) -> None:
    warmer = start_warmer(sample_lane, fake_ollama, FAKE_LOADED="llama3.2:1b")
    log = Path(fake_ollama["FAKE_LOG"])
    try:
        calls = wait_for_calls(log, "ps", 5)
    finally:
        stop(warmer)
    assert calls.count("run --keepalive=15m llama3.2:1b ") == 1  # the initial load only


def stop_and_read(process: subprocess.Popen[str]) -> tuple[str, str]:
    stop(process)
    stdout, stderr = process.communicate(timeout=10)
    return stdout, stderr


def test_warmer_logs_one_plain_line_per_load(sample_lane: dict, fake_ollama: dict[str, str]) -> None:
    warmer = start_warmer(sample_lane, fake_ollama, FAKE_LOADED="llama3.2:1b")
    try:
        wait_for_calls(Path(fake_ollama["FAKE_LOG"]), "ps", 2)
    finally:
        stdout, stderr = stop_and_read(warmer)
    assert (stdout, stderr) == ("loaded llama3.2:1b\n", "")  # no spinner in the container's log


def test_warmer_logs_why_a_load_failed(sample_lane: dict, fake_ollama: dict[str, str]) -> None:
    warmer = start_warmer(sample_lane, fake_ollama, FAKE_RUN_STATUS="1")
    try:
        wait_for_calls(Path(fake_ollama["FAKE_LOG"]), "run --keepalive=15m llama3.2:1b ", 2)
    finally:
        stdout, stderr = stop_and_read(warmer)
    assert stdout == ""
    assert stderr.splitlines()[0] == "loading llama3.2:1b failed: model runner has unexpectedly stopped"
