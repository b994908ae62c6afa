"""Fixtures shared by every test tier: process start-up helpers, log placement, the Kubernetes API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kube import KubeTarget, kube_target


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Where started processes write their logs (kept by pytest for failed tests)."""
    directory = tmp_path / "logs"
    directory.mkdir()
    return directory


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeTarget]:
    """The Kubernetes API of the cluster tier (see tests/support/kube.py): one per session."""
    yield from kube_target(tmp_path_factory.mktemp("kube"))
