"""`voicelane inject`: add the sidecar to workload manifests offline, exactly as the webhook would.

For clusters without the webhook (or to review what it does): reads Pods, Deployments, StatefulSets,
DaemonSets, ReplicaSets, Jobs and CronJobs (a multi-document YAML stream, or a `List`), injects the
sidecar into each pod template with injection.py, and prints the stream with every other document
as it was:

    voicelane inject -f deploy.yaml --lane-file lane.yaml | kubectl apply -f -
    voicelane inject -f deploy.yaml --lane voice | kubectl apply -f -

With `--lane-file`, the command reads the VoiceLane itself, checked as the operator checks it (an
invalid spec stops the command, each problem naming its field), and injects as the webhook does for
that lane: its name is the lane, its spec.policy.server.listen the apps' address, its spec.sidecar
env and envFrom the sidecar's environment (`LaneSettings`, which the webhook uses too). A pod
template that names another lane, or sits in another namespace than the lane's, is printed
unchanged with a note on stderr: the webhook would inject that lane's sidecar, not this one.

With `--lane`, the lane's spec is not read: VOICELANE_URL follows `--sidecar-listen` (else the
sidecar's default address), and the lane's spec.sidecar env is left to the webhook. Without either,
the lane is the pod template's `voicelane.dev/lane` annotation or label; a workload with none is
printed unchanged, with a note on stderr, as is one that opts out (`voicelane.dev/inject:
disabled`). The pod template's annotations tune the sidecar as they do with the webhook (image, log
level, CPU and memory); a value that is not valid stops the command with the annotation named.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voicelane.operator.injection import LaneSettings

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


class LaneFileError(ValueError):
    """The --lane-file is not one valid VoiceLane; the message says what is wrong in one line."""


@dataclasses.dataclass(frozen=True)
class LaneFile:
    """The lane of --lane-file: its name, its namespace if the file names one, and what it gives sidecars."""

    name: str
    namespace: str | None
    settings: LaneSettings


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
        "--lane-file",
        metavar="FILE",
        help="The VoiceLane (YAML) to inject as the webhook would: its name, spec.policy.server.listen and "
        "spec.sidecar env (not with --lane or --sidecar-listen).",
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


def read_lane_file(filename: str) -> LaneFile:
    """The one VoiceLane of `filename`, its spec checked by the operator's parser; LaneFileError if it is not one."""
    import yaml

    from voicelane.operator.api import API_VERSION, KIND, SpecError, check_lane_name, parse_spec
    from voicelane.operator.injection import LaneSettings

    try:
        text = Path(filename).read_text(encoding="utf-8")
    except OSError as exc:
        raise LaneFileError(f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise LaneFileError(f"not UTF-8 text: byte {exc.start}") from None
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise LaneFileError(_yaml_problem(exc)) from None
    if len(documents) != 1:
        raise LaneFileError(f"expected one {KIND}, found {len(documents)} YAML documents")
    [lane] = documents
    if not isinstance(lane, dict):
        raise LaneFileError(f"expected a {KIND} mapping, got {type(lane).__name__}")
    if lane.get("apiVersion") != API_VERSION or lane.get("kind") != KIND:
        raise LaneFileError(
            f"expected apiVersion {API_VERSION} kind {KIND}, got {lane.get('apiVersion')} {lane.get('kind')}"
        )
    metadata = lane.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    try:
        name = check_lane_name(metadata.get("name"))
    except SpecError as exc:
        raise LaneFileError(f"metadata.name: {exc}") from None
    namespace = metadata.get("namespace")
    try:
        spec = parse_spec(lane.get("spec", {}))
    except SpecError as exc:
        raise LaneFileError(exc.message) from None
    return LaneFile(name, str(namespace) if namespace else None, LaneSettings.of(spec))


def _yaml_problem(exc: Exception) -> str:
    """A YAML parser error in one line: where and what (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    return f"not valid YAML{where}: {problem}"


def _describe(document: Mapping[str, Any], position: str) -> str:
    name = (document.get("metadata") or {}).get("name") or "unnamed"
    return f"document {position} ({document.get('kind')} {name})"


def _other_lane(document: Mapping[str, Any], template: Mapping[str, Any], lane_file: LaneFile) -> str | None:
    """Why the webhook would not give this workload's pods the lane file's sidecar, or None if it would."""
    from voicelane.operator.injection import requested_lane
    from voicelane.operator.render import LABEL_LANE

    named = requested_lane(template)
    if named is not None and named != lane_file.name:
        return f"its pod template names lane {named} ({LABEL_LANE}), not {lane_file.name} of --lane-file"
    metadata = document.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    if namespace and lane_file.namespace and namespace != lane_file.namespace:
        return f"it is in namespace {namespace}, lane {lane_file.name} in {lane_file.namespace}"
    return None


def inject_document(
    document: Any,
    *,
    position: str,
    lane: str | None,
    image: str,
    settings: LaneSettings,
    notes: list[str],
    lane_file: LaneFile | None = None,
) -> Any:
    """The document with the sidecar in its pod template, or as it was (with a note saying why).

    With `lane_file`, its lane and settings are the ones used, and a workload of another lane is left as it was.
    """
    from voicelane.operator.injection import AnnotationError, InjectionError, inject, requested_lane, skip_reason
    from voicelane.operator.render import LABEL_LANE

    if not isinstance(document, dict):
        return document
    if document.get("kind") == "List" and isinstance(document.get("items"), list):
        items = [
            inject_document(
                item,
                position=f"{position}.{index}",
                lane=lane,
                image=image,
                settings=settings,
                notes=notes,
                lane_file=lane_file,
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
    if lane_file is not None:
        lane, settings = lane_file.name, lane_file.settings
    try:
        reason = skip_reason(template)
        if reason is None and lane_file is not None:
            reason = _other_lane(document, template, lane_file)
        if reason is not None:
            notes.append(f"{where}: left as it is: {reason}")
            return document
        lane_name = lane or requested_lane(template)
        if not lane_name:
            notes.append(f"{where}: left as it is: no lane (label its pod template {LABEL_LANE}, or pass --lane)")
            return document
        # Not None: skip_reason said the template takes the sidecar.
        injected = inject(
            template,
            lane=str(lane_name),
            image=image,
            api_listen=settings.api_listen,
            env=settings.env,
            env_from=settings.env_from,
        )
    except (InjectionError, AnnotationError) as exc:
        raise ManifestError(f"{where}: {exc}") from None
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
    from voicelane.operator.injection import DEFAULT_API_LISTEN, DEFAULT_SIDECAR_IMAGE, LaneSettings

    lane_file: LaneFile | None = None
    if args.lane_file is not None:
        clashing = [flag for flag, value in (("--lane", args.lane), ("--sidecar-listen", args.sidecar_listen)) if value]
        if clashing:
            print(
                f"voicelane inject: --lane-file gives the lane and its listen address; drop {' and '.join(clashing)}",
                file=sys.stderr,
            )
            return 2
        try:
            lane_file = read_lane_file(args.lane_file)
        except LaneFileError as exc:
            print(f"voicelane inject: --lane-file {args.lane_file}: {exc}", file=sys.stderr)
            return 2
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
                settings=LaneSettings(api_listen=args.sidecar_listen or DEFAULT_API_LISTEN),
                notes=notes,
                lane_file=lane_file,
            )
            for position, document in enumerate(documents, start=1)
        ]
    except SpecError as exc:
        print(f"voicelane inject: --lane {args.lane}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prefix}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:
        print(f"{prefix}: not UTF-8 text: byte {exc.start}", file=sys.stderr)
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
