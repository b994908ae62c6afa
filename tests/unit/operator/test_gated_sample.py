"""The gated sample lane (manifests/samples/voicelane-gated.yaml) as the operator renders it, and the
lane's NetworkPolicy with the gate on and off: it opens the port the tier Service targets (the gate's,
when gated) and no other.

The cluster test tests/integration/operator/test_gated_lane.py applies the same sample to a real API
server; these checks need no cluster.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.delivery.pod_security import violations
from tests.unit.operator.conftest import LANE_UID, REPO_ROOT, with_spec
from voicelane.operator.render import render_children

GATED_SAMPLE = REPO_ROOT / "manifests" / "samples" / "voicelane-gated.yaml"
TIERS = ("fast", "deep")


@pytest.fixture
def gated_sample() -> dict[str, Any]:
    [lane] = [doc for doc in yaml.safe_load_all(GATED_SAMPLE.read_text(encoding="utf-8")) if doc]
    lane["metadata"]["uid"] = LANE_UID
    return lane


def by_kind(children: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [child for child in children if child["kind"] == kind]


def exposed_ports(pod: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Every container port of a pod template, by name: (container, number)."""
    return {
        port["name"]: (container["name"], port["containerPort"])
        for container in pod["containers"]
        for port in container.get("ports", [])
    }


def test_the_gated_sample_turns_the_gate_on_for_both_tiers(gated_sample: dict[str, Any]) -> None:
    children = render_children(gated_sample)
    deployments = by_kind(children, "Deployment")
    assert len(deployments) == len(TIERS)
    for deployment in deployments:
        template = deployment["spec"]["template"]
        assert [c["name"] for c in template["spec"]["containers"]] == ["ollama", "gate", "warmer"]
        assert template["metadata"]["labels"]["voicelane.dev/gate"] == "true"


def test_every_pod_of_the_gated_sample_is_restricted_and_guaranteed(gated_sample: dict[str, Any]) -> None:
    for deployment in by_kind(render_children(gated_sample), "Deployment"):
        template = deployment["spec"]["template"]
        assert violations(template["metadata"], template["spec"]) == []
        for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            resources = container["resources"]
            assert resources["requests"] == resources["limits"], container["name"]
            assert {"cpu", "memory"} <= resources["limits"].keys(), container["name"]


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_the_network_policy_opens_the_port_the_service_targets_and_no_other(
    gated_sample: dict[str, Any], gated: bool
) -> None:
    lane = with_spec(gated_sample, gate={"enabled": gated})
    children = render_children(lane)
    [policy] = by_kind(children, "NetworkPolicy")
    rule, *scrape_rules = policy["spec"]["ingress"]
    opened = {(port["protocol"], port["port"]) for port in rule["ports"]}
    # The gate's metrics port alone is open to any source (a Prometheus in another namespace).
    scraped = {(port["protocol"], port["port"]) for scrape in scrape_rules for port in scrape["ports"]}
    assert all("from" not in scrape for scrape in scrape_rules)
    for tier in TIERS:
        [service] = [s for s in by_kind(children, "Service") if s["metadata"]["name"] == f"voice-gated-{tier}"]
        [deployment] = [d for d in by_kind(children, "Deployment") if d["metadata"]["name"] == f"voice-gated-{tier}"]
        [service_port] = service["spec"]["ports"]
        ports = exposed_ports(deployment["spec"]["template"]["spec"])
        owner, number = ports[service_port["targetPort"]]
        assert owner == ("gate" if gated else "ollama")
        # The port the Service reaches is open to the lane, and the pods expose no port the policy leaves closed.
        assert opened == {("TCP", number)}
        assert scraped == ({("TCP", ports["gate-metrics"][1])} if gated else set())
        assert {("TCP", n) for _, n in ports.values()} == opened | scraped
