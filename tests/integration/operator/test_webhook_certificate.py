"""The operator owns the webhook's CA at run time: it fills the chart's empty Secret and the caBundle.

The chart is rendered twice for a release in this module's namespace: as installed in a cluster (the
operator keeps the certificate: an empty Secret, the Role and ClusterRole that let it touch that Secret
and the webhook configuration by name, and the operator's flags), and with `webhook.url` at 127.0.0.1,
where the operator runs here, which gives the same configuration, without caBundle. The Secret and the
configuration are applied as rendered; the operator runs with the chart's certificate flags (the host
name replaced by 127.0.0.1) as a ServiceAccount bound to the role it ships with plus the chart's two
certificate roles. The real API server then calls it over TLS trusting only the caBundle the operator
patched in: a labelled pod gets the sidecar. A restart keeps the CA and the certificate, and a
re-apply of the rendered configuration (what a GitOps sync does) keeps the caBundle. The operator's
certificate code, run as each replica runs it, puts back a caBundle that a replace dropped, and
replicas starting together on the empty Secret all end up serving the one CA it stores. An operator
whose role does not name the Secret it is given stops at once, saying so. A certificate within 30 days
of its end, or not covering the webhook's host names, is reissued under the same CA.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import datetime
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes.client import ApiClient

from tests.delivery.support import CHART, helm
from tests.integration.operator.harness import Cluster, Lane, OperatorProcess, shipped_role_rules, wait_until
from voicelane.cli import build_parser
from voicelane.delivery import HelmTemplate
from voicelane.operator.main import client_configuration
from voicelane.operator.webhook_cert import KeyPair, WebhookCertificate, make_serving
from voicelane.processes import free_port, voicelane_argv

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(240)]

IMAGE = "registry.example/voicelane-sidecar:test"


@dataclasses.dataclass
class Chart:
    """What the chart renders for the webhook's certificate."""

    secret: dict[str, Any]
    configuration: dict[str, Any]  # with webhook.url: the same name and entries, no caBundle
    rules: list[dict[str, Any]]  # of its certificate Role and ClusterRole
    flags: Any  # the operator's parsed flags in its Deployment


