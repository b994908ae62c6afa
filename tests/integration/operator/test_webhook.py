"""The sidecar-injection webhook of the running operator, called over HTTPS as the API server calls it.

An operator started with `--webhook-listen` and a certificate from a CA of the test's own serves a
namespace of its own with one lane in it. Each test POSTs an admission.k8s.io/v1 AdmissionReview for
a pod being created (as a ReplicaSet controller sends it: generateName, no namespace in the object)
and checks the answer: the JSONPatch, applied to the pod, gives a pod that validates and meets the
restricted profile; a second review of that pod patches nothing; a pod of an unknown lane is admitted
as it is with a warning; bodies that are no AdmissionReview get a 4xx and the webhook keeps serving.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import json
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from tests.delivery.pod_security import violations
from tests.integration.operator.harness import Cluster, Lane, OperatorProcess, wait_until
from voicelane.processes import free_port, voicelane_argv

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]

IMAGE = "registry.example/voicelane-sidecar:test"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")


@dataclasses.dataclass
class Answer:
    status: int
    body: Any
    raw: bytes

    @property
    def response(self) -> dict[str, Any]:
        assert self.status == 200, f"HTTP {self.status}: {self.raw!r}"
        response: dict[str, Any] = self.body["response"]
        return response

    def patch(self) -> list[dict[str, Any]]:
        if "patch" not in self.response:
            return []
        assert self.response["patchType"] == "JSONPatch"
        patch: list[dict[str, Any]] = json.loads(base64.b64decode(self.response["patch"]))
        return patch


@dataclasses.dataclass
class Webhook:
    url: str
    ca_file: Path
    operator: OperatorProcess

    def post(self, body: bytes, *, content_type: str = "application/json") -> Answer:
        request = urllib.request.Request(self.url, data=body, method="POST", headers={"Content-Type": content_type})
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                raw = response.read()
                return Answer(response.status, json.loads(raw), raw)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return Answer(exc.code, None, raw)

    def review(self, pod: dict[str, Any], namespace: str) -> Answer:
        return self.post(json.dumps(admission_review(pod, namespace)).encode())

    def answers(self) -> bool:
        try:
            return self.post(b"{}").status == 400
        except (urllib.error.URLError, OSError):
            return False


def admission_review(pod: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": secrets.token_hex(8),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def app_pod(lane: str) -> dict[str, Any]:
    """A pod as a ReplicaSet creates it: a generated name, no namespace in the object yet."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-5d9c7-", "labels": {"app": "web", "voicelane.dev/lane": lane}},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "web",
                    "image": "registry.example/web:1",
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }


def write_certificate(directory: Path) -> None:
    """A CA (ca.crt) and a serving certificate for 127.0.0.1 signed by it (tls.crt, tls.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def builder(subject: str, issuer: str, key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("webhook-test-ca", "webhook-test-ca", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    leaf = (
        builder("localhost", "webhook-test-ca", key)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "tls.crt").write_bytes(leaf.public_bytes(pem))
    (directory / "tls.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.fixture(scope="module")
def webhook_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster seen from a namespace of this module's own, served by the webhook's operator only."""
    namespace = f"voicelane-webhook-{secrets.token_hex(3)}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        yield dataclasses.replace(cluster, namespace=namespace)
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def webhook(webhook_cluster: Cluster, operator_logs: Path) -> Iterator[Webhook]:
    log_dir = operator_logs / f"webhook-{secrets.token_hex(3)}"
    certificates = log_dir / "tls"
    certificates.mkdir(parents=True)
    write_certificate(certificates)
    port = free_port()
    process = OperatorProcess(
        webhook_cluster,
        log_dir,
        metrics_port=free_port(),
        liveness_port=free_port(),
        extra_args=(
            f"--webhook-listen=127.0.0.1:{port}",
            f"--webhook-cert-dir={certificates}",
            f"--sidecar-image={IMAGE}",
        ),
    )
    process.start()
    hook = Webhook(f"https://127.0.0.1:{port}/mutate-pods", certificates / "ca.crt", process)
    try:
        wait_until(hook.answers, 30, what="the webhook to answer over HTTPS")
        yield hook
    finally:
        if process.alive():
            webhook_cluster.kubectl("delete", "voicelanes", "--all", "--wait=true", "--timeout=120s", check=False)
        process.stop()


@pytest.fixture(scope="module")
def lane(webhook_cluster: Cluster, webhook: Webhook) -> str:
    subject = Lane(webhook_cluster, f"lane-{secrets.token_hex(3)}")
    subject.create()
    return subject.name


