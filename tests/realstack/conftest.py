"""The real local stack for this tier: two Ollama servers (fast, deep) with the shipped model, once per session.

Set VOICELANE_TEST_OLLAMA_BINARY to use an Ollama binary of your own instead of the cached build.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from voicelane.processes import free_port, running, voicelane_argv
from voicelane.stack.ollama import Stack, running_stack


@pytest.fixture(scope="session")
def ollama_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = os.environ.get("VOICELANE_TEST_OLLAMA_BINARY")
    with running_stack(
        tmp_path_factory.mktemp("ollama-stack"),
        fast_listen=f"127.0.0.1:{free_port()}",
        deep_listen=f"127.0.0.1:{free_port()}",
        binary=Path(binary) if binary else None,
    ) as stack:
        yield stack


@contextlib.contextmanager
def running_sidecar(config: dict[str, Any], logs: Path) -> Iterator[str]:
    """A sidecar with `config` on a free loopback port; its URL while it runs."""
    config_file = logs / "sidecar.yaml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(
        voicelane_argv("sidecar", "--config", str(config_file), "--listen", f"127.0.0.1:{port}"),
        ready_url=url + "/healthz",
        log_dir=logs,
        name="sidecar",
    ):
        yield url
