"""Fixtures shared by every test tier: process start-up helpers and log placement."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Where started processes write their logs (kept by pytest for failed tests)."""
    directory = tmp_path / "logs"
    directory.mkdir()
    return directory
