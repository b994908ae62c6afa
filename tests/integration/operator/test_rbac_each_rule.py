"""No rule of the operator's role can be dropped: without any one of them, a user sees the lane fail.

For each rule of operator/rbac.py (rendered into manifests/rbac/role.yaml), a fresh ServiceAccount
is bound to the role less that one rule, an operator runs with its token in a namespace of its own
(as a replica electing a leader, `--peering`, for the rule of kopf's peering objects), and a lane is
created there. The API server's RBAC authorizer (and, for the finalizers rule, its
OwnerReferencesPermissionEnforcement admission) refuses what the rule guards: the operator's log
shows the refusal, and the user sees what the rule is for go missing (no status, no children of a
kind, no Events). test_rbac_usage.py shows the converse: the whole role suffices.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.operator.convergence import problems
from tests.integration.operator.harness import (
    Cluster,
    Lane,
    OperatorProcess,
    condition,
    shipped_role_rules,
    wait_until,
)
from tests.support.kube import KubeTarget
from voicelane.operator import peering
from voicelane.operator.apply import CHILD_RESOURCES
from voicelane.operator.rbac import RULES, Rule
from voicelane.processes import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]

Body = dict[str, Any]


def rule_id(rule: Rule) -> str:
    return f"{rule.api_group or 'core'}:{'+'.join(rule.resources)}"


@dataclasses.dataclass
class Scene:
    """A lane served by an operator whose role lacks one rule."""

    cluster: Cluster
    operator: OperatorProcess
    lane: Lane
    missing: Rule

    def refusal_seen(self) -> bool:
        """Whether the API server's refusal of something this rule grants shows, in the operator's log
        or on the lane (its Degraded condition, where the reconciler reports a refused write)."""
        said = self.operator.log() + condition(self.lane.get(), "Degraded").get("message", "")
        if self.missing.resources[0].endswith("/finalizers"):
            # The admission plugin's words: the operator cannot set blockOwnerDeletion on its children.
            return "cannot set blockOwnerDeletion" in said
        refused = {m.group(1) for m in re.finditer(r'cannot \w+ resource \\*"([\w/.-]+)\\*"', said)}
        return any(resource in refused for resource in self.missing.resources)

    def children_of(self, kinds: set[str]) -> list[str]:
        return [f"{kind}/{name}" for (kind, name) in self.lane.children() if kind in kinds]


def no_status_and_no_finalizer(scene: Scene) -> None:
    lane = scene.lane.get()
    assert lane is not None
    assert not lane.get("status"), "a status was written"
    assert not lane["metadata"].get("finalizers"), "the operator put its finalizer on the lane"
    assert scene.lane.children() == {}


def no_status(scene: Scene) -> None:
    lane = scene.lane.get()
    assert lane is not None
    assert (lane.get("status") or {}).get("observedGeneration") is None, "a status was written"


def children_missing(kinds: set[str]) -> Callable[[Scene], None]:
    def check(scene: Scene) -> None:
        assert scene.children_of(kinds) == [], f"children of {kinds} were made"
        assert scene.lane.having("Ready") is None, "the lane turned Ready"

    return check


def owned_children_refused(scene: Scene) -> None:
    assert scene.lane.children() == {}, "children were made"
    assert scene.lane.having("Ready") is None, "the lane turned Ready"


def no_events(scene: Scene) -> None:
    # Everything else works: the lane converges and turns Ready, but nothing about it is told.
    converged = wait_until(
        lambda: not problems(lane := scene.lane.get(), list(scene.lane.children().values())) and lane,
        scene.cluster.change_timeout_s,
        what="the lane to converge",
    )
    assert condition(converged, "Degraded").get("status") != "True"
    assert scene.cluster.events_about(scene.lane.name) == []


def symptom(rule: Rule) -> Callable[[Scene], None]:
    """What a user sees go missing without `rule`."""
    resource = rule.resources[0]
    if resource == "voicelanes" or rule.api_group == peering.GROUP:
        # Without its peering object a replica never leads: it stays paused and reconciles nothing.
        return no_status_and_no_finalizer
    if resource == "voicelanes/status":
        return no_status
    if resource == "voicelanes/finalizers":
        return owned_children_refused
    if resource == "events":
        return no_events
    return children_missing({child.kind for child in CHILD_RESOURCES if child.plural in rule.resources})


def test_the_shipped_role_is_the_rules_of_operator_rbac() -> None:
    assert shipped_role_rules() == [rule.as_policy_rule() for rule in RULES]


@pytest.fixture
def scene(request: pytest.FixtureRequest, cluster: Cluster, operator_logs: Path) -> Iterator[Scene]:
    missing: Rule = request.param
    namespace = f"voicelane-rbac-{secrets.token_hex(3)}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    confined = dataclasses.replace(cluster, namespace=namespace)
    log_dir = operator_logs / namespace
    log_dir.mkdir()
    rules = [rule for rule in shipped_role_rules() if rule != missing.as_policy_rule()]
    assert len(rules) == len(RULES) - 1
    kubeconfig = confined.service_account_kubeconfig("operator-less-one-rule", rules, log_dir / "kubeconfig")
    # The peering rule is used by replicas electing a leader, so that operator runs as one of them.
    elected = (f"--peering=voicelane-{namespace}",) if missing.api_group == peering.GROUP else ()
    operator = OperatorProcess(
        confined,
        log_dir,
        metrics_port=free_port(),
        liveness_port=free_port(),
        kubeconfig=kubeconfig,
        extra_args=elected,
    )
    operator.start()
    lane = Lane(confined, f"lane-{secrets.token_hex(3)}")
    try:
        yield Scene(confined, operator, lane, missing)
    finally:
        operator.stop()
        # The crippled operator may be unable to release its finalizer: the test lets the lane go.
        confined.kubectl(
            "patch", "voicelane", lane.name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False
        )
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        confined.remove_session_objects()


@pytest.mark.parametrize("scene", RULES, ids=[rule_id(rule) for rule in RULES], indirect=True)
def test_without_the_rule_the_lane_visibly_fails(scene: Scene, kube: KubeTarget) -> None:
    if scene.missing.resources[0].endswith("/finalizers") and kube.local is None:
        pytest.skip(
            "only the OwnerReferencesPermissionEnforcement admission plugin needs this rule; "
            "whether this cluster runs it is unknown"
        )

    scene.lane.create()

    wait_until(scene.refusal_seen, scene.cluster.change_timeout_s, what=f"a refusal of {rule_id(scene.missing)}")
    symptom(scene.missing)(scene)
    assert scene.operator.alive()
