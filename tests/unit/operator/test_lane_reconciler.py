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

from voicelane.operator.apply import FIELD_MANAGER, LEGACY_APPLIED_FIELDS_ANNOTATION, LEGACY_FIELD_MANAGER
from voicelane.operator.handlers import LaneReconciler, TransientApiError
from voicelane.operator.metrics import OperatorMetrics
from voicelane.operator.status import condition_of

SAMPLE = Path(__file__).resolve().parents[3] / "manifests" / "samples" / "voicelane.yaml"
KEY = ("voice", "lane")
Key = tuple[str, str, str]  # (plural, namespace, name)

WRITES = ("apply", "patch", "delete")


def api_error(status: int, reason: str) -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps({"reason": reason, "message": f"{reason} (from the test)"})
    return error


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, which the fake needs for status and upgrade patches (a few lines; no library needed)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def fields_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The fieldsV1 of an applied object, lists taken whole (enough for the reconciler's decisions)."""
    return {f"f:{key}": fields_of(value) if isinstance(value, dict) else {} for key, value in obj.items()}


class FakeApi:
    """The reconciler's API calls over dicts, answering server-side apply as the API server does in what the
    reconciler reads: the stored object, its resourceVersion (moved only by a change) and the managedFields
    entry of FIELD_MANAGER. `take_over` is someone else's edit: it moves a field's ownership away."""

    def __init__(self, lane: dict[str, Any]) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []  # (verb, "plural/name")
        self.failures: dict[tuple[str, str], Exception] = {}  # (verb, plural) → raised once
        self.versions = itertools.count(100)
        self.uids = itertools.count(1)
        self.objects[("voicelanes", "voice", "lane")] = lane

    def writes(self) -> list[tuple[str, str]]:
        return [request for request in self.requests if request[0] in WRITES]

    def _key(self, path: str) -> Key:
        parts = path.strip("/").split("/")
        at = parts.index("namespaces")
        return (parts[at + 2], parts[at + 1], parts[at + 3] if len(parts) > at + 3 else "")

    def _request(self, verb: str, path: str) -> Key:
        key = self._key(path)
        self.requests.append((verb, f"{key[0]}/{key[2]}" if key[2] else key[0]))
        failure = self.failures.pop((verb, key[0]), None)
        if failure is not None:
            raise failure
        return key

    def _store(self, key: Key, obj: dict[str, Any]) -> dict[str, Any]:
        before = self.objects.get(key)
        metadata = obj["metadata"]
        metadata.setdefault("uid", f"uid-{next(self.uids)}")
        changed = before is None or {**before, "metadata": {**before["metadata"], "resourceVersion": None}} != {
            **obj,
            "metadata": {**metadata, "resourceVersion": None},
        }
        metadata["resourceVersion"] = str(next(self.versions)) if changed else before["metadata"]["resourceVersion"]
        self.objects[key] = obj
        return copy.deepcopy(obj)

    async def get(self, path: str) -> dict[str, Any] | None:
        found = self.objects.get(self._request("get", path))
        return copy.deepcopy(found) if found else None

    async def list_objects(self, path: str, *, label_selector: str) -> list[dict[str, Any]]:
        plural, namespace, _ = self._request("list", path)
        label, _, value = label_selector.partition("=")
        return [
            copy.deepcopy(obj)
            for (kind, ns, _), obj in self.objects.items()
            if kind == plural and ns == namespace and (obj["metadata"].get("labels") or {}).get(label) == value
        ]

    async def apply(self, path: str, body: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        key = self._request("dry-run" if dry_run else "apply", path)
        live = copy.deepcopy(self.objects.get(key) or {"metadata": {}})
        controllers = {
            ref["uid"]
            for obj in (live, body)
            for ref in obj["metadata"].get("ownerReferences") or []
            if ref.get("controller")
        }
        if len(controllers) > 1:  # the API server's validation: one controller reference at most
            error = api_error(422, "Invalid")
            error.body = json.dumps(
                {"reason": "Invalid", "message": "Only one reference can have Controller set to true. Found ..."}
            )
            raise error
        others = [e for e in live["metadata"].pop("managedFields", []) if e["manager"] != FIELD_MANAGER]
        applied = merge_patch(live, copy.deepcopy(body))
        ours = {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": fields_of(body)}
        applied["metadata"]["managedFields"] = [*others, ours]
        if dry_run:
            return applied
        return self._store(key, applied)

    async def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        key = self._request("patch", path)
        if key not in self.objects:
            return None
        return self._store(key, merge_patch(copy.deepcopy(self.objects[key]), body))

    async def delete(self, path: str) -> None:
        self.objects.pop(self._request("delete", path), None)

    def take_over(self, key: Key, field: str, value: Any, *, manager: str) -> None:
        """Someone else sets `field` (a top-level section's key, e.g. spec.replicas): it is theirs now."""
        section, name = field.split(".", 1)
        obj = copy.deepcopy(self.objects[key])
        obj[section][name] = value
        for entry in obj["metadata"]["managedFields"]:
            entry["fieldsV1"].get(f"f:{section}", {}).pop(f"f:{name}", None)
        obj["metadata"]["managedFields"].append({"manager": manager, "fieldsV1": {f"f:{section}": {f"f:{name}": {}}}})
        self._store(key, obj)


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


def new_reconciler(api: FakeApi, events: list[tuple[str, str, str]]) -> LaneReconciler:
    def post(lane: Any, type: str, *, reason: str, message: str) -> None:
        events.append((type, reason, message))

    return LaneReconciler(api, OperatorMetrics(), post_event=post)  # type: ignore[arg-type]


@pytest.fixture
def reconciler(api: FakeApi, events: list[tuple[str, str, str]]) -> LaneReconciler:
    return new_reconciler(api, events)


def stored_lane(api: FakeApi) -> dict[str, Any]:
    return api.objects[("voicelanes", "voice", "lane")]


async def settled(api: FakeApi, reconciler: LaneReconciler, events: list[tuple[str, str, str]]) -> None:
    await reconciler.reconcile(KEY)
    api.requests.clear()
    events.clear()


async def test_a_new_lane_gets_its_children_by_apply_a_status_and_an_event(
    api: FakeApi, reconciler: LaneReconciler, events: list[tuple[str, str, str]]
) -> None:
    outcome = await reconciler.reconcile(KEY)

    assert outcome.result == "applied"
    assert sorted(name for verb, name in api.writes() if verb == "apply") == [
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
    await settled(api, reconciler, events)

    outcome = await reconciler.reconcile(KEY)

    assert (outcome.result, events) == ("unchanged", [])
    assert {verb for verb, _ in api.requests} == {"get", "list"}  # not even a dry run


async def test_after_a_restart_dry_runs_once_per_child_confirm_there_is_nothing_to_write(
    api: FakeApi, reconciler: LaneReconciler, events: list[tuple[str, str, str]]
) -> None:
    await settled(api, reconciler, events)
    restarted = new_reconciler(api, events)

    first = await restarted.reconcile(KEY)
    dry_runs = [name for verb, name in api.requests if verb == "dry-run"]
    api.requests.clear()
    second = await restarted.reconcile(KEY)

    assert (first.result, second.result, events) == ("unchanged", "unchanged", [])
    assert len(dry_runs) == len(set(dry_runs)) == 8
    assert {verb for verb, _ in api.requests} == {"get", "list"}


async def test_a_field_someone_else_took_is_applied_back_and_named_in_the_event(
    api: FakeApi, reconciler: LaneReconciler, events: list[tuple[str, str, str]]
) -> None:
    await settled(api, reconciler, events)
    api.take_over(("deployments", "voice", "lane-deep"), "spec.replicas", 5, manager="kubectl")

    outcome = await reconciler.reconcile(KEY)

    assert outcome.result == "applied"
    assert api.writes() == [("apply", "deployments/lane-deep")]
    assert api.objects[("deployments", "voice", "lane-deep")]["spec"]["replicas"] == 2
    [(_, reason, message)] = events
    assert reason == "DriftCorrected"
    assert "updated Deployment/lane-deep (spec.replicas)" in message


async def test_after_a_restart_a_field_someone_else_took_is_found_by_the_dry_run(
    api: FakeApi, reconciler: LaneReconciler, events: list[tuple[str, str, str]]
) -> None:
    await settled(api, reconciler, events)
    api.take_over(("configmaps", "voice", "lane-sidecar"), "data.sidecar.yaml", "edited: by hand\n", manager="kubectl")

    await new_reconciler(api, events).reconcile(KEY)

    assert api.writes() == [("apply", "configmaps/lane-sidecar")]
    assert "edited" not in api.objects[("configmaps", "voice", "lane-sidecar")]["data"]["sidecar.yaml"]


async def test_a_changed_lane_applies_only_the_children_whose_rendering_changed(
    api: FakeApi, reconciler: LaneReconciler, events: list[tuple[str, str, str]]
) -> None:
    await settled(api, reconciler, events)
    stored_lane(api)["spec"]["deep"]["image"] = "ollama/ollama:0.25.0"
    stored_lane(api)["metadata"]["generation"] = 2

    await reconciler.reconcile(KEY)

    assert api.writes() == [("apply", "deployments/lane-deep"), ("patch", "voicelanes/lane")]


async def test_a_child_that_exists_unlabelled_is_adopted_by_the_apply_not_duplicated(
    api: FakeApi, reconciler: LaneReconciler
) -> None:
    stray = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lane-fast", "namespace": "voice"}}
    stray["spec"] = {"ports": [{"port": 1}]}
    api.objects[("services", "voice", "lane-fast")] = stray  # no lane label: the list misses it

    await reconciler.reconcile(KEY)

    service = api.objects[("services", "voice", "lane-fast")]
    assert service["spec"]["ports"][0]["port"] == 11435
    assert service["metadata"]["labels"]["voicelane.dev/lane"] == "lane"
    assert ("get", "services/lane-fast") not in api.requests  # no read before the apply


async def test_a_child_name_held_by_another_controller_is_left_alone_and_reported(
    api: FakeApi, reconciler: LaneReconciler
) -> None:
    theirs = {"uid": "someone-else", "controller": True, "kind": "Thing", "name": "x", "apiVersion": "v1"}
    api.objects[("services", "voice", "lane-fast")] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "lane-fast", "namespace": "voice", "ownerReferences": [theirs]},
    }

    await reconciler.reconcile(KEY)

    assert api.objects[("services", "voice", "lane-fast")]["metadata"]["ownerReferences"] == [theirs]
    assert "spec" not in api.objects[("services", "voice", "lane-fast")]
    degraded = condition_of(stored_lane(api)["status"], "Degraded")
    assert (degraded["reason"], "Service/lane-fast" in degraded["message"]) == ("ChildConflict", True)


async def test_a_child_of_an_older_operator_is_upgraded_once_and_then_left_alone(
    api: FakeApi, reconciler: LaneReconciler, events: list[tuple[str, str, str]]
) -> None:
    await settled(api, reconciler, events)
    key = ("configmaps", "voice", "lane-sidecar")
    old = api.objects[key]
    old["metadata"]["annotations"][LEGACY_APPLIED_FIELDS_ANNOTATION] = "{}"
    for entry in old["metadata"]["managedFields"]:
        entry.update(manager=LEGACY_FIELD_MANAGER, operation="Update")
    restarted = new_reconciler(api, events)

    await restarted.reconcile(KEY)
    upgraded = api.writes()
    api.requests.clear()
    await restarted.reconcile(KEY)

    assert upgraded == [("patch", "configmaps/lane-sidecar")]
    assert LEGACY_APPLIED_FIELDS_ANNOTATION not in api.objects[key]["metadata"]["annotations"]
    assert [e["manager"] for e in api.objects[key]["metadata"]["managedFields"]] == [FIELD_MANAGER]
    assert api.writes() == []


async def test_a_refused_apply_is_reported_and_the_other_children_still_applied(
    api: FakeApi, reconciler: LaneReconciler, events: list[tuple[str, str, str]]
) -> None:
    api.failures[("apply", "poddisruptionbudgets")] = api_error(422, "Invalid")

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
    assert [verb for verb, _ in api.writes() if verb != "patch"] == []
    assert [reason for _, reason, _ in events] == ["InvalidSpec"]


async def test_server_errors_are_raised_for_a_retry(api: FakeApi, reconciler: LaneReconciler) -> None:
    api.failures[("list", "deployments")] = TransientApiError("503 from the test")

    with pytest.raises(TransientApiError):
        await reconciler.reconcile(KEY)
    assert (await reconciler.reconcile(KEY)).result == "applied"
