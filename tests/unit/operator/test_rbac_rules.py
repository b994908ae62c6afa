"""The operator's RBAC: least privilege, no wildcard, and the manifest generated from the rules."""

from __future__ import annotations

from pathlib import Path

from voicelane.operator.apply import CHILD_RESOURCES
from voicelane.operator.rbac import RULES, render_yaml

ROLE_YAML = Path(__file__).resolve().parents[3] / "manifests" / "rbac" / "role.yaml"


def test_the_role_manifest_is_generated_from_the_rules() -> None:
    assert ROLE_YAML.read_text(encoding="utf-8") == render_yaml(), (
        "manifests/rbac/role.yaml is stale: run `python -P -m voicelane.operator.rbac manifests/rbac/role.yaml`"
    )


def test_no_rule_uses_a_wildcard_or_grants_secrets() -> None:
    for rule in RULES:
        assert "*" not in (rule.api_group, *rule.resources, *rule.verbs)
        assert "secrets" not in rule.resources


def test_every_child_kind_and_the_lane_status_are_covered() -> None:
    granted = {(rule.api_group, resource) for rule in RULES for resource in rule.resources}

    assert {(resource.group, resource.plural) for resource in CHILD_RESOURCES} <= granted
    assert ("voicelane.dev", "voicelanes/status") in granted
    assert ("", "events") in granted
