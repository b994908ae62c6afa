"""API requests that get no answer in time fail, are retried with backoff, and the lane converges.

The operator here runs with `--api-timeout 1` in a namespace of its own; the fault proxy stalls
chosen requests in that namespace for longer than that (`delay_s`), and a stalled write whose client
gave up is never forwarded, as when it never reached the API server. Every request type the operator
makes for a lane times out somewhere: kopf's own patch of the lane (its finalizer), the reconciler's
applies of children, its status write, its read of the lane, kopf's Event post. Afterwards the lane
has converged with each child exactly once. A stall that lasts for many seconds is retried with a
growing delay, not hammered, and the lane converges soon after it ends.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.operator.convergence import wait_converged
from tests.integration.operator.harness import Cluster, Lane, OperatorProcess
from voicelane.processes import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]

API_TIMEOUT_S = 1.0
STALL_S = 3.0  # beyond API_TIMEOUT_S: every stalled request times out
ERRORS = "voicelane_operator_reconcile_errors_total"


@pytest.fixture(scope="module")
def impatient_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """A namespace of this module's own, so that its faults strike no other operator."""
    namespace = f"voicelane-timeouts-{secrets.token_hex(3)}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        yield dataclasses.replace(cluster, namespace=namespace)
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def impatient_operator(impatient_cluster: Cluster, operator_logs: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        impatient_cluster,
        operator_logs / f"timeouts-{secrets.token_hex(3)}",
        metrics_port=free_port(),
        liveness_port=free_port(),
        extra_args=(f"--api-timeout={API_TIMEOUT_S}",),
    )
    process.log_dir.mkdir(parents=True)
    process.start()
    try:
        yield process
    finally:
        if process.alive():  # lanes carry the operator's finalizer: let it release them first
            impatient_cluster.kubectl("delete", "voicelanes", "--all", "--wait=true", "--timeout=60s", check=False)
        process.stop()


@pytest.fixture
def lane(impatient_cluster: Cluster, impatient_operator: OperatorProcess) -> Iterator[Lane]:
    subject = Lane(impatient_cluster, f"lane-{secrets.token_hex(3)}")
    try:
        yield subject
    finally:
        impatient_cluster.clear_faults()
        impatient_cluster.delete("voicelane", subject.name)


def stall(
    cluster: Cluster,
    verb: str,
    resource: str,
    *,
    times: int | None,
    subresource: str | None = None,
    name: str | None = None,
) -> None:
    cluster.inject_fault(
        verb=verb,
        resource=resource,
        subresource=subresource,
        name=name,
        namespace=cluster.namespace,
        delay_s=STALL_S,
        times=times,
    )


def test_requests_that_time_out_are_retried_until_the_lane_converges(
    impatient_cluster: Cluster, impatient_operator: OperatorProcess, lane: Lane
) -> None:
    cluster, operator = impatient_cluster, impatient_operator
    stall(cluster, "patch", "voicelanes", subresource="", times=1)  # the first patch of a new lane: kopf's finalizer
    stall(cluster, "patch", "services", times=1)  # children are created by server-side apply
    stall(cluster, "patch", "deployments", times=1)
    stall(cluster, "patch", "voicelanes", subresource="status", times=1)
    stall(cluster, "create", "events", times=1)
    errors = operator.metric(ERRORS)

    lane.create()

    observed = wait_converged(lane, 60, context="after the timeouts")
    assert observed["metadata"]["generation"] == 1
    assert cluster.fault_hits() == 5, "every stalled request was made, and timed out"
    # The reconciler's own writes that timed out failed reconciles, which were retried: the Service and
    # the Deployment in one (a lane's children are written at once), the status in another.
    assert operator.metric(ERRORS) - errors >= 2
    assert operator.alive()

    stall(cluster, "get", "voicelanes", times=1)  # the reconciler reads the lane first
    cluster.delete("service", f"{lane.name}-fast")
    wait_converged(lane, 30, context="after a timed-out read of the lane")
    assert cluster.fault_hits() == 6


def test_a_stall_that_lasts_is_retried_with_growing_delays_and_converges_when_it_ends(
    impatient_cluster: Cluster, impatient_operator: OperatorProcess, lane: Lane
) -> None:
    cluster = impatient_cluster
    # One Deployment only: each reconcile writes a lane's children at once, so this counts reconciles.
    stall(cluster, "patch", "deployments", name=f"{lane.name}-fast", times=None)

    lane.create()
    time.sleep(9.0)  # the stall lasts this long: a real outage, not a clock to inject
    attempts = cluster.fault_hits()
    cluster.clear_faults()

    # Retried after 0.5, 1, 2, 4 s (each after a 1 s timeout): 4 attempts in 9 s, and fewer on a
    # slow machine. Retried at once or at a fixed short delay it would have been 6 to 9.
    assert 2 <= attempts <= 5, f"{attempts} attempts to create a Deployment in 9 s"
    wait_converged(lane, 40, context="after the stall ended")
