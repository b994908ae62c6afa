"""Decide what server-side apply does to each of a lane's children: apply, leave, delete or refuse.

Pure logic, no I/O; handlers.py carries the steps out. Every child is applied with server-side apply
under one field manager, FIELD_MANAGER, with force: the operator is the authority over the fields it
sets, and over those only. The API server does the merging: defaults it fills in and fields others
set (an annotation, a label, the replicas of a tier that leaves them to an autoscaler) stay; fields
the operator set once and no longer renders are removed.

No write when nothing changed. Server-side apply has no "diff" verb, and a no-op apply is still a
write request, so the decision is made here, from two facts the live child carries:

1. its `voicelane.dev/spec-hash` annotation (render.py), the digest of the rendering last applied.
   When it differs from the rendering's, the lane (or the renderer) changed: apply.
2. the fields FIELD_MANAGER owns: its Apply entry in metadata.managedFields. Whoever changes or
   removes a field the operator set takes that field over (a `kubectl scale`, an edit, a patch), so
   the operator's set shrinks; writing the same value moves nothing. The set the operator's last
   apply left is remembered per child (`Applied`); a live set unlike it is drift: apply, which
   takes the fields back. With nothing remembered (after a restart, for instance) the handler asks
   the API server what an apply would leave, with a dry run (`dryRun=All`: judged, never stored),
   and compares that instead (Verb.DRY_RUN).

So an unchanged lane costs reads only, plus one dry run per child after an operator restart.

A child's name held by an object another controller owns is left alone (CONFLICT). An unlisted child
is applied at once (CREATE), with no read first: an object in the way that no one controls (it has no
lane label, so the listing missed it) is taken over by the apply, and one that another controller
owns refuses it, because the API server lets an object have one controller reference only
(`is_controller_conflict`). Children the lane controls but no longer renders are deleted.

Upgrading from an operator older than server-side apply: it wrote with JSON merge patches, kept the
shape of what it had set in the annotation LEGACY_APPLIED_FIELDS_ANNOTATION, and the API server filed
those fields under the kubernetes client's default manager name (LEGACY_FIELD_MANAGER, operation
Update). Such a child is rewritten once (UPGRADE, `legacy_upgrade`): the annotation goes, and the old
entry's fields move into FIELD_MANAGER's Apply entry, so a field the old operator set that the
renderer no longer produces is removed by the next apply instead of staying behind for good (the same
migration kubectl makes from client-side to server-side apply).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from voicelane.operator.render import ANNOTATION_SPEC_HASH

FIELD_MANAGER = "voicelane-operator"
LEGACY_APPLIED_FIELDS_ANNOTATION = "voicelane.dev/applied-fields"
LEGACY_FIELD_MANAGER = "OpenAPI-Generator"  # the API server's name for the kubernetes client's writes

Body = Mapping[str, Any]
FieldSet = Mapping[str, Any]  # a managedFields entry's fieldsV1
ChildKey = tuple[str, str, str]  # (kind, namespace, name)


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
    CREATE = "create"  # apply a child that does not exist yet
    APPLY = "apply"  # apply over a live child that differs
    DELETE = "delete"
    KEEP = "keep"
    CONFLICT = "conflict"  # the name is taken by an object another controller owns
    DRY_RUN = "dry-run"  # unknown what our apply would own: ask the API server, then decide
    UPGRADE = "upgrade"  # written by an operator older than server-side apply: migrate it once


@dataclasses.dataclass(frozen=True)
class Step:
    """What to do with one child. `body` is the object to apply, or the merge patch of an upgrade."""

    verb: Verb
    resource: ApiResource
    namespace: str
    name: str
    body: Body | None = None
    changed: tuple[str, ...] = ()  # fields taken back from others, for events and logs
    message: str = ""

    @property
    def title(self) -> str:
        return f"{self.resource.kind}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Applied:
    """What applying one rendering of a child leaves: which object, and the fields FIELD_MANAGER owns.

    The fields are kept as canonical JSON text: the operator remembers this for every child of every
    lane, and a Deployment's field set as nested dicts takes ten times the memory of its text.
    """

    uid: str
    spec_hash: str
    fields_text: str

    @classmethod
    def remember(cls, uid: str, spec_hash: str, fields: FieldSet) -> Applied:
        return cls(uid, spec_hash, _canonical(fields))

    @classmethod
    def of(cls, result: Body, desired: Body) -> Applied:
        """From the answer to an apply (or its dry run) of `desired`."""
        uid = str((result.get("metadata") or {}).get("uid", ""))
        return cls.remember(uid, spec_hash_of(desired), owned_fields(result))

    @property
    def fields(self) -> FieldSet:
        loaded: FieldSet = json.loads(self.fields_text)
        return loaded

    def still_owns(self, live_fields: FieldSet) -> bool:
        return _canonical(live_fields) == self.fields_text


def plan_children(
    desired: Sequence[Body], listed: Iterable[Body], *, owner_uid: str, applied: Mapping[ChildKey, Applied]
) -> list[Step]:
    """Steps for every desired child, then deletions of live children this lane no longer wants.

    `listed` holds the objects found by the lane label; only those this lane controls are pruned.
    `applied` is what the operator's last applies left, by `child_key`.
    """
    listed_by_key = {child_key(obj): obj for obj in listed}
    steps: list[Step] = []
    seen: set[ChildKey] = set()
    for obj in desired:
        key = child_key(obj)
        if key in seen:
            raise ValueError(f"the renderer produced {key[0]}/{key[2]} twice")
        seen.add(key)
        live = listed_by_key.get(key)
        steps.append(plan_child(obj, live, owner_uid=owner_uid, applied=applied.get(key)))
    for key, obj in listed_by_key.items():
        if key not in seen and controller_uid(obj) == owner_uid:
            steps.append(_step(Verb.DELETE, obj, message="no longer wanted"))
    return steps


def plan_child(desired: Body, live: Body | None, *, owner_uid: str, applied: Applied | None) -> Step:
    """What to do with one child whose live state is `live` (None: it does not exist)."""
    if live is None:
        return _step(Verb.CREATE, desired, body=desired)
    owner = controller_uid(live)
    if owner is not None and owner != owner_uid:
        kind, name = desired["kind"], desired["metadata"]["name"]
        return _step(Verb.CONFLICT, desired, message=f"{kind}/{name} exists and is controlled by another owner")
    upgrade = legacy_upgrade(live)
    if upgrade is not None:
        return _step(Verb.UPGRADE, desired, body=upgrade)
    if _annotation(live, ANNOTATION_SPEC_HASH) != spec_hash_of(desired):
        return _step(Verb.APPLY, desired, body=desired)
    uid = str(live["metadata"].get("uid", ""))
    if applied is None or applied.uid != uid or applied.spec_hash != spec_hash_of(desired):
        return _step(Verb.DRY_RUN, desired, body=desired)
    live_fields = owned_fields(live)
    if not applied.still_owns(live_fields):
        return _step(Verb.APPLY, desired, body=desired, changed=field_paths(subtract(applied.fields, live_fields)))
    return _step(Verb.KEEP, desired)


# The API server's validation message for an object given a second controller reference; stable
# since ownerReferences gained the controller flag.
_SECOND_CONTROLLER = "Only one reference can have Controller set to true"


def is_controller_conflict(status: int | None, message: str) -> bool:
    """Whether an apply was refused because another controller already owns the object."""
    return status == 422 and _SECOND_CONTROLLER in message


def legacy_upgrade(live: Body) -> dict[str, Any] | None:
    """The merge patch that migrates a child an older operator wrote (see the module docstring), or None.

    It carries the live resourceVersion, so the API server refuses it if the child changed meanwhile.
    """
    metadata = live.get("metadata") or {}
    if LEGACY_APPLIED_FIELDS_ANNOTATION not in (metadata.get("annotations") or {}):
        return None
    entries: list[Mapping[str, Any]] = list(metadata.get("managedFields") or [])
    legacy = [entry for entry in entries if _is_legacy_entry(entry)]
    ours = [entry for entry in entries if _is_our_apply_entry(entry)]
    fields: FieldSet = {}
    for entry in legacy + ours:
        fields = union(fields, entry.get("fieldsV1") or {})
    fields = subtract(fields, {"f:metadata": {"f:annotations": {f"f:{LEGACY_APPLIED_FIELDS_ANNOTATION}": {}}}})
    kept = [entry for entry in entries if entry not in legacy and entry not in ours]
    api_version = str(live.get("apiVersion", ""))
    merged = {"manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": api_version, "fieldsType": "FieldsV1"}
    return {
        "metadata": {
            "resourceVersion": metadata.get("resourceVersion"),
            "annotations": {LEGACY_APPLIED_FIELDS_ANNOTATION: None},
            "managedFields": [*kept, {**merged, "fieldsV1": fields}],
        }
    }


def owned_fields(obj: Body) -> FieldSet:
    """The fields FIELD_MANAGER's apply owns on `obj` (empty when it owns none)."""
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if _is_our_apply_entry(entry):
            fields: FieldSet = entry.get("fieldsV1") or {}
            return fields
    return {}


