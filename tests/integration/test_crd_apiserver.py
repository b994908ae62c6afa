"""The VoiceLane CRD judged by the API server itself, through `kubectl` as a user drives it.

The CRD from manifests/crd/ is accepted as a structural schema and becomes Established. Every file in
tests/unit/operator/samples-invalid/ is refused by the API server on `kubectl apply` (validation on), the
error naming the field its `# expect-path` header states, the same field the offline pre-check
(tests/unit/operator/apiserver_checks.py) names; every sample in manifests/samples/ is accepted. With
the operator running (as its own ServiceAccount, bound to the role it ships with), `kubectl wait
--for=condition=Ready` sees the sample lane become Ready and `kubectl get vl` shows the CRD's printer
columns.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.operator.harness import (
    OPERATOR_ACCOUNT,
    REPO,
    Cluster,
    OperatorProcess,
    fault_proxy,
    shipped_role_rules,
)
from tests.support.kube import KubeTarget
from tests.unit.operator.apiserver_checks import admit, error_path, expectations
from tests.unit.operator.conftest import INVALID_SAMPLES
from voicelane.processes import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(180)]

KUBECTL = REPO / ".tools/bin/kubectl"
CRD_FILE = REPO / "manifests/crd/voicelanes.voicelane.dev.yaml"
SAMPLES = sorted((REPO / "manifests/samples").glob("*.yaml"))
LANE_SAMPLE = REPO / "manifests/samples/voicelane.yaml"

# How the API server words the refusal for each OpenAPI keyword a sample's `# expect-keyword` names.
KEYWORD_WORDING = {
    "pattern": "should match",
    "minimum": "should be greater than or equal to",
    "maximum": "should be less than or equal to",
    "type": "must be of type",
    "enum": "Unsupported value",
    "required": "Required value",
}
# One cause per line of a `kubectl` Invalid error: `... is invalid: FIELD: ...` or `* FIELD: ...`.
ERROR_FIELD = re.compile(r"(?:is invalid: |^\* )(\S+): ", re.MULTILINE)
# The API server's note that it skipped CEL rules because the schema already failed, named at no field.
SKIPPED_RULES_NOTE = "<nil>"


def documents(path: Path, namespace: str) -> list[dict[str, Any]]:
    """The file's objects, moved into `namespace` (the samples name `default`)."""
    found = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    for doc in found:
        doc["metadata"]["namespace"] = namespace
    return found


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def ready_timeout_s(kube: KubeTarget) -> float:
    # Real pods on a user's cluster pull images and load models; KWOK's are Ready at once.
    return float(os.environ.get("VOICELANE_TEST_READY_TIMEOUT", "1200" if kube.local is None else "90"))


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crd-apiserver")


@pytest.fixture(scope="module")
def cluster(kube: KubeTarget, logs: Path) -> Iterator[Cluster]:
    """A namespace of this module's own on the session's cluster, with the CRD applied and the
    operator's ServiceAccount bound to the role it ships with."""
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL.relative_to(REPO)} is missing: run .ci/install-tools")
    with fault_proxy(kube.kubeconfig, logs) as proxy_url:
        subject = Cluster(
            KUBECTL,
            kube.kubeconfig,
            namespace=f"voicelane-crd-{secrets.token_hex(3)}",
            cache_dir=logs / "kubectl-cache",
            proxy_url=proxy_url,
            operator_kubeconfig=logs / "operator.kubeconfig",
        )
        subject.kubectl("apply", "--validate=strict", "-f", str(CRD_FILE))
        subject.kubectl("create", "namespace", subject.namespace)
        try:
            subject.service_account_kubeconfig(OPERATOR_ACCOUNT, shipped_role_rules(), subject.operator_kubeconfig)
            yield subject
        finally:
            subject.kubectl("delete", "namespace", subject.namespace, "--wait=true", "--timeout=300s", check=False)
            subject.remove_session_objects()


