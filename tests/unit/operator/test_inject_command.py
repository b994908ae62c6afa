"""`voicelane inject`: the sidecar added to workload manifests offline, run in-process."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.delivery.pod_security import violations
from tests.unit.operator.conftest import REPO_ROOT
from voicelane.cli import main

SAMPLE_APP = REPO_ROOT / "manifests" / "samples" / "app-with-sidecar.yaml"
IMAGE = "registry.example/voicelane-sidecar:9.9.9"


def pod_template(**labels: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "web", **labels}},
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


def deployment(name: str = "web", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": pod_template(**labels)},
    }


def cron_job(**labels: str) -> dict[str, Any]:
    template = pod_template(**labels)
    template["spec"]["restartPolicy"] = "OnFailure"
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "digest"},
        "spec": {"schedule": "0 7 * * *", "jobTemplate": {"spec": {"template": template}}},
    }


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}


def write(tmp_path: Path, *documents: dict[str, Any]) -> Path:
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
    return path


def run_inject(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[Any], str]:
    code = main(["inject", *argv])
    captured = capsys.readouterr()
    documents = list(yaml.safe_load_all(captured.out)) if code == 0 else []
    return code, documents, captured.err


def init_container_names(template: dict[str, Any]) -> list[str]:
    return [container["name"] for container in template["spec"].get("initContainers") or []]


def test_every_workload_gets_the_sidecar_and_everything_else_passes_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, deployment(), SERVICE, cron_job())
    code, (web, service, digest), err = run_inject(capsys, "-f", str(path), "--lane", "voice", "--image", IMAGE)
    assert code == 0, err
    assert service == SERVICE
    for template in (web["spec"]["template"], digest["spec"]["jobTemplate"]["spec"]["template"]):
        assert init_container_names(template) == ["voicelane-sidecar"]
        assert template["spec"]["initContainers"][0]["image"] == IMAGE
        assert template["metadata"]["labels"]["voicelane.dev/lane"] == "voice"
        assert {"name": "VOICELANE_URL", "value": "http://127.0.0.1:8787"} in template["spec"]["containers"][0]["env"]
        assert violations(template["metadata"], template["spec"]) == []
    for version in ("1.29.0", "1.37.0"):
        kubernetes_validate.validate(web, version, strict=True)
        kubernetes_validate.validate(digest, version, strict=True)


def test_the_lane_comes_from_each_templates_label_when_not_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, deployment("labelled", **{"voicelane.dev/lane": "chat"}), deployment("plain"))
    code, (labelled, plain), err = run_inject(capsys, "-f", str(path))
    assert code == 0
    [volume] = [v for v in labelled["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == "chat-sidecar"
    assert plain == deployment("plain")
    assert "document 2 (Deployment plain): left as it is: no lane" in err


def test_injecting_its_own_output_again_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, first, _ = run_inject(capsys, "-f", str(write(tmp_path, deployment(), cron_job())), "--lane", "voice")
    assert code == 0
    again_path = tmp_path / "again.yaml"
    again_path.write_text(yaml.safe_dump_all(first), encoding="utf-8")
    code, second, err = run_inject(capsys, "-f", str(again_path), "--lane", "voice")
    assert code == 0
    assert second == first
    assert "already has the container voicelane-sidecar" in err


def test_the_published_sample_is_what_inject_makes_of_the_app_read_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = [doc for doc in yaml.safe_load_all(SAMPLE_APP.read_text(encoding="utf-8")) if doc]
    [app] = [doc for doc in sample if doc["kind"] == "Deployment"]
    template = app["spec"]["template"]
    bare = yaml.safe_load(yaml.safe_dump(app))  # the app as it is before the sidecar is added
    bare_template = bare["spec"]["template"]
    del bare_template["spec"]["initContainers"], bare_template["spec"]["volumes"]
    del bare_template["metadata"]["annotations"]
    for container in bare_template["spec"]["containers"]:
        del container["env"]
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(bare)))
    image = template["spec"]["initContainers"][0]["image"]
    code, [injected], err = run_inject(capsys, "-f", "-", "--image", image)
    assert code == 0, err
    assert injected == app


@pytest.mark.parametrize(
    ("documents", "argv", "message"),
    [
        ([deployment(**{"voicelane.dev/lane": "other"})], ["--lane", "voice"], "document 1 (Deployment web): "),
        ([{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}], [], "no pod template"),
        ([deployment()], ["--lane", "Not_A_Name"], "--lane Not_A_Name"),
    ],
)
def test_bad_input_is_refused_with_the_document_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], documents: list[Any], argv: list[str], message: str
) -> None:
    code, _, err = run_inject(capsys, "-f", str(write(tmp_path, *documents)), *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_unreadable_files_are_refused_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n", encoding="utf-8")
    code, _, err = run_inject(capsys, "-f", str(broken))
    assert code == 2
    assert f"voicelane inject: {broken}: not valid YAML" in err
    code, _, err = run_inject(capsys, "-f", str(tmp_path / "missing.yaml"))
    assert code == 2
    assert "cannot read" in err


def annotated_deployment(name: str = "web", **annotations: str) -> dict[str, Any]:
    workload = deployment(name)
    workload["spec"]["template"]["metadata"]["annotations"] = annotations
    return workload


def test_pod_template_annotations_tune_the_sidecar_and_name_its_lane(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tuned = annotated_deployment(
        **{
            "voicelane.dev/lane": "chat",
            "voicelane.dev/sidecar-image": "registry.example/voicelane-sidecar:canary",
            "voicelane.dev/sidecar-cpu-limit": "500m",
            "voicelane.dev/sidecar-cpu-request": "500m",
        }
    )
    opted_out = annotated_deployment("batch", **{"voicelane.dev/inject": "disabled"})
    code, (web, batch), err = run_inject(capsys, "-f", str(write(tmp_path, tuned, opted_out)))
    assert code == 0, err
    template = web["spec"]["template"]
    [sidecar] = template["spec"]["initContainers"]
    assert sidecar["image"] == "registry.example/voicelane-sidecar:canary"
    assert sidecar["resources"]["requests"]["cpu"] == sidecar["resources"]["limits"]["cpu"] == "500m"
    assert template["metadata"]["labels"]["voicelane.dev/lane"] == "chat"
    assert batch == opted_out
    assert "document 2 (Deployment batch): left as it is: it opts out (voicelane.dev/inject: disabled)" in err


def test_an_invalid_annotation_stops_the_command_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = annotated_deployment(**{"voicelane.dev/sidecar-log-level": "loud"})
    code, _, err = run_inject(capsys, "-f", str(write(tmp_path, bad)), "--lane", "voice")
    assert code == 2
    assert "document 1 (Deployment web): annotation voicelane.dev/sidecar-log-level: 'loud' is not one of" in err


# --- --lane-file: the lane's own settings, as the webhook gives them ---------------------------

LANE_NAMESPACE = "apps"
UPSTREAM_KEY = {
    "name": "VOICELANE_UPSTREAMS__DEEP__API_KEY",
    "valueFrom": {"secretKeyRef": {"name": "upstream", "key": "api-key"}},
}
SHARED_SETTINGS = {"configMapRef": {"name": "voice-shared"}, "prefix": "SHARED_"}


def voice_lane(name: str = "voice", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voicelane.dev/v1alpha1",
        "kind": "VoiceLane",
        "metadata": {"name": name, "namespace": LANE_NAMESPACE},
        "spec": {
            "fast": {"model": "llama3.2:1b", "resources": {"cpu": 1, "memory": "2Gi"}},
            "deep": {"model": "llama3.1:8b", "resources": {"cpu": 3, "memory": "10Gi"}},
            "policy": {"server": {"listen": "0.0.0.0:9001"}},
            "sidecar": {"env": [UPSTREAM_KEY], "envFrom": [SHARED_SETTINGS]},
            **spec,
        },
    }


def write_lane(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lane.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def lane_file(tmp_path: Path, lane: dict[str, Any] | None = None) -> Path:
    return write_lane(tmp_path, yaml.safe_dump(lane or voice_lane(), sort_keys=False))


def test_a_lane_file_gives_the_sidecar_the_lanes_env_and_the_apps_its_listen_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, deployment(), cron_job())
    code, (web, digest), err = run_inject(capsys, "-f", str(path), "--lane-file", str(lane_file(tmp_path)))
    assert code == 0, err
    for template in (web["spec"]["template"], digest["spec"]["jobTemplate"]["spec"]["template"]):
        [sidecar] = template["spec"]["initContainers"]
        assert sidecar["env"] == [UPSTREAM_KEY]
        assert sidecar["envFrom"] == [SHARED_SETTINGS]
        assert template["metadata"]["labels"]["voicelane.dev/lane"] == "voice"
        app_env = {var["name"]: var["value"] for var in template["spec"]["containers"][0]["env"]}
        assert app_env["VOICELANE_URL"] == "http://127.0.0.1:9001"
        assert app_env["OPENAI_BASE_URL"] == "http://127.0.0.1:9001/v1"
        kubernetes_validate.validate(web, "1.29.0", strict=True)


async def test_a_pod_from_a_lane_file_is_the_pod_the_webhook_admits_for_that_lane(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from voicelane.operator.webhook import admit_pod

    lane = voice_lane()
    bare_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": LANE_NAMESPACE, "labels": {"voicelane.dev/lane": "voice"}},
        "spec": pod_template()["spec"],
    }

    async def get_lane(namespace: str, name: str) -> dict[str, Any] | None:
        return lane if (namespace, name) == (LANE_NAMESPACE, "voice") else None

    admission = await admit_pod(bare_pod, namespace=LANE_NAMESPACE, get_lane=get_lane, image=IMAGE)
    assert admission.pod is not None
    assert admission.warnings == ()
    code, [injected], err = run_inject(
        capsys, "-f", str(write(tmp_path, bare_pod)), "--lane-file", str(lane_file(tmp_path, lane)), "--image", IMAGE
    )
    assert code == 0, err
    assert injected == admission.pod


def test_a_lane_file_leaves_workloads_of_other_lanes_and_namespaces_as_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other_lane = deployment("chat-app", **{"voicelane.dev/lane": "chat"})
    elsewhere = deployment("elsewhere")
    elsewhere["metadata"]["namespace"] = "billing"
    own = deployment("own")
    own["metadata"]["namespace"] = LANE_NAMESPACE
    path = write(tmp_path, other_lane, elsewhere, own)
    code, (chat_out, elsewhere_out, own_out), err = run_inject(
        capsys, "-f", str(path), "--lane-file", str(lane_file(tmp_path))
    )
    assert code == 0, err
    assert chat_out == other_lane
    assert elsewhere_out == elsewhere
    assert init_container_names(own_out["spec"]["template"]) == ["voicelane-sidecar"]
    assert (
        "document 1 (Deployment chat-app): left as it is: its pod template names lane chat (voicelane.dev/lane),"
        " not voice of --lane-file" in err
    )
    assert "document 2 (Deployment elsewhere): left as it is: it is in namespace billing, lane voice in apps" in err


def invalid_spec_lane() -> dict[str, Any]:
    lane = voice_lane()
    lane["spec"]["fast"]["resources"]["cpu"] = "lots"
    lane["spec"]["sidecar"]["envFrom"] = [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}]
    return lane


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: [unclosed\n", "not valid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"),
        ("", "expected one VoiceLane, found 0 YAML documents"),
        (yaml.safe_dump_all([voice_lane(), voice_lane("chat")]), "expected one VoiceLane, found 2 YAML documents"),
        ("- voice\n", "expected a VoiceLane mapping, got list"),
        (
            yaml.safe_dump(deployment()),
            "expected apiVersion voicelane.dev/v1alpha1 kind VoiceLane, got apps/v1 Deployment",
        ),
        (yaml.safe_dump({**voice_lane(), "metadata": {"name": "Voice_Lane"}}), "metadata.name: "),
        (yaml.safe_dump(invalid_spec_lane()), "spec.fast.resources.cpu: "),
        (yaml.safe_dump(invalid_spec_lane()), "spec.sidecar.envFrom[0]: set exactly one of secretRef, configMapRef"),
    ],
)
def test_a_bad_lane_file_is_refused_in_one_line_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = write_lane(tmp_path, text)
    code, _, err = run_inject(capsys, "-f", str(write(tmp_path, deployment())), "--lane-file", str(path))
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith(f"voicelane inject: --lane-file {path}: ")
    assert message in line


def test_a_lane_file_that_cannot_be_read_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifests = str(write(tmp_path, deployment()))
    missing = tmp_path / "nowhere.yaml"
    code, _, err = run_inject(capsys, "-f", manifests, "--lane-file", str(missing))
    assert code == 2
    assert err == f"voicelane inject: --lane-file {missing}: cannot read: No such file or directory\n"
    latin1 = tmp_path / "latin1.yaml"
    text = "kind: VoiceLane # caf\u00e9\n"
    latin1.write_bytes(text.encode("latin-1"))
    code, _, err = run_inject(capsys, "-f", manifests, "--lane-file", str(latin1))
    assert code == 2
    assert err == f"voicelane inject: --lane-file {latin1}: not UTF-8 text: byte {text.index(chr(0xE9))}\n"


@pytest.mark.parametrize(
    ("flags", "dropped"),
    [
        (["--lane", "voice"], "--lane"),
        (["--sidecar-listen", "127.0.0.1:9001"], "--sidecar-listen"),
        (["--lane", "voice", "--sidecar-listen", "127.0.0.1:9001"], "--lane and --sidecar-listen"),
    ],
)
def test_a_lane_file_does_not_go_with_lane_or_sidecar_listen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], dropped: str
) -> None:
    argv = ["-f", str(write(tmp_path, deployment())), "--lane-file", str(lane_file(tmp_path)), *flags]
    code, _, err = run_inject(capsys, *argv)
    assert code == 2
    assert err == f"voicelane inject: --lane-file gives the lane and its listen address; drop {dropped}\n"
