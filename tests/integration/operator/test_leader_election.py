"""Two operator replicas against one API server: one leader reconciles, the other takes over when it stops.

Both run `voicelane operator --peering NAME` as the operator's ServiceAccount (bound to the role it
ships with, which grants the peering objects) in a namespace of this module's own, with kopf's peering
CRDs from manifests/crd/. The replica started first leads: a lane created then is reconciled by it
alone (each replica logs the children it writes, "[namespace/lane] created ..."), while the other stays
paused and still answers the injection webhook; the peering object lists both, the first with the
higher priority. When the leader stops, it leaves the peering object, the other resumes, and a lane
created afterwards is reconciled by it. When the leader is killed instead, the other takes over once
the dead one's keep-alive has run out (peering.LIFETIME_S), and reconciles the lane created meanwhile.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.operator.harness import Cluster, Lane, OperatorProcess, wait_until
from voicelane.operator.peering import LIFETIME_S
from voicelane.processes import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

PEERING = "voicelane-test"


def reconciled_by(operator: OperatorProcess, lane: Lane) -> bool:
    return f"[{lane.cluster.namespace}/{lane.name}] created" in operator.log()


@dataclasses.dataclass
class Replica:
    process: OperatorProcess
    webhook_port: int
    ca_file: Path


@pytest.fixture
def peers(
    cluster: Cluster, operator_logs: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Cluster, Replica, Replica]]:
    namespace = f"voicelane-peers-{secrets.token_hex(3)}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    confined = dataclasses.replace(cluster, namespace=namespace)
    replicas = []
    for index in (1, 2):
        log_dir = operator_logs / f"{namespace}-{index}"
        log_dir.mkdir()
        port = free_port()
        process = OperatorProcess(
            confined,
            log_dir,
            metrics_port=free_port(),
            liveness_port=free_port(),
            extra_args=(
                f"--peering={PEERING}",
                f"--webhook-listen=127.0.0.1:{port}",
                f"--webhook-ca-out={log_dir / 'ca.pem'}",
            ),
        )
        replicas.append(Replica(process, port, log_dir / "ca.pem"))
    try:
        for index, replica in enumerate(replicas, 1):  # one after the other: the first has run longer, so it leads
            monkeypatch.setenv("POD_ID", f"replica-{index}")  # its name among the peers, as the chart's pods have
            replica.process.start()
        yield confined, replicas[0], replicas[1]
    finally:
        for replica in reversed(replicas):
            if replica.process.alive():
                # Lanes carry the operator's finalizer: let the leader release them before it stops.
                confined.kubectl("delete", "voicelanes", "--all", "--wait=true", "--timeout=60s", check=False)
            replica.process.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def peering_status(cluster: Cluster) -> dict[str, Any]:
    found = cluster.get("kopfpeering", PEERING) or {}
    return dict(found.get("status") or {})


def admission_review(namespace: str) -> bytes:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": namespace, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]},
    }
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0f4c9d3e-1111-4a2b-9c3d-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "userInfo": {"username": "test"},
            "namespace": namespace,
            "object": pod,
        },
    }
    return json.dumps(review).encode()


def webhook_answers(replica: Replica, namespace: str) -> bool:
    context = ssl.create_default_context(cafile=str(replica.ca_file))
    request = urllib.request.Request(
        f"https://127.0.0.1:{replica.webhook_port}/mutate-pods",
        data=admission_review(namespace),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        answer = json.loads(response.read())
    return bool(answer["response"]["allowed"])


def test_one_replica_reconciles_and_the_other_takes_over_when_it_stops(
    peers: tuple[Cluster, Replica, Replica],
) -> None:
    cluster, leader, follower = peers
    peering = wait_until(
        lambda: (found := peering_status(cluster)).keys() == {"replica-1", "replica-2"} and found,
        cluster.change_timeout_s,
        what="both replicas in the peering object",
    )
    assert peering["replica-1"]["priority"] > peering["replica-2"]["priority"]
    assert "Resuming operations" in leader.process.log()  # kopf starts every replica paused

    first = Lane(cluster, f"lane-{secrets.token_hex(3)}")
    first.create()
    wait_until(first.observed, cluster.change_timeout_s, what=f"lane {first.name} to be reconciled")
    assert reconciled_by(leader.process, first)
    assert not reconciled_by(follower.process, first)
    # The follower reconciles nothing, yet serves the webhook.
    assert webhook_answers(follower, cluster.namespace)
    assert webhook_answers(leader, cluster.namespace)

    assert "Resuming operations" not in follower.process.log()

    leader.process.stop()  # a clean stop: it leaves the peering at once
    assert peering_status(cluster).keys() == {"replica-2"}
    wait_until(
        lambda: "Resuming operations after the pause" in follower.process.log(),
        cluster.change_timeout_s,
        what="the second replica to take over",
    )
    second = Lane(cluster, f"lane-{secrets.token_hex(3)}")
    second.create()
    wait_until(second.observed, cluster.change_timeout_s, what=f"lane {second.name} to be reconciled")
    assert reconciled_by(follower.process, second)
    assert not reconciled_by(leader.process, second)


def test_when_the_leader_dies_the_other_takes_over_once_its_keep_alive_runs_out(
    peers: tuple[Cluster, Replica, Replica],
) -> None:
    cluster, leader, follower = peers
    wait_until(
        lambda: peering_status(cluster).keys() == {"replica-1", "replica-2"},
        cluster.change_timeout_s,
        what="both replicas in the peering object",
    )
    leader.process.kill()  # SIGKILL: no goodbye, its keep-alive stays behind
    assert "replica-1" in peering_status(cluster)
    killed_at = time.monotonic()
    lane = Lane(cluster, f"lane-{secrets.token_hex(3)}")
    lane.create()
    wait_until(
        lambda: "Resuming operations after the pause" in follower.process.log(),
        LIFETIME_S + cluster.change_timeout_s,
        what="the second replica to take over from the dead one",
    )
    waited = time.monotonic() - killed_at
    assert waited <= LIFETIME_S + 10, f"took {waited:.0f} s"
    wait_until(lane.observed, cluster.change_timeout_s, what=f"lane {lane.name} to be reconciled")
    assert reconciled_by(follower.process, lane)
    assert "replica-1" not in peering_status(cluster)  # the dead peer is cleaned out
