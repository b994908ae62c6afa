"""Planning a child's apply: create what is missing, patch only what differs, remove what we dropped."""

from __future__ import annotations

import copy
from typing import Any

from tests.support.kube_emulator import merge_patch
from voicelane.operator.apply import (
    APPLIED_FIELDS_ANNOTATION,
    Verb,
    plan_child,
    plan_children,
    with_applied_fields,
)

OWNER = "uid-of-the-lane"


def deployment(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "lane-fast",
            "namespace": "voice",
            "labels": {"voicelane.dev/lane": "lane", "voicelane.dev/tier": "fast"},
            "ownerReferences": [{"kind": "VoiceLane", "name": "lane", "uid": OWNER, "controller": True}],
        },
        "spec": {
            "replicas": 1,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "ollama", "image": "ollama/ollama:0.24.0", "resources": {"limits": {"cpu": "2"}}}
                    ]
                }
            },
            **spec,
        },
    }


def as_stored(desired: dict[str, Any]) -> dict[str, Any]:
    """What an API server returns after creating it: server fields and defaults added."""
    stored = copy.deepcopy(with_applied_fields(desired))
    stored["metadata"].update(uid="child-uid", resourceVersion="7", creationTimestamp="2025-01-01T00:00:00Z")
    stored["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    stored["spec"]["strategy"] = {"type": "RollingUpdate"}
    container = stored["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"
    stored["status"] = {"readyReplicas": 1}
    return stored


def test_a_missing_child_is_created_with_the_fields_it_sets_recorded() -> None:
    step = plan_child(deployment(), None, owner_uid=OWNER)

    assert step.verb == Verb.CREATE
    assert step.body is not None
    assert step.body["spec"]["replicas"] == 1
    assert '"replicas":0' in step.body["metadata"]["annotations"][APPLIED_FIELDS_ANNOTATION]


def test_server_defaults_and_others_annotations_are_no_reason_to_write() -> None:
    assert plan_child(deployment(), as_stored(deployment()), owner_uid=OWNER).verb == Verb.KEEP


def test_a_quantity_in_canonical_form_counts_as_the_same() -> None:
    desired = deployment()
    desired["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "0.5", "memory": "1Gi"}}
    live = as_stored(desired)
    live["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "500m", "memory": "1024Mi"}}

    assert plan_child(desired, live, owner_uid=OWNER).verb == Verb.KEEP


def test_a_changed_field_is_patched_alone() -> None:
    live = as_stored(deployment())

    step = plan_child(deployment(replicas=3), live, owner_uid=OWNER)

    assert step.verb == Verb.PATCH
    assert step.body == {"spec": {"replicas": 3}}
    assert step.changed == ("spec.replicas",)


def test_a_hand_edit_of_a_list_puts_the_whole_list_back() -> None:
    live = as_stored(deployment())
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "ollama/ollama:edited"

    step = plan_child(deployment(), live, owner_uid=OWNER)

    assert step.verb == Verb.PATCH
    assert step.body is not None
    assert step.body["spec"]["template"]["spec"]["containers"][0]["image"] == "ollama/ollama:0.24.0"


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def test_a_field_no_longer_wanted_is_removed_but_others_fields_stay() -> None:
    before, after = deployment(), deployment()
    pod_spec(before)["nodeSelector"] = {"disk": "ssd", "zone": "a"}
    pod_spec(after)["nodeSelector"] = {"zone": "a"}
    live = as_stored(before)
    pod_spec(live)["nodeSelector"]["added-by-someone"] = "x"

    step = plan_child(after, live, owner_uid=OWNER)

    assert step.verb == Verb.PATCH
    assert step.body is not None
    assert step.body["spec"]["template"]["spec"]["nodeSelector"] == {"disk": None}


def test_applying_a_planned_patch_leaves_nothing_to_do() -> None:
    before = deployment()
    pod_spec(before)["nodeSelector"] = {"disk": "ssd"}
    live = as_stored(before)
    live["spec"]["replicas"] = 9
    desired = deployment(replicas=2)
    pod_spec(desired)["priorityClassName"] = "voice"

    step = plan_child(desired, live, owner_uid=OWNER)
    assert step.body is not None
    patched = merge_patch(live, step.body)

    assert plan_child(desired, patched, owner_uid=OWNER).verb == Verb.KEEP
    assert pod_spec(patched).get("nodeSelector") == {}
    assert (patched["spec"]["replicas"], pod_spec(patched)["priorityClassName"]) == (2, "voice")


def test_a_name_taken_by_another_controller_is_a_conflict_not_a_takeover() -> None:
    live = as_stored(deployment())
    live["metadata"]["ownerReferences"] = [{"kind": "Something", "name": "x", "uid": "other", "controller": True}]

    step = plan_child(deployment(), live, owner_uid=OWNER)

    assert step.verb == Verb.CONFLICT
    assert "another owner" in step.message


def test_children_no_longer_rendered_are_deleted_only_when_this_lane_controls_them() -> None:
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": "lane-fast",
            "namespace": "voice",
            "ownerReferences": [{"uid": OWNER, "controller": True}],
        },
    }
    stranger = copy.deepcopy(budget)
    stranger["metadata"].update(name="not-ours", ownerReferences=[{"uid": "other", "controller": True}])

    steps = plan_children([deployment()], [as_stored(deployment()), budget, stranger], owner_uid=OWNER)

    assert [(step.verb, step.title) for step in steps] == [
        (Verb.KEEP, "Deployment/lane-fast"),
        (Verb.DELETE, "PodDisruptionBudget/lane-fast"),
    ]


def test_an_empty_map_or_list_the_server_dropped_is_no_difference() -> None:
    desired = deployment()
    pod_spec(desired)["nodeSelector"] = {}
    pod_spec(desired)["tolerations"] = []
    live = as_stored(desired)
    del pod_spec(live)["nodeSelector"], pod_spec(live)["tolerations"]  # the API server omits empty fields

    assert plan_child(desired, live, owner_uid=OWNER).verb == Verb.KEEP
