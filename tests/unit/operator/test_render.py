"""The renderer: every child a VoiceLane needs, valid for Kubernetes, owned, labelled and hardened."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.unit.operator.conftest import LANE_UID, with_spec
from voicelane.operator.api import OPERATOR_POD_ANNOTATIONS, OPERATOR_POD_LABELS, SpecError
from voicelane.operator.render import (
    ANNOTATION_SPEC_HASH,
    MODEL_DOWNLOAD_BYTES,
    crd_path_of_sidecar_key,
    default_model_store_limit,
    ollama_duration,
    render_children,
    tier_warnings,
)
from voicelane.sidecar.config import ConfigError, load_config

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
COMMON_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "voicelane.dev/lane",
)


def by_kind_and_name(children: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(child["kind"], child["metadata"]["name"]): child for child in children}


def pod_spec(children: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    spec: dict[str, Any] = by_kind_and_name(children)[("Deployment", deployment)]["spec"]["template"]["spec"]
    return spec


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == name]
    return found


def env_of(container_spec: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var.get("value", "<from>") for var in container_spec["env"]}


def lanes_to_validate() -> list[str]:
    return ["sample", "minimal", "existing-claim", "gpu", "pod-options", "gated"]


@pytest.fixture
def lane_variants(sample_lane: dict, minimal_lane: dict) -> dict[str, dict]:
    existing = with_spec(
        minimal_lane,
        fast={"storage": {"existingClaim": "shared-models", "accessMode": "ReadWriteMany"}, "replicas": 3},
        deep={
            "env": [
                {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            ],
            "priorityClassName": "voice-critical",
        },
    )
    gpu = with_spec(
        minimal_lane,
        deep={"resources": {"cpu": "8", "memory": "24Gi", "extended": {"nvidia.com/gpu": 1, "example.com/fpga": 2}}},
    )
    pod_options = with_spec(
        minimal_lane,
        fast={
            "runtimeClassName": "nvidia",
            "imagePullSecrets": [{"name": "registry-mirror"}, {"name": "ghcr"}],
            "podLabels": {"team": "voice", "example.com/cost-centre": "ml-42"},
            "podAnnotations": {"example.com/notes": "warm model; do not evict {please}"},
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"},
                {
                    "maxSkew": 2,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"team": "voice"}},
                    "matchLabelKeys": ["pod-template-hash"],
                    "nodeTaintsPolicy": "Honor",
                },
            ],
        },
    )
    return {
        "sample": sample_lane,
        "minimal": minimal_lane,
        "existing-claim": existing,
        "gpu": gpu,
        "pod-options": pod_options,
        "gated": with_spec(sample_lane, gate={"enabled": True}),
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", lanes_to_validate())
def test_every_child_validates_strictly(lane_variants: dict, variant: str, version: str) -> None:
    for child in render_children(lane_variants[variant]):
        kubernetes_validate.validate(child, version, strict=True)


def test_sample_children_and_their_names(sample_lane: dict) -> None:
    assert list(by_kind_and_name(render_children(sample_lane))) == [
        ("ConfigMap", "voice-sidecar"),
        ("NetworkPolicy", "voice-ollama"),
        ("PersistentVolumeClaim", "voice-fast-models"),
        ("Service", "voice-fast"),
        ("Deployment", "voice-fast"),
        ("Service", "voice-deep"),
        ("Deployment", "voice-deep"),
        ("PodDisruptionBudget", "voice-deep"),  # deep has 2 replicas, fast 1
    ]


def test_every_child_is_owned_by_the_lane_and_labelled(sample_lane: dict) -> None:
    for child in render_children(sample_lane):
        metadata = child["metadata"]
        assert metadata["namespace"] == "default"
        assert metadata["ownerReferences"] == [
            {
                "apiVersion": "voicelane.dev/v1alpha1",
                "kind": "VoiceLane",
                "name": "voice",
                "uid": LANE_UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert all(metadata["labels"].get(label) for label in COMMON_LABELS), metadata["name"]
        assert metadata["labels"]["voicelane.dev/lane"] == "voice"
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "voicelane-operator"
        assert len(metadata["annotations"][ANNOTATION_SPEC_HASH]) == 16
        if child["kind"] not in ("ConfigMap", "NetworkPolicy"):
            assert metadata["labels"]["voicelane.dev/tier"] in metadata["name"]


@pytest.mark.parametrize(("tier", "port"), [("fast", 11435), ("deep", 11434)])
def test_services_expose_the_tier_ports_to_ollama(sample_lane: dict, tier: str, port: int) -> None:
    children = by_kind_and_name(render_children(sample_lane))
    service = children[("Service", f"voice-{tier}")]["spec"]
    deployment = children[("Deployment", f"voice-{tier}")]["spec"]
    assert service["ports"] == [
        {"name": "http", "port": port, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]
    assert service["selector"] == deployment["selector"]["matchLabels"]
    assert service["selector"].items() <= deployment["template"]["metadata"]["labels"].items()
    server = container(deployment["template"]["spec"], "ollama")
    assert server["ports"] == [{"name": "http", "containerPort": 11434, "protocol": "TCP"}]
    assert env_of(server)["OLLAMA_HOST"] == "0.0.0.0:11434"


@pytest.mark.parametrize(("tier", "port"), [("fast", 11435), ("deep", 11434)])
def test_with_the_gate_the_service_reaches_ollama_only_through_it(lane_variants: dict, tier: str, port: int) -> None:
    children = by_kind_and_name(render_children(lane_variants["gated"]))
    service = children[("Service", f"voice-{tier}")]["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    pod = children[("Deployment", f"voice-{tier}")]["spec"]["template"]["spec"]
    gate, server, warmer = container(pod, "gate"), container(pod, "ollama"), container(pod, "warmer")
    # The port the Service targets is the gate's; Ollama listens on loopback, where only the pod reaches it.
    assert gate["ports"] == [
        {"name": "http", "containerPort": 11434, "protocol": "TCP"},
        {"name": "gate-metrics", "containerPort": 9465, "protocol": "TCP"},  # what the PodMonitor scrapes
    ]
    assert "ports" not in server
    assert env_of(server)["OLLAMA_HOST"] == "127.0.0.1:11400"
    assert env_of(warmer)["OLLAMA_HOST"] == env_of(container(pod, "pull-model"))["OLLAMA_HOST"] == "127.0.0.1:11400"
    assert "httpGet" not in server["livenessProbe"]  # the kubelet cannot reach loopback
    args = gate["args"]
    tier_spec = lane_variants["gated"]["spec"][tier]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert gate["command"] == ["voicelane", "gate"]
    assert flags["--upstream"] == "http://127.0.0.1:11400"
    assert flags["--metrics-listen"] == "0.0.0.0:9465"
    assert flags["--slots"] == str(tier_spec.get("numParallel", 1))
    assert (flags["--cpu-limit"], flags["--memory-limit"]) == (
        server["resources"]["limits"]["cpu"],
        server["resources"]["limits"]["memory"],
    )
    assert flags["--model"] == env_of(server)["VOICELANE_MODEL"]
    assert gate["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert pod["shareProcessNamespace"] is True  # the gate's guardian reads Ollama's processes
    template_labels = children[("Deployment", f"voice-{tier}")]["spec"]["template"]["metadata"]["labels"]
    assert template_labels["voicelane.dev/gate"] == "true"  # what the chart's PodMonitor scrapes
    for spec in pod["initContainers"] + pod["containers"]:
        assert spec["resources"]["requests"] == spec["resources"]["limits"], spec["name"]  # still Guaranteed


def test_without_the_gate_the_pod_has_none(sample_lane: dict) -> None:
    pod = pod_spec(render_children(sample_lane), "voice-fast")
    assert [c["name"] for c in pod["containers"]] == ["ollama", "warmer"]
    assert "shareProcessNamespace" not in pod


def test_pods_are_guaranteed_qos(sample_lane: dict) -> None:
    for tier, cpu, memory in (("fast", "2", "4Gi"), ("deep", "4", "12Gi")):
        pod = pod_spec(render_children(sample_lane), f"voice-{tier}")
        for spec in pod["initContainers"] + pod["containers"]:
            resources = spec["resources"]
            assert resources["requests"] == resources["limits"], spec["name"]
            assert set(resources["requests"]) == {"cpu", "memory", "ephemeral-storage"}, spec["name"]
        for name in ("ollama", "pull-model"):
            limits = container(pod, name)["resources"]["limits"]
            assert (limits["cpu"], limits["memory"]) == (cpu, memory)


def test_extended_resources_go_to_the_model_server_with_requests_equal_to_limits(lane_variants: dict) -> None:
    pod = pod_spec(render_children(lane_variants["gpu"]), "lane-deep")
    devices = {"example.com/fpga": "2", "nvidia.com/gpu": "1"}
    reserved = {"cpu": "8", "memory": "24Gi", "ephemeral-storage": "7Gi", **devices}
    assert container(pod, "ollama")["resources"] == {"requests": reserved, "limits": reserved}
    # The pull and the warmer never run the model: no device is held for them.
    for name in ("pull-model", "warmer"):
        assert not set(container(pod, name)["resources"]["limits"]) & set(devices), name
    for spec in pod["initContainers"] + pod["containers"]:
        assert spec["resources"]["requests"] == spec["resources"]["limits"], spec["name"]  # still Guaranteed


@pytest.mark.parametrize("name", ["nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915", "example.com/a_b.c-1"])
def test_any_domain_qualified_extended_resource_is_accepted(minimal_lane: dict, name: str) -> None:
    lane = with_spec(minimal_lane, fast={"resources": {"cpu": 1, "memory": "2Gi", "extended": {name: 1}}})
    pod = pod_spec(render_children(lane), "lane-fast")
    assert container(pod, "ollama")["resources"]["limits"][name] == "1"


@pytest.mark.parametrize(
    "name", ["gpu", "cpu", "hugepages-2Mi", "kubernetes.io/gpu", "Example.com/gpu", "example.com/", "a/" + "x" * 64]
)
def test_names_that_are_not_extended_resources_are_refused_at_the_field(minimal_lane: dict, name: str) -> None:
    lane = with_spec(minimal_lane, fast={"resources": {"cpu": 1, "memory": "2Gi", "extended": {name: 1}}})
    with pytest.raises(SpecError) as raised:
        render_children(lane)
    [problem] = raised.value.problems
    assert problem.startswith("spec.fast.resources.extended: each name must be an extended resource"), problem


def test_a_device_count_below_one_is_refused(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, fast={"resources": {"cpu": 1, "memory": "2Gi", "extended": {"nvidia.com/gpu": 0}}})
    with pytest.raises(SpecError, match=r"spec\.fast\.resources\.extended\.nvidia\.com/gpu: Input should be greater"):
        render_children(lane)


def test_model_server_env_comes_from_the_spec(sample_lane: dict) -> None:
    pod = pod_spec(render_children(sample_lane), "voice-deep")
    env = env_of(container(pod, "ollama"))
    assert env["OLLAMA_KEEP_ALIVE"] == "15m"
    assert env["OLLAMA_NUM_PARALLEL"] == "2"
    assert env["OLLAMA_MAX_QUEUE"] == "16"
    assert env["OLLAMA_CONTEXT_LENGTH"] == "8192"
    assert env["OLLAMA_MODELS"] == "/models"
    assert env["VOICELANE_MODEL"] == "llama3.1:8b"


def test_context_length_is_left_to_ollama_when_unset(minimal_lane: dict) -> None:
    env = env_of(container(pod_spec(render_children(minimal_lane), "lane-fast"), "ollama"))
    assert "OLLAMA_CONTEXT_LENGTH" not in env
    assert env["OLLAMA_NUM_PARALLEL"] == "1"


def test_extra_env_reaches_the_server_and_the_pull_but_not_the_warmer(lane_variants: dict) -> None:
    pod = pod_spec(render_children(lane_variants["existing-claim"]), "lane-deep")
    proxy = {"name": "HTTPS_PROXY", "value": "http://proxy:3128"}
    token = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert container(pod, "ollama")["env"][-2:] == [proxy, token]
    assert container(pod, "pull-model")["env"][-2:] == [proxy, token]
    assert "HTTPS_PROXY" not in env_of(container(pod, "warmer"))


def test_ollama_cloud_is_off_unless_the_lane_turns_it_on(minimal_lane: dict) -> None:
    server = container(pod_spec(render_children(minimal_lane), "lane-fast"), "ollama")
    assert env_of(server)["OLLAMA_NO_CLOUD"] == "1"  # cloud models would send the lane's texts to ollama.com
    opted_in = with_spec(minimal_lane, fast={"env": [{"name": "OLLAMA_NO_CLOUD", "value": "0"}]})
    server = container(pod_spec(render_children(opted_in), "lane-fast"), "ollama")
    # One entry per name: server-side apply refuses a list keyed by name with duplicates.
    assert [var for var in server["env"] if var["name"] == "OLLAMA_NO_CLOUD"] == [
        {"name": "OLLAMA_NO_CLOUD", "value": "0"}
    ]


def test_untagged_models_are_checked_under_their_latest_tag(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, fast={"model": "qwen2.5"})
    pod = pod_spec(render_children(lane), "lane-fast")
    assert {env_of(container(pod, name))["VOICELANE_MODEL"] for name in ("pull-model", "ollama", "warmer")} == {
        "qwen2.5:latest"
    }


def test_probes_require_the_model_to_be_loaded(sample_lane: dict) -> None:
    server = container(pod_spec(render_children(sample_lane), "voice-fast"), "ollama")
    for probe in ("startupProbe", "readinessProbe"):
        command = server[probe]["exec"]["command"]
        assert command[:2] == ["sh", "-c"]
        assert "ollama ps" in command[2]
        assert '"$VOICELANE_MODEL"' in command[2]
    # 30 minutes to pull-and-load on start; liveness only asks whether the server answers.
    assert server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"] >= 1800
    assert server["livenessProbe"]["httpGet"] == {"path": "/api/version", "port": "http"}


def test_model_is_pulled_before_the_server_starts(sample_lane: dict) -> None:
    pod = pod_spec(render_children(sample_lane), "voice-fast")
    [pull] = pod["initContainers"]
    assert pull["name"] == "pull-model"
    assert 'ollama pull "$VOICELANE_MODEL"' in pull["command"][2]
    assert {"name": "models", "mountPath": "/models"} in pull["volumeMounts"]
    assert env_of(pull)["OLLAMA_MODELS"] == env_of(container(pod, "ollama"))["OLLAMA_MODELS"]


@pytest.mark.parametrize(
    ("seconds", "duration"),
    [(900, "15m"), (5400, "1h30m"), (86400, "24h"), (90061, "25h1m1s"), (45, "45s"), (0, "0s"), (-1, "-1s")],
)
def test_keep_alive_seconds_become_the_duration_ollama_reads(seconds: int, duration: str) -> None:
    assert ollama_duration(seconds) == duration


@pytest.mark.parametrize(("seconds", "ollama_value"), [(-1, "-1s"), (0, "0s"), (3600, "1h")])
def test_keep_alive_reaches_the_model_server_the_warmer_and_the_sidecars_alike(
    minimal_lane: dict, tmp_path: Path, seconds: int, ollama_value: str
) -> None:
    children = render_children(with_spec(minimal_lane, fast={"keepAliveSeconds": seconds}))
    pod = pod_spec(children, "lane-fast")
    assert env_of(container(pod, "ollama"))["OLLAMA_KEEP_ALIVE"] == ollama_value
    assert env_of(container(pod, "warmer"))["OLLAMA_KEEP_ALIVE"] == ollama_value
    path = tmp_path / "sidecar.yaml"
    path.write_text(by_kind_and_name(children)[("ConfigMap", "lane-sidecar")]["data"]["sidecar.yaml"], encoding="utf-8")
    assert load_config(path, environ={}).upstreams.fast.keep_alive == ollama_value


def test_a_keep_alive_of_zero_is_accepted_with_a_warning(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, deep={"keepAliveSeconds": 0})
    [warning] = tier_warnings(lane["spec"])
    assert warning.startswith("spec.deep.keepAliveSeconds is 0: the model is unloaded after every request")


def test_warmer_rewarms_at_the_tier_interval(sample_lane: dict) -> None:
    children = render_children(sample_lane)
    deep_warmer = env_of(container(pod_spec(children, "voice-deep"), "warmer"))
    fast_warmer = env_of(container(pod_spec(children, "voice-fast"), "warmer"))
    assert deep_warmer["VOICELANE_REWARM_SECONDS"] == "1200"  # rewarmIntervalSeconds: 1200
    assert fast_warmer["VOICELANE_REWARM_SECONDS"] == "1800"  # the 30m default
    assert deep_warmer["OLLAMA_HOST"] == "127.0.0.1:11434"


def test_pods_are_hardened(sample_lane: dict) -> None:
    for deployment in ("voice-fast", "voice-deep"):
        pod = pod_spec(render_children(sample_lane), deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        writable = {volume["name"] for volume in pod["volumes"]}
        for spec in pod["initContainers"] + pod["containers"]:
            security = spec["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security["readOnlyRootFilesystem"] is True
            assert security["runAsNonRoot"] is True
            mounts = {mount["mountPath"]: mount["name"] for mount in spec["volumeMounts"]}
            assert mounts["/tmp"] in writable
            env = env_of(spec)
            assert any(env["HOME"].startswith(path) for path in mounts), spec["name"]


def test_storage_size_asks_for_a_claim_and_the_pods_mount_it(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, fast={"replicas": 1, "storage": {"size": "5Gi"}})
    children = by_kind_and_name(render_children(lane))
    claim = children[("PersistentVolumeClaim", "lane-fast-models")]["spec"]
    assert claim == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}
    fast = children[("Deployment", "lane-fast")]["spec"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "lane-fast-models"}} in fast["template"]["spec"][
        "volumes"
    ]
    # A ReadWriteOnce claim cannot be mounted by a surge pod on another node.
    assert fast["strategy"] == {"type": "Recreate"}
    # The models are on the claim: the pod's ephemeral storage is its scratch space only.
    server = container(fast["template"]["spec"], "ollama")
    assert server["resources"]["limits"]["ephemeral-storage"] == "1Gi"


def test_without_a_claim_models_live_in_an_empty_dir_the_pod_reserves_storage_for(sample_lane: dict) -> None:
    deep = by_kind_and_name(render_children(sample_lane))[("Deployment", "voice-deep")]["spec"]
    pod = deep["template"]["spec"]
    assert {"name": "models", "emptyDir": {"sizeLimit": "8Gi"}} in pod["volumes"]  # storage.emptyDir.sizeLimit
    # The store, plus HOME, /tmp and logs; the pull writes the same store, so it reserves the same.
    for name in ("ollama", "pull-model"):
        resources = container(pod, name)["resources"]
        assert resources["requests"]["ephemeral-storage"] == resources["limits"]["ephemeral-storage"] == "9Gi"
    assert container(pod, "warmer")["resources"]["limits"]["ephemeral-storage"] == "64Mi"
    scratch = {
        volume["name"]: volume["emptyDir"]["sizeLimit"] for volume in pod["volumes"] if volume["name"] != "models"
    }
    assert scratch == {"home": "256Mi", "tmp": "256Mi"}
    assert deep["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


@pytest.mark.parametrize(
    ("model", "size_limit", "ephemeral_storage"),
    [
        ("llama3.2:1b", "2Gi", "3Gi"),  # 1.3 GB downloaded
        ("llama3.1:8b", "6Gi", "7Gi"),  # 4.9 GB
        ("qwen2.5:0.5b", "1Gi", "2Gi"),  # 398 MB
        ("registry.ollama.ai/library/qwen2.5", "6Gi", "7Gi"),  # qwen2.5:latest, the 7b
        ("mirror.example:5000/team/custom:7b", "16Gi", "17Gi"),  # not listed: the fallback
    ],
)
def test_the_default_empty_dir_is_sized_from_the_model(
    minimal_lane: dict, model: str, size_limit: str, ephemeral_storage: str
) -> None:
    pod = pod_spec(render_children(with_spec(minimal_lane, deep={"model": model})), "lane-deep")
    assert {"name": "models", "emptyDir": {"sizeLimit": size_limit}} in pod["volumes"]
    assert container(pod, "ollama")["resources"]["limits"]["ephemeral-storage"] == ephemeral_storage


def test_an_empty_dir_size_limit_set_in_the_spec_wins(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, fast={"storage": {"emptyDir": {"sizeLimit": "5000M"}}})
    pod = pod_spec(render_children(lane), "lane-fast")
    assert {"name": "models", "emptyDir": {"sizeLimit": "5000M"}} in pod["volumes"]
    # 5,000,000,000 bytes and 1Gi, rounded up to whole MiB.
    assert container(pod, "ollama")["resources"]["limits"]["ephemeral-storage"] == "5793Mi"


def test_a_model_of_unknown_size_is_warned_about_unless_the_spec_sizes_its_store(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, deep={"model": "team/custom:13b"})
    [warning] = tier_warnings(lane["spec"])
    assert warning.startswith("spec.deep.model team/custom:13b has no built-in download size")
    assert "set spec.deep.storage.emptyDir.sizeLimit" in warning
    sized = with_spec(minimal_lane, deep={"model": "team/custom:13b", "storage": {"emptyDir": {"sizeLimit": "9Gi"}}})
    assert tier_warnings(sized["spec"]) == []
    on_a_claim = with_spec(minimal_lane, deep={"model": "team/custom:13b", "replicas": 1, "storage": {"size": "20Gi"}})
    assert tier_warnings(on_a_claim["spec"]) == []


def test_an_empty_dir_smaller_than_the_model_is_warned_about(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, deep={"storage": {"emptyDir": {"sizeLimit": "4Gi"}}})
    [warning] = tier_warnings(lane["spec"])
    assert warning.startswith("spec.deep.storage.emptyDir.sizeLimit is 4Gi, less than the 4.9 GB llama3.1:8b")


def test_the_readme_lists_every_built_in_model_size() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    for model in MODEL_DOWNLOAD_BYTES:
        assert f"`{model}` {default_model_store_limit(model)}" in readme, model


def test_an_existing_claim_is_mounted_not_created(lane_variants: dict) -> None:
    children = render_children(lane_variants["existing-claim"])
    assert not [child for child in children if child["kind"] == "PersistentVolumeClaim"]
    volumes = pod_spec(children, "lane-fast")["volumes"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "shared-models"}} in volumes


def test_disruption_budget_only_with_more_than_one_replica(lane_variants: dict) -> None:
    children = by_kind_and_name(render_children(lane_variants["sample"]))  # fast 1 replica, deep 2
    budget = children[("PodDisruptionBudget", "voice-deep")]["spec"]
    assert budget["maxUnavailable"] == 1
    assert (
        budget["selector"]["matchLabels"] == children[("Deployment", "voice-deep")]["spec"]["selector"]["matchLabels"]
    )
    assert ("PodDisruptionBudget", "voice-fast") not in children


def test_unset_replicas_are_left_to_an_autoscaler_with_a_disruption_budget_for_its_pods(minimal_lane: dict) -> None:
    children = by_kind_and_name(render_children(minimal_lane))
    assert "replicas" not in children[("Deployment", "lane-fast")]["spec"]
    assert children[("PodDisruptionBudget", "lane-fast")]["spec"]["maxUnavailable"] == 1
    with_one = by_kind_and_name(render_children(with_spec(minimal_lane, fast={"replicas": 1})))
    assert with_one[("Deployment", "lane-fast")]["spec"]["replicas"] == 1


def test_scheduling_passes_through(sample_lane: dict) -> None:
    pod = pod_spec(render_children(sample_lane), "voice-deep")
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [
        {"key": "voicelane.dev/dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}
    ]
    assert pod["affinity"] == sample_lane["spec"]["deep"]["affinity"]
    assert "priorityClassName" not in pod


def test_priority_class_reaches_the_pod(lane_variants: dict) -> None:
    pod = pod_spec(render_children(lane_variants["existing-claim"]), "lane-deep")
    assert pod["priorityClassName"] == "voice-critical"


def test_runtime_class_and_image_pull_secrets_reach_the_pod(lane_variants: dict) -> None:
    children = render_children(lane_variants["pod-options"])
    pod = pod_spec(children, "lane-fast")
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["imagePullSecrets"] == [{"name": "registry-mirror"}, {"name": "ghcr"}]
    deep = pod_spec(children, "lane-deep")  # per tier: the other tier keeps the defaults
    assert "runtimeClassName" not in deep
    assert "imagePullSecrets" not in deep


def test_pod_labels_and_annotations_join_the_operators_own(lane_variants: dict) -> None:
    deployment = by_kind_and_name(render_children(lane_variants["pod-options"]))[("Deployment", "lane-fast")]
    template = deployment["spec"]["template"]["metadata"]
    assert template["labels"] == {
        "team": "voice",
        "example.com/cost-centre": "ml-42",
        **deployment["metadata"]["labels"],
    }
    assert template["annotations"] == {
        "example.com/notes": "warm model; do not evict {please}",
        "kubectl.kubernetes.io/default-container": "ollama",
    }
    # Only the pods carry them: the Deployment's own labels and selector stay the operator's.
    assert "team" not in deployment["metadata"]["labels"]
    assert "team" not in deployment["spec"]["selector"]["matchLabels"]


def test_the_reserved_keys_are_exactly_those_the_operator_sets_on_the_pods(minimal_lane: dict) -> None:
    template = by_kind_and_name(render_children(minimal_lane))[("Deployment", "lane-fast")]["spec"]["template"]
    assert set(template["metadata"]["labels"]) == set(OPERATOR_POD_LABELS)
    assert set(template["metadata"]["annotations"]) == set(OPERATOR_POD_ANNOTATIONS)


@pytest.mark.parametrize(
    ("field", "key", "message"),
    [
        ("podLabels", "app.kubernetes.io/name", "the operator sets the labels app.kubernetes.io/name"),
        ("podLabels", "voicelane.dev/lane", "the operator sets the labels"),
        ("podLabels", "voicelane.dev/anything", "keys under voicelane.dev/ are reserved"),
        ("podAnnotations", "kubectl.kubernetes.io/default-container", "the operator sets the annotation"),
        ("podAnnotations", "voicelane.dev/sidecar-injected", "keys under voicelane.dev/ are reserved"),
        ("podLabels", "-team", "each key must be a qualified name"),
        ("podAnnotations", "Example.com/notes", "each key must be a qualified name"),
        ("podAnnotations", "x" * 64, "each key must be a qualified name"),
        ("podAnnotations", "a" * 254 + "/notes", "each key must be a qualified name"),
    ],
)
def test_pod_metadata_the_operator_owns_or_kubernetes_refuses_is_refused_at_the_field(
    minimal_lane: dict, field: str, key: str, message: str
) -> None:
    with pytest.raises(SpecError) as raised:
        render_children(with_spec(minimal_lane, deep={field: {key: "x"}}))
    [problem] = raised.value.problems
    assert problem.startswith(f"spec.deep.{field}: "), problem
    assert message in problem


def test_a_pod_label_value_kubernetes_would_refuse_is_refused(minimal_lane: dict) -> None:
    with pytest.raises(SpecError, match=r"spec\.fast\.podLabels\.team: String should match pattern"):
        render_children(with_spec(minimal_lane, fast={"podLabels": {"team": "voice lane"}}))


def test_an_image_pull_secret_named_twice_is_refused(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, fast={"imagePullSecrets": [{"name": "ghcr"}, {"name": "ghcr"}]})
    with pytest.raises(SpecError, match=r"^spec\.fast\.imagePullSecrets: duplicate names ghcr$"):
        render_children(lane)


def test_topology_spread_defaults_to_the_tiers_own_pods(lane_variants: dict) -> None:
    children = by_kind_and_name(render_children(lane_variants["pod-options"]))
    deployment = children[("Deployment", "lane-fast")]["spec"]
    by_zone, by_host = deployment["template"]["spec"]["topologySpreadConstraints"]
    assert by_zone == {
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": deployment["selector"]["matchLabels"]},
    }
    assert by_host == {
        "maxSkew": 2,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"team": "voice"}},
        "matchLabelKeys": ["pod-template-hash"],
        "nodeTaintsPolicy": "Honor",
    }


def test_network_policy_admits_only_the_lane_and_the_operator(sample_lane: dict) -> None:
    children = by_kind_and_name(render_children(sample_lane))
    policy = children[("NetworkPolicy", "voice-ollama")]["spec"]
    for tier in ("fast", "deep"):
        pod_labels = children[("Deployment", f"voice-{tier}")]["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 11434}]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"voicelane.dev/lane": "voice"}}},
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "voicelane-operator"}},
        },
    ]


def test_network_policy_can_name_the_operator_namespace(sample_lane: dict) -> None:
    children = by_kind_and_name(render_children(sample_lane, operator_namespace="voicelane-system"))
    operator_peer = children[("NetworkPolicy", "voice-ollama")]["spec"]["ingress"][0]["from"][1]
    assert operator_peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "voicelane-system"}}


def test_sidecar_configmap_loads_with_the_sidecar_loader(sample_lane: dict, tmp_path: Path) -> None:
    configmap = by_kind_and_name(render_children(sample_lane))[("ConfigMap", "voice-sidecar")]
    path = tmp_path / "sidecar.yaml"
    path.write_text(configmap["data"]["sidecar.yaml"], encoding="utf-8")
    config = load_config(path, environ={})
    assert config.upstreams.fast.url == "http://voice-fast.default.svc:11435"
    assert config.upstreams.deep.url == "http://voice-deep.default.svc:11434"
    assert (config.upstreams.fast.model, config.upstreams.deep.model) == ("llama3.2:1b", "llama3.1:8b")
    assert config.upstreams.deep.first_token_timeout_s == 15
    assert config.server.metrics_listen == "0.0.0.0:9464"
    assert config.ttfa.targets.notification == 2.5


def test_policy_changes_reach_the_sidecar_configuration(minimal_lane: dict, tmp_path: Path) -> None:
    lane = with_spec(
        minimal_lane,
        policy={
            "rateLimit": {"burst": 12, "sustainedPerSecond": 6},
            "guardian": {"cpuThresholdPercent": 70, "sources": ["Upstream"]},
            "ttfa": {"targets": {"chat": 2.0}},
            "scheduler": {"maxWaiting": 5},
            "limits": {"maxBodySize": "128Ki"},
            "cache": {"maxSize": "1.5Gi"},
            "logLevel": "Warning",
        },
        routing={"fastMaxChars": 100, "mode": "FastOnly"},
        tts={"backend": "OpenAI", "url": "http://speech.voice.svc:8000"},
        fast={"keepAliveSeconds": 3600, "upstream": {"numPredict": 64}},
    )
    configmap = by_kind_and_name(render_children(lane))[("ConfigMap", "lane-sidecar")]
    path = tmp_path / "sidecar.yaml"
    path.write_text(configmap["data"]["sidecar.yaml"], encoding="utf-8")
    config = load_config(path, environ={})
    assert (config.rate_limit.burst, config.rate_limit.sustained_per_s) == (12, 6)
    assert config.guardian.cpu_threshold_percent == 70
    assert config.ttfa.targets.chat == 2.0
    assert config.scheduler.max_waiting == 5
    assert config.routing.fast_max_chars == 100
    assert (config.tts.backend, config.tts.url) == ("openai", "http://speech.voice.svc:8000")
    # Kubernetes spellings become the sidecar's: enum values, and sizes in bytes.
    assert (config.routing.mode, config.log_level, config.guardian.sources) == ("fast_only", "warning", ("upstream",))
    assert (config.limits.max_body_bytes, config.cache.max_bytes) == (128 * 1024, 1536 * 2**20)
    assert (config.upstreams.fast.keep_alive, config.upstreams.fast.num_predict) == ("1h", 64)


def test_render_is_deterministic_and_leaves_its_input_alone(sample_lane: dict) -> None:
    original = copy.deepcopy(sample_lane)
    first = render_children(sample_lane)
    assert render_children(copy.deepcopy(sample_lane)) == first
    assert sample_lane == original
    first[0]["metadata"]["labels"]["changed"] = "yes"
    assert "changed" not in render_children(sample_lane)[0]["metadata"]["labels"]


def test_spec_hash_changes_only_for_children_that_change(sample_lane: dict) -> None:
    before = by_kind_and_name(render_children(sample_lane))
    after = by_kind_and_name(render_children(with_spec(sample_lane, deep={"numParallel": 3})))

    def digest(children: dict, key: tuple[str, str]) -> str:
        digest_value: str = children[key]["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        return digest_value

    assert digest(before, ("Deployment", "voice-deep")) != digest(after, ("Deployment", "voice-deep"))
    assert digest(before, ("Deployment", "voice-fast")) == digest(after, ("Deployment", "voice-fast"))
    assert digest(before, ("Service", "voice-deep")) == digest(after, ("Service", "voice-deep"))


@pytest.mark.parametrize(
    ("sidecar_key", "crd_path"),
    [
        ("rate_limit.sustained_per_s", "spec.policy.rateLimit.sustainedPerSecond"),
        ("upstreams.deep.first_token_timeout_s", "spec.deep.upstream.firstTokenTimeoutSeconds"),
        ("upstreams.fast.keep_alive", "spec.fast.keepAliveSeconds"),
        ("upstreams.fast.parallel_slots", "spec.fast.numParallel"),
        ("routing.complex_patterns.long_digits", "spec.routing.complexPatterns.long_digits"),
        ("tts.classes.email_tldr.rate", "spec.tts.classes.email_tldr.rate"),
        ("ttfa.targets.email_tldr", "spec.policy.ttfa.targets.emailTldr"),
        ("phrase_bank.phrases.2", "spec.policy.phraseBank.phrases[2]"),
        ("default_lang", "spec.policy.defaultLang"),
        ("cache.max_bytes", "spec.policy.cache.maxSize"),
        ("limits.max_body_bytes", "spec.policy.limits.maxBodySize"),
    ],
)
def test_sidecar_keys_map_to_their_crd_fields(sidecar_key: str, crd_path: str) -> None:
    assert crd_path_of_sidecar_key(sidecar_key) == crd_path


def test_a_sidecar_configuration_error_is_reported_at_the_crd_field(
    minimal_lane: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lane's models check every sidecar field first; should the two ever differ, the lane's names still show.
    def refuse(*layers: object) -> None:
        raise ConfigError(["rate_limit.sustained_per_s: Value error, sustained_per_s must not exceed max_waiting"])

    monkeypatch.setattr("voicelane.operator.render.build_config", refuse)
    with pytest.raises(SpecError) as raised:
        render_children(minimal_lane)
    assert raised.value.problems == [
        "spec.policy.rateLimit.sustainedPerSecond: sustainedPerSecond must not exceed maxWaiting"
    ]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"name": "voice", "namespace": "default"}, "metadata.uid: required"),
        ({"name": "voice", "uid": LANE_UID}, "metadata.namespace: required"),
        (
            {"name": "Voice", "namespace": "default", "uid": LANE_UID},
            "metadata.name must be a DNS-1035 label",
        ),
        ({"name": "v" * 51, "namespace": "default", "uid": LANE_UID}, "at most 50 characters"),
    ],
)
def test_lane_identity_errors(sample_lane: dict, metadata: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        render_children({**sample_lane, "metadata": metadata})


def test_another_kind_is_refused(sample_lane: dict) -> None:
    with pytest.raises(SpecError, match=r"expected apiVersion voicelane\.dev/v1alpha1 kind VoiceLane"):
        render_children({**sample_lane, "kind": "Deployment"})


def test_whole_cpus_raise_no_warning(sample_lane: dict) -> None:
    assert tier_warnings(sample_lane["spec"]) == []


def test_fractional_cpu_is_accepted_with_a_warning(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, fast={"resources": {"cpu": "1500m", "memory": "2Gi"}})
    assert render_children(lane)
    [warning] = tier_warnings(lane["spec"])
    assert warning.startswith("spec.fast.resources.cpu is 1500m, not a whole number of CPUs")


@pytest.mark.parametrize(
    "storage",
    [{"size": "20Gi"}, {"existingClaim": "models"}, {"existingClaim": "models", "accessMode": "ReadWriteOncePod"}],
)
def test_a_single_node_claim_for_more_than_one_replica_is_refused_at_replicas(
    minimal_lane: dict, storage: dict
) -> None:
    lane = with_spec(minimal_lane, deep={"replicas": 2, "storage": storage})
    with pytest.raises(SpecError) as raised:
        render_children(lane)
    [problem] = raised.value.problems
    assert problem.startswith("spec.deep.replicas: more than one replica cannot share a ReadWriteOnce"), problem


def test_a_claim_of_one_replica_or_read_write_many_is_accepted(minimal_lane: dict) -> None:
    one = with_spec(minimal_lane, deep={"replicas": 1, "storage": {"size": "20Gi"}})
    shared = with_spec(minimal_lane, deep={"replicas": 3, "storage": {"size": "20Gi", "accessMode": "ReadWriteMany"}})
    for lane in (one, shared):
        assert render_children(lane)
        assert tier_warnings(lane["spec"]) == []


def test_a_single_node_claim_left_to_an_autoscaler_is_warned_about(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, deep={"storage": {"size": "20Gi"}})  # replicas unset
    [warning] = tier_warnings(lane["spec"])
    assert warning.startswith("spec.deep.storage.accessMode is ReadWriteOnce and spec.deep.replicas is unset")


def test_sidecars_are_told_each_tiers_parallel_slots(sample_lane: dict, tmp_path: Path) -> None:
    lane = copy.deepcopy(sample_lane)
    del lane["spec"]["deep"]["replicas"]  # left to an autoscaler: the count is not the lane's to know
    configmap = by_kind_and_name(render_children(lane))[("ConfigMap", "voice-sidecar")]
    path = tmp_path / "sidecar.yaml"
    path.write_text(configmap["data"]["sidecar.yaml"], encoding="utf-8")
    config = load_config(path, environ={})
    assert config.upstreams.fast.parallel_slots == 1  # numParallel 1 on 1 replica
    assert config.upstreams.deep.parallel_slots is None
    configmap = by_kind_and_name(render_children(sample_lane))[("ConfigMap", "voice-sidecar")]
    path.write_text(configmap["data"]["sidecar.yaml"], encoding="utf-8")
    assert load_config(path, environ={}).upstreams.deep.parallel_slots == 4  # numParallel 2 on 2 replicas