def operator_log(webhook: Webhook) -> str:
    return "".join(path.read_text(errors="replace") for path in sorted(webhook.operator.log_dir.glob("*.log")))


def patched(pod: dict[str, Any], answer: Answer) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(pod, answer.patch())
    return result


# --- injection ---------------------------------------------------------------------------------


def test_a_pod_of_the_lane_is_admitted_with_the_sidecar(webhook: Webhook, webhook_cluster: Cluster, lane: str) -> None:
    pod = app_pod(lane)
    answer = webhook.review(pod, webhook_cluster.namespace)
    response = answer.response
    assert answer.body["apiVersion"] == "admission.k8s.io/v1"
    assert answer.body["kind"] == "AdmissionReview"
    assert response["uid"]
    assert response["allowed"] is True
    assert "warnings" not in response

    injected = patched(pod, answer)
    [sidecar] = injected["spec"]["initContainers"]
    assert sidecar["name"] == "voicelane-sidecar"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == IMAGE
    [config] = [v for v in injected["spec"]["volumes"] if "configMap" in v]
    assert config["configMap"]["name"] == f"{lane}-sidecar"
    assert {"name": "VOICELANE_URL", "value": "http://127.0.0.1:8787"} in injected["spec"]["containers"][0]["env"]
    assert "namespace" not in injected["metadata"], "the patch touches only what injection adds"
    named = {**injected, "metadata": {**injected["metadata"], "name": "web-5d9c7-abcde"}}
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(named, version, strict=True)
    assert violations(injected["metadata"], injected["spec"]) == []


def test_the_app_url_follows_the_lanes_listen_address(webhook: Webhook, webhook_cluster: Cluster) -> None:
    other = Lane(webhook_cluster, f"lane-{secrets.token_hex(3)}")
    other.create(policy={"server": {"listen": "127.0.0.1:9797"}})
    pod = app_pod(other.name)
    injected = patched(pod, webhook.review(pod, webhook_cluster.namespace))
    assert {"name": "VOICELANE_URL", "value": "http://127.0.0.1:9797"} in injected["spec"]["containers"][0]["env"]


def test_reviewing_an_injected_pod_again_patches_nothing(webhook: Webhook, webhook_cluster: Cluster, lane: str) -> None:
    pod = app_pod(lane)
    injected = patched(pod, webhook.review(pod, webhook_cluster.namespace))
    again = webhook.review(injected, webhook_cluster.namespace).response
    assert again["allowed"] is True
    assert "patch" not in again
    assert "warnings" not in again


def test_a_pod_of_an_unknown_lane_is_admitted_untouched_with_a_warning(
    webhook: Webhook, webhook_cluster: Cluster, lane: str
) -> None:
    response = webhook.review(app_pod("no-such-lane"), webhook_cluster.namespace).response
    assert response["allowed"] is True
    assert "patch" not in response
    [warning] = response["warnings"]
    assert f"no VoiceLane no-such-lane in namespace {webhook_cluster.namespace}" in warning
    wait_until(lambda: "no VoiceLane no-such-lane" in operator_log(webhook), 5, what="the warning in the log")


def test_a_pod_of_a_lane_in_another_namespace_is_not_injected(webhook: Webhook, lane: str) -> None:
    response = webhook.review(app_pod(lane), "elsewhere").response
    assert response["allowed"] is True
    assert "patch" not in response
    assert "not one this operator serves" in response["warnings"][0]


def test_when_the_api_fails_the_pod_is_admitted_untouched_with_a_warning(
    webhook: Webhook, webhook_cluster: Cluster, lane: str
) -> None:
    # Every read of the lane fails until cleared: the operator's own reconciler may read it meanwhile,
    # and a one-shot fault spent on that read would leave the webhook's read unharmed.
    if not webhook_cluster.inject_fault(verb="get", resource="voicelanes", name=lane, status=500, times=None):
        pytest.skip("no fault injection in front of this operator")
    try:
        response = webhook.review(app_pod(lane), webhook_cluster.namespace).response
    finally:
        webhook_cluster.clear_faults()
    assert response["allowed"] is True
    assert "patch" not in response
    assert f"cannot read VoiceLane {lane}" in response["warnings"][0]


def test_a_stalled_api_gets_an_answer_before_the_api_servers_webhook_timeout(
    webhook: Webhook, webhook_cluster: Cluster, lane: str
) -> None:
    if not webhook_cluster.inject_fault(verb="get", resource="voicelanes", name=lane, delay_s=20, times=None):
        pytest.skip("no fault injection in front of this operator")
    try:
        started = time.monotonic()
        response = webhook.review(app_pod(lane), webhook_cluster.namespace).response
        elapsed = time.monotonic() - started
    finally:
        webhook_cluster.clear_faults()
    assert response["allowed"] is True
    assert "patch" not in response
    assert f"cannot read VoiceLane {lane}" in response["warnings"][0]
    assert elapsed < 5, "the chart's webhook.timeoutSeconds is 5: a later answer is lost"


