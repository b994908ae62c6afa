"""One reconcile of a lane, against an in-memory API: what it writes, reports and leaves alone."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.support.kube_emulator import merge_patch, parse_api_path
from voicelane.operator.handlers import LaneReconciler, TransientApiError
from voicelane.operator.metrics import OperatorMetrics
from voicelane.operator.status import condition_of

SAMPLE = Path(__file__).resolve().parents[3] / "manifests" / "samples" / "voicelane.yaml"
KEY = ("voice", "lane")


def api_error(status: int, reason: str) -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps({"reason": reason, "message": f"{reason} (from the test)"})
    return error


class FakeApi:
    """The reconciler's API calls over dicts, with failures on demand."""

    def __init__(self, lane: dict[str, Any]) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.failures: dict[tuple[str, str], Exception] = {}  # (method, plural) → raised once
        self.versions = itertools.count(100)
        self._put(("voicelanes", "voice", "lane"), lane)

    def _key(self, path: str, body: dict[str, Any] | None = None) -> tuple[str, str, str]:
        parsed = parse_api_path(path)
        assert parsed is not None
        assert parsed.plural is not None
        name = parsed.name or (body or {})["metadata"]["name"]
        return (parsed.plural, parsed.namespace or "", name)

    def _put(self, key: tuple[str, str, str], body: dict[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(next(self.versions))
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def _fail(self, method: str, path: str) -> None:
        failure = self.failures.pop((method, self._key(path, {"metadata": {"name": "-"}})[0]), None)
        if failure is not None:
            raise failure

    async def get(self, path: str) -> dict[str, Any] | None:
        self._fail("GET", path)
        found = self.objects.get(self._key(path))
        return copy.deepcopy(found) if found else None

    async def list_objects(self, path: str, *, label_selector: str) -> list[dict[str, Any]]:
        self._fail("LIST", path)
        plural, namespace, _ = self._key(path, {"metadata": {"name": "-"}})
        label, _, value = label_selector.partition("=")
        return [
            copy.deepcopy(obj)
            for (kind, ns, _), obj in self.objects.items()
            if kind == plural and ns == namespace and obj["metadata"].get("labels", {}).get(label) == value
        ]

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._fail("POST", path)
        key = self._key(path, body)
        if key in self.objects:
            raise api_error(409, "AlreadyExists")
        self.writes.append(("create", f"{key[0]}/{key[2]}"))
        return self._put(key, body)

    async def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        self._fail("PATCH", path)
        key = self._key(path)
        if key not in self.objects:
            return None
        self.writes.append(("patch", path.rsplit("/", 1)[-1] if path.endswith("/status") else f"{key[0]}/{key[2]}"))
        return self._put(key, merge_patch(self.objects[key], body))

    async def delete(self, path: str) -> None:
        self.writes.append(("delete", path))
        self.objects.pop(self._key(path), None)


@pytest.fixture
def lane() -> dict[str, Any]:
    manifest = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))
    manifest["metadata"] = {"name": "lane", "namespace": "voice", "uid": "lane-uid", "generation": 1}
    return manifest


@pytest.fixture
def api(lane: dict[str, Any]) -> FakeApi:
    return FakeApi(lane)


@pytest.fixture
def events() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def reconciler(api: FakeApi, events: list[tuple[str, str, str]]) -> LaneReconciler:
    def post(lane: Any, type: str, *, reason: str, message: str) -> None:
        events.append((type, reason, message))

    return LaneReconciler(api, OperatorMetrics(), post_event=post)  # type: ignore[arg-type]


def stored_lane(api: FakeApi) -> dict[str, Any]:
    return api.objects[("voicelanes", "voice", "lane")]


async def test_a_new_lane_gets_its_children_a_status_and_an_event(
    api: FakeApi, reconciler: LaneReconciler, events: list[tuple[str, str, str]]
) -> None:
    outcome = await reconciler.reconcile(KEY)

    assert outcome.result == "applied"
    assert sorted(name for verb, name in api.writes if verb == "create") == [
        "configmaps/lane-sidecar",
        "deployments/lane-deep",
        "deployments/lane-fast",
        "networkpolicies/lane-ollama",
        "persistentvolumeclaims/lane-fast-models",
        "poddisruptionbudgets/lane-deep",
        "services/lane-deep",
        "services/lane-fast",
    ]
    assert stored_lane(api)["status"]["observedGeneration"] == 1
    assert [reason for _, reason, _ in events] == ["Applied"]


async def test_a_second_reconcile_writes_nothing_and_posts_nothing(
    api: FakeApi, reconciler: LaneReconciler, events: list[tuple[str, str, str]]
) -> None:
    await reconciler.reconcile(KEY)
    api.writes.clear()
    events.clear()

    outcome = await reconciler.reconcile(KEY)

    assert (outcome.result, api.writes, events) == ("unchanged", [], [])


async def test_a_child_that_exists_unlabelled_is_patched_not_duplicated(
    api: FakeApi, reconciler: LaneReconciler
) -> None:
    stray = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lane-fast", "namespace": "voice"}}
    stray["spec"] = {"ports": [{"port": 1}]}
    api.objects[("services", "voice", "lane-fast")] = stray  # no lane label: the list misses it

    await reconciler.reconcile(KEY)

    service = api.objects[("services", "voice", "lane-fast")]
    assert service["spec"]["ports"][0]["port"] == 11435
    assert service["metadata"]["labels"]["voicelane.dev/lane"] == "lane"
    assert ("patch", "services/lane-fast") in api.writes


async def test_a_refused_write_is_reported_and_the_other_children_still_applied(
    api: FakeApi, reconciler: LaneReconciler, events: list[tuple[str, str, str]]
) -> None:
    api.failures[("POST", "poddisruptionbudgets")] = api_error(422, "Invalid")

    await reconciler.reconcile(KEY)

    degraded = condition_of(stored_lane(api)["status"], "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
    assert "PodDisruptionBudget/lane-deep" in degraded["message"]
    assert ("deployments", "voice", "lane-deep") in api.objects
    assert ("Warning", "ApplyFailed") in {(type, reason) for type, reason, _ in events}


async def test_an_invalid_spec_is_reported_once_and_nothing_is_applied(
    api: FakeApi, reconciler: LaneReconciler, events: list[tuple[str, str, str]]
) -> None:
    stored_lane(api)["spec"]["policy"]["rateLimit"] = {"burst": 1, "sustainedPerSecond": 4}

    first = await reconciler.reconcile(KEY)
    second = await reconciler.reconcile(KEY)

    assert (first.result, second.result) == ("invalid", "invalid")
    assert "rateLimit" in first.message
    assert [w for w in api.writes if w[0] != "patch"] == []
    assert [reason for _, reason, _ in events] == ["InvalidSpec"]


async def test_server_errors_are_raised_for_a_retry(api: FakeApi, reconciler: LaneReconciler) -> None:
    api.failures[("LIST", "deployments")] = TransientApiError("503 from the test")

    with pytest.raises(TransientApiError):
        await reconciler.reconcile(KEY)
    assert (await reconciler.reconcile(KEY)).result == "applied"
