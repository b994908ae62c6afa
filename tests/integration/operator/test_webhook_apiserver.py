"""Sidecar injection judged by the real API server: the chart's webhook configuration calls the operator.

The operator runs as a local process serving the webhook on 127.0.0.1 with a self-signed certificate
it writes out (`--webhook-ca-out`). The chart, rendered with `webhook.url` pointing there and that CA as
`webhook.caBundle`, gives the MutatingWebhookConfiguration that is registered, exactly as rendered (only
its namespaceSelector narrowed, through the chart's value, to this module's namespaces). Pods are then
created through the API server, in namespaces that enforce the Pod Security "restricted" profile the
chart targets: a labelled pod comes back with the sidecar, an unlabelled one untouched, and with the
operator stopped the chart's failure policy decides. In a second namespace, labelled
voicelane.dev/inject=enabled, every pod gets the sidecar of the namespace's lane unless it opts out;
pod annotations tune the sidecar, an invalid one fails the pod's creation naming it, and the lane's
spec.sidecar.env gives the sidecar a variable from a Secret.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.support import CHART, helm
from tests.integration.operator.harness import Cluster, Lane, OperatorProcess, condition, wait_until
from tests.support.kube import KubeTarget
from voicelane.delivery import HelmTemplate
from voicelane.operator.injection import INJECTED_ANNOTATION
from voicelane.processes import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(180)]

IMAGE = "registry.example/voicelane-sidecar:test"
SIDECAR = "voicelane-sidecar"
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}


def apply(cluster: Cluster, *documents: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents))


def app_pod(labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """An app pod meeting the restricted profile."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-",
            "labels": {"app": "web", **labels},
            **({"annotations": annotations} if annotations else {}),
        },
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "web",
                    "image": "registry.example/web:1",
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }


