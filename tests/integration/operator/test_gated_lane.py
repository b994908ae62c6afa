"""The sample lane with the model-side gate on, applied with kubectl, as a user would check it.

manifests/samples/voicelane-gated.yaml is applied under a name of the test's own while the operator
runs. Every tier pod gets the gate as a second container with its requests equal to its limits (the
API server files the pod as Guaranteed), Ollama listens on 127.0.0.1 inside the pod, the tier
Services reach the pods on the gate's named port (their EndpointSlices resolve it to the gate's
container port), the pods carry voicelane.dev/gate=true, and the lane becomes Ready. The lane's
NetworkPolicy selects exactly these pods and opens the gate's port to the lane's app pods and the
operator alone: its selectors are evaluated by the API server against real pods, an app pod of the
lane and a stranger. Turning the gate off on the live lane rolls the pods back to the plain shape.

KWOK's pods run no containers and have made-up addresses, so nothing here dials a pod: what is
checked is what the API server and its controllers hold.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.integration.operator.harness import REPO, Cluster, Lane, OperatorProcess, rolled_out, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(240)]

GATED_SAMPLE = REPO / "manifests/samples/voicelane-gated.yaml"
TIERS = ("fast", "deep")
GATE_LABEL = "voicelane.dev/gate"


def gated_manifest(name: str, namespace: str) -> dict[str, Any]:
    [lane] = [doc for doc in yaml.safe_load_all(GATED_SAMPLE.read_text(encoding="utf-8")) if doc]
    lane = copy.deepcopy(lane)
    lane["metadata"] = {"name": name, "namespace": namespace}
    return lane


def container(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in pod["spec"]["containers"] if c["name"] == name), None)


def env_of(item: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var.get("value", "") for var in item.get("env", [])}


def label_selector(selector: dict[str, Any]) -> str:
    """A NetworkPolicy's pod or namespace selector as kubectl's `-l` (only matchLabels is rendered)."""
    assert set(selector) <= {"matchLabels"}, selector
    return ",".join(f"{key}={value}" for key, value in sorted(selector.get("matchLabels", {}).items()))


def names(objects: list[dict[str, Any]]) -> set[str]:
    return {obj["metadata"]["name"] for obj in objects}


def tier_pods(cluster: Cluster, lane: str) -> list[dict[str, Any]]:
    """The lane's model server pods that are not on their way out."""
    pods = cluster.select("pods", f"voicelane.dev/lane={lane},app.kubernetes.io/name=ollama")
    return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]


def wanted_replicas(manifest: dict[str, Any]) -> int:
    return sum(int(manifest["spec"][tier]["replicas"]) for tier in TIERS)


def bare_pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A pod that only stands for an app (KWOK never runs it), restricted like every pod of the project."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "16Mi"}},
                }
            ],
        },
    }


@pytest.fixture
def gated_lane(cluster: Cluster, operator: OperatorProcess) -> Iterator[tuple[Lane, dict[str, Any]]]:
    """The gated sample under a name of this test's own, applied as a user would; deleted afterwards."""
    lane = Lane(cluster, f"gated-{secrets.token_hex(3)}")
    manifest = gated_manifest(lane.name, cluster.namespace)
    cluster.kubectl("apply", "--validate=strict", "-f", "-", stdin=yaml.safe_dump(manifest))
    try:
        yield lane, manifest
    finally:
        cluster.delete("voicelane", lane.name)