def union(left: FieldSet, right: FieldSet) -> dict[str, Any]:
    merged = dict(left)
    for key, value in right.items():
        merged[key] = union(merged[key], value) if key in merged else value
    return merged


def subtract(fields: FieldSet, removed: FieldSet) -> dict[str, Any]:
    """The fields of `fields` not in `removed`; a member whose subfields all go, goes too."""
    rest: dict[str, Any] = {}
    for key, value in fields.items():
        if key not in removed:
            rest[key] = value
        elif value and removed[key]:
            below = subtract(value, removed[key])
            if below and set(below) != {"."}:
                rest[key] = below
    return rest


def field_paths(fields: FieldSet) -> tuple[str, ...]:
    """Readable paths of a fieldsV1 set's members, e.g. `spec.template.spec.containers[name=ollama].env`."""
    return tuple(dict.fromkeys(path.removeprefix(".") for path in _paths(fields, "")))


def _paths(fields: FieldSet, prefix: str) -> list[str]:
    paths: list[str] = []
    for key, value in fields.items():
        if key == ".":  # the member itself, as opposed to its fields
            paths.append(prefix)
            continue
        path = prefix + _path_part(key)
        paths.extend(_paths(value, path) if value else [path])
    return paths


def controller_uid(obj: Body) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def spec_hash_of(obj: Body) -> str:
    return _annotation(obj, ANNOTATION_SPEC_HASH) or ""


