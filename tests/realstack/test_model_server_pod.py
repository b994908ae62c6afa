"""A tier pod's Ollama containers, as the operator renders them, run against the real Ollama.

No container runtime and no cluster: each container's rendered command runs as a local process with the
container's rendered environment, changed only where a pod and this machine differ (`outside_the_pod`).
The lane's model names a registry on loopback that serves nothing, so every pull fails at once and
nothing leaves 127.0.0.1; the model store's "stored copy" is the shipped GGUF imported under that name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from voicelane.operator.api import API_VERSION, KIND
from voicelane.operator.render import HOME_PATH, MODELS_PATH, OLLAMA_PORT, render_children
from voicelane.processes import ManagedProcess, ProcessFailed, free_port
from voicelane.stack.ollama import import_model

pytestmark = [pytest.mark.realstack, pytest.mark.timeout(600)]

# A registry on loopback, at a port nothing listens on (free when the module loads): the pull fails at
# once without leaving the machine.
MODEL = f"127.0.0.1:{free_port()}/library/smollm2:135m"
LOAD_DEADLINE_S = 180.0


def lane(*, keep_alive_s: int, rewarm_interval_s: int = 1800) -> dict[str, Any]:
    tier = {
        "model": MODEL,
        "resources": {"cpu": 1, "memory": "1Gi"},
        "keepAliveSeconds": keep_alive_s,
        "rewarmIntervalSeconds": rewarm_interval_s,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "voice", "namespace": "default", "uid": "5f0c6a59-0000-4000-8000-000000000001"},
        "spec": {"fast": tier, "deep": tier},
    }


def rendered_containers(lane_object: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The fast tier pod's containers by name, init container included, straight from the renderer."""
    [deployment] = [
        child
        for child in render_children(lane_object)
        if child["kind"] == "Deployment" and child["metadata"]["name"] == "voice-fast"
    ]
    pod = deployment["spec"]["template"]["spec"]
    return {container["name"]: container for container in pod["initContainers"] + pod["containers"]}


@dataclass(frozen=True)
class Machine:
    """Where this machine differs from a pod: the binary, the volumes' folders, the port."""

    binary: Path
    models: Path
    volumes: Path  # the pod's emptyDir volumes, one folder each
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def outside_the_pod(container: dict[str, Any], machine: Machine) -> dict[str, str]:
    """The container's rendered environment with the in-pod paths and port translated; nothing else.

    The one place the test departs from the rendering. In the pod the volumes are mounted at fixed
    paths and the server owns port 11434 of the pod's network; here they are temporary folders and a
    free port on loopback (the server too: without a pod's network namespace, 0.0.0.0 would listen on
    every interface). Every container names its server in OLLAMA_HOST and the probes take the port from
    it, so one variable moves them all.
    """
    env = {var["name"]: var["value"] for var in container["env"]}
    assert env["OLLAMA_HOST"].endswith(f":{OLLAMA_PORT}"), env["OLLAMA_HOST"]
    env["OLLAMA_HOST"] = machine.address
    if "OLLAMA_MODELS" in env:
        assert env["OLLAMA_MODELS"] == MODELS_PATH
        env["OLLAMA_MODELS"] = str(machine.models)
    volume = {HOME_PATH: "home", "/tmp": "tmp"}[env["HOME"]]  # the warmer's HOME is its /tmp volume
    env["HOME"] = str(machine.volumes / volume)
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    # A guard, not a translation: Go's HTTP client never proxies loopback, so the pulls still fail
    # against 127.0.0.1 for real, while anything bound elsewhere would meet a dead proxy on loopback.
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    return {
        "PATH": f"{machine.binary.parent}:{os.environ['PATH']}",  # the real ollama first
        "HTTPS_PROXY": dead_proxy,
        "HTTP_PROXY": dead_proxy,
        **env,
    }


def container_argv(container: dict[str, Any], binary: Path) -> list[str]:
    # The model server has only args: the image's entrypoint is the ollama binary.
    return list(container["command"]) if "command" in container else [str(binary), *container["args"]]


@pytest.fixture(scope="module")
def ollama_binary() -> Path:
    configured = os.environ.get("VOICELANE_TEST_OLLAMA_BINARY")
    if configured:
        return Path(configured)
    from voicelane.stack.build import ensure_ollama

    return ensure_ollama()


