"""Fixtures for the operator tests: the Kubernetes API, the operator process, and a lane per test.

The API is the session's (tests/support/kube.py): the local control plane with KWOK nodes, or the
cluster named by VOICELANE_TEST_KUBECONFIG (VOICELANE_TEST_READY_TIMEOUT bounds the wait for its real
pods to become ready). The tests get a namespace of their own, deleted at the end, and the CRD from
manifests/crd/. kubectl comes from .tools/bin (`.ci/install-tools`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.operator.harness import CRD_DIR, REPO, Cluster, Lane, OperatorProcess
from tests.support.kube import KubeTarget
from voicelane.processes import free_port

KUBECTL = REPO / ".tools/bin/kubectl"


@pytest.fixture(scope="session")
def kubectl_bin() -> Path:
    if KUBECTL.exists():
        return KUBECTL
    reason = f"{KUBECTL.relative_to(REPO)} is missing: run .ci/install-tools"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)  # CI installs the tools; a missing one is a broken setup, not a skip
    pytest.skip(reason)


@pytest.fixture(scope="session")
def operator_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator-logs")


def _crd_documents() -> list[dict[str, object]]:
    documents = [
        doc
        for path in sorted(CRD_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc
    ]
    if not documents:
        pytest.fail(f"no CRD in {CRD_DIR.relative_to(REPO)}")
    return documents


def _prepare(cluster: Cluster) -> None:
    cluster.apply(*_crd_documents())
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": cluster.namespace}})


@pytest.fixture(scope="session")
def cluster(kubectl_bin: Path, operator_logs: Path, kube: KubeTarget) -> Iterator[Cluster]:
    user_cluster = kube.local is None
    subject = Cluster(
        kubectl_bin,
        kube.kubeconfig,
        namespace=f"voicelane-test-{secrets.token_hex(3)}",
        cache_dir=operator_logs / "kubectl-cache",
        # Real pods on a user's cluster pull images and start; KWOK's are Ready at once.
        ready_timeout_s=float(os.environ.get("VOICELANE_TEST_READY_TIMEOUT", "1200" if user_cluster else "60")),
        change_timeout_s=60.0 if user_cluster else 30.0,
    )
    _prepare(subject)
    try:
        yield subject
    finally:
        subject.kubectl("delete", "namespace", subject.namespace, "--wait=true", "--timeout=300s", check=False)


@pytest.fixture(scope="session")
def operator(cluster: Cluster, operator_logs: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(cluster, operator_logs, metrics_port=free_port(), liveness_port=free_port())
    process.start()
    try:
        yield process
    finally:
        if not cluster.emulated and process.alive():
            # Lanes carry the operator's finalizer: let it release them before it stops.
            cluster.kubectl("delete", "voicelanes", "--all", "--wait=true", "--timeout=120s", check=False)
        process.stop()


@pytest.fixture
def lane(cluster: Cluster, operator: OperatorProcess) -> Iterator[Lane]:
    """A lane name of this test's own; the lane, if created, is deleted afterwards."""
    subject = Lane(cluster, f"lane-{secrets.token_hex(3)}")
    try:
        yield subject
    finally:
        cluster.clear_faults()
        if not operator.alive():
            operator.start()  # a test that stopped the operator leaves it running for the next
        cluster.delete("voicelane", subject.name, wait=not cluster.emulated)