def create_pod(
    cluster: Cluster, *, labels: dict[str, str], annotations: dict[str, str] | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Create an app pod meeting the restricted profile through the API server; the stored object."""
    flags = ["--dry-run=server"] if dry_run else []
    pod = app_pod(labels, annotations)
    result = cluster.kubectl("create", *flags, "-o", "json", "-f", "-", stdin=json.dumps(pod))
    created: dict[str, Any] = json.loads(result.stdout)
    return created


def sidecars(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in pod["spec"].get("initContainers", []) if c["name"] == SIDECAR]


@dataclasses.dataclass
class Registration:
    """The webhook configuration the chart rendered, as the API server stores it."""

    name: str
    ca_bundle: str
    stored: dict[str, Any]

    @property
    def hook(self) -> dict[str, Any]:
        """The entry for pods labelled with their lane (the first of the chart's three)."""
        return dict(self.stored["webhooks"][0])


@pytest.fixture(scope="module")
def hook_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster seen from a namespace of this module's own that enforces the restricted profile."""
    namespace = f"voicelane-admission-{secrets.token_hex(3)}"
    apply(cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": RESTRICTED}})
    try:
        yield dataclasses.replace(cluster, namespace=namespace)
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def opted_in_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster seen from a second namespace, restricted too, labelled voicelane.dev/inject=enabled."""
    namespace = f"voicelane-opted-in-{secrets.token_hex(3)}"
    labels = {**RESTRICTED, "voicelane.dev/inject": "enabled"}
    apply(cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}})
    try:
        yield dataclasses.replace(cluster, namespace=namespace)
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def webhook_operator(
    hook_cluster: Cluster, opted_in_cluster: Cluster, operator_logs: Path
) -> Iterator[tuple[OperatorProcess, Path]]:
    """The operator serving this namespace and the webhook on 127.0.0.1, with the CA it wrote out."""
    log_dir = operator_logs / f"admission-{secrets.token_hex(3)}"
    log_dir.mkdir()
    ca_file = log_dir / "webhook-ca.pem"
    process = OperatorProcess(
        hook_cluster,
        log_dir,
        metrics_port=free_port(),
        liveness_port=free_port(),
        extra_args=(
            f"--webhook-listen=127.0.0.1:{free_port()}",
            f"--webhook-ca-out={ca_file}",
            f"--sidecar-image={IMAGE}",
            f"--namespace={opted_in_cluster.namespace}",
        ),
    )
    process.start()
    try:
        wait_until(ca_file.exists, 30, what="the webhook's CA written out")
        yield process, ca_file
    finally:
        if process.alive():
            # Lanes carry the operator's finalizer: let it release them before it stops.
            for namespaced in (hook_cluster, opted_in_cluster):
                namespaced.kubectl("delete", "voicelanes", "--all", "--wait=true", "--timeout=120s", check=False)
        process.stop()


@pytest.fixture(scope="module")
def lane(hook_cluster: Cluster, webhook_operator: tuple[OperatorProcess, Path]) -> str:
    """A lane in the namespace: what the webhook looks up for each labelled pod."""
    subject = Lane(hook_cluster, f"lane-{secrets.token_hex(3)}")
    apply(hook_cluster, subject.manifest())
    return subject.name


UPSTREAM_KEY = "VOICELANE_UPSTREAMS__DEEP__API_KEY"


@pytest.fixture(scope="module")
def opted_in_lane(opted_in_cluster: Cluster, webhook_operator: tuple[OperatorProcess, Path]) -> str:
    """The only lane of the opted-in namespace; its sidecars get an upstream API key from a Secret."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "upstream-keys", "namespace": opted_in_cluster.namespace},
        "stringData": {"deep": "not-a-real-key"},
    }
    subject = Lane(opted_in_cluster, f"lane-{secrets.token_hex(3)}")
    sidecar_env = {"name": UPSTREAM_KEY, "valueFrom": {"secretKeyRef": {"name": "upstream-keys", "key": "deep"}}}
    apply(opted_in_cluster, secret, subject.manifest(sidecar={"env": [sidecar_env]}))
    return subject.name


@pytest.fixture(scope="module")
def registration(
    hook_cluster: Cluster,
    opted_in_cluster: Cluster,
    webhook_operator: tuple[OperatorProcess, Path],
    lane: str,
    opted_in_lane: str,
) -> Iterator[Registration]:
    """The chart's MutatingWebhookConfiguration for the local webhook, registered and in effect."""
    process, ca_file = webhook_operator
    webhook_listen = next(arg for arg in process.extra_args if arg.startswith("--webhook-listen="))
    url = f"https://{webhook_listen.split('=', 1)[1]}/mutate-pods"
    ca_bundle = base64.b64encode(ca_file.read_bytes()).decode()
    values = process.log_dir / "webhook-values.yaml"
    webhook_values = {
        "enabled": True,
        "url": url,
        "caBundle": ca_bundle,
        "namespaceSelector": {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "In",
                    "values": [hook_cluster.namespace, opted_in_cluster.namespace],
                }
            ]
        },
    }
    values.write_text(yaml.safe_dump({"webhook": webhook_values}), encoding="utf-8")
    rendered = HelmTemplate(
        helm(),
        CHART,
        release=f"admission-{secrets.token_hex(3)}",
        namespace=hook_cluster.namespace,
        values_files=(values,),
    ).run()
    [configuration] = [
        doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "MutatingWebhookConfiguration"
    ]
    name = configuration["metadata"]["name"]
    apply(hook_cluster, configuration)
    try:
        # The API server picks up a new configuration asynchronously: a dry-run pod shows when it calls it.
        wait_until(
            lambda: sidecars(create_pod(hook_cluster, labels={"voicelane.dev/lane": lane}, dry_run=True)),
            30,
            what="the API server to call the registered webhook",
        )
        wait_until(
            lambda: sidecars(create_pod(opted_in_cluster, labels={}, dry_run=True)),
            30,
            what="the API server to call the webhook for the opted-in namespace",
        )
        stored = hook_cluster.get("mutatingwebhookconfiguration", name)
        assert stored is not None
        yield Registration(name, ca_bundle, stored)
    finally:
        hook_cluster.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found", check=False)


def test_the_registered_webhook_calls_the_operator_on_loopback_with_its_ca(registration: Registration) -> None:
    client = registration.hook["clientConfig"]
    assert "service" not in client
    assert urllib.parse.urlsplit(client["url"]).hostname == "127.0.0.1"
    assert client["caBundle"] == registration.ca_bundle


def test_a_labelled_pod_gets_the_sidecar_as_a_native_sidecar_and_runs(
    hook_cluster: Cluster, registration: Registration, lane: str, kube: KubeTarget
) -> None:
    pod = create_pod(hook_cluster, labels={"voicelane.dev/lane": lane})
    [sidecar] = pod["spec"]["initContainers"]
    assert sidecar["name"] == SIDECAR
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == IMAGE
    assert pod["metadata"]["annotations"][INJECTED_ANNOTATION] == "true"
    assert {"name": "VOICELANE_URL", "value": "http://127.0.0.1:8787"} in pod["spec"]["containers"][0]["env"]
    if kube.local is not None:  # KWOK marks pods Running and Ready; a real node would pull the made-up image
        name = pod["metadata"]["name"]
        running = wait_until(
            lambda: (
                (found := hook_cluster.get("pod", name)) and condition(found, "Ready").get("status") == "True" and found
            ),
            30,
            what=f"pod {name} to be Ready",
        )
        assert running["status"]["phase"] == "Running"


