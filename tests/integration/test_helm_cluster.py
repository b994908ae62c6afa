"""The Helm chart installed, upgraded and uninstalled on a real API server, as the README tells a user to.

Each test installs the chart into a namespace of its own (the operator serving that namespace only,
`operator.watchNamespaces`). The operator Deployment's pod runs nothing on KWOK nodes, so where a test
needs lanes reconciled, the real operator runs as a local process with the flags the chart gives its
container and the credentials of the chart's ServiceAccount (a TokenRequest token): the API server
authorizes it exactly as it would the pod.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.support import CHART, REPO, helm
from tests.integration.operator.harness import wait_until
from tests.support.kube import KubeTarget
from voicelane.processes import ManagedProcess, free_port, voicelane_argv

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(240)]

KUBECTL = REPO / ".tools" / "bin" / "kubectl"
CRD_NAME = "voicelanes.voicelane.dev"
FINALIZER = "voicelane.dev/operator"
SAMPLE_LANE = REPO / "manifests" / "samples" / "voicelane.yaml"
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}


@dataclasses.dataclass
class Release:
    """One release of the chart in its own namespace, driven by the real helm and kubectl."""

    name: str
    namespace: str
    kubeconfig: Path
    work_dir: Path

    def run(self, argv: list[str], *, stdin: str | None = None, check: bool = True) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HELM_CACHE_HOME": str(self.work_dir / "helm")}
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=180, check=False, env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv[:3])} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return self.run([str(KUBECTL), f"--namespace={self.namespace}", *args], stdin=stdin, check=check)

    def helm(self, *args: str, check: bool = True) -> str:
        return self.run([str(helm()), f"--namespace={self.namespace}", *args], check=check)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        found = self.kubectl("get", kind, name, "--ignore-not-found", "-o", "json")
        return json.loads(found) if found.strip() else None

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(self.helm("status", self.name, "-o", "json"))
        return status

    def operator_deployment(self) -> dict[str, Any]:
        found = self.get("deployment", f"{self.name}-voicelane-operator")
        assert found is not None, "the chart's operator Deployment is missing"
        return found

    def service_account_kubeconfig(self) -> Path:
        """A kubeconfig with a TokenRequest token of the chart's operator ServiceAccount."""
        pod_spec = self.operator_deployment()["spec"]["template"]["spec"]
        account = pod_spec["serviceAccountName"]
        token = self.kubectl("create", "token", account, "--duration=1h").strip()
        admin = json.loads(self.kubectl("config", "view", "--raw", "--minify", "-o", "json"))
        [cluster] = admin["clusters"]
        user = f"system:serviceaccount:{self.namespace}:{account}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": user}}],
            "current-context": account,
        }
        path = self.work_dir / "operator-kubeconfig"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        path.chmod(0o600)
        return path


@pytest.fixture
def release(kube: KubeTarget, tmp_path: Path) -> Iterator[Release]:
    """The chart installed with its defaults as release `<name>` in a fresh restricted namespace."""
    if not KUBECTL.exists():
        pytest.skip(f"{KUBECTL.relative_to(REPO)} is missing: run .ci/install-tools")
    suffix = secrets.token_hex(3)
    subject = Release(f"vl-{suffix}", f"voicelane-helm-{suffix}", kube.kubeconfig, tmp_path)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": subject.namespace, "labels": RESTRICTED}}
    subject.kubectl("apply", "-f", "-", stdin=json.dumps(namespace))
    try:
        subject.helm(
            "install", subject.name, str(CHART), "--set-json", f'operator.watchNamespaces=["{subject.namespace}"]'
        )
        yield subject
    finally:
        subject.helm("uninstall", subject.name, "--wait", check=False)
        subject.kubectl("delete", "voicelanes", "--all", "--wait=false", check=False)
        for lane in subject.kubectl("get", "voicelanes", "-o", "name", check=False).split():
            subject.kubectl("patch", lane, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
        subject.kubectl("delete", "namespace", subject.namespace, "--wait=false", check=False)


@pytest.fixture
def operator(release: Release) -> Iterator[ManagedProcess]:
    """The operator as the chart runs it (its container's flags and ServiceAccount), as a local process."""
    [container] = release.operator_deployment()["spec"]["template"]["spec"]["containers"]
    credentials = release.service_account_kubeconfig()
    # The API server takes a moment to see a new ServiceAccount and RoleBinding; the pod would retry too.
    wait_until(
        lambda: (
            release.kubectl(f"--kubeconfig={credentials}", "auth", "can-i", "watch", "voicelanes", check=False).strip()
            == "yes"
        ),
        30,
        what="the chart's RBAC to grant the ServiceAccount its lanes",
    )
    metrics_port = free_port()
    # The only change to the chart's flags: every listener on 127.0.0.1 and a free port.
    flags = [arg for arg in container["args"] if not arg.startswith("--metrics-listen=")]
    argv = voicelane_argv(
        "operator",
        *flags,
        f"--metrics-listen=127.0.0.1:{metrics_port}",
        f"--kubeconfig={credentials}",
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "POD_NAMESPACE": release.namespace}
    process = ManagedProcess(argv, release.work_dir / "operator.log", env=env).start()
    try:
        process.wait_http(f"http://127.0.0.1:{metrics_port}/readyz", timeout_s=60)
        yield process
    finally:
        process.stop()


def create_lane(release: Release) -> str:
    lane = yaml.safe_load(SAMPLE_LANE.read_text(encoding="utf-8"))
    lane["metadata"] = {"name": f"lane-{secrets.token_hex(3)}", "namespace": release.namespace}
    release.kubectl("apply", "-f", "-", stdin=json.dumps(lane))
    return str(lane["metadata"]["name"])


def taken(release: Release, lane: str) -> bool:
    """Whether the operator has put its finalizer on the lane (it then must see the lane's deletion)."""
    found = release.get("voicelane", lane) or {}
    return FINALIZER in (found.get("metadata", {}).get("finalizers") or [])


def printer_columns() -> list[str]:
    crd = yaml.safe_load((CHART / "crds" / f"{CRD_NAME}.yaml").read_text(encoding="utf-8"))
    return [column["name"] for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]]


