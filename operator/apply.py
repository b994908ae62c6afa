"""Decide how to bring a lane's children from their live state to their desired state.

Pure logic, no I/O: given what the renderer wants and what the API server holds, say for each
child whether to create it, patch it (and with which JSON merge patch), delete it, or leave it.

The patch is three-way, like kubectl's client-side apply. Fields the renderer sets are compared
with the live object, so defaults the API server fills in and fields others own are left alone,
and a re-run with nothing changed writes nothing. Fields the renderer set last time but no longer
wants are removed; which ones those are is kept on the child in the APPLIED_FIELDS annotation (the
shape of the desired object, without its values). Lists are replaced whole when they differ.
"""

from __future__ import annotations

import copy
import dataclasses
import decimal
import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kubernetes.utils.quantity import parse_quantity

LANE_LABEL = "voicelane.dev/lane"
TIER_LABEL = "voicelane.dev/tier"
APPLIED_FIELDS_ANNOTATION = "voicelane.dev/applied-fields"

Body = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ApiResource:
    """One resource type of the Kubernetes API, with the URLs to reach its objects."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def _base(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def collection_path(self, namespace: str | None) -> str:
        if self.namespaced and namespace:
            return f"{self._base()}/namespaces/{namespace}/{self.plural}"
        return f"{self._base()}/{self.plural}"

    def object_path(self, namespace: str | None, name: str, subresource: str | None = None) -> str:
        path = f"{self.collection_path(namespace)}/{name}"
        return f"{path}/{subresource}" if subresource else path


LANE_RESOURCE = ApiResource("voicelane.dev", "v1alpha1", "VoiceLane", "voicelanes")

# Every kind of object the renderer may produce for a lane. The operator lists, watches and
# writes exactly these (the RBAC role is generated from this table).
CHILD_RESOURCES: tuple[ApiResource, ...] = (
    ApiResource("apps", "v1", "Deployment", "deployments"),
    ApiResource("", "v1", "Service", "services"),
    ApiResource("", "v1", "ConfigMap", "configmaps"),
    ApiResource("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ApiResource("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    ApiResource("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
)
_BY_KIND = {(resource.api_version, resource.kind): resource for resource in CHILD_RESOURCES}


class UnknownChildKind(ValueError):
    """The renderer produced an object kind the operator is not set up (nor allowed) to manage."""


def resource_of(obj: Body) -> ApiResource:
    key = (str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    try:
        return _BY_KIND[key]
    except KeyError:
        raise UnknownChildKind(f"no child resource for apiVersion={key[0]!r} kind={key[1]!r}") from None


class Verb(enum.StrEnum):
    CREATE = "create"
    PATCH = "patch"
    DELETE = "delete"
    KEEP = "keep"
    CONFLICT = "conflict"  # the name is taken by an object another controller owns


@dataclasses.dataclass(frozen=True)
class Step:
    """What to do with one child. `body` is the full object to create or the merge patch."""

    verb: Verb
    resource: ApiResource
    namespace: str
    name: str
    body: Body | None = None
    changed: tuple[str, ...] = ()  # dotted paths a patch touches, for events and logs
    message: str = ""

    @property
    def title(self) -> str:
        return f"{self.resource.kind}/{self.name}"


def plan_children(desired: Sequence[Body], live: Iterable[Body], *, owner_uid: str) -> list[Step]:
    """Steps for every desired child, then deletions of live children this lane no longer wants.

    `live` holds the objects found by the lane label; only those this lane controls are pruned.
    """
    live_by_key = {_key(obj): obj for obj in live}
    steps: list[Step] = []
    seen: set[tuple[str, str, str]] = set()
    for obj in desired:
        key = _key(obj)
        if key in seen:
            raise ValueError(f"the renderer produced {key[1]}/{key[2]} twice")
        seen.add(key)
        steps.append(plan_child(obj, live_by_key.get(key), owner_uid=owner_uid))
    for key, obj in live_by_key.items():
        if key not in seen and controller_uid(obj) == owner_uid:
            resource = resource_of(obj)
            steps.append(Step(Verb.DELETE, resource, _namespace(obj), key[2], message="no longer wanted"))
    return steps


def plan_child(desired: Body, live: Body | None, *, owner_uid: str) -> Step:
    resource = resource_of(desired)
    namespace, name = _namespace(desired), str(desired["metadata"]["name"])
    wanted = with_applied_fields(desired)
    if live is None:
        return Step(Verb.CREATE, resource, namespace, name, body=wanted)
    owner = controller_uid(live)
    if owner is not None and owner != owner_uid:
        message = f"{resource.kind}/{name} exists and is controlled by another owner"
        return Step(Verb.CONFLICT, resource, namespace, name, message=message)
    patch = merge_patch(live, wanted)
    if not patch:
        return Step(Verb.KEEP, resource, namespace, name)
    return Step(Verb.PATCH, resource, namespace, name, body=patch, changed=changed_paths(patch))


def with_applied_fields(desired: Body) -> dict[str, Any]:
    """The desired object, without null values (no opinion), recording its shape on itself."""
    wanted: dict[str, Any] = _drop_nulls(desired)
    metadata = wanted.setdefault("metadata", {})
    annotations = dict(metadata.get("annotations") or {})
    annotations.pop(APPLIED_FIELDS_ANNOTATION, None)
    metadata["annotations"] = annotations
    shape = field_shape(wanted)
    annotations[APPLIED_FIELDS_ANNOTATION] = json.dumps(shape, sort_keys=True, separators=(",", ":"))
    return wanted


def field_shape(obj: Body) -> dict[str, Any]:
    """The keys of `obj`, nested as in it, with 0 for every leaf; identity fields left out."""
    shape = _shape(obj)
    metadata = shape.get("metadata")
    if isinstance(metadata, dict):
        for identity in ("name", "namespace"):
            metadata.pop(identity, None)
        annotations = metadata.get("annotations")
        if isinstance(annotations, dict):
            annotations.pop(APPLIED_FIELDS_ANNOTATION, None)
    return shape


def applied_fields(obj: Body) -> Mapping[str, Any]:
    """The shape recorded at the last apply; empty when absent or unreadable."""
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(APPLIED_FIELDS_ANNOTATION)
    if not text:
        return {}
    try:
        shape = json.loads(text)
    except ValueError:
        return {}
    return shape if isinstance(shape, dict) else {}


def merge_patch(live: Body, wanted: Body) -> dict[str, Any]:
    """The JSON merge patch that makes `live` carry every field of `wanted` (empty: nothing to do)."""
    return _diff(live, wanted, applied_fields(live), ())


def covers(live: Any, wanted: Any, path: tuple[str, ...] = ()) -> bool:
    """Whether `live` already carries `wanted`: extra keys in live maps (server defaults) are fine."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            covers(live[key], value, (*path, key)) if key in live else _empty(value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(covers(item, want, path) for item, want in zip(live, wanted, strict=True))
        )
    return _same_scalar(live, wanted, path)


