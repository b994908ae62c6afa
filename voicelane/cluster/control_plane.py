"""Run a real Kubernetes control plane on 127.0.0.1: etcd, the API server, the controller manager,
the scheduler, KWOK, which plays the kubelet for simulated nodes, and a stand-in volume provisioner
(provisioner.py) behind the default StorageClass.

Everything listens on 127.0.0.1 on free ports and talks only to 127.0.0.1. KWOK gives its pods
made-up addresses (a 10.x range) and each node the address 127.0.0.1; no component is started with
anything that dials a node or pod address (there is no kubelet, no proxy, no port-forward), and
admission webhooks are registered by URL. The processes outlive the command that starts them; the
folder keeps their state (`state.json`), certificates, logs and the admin kubeconfig, so a second
`up` on the same folder finds the running cluster and `down` stops what `up` started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import yaml

from voicelane.cluster import build
from voicelane.cluster.pki import write_pki
from voicelane.cluster.provisioner import STORAGE_CLASS, Api

DEFAULT_DIR = Path(".voicelane/cluster")
NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# The order they start in; they stop in reverse.
COMPONENT_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "provisioner")
# Named for the reader; the API server's default plugins (DefaultStorageClass, StorageObjectInUseProtection…)
# stay on as well. OwnerReferencesPermissionEnforcement is off by default but on in some distributions: with
# it, an ownerReference with blockOwnerDeletion needs `update` on the owner's finalizers, as the operator's
# role grants.
ADMISSION_PLUGINS = (
    "NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,DefaultStorageClass,Priority,"
    "PodSecurity,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook,ResourceQuota,"
    "OwnerReferencesPermissionEnforcement"
)


class ClusterError(RuntimeError):
    """The control plane could not be started or reached; the message says which part and why."""


@dataclasses.dataclass(frozen=True)
class NodeShape:
    """The simulated nodes: how many, and what each offers to the scheduler."""

    count: int = 1
    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110
    ephemeral_storage: str = "500Gi"


@dataclasses.dataclass
class ControlPlane:
    """A control plane whose state lives in `folder`; `up()` starts or finds it, `down()` removes it."""

    folder: Path = DEFAULT_DIR
    nodes: NodeShape = dataclasses.field(default_factory=NodeShape)
    out: TextIO | None = None  # progress lines; None: quiet

    @property
    def kubeconfig(self) -> Path:
        return self.folder / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    @property
    def pki(self) -> Path:
        return self.folder / "pki"

    def state(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return loaded

    @property
    def api_url(self) -> str:
        return str(self.state().get("api_url", ""))

    def running(self) -> bool:
        """Whether every process of this folder's cluster is alive and the API server is ready."""
        state = self.state()
        processes = state.get("processes") or {}
        if set(processes) != set(COMPONENT_ORDER):
            return False
        if not all(_alive(int(entry["pid"]), str(entry["binary"])) for entry in processes.values()):
            return False
        return self._ready(str(state.get("api_url")))

    def up(self, *, timeout_s: float = 180.0) -> Path:
        """Start the control plane (or find it running) and return the admin kubeconfig's path."""
        self.folder = self.folder.resolve()
        if self.running():
            self._say(f"==> the cluster in {self.folder} is running; reusing it")
            self._wait_nodes_ready(timeout_s)
            return self.kubeconfig
        if self.state_file.exists():
            self._say(f"==> {self.folder} holds a cluster that is not running; starting afresh")
            self.down()
            self.folder = self.folder.resolve()
        binaries = build.ensure_all(out=self.out or io.StringIO())
        started = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "logs").mkdir(exist_ok=True)
        write_pki(self.pki)
        ports = {name: _free_port() for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler")}
        api_url = f"https://127.0.0.1:{ports['apiserver']}"
        self._write_kubeconfig(api_url)
        self._write_kwok_config(binaries)
        self._write_scheduler_config()
        state: dict[str, Any] = {"api_url": api_url, "ports": ports, "processes": {}}
        try:
            for name in COMPONENT_ORDER:
                argv = self._argv(name, binaries, ports, api_url)
                state["processes"][name] = {"pid": self._spawn(name, argv), "binary": str(argv[0])}
                self._write_state(state)
                if name == "etcd":
                    self._wait_port(ports["etcd"], "etcd", timeout_s)
                elif name == "kube-apiserver":
                    self._wait_ready(api_url, timeout_s)
            self._create_nodes()
            self._wait_nodes_ready(timeout_s)
            self._wait_storage_class(timeout_s)
        except BaseException:
            self._say(f"!! the cluster did not come up; logs are in {self.folder / 'logs'}")
            self._stop_processes()
            raise
        state["up_seconds"] = round(time.monotonic() - started, 1)
        self._write_state(state)
        self._say(f"==> cluster up in {state['up_seconds']} s: {api_url} ({self.nodes.count} KWOK node(s))")
        return self.kubeconfig

    def down(self) -> None:
        """Stop every process this folder's cluster started and remove its state."""
        self._stop_processes()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- requests to the API server with the admin credentials -------------------------------------

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return Api(self.api_url, self.pki).call(method, path, dict(body) if body is not None else None)

    def _ready(self, api_url: str) -> bool:
        if not api_url:
            return False
        try:
            request = urllib.request.Request(api_url + "/readyz")
            with urllib.request.urlopen(request, timeout=3, context=Api(api_url, self.pki).context) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    # -- starting ------------------------------------------------------------------------------------

    def _argv(self, name: str, binaries: Mapping[str, Path], ports: Mapping[str, int], api_url: str) -> list[str]:
        pki, folder = self.pki, self.folder
        admin = str(self.kubeconfig)
        if name == "etcd":
            client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd-peer']}"
            return [
                str(binaries["etcd"]),
                "--name=voicelane",
                f"--data-dir={folder / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=voicelane={peer}",
                "--log-level=warn",
                # A throwaway test store: fsync buys durability nobody needs here and costs seconds.
                "--unsafe-no-fsync",
            ]
        if name == "kube-apiserver":
            return [
                str(binaries["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                f"--enable-admission-plugins={ADMISSION_PLUGINS}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=0",
            ]
        if name == "kube-controller-manager":
            return [
                str(binaries["kube-controller-manager"]),
                f"--kubeconfig={admin}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['controller-manager']}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--cluster-name=voicelane",
                "--profiling=false",
                # Quicker garbage collection and rollouts than production defaults, for tests.
                "--concurrent-gc-syncs=10",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                # The client's default 20 requests/s paces a rollout of hundreds of pods to minutes;
                # one loopback API server can take far more.
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ]
        if name == "kube-scheduler":
            return [
                str(binaries["kube-scheduler"]),
                f"--config={folder / 'kube-scheduler.yaml'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['scheduler']}",
            ]
        if name == "kwok":
            return [
                str(binaries["kwok"]),
                f"--kubeconfig={admin}",
                f"--config={folder / 'kwok.yaml'}",
                f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}=fake",
                "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
                # Pod addresses are made up and never dialled; a /16 leaves room for thousands of pods.
                "--cidr=10.244.0.0/16",
            ]
        if name == "provisioner":
            return [
                sys.executable,
                "-P",
                "-m",
                "voicelane.cluster.provisioner",
                f"--api-url={api_url}",
                f"--pki={pki}",
            ]
        raise ValueError(name)

    def _spawn(self, name: str, argv: list[str]) -> int:
        log = open(self.folder / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        env = {**os.environ, "HOME": str(self.folder)}  # KWOK reads ~/.kwok/kwok.yaml when present
        env.pop("KUBECONFIG", None)
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.folder,
            start_new_session=True,  # outlives `voicelane cluster up`; its group is stopped by `down`
        )
        log.close()
        self._say(f"    started {name} (pid {process.pid})")
        return process.pid

    def _write_kubeconfig(self, api_url: str) -> None:
        def data(name: str) -> str:
            import base64

            return base64.b64encode((self.pki / name).read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "voicelane", "cluster": {"server": api_url, "certificate-authority-data": data("ca.crt")}}
            ],
            "users": [
                {
                    "name": "voicelane-admin",
                    "user": {"client-certificate-data": data("admin.crt"), "client-key-data": data("admin.key")},
                }
            ],
            "contexts": [{"name": "voicelane", "context": {"cluster": "voicelane", "user": "voicelane-admin"}}],
            "current-context": "voicelane",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.kubeconfig.chmod(0o600)

    def _write_scheduler_config(self) -> None:
        config = {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            # Binds, like the controller manager's writes, above the client's default 50 requests/s.
            "clientConnection": {"kubeconfig": str(self.kubeconfig), "qps": 200, "burst": 400},
            "leaderElection": {"leaderElect": False},
            "enableProfiling": False,
            # A pod whose claim is not bound yet is unschedulable until the claim binds; after a few such
            # tries the default backoff (1 s doubling to 10 s) keeps it waiting up to 10 s longer than it
            # has to. Retrying each second costs a test cluster nothing.
            "podInitialBackoffSeconds": 1,
            "podMaxBackoffSeconds": 1,
        }
        (self.folder / "kube-scheduler.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")

    def _write_kwok_config(self, binaries: Mapping[str, Path]) -> None:
        stages = [binaries[Path(name).name].read_text(encoding="utf-8") for name in build.KWOK_STAGES]
        (self.folder / "kwok.yaml").write_text("\n---\n".join(stages), encoding="utf-8")

    def _write_state(self, state: Mapping[str, Any]) -> None:
        self.state_file.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    def _create_nodes(self) -> None:
        shape = self.nodes
        resources = {
            "cpu": shape.cpu,
            "memory": shape.memory,
            "pods": str(shape.pods),
            "ephemeral-storage": shape.ephemeral_storage,
        }
        for index in range(shape.count):
            name = f"kwok-node-{index}"
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                    },
                },
                "status": {"capacity": resources, "allocatable": resources},
            }
            try:
                self.request("POST", "/api/v1/nodes", node)
            except urllib.error.HTTPError as exc:
                if exc.code != 409:
                    raise ClusterError(f"creating node {name}: {exc.code} {exc.read().decode()[:300]}") from exc

    # -- waiting -------------------------------------------------------------------------------------

    def _wait_port(self, port: int, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_processes()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
            time.sleep(0.2)
        raise ClusterError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")

    def _wait_ready(self, api_url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_processes()
            if self._ready(api_url):
                return
            time.sleep(0.3)
        raise ClusterError(f"the API server at {api_url} was not ready within {timeout_s:.0f} s")

    def _wait_nodes_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        ready: list[str] = []
        while time.monotonic() < deadline:
            self._check_processes()
            nodes = self.request("GET", "/api/v1/nodes?labelSelector=type%3Dkwok").get("items") or []
            ready = [
                node["metadata"]["name"]
                for node in nodes
                if any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (node.get("status") or {}).get("conditions") or []
                )
            ]
            if nodes and len(ready) == len(nodes):
                return
            time.sleep(0.3)
        raise ClusterError(f"the KWOK nodes were not Ready within {timeout_s:.0f} s (ready: {ready})")

    def _wait_storage_class(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_processes()
            with contextlib.suppress(urllib.error.HTTPError):
                self.request("GET", f"/apis/storage.k8s.io/v1/storageclasses/{STORAGE_CLASS}")
                return
            time.sleep(0.3)
        raise ClusterError(f"the provisioner did not create the StorageClass {STORAGE_CLASS} within {timeout_s:.0f} s")

    def _check_processes(self) -> None:
        for name, entry in (self.state().get("processes") or {}).items():
            if not _alive(int(entry["pid"]), str(entry["binary"])):
                log = self.folder / "logs" / f"{name}.log"
                tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:] if log.exists() else []
                raise ClusterError(f"{name} exited; the end of {log}:\n" + "\n".join(tail))

    # -- stopping ------------------------------------------------------------------------------------

    def _stop_processes(self) -> None:
        processes = self.state().get("processes") or {}
        for name in reversed(COMPONENT_ORDER):
            entry = processes.get(name)
            if not entry:
                continue
            pid = int(entry["pid"])
            if not _alive(pid, str(entry["binary"])):
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid, str(entry["binary"])) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.1)
            if _alive(pid, str(entry["binary"])):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            _reap(pid)
            self._say(f"    stopped {name} (pid {pid})")

    def _say(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _alive(pid: int, binary: str) -> bool:
    """Whether `pid` is still the program we started (not a zombie, nor a later process with its number)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        executable = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return os.path.realpath(executable.removesuffix(" (deleted)")) == os.path.realpath(binary)


def _reap(pid: int) -> None:
    """Collect a child that exited, when this process started it (a zombie otherwise looks alive)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
