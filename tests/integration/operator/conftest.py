"""Fixtures for the operator tests: the Kubernetes API, the operator process, and a lane per test.

The API is the session's (tests/support/kube.py): the local control plane with KWOK nodes, or the
cluster named by VOICELANE_TEST_KUBECONFIG (VOICELANE_TEST_READY_TIMEOUT bounds the wait for its real
pods to become ready). The tests get a namespace of their own, deleted at the end, and the CRD from
manifests/crd/. kubectl comes from .tools/bin (`.ci/install-tools`).

The operator runs as the ServiceAccount `voicelane-operator` of that namespace, bound to nothing but
the ClusterRole shipped in manifests/rbac/role.yaml, with a token from the TokenRequest API; its
requests pass through the fault proxy (tests/support/fault_proxy.py), on the local control plane and
on a user's cluster alike. The tests' own kubectl calls use the admin kubeconfig, straight to the API.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.operator.harness import (
    CRD_DIR,
    OPERATOR_ACCOUNT,
    REPO,
    Cluster,
    Lane,
    OperatorProcess,
    fault_proxy,
    shipped_role_rules,
)
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


@pytest.fixture(scope="session")
def cluster(kubectl_bin: Path, operator_logs: Path, kube: KubeTarget) -> Iterator[Cluster]:
    user_cluster = kube.local is None
    namespace = f"voicelane-test-{secrets.token_hex(3)}"
    with fault_proxy(kube.kubeconfig, operator_logs) as proxy_url:
        subject = Cluster(
            kubectl_bin,
            kube.kubeconfig,
            namespace=namespace,
            cache_dir=operator_logs / "kubectl-cache",
            proxy_url=proxy_url,
            operator_kubeconfig=operator_logs / "operator.kubeconfig",
            # Real pods on a user's cluster pull images and start; KWOK's are Ready at once.
            ready_timeout_s=float(os.environ.get("VOICELANE_TEST_READY_TIMEOUT", "1200" if user_cluster else "60")),
            change_timeout_s=60.0 if user_cluster else 30.0,
        )
        subject.apply(*_crd_documents())
        subject.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        try:
            subject.service_account_kubeconfig(OPERATOR_ACCOUNT, shipped_role_rules(), subject.operator_kubeconfig)
            yield subject
        finally:
            subject.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=300s", check=False)
            subject.remove_session_objects()


@pytest.fixture(scope="session")
def operator(cluster: Cluster, operator_logs: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(cluster, operator_logs, metrics_port=free_port(), liveness_port=free_port())
    process.start()
    try:
        yield process
    finally:
        if process.alive():
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
        cluster.delete("voicelane", subject.name)
