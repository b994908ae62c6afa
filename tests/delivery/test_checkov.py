"""checkov's Kubernetes checks pass on everything the chart and the kubectl manifests hold.

A check may be skipped only by a `checkov.io/skipN: CKV_..=<reason>` annotation written in the chart
(or, for the sample app, by its generator voicelane/delivery.py), so every skip is visible, reasoned and
reviewed where the object is defined.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.support import CHART, REPO, VALUES, Render, checkov, run
from voicelane.operator.render import TIER_CHECKOV_SKIPS, render_children

pytestmark = pytest.mark.tools

SKIP_ANNOTATION = re.compile(r"checkov\.io/skip\d+\"?:\s*\"?(CKV2?_K8S_\d+)=(.+?)\"?,?$", re.MULTILINE)
MANIFESTS = ("manifests/install.yaml", "manifests/samples/app-with-sidecar.yaml")


@pytest.fixture(scope="module")
def report(rendered: Callable[[str], Render], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("checkov")
    for name in VALUES:
        (directory / f"chart-{name}.yaml").write_text(rendered(name).text, encoding="utf-8")
    for manifest in MANIFESTS:
        shutil.copy(REPO / manifest, directory / Path(manifest).name)
    # What the operator renders for the sample lane, in a namespace of its own as a real lane would be.
    lane = yaml.safe_load((REPO / "manifests/samples/voicelane.yaml").read_text(encoding="utf-8"))
    lane["metadata"] = {**lane["metadata"], "namespace": "voice", "uid": "00000000-0000-0000-0000-000000000001"}
    (directory / "operator-rendered.yaml").write_text(yaml.safe_dump_all(render_children(lane)), encoding="utf-8")
    argv = [str(checkov()), "--directory", str(directory), "--framework", "kubernetes", "--skip-download"]
    result = run([*argv, "--output", "json"], timeout=300)
    assert result.stdout.strip(), result.stderr
    output = json.loads(result.stdout)
    [kubernetes] = [
        part for part in (output if isinstance(output, list) else [output]) if part["check_type"] == "kubernetes"
    ]
    return dict(kubernetes)


def declared_skips(*paths: Path) -> dict[str, set[str]]:
    """Check id -> the reasons given for skipping it in these files."""
    skips: dict[str, set[str]] = {}
    for path in paths:
        for check, reason in SKIP_ANNOTATION.findall(path.read_text(encoding="utf-8")):
            skips.setdefault(check, set()).add(reason.strip())
    return skips


def test_no_check_fails(report: dict[str, Any]) -> None:
    failed = [
        f"{check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"
        for check in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert report["summary"]["parsing_errors"] == 0


def test_the_checks_ran_on_every_workload(report: dict[str, Any]) -> None:
    checked = {check["resource"] for check in report["results"]["passed_checks"]}
    assert "Deployment.voicelane-system.voicelane-operator" in checked
    assert "Pod.voicelane-system.voicelane-operator-test-health" in checked
    assert "Deployment.default.voice-app" in checked
    assert "Deployment.voice.voice-fast" in checked
    assert report["summary"]["passed"] > 200


def test_every_skip_is_declared_in_the_chart_or_the_sample_generator_with_a_reason(report: dict[str, Any]) -> None:
    chart_skips = declared_skips(*sorted((CHART / "templates").rglob("*.yaml")))
    sample_skips = declared_skips(REPO / "voicelane" / "delivery.py")
    operator_skips = {
        check: {reason} for check, reason in (value.split("=", 1) for value in TIER_CHECKOV_SKIPS.values())
    }
    assert chart_skips, "expected the chart to declare its skips"
    for check in report["results"]["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} is skipped without a reason"
        if "operator-rendered" in check["file_path"]:
            declared = operator_skips
        elif "app-with-sidecar" in check["file_path"]:
            declared = sample_skips
        else:
            declared = chart_skips
        assert reason in declared.get(check["check_id"], set()), (
            f"{check['check_id']} on {check['resource']} ({check['file_path']}) is skipped outside the chart"
        )
