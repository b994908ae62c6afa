"""The Dockerfiles: hadolint-clean, multi-stage, slim and pinned, non-root, no build tools in the final image."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.delivery.support import REPO, run, venv_tool

IMAGES = {"operator": ["voicelane", "operator"], "sidecar": ["voicelane", "sidecar"]}
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|make|build-essential|python3-dev|cargo|rustc)\b")


def dockerfile(name: str) -> Path:
    return REPO / "images" / f"{name}.Dockerfile"


def stages(name: str) -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions, split at each FROM."""
    from dockerfile_parse import DockerfileParser

    result: list[list[dict[str, Any]]] = []
    for item in DockerfileParser(str(dockerfile(name))).structure:
        if item["instruction"] == "FROM":
            result.append([])
        if result:
            result[-1].append(item)
    return result


@pytest.mark.tools
def test_hadolint_passes() -> None:
    hadolint = venv_tool("hadolint")
    result = run([str(hadolint), "--no-color", *(str(dockerfile(name)) for name in IMAGES)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.tools
def test_hadolint_is_not_silently_passing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\n", encoding="utf-8")
    result = run([str(venv_tool("hadolint")), "--no-color", str(bad)])
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the latest tag


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_the_image_is_built_in_two_stages_on_a_pinned_slim_base(name: str) -> None:
    builder, final = stages(name)
    for stage in (builder, final):
        base = stage[0]["value"].split()[0]
        assert re.fullmatch(r"python:3\.\d+-slim-[a-z]+", base), f"{name}: base {base} is not a pinned slim tag"
    assert any("pip wheel" in item["value"] for item in builder if item["instruction"] == "RUN")
    installs = [item["value"] for item in final if item["instruction"] == "RUN"]
    assert any("--no-index" in value and "/wheels" in value for value in installs), "final stage installs the wheels"
    assert not any(item["instruction"] == "COPY" and "--from" not in item["value"] for item in final), (
        "the final stage takes no sources, only the built wheels"
    )
    assert not [value for value in installs if BUILD_TOOLS.search(value)]


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_the_image_runs_as_a_non_root_user_with_the_documented_entrypoint(name: str) -> None:
    final = stages(name)[-1]
    [user] = [item["value"] for item in final if item["instruction"] == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    assert int(user.split(":")[0]) >= 10000
    [entrypoint] = [item["value"] for item in final if item["instruction"] == "ENTRYPOINT"]
    assert json.loads(entrypoint) == IMAGES[name]


def test_the_sidecar_image_embeds_the_speech_library() -> None:
    builder = stages("sidecar")[0]
    assert any("[speech]" in item["value"] for item in builder if item["instruction"] == "RUN")
    operator_builder = stages("operator")[0]
    assert not any("[speech]" in item["value"] for item in operator_builder if item["instruction"] == "RUN")
