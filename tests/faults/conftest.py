"""Fixtures for the fault suite: the sidecar fixtures, plus one module-wide lane for fault matrices.

`start_sim` and `start_sidecar` start fresh processes per test. The fault matrices run
dozens of cases against the same processes instead (`shared_lane`): every case arms
its own one-shot faults, uses a text of its own, and first waits until the previous
case's faults are gone and both circuits are closed again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.faults.wire import wait_until
from tests.integration.sidecar.conftest import Endpoint, start_sidecar, start_sim  # noqa: F401
from voicelane.processes import free_port, running, voicelane_argv
from voicelane.sidecar.config import deep_merge

# Timeouts the matrices run with: short enough that a stalled tier costs about a second,
# long enough that a healthy simulator on a busy 2-core machine never trips them.
FIRST_TOKEN_TIMEOUT_S = 1.0
TOTAL_TIMEOUT_S = 6.0
TTS_TIMEOUT_S = 1.5


def fault_config(**overrides: Any) -> dict[str, Any]:
    """Sidecar settings for fault tests: short upstream timeouts, generous admission."""
    upstream = {
        "first_token_timeout_s": FIRST_TOKEN_TIMEOUT_S,
        "total_timeout_s": TOTAL_TIMEOUT_S,
        # Circuits have tests of their own; here every case must reach the tier it faults.
        "circuit_failures_to_open": 1000,
    }
    base: dict[str, Any] = {
        "upstreams": {"fast": dict(upstream), "deep": dict(upstream)},
        "rate_limit": {"burst": 200, "sustained_per_s": 200},
        "scheduler": {"max_waiting": 50, "max_running_per_priority": 8},
        # The upstream source would block all model work during a fault storm on one tier;
        # that reaction has a test of its own, the matrices test failover.
        "guardian": {"sources": ["local"]},
    }
    return deep_merge(base, overrides)


@dataclass
class Lane:
    """A fast sim, a deep sim and a sidecar in front of them."""

    fast: Endpoint
    deep: Endpoint
    sidecar: Endpoint

    def reset(self) -> None:
        """Clear faults and wait until both circuits are closed, so cases do not leak into each other."""
        for sim in (self.fast, self.deep):
            sim.process.wait_http(sim.url + "/api/version", timeout_s=5)
            assert requests.delete(sim.url + "/sim/faults", timeout=5).status_code == 200

        def circuits_closed() -> bool:
            upstreams = self.sidecar.get("/v1/stats").json()["upstreams"]
            return all(upstreams[t]["circuit"] == "closed" for t in ("fast", "deep"))

        wait_until(circuits_closed, timeout_s=10, what="both circuits closed")


def start_shared_lane(
    tmp_path_factory: pytest.TempPathFactory, config: dict[str, Any], *, speech_on_deep: bool = False
) -> Iterator[Lane]:
    """Start the trio; with `speech_on_deep` the sidecar speaks through the deep sim's speech API."""
    directory = tmp_path_factory.mktemp("lane")
    with contextlib.ExitStack() as stack:
        sims = []
        for name in ("fast", "deep"):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            argv = voicelane_argv(
                "sim", "--listen", f"127.0.0.1:{port}", "--ttft-ms", "20", "--tokens-per-s", "200", "--parallel", "16"
            )
            process = stack.enter_context(running(argv, ready_url=url + "/api/version", log_dir=directory, name=name))
            sims.append(Endpoint(url, port, process))
        fast, deep = sims
        settings = deep_merge(
            {
                "upstreams": {
                    "fast": {"url": fast.url, "model": "fast-model", "health_interval_s": 0.2},
                    "deep": {"url": deep.url, "model": "deep-model", "health_interval_s": 0.2},
                },
                "phrase_bank": {"enabled": False},
            },
            config,
        )
        if speech_on_deep:
            settings["tts"] = {**settings.get("tts", {}), "backend": "openai", "url": deep.url}
        config_file = directory / "sidecar.yaml"
        config_file.write_text(yaml.safe_dump(settings))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = voicelane_argv("sidecar", "--config", str(config_file), "--listen", f"127.0.0.1:{port}")
        process = stack.enter_context(running(argv, ready_url=url + "/healthz", log_dir=directory, name="sidecar"))
        yield Lane(fast, deep, Endpoint(url, port, process))
        assert_no_crash(process.log_path)


# What a sidecar log shows when a request turned into a 500 or a handler crashed.
CRASH_MARKS = ("Traceback", "internal error on", "Error handling request")


def assert_no_crash(log_file: Path) -> None:
    text = log_file.read_text(encoding="utf-8", errors="replace") if log_file.exists() else ""
    crashes = [line for line in text.splitlines() if any(mark in line for mark in CRASH_MARKS)]
    assert not crashes, f"{log_file.name} shows a crash:\n" + "\n".join(crashes[:5])


@pytest.fixture(autouse=True)
def sidecar_never_crashed(log_dir: Path) -> Iterator[None]:
    """After every test: no sidecar it started logged a crash or an internal error."""
    yield
    for log_file in sorted(log_dir.glob("sidecar*.log")):
        assert_no_crash(log_file)


@pytest.fixture(scope="module", params=["ollama", "openai"], ids=["upstream_ollama", "upstream_openai"])
def shared_lane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lane]:
    """Two sims (fast, deep) speaking Ollama's NDJSON or OpenAI's SSE, and a sidecar speaking
    through in-process espeak, for a whole module."""
    protocol = {"protocol": request.param}
    yield from start_shared_lane(tmp_path_factory, fault_config(upstreams={"fast": protocol, "deep": protocol}))
