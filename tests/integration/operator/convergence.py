"""What "the lane converged" means, checked from the outside, for the operator's fault tests.

A lane has converged when its status reflects its current generation and its children, listed by
the lane label, are exactly what `voicelane render` gives for that generation: each desired child
once, no other, each controlled by this lane (one ownerReference, to its uid) and carrying the spec
hash of the current rendering. `problems` says what is still wrong; `wait_converged` waits until
nothing is. The fault proxy's request counts (`operator_writes`) let a test wait for the operator to
reach a given write before it strikes.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from tests.integration.operator.harness import CHILD_KINDS, LABEL_LANE, Cluster, Lane, condition
from voicelane.operator.render import ANNOTATION_SPEC_HASH, render_children

OPERATOR_AGENTS = frozenset({"kopf", "OpenAPI-Generator"})  # kopf itself; the kubernetes client for children
WRITE_VERBS = frozenset({"create", "patch", "update", "delete"})  # dry runs are counted as "dryrun-<verb>"
# A Degraded condition with one of these reasons reports a spec warning or nothing: not an error.
HARMLESS_DEGRADED_REASONS = frozenset({"AsExpected", "SpecWarnings"})

Body = dict[str, Any]


def problems(lane_object: Body | None, children: list[Body]) -> list[str]:
    """Everything that keeps a lane from having converged (empty: it has)."""
    if lane_object is None:
        return ["the lane does not exist"]
    found: list[str] = []
    metadata = lane_object["metadata"]
    generation = metadata.get("generation")
    observed = (lane_object.get("status") or {}).get("observedGeneration")
    if observed != generation:
        found.append(f"status.observedGeneration {observed} != generation {generation}")
    desired = {(c["kind"], c["metadata"]["name"]): c for c in render_children(lane_object)}
    counts = collections.Counter((c["kind"], c["metadata"]["name"]) for c in children)
    found += [f"{kind}/{name} listed {n} times" for (kind, name), n in sorted(counts.items()) if n > 1]
    found += [f"{kind}/{name} missing" for kind, name in sorted(desired.keys() - counts.keys())]
    found += [f"{kind}/{name} not wanted" for kind, name in sorted(counts.keys() - desired.keys())]
    for child in children:
        key = (child["kind"], child["metadata"]["name"])
        refs = [(ref.get("uid"), ref.get("controller")) for ref in child["metadata"].get("ownerReferences") or []]
        if refs != [(metadata["uid"], True)]:
            found.append(f"{key[0]}/{key[1]} ownerReferences {refs}")
        if key in desired:
            want = desired[key]["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
            have = (child["metadata"].get("annotations") or {}).get(ANNOTATION_SPEC_HASH)
            if have != want:
                found.append(f"{key[0]}/{key[1]} spec hash {have} != {want}")
    return found


def degraded_error(lane_object: Body) -> str | None:
    """The reason and message of a Degraded condition that reports an error, else None."""
    degraded = condition(lane_object, "Degraded")
    if degraded.get("status") == "True" and degraded.get("reason") not in HARMLESS_DEGRADED_REASONS:
        return f"{degraded.get('reason')}: {degraded.get('message')}"
    return None


def wait_converged(lane: Lane, timeout_s: float, *, context: str = "") -> Body:
    """The lane once it has converged; fails with what was still wrong after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        lane_object = lane.get()
        found = problems(lane_object, list(lane.children().values()))
        if not found:
            assert lane_object is not None
            return lane_object
        if time.monotonic() >= deadline:
            raise AssertionError(f"{lane.name} had not converged after {timeout_s:.0f} s {context}: {found}")
        time.sleep(0.2)


def children_by_lane(cluster: Cluster) -> dict[str, list[Body]]:
    """Every object carrying the lane label in the namespace, by the lane it names."""
    by_lane: dict[str, list[Body]] = collections.defaultdict(list)
    for child in cluster.select(CHILD_KINDS, LABEL_LANE):
        by_lane[child["metadata"]["labels"][LABEL_LANE]].append(child)
    return dict(by_lane)


def operator_writes(cluster: Cluster) -> int:
    """Writes the operator has made so far, lanes and children (Events aside), as the fault proxy counts them."""
    return sum(
        usage["count"]
        for usage in cluster.usage()
        if usage["agent"] in OPERATOR_AGENTS and usage["verb"] in WRITE_VERBS and usage["resource"] != "events"
    )
