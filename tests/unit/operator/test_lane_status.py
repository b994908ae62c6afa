"""A lane's status from its spec and children: replicas, endpoints and conditions with stable times."""

from __future__ import annotations

import datetime
from typing import Any

from voicelane.operator.api import VoiceLaneStatus
from voicelane.operator.status import Problem, condition_of, lane_status

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def lane(generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "lane", "namespace": "voice", "generation": generation},
        "spec": {"fast": {"model": "llama3.2:1b"}, "deep": {"model": "llama3.1:8b", "replicas": 2}},
        "status": status or {},
    }


def deployment(tier: str, replicas: int, ready: int, *, generation: int = 1, observed: int = 1) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": f"lane-{tier}", "generation": generation, "labels": {"voicelane.dev/tier": tier}},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
        },
    }


def service(tier: str, port: int) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": f"lane-{tier}", "namespace": "voice", "labels": {"voicelane.dev/tier": tier}},
        "spec": {"ports": [{"port": port}]},
    }


READY_CHILDREN = [deployment("fast", 1, 1), service("fast", 11435), deployment("deep", 2, 2), service("deep", 11434)]


def flags(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_a_lane_without_children_is_not_ready_and_says_why() -> None:
    status = lane_status(lane(), [], [], now=lambda: T0)

    assert flags(status) == {
        "Ready": "False",
        "FastReady": "False",
        "DeepReady": "False",
        "Progressing": "True",
        "Degraded": "False",
    }
    assert "no Deployment yet" in condition_of(status, "FastReady")["message"]
    assert status["fast"] == {"readyReplicas": 0, "replicas": 1, "model": "llama3.2:1b", "endpoint": ""}


def test_both_tiers_ready_make_the_lane_ready_with_endpoints() -> None:
    status = lane_status(lane(), READY_CHILDREN, [], now=lambda: T0)

    assert flags(status) == {
        "Ready": "True",
        "FastReady": "True",
        "DeepReady": "True",
        "Progressing": "False",
        "Degraded": "False",
    }
    assert status["observedGeneration"] == 1
    assert status["deep"] == {
        "readyReplicas": 2,
        "replicas": 2,
        "model": "llama3.1:8b",
        "endpoint": "http://lane-deep.voice.svc:11434",
    }


def test_a_rollout_in_progress_is_progressing_while_old_pods_keep_the_lane_ready() -> None:
    rolling = deployment("fast", 1, 1, generation=2, observed=1)
    status = lane_status(lane(2), [rolling, *READY_CHILDREN[1:]], [], now=lambda: T0)

    assert flags(status)["Progressing"] == "True"
    assert flags(status)["Ready"] == "True"
    assert "new spec not yet picked up" in condition_of(status, "Progressing")["message"]


def test_an_invalid_spec_is_not_ready_and_degraded_with_the_reason() -> None:
    problem = Problem("InvalidSpec", "spec.policy.rateLimit: burst must be >= sustained_per_s")
    status = lane_status(lane(), READY_CHILDREN, [], problem=problem, now=lambda: T0)

    for kind in ("Ready", "Degraded"):
        assert condition_of(status, kind)["reason"] == "InvalidSpec"
        assert "burst" in condition_of(status, kind)["message"]
    assert flags(status)["Ready"] == "False"
    assert flags(status)["Degraded"] == "True"


def test_warnings_about_an_accepted_spec_show_as_degraded() -> None:
    status = lane_status(lane(), READY_CHILDREN, ["spec.fast.resources.cpu is 1.5"], now=lambda: T0)

    degraded = condition_of(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "SpecWarnings")
    assert "1.5" in degraded["message"]
    assert flags(status)["Ready"] == "True"


def test_transition_times_move_only_when_a_condition_flips() -> None:
    first = lane_status(lane(), [], [], now=lambda: T0)
    second = lane_status(lane(status=first), READY_CHILDREN, [], now=lambda: T1)
    third = lane_status(lane(status=second), READY_CHILDREN, [], now=lambda: T1 + T1.resolution)

    assert condition_of(second, "Ready")["lastTransitionTime"] == "2025-01-01T00:05:00Z"
    assert condition_of(second, "Degraded")["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    assert third == second, "an unchanged lane must yield an unchanged status (no needless writes)"


def test_the_status_fits_the_crd_status_schema() -> None:
    for status in (
        lane_status(lane(), READY_CHILDREN, ["a warning"], now=lambda: T0),
        lane_status(lane(), [], [], problem=Problem("ApplyFailed", "create Service/x: forbidden"), now=lambda: T0),
    ):
        VoiceLaneStatus.model_validate(status)
