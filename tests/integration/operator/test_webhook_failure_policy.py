"""The chart's `webhook.failurePolicy`, judged by the real API server while no webhook answers.

The chart's MutatingWebhookConfiguration is rendered with `webhook.url` at a port of 127.0.0.1 where
nothing listens (an operator that is down, or not yet ready) and registered with the API server, its
namespaceSelector narrowed to this module's namespace. A labelled pod is then created: with Fail its
creation is refused with an error that names the webhook, with Ignore (the default) it is created,
without the sidecar.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.support import CHART, helm
from tests.integration.operator.harness import Cluster, wait_until
from voicelane.delivery import HelmTemplate
from voicelane.operator.injection import INJECTED_ANNOTATION
from voicelane.processes import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]

LABELLED = {"app": "web", "voicelane.dev/lane": "chat"}


def pod_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-", "labels": LABELLED},
        "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]},
    }


def create_pod(cluster: Cluster, *, dry_run: bool = False) -> subprocess.CompletedProcess[str]:
    flags = ["--dry-run=server"] if dry_run else []
    return cluster.kubectl("create", *flags, "-o", "json", "-f", "-", stdin=json.dumps(pod_manifest()), check=False)


def rendered_configuration(cluster: Cluster, tmp_path: Path, failure_policy: str) -> dict[str, Any]:
    """The chart's webhook configuration, calling 127.0.0.1 where nothing listens."""
    values = tmp_path / f"values-{failure_policy}.yaml"
    webhook = {
        "enabled": True,
        "url": f"https://127.0.0.1:{free_port()}/mutate-pods",
        "failurePolicy": failure_policy,
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": cluster.namespace}},
    }
    values.write_text(yaml.safe_dump({"webhook": webhook}), encoding="utf-8")
    release = f"policy-{cluster.namespace.rsplit('-', 1)[-1]}"
    text = HelmTemplate(helm(), CHART, release=release, namespace=cluster.namespace, values_files=(values,)).run()
    [configuration] = [doc for doc in yaml.safe_load_all(text) if doc and doc["kind"] == "MutatingWebhookConfiguration"]
    return dict(configuration)


@pytest.fixture
def policy_cluster(cluster: Cluster) -> Iterator[Cluster]:
    namespace = f"voicelane-policy-{secrets.token_hex(3)}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        yield dataclasses.replace(cluster, namespace=namespace)
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def register(cluster: Cluster, configuration: dict[str, Any]) -> None:
    cluster.apply(configuration)


def test_fail_refuses_a_pod_while_no_webhook_answers_and_ignore_admits_it_without_the_sidecar(
    policy_cluster: Cluster, tmp_path: Path
) -> None:
    failing = rendered_configuration(policy_cluster, tmp_path, "Fail")
    name = failing["metadata"]["name"]
    register(policy_cluster, failing)
    try:
        # The API server loads a configuration asynchronously: the first refusal shows it is in effect.
        refused = wait_until(
            lambda: (result := create_pod(policy_cluster, dry_run=True)).returncode != 0 and result,
            30,
            what="the API server to call the unanswering webhook",
        )
        assert 'failed calling webhook "sidecar-injector.voicelane.dev"' in refused.stderr
        assert "connection refused" in refused.stderr
        assert create_pod(policy_cluster).returncode != 0
        assert policy_cluster.kubectl("get", "pods", "-o", "name").stdout.strip() == ""  # nothing was created

        # The same configuration with the chart's default policy.
        ignoring = rendered_configuration(policy_cluster, tmp_path, "Ignore")
        assert {hook["failurePolicy"] for hook in ignoring["webhooks"]} == {"Ignore"}
        assert ignoring["metadata"]["name"] == name
        register(policy_cluster, ignoring)
        wait_until(
            lambda: create_pod(policy_cluster, dry_run=True).returncode == 0,
            30,
            what="the API server to apply the Ignore policy",
        )
        created = create_pod(policy_cluster)
        assert created.returncode == 0, created.stderr
        pod = json.loads(created.stdout)
        assert pod["metadata"]["labels"] == LABELLED
        assert [container["name"] for container in pod["spec"]["containers"]] == ["web"]
        assert "initContainers" not in pod["spec"]  # no sidecar
        assert INJECTED_ANNOTATION not in (pod["metadata"].get("annotations") or {})
    finally:
        policy_cluster.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found", check=False)
