"""A live simulator and sidecar on loopback, for tests that exercise the real processes over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from voicelane.processes import ManagedProcess, free_port, running, voicelane_argv
from voicelane.sidecar.config import deep_merge

# Fast, roomy tokens so generated requests finish at once and never queue at the simulator.
FAST_SIM_FLAGS = ("--ttft-ms", "1", "--tokens-per-s", "20000", "--parallel", "16")


@dataclass
class LiveLane:
    url: str
    sidecar: ManagedProcess
    sim: ManagedProcess


@contextlib.contextmanager
def live_lane(
    log_dir: Path,
    *,
    settings: Mapping[str, Any] | None = None,
    sidecar_args: Sequence[str] = (),
    listen: str | None = "auto",
    name: str = "sidecar",
    env: dict[str, str] | None = None,
) -> Iterator[LiveLane]:
    """Start `voicelane sim` and a sidecar in front of it (both tiers), and stop both afterwards.

    `settings` is written to the sidecar's config file over a test baseline (phrase bank off,
    quick health checks). `listen="auto"` picks a free loopback port; None leaves the address
    to the configuration's default.
    """
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    baseline: dict[str, Any] = {
        "upstreams": {
            "fast": {"url": sim_url, "model": "fast-model", "health_interval_s": 0.5},
            "deep": {"url": sim_url, "model": "deep-model", "health_interval_s": 0.5},
        },
        "phrase_bank": {"enabled": False},
    }
    config_file = log_dir / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(deep_merge(baseline, settings or {})))
    address = f"127.0.0.1:{free_port()}" if listen == "auto" else listen
    argv = voicelane_argv("sidecar", "--config", str(config_file), *sidecar_args)
    if address is not None:
        argv += ["--listen", address]
    url = f"http://{address or '127.0.0.1:8787'}"
    with (
        running(
            voicelane_argv("sim", "--listen", f"127.0.0.1:{sim_port}", *FAST_SIM_FLAGS),
            ready_url=sim_url + "/api/version",
            log_dir=log_dir,
            name=f"{name}-sim",
        ) as sim,
        running(argv, ready_url=url + "/readyz", log_dir=log_dir, name=name, env=env) as sidecar,
    ):
        yield LiveLane(url, sidecar, sim)
