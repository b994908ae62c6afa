"""What the operator's integration tests drive: an API (emulated or real), kubectl, the operator.

Everything a test does to the cluster goes through the real `kubectl`, so the same test runs
against the Kubernetes API emulator and against a real cluster. Only two things differ: on the
emulator, `Cluster.roll_out()` stands in for the Deployment controller and faults can be injected;
on a real cluster the former is the kubelet's job and the latter is skipped.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from voicelane.processes import ManagedProcess, voicelane_argv

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "manifests/samples/voicelane.yaml"
CRD_DIR = REPO / "manifests/crd"
CHILD_KINDS = "deployments,services,configmaps,persistentvolumeclaims,poddisruptionbudgets,networkpolicies"
LANE_LABEL = "voicelane.dev/lane"

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


@dataclass
class Cluster:
    kubectl_bin: Path
    kubeconfig: Path
    namespace: str
    cache_dir: Path
    control_url: str | None = None  # the emulator's test controls; None on a real cluster
    ready_timeout_s: float = 20.0  # for pods to become ready (simulated on the emulator)
    change_timeout_s: float = 15.0  # for the operator to act on a change

    @property
    def emulated(self) -> bool:
        return self.control_url is not None

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
        return self.kubectl("apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump_all(documents))

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
        """Let every Deployment finish rolling out: simulated on the emulator, awaited on a cluster."""
        if self.control_url is not None:
            self._control("POST", "/deployments/ready", {"namespace": self.namespace})

    def inject_fault(self, **fault: Any) -> bool:
        """Add an emulator fault (see tests.support.kube_emulator.Fault); False on a real cluster."""
        if self.control_url is None:
            return False
        self._control("POST", "/faults", fault)
        return True

    def usage(self) -> list[dict[str, Any]]:
        """The emulator's count of requests by client, verb and resource (empty on a real cluster)."""
        return list(self._control("GET", "/usage", None)) if self.control_url is not None else []

    def drop_watches(self) -> None:
        """End every open watch stream (emulator only), as an API server restart would."""
        if self.control_url is not None:
            self._control("POST", "/watches/drop", None)

    def clear_faults(self) -> None:
        if self.control_url is not None:
            self._control("DELETE", "/faults", None)

    def _control(self, method: str, path: str, body: Any) -> Any:
        assert self.control_url is not None
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.control_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")


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
            for child in self.cluster.select(CHILD_KINDS, f"{LANE_LABEL}={self.name}")
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self) -> None:
        self.starts += 1
        argv = voicelane_argv(
            "operator",
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            "--namespace",
            self.cluster.namespace,
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            "--liveness",
            f"http://127.0.0.1:{self.liveness_port}/healthz",
            *self.extra_args,
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "KUBECONFIG": str(self.cluster.kubeconfig)}
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
