"""A lane whose reconcile failed waits out its backoff: kicks meanwhile (its children's watch events,
the resync) do not retry it at once, whichever path (kopf's handler or a kick) saw the failure."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
import yaml

from tests.unit.operator.conftest import SAMPLE_PATH
from voicelane.operator.handlers import LaneReconciler, TransientApiError
from voicelane.operator.metrics import OperatorMetrics

KEY = ("voice", "lane")


class FlakyApi:
    """Serves one lane and accepts every write, except that applying a Deployment fails while told to."""

    def __init__(self) -> None:
        lane = yaml.safe_load(SAMPLE_PATH.read_text(encoding="utf-8"))
        lane["metadata"] = {"name": "lane", "namespace": "voice", "uid": "lane-uid", "generation": 1}
        self.lane = lane
        self.requests = 0
        self.failing = True
        self.in_create = asyncio.Event()  # set while a Deployment apply is under way
        self.answer_create = asyncio.Event()  # set: it answers (fails, while failing)
        self.answer_create.set()

    async def get(self, path: str) -> dict[str, Any] | None:
        self.requests += 1
        return copy.deepcopy(self.lane) if "/voicelanes/" in path else None

    async def list_objects(self, path: str, *, label_selector: str) -> list[dict[str, Any]]:
        self.requests += 1
        return []

    async def apply(self, path: str, body: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        self.requests += 1
        if "/deployments/" in path:
            self.in_create.set()
            await self.answer_create.wait()
            self.in_create.clear()
            if self.failing:
                raise TransientApiError(f"POST {path}: timed out (from the test)")
        return {**copy.deepcopy(body), "metadata": {**body["metadata"], "resourceVersion": "1"}}

    async def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        self.requests += 1
        return None if path.endswith("/status") else copy.deepcopy(body)

    async def delete(self, path: str) -> None:
        self.requests += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api() -> FlakyApi:
    return FlakyApi()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reconciler(api: FlakyApi, clock: Clock) -> LaneReconciler:
    return LaneReconciler(api, OperatorMetrics(), clock=clock, post_event=lambda *_, **__: None)  # type: ignore[arg-type]


async def test_after_a_failed_reconcile_kicks_wait_for_the_backoff_to_end(
    api: FlakyApi, reconciler: LaneReconciler, clock: Clock
) -> None:
    with pytest.raises(TransientApiError):
        await reconciler.reconcile(KEY)  # kopf's handler path: kopf retries after retry_delay
    requests = api.requests

    await reconciler.kick(KEY)
    clock.now += reconciler.retry_delay(0) / 2
    await reconciler.kick(KEY)
    assert api.requests == requests, "a kick during the backoff went to the API"

    api.failing = False
    clock.now += reconciler.retry_delay(0)
    await reconciler.kick(KEY)
    assert api.requests > requests
    requests = api.requests
    await reconciler.kick(KEY)  # recovered: no backoff any more
    assert api.requests > requests


async def test_a_kick_queued_behind_a_failing_reconcile_does_not_retry_it_at_once(
    api: FlakyApi, reconciler: LaneReconciler
) -> None:
    # The watch events of the children a reconcile creates arrive while it runs; when it then
    # fails, the kick they queued must not start the next attempt before the backoff says so.
    api.answer_create.clear()
    failing = asyncio.create_task(reconciler.reconcile(KEY))
    await api.in_create.wait()
    kicked = asyncio.create_task(reconciler.kick(KEY))
    await asyncio.sleep(0)
    requests = api.requests

    api.answer_create.set()
    with pytest.raises(TransientApiError):
        await failing
    await kicked

    assert api.requests == requests


async def test_a_failed_kick_backs_off_too_and_its_own_retry_is_let_through(
    api: FlakyApi, reconciler: LaneReconciler
) -> None:
    await reconciler.kick(KEY)  # fails, and schedules its retry after retry_delay(0)
    requests = api.requests

    await reconciler.kick(KEY)
    assert api.requests == requests

    api.failing = False
    await reconciler.kick(KEY, retry=True)  # what the scheduled retry does when its time comes
    assert api.requests > requests
