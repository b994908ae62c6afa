"""Each container image's entrypoint, run from the built wheel exactly as its Dockerfile states.

No container engine runs here, so each image is reproduced as far as it can be checked without one:
the builder stage's COPY sources are copied to a scratch directory and built with `pip wheel . --no-deps`;
the wheel is installed with its dependencies (the sidecar's with the `speech` extra) into one fresh
virtual environment per session, standing in for the image's site-packages; then the final stage's
ENTRYPOINT and CMD run with its ENV, outside the source tree: `--help`, and a real start-up on
127.0.0.1 (the sidecar serves /healthz and speaks with its embedded espeak-ng; the operator runs against
the session's Kubernetes API, answers its probes, and passes the chart's `helm test` hook).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiextensionsV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config

from tests.support.kube import KubeTarget
from voicelane.processes import ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "sidecar")
EXTRAS = {"operator": "", "sidecar": "[speech]"}

pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class ImageSpec:
    """What a Dockerfile's stages say: the builder's sources, the final stage's command and environment."""

    sources: tuple[str, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str]


def image_spec(name: str) -> ImageSpec:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(str(REPO / "images" / f"{name}.Dockerfile"))
    stages: list[list[dict[str, Any]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if stages:  # comments before the first FROM belong to no stage
            stages[-1].append(item)
    builder, final = stages[0], stages[-1]

    def exec_form(instruction: str) -> tuple[str, ...]:
        values = [item["value"] for item in final if item["instruction"] == instruction]
        return tuple(json.loads(values[-1])) if values else ()

    sources = tuple(
        source
        for item in builder
        if item["instruction"] == "COPY" and "--from" not in item["value"]
        for source in item["value"].split()[:-1]
    )
    return ImageSpec(sources, exec_form("ENTRYPOINT"), exec_form("CMD"), dict(parser.envs))


@dataclass(frozen=True)
class Image:
    """An image reproduced as a virtual environment: run its command with `argv(*extra)` and `env`."""

    name: str
    spec: ImageSpec
    venv: Path
    workdir: Path

    @property
    def env(self) -> dict[str, str]:
        return {**self.spec.env, "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": str(self.workdir)}

    def argv(self, *extra: str) -> list[str]:
        return [*self.spec.entrypoint, *self.spec.cmd, *extra]

    def run(self, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*extra),
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, *extra: str, log_dir: Path) -> ManagedProcess:
        process = ManagedProcess(self.argv(*extra), log_dir / f"{self.name}.log", env=self.env)
        return process.start()


def pip(*args: str, cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    root = tmp_path_factory.mktemp("images")
    specs = {name: image_spec(name) for name in IMAGES}
    assert specs["operator"].sources == specs["sidecar"].sources, "both images build the same wheel"
    source = root / "src"
    source.mkdir()
    for path in specs["operator"].sources:
        origin = REPO / path
        if origin.is_dir():
            shutil.copytree(origin, source / path, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, source / path)
    dist = root / "dist"
    pip("wheel", ".", "--no-deps", "--wheel-dir", str(dist), cwd=source)
    [wheel] = dist.glob("voicelane-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # One environment for both images: the sidecar's extra adds the speech library, which the operator ignores.
    # --no-compile: byte-compiling the Kubernetes client's thousands of modules would double the install time.
    pip("--python", str(venv / "bin" / "python"), "install", "--no-compile", f"{wheel}[speech]", cwd=root)
    workdir = root / "work"
    workdir.mkdir()
    return {name: Image(name, specs[name], venv, workdir) for name in IMAGES}


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


@pytest.mark.parametrize("name", IMAGES)
def test_the_entrypoint_prints_its_help(images: dict[str, Image], name: str) -> None:
    image = images[name]
    assert image.argv() == ["voicelane", name]
    result = image.run("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: voicelane {name}")


def test_the_installed_package_is_the_wheel_not_the_source_tree(images: dict[str, Image]) -> None:
    image = images["sidecar"]
    probe = subprocess.run(
        [
            str(image.venv / "bin" / "python"),
            "-c",
            "import voicelane.sidecar, espeakng_loader; print(voicelane.sidecar.__file__)",
        ],
        cwd=image.workdir,
        env=image.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert str(image.venv) in probe.stdout
    assert str(REPO) not in probe.stdout


def test_the_sidecar_starts_serves_and_speaks(images: dict[str, Image], log_dir: Path) -> None:
    image = images["sidecar"]
    port, metrics_port = free_port(), free_port()
    flags = ("--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}", "--passthrough")
    process = image.start(*flags, log_dir=log_dir)
    try:
        process.wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s=30)
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        status, metrics = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        assert b"voicelane_" in metrics
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/speak",
            data=json.dumps({"text": "Hej.", "source": "notification"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            audio = response.read()
        assert response.status == 200
        # Real audio: espeak-ng from the wheel's speech extra spoke.
        assert audio[:4] == b"RIFF"
        assert len(audio) > 1000
    finally:
        process.stop()


@pytest.fixture
def api_namespace(kube: KubeTarget) -> Iterator[tuple[Path, str]]:
    """The session's Kubernetes API with the VoiceLane CRD, and a namespace of this test's own."""
    from voicelane.operator.crd import build_crd

    namespace = f"voicelane-image-{secrets.token_hex(3)}"
    with new_client_from_config(config_file=str(kube.kubeconfig)) as api:
        with contextlib.suppress(ApiException):  # already there (another test applied it)
            ApiextensionsV1Api(api).create_custom_resource_definition(build_crd())
        core = CoreV1Api(api)
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        try:
            yield kube.kubeconfig, namespace
        finally:
            core.delete_namespace(namespace)


@pytest.mark.cluster
def test_the_operator_starts_against_the_api_and_passes_the_helm_test(
    images: dict[str, Image], api_namespace: tuple[Path, str], log_dir: Path
) -> None:
    kubeconfig, namespace = api_namespace
    image = images["operator"]
    metrics_port, liveness_port = free_port(), free_port()
    process = image.start(
        "--kubeconfig",
        str(kubeconfig),
        "--namespace",
        namespace,
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--liveness",
        f"http://127.0.0.1:{liveness_port}/healthz",
        log_dir=log_dir,
    )
    try:
        process.wait_http(f"http://127.0.0.1:{liveness_port}/healthz", timeout_s=60)
        assert get(f"http://127.0.0.1:{liveness_port}/healthz")[0] == 200  # kopf's liveness endpoint
        process.wait_http(f"http://127.0.0.1:{metrics_port}/readyz", timeout_s=30)
        hook = helm_test_hook()
        # The hook's command, with the operator's Service address replaced by the local one.
        result = subprocess.run(
            [*hook[:-1], f"http://127.0.0.1:{metrics_port}"],
            cwd=image.workdir,
            env=image.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "/healthz: 200" in result.stdout
        assert "/readyz: 200" in result.stdout
        assert process.alive()
    finally:
        process.stop()


def helm_test_hook() -> list[str]:
    from tests.delivery.support import render

    [pod] = render("defaults").of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [container] = pod["spec"]["containers"]
    command: list[str] = container["command"]
    return command
