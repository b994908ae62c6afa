"""An operator killed at any point of a reconcile converges after its restart, every time.

Ten runs, planned by a seeded random generator: VOICELANE_TEST_SEED replaces the seed, and a
failure names the seed and the run's plan, so it can be replayed. Each run has a lane of its own
and kills the operator (SIGKILL) in one of two ways:

- one request of the reconcile is stalled by the fault proxy (`delay_s`), and the kill lands while
  the operator waits for it: kopf's finalizer patch, a child's create, patch or delete, the status write
  (a stalled write whose client is gone is never forwarded, so the work is really half done);
- after a random number of the operator's writes, counted by the fault proxy, whatever it is doing then.

The reconcile killed is the lane's first (which creates its children) or one after a spec change
(which patches, creates and deletes children). In some runs the spec changes again while no
operator runs. After each restart the lane must converge (convergence.py: every desired child
once, owned by the lane, with the current spec hash; status for the current generation) and turn
Ready once its Deployments roll out. At the end every lane of every run is checked again.

One more test kills the operator while it releases a deleted lane (its finalizer).

Kill points are chosen through the fault proxy's stalls and request counts, which work the same on
a user's cluster.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.operator.convergence import operator_writes, problems, wait_converged
from tests.integration.operator.harness import Cluster, Lane, OperatorProcess, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(180)]

SEED = int(os.environ.get("VOICELANE_TEST_SEED", "7"))
RUNS = 10
STALL_S = 5.0  # far longer than the kill takes to land
FIRST_WRITES = 12  # about what a first reconcile writes: kopf's finalizer and progress, 8 children, status
UPDATE_WRITES = 6  # after UPDATE: kopf's progress, the 5 child writes below, status

# A first reconcile: (verb, resource, subresource, name suffix of the object, or None for any). Children
# are written by server-side apply, so creating one is a patch as well.
FIRST_STALLS: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("patch", "voicelanes", "", ""),  # kopf's first patch of a new lane (not its status): its finalizer
    ("patch", "configmaps", None, None),
    ("patch", "networkpolicies", None, None),
    ("patch", "persistentvolumeclaims", None, None),
    ("patch", "services", None, None),
    ("patch", "deployments", None, None),
    ("patch", "poddisruptionbudgets", None, None),
    ("patch", "voicelanes", "status", ""),
)
# Patches the ConfigMap and the fast Deployment, creates the fast PDB (an apply patch), patches the deep
# Deployment and deletes the deep PDB.
UPDATE: dict[str, Any] = {"fast": {"model": "qwen2.5:1.5b", "replicas": 2}, "deep": {"replicas": 1}}
UPDATE_STALLS: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("patch", "configmaps", None, "-sidecar"),
    ("patch", "deployments", None, "-fast"),
    ("patch", "poddisruptionbudgets", None, None),
    ("delete", "poddisruptionbudgets", None, "-deep"),
    ("patch", "voicelanes", "status", ""),
)
CHANGES_WHILE_DOWN: tuple[dict[str, Any], ...] = (
    {"deep": {"model": "qwen2.5:3b"}},
    {"routing": {"fastMaxChars": 200}},
    {"fast": {"replicas": 3}},
    {"deep": {"replicas": 3, "keepAliveSeconds": 1800}},
)


@dataclasses.dataclass(frozen=True)
class KillPlan:
    run: int
    update: bool  # kill in the reconcile of a spec change, not the lane's first
    stall: tuple[str, str, str | None, str | None] | None  # kill while this request is stalled
    after_writes: int  # else: kill once the operator has written this many times more
    change_while_down: dict[str, Any] | None

    def __str__(self) -> str:
        where = f"stalled {' '.join(p for p in self.stall[:3] if p)}" if self.stall else f"{self.after_writes} writes"
        phase = "update" if self.update else "first"
        return f"seed {SEED} run {self.run}: {phase} reconcile, kill at {where}, change while down {self.change_while_down}"


def kill_plans(rng: random.Random) -> list[KillPlan]:
    plans = []
    for run in range(RUNS):
        update = rng.random() < 0.4
        stalls = UPDATE_STALLS if update else FIRST_STALLS
        stall = rng.choice(stalls) if rng.random() < 0.5 else None
        after_writes = rng.randrange(UPDATE_WRITES if update else FIRST_WRITES)
        change = rng.choice(CHANGES_WHILE_DOWN) if rng.random() < 0.4 else None
        plans.append(KillPlan(run, update, stall, after_writes, change))
    return plans


def test_the_plans_cover_both_ways_of_killing_both_reconciles_and_changes_while_down() -> None:
    plans = kill_plans(random.Random(SEED))
    assert len(plans) == RUNS
    assert {plan.update for plan in plans} == {True, False}
    assert {plan.stall is None for plan in plans} == {True, False}
    assert any(plan.change_while_down for plan in plans)
    assert any(not plan.change_while_down for plan in plans)


@pytest.fixture
def lanes(cluster: Cluster, operator: OperatorProcess) -> Iterator[list[Lane]]:
    made: list[Lane] = []
    try:
        yield made
    finally:
        cluster.clear_faults()
        if not operator.alive():
            operator.start()
        for lane in made:
            cluster.delete("voicelane", lane.name)


def test_an_operator_killed_anywhere_in_a_reconcile_converges_after_restart(
    cluster: Cluster, operator: OperatorProcess, lanes: list[Lane]
) -> None:
    interrupted = []
    for plan in kill_plans(random.Random(SEED)):
        lane = Lane(cluster, f"kill-{plan.run}-{secrets.token_hex(2)}")
        lanes.append(lane)
        left_undone, killed_at = kill_and_restart(cluster, operator, lane, plan)
        if left_undone:
            interrupted.append(plan.run)

        lane_object = wait_converged(lane, cluster.change_timeout_s, context=f"after the restart ({plan})")
        cluster.roll_out()
        wait_until(functools.partial(lane.having, "Ready"), cluster.ready_timeout_s, what=f"Ready ({plan})")
        undone = "work left undone" if left_undone else "nothing left to do"
        print(f"\n{plan}: {undone}; converged and Ready {time.monotonic() - killed_at:.1f} s after the kill")
        if plan.change_while_down:
            assert lane_object["metadata"]["generation"] == (3 if plan.update else 2), plan

    for lane in lanes:  # later kills and restarts disturbed no earlier lane
        wait_converged(lane, cluster.change_timeout_s, context="after all ten runs")
        assert lane.having("Ready"), lane.name
    # Otherwise the kills came too late to test anything: the lanes had converged already.
    assert len(interrupted) >= RUNS // 2, f"only runs {interrupted} (seed {SEED}) killed a reconcile with work left"


def test_an_operator_killed_while_it_releases_a_deleted_lane_releases_it_after_restart(
    cluster: Cluster, operator: OperatorProcess, lanes: list[Lane]
) -> None:
    lane = Lane(cluster, f"kill-deleted-{secrets.token_hex(2)}")
    lanes.append(lane)
    lane.create()
    wait_converged(lane, cluster.change_timeout_s, context="before the delete")
    # The operator's first patch of a lane being deleted: kopf's release of its finalizer.
    cluster.inject_fault(verb="patch", resource="voicelanes", subresource="", name=lane.name, delay_s=STALL_S, times=1)

    cluster.delete("voicelane", lane.name, wait=False)
    wait_until(lambda: cluster.fault_hits() >= 1, cluster.change_timeout_s, what="the stalled patch of the lane")
    operator.kill()
    cluster.clear_faults()
    assert lane.get() is not None, "the lane went although its finalizer was not released"

    operator.start()

    wait_until(lambda: lane.get() is None, cluster.change_timeout_s, what="the lane released after the restart")
    wait_until(lambda: not lane.children(), cluster.change_timeout_s, what="its children collected")


def kill_and_restart(cluster: Cluster, operator: OperatorProcess, lane: Lane, plan: KillPlan) -> tuple[bool, float]:
    """Kill the operator where the plan says and start it again: whether the kill left work undone, and when."""
    if plan.update:
        lane.create()
        wait_converged(lane, cluster.change_timeout_s, context=f"before the update ({plan})")
    if plan.stall is not None:
        verb, resource, subresource, suffix = plan.stall
        name = None if suffix is None else lane.name + suffix
        cluster.inject_fault(verb=verb, resource=resource, subresource=subresource, name=name, delay_s=STALL_S, times=1)
    writes = operator_writes(cluster)

    if plan.update:
        cluster.patch("voicelane", lane.name, {"spec": UPDATE})
    else:
        lane.create()

    if plan.stall is not None:
        wait_until(lambda: cluster.fault_hits() >= 1, cluster.change_timeout_s, what=f"the stalled request ({plan})")
    else:
        wait_for_writes(cluster, writes + plan.after_writes)
    operator.kill()
    killed_at = time.monotonic()
    cluster.clear_faults()
    interrupted = bool(problems(lane.get(), list(lane.children().values())))

    if plan.change_while_down:
        cluster.patch("voicelane", lane.name, {"spec": plan.change_while_down})
    operator.start()
    return interrupted, killed_at


def wait_for_writes(cluster: Cluster, target: int, timeout_s: float = 5.0) -> None:
    """Return once the operator has made `target` writes, or after `timeout_s` if its reconcile ended first."""
    deadline = time.monotonic() + timeout_s
    while operator_writes(cluster) < target and time.monotonic() < deadline:
        time.sleep(0.002)
