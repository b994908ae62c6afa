"""The webhook's decisions (operator/webhook.py) without a server: which pods get the sidecar, which a warning."""

from __future__ import annotations

import copy
import ipaddress
import logging
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonpatch
import kopf
import pytest
from cryptography import x509

from voicelane.operator.webhook import (
    Admission,
    InjectionWebhookServer,
    LaneLookupError,
    admit_pod,
    mutate_handler,
    review_problems,
    with_request_namespace,
)

NAMESPACE = "apps"


def lane(name: str = "voice", **policy: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voicelane.dev/v1alpha1",
        "kind": "VoiceLane",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "fast": {"model": "llama3.2:1b", "resources": {"cpu": 1, "memory": "2Gi"}},
            "deep": {"model": "llama3.1:8b", "resources": {"cpu": 3, "memory": "10Gi"}},
            **({"policy": policy} if policy else {}),
        },
    }


def pod(lane_name: str | None = "voice", **labels: str) -> dict[str, Any]:
    all_labels = {"app": "web", **labels}
    if lane_name is not None:
        all_labels["voicelane.dev/lane"] = lane_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": NAMESPACE, "labels": all_labels},
        "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]},
    }


class Lanes:
    """A stand-in for the API: the lanes it holds, or an error it raises; records what was asked."""

    def __init__(self, *lanes: Mapping[str, Any], error: Exception | None = None) -> None:
        self.lanes = {(NAMESPACE, item["metadata"]["name"]): item for item in lanes}
        self.error = error
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.asked.append((namespace, name))
        if self.error is not None:
            raise self.error
        return self.lanes.get((namespace, name))

    async def names(self, namespace: str) -> list[str]:
        self.asked.append((namespace, "*"))
        if self.error is not None:
            raise self.error
        return [name for (where, name) in self.lanes if where == namespace]


async def admit(subject: dict[str, Any], lanes: Lanes, **kwargs: Any) -> Admission:
    return await admit_pod(subject, namespace=NAMESPACE, get_lane=lanes, image="img:1", **kwargs)


async def test_a_pod_of_an_existing_lane_gets_the_sidecar() -> None:
    admission = await admit(pod(), Lanes(lane()))
    assert admission.warnings == ()
    assert admission.pod is not None
    assert admission.pod["spec"]["initContainers"][0]["name"] == "voicelane-sidecar"


