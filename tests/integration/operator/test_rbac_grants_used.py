"""Every grant of the operator's role is used: a grant nothing needs is a privilege given for nothing.

test_rbac_usage.py shows that the role grants every request the operator makes; this shows the
converse. One lane is taken through everything the code can do to each kind of child, counted by
the emulator: an object already in the way of each child (not labelled, so the list misses it: the
create meets AlreadyExists, the operator reads the object and adopts it), and a stale object of
each kind that the lane controls but no longer renders (deleted). Then the lane is deleted, which
kopf answers by patching its finalizer away. The one grant no request uses is documented in
operator/rbac.py: `update` on voicelanes/finalizers, which the API server's admission checks for
the children's blockOwnerDeletion.

Requests are counted by the emulator, so on a real cluster this test is skipped.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.operator.convergence import OPERATOR_AGENTS, wait_converged
from tests.integration.operator.harness import LANE_LABEL, Cluster, Lane, wait_until
from voicelane.operator.apply import CHILD_RESOURCES
from voicelane.operator.cli import PLACEHOLDER_UID
from voicelane.operator.rbac import RULES
from voicelane.operator.render import owner_reference, render_children

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]

NO_REQUEST = {("voicelane.dev", "voicelanes/finalizers", "update")}  # an admission check, see operator/rbac.py


def in_the_way(child: dict[str, Any]) -> dict[str, Any]:
    """An object with the child's kind and name, made by someone else: no labels, no owner."""
    return {"apiVersion": child["apiVersion"], "kind": child["kind"], "metadata": {"name": child["metadata"]["name"]}}


def test_every_grant_of_the_role_is_used_by_the_operator(cluster: Cluster, lane: Lane) -> None:
    if not cluster.emulated:
        pytest.skip("requests are counted by the emulator")
    rendered = render_children({**lane.manifest(), "metadata": {**lane.manifest()["metadata"], "uid": PLACEHOLDER_UID}})
    assert {child["kind"] for child in rendered} == {resource.kind for resource in CHILD_RESOURCES}
    cluster.apply(*(in_the_way(child) for child in rendered))

    lane.create()
    observed = wait_converged(lane, cluster.change_timeout_s, context="after adopting the objects in its way")
    owner = owner_reference(lane.name, observed["metadata"]["uid"])
    stale = [
        {
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": {
                "name": f"{lane.name}-stale-{resource.plural}",
                "labels": {LANE_LABEL: lane.name},
                "ownerReferences": [owner],
            },
        }
        for resource in CHILD_RESOURCES
    ]
    cluster.apply(*stale)
    wait_converged(lane, cluster.change_timeout_s, context="after deleting the stale children")

    cluster.delete("voicelane", lane.name)
    wait_until(lambda: lane.get() is None, cluster.change_timeout_s, what="the lane's finalizer released")

    granted = {(rule.api_group, resource, verb) for rule in RULES for resource in rule.resources for verb in rule.verbs}
    used = {(u["group"], u["resource"], u["verb"]) for u in cluster.usage() if u["agent"] in OPERATOR_AGENTS}
    assert granted - used - NO_REQUEST == set(), "granted, but the operator never needed it"
    assert granted >= NO_REQUEST
