"""`voicelane inject`: add the sidecar to workload manifests offline, exactly as the webhook would.

For clusters without the webhook (or to review what it does): reads Pods, Deployments, StatefulSets,
DaemonSets, ReplicaSets, Jobs and CronJobs (a multi-document YAML stream, or a `List`), injects the
sidecar into each pod template with injection.py, and prints the stream with every other document
as it was:

    voicelane inject -f deploy.yaml --lane voice | kubectl apply -f -

The lane is `--lane`, else the pod template's `voicelane.dev/lane` annotation or label; a workload
with none is printed unchanged, with a note on stderr, as is one that opts out
(`voicelane.dev/inject: disabled`). The pod template's annotations tune the sidecar as they do
with the webhook (image, log level, CPU and memory); a value that is not valid stops the command
with the annotation named. The lane's spec.sidecar env is the webhook's to add: it reads the lane.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Where each kind keeps the pod it creates; () is the document itself.
POD_TEMPLATE_PATHS: Mapping[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class ManifestError(ValueError):
    """A document cannot be read or cannot take the sidecar."""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inject",
        help="Add the VoiceLane sidecar to workload manifests (without the webhook).",
        description="Add the VoiceLane sidecar to the pod templates of Pods, Deployments, StatefulSets, "
        "DaemonSets, ReplicaSets, Jobs and CronJobs, as the injection webhook would, and print the result.",
    )
    parser.add_argument(
        "-f", "--filename", required=True, metavar="FILE", help="Manifests (one or more YAML documents; - for stdin)."
    )
    parser.add_argument(
        "--lane", metavar="NAME", help="The lane to use (default: each pod template's voicelane.dev/lane label)."
    )
    parser.add_argument("--image", metavar="IMAGE", help="Sidecar image (default: this release's sidecar image).")
    parser.add_argument(
        "--sidecar-listen",
        metavar="HOST:PORT",
        help="The lane's spec.policy.server.listen if it sets one, for VOICELANE_URL (default: the sidecar's).",
    )
    parser.set_defaults(handler=run)


def _describe(document: Mapping[str, Any], position: str) -> str:
    name = (document.get("metadata") or {}).get("name") or "unnamed"
    return f"document {position} ({document.get('kind')} {name})"


def inject_document(
    document: Any, *, position: str, lane: str | None, image: str, api_listen: str, notes: list[str]
) -> Any:
    """The document with the sidecar in its pod template, or as it was (with a note saying why)."""
    from voicelane.operator.injection import AnnotationError, InjectionError, inject, requested_lane, skip_reason
    from voicelane.operator.render import LABEL_LANE

    if not isinstance(document, dict):
        return document
    if document.get("kind") == "List" and isinstance(document.get("items"), list):
        items = [
            inject_document(
                item, position=f"{position}.{index}", lane=lane, image=image, api_listen=api_listen, notes=notes
            )
            for index, item in enumerate(document["items"], start=1)
        ]
        return {**document, "items": items}
    path = POD_TEMPLATE_PATHS.get(str(document.get("kind")))
    if path is None:
        return document
    where = _describe(document, position)
    template: Any = document
    for key in path:
        template = template.get(key) if isinstance(template, dict) else None
    if not isinstance(template, dict):
        raise ManifestError(f"{where}: no pod template at {'.'.join(path)}")
    try:
        reason = skip_reason(template)
        if reason is not None:
            notes.append(f"{where}: left as it is: {reason}")
            return document
        lane_name = lane or requested_lane(template)
        if not lane_name:
            notes.append(f"{where}: left as it is: no lane (label its pod template {LABEL_LANE}, or pass --lane)")
            return document
        injected = inject(template, lane=str(lane_name), image=image, api_listen=api_listen)
    except (InjectionError, AnnotationError) as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if injected is None:
        notes.append(f"{where}: left as it is: {skip_reason(template)}")
        return document
    if not path:
        return injected
    result = copy.deepcopy(document)
    parent = result
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = injected
    return result


def run(args: argparse.Namespace) -> int:
    import yaml

    from voicelane.operator.api import SpecError, check_lane_name
    from voicelane.operator.cli import dump_yaml_stream
    from voicelane.operator.injection import DEFAULT_API_LISTEN, DEFAULT_SIDECAR_IMAGE

    prefix = f"voicelane inject: {args.filename}"
    try:
        if args.lane is not None:
            check_lane_name(args.lane)
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text(encoding="utf-8")
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        notes: list[str] = []
        injected = [
            inject_document(
                document,
                position=str(position),
                lane=args.lane,
                image=args.image or DEFAULT_SIDECAR_IMAGE,
                api_listen=args.sidecar_listen or DEFAULT_API_LISTEN,
                notes=notes,
            )
            for position, document in enumerate(documents, start=1)
        ]
    except SpecError as exc:
        print(f"voicelane inject: --lane {args.lane}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prefix}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    except yaml.YAMLError as exc:
        print(f"{prefix}: not valid YAML: {exc}", file=sys.stderr)
        return 2
    except ManifestError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"{prefix}: {note}", file=sys.stderr)
    dump_yaml_stream(injected, sys.stdout)
    return 0