@pytest.fixture(scope="module")
def operator(cluster: Cluster, logs: Path) -> Iterator[OperatorProcess]:
    """The operator as its own ServiceAccount, serving the module's namespace."""
    process = OperatorProcess(cluster, logs, metrics_port=free_port(), liveness_port=free_port())
    process.start()
    try:
        yield process
    finally:
        if process.alive():
            # Lanes carry the operator's finalizer: let it release them before it stops.
            cluster.kubectl("delete", "voicelanes", "--all", "--wait=true", "--timeout=120s", check=False)
        process.stop()


@pytest.fixture(scope="module")
def sample_lane(cluster: Cluster, operator: OperatorProcess) -> str:
    """The sample lane, applied in the module's namespace while the operator runs; its name."""
    [lane] = documents(LANE_SAMPLE, cluster.namespace)
    cluster.kubectl("apply", "--validate=strict", "-f", "-", stdin=yaml.safe_dump(lane))
    name: str = lane["metadata"]["name"]
    return name


def test_crd_is_structural_and_established(cluster: Cluster) -> None:
    cluster.kubectl("wait", "--for=condition=Established", "crd/voicelanes.voicelane.dev", "--timeout=30s")
    crd = json.loads(cluster.kubectl("get", "crd", "voicelanes.voicelane.dev", "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert "NonStructuralSchema" not in conditions, crd["status"]["conditions"]


@pytest.mark.parametrize("sample", INVALID_SAMPLES, ids=lambda path: path.stem)
def test_invalid_sample_is_refused_at_its_field(cluster: Cluster, sample: Path) -> None:
    expected = expectations(sample)
    [lane] = documents(sample, cluster.namespace)

    refused = cluster.kubectl("apply", "--validate=strict", "-f", "-", stdin=yaml.safe_dump(lane), check=False)

    assert refused.returncode != 0, f"{sample.name} was accepted"
    error = refused.stderr
    assert "is invalid" in error, error
    named = set(ERROR_FIELD.findall(error)) - {SKIPPED_RULES_NOTE}
    assert named == {expected["path"]}, error
    wording = expected["message"] if expected["rule"] == "cel" else KEYWORD_WORDING[expected["keyword"]]
    assert f"{expected['path']}: " in error
    assert wording in error
    # The offline pre-check refuses the same lane at the same field.
    _, schema_errors, violations = admit(crd_schema(), lane)
    assert {error_path(e) for e in schema_errors} | {v.path for v in violations} == named


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda path: path.stem)
def test_sample_is_accepted(cluster: Cluster, sample: Path) -> None:
    manifest = yaml.safe_dump_all(documents(sample, cluster.namespace))

    accepted = cluster.kubectl("apply", "--validate=strict", "--dry-run=server", "-f", "-", stdin=manifest)

    assert "(server dry run)" in accepted.stdout


def test_kubectl_wait_sees_the_lane_become_ready(cluster: Cluster, sample_lane: str, kube: KubeTarget) -> None:
    timeout = f"--timeout={ready_timeout_s(kube):.0f}s"

    waited = cluster.kubectl("wait", "--for=condition=Ready", f"vl/{sample_lane}", timeout, check=False)

    assert waited.returncode == 0, waited.stderr
    assert "condition met" in waited.stdout


def test_kubectl_get_shows_the_printer_columns(cluster: Cluster, sample_lane: str, kube: KubeTarget) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    cluster.kubectl("wait", "--for=condition=Ready", f"vl/{sample_lane}", f"--timeout={ready_timeout_s(kube):.0f}s")

    table = cluster.kubectl("get", "vl").stdout.splitlines()
    wide = cluster.kubectl("get", "vl", "-o", "wide").stdout.splitlines()

    shown = ["NAME", *(column["name"].upper() for column in columns if not column.get("priority"))]
    assert re.split(r"\s{2,}", table[0].strip()) == shown
    assert re.split(r"\s{2,}", wide[0].strip()) == ["NAME", *(column["name"].upper() for column in columns)]
    [row] = [line for line in table[1:] if line.split()[0] == sample_lane]
    assert row.split()[1:4] == ["True", "llama3.2:1b", "llama3.1:8b"]
