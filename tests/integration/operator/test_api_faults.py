"""API trouble (server errors, conflicts, dropped watches) delays a lane but never breaks it."""

from __future__ import annotations

import pytest

from tests.integration.operator.harness import Cluster, Lane, OperatorProcess, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]


def test_failed_writes_and_dropped_watches_are_retried_until_the_lane_converges(
    cluster: Cluster, operator: OperatorProcess, lane: Lane
) -> None:
    cluster.inject_fault(verb="patch", resource="deployments", status=500, times=2)  # applies
    cluster.inject_fault(verb="patch", resource="voicelanes", subresource="status", status=409, times=1)
    cluster.inject_fault(verb="watch", resource="voicelanes", status=410, times=1)  # "too old": relist
    cluster.inject_fault(verb="watch", resource="deployments", status=500, times=2)
    cluster.drop_watches()

    lane.create()

    observed = wait_until(lane.observed, cluster.change_timeout_s, what="a status despite the faults")
    wait_until(lambda: len(lane.children()) == 8, 10, what="all 8 children")
    assert observed["status"]["fast"]["model"] == observed["spec"]["fast"]["model"]
    assert operator.metric("voicelane_operator_reconcile_errors_total") >= 1
    assert operator.alive()

    cluster.drop_watches()
    cluster.delete("service", f"{lane.name}-deep")
    wait_until(lambda: cluster.get("service", f"{lane.name}-deep"), cluster.change_timeout_s, what="a watch again")
