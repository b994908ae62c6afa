"""The operator's shipped role grants everything the operator does, judged by the API server's RBAC authorizer.

The session's operator runs as a ServiceAccount bound to nothing but the ClusterRole of
manifests/rbac/role.yaml (conftest.py). One lane is taken through everything the code can do to
each kind of child: an object already in the way of each child (not labelled, so the list misses it:
the create meets AlreadyExists, the operator reads the object and takes it over), a stale object of
each kind that the lane controls but no longer renders (deleted), a deleted child (restored), and
finally the lane's deletion, which kopf answers by releasing its finalizer. The API server refuses
none of the operator's requests on the way. test_rbac_each_rule.py shows the converse: no rule of
the role can be dropped.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml

from tests.integration.operator.convergence import OPERATOR_AGENTS, wait_converged
from tests.integration.operator.harness import LABEL_LANE, OPERATOR_ACCOUNT, Cluster, Lane, wait_until
from voicelane.operator.apply import CHILD_RESOURCES
from voicelane.operator.cli import PLACEHOLDER_UID
from voicelane.operator.render import owner_reference, render_children

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]


def in_the_way(child: dict[str, Any]) -> dict[str, Any]:
    """An object with the child's kind and name, made by someone else: no labels, no owner."""
    manifest = {key: value for key, value in child.items() if key != "status"}
    manifest["metadata"] = {"name": child["metadata"]["name"]}
    return manifest


def forbidden_answers(cluster: Cluster) -> dict[str, int]:
    """The operator's requests the API server has refused so far (403), by verb and resource."""
    return {
        f"{usage['verb']} {usage['group']}/{usage['resource']}": usage["codes"]["403"]
        for usage in cluster.usage()
        if usage["agent"] in OPERATOR_AGENTS and usage["codes"].get("403")
    }


def as_operator(cluster: Cluster, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """A request with the operator's own credentials, through the fault proxy."""
    config = yaml.safe_load(cluster.operator_kubeconfig.read_text(encoding="utf-8"))
    token = config["users"][0]["user"]["token"]
    request = urllib.request.Request(
        cluster.proxy_url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_the_operator_runs_as_its_service_account_with_nothing_beyond_its_role(cluster: Cluster) -> None:
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    status, answer = as_operator(cluster, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
    assert status == 201, answer
    assert answer["status"]["userInfo"]["username"] == f"system:serviceaccount:{cluster.namespace}:{OPERATOR_ACCOUNT}"

    status, answer = as_operator(cluster, "GET", f"/api/v1/namespaces/{cluster.namespace}/secrets")
    assert (status, answer["reason"]) == (403, "Forbidden")


def test_every_request_of_a_lane_s_whole_life_is_granted_by_the_role(cluster: Cluster, lane: Lane) -> None:
    refused_before = forbidden_answers(cluster)
    rendered = render_children({**lane.manifest(), "metadata": {**lane.manifest()["metadata"], "uid": PLACEHOLDER_UID}})
    assert {child["kind"] for child in rendered} == {resource.kind for resource in CHILD_RESOURCES}
    cluster.apply(*(in_the_way(child) for child in rendered))

    lane.create()
    observed = wait_converged(lane, cluster.change_timeout_s, context="after taking over the objects in its way")
    owner = owner_reference(lane.name, observed["metadata"]["uid"])
    one_of_each = {child["kind"]: child for child in rendered}
    stale = [
        {
            **in_the_way(one_of_each[resource.kind]),
            "metadata": {
                "name": f"{lane.name}-stale-{resource.plural}",
                "labels": {LABEL_LANE: lane.name},
                "ownerReferences": [owner],
            },
        }
        for resource in CHILD_RESOURCES
    ]
    cluster.apply(*stale)
    wait_converged(lane, cluster.change_timeout_s, context="after deleting the stale children")
    cluster.delete("service", f"{lane.name}-fast")
    wait_converged(lane, cluster.change_timeout_s, context="after restoring a deleted child")

    cluster.delete("voicelane", lane.name)
    wait_until(lambda: lane.get() is None, cluster.change_timeout_s, what="the lane's finalizer released")

    assert forbidden_answers(cluster) == refused_before, "the API server refused requests of the operator"