def _canonical(fields: FieldSet) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def child_key(obj: Body) -> ChildKey:
    metadata = obj.get("metadata") or {}
    return (str(obj.get("kind", "")), str(metadata.get("namespace") or ""), str(metadata.get("name", "")))


def _step(verb: Verb, obj: Body, *, body: Body | None = None, changed: tuple[str, ...] = (), message: str = "") -> Step:
    _, namespace, name = child_key(obj)
    return Step(verb, resource_of(obj), namespace, name, body=body, changed=changed, message=message)


def _annotation(obj: Body, name: str) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(name)
    return None if value is None else str(value)


def _is_our_apply_entry(entry: Mapping[str, Any]) -> bool:
    return entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply" and not entry.get("subresource")


def _is_legacy_entry(entry: Mapping[str, Any]) -> bool:
    return (
        entry.get("manager") == LEGACY_FIELD_MANAGER
        and entry.get("operation") == "Update"
        and not entry.get("subresource")
    )


def _path_part(key: str) -> str:
    """One fieldsV1 key as a path step: f:name → .name, k:{"name":"x"} → [name=x], v:"a" → [="a"], i:0 → [0]."""
    kind, _, rest = key.partition(":")
    if kind == "f":
        return f".{rest}" if rest else ""
    if kind == "k":
        try:
            keys = json.loads(rest)
        except ValueError:
            return f"[{rest}]"
        return "[" + ",".join(f"{name}={value}" for name, value in sorted(keys.items())) + "]"
    if kind == "v":
        return f"[={rest}]"
    return f"[{rest}]"
