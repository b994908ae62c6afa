"""An operator killed in the middle of a reconcile finishes the job after a restart."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.integration.operator.harness import Cluster, Lane, OperatorProcess, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]


def test_an_operator_killed_mid_reconcile_converges_after_restart(
    cluster: Cluster, operator: OperatorProcess, lane: Lane
) -> None:
    # Stall the second child's creation (a server-side apply) so the kill lands mid-reconcile for sure.
    cluster.inject_fault(verb="patch", resource="networkpolicies", delay_s=3, times=1)
    lane.create()
    wait_until(lambda: ("ConfigMap", f"{lane.name}-sidecar") in lane.children(), 15, what="the first child")

    operator.kill()

    assert ("NetworkPolicy", f"{lane.name}-ollama") not in lane.children()
    # Changed while no operator runs: the restarted one must apply this generation, not the first.
    cluster.patch("voicelane", lane.name, {"spec": {"fast": {"model": "qwen2.5:1.5b"}}})
    operator.start()

    observed = wait_until(lane.observed, cluster.change_timeout_s, what="a status for generation 2")
    assert observed["metadata"]["generation"] == 2
    children = wait_until(lambda: len(found := lane.children()) == 8 and found, 10, what="8 children")
    for child in children.values():
        assert [ref["uid"] for ref in child["metadata"]["ownerReferences"]] == [observed["metadata"]["uid"]]
    assert "qwen2.5:1.5b" in json.dumps(children[("Deployment", f"{lane.name}-fast")]["spec"]["template"])


def test_the_operator_serves_metrics_and_health_probes(cluster: Cluster, operator: OperatorProcess, lane: Lane) -> None:
    lane.create()
    wait_until(lane.observed, cluster.change_timeout_s, what="a status for generation 1")

    assert operator.metric('voicelane_operator_reconciles_total{result="applied"}') >= 1
    assert operator.metric("voicelane_operator_reconcile_duration_seconds_count") >= 1
    assert '"ok": true' in operator.get("/healthz")
    assert '"ready": true' in operator.get("/readyz")
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=10) as kopf_probe:
        assert kopf_probe.status == 200


def test_a_lane_deleted_while_the_operator_is_down_is_released_when_it_starts(
    cluster: Cluster, operator: OperatorProcess, lane: Lane
) -> None:
    lane.create()
    wait_until(lambda: len(lane.children()) == 8, cluster.change_timeout_s, what="the sample's 8 children")
    operator.stop()

    cluster.delete("voicelane", lane.name, wait=False)
    held = lane.get()
    assert held is not None, "the finalizer should hold the lane"
    assert held["metadata"].get("deletionTimestamp")

    operator.start()

    wait_until(lambda: lane.get() is None, cluster.change_timeout_s, what="the finalizer released")
    # The garbage collector takes the children through their ownerReferences.
    wait_until(lambda: lane.children() == {}, 90, what="the children collected")
