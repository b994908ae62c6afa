"""The GitHub Actions workflow: actionlint-clean, and it does what the project promises its forks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.support import REPO, actionlint, run

WORKFLOW = REPO / ".github" / "workflows" / "ci.yaml"


def workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    return loaded


def steps(job: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workflow()["jobs"][job]["steps"]
    return found


def lint(directory: Path) -> tuple[int, str]:
    result = run([*actionlint(), str(directory / "*.yaml")])
    return result.returncode, result.stdout + result.stderr


@pytest.mark.tools
def test_actionlint_passes() -> None:
    code, output = lint(WORKFLOW.parent)
    assert "Checking 1 workflow file(s)" in output, output  # it found the file
    assert code == 0, output


@pytest.mark.tools
def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    shutil.copy(WORKFLOW, tmp_path / "ci.yaml")
    text = (tmp_path / "ci.yaml").read_text(encoding="utf-8")
    (tmp_path / "ci.yaml").write_text(text.replace("steps.meta.outputs.tags", "steps.metadata.outputs.tags"))
    code, output = lint(tmp_path)
    assert code != 0, output
    assert "metadata" in output, output


def test_images_are_pushed_to_ghcr_from_main_and_tags_only() -> None:
    triggers = workflow()[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["push"] == {"branches": ["main"], "tags": ["v*"]}
    job = workflow()["jobs"]["images"]
    assert job["strategy"]["matrix"]["image"] == ["operator", "sidecar"]
    assert job["permissions"]["packages"] == "write"
    [login] = [step for step in job["steps"] if step.get("uses", "").startswith("docker/login-action")]
    assert login["with"]["registry"] == "ghcr.io"
    assert login["if"] == "github.event_name == 'push'"
    [build] = [step for step in job["steps"] if step.get("uses", "").startswith("docker/build-push-action")]
    assert build["with"]["file"] == "images/${{ matrix.image }}.Dockerfile"
    assert build["with"]["push"] == "${{ github.event_name == 'push' }}"


def test_the_kind_job_runs_the_cluster_tests_against_the_cluster() -> None:
    [tests] = [step for step in steps("kind") if "pytest" in step.get("run", "")]
    assert "-m cluster" in tests["run"]
    assert "VOICELANE_TEST_KUBECONFIG" in tests["env"]
    assert any("helm test" in step.get("run", "") for step in steps("kind"))


def test_the_test_job_runs_scripts_test() -> None:
    assert any(step.get("run") == "scripts/test" for step in steps("test"))
    assert workflow()["env"]["CI"] == "true"