def changed_paths(patch: Body, prefix: str = "") -> tuple[str, ...]:
    paths: list[str] = []
    for key, value in patch.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if path == f"metadata.annotations.{APPLIED_FIELDS_ANNOTATION}":
            continue
        if isinstance(value, Mapping) and value:
            paths.extend(changed_paths(value, path))
        else:
            paths.append(path)
    return tuple(paths)


def controller_uid(obj: Body) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _diff(live: Body, wanted: Body, before: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key, value in wanted.items():
        here = live.get(key, _MISSING)
        if isinstance(value, Mapping) and isinstance(here, Mapping):
            was = before.get(key)
            sub = _diff(here, value, was if isinstance(was, Mapping) else {}, (*path, key))
            if sub:
                patch[key] = sub
        elif here is _MISSING:
            if not _empty(value):  # the API server drops empty maps and lists: no difference
                patch[key] = copy.deepcopy(value)
        elif not covers(here, value, (*path, key)):
            patch[key] = copy.deepcopy(value)
    for key, was in before.items():
        if key in wanted or key not in live:
            continue
        if isinstance(was, Mapping) and isinstance(live[key], Mapping):
            # Remove only what we set: a map we stopped filling may hold others' keys too.
            removals = _removals(live[key], was)
            if removals:
                patch[key] = removals
        else:
            patch[key] = None
    return patch


def _empty(value: Any) -> bool:
    return isinstance(value, Mapping | list) and not value


def _removals(live: Body, was: Mapping[str, Any]) -> dict[str, Any]:
    removals: dict[str, Any] = {}
    for key, shape in was.items():
        if key not in live:
            continue
        if isinstance(shape, Mapping) and isinstance(live[key], Mapping):
            sub = _removals(live[key], shape)
            if sub:
                removals[key] = sub
        else:
            removals[key] = None
    return removals


def _shape(value: Any) -> Any:
    if isinstance(value, Mapping) and value:
        return {key: _shape(item) for key, item in value.items()}
    return 0


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_drop_nulls(item) for item in value]
    return value


def _same_scalar(live: Any, wanted: Any, path: tuple[str, ...]) -> bool:
    if isinstance(live, bool) or isinstance(wanted, bool):
        return live is wanted
    if live == wanted:
        return True
    # The API server writes quantities in canonical form ("0.5" comes back as "500m").
    if _is_quantity_path(path):
        left, right = _quantity(live), _quantity(wanted)
        return left is not None and left == right
    return False


def _is_quantity_path(path: tuple[str, ...]) -> bool:
    return "resources" in path or (bool(path) and path[-1] in ("sizeLimit", "storage"))


def _quantity(value: Any) -> decimal.Decimal | None:
    try:
        return parse_quantity(value)
    except ValueError:
        return None


def _key(obj: Body) -> tuple[str, str, str]:
    return (_namespace(obj), str(obj.get("kind", "")), str((obj.get("metadata") or {}).get("name", "")))


def _namespace(obj: Body) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


class _Missing:
    pass


_MISSING: Any = _Missing()
