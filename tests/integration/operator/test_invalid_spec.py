"""A spec the renderer refuses is reported on the lane, not retried in a loop; fixing it recovers.

The API server refuses such a spec itself, so a lane can only hold one when it was stored before the
CRD's rules tightened (an older CRD, then an upgrade): the test stores it under a CRD without the rule,
then puts the shipped CRD back, as an upgrade would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from tests.integration.operator.harness import CRD_DIR, Cluster, Lane, OperatorProcess, wait_until
from voicelane.operator.api import CRD_NAME

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]

INVALID = {"policy": {"rateLimit": {"burst": 2, "sustainedPerSecond": 4}}}  # burst below the refill rate


RATE_LIMIT_RULES = (
    "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/policy/properties/rateLimit"
    "/x-kubernetes-validations"
)


@pytest.fixture
def older_crd(cluster: Cluster) -> Iterator[None]:
    """The CRD as it was before the rate limit's rule; the shipped one is put back afterwards."""
    refused = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        stdin=yaml.safe_dump(Lane(cluster, "probe").manifest(**INVALID)),
        check=False,
    )
    assert "burst" in refused.stderr, "the shipped CRD should refuse the spec by itself"
    cluster.kubectl(
        "patch", "crd", CRD_NAME, "--type=json", "-p", json.dumps([{"op": "remove", "path": RATE_LIMIT_RULES}])
    )
    try:
        yield
    finally:
        cluster.kubectl("apply", "-f", str(CRD_DIR))


def test_an_invalid_spec_gets_a_condition_and_an_event_and_no_children(
    cluster: Cluster, operator: OperatorProcess, lane: Lane, older_crd: None
) -> None:
    wait_until(
        lambda: (
            cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(lane.manifest(**INVALID)), check=False).returncode
            == 0
        ),
        cluster.change_timeout_s,
        what="the lane stored under the older CRD",
    )

    degraded = wait_until(
        lambda: (found := lane.condition("Degraded")).get("reason") == "InvalidSpec" and found,
        cluster.change_timeout_s,
        what="Degraded=InvalidSpec",
    )
    assert degraded["status"] == "True"
    assert "spec.policy.rateLimit" in degraded["message"]
    ready = lane.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    wait_until(lambda: "InvalidSpec" in lane.event_reasons(), 10, what="an InvalidSpec event")
    assert lane.children() == {}
    assert operator.alive()

    cluster.patch("voicelane", lane.name, {"spec": {"policy": {"rateLimit": {"burst": 8}}}})

    wait_until(lambda: len(lane.children()) == 8, cluster.change_timeout_s, what="the children of the fixed spec")
    wait_until(
        lambda: lane.condition("Degraded").get("status") == "False",
        cluster.change_timeout_s,
        what="Degraded=False",
    )
