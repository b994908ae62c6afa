"""Fixtures of the delivery tests: the chart rendered once per values file per session."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.delivery.support import VALUES, Render, render


@pytest.fixture(scope="session")
def rendered() -> Callable[[str], Render]:
    """rendered(name): the chart rendered with VALUES[name], cached for the session."""
    cache: dict[str, Render] = {}

    def get(name: str) -> Render:
        if name not in cache:
            cache[name] = render(name)
        return cache[name]

    return get


@pytest.fixture(scope="session", params=sorted(VALUES))
def each_render(request: pytest.FixtureRequest, rendered: Callable[[str], Render]) -> Render:
    """The chart rendered with each values file in turn."""
    return rendered(request.param)
