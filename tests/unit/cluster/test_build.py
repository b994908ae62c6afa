"""The control plane's build cache: keyed by the pinned release, so a pin change rebuilds and nothing else does."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from voicelane import gobuild as build
from voicelane.cluster.build import COMPONENTS, KUBERNETES, kubernetes_ldflags
from voicelane.stack.build import OLLAMA


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> build.Component:
    folder = tmp_path / "gobuild" / "sample"
    folder.mkdir(parents=True)
    (folder / "go.mod").write_text("module example.local/sample\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes v1.34.4\n")
    (folder / "go.sum").write_text("k8s.io/kubernetes v1.34.4 h1:abc=\n")
    monkeypatch.setattr(build, "GOBUILD", tmp_path / "gobuild")
    monkeypatch.setenv("VOICELANE_CACHE", str(tmp_path / "cache"))
    return dataclasses.replace(KUBERNETES, name="sample")


def test_the_cache_folder_names_the_pinned_release(module: build.Component) -> None:
    assert module.version() == "v1.34.4"
    assert module.output_dir().name.startswith("sample-v1.34.4-")


def test_a_new_pin_gets_a_new_cache_folder_and_an_unchanged_one_keeps_it(module: build.Component) -> None:
    before = module.output_dir()
    assert module.output_dir() == before
    go_mod = module.build_dir / "go.mod"
    go_mod.write_text(go_mod.read_text().replace("v1.34.4", "v1.35.4"))
    assert module.output_dir() != before
    assert "v1.35.4" in module.output_dir().name


def test_a_cache_folder_without_its_stamp_is_not_taken_for_a_build(module: build.Component) -> None:
    folder = module.output_dir()
    folder.mkdir(parents=True)
    for program in module.programs:
        (folder / program).write_bytes(b"")
    assert not build.is_built(module)  # an interrupted build leaves binaries but no stamp
    (folder / build.STAMP).write_text("{}")
    assert build.is_built(module)


def test_a_go_mod_that_does_not_pin_the_module_is_refused_by_name(module: build.Component) -> None:
    (module.build_dir / "go.mod").write_text("module example.local/sample\n")
    with pytest.raises(build.BuildError, match=r"does not require k8s\.io/kubernetes"):
        module.version()


def test_kubernetes_binaries_report_their_release_not_a_development_version() -> None:
    flags = kubernetes_ldflags("v1.34.4")
    assert "k8s.io/component-base/version.gitVersion=v1.34.4" in flags
    assert "k8s.io/component-base/version.gitMinor=34" in flags


def test_the_pinned_modules_of_the_project_name_their_releases() -> None:
    versions = {component.name: component.version() for component in (*COMPONENTS, OLLAMA)}
    assert versions["kubernetes"].startswith("v1.3")
    assert versions["etcd"].startswith("v3.6.")
    assert versions["kwok"].startswith("v0.")
    assert versions["ollama"].startswith("v0.")
    # The headers Ollama's module zip leaves out are pinned in its build module too, so a build needs nothing else.
    assert all(OLLAMA.version(headers.module).startswith("v") for headers in OLLAMA.headers)
    # Every staging module is pinned to the release's v0.x twin: a dependent module cannot use local paths.
    text = (build.GOBUILD / "kubernetes" / "go.mod").read_text()
    staging = [line for line in text.splitlines() if "=>" in line]
    assert staging
    minor = versions["kubernetes"].removeprefix("v1.")
    assert all(line.split("=>")[1].split()[1] == f"v0.{minor}" for line in staging), os.linesep.join(staging)


def test_c_flags_key_the_cache_only_for_components_that_set_them(module: build.Component) -> None:
    plain = module.output_dir()
    flagged = dataclasses.replace(module, cflags="-mavx2")
    assert flagged.output_dir() != plain  # another target CPU is another binary
    assert dataclasses.replace(module, cflags="").output_dir() == plain
