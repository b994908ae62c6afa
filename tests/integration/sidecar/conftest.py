"""Fixtures that start the upstream simulator and the sidecar as real processes on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support import hooked_sidecar
from voicelane.processes import ManagedProcess, free_port, running, voicelane_argv
from voicelane.sidecar.config import deep_merge


@dataclass
class Endpoint:
    url: str
    port: int
    process: ManagedProcess

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 10), **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)


@pytest.fixture
def start_sim(log_dir: Path) -> Iterator[Callable[..., Endpoint]]:
    """Start `voicelane sim` with the given flags; stopped at the end of the test."""
    with contextlib.ExitStack() as stack:

        def start(*flags: str, port: int | None = None, name: str = "sim") -> Endpoint:
            port = port or free_port()
            argv = voicelane_argv("sim", "--listen", f"127.0.0.1:{port}", *flags)
            url = f"http://127.0.0.1:{port}"
            process = stack.enter_context(running(argv, ready_url=url + "/api/version", log_dir=log_dir, name=name))
            return Endpoint(url, port, process)

        yield start


@pytest.fixture
def start_sidecar(log_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Endpoint]]:
    """Start the sidecar (with the test hooks) in front of the given tiers with a config file of overrides."""
    with contextlib.ExitStack() as stack:

        def start(
            fast: str, deep: str | None = None, config: dict[str, Any] | None = None, name: str = "sidecar"
        ) -> Endpoint:
            port = free_port()
            settings = deep_merge(
                {
                    "upstreams": {
                        "fast": {"url": fast, "model": "fast-model", "health_interval_s": 0.2},
                        "deep": {"url": deep or fast, "model": "deep-model", "health_interval_s": 0.2},
                    },
                    "phrase_bank": {"enabled": False},
                },
                config or {},
            )
            config_file = tmp_path / f"{name}.yaml"
            config_file.write_text(yaml.safe_dump(settings))
            # With the test hooks: the guardian reads pressure the tests set, never this machine's load.
            argv = hooked_sidecar.argv("--config", str(config_file), "--listen", f"127.0.0.1:{port}")
            url = f"http://127.0.0.1:{port}"
            process = stack.enter_context(running(argv, ready_url=url + "/healthz", log_dir=log_dir, name=name))
            endpoint = Endpoint(url, port, process)
            endpoint.config_file = config_file  # type: ignore[attr-defined]
            return endpoint

        yield start
