"""The generated CRD: names, printer columns, status, and a schema the API server accepts."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.unit.operator.apiserver_checks import apply_defaults
from voicelane.operator.api import VoiceLaneSpec
from voicelane.operator.crd import SchemaConversionError, structural_schema

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path or "<root>", schema)]
    for name, sub in schema.get("properties", {}).items():
        nodes += walk(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += walk(schema["additionalProperties"], f"{path}[*]")
    if "items" in schema:
        nodes += walk(schema["items"], f"{path}[]")
    return nodes


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crd_validates_strictly(crd: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(crd, version, strict=True)


def test_names_scope_and_version(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == "voicelanes.voicelane.dev"
    spec = crd["spec"]
    assert spec["group"] == "voicelane.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "VoiceLane"
    assert spec["names"]["shortNames"] == ["vl"]
    assert spec["names"]["categories"] == ["voice"]
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_kubectl_get_shows_readiness_and_models(crd: dict[str, Any]) -> None:
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Fast model"]["jsonPath"] == ".spec.fast.model"
    assert columns["Deep model"]["jsonPath"] == ".spec.deep.model"
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def test_schema_is_structural(crd_schema: dict[str, Any]) -> None:
    for path, node in walk(crd_schema):
        assert "$ref" not in node, path
        assert "additionalProperties" not in node or "properties" not in node, path
        assert node.get("additionalProperties") is not False, path
        assert node.get("uniqueItems") is not True, path
        if node.get("x-kubernetes-int-or-string"):
            assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "anyOf" not in node, path
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        if isinstance(node.get("exclusiveMinimum"), bool):
            assert "minimum" in node, path


def test_free_form_only_where_kubernetes_types_pass_through(crd_schema: dict[str, Any]) -> None:
    free_form = {path for path, node in walk(crd_schema) if node.get("x-kubernetes-preserve-unknown-fields")}
    assert free_form == {
        ".spec.fast.affinity",
        ".spec.deep.affinity",
        ".spec.fast.env[].valueFrom",
        ".spec.deep.env[].valueFrom",
        ".spec.fast.topologySpreadConstraints[].labelSelector",
        ".spec.deep.topologySpreadConstraints[].labelSelector",
    }


def test_status_has_observed_generation_tiers_and_conditions(crd_schema: dict[str, Any]) -> None:
    status = crd_schema["properties"]["status"]["properties"]
    assert status["observedGeneration"]["type"] == "integer"
    for tier in ("fast", "deep"):
        assert set(status[tier]["properties"]) == {"readyReplicas", "replicas", "model", "endpoint"}
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert set(conditions["items"]["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def test_spec_carries_defaults_ranges_and_descriptions(crd_schema: dict[str, Any]) -> None:
    spec = crd_schema["properties"]["spec"]
    tier = spec["properties"]["fast"]["properties"]
    assert spec["required"] == ["fast", "deep"]
    assert tier["image"]["default"].startswith("ollama/ollama:0.")
    assert (tier["keepAliveSeconds"]["type"], tier["keepAliveSeconds"]["default"]) == ("integer", 900)
    assert (tier["keepAliveSeconds"]["minimum"], tier["keepAliveSeconds"]["maximum"]) == (-1, 31_536_000)
    assert (tier["rewarmIntervalSeconds"]["type"], tier["rewarmIntervalSeconds"]["default"]) == ("integer", 1800)
    assert (tier["rewarmIntervalSeconds"]["minimum"], tier["rewarmIntervalSeconds"]["maximum"]) == (60, 86400)
    assert not {"keepAlive", "rewarmInterval"} & set(tier)  # one duration style: seconds, as periodSeconds
    assert "default" not in tier["replicas"]  # unset: the scale is left to others
    guardian = spec["properties"]["policy"]["properties"]["guardian"]["properties"]
    assert (guardian["cpuThresholdPercent"]["minimum"], guardian["cpuThresholdPercent"]["maximum"]) == (
        1,
        100,
    )
    targets = spec["properties"]["policy"]["properties"]["ttfa"]["properties"]["targets"]["properties"]
    assert {name: node["default"] for name, node in targets.items()} == {
        "chat": 3.0,
        "notification": 2.5,
        "emailTldr": 3.5,
    }
    routing = spec["properties"]["routing"]["properties"]
    assert routing["fastMaxChars"]["default"] == 130
    rate = spec["properties"]["policy"]["properties"]["rateLimit"]["properties"]["sustainedPerSecond"]
    assert (rate["minimum"], rate["exclusiveMinimum"]) == (0, True)
    assert tier["model"]["description"]


def test_crd_defaults_agree_with_the_python_defaults(crd_schema: dict[str, Any], minimal_lane: dict) -> None:
    # What the API server stores for a minimal lane parses to the same spec as the lane itself.
    defaulted = apply_defaults(crd_schema, minimal_lane)
    assert defaulted["spec"]["policy"]["rateLimit"] == {"burst": 8, "sustainedPerSecond": 4.0}
    assert VoiceLaneSpec.model_validate(defaulted["spec"]) == VoiceLaneSpec.model_validate(minimal_lane["spec"])


def test_collections_are_left_to_the_sidecar_defaults(crd_schema: dict[str, Any]) -> None:
    # A default copied into every stored lane would freeze the built-in patterns and phrases there.
    spec = crd_schema["properties"]["spec"]["properties"]
    assert "default" not in spec["routing"]["properties"]["complexPatterns"]
    assert "default" not in spec["policy"]["properties"]["phraseBank"]["properties"]["phrases"]


def test_conversion_refuses_what_it_cannot_express() -> None:
    from pydantic import BaseModel

    class Either(BaseModel):
        value: int | str

    with pytest.raises(SchemaConversionError, match="anyOf"):
        structural_schema(Either)
