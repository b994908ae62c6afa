"""A hundred lanes created and deleted in a burst leave nothing behind and no lane in error.

All lanes go in with one `kubectl apply` of one multi-document file and go out with one
`kubectl delete` of it. While they exist, every child carries an ownerReference to a lane that
exists; once the operator has settled, every lane has converged (convergence.py) and none reports
an error in its Degraded condition; the operator recorded no failed reconcile and its memory stayed
under OPERATOR_RSS_BOUND. Once they are deleted, garbage collection leaves no child. A second
burst deletes the lanes while their first reconciles still run: still nothing is left.

On the local control plane the lanes are the sample's (KWOK's simulated node takes their pods). On a
user's cluster the same tests run with lanes that ask for no pods and no volumes (replicas 0, no
model storage): a hundred real model servers would ask for hundreds of CPUs.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.integration.operator.convergence import children_by_lane, degraded_error, problems
from tests.integration.operator.harness import Cluster, Lane, OperatorProcess
from tests.support.kube import KubeTarget

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(300)]

LANES = 100
# The documented bound on the operator's resident memory while it serves a hundred lanes (see
# RELIABILITY.md, "Operator under faults"), with room below the chart's default limit (256 MiB).
OPERATOR_RSS_BOUND = 192 * 2**20
ERRORS = "voicelane_operator_reconcile_errors_total"

Body = dict[str, Any]


class Burst:
    """A hundred lanes of one test, applied and deleted through one manifest file."""

    def __init__(self, cluster: Cluster, operator: OperatorProcess, directory: Path, *, simulated: bool) -> None:
        self.cluster = cluster
        self.cluster_simulated = simulated
        self.operator = operator
        tag = secrets.token_hex(2)
        self.names = [f"burst-{tag}-{i:03d}" for i in range(LANES)]
        self.path = directory / "lanes.yaml"
        self.path.write_text(yaml.safe_dump_all([self._manifest(name) for name in self.names]), encoding="utf-8")
        self.peak_rss = 0
        self.seen_unowned: set[str] = set()  # children ever listed without an ownerReference

    def _manifest(self, name: str) -> Body:
        manifest = Lane(self.cluster, name).manifest()
        if not self.cluster_simulated:
            for tier in ("fast", "deep"):
                manifest["spec"][tier]["replicas"] = 0
                manifest["spec"][tier].pop("storage", None)
        return manifest

    def apply(self) -> None:
        self.cluster.kubectl("apply", "-f", str(self.path))

    def delete(self) -> None:
        self.cluster.kubectl("delete", "-f", str(self.path), "--wait=false", "--ignore-not-found")

    def lanes(self) -> dict[str, Body]:
        listed = json.loads(self.cluster.kubectl("get", "voicelanes", "-o", "json").stdout)["items"]
        mine = set(self.names)
        return {item["metadata"]["name"]: item for item in listed if item["metadata"]["name"] in mine}

    def children(self) -> dict[str, list[Body]]:
        mine = set(self.names)
        found = {lane: found for lane, found in children_by_lane(self.cluster).items() if lane in mine}
        self.seen_unowned |= {
            f"{child['kind']}/{child['metadata']['name']}"
            for children in found.values()
            for child in children
            if not child["metadata"].get("ownerReferences")
        }
        return found

    def sample_rss(self) -> None:
        assert self.operator.process is not None
        self.peak_rss = max(self.peak_rss, psutil.Process(self.operator.process.pid).memory_info().rss)

    def wait(self, what: str, still_wrong: Any, timeout_s: float) -> None:
        """Poll `still_wrong()` (a list of problems) until it is empty; fail with the last ones."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.sample_rss()
            found = still_wrong()
            if not found:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"gave up after {timeout_s:.0f} s waiting for {what}: {found[:10]} (of {len(found)})"
                )
            time.sleep(1.0)

    def orphans(self, lanes: dict[str, Body], children: dict[str, list[Body]]) -> list[str]:
        """Children without an ownerReference, or whose owner is not one of the lanes that exist."""
        uids = {lane["metadata"]["uid"] for lane in lanes.values()}
        return [
            f"{child['kind']}/{child['metadata']['name']} owned by {refs or 'nobody'}"
            for found in children.values()
            for child in found
            if not (refs := [ref.get("uid") for ref in child["metadata"].get("ownerReferences") or []])
            or not set(refs) <= uids
        ]

    def unsettled(self) -> list[str]:
        lanes, children = self.lanes(), self.children()
        found = [f"{name} missing" for name in self.names if name not in lanes]
        for name, lane in lanes.items():
            found += [f"{name}: {problem}" for problem in problems(lane, children.get(name, []))]
        return found + self.orphans(lanes, children)

    def left_behind(self) -> list[str]:
        lanes, children = self.lanes(), self.children()
        return [f"lane {name}" for name in lanes] + [
            f"{c['kind']}/{c['metadata']['name']}" for found in children.values() for c in found
        ]


@pytest.fixture
def burst(cluster: Cluster, operator: OperatorProcess, kube: KubeTarget, tmp_path: Path) -> Iterator[Burst]:
    subject = Burst(cluster, operator, tmp_path, simulated=kube.simulated_nodes)
    try:
        yield subject
    finally:
        subject.delete()
        subject.wait("every lane and child to be gone", subject.left_behind, 600.0)


def settle_timeout(burst: Burst) -> float:
    return 300.0 if burst.cluster_simulated else 600.0


def test_a_hundred_lanes_created_then_deleted_in_a_burst_converge_and_leave_nothing(
    cluster: Cluster, operator: OperatorProcess, burst: Burst
) -> None:
    errors = operator.metric(ERRORS)

    started = time.monotonic()
    burst.apply()

    burst.wait("a hundred converged lanes", burst.unsettled, settle_timeout(burst))
    converged_s = time.monotonic() - started
    lanes, children = burst.lanes(), burst.children()
    assert burst.orphans(lanes, children) == []
    assert {name: error for name, lane in lanes.items() if (error := degraded_error(lane))} == {}
    assert operator.metric(ERRORS) == errors, "a reconcile failed although the API never did"
    burst.sample_rss()
    assert burst.peak_rss < OPERATOR_RSS_BOUND, f"operator RSS peaked at {burst.peak_rss / 2**20:.0f} MiB"
    assert operator.alive()

    started = time.monotonic()
    burst.delete()

    burst.wait("every lane and child to be gone", burst.left_behind, settle_timeout(burst))
    assert burst.seen_unowned == set()
    assert operator.metric(ERRORS) == errors
    assert operator.alive()
    print(
        f"\n{LANES} lanes, {sum(len(found) for found in children.values())} children: converged within "
        f"{converged_s:.1f} s, gone within {time.monotonic() - started:.1f} s of the delete; "
        f"operator RSS peak {burst.peak_rss / 2**20:.0f} MiB (bound {OPERATOR_RSS_BOUND / 2**20:.0f} MiB)"
    )


def test_lanes_deleted_while_their_first_reconciles_run_leave_nothing(
    cluster: Cluster, operator: OperatorProcess, burst: Burst
) -> None:
    errors = operator.metric(ERRORS)

    burst.apply()
    burst.delete()

    burst.wait("every lane and child to be gone", burst.left_behind, settle_timeout(burst))
    assert burst.seen_unowned == set()
    assert operator.alive()
    assert operator.metric(ERRORS) == errors
    burst.sample_rss()
    assert burst.peak_rss < OPERATOR_RSS_BOUND, f"operator RSS peaked at {burst.peak_rss / 2**20:.0f} MiB"
