"""A lane's life driven by kubectl: created from the sample, rolled out, patched, deleted."""

from __future__ import annotations

import json

import pytest

from tests.integration.operator.harness import Cluster, Lane, OperatorProcess, wait_until
from voicelane.operator.render import render_children

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]

CONDITION_TYPES = {"Ready", "FastReady", "DeepReady", "Progressing", "Degraded"}


def rendered(lane_object: dict) -> set[tuple[str, str]]:
    """What `voicelane render` says the operator applies for this lane."""
    return {(child["kind"], child["metadata"]["name"]) for child in render_children(lane_object)}


def test_the_sample_lane_gets_every_child_owned_by_it_and_a_status(cluster: Cluster, lane: Lane) -> None:
    lane.create()
    observed = wait_until(lane.observed, cluster.change_timeout_s, what="a status for generation 1")
    expected = rendered(observed)
    children = wait_until(lambda: (found := lane.children()).keys() == expected and found, 10, what=str(expected))

    uid = observed["metadata"]["uid"]
    for child in children.values():
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "VoiceLane",
            lane.name,
            uid,
            True,
        )
        assert child["metadata"]["labels"]["voicelane.dev/lane"] == lane.name
    status = observed["status"]
    assert {c["type"] for c in status["conditions"]} == CONDITION_TYPES
    assert status["fast"]["model"] == observed["spec"]["fast"]["model"]
    assert status["fast"]["endpoint"] == f"http://{lane.name}-fast.{cluster.namespace}.svc:11435"
    assert status["deep"]["endpoint"] == f"http://{lane.name}-deep.{cluster.namespace}.svc:11434"
    assert status["deep"]["replicas"] == 2
    wait_until(lambda: "Applied" in lane.event_reasons(), 10, what="an Applied event")


def test_the_lane_turns_ready_when_both_tiers_roll_out(cluster: Cluster, operator: OperatorProcess, lane: Lane) -> None:
    lane.create()
    wait_until(lane.observed, cluster.change_timeout_s, what="a status for generation 1")
    cluster.roll_out()

    status = wait_until(lambda: lane.having("Ready"), cluster.ready_timeout_s, what="Ready")["status"]
    assert status["fast"]["readyReplicas"] == status["fast"]["replicas"] == 1
    assert status["deep"]["readyReplicas"] == status["deep"]["replicas"] == 2
    assert lane.condition("Progressing")["status"] == "False"
    assert lane.condition("Degraded")["status"] == "False"
    wait_until(lambda: "LaneReady" in lane.event_reasons(), 10, what="a LaneReady event")
    assert operator.metric('voicelane_operator_lanes{condition="Ready"}') >= 1
    header, row = cluster.kubectl("get", "vl", lane.name).stdout.splitlines()
    assert header.split() == ["NAME", "READY", "FAST", "MODEL", "DEEP", "MODEL", "AGE"]
    assert row.split()[:4] == [lane.name, "True", status["fast"]["model"], status["deep"]["model"]]


def test_a_spec_patch_is_rolled_out_to_the_deployment(cluster: Cluster, lane: Lane) -> None:
    lane.create()
    wait_until(lane.observed, cluster.change_timeout_s, what="a status for generation 1")
    cluster.roll_out()

    cluster.patch("voicelane", lane.name, {"spec": {"fast": {"model": "qwen2.5:1.5b"}}})

    def deployment_runs_new_model() -> bool:
        deployment = cluster.get("deployment", f"{lane.name}-fast")
        return deployment is not None and "qwen2.5:1.5b" in json.dumps(deployment["spec"]["template"])

    wait_until(deployment_runs_new_model, cluster.change_timeout_s, what="the fast Deployment to run the new model")
    observed = wait_until(lane.observed, cluster.change_timeout_s, what="a status for generation 2")
    assert observed["metadata"]["generation"] == 2
    assert observed["status"]["fast"]["model"] == "qwen2.5:1.5b"
    deep = cluster.get("deployment", f"{lane.name}-deep")
    assert deep is not None
    assert "qwen2.5:1.5b" not in json.dumps(deep["spec"]), "the deep tier must not change"
    cluster.roll_out()
    wait_until(
        lambda: lane.condition("Progressing").get("status") == "False",
        cluster.ready_timeout_s,
        what="rolled out",
    )
    wait_until(
        lambda: any("Generation 2" in e.get("message", "") for e in cluster.events_about(lane.name)),
        10,
        what="an Applied event for generation 2",
    )


def test_deleting_the_lane_deletes_its_children(cluster: Cluster, lane: Lane) -> None:
    lane.create()
    observed = wait_until(lane.observed, cluster.change_timeout_s, what="a status for generation 1")
    wait_until(lambda: lane.children().keys() == rendered(observed), 10, what="every child")

    cluster.delete("voicelane", lane.name)

    wait_until(lambda: not lane.children(), cluster.change_timeout_s, what="the children to be garbage-collected")
    assert lane.get() is None