# --- bad requests ------------------------------------------------------------------------------


def valid_review(namespace: str) -> dict[str, Any]:
    return admission_review(app_pod("any"), namespace)


def without_request(review: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in review.items() if key != "request"}


MALFORMED: dict[str, Any] = {
    "not JSON": lambda ns: b"this is not json",
    "not text": lambda ns: b"\xff\xfe\x00{",
    "a JSON list": lambda ns: b"[]",
    "wrong kind": lambda ns: json.dumps({**valid_review(ns), "kind": "Pod"}).encode(),
    "wrong apiVersion": lambda ns: json.dumps({**valid_review(ns), "apiVersion": "v1"}).encode(),
    "missing request": lambda ns: json.dumps(without_request(valid_review(ns))).encode(),
    "request without object": lambda ns: json.dumps(
        {**valid_review(ns), "request": {**valid_review(ns)["request"], "object": None}}
    ).encode(),
    "request without uid": lambda ns: json.dumps(
        {**valid_review(ns), "request": {k: v for k, v in valid_review(ns)["request"].items() if k != "uid"}}
    ).encode(),
    "object whose metadata is not an object": lambda ns: json.dumps(
        {**valid_review(ns), "request": {**valid_review(ns)["request"], "object": {"metadata": "x", "spec": {}}}}
    ).encode(),
    "request of a resource it has no handler for": lambda ns: json.dumps(
        {
            **valid_review(ns),
            "request": {
                **valid_review(ns)["request"],
                "resource": {"group": "", "version": "v1", "resource": "secrets"},
            },
        }
    ).encode(),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_review_gets_a_client_error_and_the_webhook_keeps_serving(
    webhook: Webhook, webhook_cluster: Cluster, lane: str, case: str
) -> None:
    answer = webhook.post(MALFORMED[case](webhook_cluster.namespace))
    assert 400 <= answer.status < 500, (answer.status, answer.raw)
    assert b"Traceback" not in answer.raw
    assert webhook.operator.alive()
    after = webhook.review(app_pod(lane), webhook_cluster.namespace).response
    assert after["allowed"] is True
    assert after["patch"]


# --- the certificate -------------------------------------------------------------------------------


def test_without_a_certificate_the_webhook_serves_a_self_signed_one_it_writes_out(
    cluster: Cluster, operator_logs: Path
) -> None:
    elsewhere = dataclasses.replace(cluster, namespace=f"voicelane-webhook-{secrets.token_hex(3)}")
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": elsewhere.namespace}})
    log_dir = operator_logs / f"webhook-self-signed-{secrets.token_hex(3)}"
    log_dir.mkdir()
    ca_file = log_dir / "webhook-ca.pem"
    port = free_port()
    process = OperatorProcess(
        elsewhere,
        log_dir,
        metrics_port=free_port(),
        liveness_port=free_port(),
        extra_args=(f"--webhook-listen=127.0.0.1:{port}", f"--webhook-ca-out={ca_file}"),
    )
    process.start()
    try:
        wait_until(ca_file.exists, 30, what="the CA written out")
        hook = Webhook(f"https://127.0.0.1:{port}/mutate-pods", ca_file, process)
        wait_until(hook.answers, 30, what="the webhook to answer over HTTPS, verified with that CA")
        response = hook.review(app_pod("no-such-lane"), elsewhere.namespace).response
        assert response["allowed"] is True
    finally:
        process.stop()
        cluster.kubectl("delete", "namespace", elsewhere.namespace, "--wait=false", check=False)


def test_a_missing_certificate_file_stops_the_operator_with_a_clear_message(
    webhook_cluster: Cluster, operator_logs: Path, tmp_path: Path
) -> None:
    argv = voicelane_argv(
        "operator",
        f"--kubeconfig={webhook_cluster.kubeconfig}",
        f"--namespace={webhook_cluster.namespace}",
        f"--metrics-listen=127.0.0.1:{free_port()}",
        f"--webhook-listen=127.0.0.1:{free_port()}",
        f"--webhook-cert-dir={tmp_path}",
    )
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert f"--webhook-cert-dir {tmp_path}: no tls.crt or tls.key in it" in result.stderr
    assert "Traceback" not in result.stderr