async def test_the_app_url_is_the_lanes_listen_address() -> None:
    admission = await admit(pod(), Lanes(lane(server={"listen": "0.0.0.0:9001"})))
    assert admission.pod is not None
    assert admission.pod["spec"]["containers"][0]["env"] == [
        {"name": "VOICELANE_URL", "value": "http://127.0.0.1:9001"},
        {"name": "OLLAMA_HOST", "value": "http://127.0.0.1:9001"},
        {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:9001/v1"},
    ]


async def test_a_missing_lane_leaves_the_pod_as_it_is_with_a_warning() -> None:
    admission = await admit(pod("ghost"), Lanes(lane()))
    assert admission.pod is None
    assert admission.warnings == (
        f"the sidecar was not injected: there is no VoiceLane ghost in namespace {NAMESPACE}",
    )


async def test_an_unreadable_lane_leaves_the_pod_as_it_is_with_a_warning() -> None:
    admission = await admit(pod(), Lanes(error=LaneLookupError("403 Forbidden")))
    assert admission.pod is None
    assert "cannot read VoiceLane voice" in admission.warnings[0]
    assert "403 Forbidden" in admission.warnings[0]


async def test_a_lane_with_an_invalid_spec_still_gets_its_sidecar_with_a_warning() -> None:
    broken = lane()
    broken["spec"]["fast"]["resources"]["cpu"] = "lots"
    admission = await admit(pod(), Lanes(broken))
    assert admission.pod is not None
    assert "invalid spec" in admission.warnings[0]
    assert "127.0.0.1:8787" in admission.warnings[0]


async def test_pods_it_must_not_touch_cost_no_lookup_and_no_warning() -> None:
    lanes = Lanes(lane())
    injected = (await admit(pod(), lanes)).pod
    assert injected is not None
    for subject in (pod(None), pod(**{"voicelane.dev/tier": "fast"}), injected):
        assert await admit(subject, lanes) == Admission(None)
    assert len(lanes.asked) == 1


async def test_a_namespace_the_operator_does_not_serve_is_left_alone() -> None:
    lanes = Lanes(lane())
    admission = await admit(pod(), lanes, served_namespaces={"other"})
    assert admission.pod is None
    assert "not one this operator serves" in admission.warnings[0]
    assert lanes.asked == []


async def test_a_pod_that_cannot_take_the_sidecar_is_admitted_with_the_reason() -> None:
    crowded = pod()
    crowded["spec"]["volumes"] = [{"name": "voicelane-tmp", "emptyDir": {}}]
    admission = await admit(crowded, Lanes(lane()))
    assert admission.pod is None
    assert "already has a volume named voicelane-tmp" in admission.warnings[0]


def review(**request_changes: Any) -> dict[str, Any]:
    request = {
        "uid": "0f1e",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": NAMESPACE,
        "operation": "CREATE",
        "userInfo": {"username": "someone"},
        "object": {"metadata": {"generateName": "web-"}, "spec": {}},
    }
    request.update(request_changes)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def test_a_well_formed_review_has_no_problems() -> None:
    assert review_problems(review()) == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], "body: Input should be"),
        ({**review(), "kind": "Pod"}, "kind: Input should be 'AdmissionReview'"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "request: Field required"),
        (review(uid=""), "request.uid: String should have at least 1 character"),
        (review(object=None), "request: Value error, names neither object nor oldObject"),
        (review(resource="pods"), "request.resource: Input should be"),
    ],
)
def test_a_malformed_review_is_named_precisely(data: Any, expected: str) -> None:
    problems = review_problems(data)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_the_requests_namespace_fills_in_an_object_that_names_none() -> None:
    data = review()
    assert with_request_namespace(copy.deepcopy(data))["request"]["object"]["metadata"]["namespace"] == NAMESPACE
    data["request"]["object"]["metadata"]["namespace"] = "own"
    assert with_request_namespace(data)["request"]["object"]["metadata"]["namespace"] == "own"


def test_the_self_signed_certificate_serves_the_listen_address_and_loads(tmp_path: Path) -> None:
    cert_pem, key_pem = InjectionWebhookServer.build_certificate(["0.0.0.0", "127.0.0.1", "localhost"])
    certificate = x509.load_pem_x509_certificate(cert_pem)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key_pem)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")  # the key matches the certificate
    client = ssl.create_default_context(cafile=str(tmp_path / "tls.crt"))  # it is its own CA
    assert client.get_ca_certs()


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ("a string", "request.object.metadata: Input should be"),
        ({"labels": ["voicelane.dev/lane"]}, "request.object.metadata.labels: Input should be"),
        ({"labels": {"voicelane.dev/lane": 5}}, "request.object.metadata.labels.voicelane.dev/lane: Input should be"),
        ({"annotations": 3}, "request.object.metadata.annotations: Input should be"),
    ],
)
def test_an_object_whose_metadata_kopf_cannot_read_is_a_malformed_review(metadata: Any, expected: str) -> None:
    problems = review_problems(review(object={"metadata": metadata, "spec": {}}))
    assert any(problem.startswith(expected) for problem in problems), problems


