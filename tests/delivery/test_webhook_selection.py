"""Which pods reach the injection webhook, and by which path: the chart's entries and the webhook agree.

The API server picks the pods by the entries' label selectors; the webhook then decides on the pod,
knowing from the path whether the pod or its namespace asked (operator/webhook.py). For every mix of
the labels involved, the pods that come out with a sidecar are those the README promises: the pod or
its namespace opts in, neither opts out, and it is no model server of a lane; and no pod is sent twice.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pytest

from tests.delivery.support import render
from voicelane.operator.webhook import NAMESPACE_WEBHOOK_ID, WEBHOOK_ID, wants_sidecar

INJECT = "voicelane.dev/inject"
LANE = "voicelane.dev/lane"
TIER = "voicelane.dev/tier"


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector's verdict on `labels`, by the rules the API server applies."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for requirement in selector.get("matchExpressions") or []:
        key, operator, values = requirement["key"], requirement["operator"], requirement.get("values") or []
        present = key in labels
        holds = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not holds:
            return False
    return True


@pytest.fixture(scope="module")
def hooks() -> list[dict[str, Any]]:
    return list(render("defaults", "webhook.enabled=true").one("MutatingWebhookConfiguration")["webhooks"])


def namespace_labels(inject: str | None) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": "apps", **({INJECT: inject} if inject else {})}


def pod(**labels: str | None) -> dict[str, Any]:
    return {
        "metadata": {"labels": {key: value for key, value in labels.items() if value is not None}},
        "spec": {"containers": [{"name": "web", "image": "web:1"}]},
    }


CHOICES = list(
    itertools.product(
        [None, "enabled", "disabled", "other"],  # the namespace's voicelane.dev/inject label
        [None, "voice"],  # the pod's voicelane.dev/lane label
        [None, "enabled", "disabled"],  # the pod's voicelane.dev/inject label
        [None, "fast"],  # voicelane.dev/tier: a lane's model server
    )
)


@pytest.mark.parametrize(("namespace_inject", "lane", "pod_inject", "tier"), CHOICES)
def test_a_pod_gets_the_sidecar_exactly_when_it_or_its_namespace_opts_in_and_neither_opts_out(
    hooks: list[dict[str, Any]],
    namespace_inject: str | None,
    lane: str | None,
    pod_inject: str | None,
    tier: str | None,
) -> None:
    subject = pod(**{LANE: lane, INJECT: pod_inject, TIER: tier})
    labels = subject["metadata"]["labels"]
    sent = [
        hook
        for hook in hooks
        if selects(hook["namespaceSelector"], namespace_labels(namespace_inject))
        and selects(hook["objectSelector"], labels)
    ]
    assert len(sent) <= 1, [hook["name"] for hook in sent]
    paths = {f"/{WEBHOOK_ID}": False, f"/{NAMESPACE_WEBHOOK_ID}": True}
    injected = bool(sent) and wants_sidecar(
        subject, namespace_opted_in=paths[sent[0]["clientConfig"]["service"]["path"]]
    )
    promised = (
        tier is None
        and "disabled" not in (namespace_inject, pod_inject)
        and (lane is not None or "enabled" in (namespace_inject, pod_inject))
    )
    assert injected == promised


def test_the_namespace_selector_of_the_values_narrows_every_entry(hooks: list[dict[str, Any]]) -> None:
    kube_system = {"kubernetes.io/metadata.name": "kube-system", INJECT: "enabled"}
    labelled = pod(**{LANE: "voice"})["metadata"]["labels"]
    assert [hook["name"] for hook in hooks if selects(hook["namespaceSelector"], kube_system)] == []
    assert [hook["name"] for hook in hooks if selects(hook["objectSelector"], labelled)] == [hooks[0]["name"]]


def test_the_operators_own_pods_are_never_sent_to_the_webhook_even_in_a_namespace_that_opts_in(
    hooks: list[dict[str, Any]],
) -> None:
    # The operator serves the webhook: a pod of it waiting for its own sidecar would wait for itself.
    operator_pod = render("defaults", "webhook.enabled=true").one("Deployment")["spec"]["template"]
    labels = operator_pod["metadata"]["labels"]
    for namespace_inject in (None, "enabled"):
        namespace = namespace_labels(namespace_inject)
        sent = [
            hook["name"]
            for hook in hooks
            if selects(hook.get("namespaceSelector") or {}, namespace)
            and selects(hook.get("objectSelector") or {}, labels)
        ]
        assert sent == [], (namespace_inject, sent)
    assert not wants_sidecar(operator_pod, namespace_opted_in=True)
