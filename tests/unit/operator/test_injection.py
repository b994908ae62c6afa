"""The sidecar injection itself (operator/injection.py): what a pod looks like once it has the sidecar."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from tests.delivery.pod_security import violations
from voicelane.operator.injection import (
    DEFAULT_SIDECAR_IMAGE,
    INJECTED_ANNOTATION,
    AnnotationError,
    InjectionError,
    inject,
    loopback_url,
    opted_out,
    requested_lane,
    skip_reason,
)

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
IMAGE = "registry.example/voicelane-sidecar:1.2.3"


def restricted_container(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": f"registry.example/{name}:1",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        **extra,
    }


def app_pod(**spec: Any) -> dict[str, Any]:
    """An app pod that meets the restricted profile by itself, labelled for the lane `voice`."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "apps", "labels": {"app": "web", "voicelane.dev/lane": "voice"}},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [restricted_container("migrate")],
            "containers": [
                restricted_container("web", ports=[{"name": "http", "containerPort": 8080}]),
                restricted_container("worker", env=[{"name": "MODE", "value": "queue"}]),
            ],
            "volumes": [{"name": "cache", "emptyDir": {}}],
            **spec,
        },
    }


def injected_pod(**kwargs: Any) -> dict[str, Any]:
    pod = inject(app_pod(), lane="voice", image=IMAGE, **kwargs)
    assert pod is not None
    return pod


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    [sidecar] = [c for c in pod["spec"]["initContainers"] if c["name"] == "voicelane-sidecar"]
    return sidecar


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_injected_pod_validates_strictly(version: str) -> None:
    kubernetes_validate.validate(injected_pod(), version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_a_pod_without_security_settings_of_its_own_still_validates(version: str) -> None:
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [{"name": "a"}]}}
    pod = inject(bare, lane="voice")
    assert pod is not None
    kubernetes_validate.validate(pod, version, strict=True)


def test_the_injected_pod_meets_the_restricted_pod_security_profile() -> None:
    pod = injected_pod()
    assert violations(pod["metadata"], pod["spec"]) == []


def test_the_sidecar_alone_meets_the_restricted_profile_whatever_the_pod_sets() -> None:
    # The sidecar may land in any pod: its container settings must not lean on the pod's.
    pod = injected_pod()
    alone = {"initContainers": [sidecar_of(pod)], "containers": [], "volumes": pod["spec"]["volumes"]}
    assert violations({}, alone) == []


def test_the_sidecar_is_a_native_sidecar_that_starts_first_and_runs_the_documented_command() -> None:
    pod = injected_pod()
    first, *others = pod["spec"]["initContainers"]
    assert first["name"] == "voicelane-sidecar"
    assert first["restartPolicy"] == "Always"
    assert first["image"] == IMAGE
    assert first["args"] == ["--config", "/etc/voicelane/sidecar.yaml", "--metrics-listen", "0.0.0.0:9464"]
    assert [c["name"] for c in others] == ["migrate"]  # the pod's own init containers are kept, after it


def test_the_sidecar_mounts_the_lanes_config_map_and_a_writable_tmp() -> None:
    pod = injected_pod()
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in sidecar_of(pod)["volumeMounts"]}
    config = mounts["/etc/voicelane"]
    assert config["readOnly"] is True
    assert "subPath" not in config  # a subPath mount would never see the lane's updates
    assert volumes[config["name"]]["configMap"]["name"] == "voice-sidecar"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert "cache" in volumes  # the pod's own volumes stay