def assert_plain_pods(cluster: Cluster, lane: Lane, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    pods = tier_pods(cluster, lane.name)
    assert len(pods) == wanted_replicas(manifest)
    for pod in pods:
        assert GATE_LABEL not in pod["metadata"]["labels"]
        assert container(pod, "gate") is None
        server = container(pod, "ollama")
        assert server is not None
        assert env_of(server)["OLLAMA_HOST"] == "0.0.0.0:11434"
        assert server["ports"] == [{"name": "http", "containerPort": 11434, "protocol": "TCP"}]
        assert pod["status"]["qosClass"] == "Guaranteed"
    return pods


def endpoint_ports(cluster: Cluster, service: str) -> set[int]:
    """The ports the Service's EndpointSlices resolved its target port to, once they list ready pods."""
    slices = cluster.select("endpointslices", f"kubernetes.io/service-name={service}")
    ready = [e for s in slices for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")]
    return {p["port"] for s in slices for p in s.get("ports") or []} if ready else set()


def test_the_gated_sample_runs_the_gate_in_every_tier_pod_and_can_be_turned_off(
    cluster: Cluster, gated_lane: tuple[Lane, dict[str, Any]]
) -> None:
    lane, manifest = gated_lane
    wait_until(lane.observed, cluster.change_timeout_s, what="a status for generation 1")
    cluster.roll_out()
    wait_until(lambda: lane.having("Ready"), cluster.ready_timeout_s, what="the gated lane Ready")

    # Every tier pod: the gate beside Ollama, Ollama on loopback, the gate labelled for the PodMonitor.
    pods = wait_until(
        lambda: len(found := tier_pods(cluster, lane.name)) == wanted_replicas(manifest) and found,
        cluster.change_timeout_s,
        what="every tier pod",
    )
    gate_cpu, gate_memory = manifest["spec"]["gate"]["cpu"], manifest["spec"]["gate"]["memory"]
    for pod in pods:
        assert pod["metadata"]["labels"][GATE_LABEL] == "true"
        gate, server = container(pod, "gate"), container(pod, "ollama")
        assert gate is not None, [c["name"] for c in pod["spec"]["containers"]]
        assert server is not None
        assert gate["ports"] == [
            {"name": "http", "containerPort": 11434, "protocol": "TCP"},
            {"name": "gate-metrics", "containerPort": 9465, "protocol": "TCP"},
        ]
        assert "ports" not in server  # the pod's port `http` is the gate's alone
        assert env_of(server)["OLLAMA_HOST"].startswith("127.0.0.1:")
        upstream = gate["args"][gate["args"].index("--upstream") + 1]
        assert upstream == f"http://{env_of(server)['OLLAMA_HOST']}"
        resources = gate["resources"]
        assert resources["requests"] == resources["limits"]
        assert (resources["limits"]["cpu"], resources["limits"]["memory"]) == (gate_cpu, gate_memory)
        # The API server's own verdict on the whole pod (every container's requests equal its limits).
        assert pod["status"]["qosClass"] == "Guaranteed"

    # The Services target the gate's named port, which resolves to the gate's container port alone.
    for tier in TIERS:
        service = cluster.get("service", f"{lane.name}-{tier}")
        assert service is not None
        [port] = service["spec"]["ports"]
        assert port["targetPort"] == "http"
        resolved = wait_until(
            lambda service_name=f"{lane.name}-{tier}": endpoint_ports(cluster, service_name),
            cluster.change_timeout_s,
            what=f"the {tier} Service's endpoints",
        )
        assert resolved == {11434}

    # The NetworkPolicy: exactly the gated pods, the gate's port, the lane's app pods and the operator.
    policy = cluster.get("networkpolicy", f"{lane.name}-ollama")
    assert policy is not None
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    guarded = cluster.select("pods", label_selector(spec["podSelector"]))
    assert names(guarded) == names(pods)
    rule, scrape_rule = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 11434}]  # the gate's model-call port, to the lane only
    assert scrape_rule == {"ports": [{"protocol": "TCP", "port": 9465}]}  # its metrics port, to any scraper
    app, stranger = f"{lane.name}-app", f"{lane.name}-stranger"
    cluster.apply(bare_pod(app, {"voicelane.dev/lane": lane.name}), bare_pod(stranger, {"team": "voice"}))
    try:
        [lane_peer, operator_peer] = rule["from"]
        assert set(lane_peer) == {"podSelector"}  # no namespaceSelector: the lane's own namespace only
        admitted = names(cluster.select("pods", label_selector(lane_peer["podSelector"])))
        assert app in admitted
        assert stranger not in admitted
        # The lane's own tier pods carry the lane label too; nothing else in the namespace is admitted.
        assert admitted == {app} | names(pods)
        assert operator_peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "voicelane-operator"}}
        assert set(operator_peer) == {"podSelector", "namespaceSelector"}
    finally:
        cluster.kubectl("delete", "pod", app, stranger, "--wait=false", "--ignore-not-found")

    # Turned off on the live lane: the Deployments and then the pods return to the plain shape.
    cluster.patch("voicelane", lane.name, {"spec": {"gate": {"enabled": False}}})

    def plain_templates() -> bool:
        deployments = [cluster.get("deployment", f"{lane.name}-{tier}") for tier in TIERS]
        return all(
            d is not None
            and GATE_LABEL not in d["spec"]["template"]["metadata"]["labels"]
            and [c["name"] for c in d["spec"]["template"]["spec"]["containers"]] == ["ollama", "warmer"]
            for d in deployments
        )

    wait_until(plain_templates, cluster.change_timeout_s, what="Deployments without the gate")
    cluster.roll_out()
    wait_until(
        lambda: (
            all(not container(p, "gate") for p in tier_pods(cluster, lane.name))
            and len(tier_pods(cluster, lane.name)) == wanted_replicas(manifest)
        ),
        cluster.ready_timeout_s,
        what="the gated pods replaced",
    )
    plain = assert_plain_pods(cluster, lane, manifest)
    assert not names(plain) & names(pods)
    assert not cluster.select("pods", f"voicelane.dev/lane={lane.name},{GATE_LABEL}=true")
    for tier in TIERS:
        deployment = cluster.get("deployment", f"{lane.name}-{tier}")
        assert deployment is not None
        assert rolled_out(deployment)
        assert "shareProcessNamespace" not in deployment["spec"]["template"]["spec"]
    wait_until(
        lambda: (lane.observed() or {}).get("metadata", {}).get("generation") == 2 and lane.having("Ready"),
        cluster.ready_timeout_s,
        what="the plain lane observed and Ready",
    )
    policy_after = cluster.get("networkpolicy", f"{lane.name}-ollama")
    assert policy_after is not None
    # The same rule for the lane, now to Ollama's own port (the same number); no metrics port to open.
    assert policy_after["spec"]["ingress"] == [rule]
    assert policy_after["spec"]["podSelector"] == spec["podSelector"]