def test_a_pod_without_the_label_is_untouched(hook_cluster: Cluster, registration: Registration) -> None:
    pod = create_pod(hook_cluster, labels={})
    assert "initContainers" not in pod["spec"]
    assert INJECTED_ANNOTATION not in (pod["metadata"].get("annotations") or {})
    assert [container["name"] for container in pod["spec"]["containers"]] == ["web"]


# --- opting in by namespace, opting out, annotations, the lane's environment ---------------------


def test_a_pod_of_an_opted_in_namespace_gets_the_sidecar_of_its_lane(
    opted_in_cluster: Cluster, registration: Registration, opted_in_lane: str
) -> None:
    pod = create_pod(opted_in_cluster, labels={})
    [sidecar] = sidecars(pod)
    assert sidecar["image"] == IMAGE
    assert pod["metadata"]["labels"]["voicelane.dev/lane"] == opted_in_lane
    [config] = [volume for volume in pod["spec"]["volumes"] if "configMap" in volume]
    assert config["configMap"]["name"] == f"{opted_in_lane}-sidecar"


@pytest.mark.parametrize("where", ["labels", "annotations"])
def test_a_pod_that_opts_out_is_created_without_the_sidecar(
    opted_in_cluster: Cluster, registration: Registration, where: str
) -> None:
    opt_out = {"voicelane.dev/inject": "disabled"}
    pod = create_pod(opted_in_cluster, labels=opt_out if where == "labels" else {}, annotations=opt_out)
    assert sidecars(pod) == []
    assert INJECTED_ANNOTATION not in (pod["metadata"].get("annotations") or {})
    assert "voicelane.dev/lane" not in pod["metadata"]["labels"]


def test_annotations_change_the_injected_sidecar(hook_cluster: Cluster, registration: Registration, lane: str) -> None:
    annotations = {
        "voicelane.dev/sidecar-image": "registry.example/voicelane-sidecar:canary",
        "voicelane.dev/sidecar-log-level": "Debug",
        "voicelane.dev/sidecar-cpu-request": "100m",
        "voicelane.dev/sidecar-memory-limit": "1Gi",
    }
    pod = create_pod(hook_cluster, labels={"voicelane.dev/lane": lane}, annotations=annotations)
    [sidecar] = sidecars(pod)
    assert sidecar["image"] == "registry.example/voicelane-sidecar:canary"
    assert sidecar["args"][-2:] == ["--log-level", "debug"]
    assert sidecar["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("voicelane.dev/sidecar-memory-limit", "lots"),
        ("voicelane.dev/sidecar-log-level", "Verbose"),
        ("voicelane.dev/sidecar-image", "Not An Image"),
        ("voicelane.dev/lane", "no-such-lane"),
    ],
)
def test_an_invalid_annotation_fails_the_pods_creation_naming_it(
    opted_in_cluster: Cluster,
    registration: Registration,
    webhook_operator: tuple[OperatorProcess, Path],
    annotation: str,
    value: str,
) -> None:
    pod = app_pod({}, {annotation: value})
    result = opted_in_cluster.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(pod), check=False)
    assert result.returncode != 0
    assert "denied the request" in result.stderr
    assert f"annotation {annotation}: " in result.stderr
    # The pod's own mistake: one INFO line in the operator's log, no ERROR.
    log = webhook_operator[0].log()
    assert f"annotation {annotation}: {value!r}" in log or f"no VoiceLane {value}" in log
    assert "failed permanently" not in log


def test_a_secret_backed_variable_of_the_lane_reaches_the_sidecar(
    opted_in_cluster: Cluster, registration: Registration, opted_in_lane: str
) -> None:
    pod = create_pod(opted_in_cluster, labels={})
    [sidecar] = sidecars(pod)
    assert sidecar["env"] == [
        {"name": UPSTREAM_KEY, "valueFrom": {"secretKeyRef": {"name": "upstream-keys", "key": "deep"}}}
    ]
    for container in pod["spec"]["containers"]:  # the app never sees the key
        assert UPSTREAM_KEY not in {var["name"] for var in container.get("env") or []}


# Last: the restarted operator makes itself a new certificate, which the registered caBundle does not hold.


def test_with_the_operator_stopped_a_labelled_pod_is_admitted_without_the_sidecar(
    hook_cluster: Cluster, registration: Registration, webhook_operator: tuple[OperatorProcess, Path], lane: str
) -> None:
    # The chart documents failurePolicy Ignore: a webhook that is down never blocks pod creation.
    assert registration.hook["failurePolicy"] == "Ignore"
    process, _ = webhook_operator
    process.stop()
    try:
        pod = create_pod(hook_cluster, labels={"voicelane.dev/lane": lane})
    finally:
        process.start()
    assert pod["metadata"]["labels"]["voicelane.dev/lane"] == lane
    assert sidecars(pod) == []
    assert INJECTED_ANNOTATION not in (pod["metadata"].get("annotations") or {})
