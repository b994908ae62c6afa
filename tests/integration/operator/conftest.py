"""Fixtures for the operator tests: an API server, the operator process, and a lane per test.

By default the API is the Kubernetes API emulator (voicelane.testing.kube_emulator), started here
as a process. With VOICELANE_TEST_KUBECONFIG set, the same tests run against that cluster instead:
no emulator, no simulated Deployment controller, a namespace of their own that is deleted at the
end (VOICELANE_TEST_READY_TIMEOUT bounds the wait for real pods to become ready). The CRD from
manifests/crd/ is applied in both cases. kubectl comes from .tools/bin (`.ci/install-tools`).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.operator.harness import CRD_DIR, REPO, Cluster, Lane, OperatorProcess, wait_until
from voicelane.testing.processes import free_port, running

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
def cluster(kubectl_bin: Path, operator_logs: Path) -> Iterator[Cluster]:
    cache_dir = operator_logs / "kubectl-cache"
    real_kubeconfig = os.environ.get("VOICELANE_TEST_KUBECONFIG")
    if real_kubeconfig:
        real = Cluster(
            kubectl_bin,
            Path(real_kubeconfig),
            namespace=f"voicelane-test-{secrets.token_hex(3)}",
            cache_dir=cache_dir,
            ready_timeout_s=float(os.environ.get("VOICELANE_TEST_READY_TIMEOUT", "1200")),
            change_timeout_s=60.0,
        )
        _prepare(real)
        try:
            yield real
        finally:
            real.kubectl("delete", "namespace", real.namespace, "--wait=true", "--timeout=300s", check=False)
        return

    port = free_port()
    kubeconfig = operator_logs / "emulator.kubeconfig"
    argv = [
        sys.executable,
        "-P",  # as voicelane_argv: the repository's operator/ must not shadow the stdlib's operator
        "-m",
        "voicelane.testing.kube_emulator",
        f"--listen=127.0.0.1:{port}",
        f"--kubeconfig-out={kubeconfig}",
    ]
    control_url = f"http://127.0.0.1:{port}/_emulator"
    with running(argv, ready_url=f"{control_url}/healthz", log_dir=operator_logs, name="kube-emulator"):
        wait_until(kubeconfig.exists, 10, what="the emulator's kubeconfig")
        emulated = Cluster(kubectl_bin, kubeconfig, "voicelane-test", cache_dir, control_url=control_url)
        _prepare(emulated)
        yield emulated


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
