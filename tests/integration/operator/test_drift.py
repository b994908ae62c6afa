"""Drift, judged by the real API server's server-side apply: the operator puts back the fields it sets,
leaves everyone else's alone, and writes nothing when nothing changed, even right after a restart.

"No write" is counted on the fault proxy the operator's requests pass through (its dry runs are counted
apart, as they store nothing), and seen on the children's unchanged resourceVersions.
"""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest

from tests.integration.operator.harness import Cluster, Lane, OperatorProcess, condition, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(180)]

UNCHANGED = 'voicelane_operator_reconciles_total{result="unchanged"}'
WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})


def settled(cluster: Cluster, lane: Lane, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    cluster.apply(manifest or lane.manifest())
    wait_until(lane.observed, cluster.change_timeout_s, what="a status for generation 1")
    return wait_until(children_settled(lane), cluster.change_timeout_s, what="the children, settled")


def children_settled(lane: Lane, looks: int = 3) -> Any:
    """The children once `looks` looks in a row find the same versions: no controller is still writing them."""
    seen: list[dict[tuple[str, str], str]] = []

    def check() -> dict[tuple[str, str], dict[str, Any]] | None:
        children = lane.children()
        seen.append(versions(children))
        return children if len(seen) >= looks and all(look == seen[-1] for look in seen[-looks:]) else None

    return check


def child_writes(cluster: Cluster) -> collections.Counter[tuple[str, str]]:
    """The operator's writes to children so far, by (resource, verb): the lane's own status and Events aside."""
    return collections.Counter(
        {
            (usage["resource"], usage["verb"]): usage["count"]
            for usage in cluster.usage()
            if usage["verb"] in WRITE_VERBS and usage["resource"].split("/")[0] not in ("voicelanes", "events")
        }
    )


def dry_runs(cluster: Cluster) -> int:
    return sum(usage["count"] for usage in cluster.usage() if usage["verb"] == "dryrun-patch")


def reconciled_once_more(cluster: Cluster, operator: OperatorProcess, lane: Lane) -> None:
    """Make the operator reconcile the lane in full (an edit of the lane's metadata runs kopf's update
    handler) and wait until it has, with nothing to apply."""
    before = operator.metric(UNCHANGED)
    cluster.kubectl("annotate", "--overwrite", "voicelane", lane.name, f"example.com/touched={before}")
    wait_until(lambda: operator.metric(UNCHANGED) > before, cluster.change_timeout_s, what="an unchanged reconcile")


def versions(children: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {key: child["metadata"]["resourceVersion"] for key, child in children.items()}


def spec_versions(children: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Each child's generation, which only a change of its spec moves (controllers write status, which moves
    the resourceVersion too); the resourceVersion of kinds without one."""
    return {
        key: str(child["metadata"].get("generation") or child["metadata"]["resourceVersion"])
        for key, child in children.items()
    }


def deployment_of(cluster: Cluster, lane: Lane, tier: str) -> dict[str, Any]:
    return cluster.get("deployment", f"{lane.name}-{tier}") or {}


def env_of(deployment: dict[str, Any], container: str = "ollama") -> dict[str, str]:
    [found] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == container]
    return {var["name"]: var.get("value", "") for var in found.get("env", [])}


def test_a_deleted_child_is_restored(cluster: Cluster, lane: Lane) -> None:
    settled(cluster, lane)
    service = cluster.get("service", f"{lane.name}-fast")
    assert service is not None

    cluster.delete("service", f"{lane.name}-fast")

    def recreated() -> dict[str, Any] | None:
        found = cluster.get("service", f"{lane.name}-fast")
        return found if found and found["metadata"]["uid"] != service["metadata"]["uid"] else None

    restored = wait_until(recreated, cluster.change_timeout_s, what="the Service to be recreated")
    assert restored["metadata"]["ownerReferences"][0]["uid"] == (lane.get() or {})["metadata"]["uid"]
    assert restored["spec"]["ports"][0]["port"] == 11435
    wait_until(lambda: "DriftCorrected" in lane.event_reasons(), 10, what="a DriftCorrected event")


def test_hand_edits_of_fields_the_operator_sets_are_reverted(cluster: Cluster, lane: Lane) -> None:
    settled(cluster, lane)
    configmap = cluster.get("configmap", f"{lane.name}-sidecar")
    assert configmap is not None
    keep_alive = env_of(deployment_of(cluster, lane, "fast"))["OLLAMA_KEEP_ALIVE"]

    cluster.patch("deployment", f"{lane.name}-deep", {"spec": {"replicas": 5}})
    cluster.patch("configmap", f"{lane.name}-sidecar", {"data": {"sidecar.yaml": "edited: by hand\n"}})
    cluster.kubectl("set", "env", f"deployment/{lane.name}-fast", "-c", "ollama", "OLLAMA_KEEP_ALIVE=1m")

    wait_until(
        lambda: deployment_of(cluster, lane, "deep")["spec"]["replicas"] == 2,
        cluster.change_timeout_s,
        what="the deep Deployment back at 2 replicas",
    )
    wait_until(
        lambda: (cluster.get("configmap", f"{lane.name}-sidecar") or {}).get("data") == configmap["data"],
        cluster.change_timeout_s,
        what="the sidecar ConfigMap back to the rendered policy",
    )
    wait_until(
        lambda: env_of(deployment_of(cluster, lane, "fast"))["OLLAMA_KEEP_ALIVE"] == keep_alive,
        cluster.change_timeout_s,
        what=f"the fast model server's OLLAMA_KEEP_ALIVE back at {keep_alive}",
    )


def test_an_annotation_and_a_label_someone_else_added_stay_through_a_revert(cluster: Cluster, lane: Lane) -> None:
    settled(cluster, lane)
    name = f"{lane.name}-deep"
    cluster.kubectl("annotate", "deployment", name, "example.com/owner-team=voice")
    cluster.kubectl("label", "deployment", name, "example.com/cost-centre=42")

    cluster.patch("deployment", name, {"spec": {"replicas": 5}})  # so the operator applies over them
    reverted = wait_until(
        lambda: (found := deployment_of(cluster, lane, "deep"))["spec"]["replicas"] == 2 and found,
        cluster.change_timeout_s,
        what="the deep Deployment back at 2 replicas",
    )

    assert reverted["metadata"]["annotations"]["example.com/owner-team"] == "voice"
    assert reverted["metadata"]["labels"]["example.com/cost-centre"] == "42"


def test_replicas_the_lane_leaves_unset_are_left_to_whoever_scales_the_tier(
    cluster: Cluster, operator: OperatorProcess, lane: Lane
) -> None:
    manifest = lane.manifest()
    del manifest["spec"]["fast"]["replicas"]
    settled(cluster, lane, manifest)
    name = f"{lane.name}-fast"
    assert deployment_of(cluster, lane, "fast")["spec"]["replicas"] == 1  # the Deployment's own default

    cluster.kubectl("scale", "deployment", name, "--replicas=3")  # as an autoscaler does, through /scale
    reconciled_once_more(cluster, operator, lane)
    assert deployment_of(cluster, lane, "fast")["spec"]["replicas"] == 3

    other_manager = json.dumps({"spec": {"replicas": 4}})
    cluster.kubectl("patch", "deployment", name, "--type=merge", "--field-manager=autoscaler", "-p", other_manager)
    reconciled_once_more(cluster, operator, lane)
    assert deployment_of(cluster, lane, "fast")["spec"]["replicas"] == 4


def test_an_unchanged_lane_causes_no_write(cluster: Cluster, operator: OperatorProcess, lane: Lane) -> None:
    before = spec_versions(settled(cluster, lane))
    writes = child_writes(cluster)

    reconciled_once_more(cluster, operator, lane)

    assert child_writes(cluster) == writes  # not even a no-op apply
    assert spec_versions(lane.children()) == before


def test_a_changed_lane_field_updates_exactly_the_child_it_renders_into(
    cluster: Cluster, operator: OperatorProcess, lane: Lane
) -> None:
    before = spec_versions(settled(cluster, lane))
    writes = child_writes(cluster)

    cluster.patch("voicelane", lane.name, {"spec": {"deep": {"image": "ollama/ollama:0.24.1"}}})
    wait_until(lane.observed, cluster.change_timeout_s, what="a status for generation 2")

    assert child_writes(cluster) - writes == collections.Counter({("deployments", "patch"): 1})
    after = spec_versions(lane.children())
    assert [key for key in before if after[key] != before[key]] == [("Deployment", f"{lane.name}-deep")]
    assert "ollama/ollama:0.24.1" in json.dumps(deployment_of(cluster, lane, "deep")["spec"]["template"])


def test_after_an_operator_restart_an_unchanged_lane_is_still_not_written(
    cluster: Cluster, operator: OperatorProcess, lane: Lane
) -> None:
    children = settled(cluster, lane)
    writes, checked = child_writes(cluster), dry_runs(cluster)

    operator.stop()
    operator.start()  # kopf resumes the lane: a full reconcile by an operator that remembers nothing
    wait_until(lambda: operator.metric(UNCHANGED) >= 1, cluster.change_timeout_s, what="the resumed reconcile")

    assert child_writes(cluster) == writes
    assert spec_versions(lane.children()) == spec_versions(children)
    assert dry_runs(cluster) - checked == len(children)  # it asked the API server instead, once per child


def test_a_name_held_by_another_controller_is_left_alone_and_reported(cluster: Cluster, lane: Lane) -> None:
    # An owner of someone else's, and a ConfigMap it controls under the name of the lane's sidecar policy.
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{lane.name}-owner"}})
    owner = cluster.get("configmap", f"{lane.name}-owner")
    assert owner is not None
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"]}
    held = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{lane.name}-sidecar",
            "ownerReferences": [{**reference, "uid": owner["metadata"]["uid"], "controller": True}],
        },
        "data": {"kept": "yes"},
    }
    cluster.apply(held)

    lane.create()

    degraded = wait_until(lambda: lane.having("Degraded"), cluster.change_timeout_s, what="Degraded")
    assert condition(degraded, "Degraded")["reason"] == "ChildConflict"
    assert f"{lane.name}-sidecar" in condition(degraded, "Degraded")["message"]
    untouched = cluster.get("configmap", f"{lane.name}-sidecar")
    assert untouched is not None
    assert untouched["data"] == {"kept": "yes"}
    assert [ref["uid"] for ref in untouched["metadata"]["ownerReferences"]] == [owner["metadata"]["uid"]]
    # The lane's other children are there all the same.
    assert ("Service", f"{lane.name}-fast") in lane.children()
    cluster.delete("configmap", f"{lane.name}-sidecar")
    cluster.delete("configmap", f"{lane.name}-owner")
