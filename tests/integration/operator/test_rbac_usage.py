"""The operator's role grants everything it used against the API (counted by the emulator)."""

from __future__ import annotations

import pytest

from tests.integration.operator.harness import Cluster, Lane, wait_until
from voicelane.operator.rbac import RULES

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]

OPERATOR_CLIENTS = {"kopf", "OpenAPI-Generator"}  # kopf itself, and the kubernetes client for children


def test_every_request_of_the_operator_is_granted_by_its_role(cluster: Cluster, lane: Lane) -> None:
    if not cluster.emulated:
        pytest.skip("requests are counted by the emulator")
    lane.create()
    wait_until(lane.observed, cluster.change_timeout_s, what="a status for generation 1")
    cluster.delete("service", f"{lane.name}-fast")
    wait_until(lambda: cluster.get("service", f"{lane.name}-fast"), cluster.change_timeout_s, what="the Service back")

    granted = {(rule.api_group, resource, verb) for rule in RULES for resource in rule.resources for verb in rule.verbs}
    used = {(u["group"], u["resource"], u["verb"]) for u in cluster.usage() if u["agent"] in OPERATOR_CLIENTS}

    assert used, "the operator made no counted request"
    assert used <= granted, f"used but not granted: {sorted(used - granted)}"
