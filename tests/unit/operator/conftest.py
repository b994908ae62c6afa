"""Lanes and the CRD schema shared by the operator's unit tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from voicelane.operator.crd import build_crd

REPO_ROOT = Path(__file__).resolve().parents[3]
SAMPLE_PATH = REPO_ROOT / "manifests" / "samples" / "voicelane.yaml"
INVALID_SAMPLES = sorted((Path(__file__).parent / "samples-invalid").glob("*.yaml"))
LANE_UID = "6f1c2a4e-9a0b-4c55-8a77-0d2c1e5b3f10"

MINIMAL_LANE: dict[str, Any] = {
    "apiVersion": "voicelane.dev/v1alpha1",
    "kind": "VoiceLane",
    "metadata": {"name": "lane", "namespace": "voice", "uid": LANE_UID, "generation": 1},
    "spec": {
        "fast": {"model": "llama3.2:1b", "resources": {"cpu": 1, "memory": "2Gi"}},
        "deep": {"model": "llama3.1:8b", "resources": {"cpu": "3", "memory": "10Gi"}},
    },
}


def with_spec(lane: dict[str, Any], **tiers_and_sections: Any) -> dict[str, Any]:
    """A copy of `lane` whose spec sections are updated (one level deep per tier/section)."""
    changed = copy.deepcopy(lane)
    for key, value in tiers_and_sections.items():
        current = changed["spec"].get(key)
        changed["spec"][key] = {**current, **value} if isinstance(current, dict) else value
    return changed


@pytest.fixture
def sample_lane() -> dict[str, Any]:
    lane = yaml.safe_load(SAMPLE_PATH.read_text(encoding="utf-8"))
    lane["metadata"]["uid"] = LANE_UID
    return lane


@pytest.fixture
def minimal_lane() -> dict[str, Any]:
    return copy.deepcopy(MINIMAL_LANE)


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    return build_crd()


@pytest.fixture(scope="session")
def crd_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema
