"""Two operator replicas against one API server: one leader reconciles, the other takes over when it stops.

Both run `voicelane operator --peering NAME` as the operator's ServiceAccount (bound to the role it
ships with, which grants the peering objects) in a namespace of this module's own, with kopf's peering
CRDs from manifests/crd/. The replica started first leads: a lane created then is reconciled by it
alone (each replica logs the children it writes, "[namespace/lane] created ..."), while the other stays
paused and still answers the injection webhook; the peering object lists both, the first with the
higher priority. When the leader stops, it leaves the peering object, the other resumes, and a lane
created afterwards is reconciled by it. When the leader is killed instead, the other takes over once
the dead one's keep-alive has run out (peering.LIFETIME_S), and reconciles the lane created meanwhile.

The stop-and-take-over case runs twice: with both replicas confined to one namespace (`--namespace`,
a KopfPeering there) and watching every namespace, as the chart starts them when `watchNamespaces` is
empty (no `--namespace`, a ClusterKopfPeering, the role bound cluster-wide), with lanes in two
namespaces. The latter runs only on the local control plane: on a user's cluster (VOICELANE_TEST_KUBECONFIG)
it would reconcile every lane there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.operator.harness import Cluster, Lane, OperatorProcess, wait_until
from tests.support.kube import KubeTarget
from voicelane.operator.peering import LIFETIME_S
from voicelane.processes import ManagedProcess, free_port, voicelane_argv

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

PEERING = "voicelane-test"


def reconciled_by(operator: OperatorProcess, lane: Lane) -> bool:
    return f"[{lane.cluster.namespace}/{lane.name}] created" in operator.log()


@dataclasses.dataclass
class AllNamespacesOperator(OperatorProcess):
    """`voicelane operator` without `--namespace`: it serves every namespace, as the chart's does by default."""

    def start(self) -> None:
        # As OperatorProcess.start, less the --namespace it always confines the operator with.
        self.starts += 1
        argv = voicelane_argv(
            "operator",
            "--kubeconfig",
            str(self.credentials),
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            "--liveness",
            f"http://127.0.0.1:{self.liveness_port}/healthz",
            *self.extra_args,
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "KUBECONFIG": str(self.credentials)}
        self.process = ManagedProcess(argv, self.log_dir / f"operator-{self.starts}.log", env=env).start()
        self.process.wait_http(f"{self.url}/readyz", timeout_s=60)


@dataclasses.dataclass
class Replica:
    process: OperatorProcess
    webhook_port: int
    ca_file: Path


@dataclasses.dataclass
class Peers:
    """Two replicas electing through one peering object, and the namespaces whose lanes they serve."""

    namespaces: list[Cluster]  # the admin's kubectl, one per namespace with lanes
    leader: Replica  # started first
    follower: Replica
    peering_kind: str  # kopfpeering (in each namespace) or clusterkopfpeering
    peering_name: str

    def status(self) -> dict[str, Any]:
        """The replicas' keep-alives in the peering object (the first namespace's, when namespaced)."""
        found = self.namespaces[0].get(self.peering_kind, self.peering_name) or {}
        return dict(found.get("status") or {})


