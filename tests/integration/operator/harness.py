"""What the operator's integration tests drive: a Kubernetes API, kubectl, the fault proxy, the operator.

Everything a test does to the cluster goes through the real `kubectl` with the admin kubeconfig, so
the same test runs against the local control plane and against a real cluster. The operator instead
runs as its own ServiceAccount, bound only to the role it ships with, and talks to the API server
through the fault proxy (tests/support/fault_proxy.py): the API server authorizes its every request,
and a test can inject faults into them, count them, and drop its watch streams.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from voicelane.processes import ManagedProcess, free_port, voicelane_argv

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "manifests/samples/voicelane.yaml"
CRD_DIR = REPO / "manifests/crd"
ROLE = REPO / "manifests/rbac/role.yaml"
FAULT_PROXY = REPO / "tests/support/fault_proxy.py"
CHILD_KINDS = "deployments,services,configmaps,persistentvolumeclaims,poddisruptionbudgets,networkpolicies"
LABEL_LANE = "voicelane.dev/lane"
SESSION_LABEL = "voicelane.dev/test-namespace"  # on the cluster-scoped objects a test session makes
OPERATOR_ACCOUNT = "voicelane-operator"
TOKEN_DURATION = "6h"  # outlasts any test session; the API server may shorten it, never below 10 min

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | Literal[False] | None],
    timeout_s: float,
    *,
    what: str = "",
    interval_s: float = 0.2,
) -> T:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout_s:.0f} s waiting for {what or predicate}: last {value!r}")
        time.sleep(interval_s)


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for entry in ((obj or {}).get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return dict(entry)
    return {}


def shipped_role_rules() -> list[dict[str, Any]]:
    """The rules of the operator's ClusterRole as shipped in manifests/rbac/role.yaml."""
    role = yaml.safe_load(ROLE.read_text(encoding="utf-8"))
    rules: list[dict[str, Any]] = role["rules"]
    return rules


@contextlib.contextmanager
def fault_proxy(admin_kubeconfig: Path, log_dir: Path) -> Iterator[str]:
    """The fault proxy in front of the API server of `admin_kubeconfig`; yields its URL."""
    port = free_port()
    # Run by path with -P: it imports nothing of the project, and the repository root stays off sys.path.
    argv = [sys.executable, "-P", str(FAULT_PROXY), f"--kubeconfig={admin_kubeconfig}", f"--listen=127.0.0.1:{port}"]
    process = ManagedProcess(argv, log_dir / "fault-proxy.log", env={**os.environ, "PYTHONUNBUFFERED": "1"}).start()
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_http(f"{url}/_proxy/healthz", timeout_s=30)
        yield url
    finally:
        process.stop()


