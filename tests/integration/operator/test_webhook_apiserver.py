"""Sidecar injection judged by the real API server: the chart's webhook configuration calls the operator.

The operator runs as a local process serving the webhook on 127.0.0.1 with a self-signed certificate
it writes out (`--webhook-ca-out`). The chart, rendered with `webhook.url` pointing there and that CA as
`webhook.caBundle`, gives the MutatingWebhookConfiguration that is registered, exactly as rendered (only
its namespaceSelector narrowed, through the chart's value, to this module's namespace). Pods are then
created through the API server, in a namespace that enforces the Pod Security "restricted" profile the
chart targets: a labelled pod comes back with the sidecar, an unlabelled one untouched, and with the
operator stopped the chart's failure policy decides.
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


def create_pod(cluster: Cluster, *, labels: dict[str, str], dry_run: bool = False) -> dict[str, Any]:
    """Create an app pod meeting the restricted profile through the API server; the stored object."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-", "labels": {"app": "web", **labels}},
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
    flags = ["--dry-run=server"] if dry_run else []
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
        [hook] = self.stored["webhooks"]
        return dict(hook)


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
def webhook_operator(hook_cluster: Cluster, operator_logs: Path) -> Iterator[tuple[OperatorProcess, Path]]:
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
        ),
    )
    process.start()
    try:
        wait_until(ca_file.exists, 30, what="the webhook's CA written out")
        yield process, ca_file
    finally:
        if process.alive():
            # Lanes carry the operator's finalizer: let it release them before it stops.
            hook_cluster.kubectl("delete", "voicelanes", "--all", "--wait=true", "--timeout=120s", check=False)
        process.stop()


@pytest.fixture(scope="module")
def lane(hook_cluster: Cluster, webhook_operator: tuple[OperatorProcess, Path]) -> str:
    """A lane in the namespace: what the webhook looks up for each labelled pod."""
    subject = Lane(hook_cluster, f"lane-{secrets.token_hex(3)}")
    apply(hook_cluster, subject.manifest())
    return subject.name


@pytest.fixture(scope="module")
def registration(
    hook_cluster: Cluster, webhook_operator: tuple[OperatorProcess, Path], lane: str
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
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": hook_cluster.namespace}},
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
