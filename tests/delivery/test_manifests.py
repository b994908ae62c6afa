"""manifests/ for kubectl users: generated from the chart and the operator, current, and consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.delivery.support import CHART, REPO, helm
from voicelane.cli import build_parser
from voicelane.delivery import SAMPLE_APP, rendered_sidecar_config, sample_lane, stale_files
from voicelane.operator.render import SIDECAR_CONFIG_KEY, sidecar_configmap_name


def documents(relative: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((REPO / relative).read_text(encoding="utf-8")) if doc]


def sample_pod() -> dict[str, Any]:
    [deployment] = [doc for doc in documents(str(SAMPLE_APP)) if doc["kind"] == "Deployment"]
    pod: dict[str, Any] = deployment["spec"]["template"]
    return pod


def sidecar_entrypoint() -> list[str]:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(str(REPO / "images" / "sidecar.Dockerfile"))
    [entrypoint] = [item["value"] for item in parser.structure if item["instruction"] == "ENTRYPOINT"]
    argv: list[str] = json.loads(entrypoint)
    return argv


@pytest.mark.tools
def test_generated_manifests_are_current() -> None:
    assert stale_files(REPO, helm()) == [], "run `python -P -m voicelane.delivery --write`"


@pytest.mark.tools
def test_the_check_command_reports_current_files() -> None:
    result = subprocess.run(
        [sys.executable, "-P", "-m", "voicelane.delivery", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"HELM": str(helm()), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_install_yaml_holds_the_crd_rbac_and_operator_in_its_own_namespace() -> None:
    kinds = [(doc["kind"], doc["metadata"]["name"]) for doc in documents("manifests/install.yaml")]
    assert kinds[0] == ("Namespace", "voicelane-system")
    assert ("CustomResourceDefinition", "voicelanes.voicelane.dev") in kinds
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"} <= {k for k, _ in kinds}
    assert "Pod" not in {k for k, _ in kinds}, "the helm test pod is not for kubectl users"
    crds = {
        doc["metadata"]["name"]: doc
        for doc in documents("manifests/install.yaml")
        if doc["kind"] == "CustomResourceDefinition"
    }
    for path in sorted((REPO / "manifests/crd").glob("*.yaml")):  # the lane's and the peering's (leader election)
        for crd in documents(str(path.relative_to(REPO))):
            assert crds.pop(crd["metadata"]["name"]) == crd
    assert crds == {}, "a CRD in install.yaml that manifests/crd/ lacks"


def test_the_sample_sidecar_is_a_native_sidecar_running_the_documented_command() -> None:
    pod = sample_pod()
    [sidecar] = pod["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    argv = [*sidecar_entrypoint(), *sidecar["args"]]
    assert argv == [
        "voicelane",
        "sidecar",
        "--config",
        "/etc/voicelane/sidecar.yaml",
        "--metrics-listen",
        "0.0.0.0:9464",
    ]
    parsed = build_parser().parse_args(argv[1:])
    assert str(parsed.config) == "/etc/voicelane/sidecar.yaml"


def test_the_sample_mounts_the_lane_config_map_and_points_the_app_at_the_sidecar() -> None:
    pod = sample_pod()
    lane = sample_lane()
    lane_name = lane["metadata"]["name"]
    [sidecar] = pod["spec"]["initContainers"]
    [app] = pod["spec"]["containers"]
    [mount] = [m for m in sidecar["volumeMounts"] if m["mountPath"] == "/etc/voicelane"]
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == sidecar_configmap_name(lane_name) == f"{lane_name}-sidecar"
    assert sidecar["args"][1].endswith(SIDECAR_CONFIG_KEY)
    listen = rendered_sidecar_config(lane)["server"]["listen"]
    assert {"name": "VOICELANE_URL", "value": f"http://{listen}"} in app["env"]
    assert pod["metadata"]["labels"]["voicelane.dev/lane"] == lane_name


def test_the_sample_metrics_port_is_the_one_the_pod_monitor_scrapes() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    [sidecar] = sample_pod()["spec"]["initContainers"]
    [port] = sidecar["ports"]
    assert port["name"] == values["podMonitor"]["port"]
    assert port["containerPort"] == 9464


def test_the_sample_images_are_the_release_images() -> None:
    version = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["appVersion"]
    pod = sample_pod()
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        assert container["image"] == f"ghcr.io/voicelane/voicelane-sidecar:{version}"