@dataclass
class Cluster:
    kubectl_bin: Path
    kubeconfig: Path  # the admin's: what the tests themselves do
    namespace: str
    cache_dir: Path
    proxy_url: str  # the fault proxy the operator's requests pass through
    operator_kubeconfig: Path  # the operator's ServiceAccount token, pointed at the proxy
    ready_timeout_s: float = 20.0  # for pods to become ready (at once on KWOK, real pods on a real cluster)
    change_timeout_s: float = 15.0  # for the operator to act on a change

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [
            str(self.kubectl_bin),
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.cache_dir}",
            f"--namespace={self.namespace}",
            *args,
        ]
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def apply(self, *documents: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {kind} {name}: {result.stderr.strip()}")
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def select(self, kinds: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.kubectl("get", kinds, "-l", selector, "-o", "json").stdout)[
            "items"
        ]
        return items

    def patch(self, kind: str, name: str, patch: dict[str, Any]) -> None:
        self.kubectl("patch", kind, name, "--type=merge", "-p", json.dumps(patch))

    def delete(self, kind: str, name: str, *, wait: bool = True) -> None:
        self.kubectl("delete", kind, name, f"--wait={'true' if wait else 'false'}", "--ignore-not-found")

    def events_about(self, name: str) -> list[dict[str, Any]]:
        result = self.kubectl("get", "events", f"--field-selector=involvedObject.name={name}", "-o", "json")
        events: list[dict[str, Any]] = json.loads(result.stdout)["items"]
        return events

    def roll_out(self) -> None:
        """Wait until every Deployment of the namespace has rolled out and is Available."""
        wait_until(self._all_rolled_out, self.ready_timeout_s, what="every Deployment rolled out")

    def _all_rolled_out(self) -> bool:
        deployments = json.loads(self.kubectl("get", "deployments", "-o", "json").stdout)["items"]
        return all(rolled_out(deployment) for deployment in deployments)

    # -- the operator's identity ------------------------------------------------------------------------

    def service_account_kubeconfig(self, account: str, rules: list[dict[str, Any]], path: Path) -> Path:
        """A ServiceAccount bound to a ClusterRole of exactly `rules`; its token in a kubeconfig for the proxy.

        The role and its binding are cluster-scoped (the operator may serve other namespaces than this
        one, as the webhook's does), named after the namespace and labelled for `remove_session_objects`.
        """
        role_name = f"{self.namespace}-{account}"
        labels = {SESSION_LABEL: self.namespace}
        self.apply(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": self.namespace}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": role_name, "labels": labels},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": role_name, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": self.namespace}],
            },
        )
        # A bound token from the TokenRequest API, as a pod's projected token is.
        token = self.kubectl("create", "token", account, f"--duration={TOKEN_DURATION}").stdout.strip()
        user = f"system:serviceaccount:{self.namespace}:{account}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fault-proxy", "cluster": {"server": self.proxy_url}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": account, "context": {"cluster": "fault-proxy", "user": user}}],
            "current-context": account,
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        path.chmod(0o600)
        return path

    def remove_session_objects(self) -> None:
        self.kubectl(
            "delete", "clusterrolebindings,clusterroles", "-l", f"{SESSION_LABEL}={self.namespace}", check=False
        )

    # -- the fault proxy (tests/support/fault_proxy.py) ---------------------------------------------------

    def inject_fault(self, **fault: Any) -> bool:
        """Add a fault to the operator's requests (see tests.support.fault_proxy.Fault); True once added."""
        self._control("POST", "/faults", fault)
        return True

    def usage(self) -> list[dict[str, Any]]:
        """The operator's requests so far, by client, verb and resource, with the answers' status codes."""
        return list(self._control("GET", "/usage", None))

    def fault_hits(self) -> int:
        """How many requests the active faults have struck so far."""
        return sum(int(fault["hits"]) for fault in self._control("GET", "/faults", None))

    def drop_watches(self) -> None:
        """End every open watch stream of the operator, as an API server restart would."""
        self._control("POST", "/watches/drop", None)

    def clear_faults(self) -> None:
        self._control("DELETE", "/faults", None)

    def _control(self, method: str, path: str, body: Any) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.proxy_url}/_proxy{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")


def rolled_out(deployment: dict[str, Any]) -> bool:
    """Whether a Deployment's controller has seen its spec and every wanted replica is updated and available."""
    status = deployment.get("status") or {}
    wanted = (deployment.get("spec") or {}).get("replicas", 1)
    return (
        status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
        and status.get("updatedReplicas", 0) == wanted
        and status.get("availableReplicas", 0) == wanted
        and status.get("replicas", 0) == wanted
        and condition(deployment, "Available").get("status") == "True"
    )


@dataclass
class Lane:
    """One VoiceLane under test, made from the sample manifest under its own name."""

    cluster: Cluster
    name: str

    def manifest(self, **spec_overrides: Any) -> dict[str, Any]:
        documents = [doc for doc in yaml.safe_load_all(SAMPLE.read_text(encoding="utf-8")) if doc]
        lane = copy.deepcopy(documents[0])
        lane["metadata"] = {"name": self.name, "namespace": self.cluster.namespace}
        _merge(lane["spec"], spec_overrides)
        return lane

    def create(self, **spec_overrides: Any) -> dict[str, Any]:
        manifest = self.manifest(**spec_overrides)
        self.cluster.apply(manifest)
        return manifest

    def get(self) -> dict[str, Any] | None:
        return self.cluster.get("voicelane", self.name)

    def children(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {
            (child["kind"], child["metadata"]["name"]): child
            for child in self.cluster.select(CHILD_KINDS, f"{LABEL_LANE}={self.name}")
        }

    def condition(self, kind: str) -> dict[str, Any]:
        return condition(self.get(), kind)

    def having(self, kind: str, status: str = "True") -> dict[str, Any] | None:
        """The lane once its condition `kind` has `status`, else None."""
        lane = self.get()
        return lane if condition(lane, kind).get("status") == status else None

    def observed(self) -> dict[str, Any] | None:
        """The lane once its status reflects its current generation, else None."""
        lane = self.get()
        if lane and (lane.get("status") or {}).get("observedGeneration") == lane["metadata"].get("generation"):
            return lane
        return None

    def event_reasons(self) -> set[str]:
        return {event.get("reason", "") for event in self.cluster.events_about(self.name)}


@dataclass
class OperatorProcess:
    """`voicelane operator`, namespaced to the test namespace; can be killed and started again."""

    cluster: Cluster
    log_dir: Path
    metrics_port: int
    liveness_port: int
    process: ManagedProcess | None = None
    starts: int = field(default=0)
    extra_args: tuple[str, ...] = ()  # more `voicelane operator` flags, e.g. the webhook's
    kubeconfig: Path | None = None  # whose credentials it runs with; default: the operator's ServiceAccount

    @property
    def credentials(self) -> Path:
        return self.kubeconfig or self.cluster.operator_kubeconfig

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self) -> None:
        self.starts += 1
        argv = voicelane_argv(
            "operator",
            "--kubeconfig",
            str(self.credentials),
            "--namespace",
            self.cluster.namespace,
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            "--liveness",
            f"http://127.0.0.1:{self.liveness_port}/healthz",
            *self.extra_args,
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "KUBECONFIG": str(self.credentials)}
        self.process = ManagedProcess(argv, self.log_dir / f"operator-{self.starts}.log", env=env).start()
        self.process.wait_http(f"{self.url}/readyz", timeout_s=60)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def log(self) -> str:
        """Everything every start of this operator has logged."""
        return "".join(path.read_text(errors="replace") for path in sorted(self.log_dir.glob("operator-*.log")))

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            text: str = response.read().decode()
            return text

    def metric(self, sample: str) -> float:
        """The value of one sample line of /metrics, e.g. 'voicelane_operator_lanes{condition="Ready"}'."""
        for line in self.get("/metrics").splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{sample} is not on /metrics")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
