"""Every pod the chart, the kubectl samples and the operator render meets Pod Security "restricted"."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.pod_security import containers, violations
from tests.delivery.support import REPO, Render, pod_templates
from voicelane.operator.cli import PLACEHOLDER_UID
from voicelane.operator.render import render_children


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def operator_children() -> list[dict[str, Any]]:
    [lane] = documents(REPO / "manifests" / "samples" / "voicelane.yaml")
    lane["metadata"]["uid"] = PLACEHOLDER_UID
    return render_children(lane, operator_namespace="voicelane-system")


def assert_restricted(objects: list[dict[str, Any]], *, expect_pods: int) -> None:
    pods = [(obj, metadata, spec) for obj in objects for metadata, spec in pod_templates(obj)]
    assert len(pods) >= expect_pods, f"expected at least {expect_pods} pod templates, found {len(pods)}"
    problems = [
        f"{obj['kind']}/{obj['metadata']['name']}: {problem}"
        for obj, metadata, spec in pods
        for problem in violations(metadata, spec)
    ]
    assert not problems, "Pod Security 'restricted' violations:\n" + "\n".join(problems)


@pytest.mark.tools
def test_every_pod_of_the_chart_is_restricted(each_render: Render) -> None:
    # The operator Deployment and the `helm test` pod, with each set of values.
    assert_restricted(each_render.documents, expect_pods=2)


def test_the_install_manifest_and_the_sample_app_are_restricted() -> None:
    assert_restricted(documents(REPO / "manifests" / "install.yaml"), expect_pods=1)
    assert_restricted(documents(REPO / "manifests" / "samples" / "app-with-sidecar.yaml"), expect_pods=1)


def test_every_pod_the_operator_renders_for_the_sample_lane_is_restricted() -> None:
    # The fast and the deep tier's model servers.
    assert_restricted(operator_children(), expect_pods=2)


def test_the_namespace_of_the_install_manifest_enforces_restricted() -> None:
    [namespace] = [doc for doc in documents(REPO / "manifests" / "install.yaml") if doc["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.tools
def test_chart_and_sample_containers_have_a_read_only_root_filesystem(each_render: Render) -> None:
    objects = each_render.documents + documents(REPO / "manifests" / "samples" / "app-with-sidecar.yaml")
    writable = [
        f"{obj['metadata']['name']}/{label}"
        for obj in objects
        for _, spec in pod_templates(obj)
        for label, container in containers(spec)
        if (container.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True
    ]
    assert not writable


# --- the checks themselves catch what they should ---------------------------------------------------

GOOD_POD: dict[str, Any] = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [
        {
            "name": "app",
            "image": "example",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
    ],
    "volumes": [{"name": "config", "configMap": {"name": "c"}}, {"name": "tmp", "emptyDir": {}}],
}


def app(spec: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = spec["containers"][0]
    return container


BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "host network": lambda spec: spec.update(hostNetwork=True),
    "host PID": lambda spec: spec.update(hostPID=True),
    "hostPath volume": lambda spec: spec["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
    "NFS volume": lambda spec: spec["volumes"].append({"name": "share", "nfs": {"server": "s", "path": "/"}}),
    "host port": lambda spec: app(spec).update(ports=[{"containerPort": 80, "hostPort": 80}]),
    "privileged": lambda spec: app(spec)["securityContext"].update(privileged=True),
    "privilege escalation allowed": lambda spec: app(spec)["securityContext"].pop("allowPrivilegeEscalation"),
    "capabilities kept": lambda spec: app(spec)["securityContext"].pop("capabilities"),
    "capability added": lambda spec: app(spec)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
    "runs as root": lambda spec: spec["securityContext"].update(runAsNonRoot=False),
    "uid 0": lambda spec: app(spec)["securityContext"].update(runAsUser=0),
    "no seccomp": lambda spec: spec["securityContext"].pop("seccompProfile"),
    "unconfined seccomp": lambda spec: app(spec)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
    "unsafe sysctl": lambda spec: spec["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
    "unprotected init container": lambda spec: spec.update(initContainers=[{"name": "init", "image": "example"}]),
}


def test_a_good_pod_passes() -> None:
    assert violations({}, GOOD_POD) == []


def test_net_bind_service_is_the_one_capability_that_may_be_added() -> None:
    spec = copy.deepcopy(GOOD_POD)
    app(spec)["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert violations({}, spec) == []


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_each_control_catches_its_violation(name: str) -> None:
    spec = copy.deepcopy(GOOD_POD)
    BREAKS[name](spec)
    assert violations({}, spec), f"{name} went unnoticed"


def test_an_unconfined_apparmor_annotation_is_caught() -> None:
    metadata = {"annotations": {"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}}
    assert violations(metadata, GOOD_POD)
