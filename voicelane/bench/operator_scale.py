"""Suite `operator`: many VoiceLanes applied at once, against the same objects written directly.

The operator runs as `voicelane operator --kubeconfig PATH --namespace bench` against a local
control plane (voicelane.cluster: etcd, kube-apiserver, controllers, scheduler, KWOK nodes with room
for every lane's pods) started afresh in a temporary folder. All lanes are created at once; the
suite polls the API until every lane has all its children and a status for its generation, and
then until every lane reports Ready (the Deployment controller rolls the Deployments out, KWOK makes
their pods Ready). The reference, in the same run on another fresh control plane, is a plain client
that writes the very same objects (each lane, its rendered children, its status) with no watch and
no reconcile loop: the floor the API itself sets. Reported: times, the operator's CPU seconds and
RSS, the CPU seconds of every control-plane process (kube-apiserver and etcd apart), the requests
the API server served by verb and resource (its own apiserver_request_total, which no machine load
moves), and operator/reference ratios.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import os
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import requests
from prometheus_client.parser import text_string_to_metric_families

from voicelane.bench.context import SuiteContext
from voicelane.bench.envelope import SuiteOutcome
from voicelane.bench.procs import ProcessMeter
from voicelane.bench.stats import per_item, ratio, summarize
from voicelane.cluster.control_plane import ControlPlane, NodeShape
from voicelane.operator.apply import CHILD_RESOURCES, LANE_RESOURCE, resource_of
from voicelane.operator.crd import build_crd
from voicelane.operator.render import LABEL_LANE, render_children
from voicelane.operator.status import lane_status
from voicelane.processes import ManagedProcess, free_port, running, voicelane_argv

NAMESPACE = "bench"
# The operator's API client runs its calls on asyncio's default thread pool (min(32, cores + 4)
# workers); the reference writer gets as many lanes in flight.
REFERENCE_CONCURRENCY = 6
CREATE_CONCURRENCY = 16
# Room on the simulated nodes for every pod of 200 sample lanes (3 pods, 10 CPUs, 28 GiB of memory and
# 15.2 GiB of ephemeral storage each: the deep tier's model is stored in an emptyDir).
NODES = NodeShape(count=4, cpu="600", memory="2Ti", pods=250, ephemeral_storage="2Ti")

# The shipped sample lane (manifests/samples/voicelane.yaml): both tiers, model storage, a PDB.
LANE_SPEC: dict[str, Any] = {
    "fast": {
        "model": "llama3.2:1b",
        "replicas": 1,
        "resources": {"cpu": 2, "memory": "4Gi"},
        "keepAliveSeconds": 900,
        "numParallel": 1,
        "maxQueue": 8,
        "contextLength": 4096,
        "storage": {"size": "5Gi"},
    },
    "deep": {
        "model": "llama3.1:8b",
        "replicas": 2,
        "resources": {"cpu": 4, "memory": "12Gi"},
        "keepAliveSeconds": 900,
        "numParallel": 2,
        "maxQueue": 16,
        "contextLength": 8192,
        "rewarmIntervalSeconds": 1200,
        "upstream": {"firstTokenTimeoutSeconds": 15},
    },
    "routing": {"fastMaxChars": 130},
    "policy": {"rateLimit": {"burst": 8, "sustainedPerSecond": 4}, "scheduler": {"maxWaiting": 3}},
}


@dataclass(frozen=True)
class Size:
    lanes: int
    poll_interval_s: float
    timeout_s: float
    steady_window_s: float  # after Ready: long enough for every lane's periodic resync to run once


SIZES = {"smoke": Size(3, 0.2, 90.0, 1.0), "full": Size(200, 0.25, 300.0, 60.0)}


def lane_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": LANE_RESOURCE.api_version,
        "kind": LANE_RESOURCE.kind,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": copy.deepcopy(LANE_SPEC),
    }


def expected_children() -> int:
    lane = lane_manifest("probe")
    lane["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"
    return len(render_children(lane))


@dataclass(frozen=True)
class AdminApi:
    """The control plane's API server with its admin client certificate."""

    url: str
    pki: Path

    def session(self) -> requests.Session:
        session = requests.Session()
        # REQUESTS_CA_BUNDLE and proxy variables would override the cluster's own CA: ignore the environment.
        session.trust_env = False
        session.verify = str(self.pki / "ca.crt")
        session.cert = (str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return session

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context


API_PARTS = ("kube-apiserver", "etcd")
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})


