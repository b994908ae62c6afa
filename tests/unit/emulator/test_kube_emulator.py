"""The Kubernetes API emulator keeps the API server's contract that kopf and kubectl rely on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kmock
import pytest

from tests.support.kube_emulator import Fault, KubeEmulator

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


class Api:
    def __init__(self, session: aiohttp.ClientSession, emulator: KubeEmulator) -> None:
        self.session = session
        self.emulator = emulator

    async def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        async with self.session.request(method, path, json=body, **kwargs) as response:
            return response.status, await response.json()

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, created = await self.call("POST", path, body)
        assert status == 201, created
        return created


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    emulator = KubeEmulator(change_log_size=4)
    async with emulator, kmock.Server(emulator) as server, aiohttp.ClientSession(base_url=str(server.url)) as session:
        yield Api(session, emulator)


async def test_a_create_answers_201_with_the_server_fields_stamped(api: Api) -> None:
    created = await api.create(CONFIGMAPS, {"metadata": {"generateName": "cm-"}, "data": {"a": "1"}})

    meta = created["metadata"]
    assert meta["name"].startswith("cm-")
    assert meta["namespace"] == "default"  # from the URL
    assert meta["uid"]
    assert meta["creationTimestamp"]
    assert int(meta["resourceVersion"]) > 0
    assert (created["apiVersion"], created["kind"]) == ("v1", "ConfigMap")


async def test_errors_are_status_objects_with_the_kubernetes_reasons(api: Api) -> None:
    await api.create(CONFIGMAPS, {"metadata": {"name": "one"}})

    assert (await api.call("POST", CONFIGMAPS, {"metadata": {"name": "one"}}))[1]["reason"] == "AlreadyExists"
    status, missing = await api.call("GET", CONFIGMAPS + "/none")
    assert (status, missing["kind"], missing["reason"]) == (404, "Status", "NotFound")
    status, gone_namespace = await api.call(
        "POST", "/api/v1/namespaces/nowhere/configmaps", {"metadata": {"name": "x"}}
    )
    assert (status, gone_namespace["reason"]) == (404, "NotFound")


async def test_an_unchanged_write_bumps_nothing_and_only_spec_changes_bump_the_generation(api: Api) -> None:
    created = await api.create(DEPLOYMENTS, {"metadata": {"name": "d"}, "spec": {"replicas": 1}})
    rv = created["metadata"]["resourceVersion"]

    _, same = await api.call("PATCH", DEPLOYMENTS + "/d", {"spec": {"replicas": 1}}, headers=MERGE)
    _, scaled = await api.call("PATCH", DEPLOYMENTS + "/d", {"spec": {"replicas": 3}}, headers=MERGE)
    _, status = await api.call(
        "PATCH", DEPLOYMENTS + "/d/status", {"spec": {"replicas": 9}, "status": {"readyReplicas": 3}}, headers=MERGE
    )

    assert same["metadata"]["resourceVersion"] == rv
    assert (scaled["metadata"]["generation"], scaled["spec"]["replicas"]) == (2, 3)
    assert (status["metadata"]["generation"], status["spec"]["replicas"], status["status"]) == (
        2,
        3,
        {"readyReplicas": 3},
    )


async def test_a_failed_json_patch_test_is_a_422_and_changes_nothing(api: Api) -> None:
    created = await api.create(CONFIGMAPS, {"metadata": {"name": "f", "finalizers": ["x/y"]}})
    stale = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "remove", "path": "/metadata/finalizers"},
    ]

    status, _ = await api.call("PATCH", CONFIGMAPS + "/f", stale, headers=JSON_PATCH)

    assert status == 422
    assert (await api.call("GET", CONFIGMAPS + "/f"))[1]["metadata"] == created["metadata"]


async def test_finalizers_hold_a_deletion_and_owners_take_their_dependents_along(api: Api) -> None:
    owner = await api.create(CONFIGMAPS, {"metadata": {"name": "owner", "finalizers": ["voicelane.dev/operator"]}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    await api.create(DEPLOYMENTS, {"metadata": {"name": "child", "ownerReferences": [ref]}, "spec": {}})

    _, marked = await api.call("DELETE", CONFIGMAPS + "/owner")
    assert marked["metadata"]["deletionTimestamp"]
    assert (await api.call("GET", DEPLOYMENTS + "/child"))[0] == 200

    await api.call("PATCH", CONFIGMAPS + "/owner", {"metadata": {"finalizers": None}}, headers=MERGE)

    assert (await api.call("GET", CONFIGMAPS + "/owner"))[0] == 404
    assert (await api.call("GET", DEPLOYMENTS + "/child"))[0] == 404


async def test_lists_carry_their_kind_and_honour_selectors(api: Api) -> None:
    await api.create(CONFIGMAPS, {"metadata": {"name": "a", "labels": {"voicelane.dev/lane": "x", "tier": "fast"}}})
    await api.create(CONFIGMAPS, {"metadata": {"name": "b", "labels": {"voicelane.dev/lane": "y"}}})

    _, by_label = await api.call("GET", CONFIGMAPS, params={"labelSelector": "voicelane.dev/lane=x,tier in (fast)"})
    _, by_field = await api.call("GET", CONFIGMAPS, params={"fieldSelector": "metadata.name!=a"})

    assert (by_label["kind"], by_label["apiVersion"]) == ("ConfigMapList", "v1")
    assert [item["metadata"]["name"] for item in by_label["items"]] == ["a"]
    assert [item["metadata"]["name"] for item in by_field["items"]] == ["b"]


async def test_a_watch_resumes_after_a_version_and_a_forgotten_version_is_gone(api: Api) -> None:
    _, listing = await api.call("GET", CONFIGMAPS)
    since = listing["metadata"]["resourceVersion"]
    await api.create(CONFIGMAPS, {"metadata": {"name": "after"}})

    async with api.session.get(CONFIGMAPS, params={"watch": "true", "resourceVersion": since}) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        event = json.loads(await response.content.readline())
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "after")

    for index in range(5):  # the log holds 4 changes: `since` falls out of it
        await api.create(CONFIGMAPS, {"metadata": {"name": f"more-{index}"}})
    async with api.session.get(CONFIGMAPS, params={"watch": "true", "resourceVersion": since}) as response:
        expired = json.loads(await response.content.readline())
    assert (expired["type"], expired["object"]["code"]) == ("ERROR", 410)


async def test_a_fault_answers_in_place_of_the_server_and_runs_out(api: Api) -> None:
    api.emulator.add_fault(Fault(verb="create", resource="configmaps", status=503, times=1))

    status, refused = await api.call("POST", CONFIGMAPS, {"metadata": {"name": "later"}})
    assert (status, refused["reason"]) == (503, "ServiceUnavailable")
    assert (await api.call("GET", CONFIGMAPS + "/later"))[0] == 404
    assert (await api.call("POST", CONFIGMAPS, {"metadata": {"name": "later"}}))[0] == 201


async def test_the_simulated_deployment_controller_rolls_deployments_out(api: Api) -> None:
    await api.create(DEPLOYMENTS, {"metadata": {"name": "d"}, "spec": {"replicas": 2}})

    assert await api.emulator.mark_deployments_ready("default") == 1

    status = (await api.call("GET", DEPLOYMENTS + "/d"))[1]["status"]
    assert (status["readyReplicas"], status["updatedReplicas"], status["observedGeneration"]) == (2, 2, 1)
    assert await api.emulator.mark_deployments_ready("default") == 0, "a second call has nothing to change"


async def test_kubectl_get_receives_a_table_of_the_crd_printer_columns(api: Api) -> None:
    crd = {
        "metadata": {"name": "things.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "things", "singular": "thing", "kind": "Thing"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "additionalPrinterColumns": [
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
                    ],
                }
            ],
        },
    }
    await api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    things = "/apis/example.com/v1/namespaces/default/things"
    await api.create(things, {"metadata": {"name": "one"}, "spec": {"model": "llama3.2:1b"}})

    status, table = await api.call("GET", things, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})

    assert (status, table["kind"]) == (200, "Table")
    assert [column["name"] for column in table["columnDefinitions"]] == ["Name", "Ready", "Model"]
    assert table["rows"][0]["cells"] == ["one", None, "llama3.2:1b"]
