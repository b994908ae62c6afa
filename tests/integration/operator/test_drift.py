"""Drift: whatever happens to a lane's children by hand, the operator puts back, and only that."""

from __future__ import annotations

import json

import pytest

from tests.integration.operator.harness import Cluster, Lane, OperatorProcess, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]


def settled(cluster: Cluster, lane: Lane) -> dict:
    lane.create()
    observed = wait_until(lane.observed, cluster.change_timeout_s, what="a status for generation 1")
    wait_until(lambda: len(lane.children()) == 8, 10, what="the sample's 8 children")
    return observed


def test_a_deleted_child_is_restored(cluster: Cluster, lane: Lane) -> None:
    observed = settled(cluster, lane)
    service = cluster.get("service", f"{lane.name}-fast")
    assert service is not None

    cluster.delete("service", f"{lane.name}-fast")

    def recreated() -> dict | None:
        found = cluster.get("service", f"{lane.name}-fast")
        return found if found and found["metadata"]["uid"] != service["metadata"]["uid"] else None

    restored = wait_until(recreated, cluster.change_timeout_s, what="the Service to be recreated")
    assert restored["metadata"]["ownerReferences"][0]["uid"] == observed["metadata"]["uid"]
    assert restored["spec"]["ports"][0]["port"] == 11435
    wait_until(lambda: "DriftCorrected" in lane.event_reasons(), 10, what="a DriftCorrected event")


def test_a_hand_edited_child_is_reverted(cluster: Cluster, lane: Lane) -> None:
    settled(cluster, lane)
    configmap = cluster.get("configmap", f"{lane.name}-sidecar")
    assert configmap is not None

    cluster.patch("deployment", f"{lane.name}-deep", {"spec": {"replicas": 5}})
    cluster.patch("configmap", f"{lane.name}-sidecar", {"data": {"sidecar.yaml": "edited: by hand\n"}})

    wait_until(
        lambda: (cluster.get("deployment", f"{lane.name}-deep") or {}).get("spec", {}).get("replicas") == 2,
        cluster.change_timeout_s,
        what="the deep Deployment back at 2 replicas",
    )
    wait_until(
        lambda: (cluster.get("configmap", f"{lane.name}-sidecar") or {}).get("data") == configmap["data"],
        cluster.change_timeout_s,
        what="the sidecar ConfigMap back to the rendered policy",
    )


def test_a_reconcile_with_nothing_to_change_writes_nothing(
    cluster: Cluster, operator: OperatorProcess, lane: Lane
) -> None:
    settled(cluster, lane)
    before = {key: child["metadata"] for key, child in lane.children().items()}
    writes_before = child_writes(cluster)
    unchanged = 'voicelane_operator_reconciles_total{result="unchanged"}'
    reconciles = operator.metric(unchanged)

    # A metadata edit of the lane makes kopf run the update handler: a full reconcile.
    cluster.kubectl("annotate", "voicelane", lane.name, "example.com/touched=yes")
    wait_until(lambda: operator.metric(unchanged) > reconciles, cluster.change_timeout_s, what="a reconcile")

    after = {key: child["metadata"] for key, child in lane.children().items()}
    assert after.keys() == before.keys()
    for key, metadata in before.items():
        # Status updates by controllers move resourceVersions; the spec's generation must not move.
        field = "generation" if "generation" in metadata else "resourceVersion"
        if key[0] != "PersistentVolumeClaim":  # a real cluster binds claims meanwhile
            assert after[key][field] == metadata[field], f"{key} was written: {json.dumps(after[key])}"
    assert child_writes(cluster) == writes_before  # not even a no-op write (counted on the emulator only)


def child_writes(cluster: Cluster) -> int:
    return sum(
        usage["count"]
        for usage in cluster.usage()
        if usage["agent"] == "OpenAPI-Generator" and usage["verb"] in ("create", "patch", "update", "delete")
        if not usage["resource"].startswith("voicelanes")
    )
