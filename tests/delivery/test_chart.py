"""The Helm chart: it lints, renders and validates, and what it renders is what its values and sources say."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.delivery import structural
from tests.delivery.support import (
    CHART,
    NAMESPACE,
    RELEASE,
    REPO,
    VALUES,
    Render,
    helm,
    pod_templates,
    render,
    run,
)
from voicelane.cli import build_parser
from voicelane.operator.cli import PLACEHOLDER_UID
from voicelane.operator.render import LABEL_NAME, OPERATOR_NAME, render_children

pytestmark = pytest.mark.tools

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
Rendered = Callable[[str], Render]


def chart_metadata() -> dict[str, Any]:
    metadata: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    return metadata


def operator_container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def dockerfile_entrypoint(name: str) -> list[str]:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(str(REPO / "images" / f"{name}.Dockerfile"))
    [entrypoint] = [item["value"] for item in parser.structure if item["instruction"] == "ENTRYPOINT"]
    argv: list[str] = json.loads(entrypoint)
    return argv


# --- lint, render, validate --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUES))
def test_helm_lint_passes_strictly(name: str) -> None:
    values = VALUES[name]
    argv = [str(helm()), "lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values:
        argv += ["--values", str(values)]
    result = run(argv)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_every_optional_feature_renders(rendered: Rendered) -> None:
    kinds = {doc["kind"] for doc in rendered("all-features").documents}
    assert {
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "RoleBinding",
        "Service",
        "NetworkPolicy",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "Secret",
        "MutatingWebhookConfiguration",
        "Pod",
    } <= kinds
    assert {"Certificate", "Issuer"} <= {doc["kind"] for doc in rendered("webhook-cert-manager").documents}


def test_defaults_render_the_crd_and_the_operator_only(rendered: Rendered) -> None:
    kinds = sorted(doc["kind"] for doc in rendered("defaults").documents)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",  # ClusterKopfPeering (leader election)
        "CustomResourceDefinition",  # KopfPeering (leader election)
        "CustomResourceDefinition",  # VoiceLane
        "Deployment",
        "NetworkPolicy",
        "Pod",  # the `helm test` hook
        "Service",
        "ServiceAccount",
    ]


def validate(documents: list[dict[str, Any]], version: str) -> list[str]:
    import kubernetes_validate

    problems = []
    for doc in documents:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if structural.is_custom_resource(doc):
            # kubernetes-validate knows only the built-in kinds; prometheus-operator and cert-manager
            # objects are held to a hand-written structural expectation instead (no schemas vendored).
            problems += [f"{where}: {problem}" for problem in structural.problems(doc)]
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {exc.message} at {'.'.join(str(p) for p in exc.path)}")
    return problems


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_validate_strictly(each_render: Render, version: str) -> None:
    assert validate(each_render.documents, version) == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kubectl_manifests_validate_strictly(version: str) -> None:
    for path in (REPO / "manifests" / "install.yaml", REPO / "manifests" / "samples" / "app-with-sidecar.yaml"):
        documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        assert validate(documents, version) == [], path


def test_the_structural_expectation_catches_a_misspelt_field(rendered: Rendered) -> None:
    monitor = json.loads(json.dumps(rendered("all-features").one("PodMonitor")))
    monitor["spec"]["podMetricsEndpoints"][0]["relabellings"] = monitor["spec"]["podMetricsEndpoints"][0].pop(
        "relabelings"
    )
    assert structural.problems(monitor)


def port_names(documents: list[dict[str, Any]]) -> list[str]:
    names = []
    for doc in documents:
        for _, spec in pod_templates(doc):
            for container in spec.get("initContainers", []) + spec["containers"]:
                names += [port["name"] for port in container.get("ports", []) if "name" in port]
        if doc["kind"] == "Service":
            names += [port["name"] for port in doc["spec"]["ports"]]
    return names


def test_port_names_are_iana_service_names(each_render: Render) -> None:
    # The API server refuses longer names; kubernetes-validate's schemas do not say so.
    sample = yaml.safe_load_all((REPO / "manifests" / "samples" / "app-with-sidecar.yaml").read_text(encoding="utf-8"))
    names = port_names(each_render.documents + [doc for doc in sample if doc])
    assert names
    assert [name for name in names if not structural.is_iana_service_name(name)] == []


# --- versions and image --------------------------------------------------------------------------------


def test_app_version_is_the_package_version() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert chart_metadata()["appVersion"] == pyproject["project"]["version"]


def test_the_image_defaults_to_the_app_version_and_accepts_a_tag_or_digest(rendered: Rendered) -> None:
    version = chart_metadata()["appVersion"]
    deployment = rendered("defaults").one("Deployment")
    assert operator_container(deployment)["image"] == f"ghcr.io/voicelane/voicelane-operator:{version}"
    tagged = render("defaults", "operator.image.tag=1.2.3", "operator.image.repository=registry.local/vl-op")
    assert operator_container(tagged.one("Deployment"))["image"] == "registry.local/vl-op:1.2.3"
    digest = "sha256:" + "ab" * 32
    pinned = render("defaults", f"operator.image.digest={digest}")
    assert operator_container(pinned.one("Deployment"))["image"] == f"ghcr.io/voicelane/voicelane-operator@{digest}"


@pytest.mark.parametrize("name", ["defaults", "all-features"])
def test_the_operator_arguments_are_valid_flags_of_the_image_entrypoint(rendered: Rendered, name: str) -> None:
    entrypoint = dockerfile_entrypoint("operator")
    assert entrypoint[:2] == ["voicelane", "operator"]
    args = operator_container(rendered(name).one("Deployment"))["args"]
    parsed = build_parser().parse_args([*entrypoint[1:], *args])  # argparse exits on an unknown flag
    assert parsed.metrics_listen == "0.0.0.0:8080"
    if name == "all-features":
        assert parsed.namespace == ["voice-apps", "voice-staging"]


def test_the_operator_pod_is_admitted_by_the_lane_network_policy(rendered: Rendered) -> None:
    [lane] = [doc for doc in yaml.safe_load_all((REPO / "manifests/samples/voicelane.yaml").read_text()) if doc]
    lane["metadata"]["uid"] = PLACEHOLDER_UID
    [policy] = [child for child in render_children(lane) if child["kind"] == "NetworkPolicy"]
    operator_peer = policy["spec"]["ingress"][0]["from"][1]["podSelector"]["matchLabels"]
    pod_labels = rendered("all-features").one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert operator_peer == {LABEL_NAME: OPERATOR_NAME}
    assert operator_peer.items() <= pod_labels.items()


def test_the_operator_is_hardened_and_configurable(rendered: Rendered) -> None:
    deployment = rendered("all-features").one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert {"livenessProbe", "readinessProbe", "startupProbe"} <= container.keys()
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "voicelane.dev/dedicated"
    assert "nodeAffinity" in pod["affinity"]
    assert deployment["metadata"]["labels"]["team"] == "voice"  # commonLabels
    assert deployment["metadata"]["labels"]["tier"] == "control-plane"  # operator.labels
    assert deployment["metadata"]["annotations"]["owner"] == "voice-team"  # commonAnnotations
    assert deployment["spec"]["template"]["metadata"]["annotations"]["example.com/scrape"] == "true"
    assert {"name": "TZ", "value": "UTC"} in container["env"]


# --- RBAC scope ----------------------------------------------------------------------------------------


def test_watched_namespaces_get_role_bindings_instead_of_a_cluster_binding(rendered: Rendered) -> None:
    documents = rendered("all-features").documents
    role = rendered("all-features").one("ClusterRole", "-operator")["metadata"]["name"]
    bindings = [doc for doc in documents if doc["kind"].endswith("RoleBinding") and doc["roleRef"]["name"] == role]
    assert sorted(binding["metadata"].get("namespace") for binding in bindings) == ["voice-apps", "voice-staging"]
    assert {binding["kind"] for binding in bindings} == {"RoleBinding"}
    assert rendered("defaults").one("ClusterRoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "voicelane-operator", "namespace": NAMESPACE}
    ]


# --- monitoring ----------------------------------------------------------------------------------------


def test_the_service_monitor_scrapes_the_operator_service(rendered: Rendered) -> None:
    documents = rendered("all-features")
    monitor = documents.one("ServiceMonitor")
    service = documents.one("Service", "-operator")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {port["name"] for port in service["spec"]["ports"]}


def test_the_pod_monitor_scrapes_the_sample_sidecar_and_labels_its_lane(rendered: Rendered) -> None:
    monitor = rendered("all-features").one("PodMonitor")
    [app, _] = [
        doc for doc in yaml.safe_load_all((REPO / "manifests/samples/app-with-sidecar.yaml").read_text()) if doc
    ]
    pod = app["spec"]["template"]
    [requirement] = monitor["spec"]["selector"]["matchExpressions"]
    assert requirement == {"key": "voicelane.dev/lane", "operator": "Exists"}
    assert "voicelane.dev/lane" in pod["metadata"]["labels"]
    endpoint, gate_endpoint = monitor["spec"]["podMetricsEndpoints"]
    # The gate's metrics port on tier pods that run it, and on those alone (Ollama's has no /metrics).
    assert gate_endpoint["port"] == "gate-metrics"
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_voicelane_dev_gate"],
        "regex": "true",
        "action": "keep",
    } in gate_endpoint["relabelings"]
    sidecar_ports = {port["name"] for c in pod["spec"]["initContainers"] for port in c.get("ports", [])}
    assert endpoint["port"] in sidecar_ports
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_voicelane_dev_lane"],
        "targetLabel": "lane",
        "action": "replace",
    } in endpoint["relabelings"]
    assert monitor["spec"]["namespaceSelector"] == {"any": True}


def test_the_release_label_is_configurable(rendered: Rendered) -> None:
    kinds = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
    for kind in kinds:
        assert rendered("all-features").one(kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    custom = render("all-features", "monitoring.release=prometheus")
    none = render("all-features", "monitoring.release=")
    for kind in kinds:
        assert custom.one(kind)["metadata"]["labels"]["release"] == "prometheus"
        assert "release" not in none.one(kind)["metadata"]["labels"]


def test_the_prometheus_rule_holds_the_rule_file_unchanged(rendered: Rendered) -> None:
    rules_file = yaml.safe_load((CHART / "rules" / "voicelane-rules.yaml").read_text(encoding="utf-8"))
    rule = rendered("all-features").one("PrometheusRule")
    assert rule["spec"]["groups"] == rules_file["groups"]


def test_each_dashboard_is_a_config_map_for_grafana(rendered: Rendered) -> None:
    dashboards = {path.name: path.read_text(encoding="utf-8") for path in (CHART / "dashboards").glob("*.json")}
    maps = [doc for doc in rendered("all-features").of_kind("ConfigMap") if "dashboard" in doc["metadata"]["name"]]
    assert len(maps) == len(dashboards) >= 2
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == "monitoring"
        assert config_map["metadata"]["annotations"]["grafana_folder"] == "VoiceLane"
        [(filename, content)] = config_map["data"].items()
        assert json.loads(content) == json.loads(dashboards[filename])


# --- the injection webhook -----------------------------------------------------------------------------


def test_the_webhook_never_blocks_pods_and_reaches_the_operator(rendered: Rendered) -> None:
    documents = rendered("all-features")
    hooks = documents.one("MutatingWebhookConfiguration")["webhooks"]
    # One entry per way in (test_webhook_selection.py checks whom each selects); all alike otherwise.
    assert [hook["clientConfig"]["service"]["path"] for hook in hooks] == [
        "/mutate-pods",
        "/mutate-pods",
        "/mutate-namespace-pods",
    ]
    for hook in hooks:
        assert hook["failurePolicy"] == "Ignore"
        assert hook["sideEffects"] == "None"
        assert hook["rules"][0]["resources"] == ["pods"]
        assert hook["rules"][0]["operations"] == ["CREATE"]
        assert {k: v for k, v in hook["clientConfig"]["service"].items() if k != "path"} == {
            k: v for k, v in hooks[0]["clientConfig"]["service"].items() if k != "path"
        }
    hook = hooks[0]
    client = hook["clientConfig"]["service"]
    service = documents.one("Service", "-webhook")
    assert client["name"] == service["metadata"]["name"]
    assert client["namespace"] == NAMESPACE
    [port] = [port for port in service["spec"]["ports"] if port["port"] == client["port"]]
    container = operator_container(documents.one("Deployment"))
    [target] = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert target["containerPort"] == 9443


def test_the_failure_policy_is_the_value() -> None:
    hooks = render("all-features", "webhook.failurePolicy=Fail").one("MutatingWebhookConfiguration")["webhooks"]
    assert {hook["failurePolicy"] for hook in hooks} == {"Fail"}


@pytest.mark.parametrize("name", ["all-features", "webhook-cert-manager"])
def test_the_webhook_renders_the_same_on_every_helm_template(name: str) -> None:
    # GitOps tools re-render the chart on every sync: a CA or key made at render time would rotate each time.
    first, second = render(name), render(name)
    assert first.text == second.text
    assert "BEGIN CERTIFICATE" not in first.text
    assert "PRIVATE KEY" not in first.text


def test_the_operator_keeps_the_certificate_and_the_ca_bundle_itself(rendered: Rendered) -> None:
    documents = rendered("all-features")
    configuration = documents.one("MutatingWebhookConfiguration")
    assert [hook for hook in configuration["webhooks"] if "caBundle" in hook["clientConfig"]] == []
    secret = documents.one("Secret", "-webhook-ca")
    # Rendered empty, so that re-applying it keeps what the operator wrote.
    assert "data" not in secret
    assert "stringData" not in secret
    deployment = documents.one("Deployment")
    flags = build_parser().parse_args(["operator", *operator_container(deployment)["args"]])
    assert flags.webhook_cert_secret == secret["metadata"]["name"]
    assert flags.webhook_configuration == configuration["metadata"]["name"]
    service = configuration["webhooks"][0]["clientConfig"]["service"]
    assert f"{service['name']}.{service['namespace']}.svc" in flags.webhook_cert_host
    assert flags.webhook_cert_dir is None
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert [volume for volume in volumes if "secret" in volume] == []  # read through the API, not mounted


def test_the_operator_may_touch_only_its_own_secret_and_webhook_configuration(rendered: Rendered) -> None:
    documents = rendered("all-features")
    secret = documents.one("Secret", "-webhook-ca")
    configuration = documents.one("MutatingWebhookConfiguration")
    [role] = [doc for doc in documents.of_kind("Role") if doc["metadata"]["name"].endswith("-certificate")]
    assert role["metadata"]["namespace"] == secret["metadata"]["namespace"]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [secret["metadata"]["name"]],
            "verbs": ["get", "update"],
        }
    ]
    cluster_role = documents.one("ClusterRole", "-ca-bundle")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [configuration["metadata"]["name"]],
            "verbs": ["get", "patch"],
        }
    ]
    service_account = documents.one("ServiceAccount")["metadata"]["name"]
    for kind, name in (
        ("RoleBinding", role["metadata"]["name"]),
        ("ClusterRoleBinding", cluster_role["metadata"]["name"]),
    ):
        [binding] = [doc for doc in documents.of_kind(kind) if doc["roleRef"]["name"] == name]
        assert [subject["name"] for subject in binding["subjects"]] == [service_account]


# --- several replicas ----------------------------------------------------------------------------------


def test_several_replicas_elect_a_leader_and_stay_available(rendered: Rendered) -> None:
    documents = rendered("all-features")
    deployment = documents.one("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    container = operator_container(deployment)
    flags = build_parser().parse_args(["operator", *container["args"]])
    assert flags.peering == deployment["metadata"]["name"]
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budget = documents.one("PodDisruptionBudget")
    assert budget["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    [spread] = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == selector
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"  # a single-node cluster still runs both


def test_one_replica_runs_alone_without_a_budget(rendered: Rendered) -> None:
    documents = rendered("defaults")
    deployment = documents.one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert build_parser().parse_args(["operator", *operator_container(deployment)["args"]]).peering is None
    assert not documents.of_kind("PodDisruptionBudget")
    assert "topologySpreadConstraints" not in deployment["spec"]["template"]["spec"]


def test_cert_manager_issues_the_mounted_certificate_and_injects_its_ca(rendered: Rendered) -> None:
    documents = rendered("webhook-cert-manager")
    certificate = documents.one("Certificate")
    issuer = documents.one("Issuer")
    configuration = documents.one("MutatingWebhookConfiguration")
    assert configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{certificate['metadata']['name']}"
    )
    assert not [hook for hook in configuration["webhooks"] if "caBundle" in hook["clientConfig"]]
    assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    volumes = documents.one("Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": certificate["spec"]["secretName"]}} in volumes
    assert not documents.of_kind("Secret")  # cert-manager writes it


def test_the_webhook_is_off_by_default(rendered: Rendered) -> None:
    documents = rendered("defaults")
    assert not documents.of_kind("MutatingWebhookConfiguration")
    assert "webhook" not in {p["name"] for p in operator_container(documents.one("Deployment"))["ports"]}


# --- helm test and NOTES -------------------------------------------------------------------------------


def test_the_helm_test_hook_asks_the_operator_service_for_its_health(rendered: Rendered) -> None:
    documents = rendered("defaults")
    pod = documents.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = documents.one("Service", "-operator")
    url = pod["spec"]["containers"][0]["command"][-1]
    assert url == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{service['spec']['ports'][0]['port']}"


def notes(*set_values: str) -> str:
    argv = [str(helm()), "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    for assignment in set_values:
        argv += ["--set", assignment]
    result = run(argv)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_tell_the_user_what_to_do_next() -> None:
    text = notes()
    assert f"helm test {RELEASE} -n {NAMESPACE}" in text
    assert "manifests/samples/voicelane.yaml" in text
    assert "app-with-sidecar.yaml" in text
    with_webhook = notes("webhook.enabled=true", "serviceMonitor.enabled=true", "monitoring.release=prom")
    assert "voicelane.dev/lane" in with_webhook
    assert "release: prom" in with_webhook


def test_notes_say_what_becomes_of_pods_while_no_webhook_answers() -> None:
    ignoring = notes("webhook.enabled=true")
    assert "if the webhook is unavailable, the pod starts without it" in ignoring
    assert "such pods are refused" not in ignoring
    failing = notes("webhook.enabled=true", "webhook.failurePolicy=Fail")
    assert "while no webhook answers, such pods are refused" in failing
