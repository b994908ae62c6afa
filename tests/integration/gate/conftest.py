"""Fixtures: the simulator as the model server, and `voicelane gate` in front of it, as real processes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.sidecar.conftest import Endpoint, start_sidecar, start_sim
from voicelane.processes import free_port, running, voicelane_argv

__all__ = ["start_gate", "start_sidecar", "start_sim"]


@pytest.fixture
def start_gate(log_dir: Path) -> Iterator[Callable[..., Endpoint]]:
    """Start `voicelane gate --upstream URL` with extra flags; stopped at the end of the test."""
    with contextlib.ExitStack() as stack:

        def start(upstream: str, *flags: str, name: str = "gate") -> Endpoint:
            port = free_port()
            argv = voicelane_argv("gate", "--listen", f"127.0.0.1:{port}", "--upstream", upstream, *flags)
            url = f"http://127.0.0.1:{port}"
            process = stack.enter_context(running(argv, ready_url=url + "/healthz", log_dir=log_dir, name=name))
            return Endpoint(url, port, process)

        yield start
