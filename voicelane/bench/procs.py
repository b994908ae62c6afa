"""The processes a suite measures: simulator, sidecar and gate, started and metered.

Each `start_*` enters a `running()` context on the given ExitStack, so whatever a suite
started is stopped when it ends, however it ends. `ProcessMeter` reads a process's CPU
seconds and resident memory from /proc (through psutil) and keeps the peak RSS seen.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

from voicelane.demo import Tiers, parallel_of
from voicelane.processes import ManagedProcess, ProcessFailed, free_port, running, voicelane_argv


@dataclass
class ProcessMeter:
    """CPU seconds (user + system) and RSS of one process, with the peak RSS of every reading."""

    pid: int
    peak_rss_bytes: int = 0
    _process: psutil.Process = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._process = psutil.Process(self.pid)

    def cpu_s(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def rss_bytes(self) -> int:
        rss = int(self._process.memory_info().rss)
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        return rss

    def reset_peak(self) -> None:
        self.peak_rss_bytes = 0


@dataclass
class Service:
    """A started process that answers HTTP on `url`."""

    name: str
    url: str
    process: ManagedProcess

    @property
    def meter(self) -> ProcessMeter:
        return ProcessMeter(self.process.pid)

    def get(self, path: str, timeout: float = 10.0) -> Any:
        response = requests.get(self.url + path, timeout=timeout)
        response.raise_for_status()
        return response.json()


def start_sim(stack: contextlib.ExitStack, flags: Sequence[str], logs: Path, name: str) -> Service:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = voicelane_argv("sim", "--listen", f"127.0.0.1:{port}", "--log-level", "warning", *flags)
    process = stack.enter_context(running(argv, ready_url=url + "/api/version", log_dir=logs, name=name))
    return Service(name, url, process)


def start_sim_tiers(
    stack: contextlib.ExitStack, fast_flags: Sequence[str], deep_flags: Sequence[str], logs: Path, prefix: str
) -> tuple[Tiers, Service, Service]:
    """A fast and a deep simulated tier, each its own simulator process, as the demo runs them."""
    fast = start_sim(stack, fast_flags, logs, f"{prefix}-sim-fast")
    deep = start_sim(stack, deep_flags, logs, f"{prefix}-sim-deep")
    tiers = Tiers(
        fast.url,
        deep.url,
        "ollama",
        "sim-fast",
        "sim-deep",
        fast_slots=parallel_of(fast_flags),
        deep_slots=parallel_of(deep_flags),
    )
    return tiers, fast, deep


def start_gate(stack: contextlib.ExitStack, upstream: str, slots: int, logs: Path, name: str) -> Service:
    """`voicelane gate` in front of `upstream` with the server's parallel slots."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = voicelane_argv("gate", "--listen", f"127.0.0.1:{port}", "--upstream", upstream, "--slots", str(slots))
    process = stack.enter_context(running(argv, ready_url=url + "/healthz", log_dir=logs, name=name))
    return Service(name, url, process)


def start_sidecar(stack: contextlib.ExitStack, config: dict[str, Any], logs: Path, name: str) -> Service:
    """A sidecar with `config` (a full config document), ready: tiers healthy and phrase bank prepared."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config_file = logs / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = voicelane_argv("sidecar", "--config", str(config_file), "--listen", f"127.0.0.1:{port}")
    process = stack.enter_context(running(argv, ready_url=url + "/healthz", log_dir=logs, name=name))
    service = Service(name, url, process)
    wait_sidecar_ready(service)
    return service


def wait_sidecar_ready(sidecar: Service, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = sidecar.get("/v1/stats")
        bank = stats.get("phrase_bank", {})
        tiers_known = all(t.get("healthy") is not None for t in stats.get("upstreams", {}).values())
        bank_ready = bank.get("prepared", 0) >= bank.get("total", 0)
        if tiers_known and bank_ready and requests.get(sidecar.url + "/readyz", timeout=5).ok:
            return
        time.sleep(0.1)
    raise ProcessFailed(f"{sidecar.name} did not become ready within {timeout_s} s:\n{sidecar.process.log()[-4000:]}")


def wait_sidecar_idle(sidecar: Service, timeout_s: float = 300.0) -> bool:
    """Wait until no model work runs or waits and no email follow-up is left; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = sidecar.get("/v1/stats")
        queue = stats.get("queue", {})
        followups = stats.get("followups", {})
        busy = (
            queue.get("running_total", 0)
            + queue.get("waiting_total", 0)
            + stats.get("single_flight", {}).get("running", 0)
            + followups.get("queued", 0)
            + followups.get("pending", 0)
            + followups.get("running", 0)
        )
        if not busy:
            return True
        time.sleep(0.2)
    return False
