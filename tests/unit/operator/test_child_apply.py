"""Deciding a child's apply: apply what changed or drifted, leave the rest without a request, refuse others'."""

from __future__ import annotations

import copy
from typing import Any

from voicelane.operator.apply import (
    FIELD_MANAGER,
    LEGACY_APPLIED_FIELDS_ANNOTATION,
    LEGACY_FIELD_MANAGER,
    Applied,
    Verb,
    field_paths,
    is_controller_conflict,
    legacy_upgrade,
    plan_child,
    plan_children,
)
from voicelane.operator.render import ANNOTATION_SPEC_HASH, spec_hash

OWNER = "uid-of-the-lane"
OURS = {
    "f:metadata": {"f:annotations": {"f:voicelane.dev/spec-hash": {}}, "f:labels": {"f:voicelane.dev/lane": {}}},
    "f:spec": {
        "f:replicas": {},
        "f:template": {"f:spec": {"f:containers": {'k:{"name":"ollama"}': {".": {}, "f:image": {}, "f:name": {}}}}},
    },
}


def deployment(replicas: int = 1) -> dict[str, Any]:
    """A rendered Deployment: its spec hash annotation is the digest of the rest, as render.py writes it."""
    child: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "lane-fast",
            "namespace": "voice",
            "labels": {"voicelane.dev/lane": "lane"},
            "ownerReferences": [{"kind": "VoiceLane", "name": "lane", "uid": OWNER, "controller": True}],
        },
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "ollama", "image": "ollama"}]}}},
    }
    child["metadata"]["annotations"] = {ANNOTATION_SPEC_HASH: spec_hash(child)}
    return child


def entry(manager: str, fields: dict[str, Any], operation: str = "Update", **more: str) -> dict[str, Any]:
    return {"manager": manager, "operation": operation, "apiVersion": "apps/v1", "fieldsType": "FieldsV1"} | {
        "fieldsV1": fields,
        **more,
    }


def stored(desired: dict[str, Any], *managed: dict[str, Any]) -> dict[str, Any]:
    """What the API server holds after applying `desired`: server fields, and who manages what."""
    live = copy.deepcopy(desired)
    live["metadata"].update(uid="child-uid", resourceVersion="7")
    live["metadata"]["managedFields"] = list(managed) or [entry(FIELD_MANAGER, OURS, "Apply")]
    live["spec"]["strategy"] = {"type": "RollingUpdate"}
    live["status"] = {"readyReplicas": 1}
    return live


def remembered(desired: dict[str, Any], fields: dict[str, Any] = OURS) -> Applied:
    return Applied.remember("child-uid", desired["metadata"]["annotations"][ANNOTATION_SPEC_HASH], fields)


def test_a_missing_child_is_created_from_the_rendering_as_is() -> None:
    step = plan_child(deployment(), None, owner_uid=OWNER, applied=None)

    assert (step.verb, step.body) == (Verb.CREATE, deployment())


def test_a_child_the_lane_label_did_not_list_is_applied_without_a_read_first() -> None:
    [step] = plan_children([deployment()], [], owner_uid=OWNER, applied={})

    assert (step.verb, step.body) == (Verb.CREATE, deployment())


def test_an_apply_refused_for_a_second_controller_is_a_conflict_and_other_refusals_are_not() -> None:
    second_controller = (
        'Deployment.apps "voice-fast" is invalid: metadata.ownerReferences: Invalid value: []v1.OwnerReference{…}: '
        'Only one reference can have Controller set to true. Found "true" in references for VoiceLane/voice and '
        "ReplicaSet/other"
    )
    assert is_controller_conflict(422, second_controller)
    assert not is_controller_conflict(422, 'Deployment.apps "voice-fast" is invalid: spec.replicas: Invalid value')
    assert not is_controller_conflict(409, second_controller)


def test_an_unchanged_child_still_owning_what_it_was_applied_with_needs_no_request() -> None:
    desired = deployment()

    assert plan_child(desired, stored(desired), owner_uid=OWNER, applied=remembered(desired)).verb == Verb.KEEP


def test_a_changed_rendering_is_applied() -> None:
    live = stored(deployment(replicas=1))
    desired = deployment(replicas=3)

    step = plan_child(desired, live, owner_uid=OWNER, applied=remembered(deployment(replicas=1)))

    assert (step.verb, step.body) == (Verb.APPLY, desired)


def test_a_field_someone_else_took_over_is_applied_back_and_named() -> None:
    desired = deployment()
    taken = copy.deepcopy(OURS)
    del taken["f:spec"]["f:replicas"]
    live = stored(desired, entry(FIELD_MANAGER, taken, "Apply"), entry("kubectl", {"f:spec": {"f:replicas": {}}}))

    step = plan_child(desired, live, owner_uid=OWNER, applied=remembered(desired))

    assert (step.verb, step.changed) == (Verb.APPLY, ("spec.replicas",))


