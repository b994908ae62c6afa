"""`voicelane render`, `voicelane crd` and the `voicelane operator` flags, run in-process."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import yaml

from tests.unit.operator.apiserver_checks import expectations
from tests.unit.operator.conftest import INVALID_SAMPLES, SAMPLE_PATH
from voicelane.cli import build_parser, main
from voicelane.operator.cli import PLACEHOLDER_UID, default_metrics_listen
from voicelane.operator.crd import crd_yaml
from voicelane.operator.render import SIDECAR_ONLY_FIELD_NAMES, render_children


def test_render_prints_exactly_what_the_operator_applies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(SAMPLE_PATH)]) == 0
    out = capsys.readouterr().out
    lane = yaml.safe_load(SAMPLE_PATH.read_text(encoding="utf-8"))
    lane["metadata"]["uid"] = PLACEHOLDER_UID
    assert list(yaml.safe_load_all(out)) == render_children(lane)
    assert "sidecar.yaml: |" in out  # multi-line values print as readable blocks
    assert "&id" not in out


def test_render_defaults_the_namespace_and_takes_the_operator_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lane = yaml.safe_load(SAMPLE_PATH.read_text(encoding="utf-8"))
    del lane["metadata"]["namespace"]
    path = tmp_path / "lane.yaml"
    path.write_text(yaml.safe_dump(lane), encoding="utf-8")
    assert main(["render", "-f", str(path), "-n", "voice", "--operator-namespace", "voicelane-system"]) == 0
    children = list(yaml.safe_load_all(capsys.readouterr().out))
    assert {child["metadata"]["namespace"] for child in children} == {"voice"}
    [policy] = [child for child in children if child["kind"] == "NetworkPolicy"]
    assert "voicelane-system" in str(policy["spec"]["ingress"])


def test_render_reads_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(SAMPLE_PATH.read_text(encoding="utf-8")))
    assert main(["render", "-f", "-"]) == 0
    assert len(list(yaml.safe_load_all(capsys.readouterr().out))) == 8


def test_render_reports_an_invalid_lane_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    [path] = [p for p in INVALID_SAMPLES if p.stem == "storage-size-and-existing-claim"]
    assert main(["render", "-f", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"voicelane render: {path}: spec.fast.storage: size and existingClaim are mutually exclusive" in (
        captured.err
    )
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("path", INVALID_SAMPLES, ids=lambda p: p.stem)
def test_render_names_the_crd_field_of_every_invalid_sample(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected_path = expectations(path)["path"]
    assert main(["render", "-f", str(path)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"voicelane render: {path}: {expected_path}") for line in errors), errors
    # Only the CRD's names: never the sidecar's spelling of a field (sustained_per_s for sustainedPerSecond).
    assert not set(re.findall(r"[a-z0-9_]+", "\n".join(errors))) & SIDECAR_ONLY_FIELD_NAMES, errors


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("fast: [", "not valid YAML"),
        ("", "no VoiceLane in the file"),
        (
            "apiVersion: v1\nkind: ConfigMap\n",
            "document 1: expected apiVersion voicelane.dev/v1alpha1 kind VoiceLane",
        ),
    ],
)
def test_render_input_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "lane.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["render", "-f", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_render_warns_about_fractional_cpus_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lane = yaml.safe_load(SAMPLE_PATH.read_text(encoding="utf-8"))
    lane["spec"]["fast"]["resources"]["cpu"] = "500m"
    path = tmp_path / "lane.yaml"
    path.write_text(yaml.safe_dump(lane), encoding="utf-8")
    assert main(["render", "-f", str(path)]) == 0
    assert "warning: spec.fast.resources.cpu is 500m, not a whole number of CPUs" in capsys.readouterr().err


def test_crd_prints_the_committed_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == crd_yaml()


def test_operator_flags() -> None:
    args = build_parser().parse_args(
        [
            "operator",
            "--namespace",
            "voice",
            "--namespace",
            "demo",
            "--kubeconfig",
            "/tmp/kc",
            "--liveness",
            "http://0.0.0.0:8081/healthz",
        ]
    )
    assert args.namespace == ["voice", "demo"]
    assert str(args.kubeconfig) == "/tmp/kc"
    assert args.liveness == "http://0.0.0.0:8081/healthz"
    assert build_parser().parse_args(["operator"]).namespace is None  # all namespaces
    assert build_parser().parse_args(["operator", "--operator-namespace", "vl"]).operator_namespace == "vl"


def test_metrics_listen_default_depends_on_where_it_runs() -> None:
    assert default_metrics_listen({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) == "0.0.0.0:8080"
    assert default_metrics_listen({}) == "127.0.0.1:8080"
