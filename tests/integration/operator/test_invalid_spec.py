"""A spec the renderer refuses is reported on the lane, not retried in a loop; fixing it recovers."""

from __future__ import annotations

import pytest
import yaml

from tests.integration.operator.harness import Cluster, Lane, OperatorProcess, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]

INVALID = {"policy": {"rateLimit": {"burst": 2, "sustainedPerSecond": 4}}}  # burst below the refill rate


def test_an_invalid_spec_gets_a_condition_and_an_event_and_no_children(
    cluster: Cluster, operator: OperatorProcess, lane: Lane
) -> None:
    applied = cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(lane.manifest(**INVALID)), check=False)
    if applied.returncode != 0:
        assert "burst" in applied.stderr
        pytest.skip("this API server's schema rejects the spec itself, so nothing slips past it to the operator")

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
