"""Leader election among operator replicas: kopf's peering, its CRDs, and this replica's priority.

Several replicas of the operator all serve the sidecar-injection webhook (it keeps no state), and
only one reconciles lanes. kopf's peering is what kopf supports for that: every replica writes a
keep-alive with its priority into a KopfPeering object (one per watched namespace) or a
ClusterKopfPeering (cluster-wide), and a replica that sees a live peer of higher priority pauses its
watches and handlers until that peer is gone; the admission server is not paused. A
coordination.k8s.io Lease would need an elector of our own beside kopf and a way to pause kopf's
handlers from outside it, which kopf does not offer; peering pauses exactly what should pause.

kopf pauses every replica when two share the highest priority, so each must have its own: the
priority is minus the replica's start time in microseconds, so the replica that has run longest leads.
A new replica (a rollout, a restarted pod) then never takes over from a healthy leader: leadership
moves only when the leader goes. A leader that stops cleanly removes itself from the peering object
and the next replica resumes at once; one that dies is presumed gone when its keep-alive is
`LIFETIME_S` old.

The peering object must exist before kopf can elect anyone: `ensure_peering_objects` creates it
(an existing one is kept). The CRDs come with the chart (`peering_crds`, written into its crds/ by
`python -P -m voicelane.delivery --write`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection
from typing import Any

GROUP = "kopf.dev"
VERSION = "v1"
NAMESPACED_PLURAL = "kopfpeerings"
CLUSTER_PLURAL = "clusterkopfpeerings"
# Seconds a replica's keep-alive is trusted; kopf renews it 5 to 10 s before it runs out, so a leader
# that dies is replaced after at most this long.
LIFETIME_S = 20

logger = logging.getLogger("voicelane.operator")


class PeeringUnavailable(RuntimeError):
    """The peering object cannot be made: the kopf.dev CRDs are not installed."""


def start_priority(now_ns: int | None = None) -> int:
    """This replica's peering priority: the earlier it started, the higher (kopf lets the highest lead)."""
    started_us = (time.time_ns() if now_ns is None else now_ns) // 1_000
    return -started_us


def ensure_peering_objects(api_client: Any, name: str, namespaces: Collection[str]) -> None:
    """Create the peering object `name` kopf elects through (in each of `namespaces`, or cluster-wide).

    An existing object is left as it is. Without the right to create one (the object may have been
    made by someone else), a warning is logged: kopf then keeps this replica paused until it exists.
    """
    from kubernetes.client import CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    api = CustomObjectsApi(api_client)
    scopes: list[str | None] = list(namespaces) or [None]  # None: cluster-wide
    for namespace in scopes:
        kind = "KopfPeering" if namespace else "ClusterKopfPeering"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}}
        where = f"in namespace {namespace}" if namespace else "cluster-wide"
        try:
            if namespace:
                api.create_namespaced_custom_object(GROUP, VERSION, namespace, NAMESPACED_PLURAL, body)
            else:
                api.create_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, body)
        except ApiException as exc:
            if exc.status == 409:
                continue
            if exc.status == 404:
                plural = NAMESPACED_PLURAL if namespace else CLUSTER_PLURAL
                raise PeeringUnavailable(
                    f"cannot create {kind} {name} {where}: {_message(exc)} (is the CRD {plural}.{GROUP} "
                    "installed? apply charts/voicelane/crds/)"
                ) from exc
            if exc.status != 403:
                raise
            logger.warning("Cannot create %s %s %s (%s); waiting for it to exist.", kind, name, where, _message(exc))
        else:
            logger.info("Created %s %s %s for leader election.", kind, name, where)


def _message(exc: Any) -> str:
    """The API server's own words for a refused request (they name the verb and resource), else its status."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or f"{exc.status} {exc.reason}")


def _peering_crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "voicelane", "app.kubernetes.io/component": "operator"},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Keep-alives of the operator replicas that elect a leader through it.",
                            "properties": {
                                # No status subresource: kopf writes its keep-alives with a patch of the object.
                                "status": {
                                    "type": "object",
                                    "description": "Each replica's priority, lifetime and last keep-alive.",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def peering_crds() -> list[dict[str, Any]]:
    """The CustomResourceDefinitions of kopf's peering objects, namespaced and cluster-wide."""
    return [
        _peering_crd("ClusterKopfPeering", CLUSTER_PLURAL, "Cluster"),
        _peering_crd("KopfPeering", NAMESPACED_PLURAL, "Namespaced"),
    ]
