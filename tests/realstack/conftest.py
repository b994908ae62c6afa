"""The real local stack for this tier: two Ollama servers (fast, deep) with the shipped model, once per session.

Set VOICELANE_TEST_OLLAMA_BINARY to use an Ollama binary of your own instead of the cached build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from voicelane.processes import free_port
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
