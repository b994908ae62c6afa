"""Compute a VoiceLane's status from its spec and its live children.

Pure: `lane_status` reads the lane and the children as the API server last returned them and
says what `kubectl get vl` and `kubectl describe vl` should show: the generation it reflects,
each tier's ready and desired replicas, model and service endpoint, and the conditions Ready,
FastReady, DeepReady, Progressing and Degraded. A condition's lastTransitionTime is kept from the
previous status unless its True/False flips, so an unchanged lane yields an unchanged status.
Warnings about an accepted spec (render.tier_warnings) are reported in the Degraded condition.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from voicelane.operator.api import TIERS
from voicelane.operator.render import LABEL_TIER, service_endpoint

CONDITION_TYPES: tuple[str, ...] = ("Ready", "FastReady", "DeepReady", "Progressing", "Degraded")
# The status keys this module owns (those of api.VoiceLaneStatus); others are left alone.
STATUS_KEYS: tuple[str, ...] = ("observedGeneration", *TIERS, "conditions")

Body = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why the lane could not be reconciled as asked (InvalidSpec, ApplyFailed, ChildConflict)."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class TierState:
    ready_replicas: int
    replicas: int
    model: str
    endpoint: str
    ready: bool
    rolled_out: bool
    summary: str  # e.g. "1/1 replicas ready"

    def as_status(self) -> dict[str, Any]:
        return {
            "readyReplicas": self.ready_replicas,
            "replicas": self.replicas,
            "model": self.model,
            "endpoint": self.endpoint,
        }


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def lane_status(
    lane: Body,
    children_live: Iterable[Body],
    warnings: Sequence[str],
    *,
    problem: Problem | None = None,
    now: Callable[[], datetime.datetime] = utc_now,
) -> dict[str, Any]:
    children = list(children_live)
    generation = int((lane.get("metadata") or {}).get("generation") or 0)
    tiers = {tier: tier_state(lane, tier, children) for tier in TIERS}
    previous = {c.get("type"): c for c in ((lane.get("status") or {}).get("conditions") or [])}
    stamp = now().strftime("%Y-%m-%dT%H:%M:%SZ")

    def condition(kind: str, status: bool, reason: str, message: str) -> dict[str, Any]:
        value = "True" if status else "False"
        before = previous.get(kind) or {}
        since = before.get("lastTransitionTime") if before.get("status") == value else None
        return {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since or stamp,
            "observedGeneration": generation,
        }

    tier_conditions = [
        condition(
            f"{tier.capitalize()}Ready",
            state.ready,
            "ReplicasReady" if state.ready else "ReplicasNotReady",
            f"{state.summary} (model {state.model or 'unset'})",
        )
        for tier, state in tiers.items()
    ]
    all_ready = all(state.ready for state in tiers.values())
    waiting = [f"{tier}: {state.summary}" for tier, state in tiers.items() if not state.ready]
    rolling = [f"{tier}: {state.summary}" for tier, state in tiers.items() if not state.rolled_out]

    if problem is not None:
        ready = condition("Ready", False, problem.reason, problem.message)
        progressing = condition("Progressing", False, problem.reason, "reconciling is blocked until this is fixed")
        degraded = condition("Degraded", True, problem.reason, problem.message)
    else:
        ready = condition(
            "Ready",
            all_ready,
            "LaneReady" if all_ready else "TiersNotReady",
            "both tiers are ready" if all_ready else "; ".join(waiting),
        )
        progressing = condition(
            "Progressing",
            bool(rolling),
            "RollingOut" if rolling else "RolledOut",
            "; ".join(rolling) if rolling else "every tier runs the current spec",
        )
        degraded = condition(
            "Degraded",
            bool(warnings),
            "SpecWarnings" if warnings else "AsExpected",
            "; ".join(warnings) if warnings else "no problems found",
        )
    return {
        "observedGeneration": generation,
        **{tier: state.as_status() for tier, state in tiers.items()},
        "conditions": [ready, *tier_conditions, progressing, degraded],
    }


def tier_state(lane: Body, tier: str, children: Sequence[Body]) -> TierState:
    spec = ((lane.get("spec") or {}).get(tier)) or {}
    deployment = _child(children, "Deployment", tier)
    service = _child(children, "Service", tier)
    model = str(spec.get("model") or "")
    name = (lane.get("metadata") or {}).get("name") or ""
    namespace = (lane.get("metadata") or {}).get("namespace") or ""
    endpoint = service_endpoint(name, namespace, tier) if service is not None else ""  # type: ignore[arg-type]
    if deployment is None:
        replicas = int(spec.get("replicas") or 1)
        return TierState(0, replicas, model, endpoint, False, False, "no Deployment yet")
    desired = int((deployment.get("spec") or {}).get("replicas", 1))
    status = deployment.get("status") or {}
    ready_count = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    current = int(status.get("replicas") or 0)
    generation = (deployment.get("metadata") or {}).get("generation")
    observed = generation is None or int(status.get("observedGeneration") or 0) >= int(generation)
    ready = desired > 0 and ready_count >= desired
    rolled_out = observed and updated >= desired and current <= updated and ready_count >= desired
    if not observed and status:
        summary = f"{ready_count}/{desired} replicas ready, new spec not yet picked up"
    elif not rolled_out and ready:
        summary = f"{ready_count}/{desired} replicas ready, {updated}/{desired} updated"
    else:
        summary = f"{ready_count}/{desired} replicas ready"
    return TierState(ready_count, desired, model, endpoint, ready, rolled_out, summary)


def true_conditions(status: Body) -> frozenset[str]:
    return frozenset(str(c.get("type")) for c in (status.get("conditions") or []) if c.get("status") == "True")


def condition_of(status: Body, kind: str) -> Mapping[str, Any]:
    for entry in status.get("conditions") or []:
        if entry.get("type") == kind:
            return entry
    return {}


def owned_part(status: Body | None) -> dict[str, Any]:
    """The keys of a status this module computes (for comparing before writing)."""
    return {key: value for key, value in (status or {}).items() if key in STATUS_KEYS}


def _child(children: Sequence[Body], kind: str, tier: str) -> Body | None:
    for child in children:
        labels = (child.get("metadata") or {}).get("labels") or {}
        if child.get("kind") == kind and labels.get(LABEL_TIER) == tier:
            return child
    return None