def chart_with_extra_printer_column(target: Path) -> Path:
    """A copy of the chart whose CRD shows one more column, as a later chart version might."""
    shutil.copytree(CHART, target)
    crd_file = target / "crds" / f"{CRD_NAME}.yaml"
    crd = yaml.safe_load(crd_file.read_text(encoding="utf-8"))
    column = {"name": "Fast replicas", "type": "integer", "jsonPath": ".spec.fast.replicas"}
    crd["spec"]["versions"][0]["additionalPrinterColumns"].append(column)
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False), encoding="utf-8")
    return target


def apply_crds(release: Release, chart: Path) -> None:
    """The README's step before `helm upgrade`: Helm installs crds/ only once and never upgrades them."""
    release.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(chart / "crds"))


def test_install_reaches_deployed_and_the_operator_pod_runs(release: Release, kube: KubeTarget) -> None:
    assert release.status()["info"]["status"] == "deployed"
    assert release.get("customresourcedefinition", CRD_NAME) is not None
    if kube.local is not None:  # KWOK reports the pod Ready without running it; a real node pulls the image
        release.kubectl("rollout", "status", f"deployment/{release.name}-voicelane-operator", "--timeout=60s")


def test_an_upgrade_after_applying_the_new_charts_crds_updates_the_crd(release: Release, tmp_path: Path) -> None:
    newer = chart_with_extra_printer_column(tmp_path / "voicelane")
    try:
        apply_crds(release, newer)
        release.helm("upgrade", release.name, str(newer), "--reuse-values")
        crd = release.get("customresourcedefinition", CRD_NAME)
        assert crd is not None
        columns = [column["name"] for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
        assert columns == [*printer_columns(), "Fast replicas"]
        assert release.status()["info"]["status"] == "deployed"
        assert release.status()["version"] == 2
    finally:
        apply_crds(release, CHART)  # the CRD is cluster-wide: leave it as this checkout ships it


def test_deleting_the_lanes_first_then_uninstalling_leaves_nothing_behind(
    release: Release, operator: ManagedProcess
) -> None:
    lane = create_lane(release)
    wait_until(lambda: taken(release, lane), 30, what="the operator to take the lane")
    release.kubectl("delete", "voicelanes", "--all", "--wait=true", "--timeout=60s")
    release.helm("uninstall", release.name, "--wait")
    assert release.get("voicelane", lane) is None
    assert release.helm("list", "-q") == ""
    assert release.get("customresourcedefinition", CRD_NAME) is not None, "lanes of other namespaces stay"


def test_a_lane_left_after_uninstall_is_released_by_clearing_its_finalizer(
    release: Release, operator: ManagedProcess
) -> None:
    lane = create_lane(release)
    wait_until(lambda: taken(release, lane), 30, what="the operator to take the lane")
    release.helm("uninstall", release.name, "--wait")
    operator.stop()  # what the uninstall does to the operator pod
    release.kubectl("delete", "voicelane", lane, "--timeout=5s", check=False)
    hanging = release.get("voicelane", lane)
    assert hanging is not None, "with no operator, the lane waits for its finalizer"
    assert hanging["metadata"]["deletionTimestamp"]
    release.kubectl("patch", "voicelane", lane, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    wait_until(lambda: release.get("voicelane", lane) is None, 30, what="the lane to go")