class RecordingLogger(logging.Logger):
    def __init__(self) -> None:
        super().__init__("test")
        self.records: list[logging.LogRecord] = []

    def handle(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def call_handler(subject: dict[str, Any], lanes: Any) -> tuple[kopf.Patch, list[str], RecordingLogger]:
    handler = mutate_handler(lanes, image="img:1")
    patch, warnings, logger = kopf.Patch(body=kopf.Body(subject)), [], RecordingLogger()
    await handler(body=kopf.Body(subject), patch=patch, warnings=warnings, logger=logger)
    return patch, warnings, logger


async def test_the_handler_patches_the_pod_into_the_injected_one() -> None:
    subject = pod()
    patch, warnings, logger = await call_handler(subject, Lanes(lane()))
    assert warnings == []
    injected = jsonpatch.apply_patch(subject, patch.as_json_patch())
    assert injected == (await admit(subject, Lanes(lane()))).pod
    assert "Injected the sidecar of lane voice into pod web-*." in [r.getMessage() for r in logger.records]


async def test_a_fault_of_the_webhook_itself_admits_the_pod_unchanged_with_a_warning() -> None:
    async def broken(namespace: str, name: str) -> Mapping[str, Any] | None:
        raise KeyError("a bug")

    patch, warnings, logger = await call_handler(pod(), broken)
    assert not patch
    assert warnings == ["voicelane: the sidecar was not injected: internal error KeyError"]
    [record] = logger.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


async def test_a_missing_lane_is_a_warning_for_the_client_and_the_log() -> None:
    patch, warnings, logger = await call_handler(pod("ghost"), Lanes())
    assert not patch
    assert warnings == [
        f"voicelane: the sidecar was not injected: there is no VoiceLane ghost in namespace {NAMESPACE}"
    ]
    assert [r.levelno for r in logger.records] == [logging.WARNING]


# --- opting in and out, per-pod annotations, the lane's environment -----------------------------


def annotate(subject: dict[str, Any], **annotations: str) -> dict[str, Any]:
    subject["metadata"]["annotations"] = annotations
    return subject


async def admit_in_namespace(subject: dict[str, Any], lanes: Lanes) -> Admission:
    """As the webhook admits a pod sent because its namespace is labelled voicelane.dev/inject=enabled."""
    return await admit(subject, lanes, list_lanes=lanes.names, namespace_opted_in=True)


async def test_a_pod_of_an_opted_in_namespace_joins_its_only_lane() -> None:
    admission = await admit_in_namespace(pod(None), Lanes(lane("voice")))
    assert admission.warnings == ()
    assert admission.pod is not None
    assert admission.pod["metadata"]["labels"]["voicelane.dev/lane"] == "voice"
    assert admission.pod["spec"]["initContainers"][0]["name"] == "voicelane-sidecar"


async def test_an_opted_in_namespace_without_a_lane_admits_the_pod_as_it_is_with_a_warning() -> None:
    admission = await admit_in_namespace(pod(None), Lanes())
    assert admission.pod is None
    assert admission.refusal is None
    assert admission.warnings == (f"the sidecar was not injected: there is no VoiceLane in namespace {NAMESPACE}",)


async def test_with_several_lanes_a_pod_that_names_none_is_refused_naming_the_annotation() -> None:
    lanes = Lanes(lane("voice"), lane("chat"))
    admission = await admit_in_namespace(pod(None), lanes)
    assert admission.pod is None
    assert admission.refusal is not None
    assert "annotation voicelane.dev/lane" in admission.refusal
    assert "several VoiceLanes (chat, voice)" in admission.refusal
    chosen = await admit_in_namespace(annotate(pod(None), **{"voicelane.dev/lane": "chat"}), lanes)
    assert chosen.pod is not None
    assert chosen.pod["metadata"]["labels"]["voicelane.dev/lane"] == "chat"


async def test_a_pod_labelled_inject_enabled_opts_in_by_itself() -> None:
    lanes = Lanes(lane("voice"))
    admission = await admit(pod(None, **{"voicelane.dev/inject": "enabled"}), lanes, list_lanes=lanes.names)
    assert admission.pod is not None
    # Sent for a pod that does not opt in (a webhook configuration broader than the chart's): left alone.
    assert await admit(pod(None), lanes, list_lanes=lanes.names) == Admission(None)


@pytest.mark.parametrize("where", ["labels", "annotations"])
async def test_a_pod_that_opts_out_is_admitted_as_it_is_without_a_lookup(where: str) -> None:
    lanes = Lanes(lane())
    subject = pod()
    subject["metadata"].setdefault(where, {})["voicelane.dev/inject"] = "disabled"
    assert await admit_in_namespace(subject, lanes) == Admission(None)
    assert lanes.asked == []


@pytest.mark.parametrize(
    ("annotations", "named"),
    [
        ({"voicelane.dev/sidecar-cpu-limit": "one"}, "voicelane.dev/sidecar-cpu-limit"),
        ({"voicelane.dev/sidecar-log-level": "Trace"}, "voicelane.dev/sidecar-log-level"),
        ({"voicelane.dev/sidecar-image": "http://registry/img"}, "voicelane.dev/sidecar-image"),
        ({"voicelane.dev/lane": "-voice"}, "voicelane.dev/lane"),
        ({"voicelane.dev/inject": "off"}, "voicelane.dev/inject"),
    ],
)
async def test_an_invalid_annotation_refuses_the_pod_naming_it_before_any_lookup(
    annotations: dict[str, str], named: str
) -> None:
    lanes = Lanes(lane())
    admission = await admit(annotate(pod(), **annotations), lanes)
    assert admission.pod is None
    assert admission.refusal is not None
    assert admission.refusal.startswith(f"the sidecar cannot be injected: annotation {named}: ")
    assert lanes.asked == []


async def test_a_lane_named_by_annotation_must_exist() -> None:
    subject = annotate(pod(None), **{"voicelane.dev/lane": "ghost"})
    admission = await admit_in_namespace(subject, Lanes(lane()))
    assert admission.refusal == (
        f"the sidecar cannot be injected: annotation voicelane.dev/lane: there is no VoiceLane ghost in namespace"
        f" {NAMESPACE}"
    )


async def test_the_annotations_tune_the_injected_sidecar() -> None:
    subject = annotate(
        pod(), **{"voicelane.dev/sidecar-memory-limit": "1Gi", "voicelane.dev/sidecar-log-level": "Error"}
    )
    admission = await admit(subject, Lanes(lane()))
    assert admission.pod is not None
    [sidecar] = admission.pod["spec"]["initContainers"]
    assert sidecar["resources"]["limits"]["memory"] == "1Gi"
    assert sidecar["args"][-2:] == ["--log-level", "error"]


async def test_the_lanes_sidecar_env_reaches_the_injected_sidecar() -> None:
    with_env = lane()
    with_env["spec"]["sidecar"] = {
        "env": [
            {
                "name": "VOICELANE_UPSTREAMS__DEEP__API_KEY",
                "valueFrom": {"secretKeyRef": {"name": "upstream", "key": "api-key"}},
            }
        ],
        "envFrom": [{"configMapRef": {"name": "sidecar-settings"}}],
    }
    admission = await admit(pod(), Lanes(with_env))
    assert admission.pod is not None
    [sidecar] = admission.pod["spec"]["initContainers"]
    assert sidecar["env"] == with_env["spec"]["sidecar"]["env"]
    assert sidecar["envFrom"] == with_env["spec"]["sidecar"]["envFrom"]


async def test_the_handler_refuses_a_pod_with_an_invalid_annotation_as_a_client_error() -> None:
    subject = annotate(pod(), **{"voicelane.dev/sidecar-cpu-request": "fast"})
    with pytest.raises(kopf.AdmissionError) as refused:
        await call_handler(subject, Lanes(lane()))
    assert refused.value.code == 400
    assert str(refused.value).startswith(
        "voicelane: the sidecar cannot be injected: annotation voicelane.dev/sidecar-cpu-request: 'fast'"
    )