def render(cluster: Cluster, release: str, values: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    path.write_text(yaml.safe_dump({"webhook": values}), encoding="utf-8")
    text = HelmTemplate(helm(), CHART, release=release, namespace=cluster.namespace, values_files=(path,)).run()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def chart_objects(cluster: Cluster, webhook_port: int, tmp: Path) -> Chart:
    release = f"cert-{secrets.token_hex(3)}"
    narrowed = {"matchLabels": {"kubernetes.io/metadata.name": cluster.namespace}}
    in_cluster = render(cluster, release, {"enabled": True, "namespaceSelector": narrowed}, tmp / "in-cluster.yaml")
    outside = {"enabled": True, "url": f"https://127.0.0.1:{webhook_port}/mutate-pods", "namespaceSelector": narrowed}
    [configuration] = [
        doc
        for doc in render(cluster, release, outside, tmp / "url.yaml")
        if doc["kind"] == "MutatingWebhookConfiguration"
    ]
    [secret] = [doc for doc in in_cluster if doc["kind"] == "Secret"]
    rules = [
        rule
        for doc in in_cluster
        if doc["kind"] in ("Role", "ClusterRole") and not doc["metadata"]["name"].endswith("-operator")
        for rule in doc["rules"]
    ]
    [deployment] = [doc for doc in in_cluster if doc["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    flags = build_parser().parse_args(["operator", *container["args"]])
    return Chart(secret, configuration, rules, flags)


@pytest.fixture(scope="module")
def cert_cluster(cluster: Cluster) -> Iterator[Cluster]:
    namespace = f"voicelane-cert-{secrets.token_hex(3)}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        yield dataclasses.replace(cluster, namespace=namespace)
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def installed(
    cert_cluster: Cluster, operator_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Chart, OperatorProcess]]:
    tmp = tmp_path_factory.mktemp("webhook-certificate")
    webhook_port = free_port()
    chart = chart_objects(cert_cluster, webhook_port, tmp)
    assert chart.flags.webhook_cert_secret == chart.secret["metadata"]["name"]
    assert chart.flags.webhook_configuration == chart.configuration["metadata"]["name"]
    cert_cluster.apply(chart.secret, chart.configuration)
    kubeconfig = cert_cluster.service_account_kubeconfig(
        "operator-with-certificate", [*shipped_role_rules(), *chart.rules], tmp / "kubeconfig"
    )
    log_dir = operator_logs / cert_cluster.namespace
    log_dir.mkdir()
    process = OperatorProcess(
        cert_cluster,
        log_dir,
        metrics_port=free_port(),
        liveness_port=free_port(),
        kubeconfig=kubeconfig,
        extra_args=(
            f"--operator-namespace={cert_cluster.namespace}",
            f"--webhook-listen=127.0.0.1:{webhook_port}",
            f"--webhook-cert-secret={chart.flags.webhook_cert_secret}",
            f"--webhook-configuration={chart.flags.webhook_configuration}",
            f"--webhook-cert-validity-days={chart.flags.webhook_cert_validity_days}",
            "--webhook-cert-host=127.0.0.1",
            f"--sidecar-image={IMAGE}",
        ),
    )
    process.start()
    try:
        yield chart, process
    finally:
        if process.alive():
            cert_cluster.kubectl("delete", "voicelanes", "--all", "--wait=true", "--timeout=60s", check=False)
        process.stop()
        cert_cluster.kubectl(
            "delete", "mutatingwebhookconfiguration", chart.configuration["metadata"]["name"], check=False
        )
        cert_cluster.remove_session_objects()


def stored_secret(cluster: Cluster, chart: Chart) -> dict[str, str]:
    found = cluster.get("secret", chart.secret["metadata"]["name"]) or {}
    return dict(found.get("data") or {})


def ca_bundles(cluster: Cluster, chart: Chart) -> list[str | None]:
    found = cluster.get("mutatingwebhookconfiguration", chart.configuration["metadata"]["name"]) or {}
    return [hook["clientConfig"].get("caBundle") for hook in found.get("webhooks") or []]


def labelled_pod(cluster: Cluster, lane: str, *, dry_run: bool = False) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-", "labels": {"app": "web", "voicelane.dev/lane": lane}},
        "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]},
    }
    flags = ["--dry-run=server"] if dry_run else []
    result = cluster.kubectl("create", *flags, "-o", "json", "-f", "-", stdin=json.dumps(pod))
    created: dict[str, Any] = json.loads(result.stdout)
    return created


def sidecars(pod: dict[str, Any]) -> list[str]:
    return [container["name"] for container in pod["spec"].get("initContainers", [])]


def test_the_operator_fills_the_secret_and_the_ca_bundle(
    cert_cluster: Cluster, installed: tuple[Chart, OperatorProcess]
) -> None:
    chart, _ = installed
    assert "caBundle" not in json.dumps(chart.configuration)  # as rendered
    data = stored_secret(cert_cluster, chart)
    assert set(data) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert set(ca_bundles(cert_cluster, chart)) == {data["ca.crt"]}
    ca = x509.load_pem_x509_certificate(base64.b64decode(data["ca.crt"]))
    serving = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
    serving.verify_directly_issued_by(ca)
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(address) for address in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_the_api_server_calls_the_webhook_trusting_that_ca_and_a_pod_gets_the_sidecar(
    cert_cluster: Cluster, installed: tuple[Chart, OperatorProcess]
) -> None:
    lane = Lane(cert_cluster, f"lane-{secrets.token_hex(3)}")
    lane.create()
    # The API server loads the patched configuration asynchronously; a dry run shows when it is in effect.
    wait_until(
        lambda: sidecars(labelled_pod(cert_cluster, lane.name, dry_run=True)),
        30,
        what="the API server to call the webhook with the patched caBundle",
    )
    pod = labelled_pod(cert_cluster, lane.name)
    assert sidecars(pod) == ["voicelane-sidecar"]
    assert pod["spec"]["initContainers"][0]["image"] == IMAGE


def test_a_restart_and_a_re_apply_keep_the_ca(cert_cluster: Cluster, installed: tuple[Chart, OperatorProcess]) -> None:
    chart, process = installed
    before = stored_secret(cert_cluster, chart)
    process.stop()
    cert_cluster.apply(chart.configuration, chart.secret)  # a GitOps sync re-applies what the chart rendered
    process.start()
    after = stored_secret(cert_cluster, chart)
    assert after == before  # neither a new CA nor a new certificate
    assert set(ca_bundles(cert_cluster, chart)) == {before["ca.crt"]}
    assert "Made a new CA" not in process.log().split("Signal SIGTERM")[-1]


def certificate_keeper(cluster: Cluster, chart: Chart, kubeconfig: Path, cert_dir: Path) -> WebhookCertificate:
    """The operator's certificate code, with the operator's credentials, as a replica runs it."""
    configuration, _ = client_configuration(str(kubeconfig))
    return WebhookCertificate(
        ApiClient(configuration),
        namespace=cluster.namespace,
        secret=chart.secret["metadata"]["name"],
        configuration=chart.configuration["metadata"]["name"],
        hosts=["127.0.0.1"],
        cert_dir=cert_dir,
    )


def test_a_ca_bundle_dropped_by_a_replace_is_put_back(
    cert_cluster: Cluster, installed: tuple[Chart, OperatorProcess], tmp_path: Path
) -> None:
    chart, process = installed
    ca = stored_secret(cert_cluster, chart)["ca.crt"]
    # `kubectl replace` (or a sync that replaces objects) stores the configuration exactly as rendered.
    cert_cluster.kubectl("replace", "-f", "-", stdin=json.dumps(chart.configuration))
    assert set(ca_bundles(cert_cluster, chart)) == {None}
    # What each replica does every minute.
    certificate_keeper(cert_cluster, chart, process.credentials, tmp_path).ensure()
    assert set(ca_bundles(cert_cluster, chart)) == {ca}
    assert (tmp_path / "tls.crt").read_bytes() == base64.b64decode(stored_secret(cert_cluster, chart)["tls.crt"])


def test_replicas_starting_together_on_an_empty_secret_share_one_ca(
    cert_cluster: Cluster, installed: tuple[Chart, OperatorProcess], tmp_path: Path
) -> None:
    chart, process = installed
    name = chart.secret["metadata"]["name"]
    cert_cluster.kubectl("patch", "secret", name, "--type=json", "-p", '[{"op": "remove", "path": "/data"}]')
    assert stored_secret(cert_cluster, chart) == {}
    keepers = [certificate_keeper(cert_cluster, chart, process.credentials, tmp_path / str(i)) for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(len(keepers)) as pool:
        cas = list(pool.map(lambda keeper: keeper.ensure(), keepers))
    stored = stored_secret(cert_cluster, chart)
    assert {base64.b64encode(ca).decode() for ca in cas} == {stored["ca.crt"]}  # every replica got the one stored
    assert {(tmp_path / str(i) / "tls.crt").read_bytes() for i in range(len(keepers))} == {
        base64.b64decode(stored["tls.crt"])
    }
    assert set(ca_bundles(cert_cluster, chart)) == {stored["ca.crt"]}


def test_an_operator_that_may_not_read_its_secret_stops_naming_it(
    cert_cluster: Cluster, installed: tuple[Chart, OperatorProcess]
) -> None:
    chart, process = installed
    namespace = cert_cluster.namespace
    argv = voicelane_argv(
        "operator",
        f"--kubeconfig={process.credentials}",
        f"--namespace={namespace}",
        f"--metrics-listen=127.0.0.1:{free_port()}",
        f"--operator-namespace={namespace}",
        f"--webhook-listen=127.0.0.1:{free_port()}",
        "--webhook-cert-secret=another-secret",  # its role names the chart's Secret only
        "--webhook-cert-host=127.0.0.1",
        f"--webhook-configuration={chart.configuration['metadata']['name']}",
    )
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert f"webhook certificate: cannot read Secret {namespace}/another-secret: 403 Forbidden" in result.stderr


def test_a_certificate_near_its_end_or_for_other_hosts_is_renewed_under_the_same_ca(
    cert_cluster: Cluster, installed: tuple[Chart, OperatorProcess], tmp_path: Path
) -> None:
    chart, process = installed
    keeper = certificate_keeper(cert_cluster, chart, process.credentials, tmp_path)
    keeper.ensure()
    stored = stored_secret(cert_cluster, chart)
    ca = KeyPair(base64.b64decode(stored["ca.crt"]), base64.b64decode(stored["ca.key"]))
    now = datetime.datetime.now(datetime.UTC)
    ending = make_serving(ca, ["127.0.0.1"], datetime.timedelta(days=10), now)  # within the 30 days before its end
    patch = {
        "data": {
            "tls.crt": base64.b64encode(ending.cert_pem).decode(),
            "tls.key": base64.b64encode(ending.key_pem).decode(),
        }
    }
    cert_cluster.patch("secret", chart.secret["metadata"]["name"], patch)

    keeper.ensure()
    renewed = stored_secret(cert_cluster, chart)
    assert renewed["ca.crt"] == stored["ca.crt"]  # the caBundle stays as it is
    serving = x509.load_pem_x509_certificate(base64.b64decode(renewed["tls.crt"]))
    assert serving.not_valid_after_utc - now > datetime.timedelta(days=365)
    assert set(ca_bundles(cert_cluster, chart)) == {stored["ca.crt"]}

    moved = dataclasses.replace(keeper, hosts=["127.0.0.1", "voicelane-webhook.apps.svc"])  # a renamed Service
    moved.ensure()
    reissued = stored_secret(cert_cluster, chart)
    assert reissued["ca.crt"] == stored["ca.crt"]
    names = x509.load_pem_x509_certificate(base64.b64decode(reissued["tls.crt"])).extensions
    san = names.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["voicelane-webhook.apps.svc"]
