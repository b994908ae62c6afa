"""Subcommands of the operator: `voicelane operator`, `voicelane render`, `voicelane crd`."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

# Offline review has no cluster to assign these; the operator always has the real ones.
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
DEFAULT_NAMESPACE = "default"


def add_parser(subparsers: Any) -> None:
    operator = subparsers.add_parser(
        "operator",
        help="Run the VoiceLane operator (kopf).",
        description="Reconcile VoiceLane resources into warm, reserved fast and deep Ollama tiers.",
    )
    operator.add_argument("--kubeconfig", metavar="PATH", type=Path, help="Kubeconfig file (default: in-cluster).")
    operator.add_argument(
        "--namespace",
        metavar="NS",
        action="append",
        help="Watch this namespace (repeatable; default: all namespaces).",
    )
    operator.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="Address of /metrics and the health probes (default 0.0.0.0:8080 in a cluster, else 127.0.0.1:8080).",
    )
    operator.add_argument("--liveness", metavar="URL", help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz.")
    operator.add_argument(
        "--operator-namespace",
        metavar="NS",
        help="Namespace whose operator pods each lane's NetworkPolicy admits "
        "(default: the pod's own namespace in a cluster, else any namespace).",
    )
    operator.add_argument(
        "--api-timeout",
        metavar="SECONDS",
        type=positive_seconds,
        help="Give up on an API request (not a watch) after this long without an answer, and retry it "
        "with backoff (default 30).",
    )
    operator.add_argument(
        "--peering",
        metavar="NAME",
        help="Run as one of several replicas electing a leader through the kopf peering object NAME "
        "(created if missing; needs the kopf.dev CRDs of charts/voicelane/crds/): only the replica "
        "running longest reconciles, all serve the webhook (default: alone, no election).",
    )
    operator.add_argument("--verbose", action="store_true", help="Log every kopf step (debug level).")
    webhook = operator.add_argument_group("sidecar injection webhook (HTTPS, path /mutate-pods)")
    webhook.add_argument("--webhook-listen", metavar="HOST:PORT", help="Serve the webhook here (default: off).")
    webhook.add_argument(
        "--webhook-cert-dir",
        metavar="DIR",
        help="Directory with tls.crt and tls.key, re-read when they change "
        "(default: a self-signed certificate generated at start).",
    )
    webhook.add_argument(
        "--webhook-ca-out", metavar="FILE", help="Write the CA that callers must trust (PEM) to this file."
    )
    webhook.add_argument(
        "--webhook-cert-secret",
        metavar="NAME",
        help="Keep the webhook's CA and certificate in this Secret of the operator's namespace (made when "
        "missing or due, shared by all replicas) and serve with them; overrides --webhook-cert-dir.",
    )
    webhook.add_argument(
        "--webhook-cert-host",
        metavar="HOST",
        action="append",
        help="A DNS name or IP address the kept certificate covers (repeatable).",
    )
    webhook.add_argument(
        "--webhook-configuration",
        metavar="NAME",
        help="MutatingWebhookConfiguration whose caBundle the operator keeps equal to the kept CA.",
    )
    webhook.add_argument(
        "--webhook-cert-validity-days",
        metavar="DAYS",
        type=int,
        help="Validity of a CA and certificate the operator makes (default 3650; renewed 30 days before the end).",
    )
    webhook.add_argument(
        "--sidecar-image", metavar="IMAGE", help="Sidecar image to inject (default: the release's sidecar image)."
    )
    operator.set_defaults(handler=run_operator)

    render = subparsers.add_parser(
        "render",
        help="Print the objects the operator would apply for a VoiceLane.",
        description="Render a VoiceLane offline into the exact child objects the operator applies, "
        "as a multi-document YAML stream.",
    )
    render.add_argument(
        "-f",
        "--filename",
        required=True,
        metavar="FILE",
        help="VoiceLane YAML (one or more documents; - for stdin).",
    )
    render.add_argument(
        "-n",
        "--namespace",
        metavar="NS",
        help=f"Namespace of lanes that name none (default: {DEFAULT_NAMESPACE}).",
    )
    render.add_argument(
        "--operator-namespace",
        metavar="NS",
        help="Namespace of the operator, for the NetworkPolicy (default: admit operator pods from any namespace).",
    )
    render.set_defaults(handler=run_render)

    crd = subparsers.add_parser("crd", help="Print the VoiceLane CustomResourceDefinition as YAML.")
    crd.set_defaults(handler=run_crd)


def positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def default_metrics_listen(environ: Mapping[str, str]) -> str:
    # Inside a pod the kubelet and Prometheus reach it from outside; on a laptop, stay on loopback.
    return "0.0.0.0:8080" if environ.get("KUBERNETES_SERVICE_HOST") else "127.0.0.1:8080"


def run_operator(args: argparse.Namespace) -> int:
    if args.metrics_listen is None:
        args.metrics_listen = default_metrics_listen(os.environ)
    try:
        from voicelane.operator.main import run
    except ModuleNotFoundError as exc:
        if exc.name != "voicelane.operator.main":
            raise
        print("voicelane operator: the operator runtime is not part of this build", file=sys.stderr)
        return 2
    result: int = run(args)
    return result


def _review_dumper() -> type:
    """A YAML dumper whose multi-line strings (scripts, sidecar.yaml) print as readable blocks."""
    import yaml

    class ReviewDumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    ReviewDumper.add_representer(str, represent_str)
    return ReviewDumper


def dump_yaml_stream(documents: Iterable[Mapping[str, Any]], stream: TextIO) -> None:
    import yaml

    yaml.dump_all(
        list(documents),
        stream,
        Dumper=_review_dumper(),
        sort_keys=False,
        allow_unicode=True,
        explicit_start=True,
        width=120,
    )


def _read_lanes(filename: str) -> list[Any]:
    import yaml

    try:
        text = sys.stdin.read() if filename == "-" else Path(filename).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror}") from None
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from None


def _offline_lane(document: Any, *, namespace: str, position: int) -> dict[str, Any]:
    from voicelane.operator.api import API_VERSION, KIND, SpecError

    where = f"document {position}"
    if not isinstance(document, dict):
        raise SpecError(f"{where}: expected a VoiceLane mapping, got {type(document).__name__}")
    if document.get("apiVersion") != API_VERSION or document.get("kind") != KIND:
        raise SpecError(
            f"{where}: expected apiVersion {API_VERSION} kind {KIND}, "
            f"got {document.get('apiVersion')} {document.get('kind')}"
        )
    metadata = dict(document.get("metadata") or {})
    metadata.setdefault("namespace", namespace)
    metadata.setdefault("uid", PLACEHOLDER_UID)
    return {**document, "metadata": metadata}


def run_render(args: argparse.Namespace) -> int:
    from voicelane.operator.api import SpecError
    from voicelane.operator.render import render_children, tier_warnings

    prefix = f"voicelane render: {args.filename}"
    try:
        documents = _read_lanes(args.filename)
    except ValueError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 2
    if not documents:
        print(f"{prefix}: no VoiceLane in the file", file=sys.stderr)
        return 2
    children: list[dict[str, Any]] = []
    warnings: list[str] = []
    try:
        for position, document in enumerate(documents, start=1):
            lane = _offline_lane(document, namespace=args.namespace or DEFAULT_NAMESPACE, position=position)
            children += render_children(lane, operator_namespace=args.operator_namespace)
            warnings += tier_warnings(lane["spec"])
    except SpecError as exc:
        for problem in exc.problems:
            print(f"{prefix}: {problem}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"{prefix}: warning: {warning}", file=sys.stderr)
    dump_yaml_stream(children, sys.stdout)
    return 0


def run_crd(args: argparse.Namespace) -> int:
    from voicelane.operator.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0