def test_the_metrics_port_is_named_for_the_pod_monitor_and_the_probes_use_it() -> None:
    sidecar = sidecar_of(injected_pod())
    assert sidecar["ports"] == [{"name": "vl-metrics", "containerPort": 9464, "protocol": "TCP"}]
    probes = {kind: sidecar[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {probe["port"] for probe in probes.values()} == {"vl-metrics"}
    assert probes["startupProbe"]["path"] == probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"


def test_the_sidecar_has_requests_and_limits() -> None:
    resources = sidecar_of(injected_pod())["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_every_app_container_gets_the_sidecar_url() -> None:
    pod = injected_pod()
    for container in pod["spec"]["containers"]:
        assert {"name": "VOICELANE_URL", "value": "http://127.0.0.1:8787"} in container["env"], container["name"]
    worker = pod["spec"]["containers"][1]
    assert {"name": "MODE", "value": "queue"} in worker["env"]


def test_unchanged_ollama_and_openai_clients_are_pointed_at_the_sidecar() -> None:
    # Ollama's clients read OLLAMA_HOST, the official OpenAI clients OPENAI_BASE_URL (with /v1).
    for container in injected_pod()["spec"]["containers"]:
        assert {"name": "OLLAMA_HOST", "value": "http://127.0.0.1:8787"} in container["env"], container["name"]
        assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:8787/v1"} in container["env"]


def test_the_url_follows_the_lanes_listen_address_through_loopback() -> None:
    pod = injected_pod(api_listen="0.0.0.0:9000")
    env = pod["spec"]["containers"][0]["env"]
    assert {"name": "VOICELANE_URL", "value": "http://127.0.0.1:9000"} in env
    assert {"name": "OLLAMA_HOST", "value": "http://127.0.0.1:9000"} in env
    assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:9000/v1"} in env
    assert loopback_url("[::]:8787") == "http://[::1]:8787"
    assert loopback_url("localhost:8787") == "http://localhost:8787"


def test_an_app_that_sets_the_urls_itself_keeps_them() -> None:
    pod = app_pod()
    own = [
        {"name": "VOICELANE_URL", "value": "http://elsewhere:1"},
        {"name": "OLLAMA_HOST", "value": "http://my-ollama:11434"},
        {"name": "OPENAI_BASE_URL", "value": "https://api.example.com/v1"},
    ]
    pod["spec"]["containers"][0]["env"] = own
    injected = inject(pod, lane="voice")
    assert injected is not None
    assert injected["spec"]["containers"][0]["env"] == own


def test_an_app_that_sets_one_url_gets_the_others() -> None:
    pod = app_pod()
    pod["spec"]["containers"][0]["env"] = [{"name": "OLLAMA_HOST", "value": "http://my-ollama:11434"}]
    injected = inject(pod, lane="voice")
    assert injected is not None
    assert injected["spec"]["containers"][0]["env"] == [
        {"name": "OLLAMA_HOST", "value": "http://my-ollama:11434"},
        {"name": "VOICELANE_URL", "value": "http://127.0.0.1:8787"},
        {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:8787/v1"},
    ]


def test_injection_is_marked_and_labels_the_pod_for_the_lanes_network_policy() -> None:
    unlabelled = app_pod()
    del unlabelled["metadata"]["labels"]["voicelane.dev/lane"]
    pod = inject(unlabelled, lane="voice")
    assert pod is not None
    assert pod["metadata"]["labels"] == {"app": "web", "voicelane.dev/lane": "voice"}
    assert pod["metadata"]["annotations"][INJECTED_ANNOTATION] == "true"
    assert sidecar_of(pod)["image"] == DEFAULT_SIDECAR_IMAGE


def test_injecting_again_changes_nothing() -> None:
    once = injected_pod()
    assert inject(once, lane="voice", image=IMAGE) is None
    assert skip_reason(once) == "it already has the container voicelane-sidecar"


def test_a_hand_written_sidecar_is_not_doubled() -> None:
    pod = app_pod()
    pod["spec"]["containers"].append({"name": "voicelane-sidecar", "image": IMAGE})
    assert inject(pod, lane="voice") is None


def test_the_input_pod_is_left_as_it_was() -> None:
    pod = app_pod()
    before = copy.deepcopy(pod)
    inject(pod, lane="voice")
    assert pod == before


def test_model_server_pods_of_a_lane_are_never_injected() -> None:
    pod = app_pod()
    pod["metadata"]["labels"]["voicelane.dev/tier"] = "fast"
    assert inject(pod, lane="voice") is None
    assert "voicelane.dev/tier" in (skip_reason(pod) or "")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda pod: pod["spec"]["volumes"].append({"name": "voicelane-config", "emptyDir": {}}), "voicelane-config"),
        (lambda pod: pod["spec"]["containers"][0]["ports"].append({"containerPort": 9464}), "9464"),
        (lambda pod: pod["metadata"]["labels"].update({"voicelane.dev/lane": "other"}), "not voice"),
        (lambda pod: pod["spec"].update(containers=[]), "no containers"),
        (lambda pod: pod.update(spec="nonsense"), "no spec"),
        (lambda pod: pod.update(metadata="nonsense"), "metadata is not an object"),
        (lambda pod: pod["spec"]["containers"][1].update(env="A=1"), "env of container worker is not a list"),
        (lambda pod: pod["spec"]["containers"][0].update(ports=[8080]), "ports of container web is not a list"),
        (lambda pod: pod["spec"].update(volumes={"cache": {}}), "spec.volumes is not a list"),
    ],
)
def test_a_pod_that_cannot_take_the_sidecar_is_refused_with_the_reason(change: Any, message: str) -> None:
    pod = app_pod()
    change(pod)
    with pytest.raises(InjectionError, match=message):
        inject(pod, lane="voice")


# --- per-pod annotations and the lane's environment ----------------------------------------------


def annotated(**annotations: str) -> dict[str, Any]:
    pod = app_pod()
    pod["metadata"]["annotations"] = annotations
    return pod


def test_annotations_set_the_sidecars_image_log_level_and_resources() -> None:
    pod = inject(
        annotated(
            **{
                "voicelane.dev/sidecar-image": "registry.local:5000/team/voicelane-sidecar:canary",
                "voicelane.dev/sidecar-log-level": "Debug",
                "voicelane.dev/sidecar-cpu-request": "100m",
                "voicelane.dev/sidecar-cpu-limit": "2",
                "voicelane.dev/sidecar-memory-request": "128Mi",
                "voicelane.dev/sidecar-memory-limit": "1Gi",
            }
        ),
        lane="voice",
        image=IMAGE,
    )
    assert pod is not None
    sidecar = sidecar_of(pod)
    assert sidecar["image"] == "registry.local:5000/team/voicelane-sidecar:canary"
    assert sidecar["args"][-2:] == ["--log-level", "debug"]  # the sidecar's own flag and spelling
    assert sidecar["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)


def test_an_annotation_left_out_keeps_the_default() -> None:
    pod = inject(annotated(**{"voicelane.dev/sidecar-memory-limit": "2Gi"}), lane="voice", image=IMAGE)
    assert pod is not None
    sidecar = sidecar_of(pod)
    assert sidecar["image"] == IMAGE
    assert "--log-level" not in sidecar["args"]
    assert sidecar["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }


@pytest.mark.parametrize(
    ("annotations", "named", "problem"),
    [
        ({"voicelane.dev/sidecar-cpu-request": "lots"}, "voicelane.dev/sidecar-cpu-request", "not a positive"),
        ({"voicelane.dev/sidecar-memory-limit": "-1Gi"}, "voicelane.dev/sidecar-memory-limit", "not a positive"),
        ({"voicelane.dev/sidecar-cpu-request": "3"}, "voicelane.dev/sidecar-cpu-request", "more than its limit 1"),
        ({"voicelane.dev/sidecar-memory-limit": "64Mi"}, "voicelane.dev/sidecar-memory-limit", "more than its limit"),
        ({"voicelane.dev/sidecar-log-level": "verbose"}, "voicelane.dev/sidecar-log-level", "Debug, Info, Warning"),
        ({"voicelane.dev/sidecar-log-level": "debug"}, "voicelane.dev/sidecar-log-level", "not one of"),
        ({"voicelane.dev/sidecar-image": "Registry/UPPER:1"}, "voicelane.dev/sidecar-image", "not an image reference"),
        ({"voicelane.dev/sidecar-image": "img:1; rm -rf /"}, "voicelane.dev/sidecar-image", "not an image reference"),
        ({"voicelane.dev/sidecar-image": "img@sha256:abc"}, "voicelane.dev/sidecar-image", "not an image reference"),
        ({"voicelane.dev/lane": "Voice_1"}, "voicelane.dev/lane", "not a lane name"),
        ({"voicelane.dev/lane": "chat"}, "voicelane.dev/lane", "labelled voicelane.dev/lane=voice"),
        ({"voicelane.dev/inject": "no"}, "voicelane.dev/inject", "neither enabled nor disabled"),
    ],
)
def test_an_invalid_annotation_is_refused_naming_it(annotations: dict[str, str], named: str, problem: str) -> None:
    with pytest.raises(AnnotationError, match=problem) as caught:
        inject(annotated(**annotations), lane="voice")
    assert caught.value.key == named
    assert str(caught.value).startswith(f"annotation {named}: ")


@pytest.mark.parametrize(
    "image",
    [
        "voicelane-sidecar",
        "ghcr.io/voicelane/voicelane-sidecar:1.2.3",
        "localhost:5000/a/b__c-d.e:tag_1",
        "registry.example/voicelane-sidecar@sha256:" + "a" * 64,
        "registry.example/voicelane-sidecar:1.2@sha256:" + "0" * 64,
    ],
)
def test_image_references_runtimes_accept_are_accepted(image: str) -> None:
    pod = inject(annotated(**{"voicelane.dev/sidecar-image": image}), lane="voice")
    assert pod is not None
    assert sidecar_of(pod)["image"] == image


def test_the_lane_annotation_names_the_lane_of_an_unlabelled_pod() -> None:
    pod = annotated(**{"voicelane.dev/lane": "chat"})
    del pod["metadata"]["labels"]["voicelane.dev/lane"]
    assert requested_lane(pod) == "chat"
    with pytest.raises(InjectionError, match="names lane chat"):
        inject(pod, lane="voice")
    injected = inject(pod, lane="chat")
    assert injected is not None
    assert injected["metadata"]["labels"]["voicelane.dev/lane"] == "chat"


@pytest.mark.parametrize("where", ["labels", "annotations"])
def test_a_pod_that_opts_out_is_left_as_it_is(where: str) -> None:
    pod = app_pod()
    pod["metadata"].setdefault(where, {})["voicelane.dev/inject"] = "disabled"
    assert opted_out(pod)
    assert inject(pod, lane="voice") is None
    assert skip_reason(pod) == "it opts out (voicelane.dev/inject: disabled)"


def test_a_bad_inject_label_is_named_as_a_label() -> None:
    pod = app_pod()
    pod["metadata"]["labels"]["voicelane.dev/inject"] = "false"
    with pytest.raises(AnnotationError, match=r"^label voicelane\.dev/inject: 'false' is neither"):
        inject(pod, lane="voice")


def test_the_lanes_env_and_env_from_become_the_sidecars_environment() -> None:
    env = [
        {"name": "VOICELANE_UPSTREAMS__DEEP__API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "deep"}}},
        {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
    ]
    env_from = [{"secretRef": {"name": "tts-keys"}, "prefix": "VOICELANE_TTS__"}]
    pod = inject(app_pod(), lane="voice", env=env, env_from=env_from)
    assert pod is not None
    sidecar = sidecar_of(pod)
    assert sidecar["env"] == env
    assert sidecar["envFrom"] == env_from
    assert all("VOICELANE_UPSTREAMS__DEEP__API_KEY" not in str(c.get("env")) for c in pod["spec"]["containers"])
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)
