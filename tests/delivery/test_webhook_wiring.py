"""The chart starts the operator's injection webhook where its Service, port and certificate expect it, or, with
`webhook.url`, points the API server at a webhook served outside the cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.delivery.support import Render, render
from voicelane.cli import build_parser

Rendered = Callable[[str], Render]


def operator_of(render: Render) -> dict[str, Any]:
    [container] = render.one("Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def operator_flags(container: dict[str, Any]) -> Any:
    return build_parser().parse_args(["operator", *container["args"]])


@pytest.mark.parametrize("name", ["all-features", "webhook-cert-manager"])
def test_the_operator_serves_the_webhook_on_its_port(rendered: Rendered, name: str) -> None:
    container = operator_of(rendered(name))
    flags = operator_flags(container)
    [port] = [p for p in container["ports"] if p["name"] == "webhook"]
    assert flags.webhook_listen == f"0.0.0.0:{port['containerPort']}"


def test_with_cert_manager_the_operator_serves_the_mounted_certificate(rendered: Rendered) -> None:
    container = operator_of(rendered("webhook-cert-manager"))
    flags = operator_flags(container)
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "webhook-tls"]
    assert flags.webhook_cert_dir == mount["mountPath"]
    assert flags.webhook_cert_secret is None  # cert-manager's, not the operator's


def test_without_the_webhook_the_operator_serves_none(rendered: Rendered) -> None:
    flags = operator_flags(operator_of(rendered("defaults")))
    assert flags.webhook_listen is None
    assert flags.webhook_cert_dir is None


EXTERNAL_URL = "https://10.0.0.5:9443/mutate-pods"
EXTERNAL_CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="


@pytest.mark.parametrize("url", [EXTERNAL_URL, EXTERNAL_URL.removesuffix("/mutate-pods")])
def test_with_a_url_the_api_server_calls_it_and_trusts_the_given_ca(url: str) -> None:
    result = render("defaults", "webhook.enabled=true", f"webhook.url={url}", f"webhook.caBundle={EXTERNAL_CA}")
    hooks = result.one("MutatingWebhookConfiguration")["webhooks"]
    # The server's address with each entry's path: pods that opt in, pods of namespaces that do.
    assert [hook["clientConfig"] for hook in hooks] == [
        {"url": EXTERNAL_URL, "caBundle": EXTERNAL_CA},
        {"url": EXTERNAL_URL, "caBundle": EXTERNAL_CA},
        {"url": EXTERNAL_URL.replace("/mutate-pods", "/mutate-namespace-pods"), "caBundle": EXTERNAL_CA},
    ]


def test_with_a_url_nothing_in_the_cluster_serves_the_webhook() -> None:
    result = render("defaults", "webhook.enabled=true", f"webhook.url={EXTERNAL_URL}")
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in result.documents}
    assert not [name for kind, name in kinds if kind in ("Service", "Secret") and "webhook" in name]
    flags = operator_flags(operator_of(result))
    assert flags.webhook_listen is None
    assert flags.webhook_cert_dir is None
    [policy] = result.of_kind("NetworkPolicy")
    assert [port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]] == ["metrics"]
