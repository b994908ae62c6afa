"""The operator's ClusterRole in the chart and install.yaml grants exactly what operator/rbac.py documents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.delivery.support import RELEASE, REPO, Render
from voicelane.delivery import RBAC_RULES_FILE, rbac_rules_yaml
from voicelane.operator.rbac import RULES

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)
# Never needed by the operator, and each a way to more privilege than the role states.
DANGEROUS_RESOURCES = frozenset({"secrets", "pods/exec", "pods/attach", "serviceaccounts/token", "nodes/proxy"})
DANGEROUS_VERBS = frozenset({"escalate", "bind", "impersonate", "*"})


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def documented_grants() -> set[Grant]:
    return {(rule.api_group, resource, verb) for rule in RULES for resource in rule.resources for verb in rule.verbs}


def cluster_roles(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] in ("ClusterRole", "Role")]


def operator_roles(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The role of operator/rbac.py; the webhook's certificate roles (one object each) are apart."""
    return [doc for doc in cluster_roles(documents) if doc["metadata"]["name"].endswith("-operator")]


def install_documents() -> list[dict[str, Any]]:
    text = (REPO / "manifests" / "install.yaml").read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_the_chart_carries_the_rules_of_operator_rbac_py() -> None:
    assert (REPO / RBAC_RULES_FILE).read_text(encoding="utf-8") == rbac_rules_yaml(), (
        f"{RBAC_RULES_FILE} is stale: run `python -P -m voicelane.delivery --write`"
    )


@pytest.mark.tools
@pytest.mark.parametrize("name", ["defaults", "all-features"])
def test_the_rendered_role_grants_exactly_the_documented_usage(rendered: Callable[[str], Render], name: str) -> None:
    [role] = operator_roles(rendered(name).documents)
    granted = grants(role["rules"])
    print("\n".join(f"{group or 'core'}/{resource}: {verb}" for group, resource, verb in sorted(granted)))
    assert granted - documented_grants() == set(), "granted but not documented in operator/rbac.py"
    assert documented_grants() - granted == set(), "documented in operator/rbac.py but not granted"


def test_the_install_manifest_role_grants_exactly_the_documented_usage() -> None:
    [role] = operator_roles(install_documents())
    assert grants(role["rules"]) == documented_grants()


@pytest.mark.tools
@pytest.mark.parametrize("source", ["chart", "install.yaml"])
def test_no_wildcard_and_no_privilege_escalation_path(rendered: Callable[[str], Render], source: str) -> None:
    documents = rendered("all-features").documents if source == "chart" else install_documents()
    for role in cluster_roles(documents):
        for rule in role["rules"]:
            fields = [*rule.get("apiGroups", []), *rule.get("resources", []), *rule.get("verbs", [])]
            assert not [field for field in fields if "*" in field], f"wildcard in {rule}"
            assert not rule.get("nonResourceURLs"), f"non-resource URLs granted: {rule}"
        # The webhook's own Secret, by name, is the one exception: the operator keeps its certificate there.
        unnamed = [rule for rule in role["rules"] if not rule.get("resourceNames")]
        granted = grants(unnamed)
        assert {resource for _, resource, _ in granted} & DANGEROUS_RESOURCES == set()
        for rule in role["rules"]:
            if "secrets" in rule.get("resources", []):
                assert rule["resourceNames"] == [f"{RELEASE}-webhook-ca"], rule
                assert set(rule["verbs"]) <= {"get", "update"}, rule
        granted = grants(role["rules"])
        assert {verb for _, _, verb in granted} & DANGEROUS_VERBS == set()


@pytest.mark.tools
def test_the_role_is_bound_to_the_operator_service_account_only(rendered: Callable[[str], Render]) -> None:
    documents = rendered("defaults")
    role = documents.one("ClusterRole")
    binding = documents.one("ClusterRoleBinding")
    deployment = documents.one("Deployment")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": deployment["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": deployment["metadata"]["namespace"],
        }
    ]
    # The chart's other pod (the helm test) gets no token at all.
    assert documents.one("Pod")["spec"]["automountServiceAccountToken"] is False