@pytest.fixture(scope="module")
def stored_models(ollama_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store that already holds the lane's model: the shipped GGUF imported under its name."""
    from voicelane.stack.build import ensure_model

    folder = tmp_path_factory.mktemp("seed")
    models = folder / "models"
    models.mkdir()
    address = f"127.0.0.1:{free_port()}"
    env = {
        "PATH": os.environ["PATH"],
        "OLLAMA_HOST": address,
        "OLLAMA_MODELS": str(models),
        "OLLAMA_NO_CLOUD": "1",
        "HOME": str(folder),
    }
    seeder = ManagedProcess([str(ollama_binary), "serve"], folder / "seed.log", env=env).start()
    try:
        seeder.wait_http(f"http://{address}/api/version", timeout_s=60)
        # Imported under a plain name (import_model names its Modelfile after the model, so no "/"),
        # then renamed to the lane's model with Ollama's own copy.
        plain = "smollm2-seed:135m"
        import_model(ollama_binary, f"http://{address}", plain, ensure_model(), folder)
        for command in (["cp", plain, MODEL], ["rm", plain]):
            subprocess.run([str(ollama_binary), *command], env=env, capture_output=True, check=True, timeout=60)
    finally:
        seeder.stop()
    return models


def make_machine(ollama_binary: Path, tmp_path: Path, models: Path) -> Machine:
    return Machine(binary=ollama_binary, models=models, volumes=tmp_path / "volumes", port=free_port())


def copy_of(store: Path, tmp_path: Path) -> Path:
    # Hard links: a private store per test without copying the model's blob.
    copy = tmp_path / "models"
    shutil.copytree(store, copy, copy_function=os.link)
    return copy


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_init_container(container: dict[str, Any], machine: Machine) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        container_argv(container, machine.binary),
        env=outside_the_pod(container, machine),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # The next container binds the same port: the init container must not leave its server behind.
    assert not port_is_open(machine.port), "the pull's private server outlived the init container"
    return result


def probe_passes(command: list[str], env: dict[str, str]) -> bool:
    return subprocess.run(command, env=env, capture_output=True, timeout=30, check=False).returncode == 0


def wait_until(condition: Callable[[], bool], deadline_s: float, what: str, *, poll_s: float = 0.3) -> float:
    """Poll until `condition` holds; returns the seconds it took, or fails naming `what`."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if condition():
            return time.monotonic() - started
        time.sleep(poll_s)
    raise AssertionError(f"{what}: not within {deadline_s:.0f} s")


@dataclass
class RunningPod:
    machine: Machine
    containers: dict[str, dict[str, Any]]
    server: ManagedProcess
    logs: Path
    warmer: ManagedProcess | None = None

    def probe(self, name: str) -> bool:
        server = self.containers["ollama"]
        return probe_passes(server[name]["exec"]["command"], outside_the_pod(server, self.machine))

    def ready(self) -> bool:
        return self.probe("readinessProbe")

    def live(self) -> bool:
        probe = self.containers["ollama"]["livenessProbe"]["httpGet"]
        try:
            with urllib.request.urlopen(self.machine.url + probe["path"], timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def start_warmer(self) -> ManagedProcess:
        container = self.containers["warmer"]
        self.warmer = ManagedProcess(
            container_argv(container, self.machine.binary),
            self.logs / "warmer.log",
            env=outside_the_pod(container, self.machine),
        ).start()
        return self.warmer

    def warmer_loads(self) -> int:
        assert self.warmer is not None
        return self.warmer.log().splitlines().count(f"loaded {MODEL}")

    def expires_at(self) -> datetime:
        with urllib.request.urlopen(self.machine.url + "/api/ps", timeout=10) as response:
            [loaded] = json.loads(response.read())["models"]
        assert loaded["name"] == MODEL
        # Go writes nanoseconds; Python reads up to microseconds.
        return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", loaded["expires_at"]))


@contextlib.contextmanager
def running_pod(lane_object: dict[str, Any], machine: Machine, logs: Path) -> Iterator[RunningPod]:
    """The pod up to its containers' start: the init container done, the model server answering."""
    containers = rendered_containers(lane_object)
    pulled = run_init_container(containers["pull-model"], machine)
    assert pulled.returncode == 0, pulled.stderr
    server_container = containers["ollama"]
    server = ManagedProcess(
        container_argv(server_container, machine.binary),
        logs / "ollama.log",
        env=outside_the_pod(server_container, machine),
    ).start()
    pod = RunningPod(machine, containers, server, logs)
    try:
        server.wait_http(machine.url + "/api/version", timeout_s=60)
        yield pod
    except (AssertionError, ProcessFailed) as exc:
        warmer_log = pod.warmer.log()[-2000:] if pod.warmer else ""
        raise AssertionError(f"{exc}\n--- warmer ---\n{warmer_log}\n--- ollama ---\n{server.log()[-3000:]}") from exc
    finally:
        if pod.warmer is not None:
            assert pod.warmer.stop() == 0  # the warmer ends promptly and cleanly on SIGTERM
        server.stop()


def test_a_failed_pull_falls_back_to_the_stored_model(ollama_binary: Path, stored_models: Path, tmp_path: Path) -> None:
    machine = make_machine(ollama_binary, tmp_path, copy_of(stored_models, tmp_path))
    result = run_init_container(rendered_containers(lane(keep_alive_s=300))["pull-model"], machine)
    assert result.returncode == 0, result.stderr
    registry = MODEL.split("/", 1)[0]
    assert f"https://{registry}/v2/library/smollm2/manifests/135m" in result.stderr  # really tried, on loopback
    assert f"pulling {MODEL} failed; using the copy already in the model store" in result.stderr


def test_a_failed_pull_without_a_stored_model_fails_the_init_container(ollama_binary: Path, tmp_path: Path) -> None:
    empty_store = tmp_path / "models"
    empty_store.mkdir()
    machine = make_machine(ollama_binary, tmp_path, empty_store)
    result = run_init_container(rendered_containers(lane(keep_alive_s=300))["pull-model"], machine)
    assert result.returncode != 0
    assert f"pulling {MODEL} failed and the model store does not hold it" in result.stderr


def test_ready_only_with_the_model_loaded_and_reloaded_after_keep_alive(
    ollama_binary: Path, stored_models: Path, tmp_path: Path
) -> None:
    keep_alive_s = 3  # the warmer checks every 10 s, so the model is out of memory for a while each time
    machine = make_machine(ollama_binary, tmp_path, copy_of(stored_models, tmp_path))
    with running_pod(lane(keep_alive_s=keep_alive_s), machine, tmp_path) as pod:
        # The server answers, the model is not loaded yet: alive, but neither started nor ready.
        assert pod.live()
        assert not pod.probe("startupProbe")
        assert not pod.ready()

        pod.start_warmer()
        wait_until(pod.ready, LOAD_DEADLINE_S, "ready once the warmer loaded the model")
        assert pod.probe("startupProbe")
        assert pod.warmer_loads() == 1

        # keepAliveSeconds expire while nothing uses the model: Ollama unloads it and the pod is not ready...
        wait_until(lambda: not pod.ready(), keep_alive_s + 30, "unloaded after keepAliveSeconds", poll_s=0.2)
        assert pod.live()  # ...but alive: a reload must never get the pod restarted
        # ...until the warmer's next check finds it gone and loads it again.
        wait_until(pod.ready, 10 + LOAD_DEADLINE_S, "ready again once the warmer reloaded the model")
        assert pod.warmer_loads() == 2


def test_a_keep_alive_of_minus_one_keeps_the_model_loaded_for_good(
    ollama_binary: Path, stored_models: Path, tmp_path: Path
) -> None:
    machine = make_machine(ollama_binary, tmp_path, copy_of(stored_models, tmp_path))
    with running_pod(lane(keep_alive_s=-1), machine, tmp_path) as pod:
        pod.start_warmer()
        wait_until(pod.ready, LOAD_DEADLINE_S, "ready once the warmer loaded the model")
        # Both the server's OLLAMA_KEEP_ALIVE and the warmer's `ollama run --keepalive` took the rendered
        # value: Ollama reports the model as expiring in the far future (it says "Forever" in `ollama ps`).
        assert pod.expires_at() - datetime.now(pod.expires_at().tzinfo) > timedelta(days=3650)
        assert pod.warmer_loads() == 1


def test_the_warmer_loads_the_model_again_at_the_rewarm_interval(
    ollama_binary: Path, stored_models: Path, tmp_path: Path
) -> None:
    # The shortest rewarmIntervalSeconds the API accepts; a keepAliveSeconds long enough that only the rewarm loads.
    machine = make_machine(ollama_binary, tmp_path, copy_of(stored_models, tmp_path))
    with running_pod(lane(keep_alive_s=600, rewarm_interval_s=60), machine, tmp_path) as pod:
        pod.start_warmer()
        wait_until(pod.ready, LOAD_DEADLINE_S, "ready once the warmer loaded the model")
        first_expiry = pod.expires_at()
        started = time.monotonic()

        def rewarmed() -> bool:
            assert pod.ready(), "the model left memory before its rewarm"
            return pod.warmer_loads() >= 2

        wait_until(rewarmed, 60 + 10 + LOAD_DEADLINE_S, "loaded again at the rewarm interval", poll_s=1.0)
        assert time.monotonic() - started >= 50  # not before the interval (give or take one 10 s check)
        # The rewarm loaded the resident model again: its keep-alive runs from the rewarm now.
        assert (pod.expires_at() - first_expiry).total_seconds() >= 50