@dataclass
class ControlPlaneMeter:
    """CPU seconds of every control-plane process; `cpu_s` is what serves the API: kube-apiserver and its etcd."""

    meters: dict[str, ProcessMeter]

    def cpu_s(self) -> float:
        return sum(self.meters[part].cpu_s() for part in API_PARTS)

    def cpu_by_part(self) -> dict[str, float]:
        return {part: meter.cpu_s() for part, meter in self.meters.items()}


def cpu_since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {part: round(after[part] - before[part], 3) for part in after}


def served_requests(session: requests.Session, api: AdminApi) -> collections.Counter[tuple[str, str]]:
    """The requests the API server has answered so far, by (verb, resource[/subresource]), from its /metrics."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    text = session.get(api.url + "/metrics", timeout=60).text
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            resource = labels.get("resource", "")
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            counts[labels.get("verb", ""), resource] += int(sample.value)
    return counts


def request_summary(counts: collections.Counter[tuple[str, str]]) -> dict[str, Any]:
    """Writes and reads (watches aside), and the writes by resource, busiest first."""
    writes = {f"{verb} {resource}": n for (verb, resource), n in counts.most_common() if verb in WRITE_VERBS and n}
    reads = sum(n for (verb, _), n in counts.items() if verb in ("GET", "LIST"))
    return {"writes": sum(writes.values()), "reads": reads, "writes_by_resource": writes}


@contextlib.contextmanager
def control_plane(ctx: SuiteContext, name: str) -> Iterator[tuple[AdminApi, Path, ControlPlaneMeter]]:
    """A fresh control plane with the CRD and the namespace applied; yields (API, kubeconfig, meter)."""
    with tempfile.TemporaryDirectory(prefix=f"voicelane-{name}-") as folder:
        plane = ControlPlane(Path(folder) / "cluster", nodes=NODES)
        ctx.say(f"starting a control plane for the {name} run")
        kubeconfig = plane.up()
        try:
            processes = plane.state()["processes"]
            meter = ControlPlaneMeter({part: ProcessMeter(int(entry["pid"])) for part, entry in processes.items()})
            api = AdminApi(plane.api_url, plane.pki)
            with api.session() as session:
                _post(session, api, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", build_crd())
                _post(
                    session,
                    api,
                    "/api/v1/namespaces",
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                )
                _wait_for_lanes_served(session, api)
            yield api, kubeconfig, meter
        finally:
            plane.down()


def _post(session: requests.Session, api: AdminApi, path: str, body: dict[str, Any]) -> None:
    response = session.post(api.url + path, json=body, timeout=30)
    if response.status_code not in (200, 201):
        raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:500]}")


def _wait_for_lanes_served(session: requests.Session, api: AdminApi, timeout_s: float = 30.0) -> None:
    """A new CRD is served once the API server has established it: a list of lanes then answers 200."""
    deadline = time.monotonic() + timeout_s
    while session.get(api.url + LANE_RESOURCE.collection_path(NAMESPACE), timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the VoiceLane resource was not served within {timeout_s:.0f} s")
        time.sleep(0.2)


async def create_lanes(api: AdminApi, names: list[str], concurrency: int) -> list[int]:
    """Create every lane, `concurrency` requests in flight; returns the HTTP statuses."""
    gate = asyncio.Semaphore(concurrency)
    path = LANE_RESOURCE.collection_path(NAMESPACE)

    async def one(session: aiohttp.ClientSession, name: str) -> int:
        async with gate, session.post(api.url + path, json=lane_manifest(name)) as response:
            await response.read()
            return response.status

    connector = aiohttp.TCPConnector(ssl=api.ssl_context())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300), connector=connector) as session:
        return list(await asyncio.gather(*(one(session, name) for name in names)))


@dataclass
class Snapshot:
    at_s: float
    children_complete: set[str]
    status_observed: set[str]
    ready: set[str]


def poll(session: requests.Session, api: AdminApi, expected: int, at_s: float) -> Snapshot:
    counts: dict[str, int] = {}
    for resource in CHILD_RESOURCES:
        listing = session.get(
            api.url + resource.collection_path(NAMESPACE), params={"labelSelector": LABEL_LANE}, timeout=60
        ).json()
        for item in listing.get("items") or []:
            owner = item["metadata"].get("labels", {}).get(LABEL_LANE)
            counts[owner] = counts.get(owner, 0) + 1
    lanes = session.get(api.url + LANE_RESOURCE.collection_path(NAMESPACE), timeout=60).json().get("items") or []
    observed, ready = set(), set()
    for lane in lanes:
        status = lane.get("status") or {}
        name = lane["metadata"]["name"]
        if status.get("observedGeneration") == lane["metadata"].get("generation"):
            observed.add(name)
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
            ready.add(name)
    complete = {name for name, count in counts.items() if count >= expected}
    return Snapshot(at_s, complete, observed, ready)


@dataclass
class Milestones:
    """When each lane first reached each milestone, and the time everything had."""

    first_seen: dict[str, dict[str, float]] = field(
        default_factory=lambda: {"children_complete": {}, "status_observed": {}, "ready": {}}
    )
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def record(self, snapshot: Snapshot) -> None:
        for milestone in self.first_seen:
            for name in getattr(snapshot, milestone):
                self.first_seen[milestone].setdefault(name, snapshot.at_s)
        self.timeline.append(
            {
                "at_s": round(snapshot.at_s, 3),
                "children_complete": len(snapshot.children_complete),
                "status_observed": len(snapshot.status_observed),
                "ready": len(snapshot.ready),
            }
        )

    def all_at(self, milestone: str, lanes: int) -> float | None:
        seen = self.first_seen[milestone]
        return round(max(seen.values()), 3) if len(seen) >= lanes else None


def _operator_run(ctx: SuiteContext, size: Size, expected: int) -> dict[str, Any]:
    names = [f"lane-{index:04d}" for index in range(size.lanes)]
    milestones = Milestones()
    with control_plane(ctx, "operator") as (api, kubeconfig, api_meter):
        metrics_port = free_port()
        argv = voicelane_argv(
            "operator",
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            NAMESPACE,
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
        )
        with running(
            argv,
            ready_url=f"http://127.0.0.1:{metrics_port}/readyz",
            log_dir=ctx.logs,
            name="operator",
            ready_timeout_s=120,
        ) as operator_process:
            operator = ProcessMeter(operator_process.pid)
            time.sleep(1.0)
            rss_idle = operator.rss_bytes()
            operator.reset_peak()
            with api.session() as session:
                requests_start = served_requests(session, api)
            cpu_start, api_cpu_start, parts_start = operator.cpu_s(), api_meter.cpu_s(), api_meter.cpu_by_part()
            started = time.monotonic()
            statuses = asyncio.run(create_lanes(api, names, CREATE_CONCURRENCY))
            applied_s = time.monotonic() - started
            ctx.say(f"{size.lanes} lanes created in {applied_s:.1f} s; waiting for children and statuses")
            converged = _wait(
                ctx, api, size, expected, started, milestones, ("children_complete", "status_observed"), operator
            )
            cpu_converged = operator.cpu_s() - cpu_start
            api_cpu_converged = api_meter.cpu_s() - api_cpu_start
            parts_converged = cpu_since(parts_start, api_meter.cpu_by_part())
            with api.session() as session:
                requests_converged = served_requests(session, api) - requests_start
            converged_at = time.monotonic()
            # The Deployment controller and KWOK roll every Deployment out meanwhile; wait for the rest.
            ready = converged and _wait(ctx, api, size, expected, started, milestones, ("ready",), operator)
            ready_after_converged = time.monotonic() - converged_at
            rss_peak = operator.peak_rss_bytes
            cpu_total = operator.cpu_s() - cpu_start
            parts_ready = cpu_since(parts_start, api_meter.cpu_by_part())
            with api.session() as session:
                requests_ready = served_requests(session, api) - requests_start
            ctx.say(f"measuring the settled operator for {size.steady_window_s:.0f} s (periodic resyncs)")
            steady_cpu, steady_api_cpu = operator.cpu_s(), api_meter.cpu_s()
            time.sleep(size.steady_window_s)
            steady = {
                "window_s": size.steady_window_s,
                "operator_cpu_s_per_s": round((operator.cpu_s() - steady_cpu) / size.steady_window_s, 4),
                "api_server_cpu_s_per_s": round((api_meter.cpu_s() - steady_api_cpu) / size.steady_window_s, 4),
                "operator_rss_bytes": operator.rss_bytes(),
            }
            rss_after = steady["operator_rss_bytes"]
            log_tail = _log_tail(operator_process)
    children_s = milestones.all_at("children_complete", size.lanes)
    status_s = milestones.all_at("status_observed", size.lanes)
    cores = os.cpu_count() or 1
    busy_until_ready = cpu_total + sum(parts_ready.values())
    return {
        "lanes": size.lanes,
        "create_statuses": _count(statuses),
        "created_in_s": round(applied_s, 3),
        "converged": converged,
        "all_children_exist_s": children_s,
        "all_statuses_written_s": status_s,
        "all_converged_s": None if children_s is None or status_s is None else max(children_s, status_s),
        "all_ready_s": milestones.all_at("ready", size.lanes),
        "all_ready_after_converged_s": round(ready_after_converged, 3) if ready else None,
        "per_lane_s": {milestone: summarize(seen.values()) for milestone, seen in milestones.first_seen.items()},
        "lanes_reaching": {milestone: len(seen) for milestone, seen in milestones.first_seen.items()},
        "operator_cpu_s": {
            "until_converged": round(cpu_converged, 3),
            "until_converged_per_lane": per_item(cpu_converged, size.lanes),
            "including_rollout": round(cpu_total, 3),
        },
        "operator_rss_bytes": {"idle": rss_idle, "peak": rss_peak, "after": rss_after},
        "api_server_cpu_s_until_converged": round(api_cpu_converged, 3),
        "control_plane_cpu_s": {"until_converged": parts_converged, "until_ready": parts_ready},
        # The operator's and the control plane's CPU seconds until every lane was Ready, spread over every
        # core of the machine: no run on this machine can be faster, however quiet it is.
        "cpu_bound_ready_s": {
            "cores": cores,
            "busy_cpu_s": round(busy_until_ready, 3),
            "seconds": round(busy_until_ready / cores, 3),
        }
        if ready
        else None,
        "api_requests": {
            "until_converged": request_summary(requests_converged),
            "until_ready": request_summary(requests_ready) if ready else None,
        },
        "settled": steady,
        "timeline": milestones.timeline,
        "operator_log_warnings": log_tail,
    }


def _wait(
    ctx: SuiteContext,
    api: AdminApi,
    size: Size,
    expected: int,
    started: float,
    milestones: Milestones,
    wanted: tuple[str, ...],
    operator: ProcessMeter,
) -> bool:
    deadline = started + size.timeout_s
    last_said = 0.0
    with api.session() as session:
        while True:
            now = time.monotonic()
            snapshot = poll(session, api, expected, now - started)
            operator.rss_bytes()
            milestones.record(snapshot)
            if all(len(getattr(snapshot, m)) >= size.lanes for m in wanted):
                return True
            if now > deadline:
                ctx.say(f"gave up after {size.timeout_s:.0f} s: {milestones.timeline[-1]}")
                return False
            if now - last_said > 15:
                last_said = now
                ctx.say(f"{milestones.timeline[-1]}")
            time.sleep(size.poll_interval_s)


def _log_tail(process: ManagedProcess) -> list[str]:
    lines = [line for line in process.log().splitlines() if "WARNING" in line or "ERROR" in line]
    return lines[-20:]


async def write_directly(api: AdminApi, names: list[str], concurrency: int) -> dict[str, int]:
    """Write each lane, its rendered children and its status: the objects the operator writes, no more."""
    gate = asyncio.Semaphore(concurrency)
    requests_made: dict[str, int] = {"lanes": 0, "children": 0, "statuses": 0, "failed": 0}

    async def lane_objects(session: aiohttp.ClientSession, name: str) -> None:
        async with gate:
            async with session.post(api.url + LANE_RESOURCE.collection_path(NAMESPACE), json=lane_manifest(name)) as r:
                lane = await r.json()
                requests_made["lanes"] += 1
                if r.status != 201:
                    requests_made["failed"] += 1
                    return
            children = []
            for child in render_children(lane):
                path = resource_of(child).collection_path(NAMESPACE)
                async with session.post(api.url + path, json=child) as r:
                    requests_made["children"] += 1
                    if r.status == 201:
                        children.append(await r.json())
                    else:
                        requests_made["failed"] += 1
            status_path = LANE_RESOURCE.object_path(NAMESPACE, name, "status")
            patch = {"status": lane_status(lane, children, [])}
            headers = {"Content-Type": "application/merge-patch+json"}
            async with session.patch(api.url + status_path, json=patch, headers=headers) as r:
                requests_made["statuses"] += 1
                if r.status != 200:
                    requests_made["failed"] += 1
                await r.read()

    connector = aiohttp.TCPConnector(ssl=api.ssl_context())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600), connector=connector) as session:
        await asyncio.gather(*(lane_objects(session, name) for name in names))
    return requests_made


def _reference_run(ctx: SuiteContext, size: Size, expected: int) -> dict[str, Any]:
    names = [f"lane-{index:04d}" for index in range(size.lanes)]
    with control_plane(ctx, "reference") as (api, _, api_meter):
        with api.session() as session:
            requests_start = served_requests(session, api)
        cpu_start = api_meter.cpu_s()
        started = time.monotonic()
        made = asyncio.run(write_directly(api, names, REFERENCE_CONCURRENCY))
        elapsed = time.monotonic() - started
        api_cpu = api_meter.cpu_s() - cpu_start
        with api.session() as session:
            served = request_summary(served_requests(session, api) - requests_start)
            check = poll(session, api, expected, elapsed)
    ctx.say(f"reference: {size.lanes} lanes with children and statuses written in {elapsed:.1f} s")
    return {
        "lanes": size.lanes,
        "requests": made,
        "all_written_s": round(elapsed, 3),
        "lanes_with_all_children": len(check.children_complete),
        "lanes_with_status": len(check.status_observed),
        "api_server_cpu_s": round(api_cpu, 3),
        # Writes the API server served meanwhile (controllers' included) and its CPU per write.
        "api_writes": served["writes"],
        "api_server_cpu_s_per_write": per_item(api_cpu, served["writes"]),
        "concurrency": REFERENCE_CONCURRENCY,
    }


def _count(statuses: list[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return counts


def run(ctx: SuiteContext) -> SuiteOutcome:
    size = SIZES[ctx.size]
    expected = expected_children()
    reference = _reference_run(ctx, size, expected)
    operator = _operator_run(ctx, size, expected)
    ratios = {
        "operator_vs_reference_all_converged": ratio(operator["all_converged_s"], reference["all_written_s"]),
        "operator_vs_reference_api_server_cpu": ratio(
            operator["api_server_cpu_s_until_converged"], reference["api_server_cpu_s"]
        ),
        "operator_cpu_vs_api_server_cpu": ratio(
            operator["operator_cpu_s"]["until_converged"], operator["api_server_cpu_s_until_converged"]
        ),
        "operator_rss_peak_vs_idle": ratio(
            operator["operator_rss_bytes"]["peak"], operator["operator_rss_bytes"]["idle"]
        ),
        "all_ready_vs_cpu_bound": ratio(operator["all_ready_s"], (operator["cpu_bound_ready_s"] or {}).get("seconds")),
    }
    settings = {
        "lanes": size.lanes,
        "children_per_lane": expected,
        "lane_spec": "the shipped sample (manifests/samples/voicelane.yaml)",
        "create_concurrency": CREATE_CONCURRENCY,
        "reference_concurrency": REFERENCE_CONCURRENCY,
        "poll_interval_s": size.poll_interval_s,
        "timeout_s": size.timeout_s,
        "operator": f"voicelane operator --kubeconfig PATH --namespace {NAMESPACE} --metrics-listen 127.0.0.1:PORT",
        "control_plane": f"voicelane cluster up --nodes {NODES.count} --node-cpu {NODES.cpu} "
        f"--node-memory {NODES.memory} --node-pods {NODES.pods} --node-ephemeral-storage {NODES.ephemeral_storage} "
        "(a fresh one per run, in a temporary folder)",
    }
    notes = [
        "Times are measured by polling the API every poll_interval_s (lists of the lanes and of each child kind), "
        "so they are accurate to about one interval; the polls load the API server a little.",
        "The control plane, the operator and the polling client share the machine's cores.",
        "Ready is simulated: KWOK marks the pods the Deployment controller makes Running and Ready, "
        "without containers; model storage is bound by the control plane's stand-in provisioner.",
    ]
    if not operator["converged"]:
        notes.append(f"The operator had not converged within {size.timeout_s:.0f} s; see lanes_reaching and timeline.")
    return SuiteOutcome(
        settings=settings, results={"operator": operator, "reference": reference}, ratios=ratios, notes=notes
    )
