"""`voicelane cluster up|down` as a user runs it: ready when it returns, reused, stopped, and on loopback only.

`up` prints `export KUBECONFIG=DIR/kubeconfig` as its last line and returns once the API server is ready and
the KWOK node is Ready; a second `up` on the same folder reuses the running cluster; `down` stops every
process `up` started and removes the folder. Every socket of the cluster's processes is on 127.0.0.1 and no
process was started with a flag naming another address, but for the few that name addresses nobody dials.
Two clusters in all: one for the running checks, one that `down` removes.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from voicelane.cluster.control_plane import COMPONENT_ORDER
from voicelane.processes import voicelane_argv

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
KUBECTL = REPO / ".tools/bin/kubectl"

# Flags that name non-loopback addresses which no process ever dials, each with the reason.
UNDIALLED_ADDRESS_FLAGS = {
    # KWOK hands pods made-up addresses from this range; there is no kubelet, CNI or proxy behind them.
    ("kwok", "--cidr"),
    # Services get ClusterIPs from this range in their objects only: no kube-proxy routes them, and the
    # webhooks are registered by URL on 127.0.0.1, so the API server dials none of them.
    ("kube-apiserver", "--service-cluster-ip-range"),
    # The `iss` claim written into service-account tokens: an identifier, never fetched.
    ("kube-apiserver", "--service-account-issuer"),
}
IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?\b")
URL_HOST = re.compile(r"[a-z][a-z0-9+.-]*://([^/:\s,]+)")


def voicelane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(voicelane_argv(*args), capture_output=True, text=True, timeout=200, check=False)


def kubectl(kubeconfig: Path, *args: str) -> str:
    result = subprocess.run(
        [str(KUBECTL), f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


def processes(folder: Path) -> dict[str, psutil.Process]:
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return {name: psutil.Process(entry["pid"]) for name, entry in state["processes"].items()}


def gone(process: psutil.Process) -> bool:
    # A stopped process nobody has reaped yet is a zombie: it holds no sockets and runs nothing.
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def named_addresses(argument: str) -> list[str]:
    return IPV4.findall(argument) + URL_HOST.findall(argument)


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_network(address, strict=False).network_address.is_loopback
    except ValueError:
        return False  # a host name other than localhost


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL.relative_to(REPO)} is missing: run .ci/install-tools")
    folder = tmp_path_factory.mktemp("cluster-command") / "cluster"
    try:
        yield folder
    finally:
        voicelane("cluster", "down", "--dir", str(folder))


@pytest.fixture(scope="module")
def first_up(cluster_dir: Path) -> subprocess.CompletedProcess[str]:
    return voicelane("cluster", "up", "--dir", str(cluster_dir))


def test_up_returns_ready_and_prints_the_kubeconfig_export_last(
    cluster_dir: Path, first_up: subprocess.CompletedProcess[str]
) -> None:
    assert first_up.returncode == 0, first_up.stderr
    assert first_up.stdout.splitlines()[-1] == f"export KUBECONFIG={cluster_dir / 'kubeconfig'}"
    kubeconfig = cluster_dir / "kubeconfig"
    assert kubectl(kubeconfig, "get", "--raw", "/readyz") == "ok"
    ready = kubectl(
        kubeconfig, "get", "node", "kwok-node-0", "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
    )
    assert ready == "True"


def test_second_up_reuses_the_running_cluster(cluster_dir: Path, first_up: subprocess.CompletedProcess[str]) -> None:
    state_before = json.loads((cluster_dir / "state.json").read_text(encoding="utf-8"))

    second = voicelane("cluster", "up", "--dir", str(cluster_dir))

    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1] == f"export KUBECONFIG={cluster_dir / 'kubeconfig'}"
    state_after = json.loads((cluster_dir / "state.json").read_text(encoding="utf-8"))
    assert state_after["api_url"] == state_before["api_url"]
    assert state_after["processes"] == state_before["processes"]
    assert all(not gone(process) for process in processes(cluster_dir).values())


def test_every_socket_of_the_cluster_is_on_loopback(
    cluster_dir: Path, first_up: subprocess.CompletedProcess[str]
) -> None:
    api_port = int(json.loads((cluster_dir / "state.json").read_text(encoding="utf-8"))["api_url"].rsplit(":", 1)[1])
    listening: set[tuple[str, str, int]] = set()
    off_loopback = []
    for name, process in processes(cluster_dir).items():
        for owner in (process, *process.children(recursive=True)):
            for connection in owner.net_connections(kind="inet"):
                ends = [connection.laddr, *([connection.raddr] if connection.raddr else [])]
                off_loopback += [(name, end.ip, end.port) for end in ends if not is_loopback(end.ip)]
                if connection.status == psutil.CONN_LISTEN:
                    listening.add((name, connection.laddr.ip, connection.laddr.port))

    assert off_loopback == []
    assert ("kube-apiserver", "127.0.0.1", api_port) in listening  # the check saw the sockets it judges


def test_no_process_is_started_with_an_address_off_loopback(
    cluster_dir: Path, first_up: subprocess.CompletedProcess[str]
) -> None:
    named = []
    for name, process in processes(cluster_dir).items():
        for argument in process.cmdline()[1:]:
            flag = argument.split("=", 1)[0]
            named += [(name, flag, address) for address in named_addresses(argument) if not is_loopback(address)]

    assert {(name, flag) for name, flag, _ in named} == UNDIALLED_ADDRESS_FLAGS
    # The ranges are private ones, which nothing outside the machine could be reached at by mistake.
    assert all(
        ipaddress.ip_network(address).is_private for _, flag, address in named if flag.endswith(("cidr", "range"))
    )


def test_down_stops_every_process_it_started_and_removes_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cluster"
    try:
        assert voicelane("cluster", "up", "--dir", str(folder)).returncode == 0
        started = processes(folder)
        assert set(started) == set(COMPONENT_ORDER)
        assert all(not gone(process) for process in started.values())

        down = voicelane("cluster", "down", "--dir", str(folder))

        assert down.returncode == 0, down.stderr
        assert [name for name, process in started.items() if not gone(process)] == []
        assert not folder.exists()
    finally:
        voicelane("cluster", "down", "--dir", str(folder))