def test_a_container_field_taken_over_is_named_by_the_container() -> None:
    desired = deployment()
    taken = copy.deepcopy(OURS)
    del taken["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"ollama"}']["f:image"]
    live = stored(desired, entry(FIELD_MANAGER, taken, "Apply"))

    step = plan_child(desired, live, owner_uid=OWNER, applied=remembered(desired))

    assert step.changed == ("spec.template.spec.containers[name=ollama].image",)


def test_without_a_memory_of_the_last_apply_a_dry_run_decides() -> None:
    desired = deployment()
    recreated = Applied.remember("uid-of-an-earlier-object", remembered(desired).spec_hash, OURS)

    assert plan_child(desired, stored(desired), owner_uid=OWNER, applied=None).verb == Verb.DRY_RUN
    assert plan_child(desired, stored(desired), owner_uid=OWNER, applied=recreated).verb == Verb.DRY_RUN


def test_other_managers_fields_are_no_reason_to_write() -> None:
    desired = deployment()
    others = entry("kubectl-annotate", {"f:metadata": {"f:annotations": {"f:team": {}}}})
    live = stored(desired, entry(FIELD_MANAGER, OURS, "Apply"), others)
    live["metadata"]["annotations"]["team"] = "voice"

    assert plan_child(desired, live, owner_uid=OWNER, applied=remembered(desired)).verb == Verb.KEEP


def test_a_name_taken_by_another_controller_is_a_conflict_not_a_takeover() -> None:
    live = stored(deployment())
    live["metadata"]["ownerReferences"] = [{"kind": "Something", "name": "x", "uid": "other", "controller": True}]

    step = plan_child(deployment(), live, owner_uid=OWNER, applied=None)

    assert step.verb == Verb.CONFLICT
    assert "another owner" in step.message


def test_an_object_in_the_way_that_no_one_controls_is_taken_over() -> None:
    in_the_way = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "lane-fast", "uid": "x"}}

    assert plan_child(deployment(), in_the_way, owner_uid=OWNER, applied=None).verb == Verb.APPLY


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
    desired = deployment()
    applied = {("Deployment", "voice", "lane-fast"): remembered(desired)}

    steps = plan_children([desired], [stored(desired), budget, stranger], owner_uid=OWNER, applied=applied)

    assert [(step.verb, step.title) for step in steps] == [
        (Verb.KEEP, "Deployment/lane-fast"),
        (Verb.DELETE, "PodDisruptionBudget/lane-fast"),
    ]


def legacy_child() -> dict[str, Any]:
    """A child an operator before server-side apply wrote: merge patches by the client's default manager."""
    old_fields = copy.deepcopy(OURS)
    old_fields["f:metadata"]["f:annotations"][f"f:{LEGACY_APPLIED_FIELDS_ANNOTATION}"] = {}
    old_fields["f:spec"]["f:paused"] = {}  # set by the old operator, rendered no more
    status = entry("kube-controller-manager", {"f:status": {"f:readyReplicas": {}}}, subresource="status")
    live = stored(deployment(), entry(LEGACY_FIELD_MANAGER, old_fields), status)
    live["metadata"]["annotations"][LEGACY_APPLIED_FIELDS_ANNOTATION] = '{"spec":{"replicas":0}}'
    return live


def test_a_child_of_an_older_operator_is_upgraded_before_anything_else() -> None:
    step = plan_child(deployment(), legacy_child(), owner_uid=OWNER, applied=None)

    assert step.verb == Verb.UPGRADE


def test_the_upgrade_drops_the_old_annotation_and_hands_the_old_fields_to_the_apply_manager() -> None:
    patch = legacy_upgrade(legacy_child())

    assert patch is not None
    metadata = patch["metadata"]
    assert metadata["resourceVersion"] == "7"  # refused if the child changed meanwhile
    assert metadata["annotations"] == {LEGACY_APPLIED_FIELDS_ANNOTATION: None}
    managers = [(e["manager"], e["operation"], e.get("subresource")) for e in metadata["managedFields"]]
    assert managers == [("kube-controller-manager", "Update", "status"), (FIELD_MANAGER, "Apply", None)]
    ours = metadata["managedFields"][-1]["fieldsV1"]
    assert "f:paused" in ours["f:spec"]  # so the next apply, which lacks it, removes it
    assert f"f:{LEGACY_APPLIED_FIELDS_ANNOTATION}" not in ours["f:metadata"]["f:annotations"]


def test_a_child_without_the_old_annotation_needs_no_upgrade() -> None:
    assert legacy_upgrade(stored(deployment())) is None


def test_field_paths_read_like_the_object() -> None:
    fields = {
        "f:data": {"f:sidecar.yaml": {}},
        "f:spec": {"f:ports": {'k:{"port":80,"protocol":"TCP"}': {".": {}, "f:port": {}}}},
    }

    assert field_paths(fields) == (
        "data.sidecar.yaml",
        "spec.ports[port=80,protocol=TCP]",
        "spec.ports[port=80,protocol=TCP].port",
    )