@pytest.fixture
def peers(
    request: pytest.FixtureRequest,
    kube: KubeTarget,
    cluster: Cluster,
    operator_logs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Peers]:
    """Two replicas of one namespace ("namespaced", the default) or of every namespace ("cluster-wide")."""
    cluster_wide = getattr(request, "param", "namespaced") == "cluster-wide"
    if cluster_wide and kube.local is None:
        pytest.skip("replicas serving every namespace would reconcile every VoiceLane of the user's cluster")
    suffix = secrets.token_hex(3)
    names = [f"voicelane-peers-{suffix}-{n}" for n in ("a", "b")] if cluster_wide else [f"voicelane-peers-{suffix}"]
    cluster.apply(*({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}} for name in names))
    namespaces = [dataclasses.replace(cluster, namespace=name) for name in names]
    # A cluster-wide peering object outlives the test's namespaces: a name of its own, deleted below.
    peering_name = f"{PEERING}-{suffix}" if cluster_wide else PEERING
    operator_class = AllNamespacesOperator if cluster_wide else OperatorProcess
    replicas = []
    for index in (1, 2):
        log_dir = operator_logs / f"{names[0]}-{index}"
        log_dir.mkdir()
        port = free_port()
        process = operator_class(
            namespaces[0],
            log_dir,
            metrics_port=free_port(),
            liveness_port=free_port(),
            extra_args=(
                f"--peering={peering_name}",
                f"--webhook-listen=127.0.0.1:{port}",
                f"--webhook-ca-out={log_dir / 'ca.pem'}",
            ),
        )
        replicas.append(Replica(process, port, log_dir / "ca.pem"))
    try:
        for index, replica in enumerate(replicas, 1):  # one after the other: the first has run longer, so it leads
            monkeypatch.setenv("POD_ID", f"replica-{index}")  # its name among the peers, as the chart's pods have
            replica.process.start()
        yield Peers(
            namespaces,
            replicas[0],
            replicas[1],
            "clusterkopfpeering" if cluster_wide else "kopfpeering",
            peering_name,
        )
    finally:
        for replica in reversed(replicas):
            if replica.process.alive():
                # Lanes carry the operator's finalizer: let the leader release them before it stops.
                for namespace in namespaces:
                    namespace.kubectl("delete", "voicelanes", "--all", "--wait=true", "--timeout=60s", check=False)
            replica.process.stop()
        if cluster_wide:
            cluster.kubectl("delete", "clusterkopfpeering", peering_name, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", *names, "--wait=false", check=False)


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


@pytest.mark.parametrize("peers", ["namespaced", "cluster-wide"], indirect=True)
def test_one_replica_reconciles_and_the_other_takes_over_when_it_stops(peers: Peers) -> None:
    leader, follower = peers.leader, peers.follower
    timeout_s = peers.namespaces[0].change_timeout_s
    peering = wait_until(
        lambda: (found := peers.status()).keys() == {"replica-1", "replica-2"} and found,
        timeout_s,
        what=f"both replicas in the {peers.peering_kind} {peers.peering_name}",
    )
    assert peering["replica-1"]["priority"] > peering["replica-2"]["priority"]
    assert "Resuming operations" in leader.process.log()  # kopf starts every replica paused

    first = [Lane(namespace, f"lane-{secrets.token_hex(3)}") for namespace in peers.namespaces]
    for lane in first:
        lane.create()
    for lane in first:
        wait_until(lane.observed, timeout_s, what=f"lane {lane.cluster.namespace}/{lane.name} to be reconciled")
        assert reconciled_by(leader.process, lane)
        assert not reconciled_by(follower.process, lane)
        # The follower reconciles nothing, yet serves the webhook.
        assert webhook_answers(follower, lane.cluster.namespace)
        assert webhook_answers(leader, lane.cluster.namespace)

    assert "Resuming operations" not in follower.process.log()

    leader.process.stop()  # a clean stop: it leaves the peering at once
    assert peers.status().keys() == {"replica-2"}
    wait_until(
        lambda: "Resuming operations after the pause" in follower.process.log(),
        timeout_s,
        what="the second replica to take over",
    )
    second = [Lane(namespace, f"lane-{secrets.token_hex(3)}") for namespace in peers.namespaces]
    for lane in second:
        lane.create()
    for lane in second:
        wait_until(lane.observed, timeout_s, what=f"lane {lane.cluster.namespace}/{lane.name} to be reconciled")
        assert reconciled_by(follower.process, lane)
        assert not reconciled_by(leader.process, lane)


def test_when_the_leader_dies_the_other_takes_over_once_its_keep_alive_runs_out(peers: Peers) -> None:
    leader, follower = peers.leader, peers.follower
    (cluster,) = peers.namespaces
    wait_until(
        lambda: peers.status().keys() == {"replica-1", "replica-2"},
        cluster.change_timeout_s,
        what="both replicas in the peering object",
    )
    leader.process.kill()  # SIGKILL: no goodbye, its keep-alive stays behind
    assert "replica-1" in peers.status()
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
    assert "replica-1" not in peers.status()  # the dead peer is cleaned out
