"""A Kubernetes API server emulator for the operator's tests, built on kmock's KubernetesEmulator.

kmock 0.8 keeps objects in memory and serves discovery, lists, watches and writes, but a real
operator (kopf) and the real `kubectl` need more of the API server's contract than it keeps. This
subclass supplies exactly that and no more:

- every write stamps `resourceVersion` (one cluster-wide counter), `uid`, `creationTimestamp` and,
  for resources with a status subresource, `generation`; a create answers 201; an unchanged write
  is a no-op that bumps nothing (kmock 0.8 stamps none of these and answers 200);
- the namespace comes from the URL, `generateName` is honoured, and the core paths
  `/api/v1/namespaces[/NAME[/status]]` parse (kmock 0.8's path parser fails on them);
- merge, JSON (with `test`, as kopf's finalizer patches use), strategic-merge and apply patches,
  replace (PUT), and the status subresource's split of writes;
- lists carry `kind`, `apiVersion` and `resourceVersion` (kmock 0.8: none), and honour label and
  field selectors;
- watches resume from a `resourceVersion` (kmock 0.8 replays every object on each connection),
  answer 410 Gone once it has left the change log, honour selectors and `timeoutSeconds`, stream
  as application/json (client-go refuses kmock's octet-stream), and notice clients that went away;
- errors are `Status` objects with the real reasons (NotFound, AlreadyExists, Conflict, Invalid…);
- finalizers, garbage collection of dependents whose owners are all gone, namespace deletion;
- an applied CRD registers its resource for discovery; subresources are listed without their
  parent's short names (kmock 0.8 repeats them, which makes `kubectl get ns` ambiguous);
- requests are routed straight to the handlers: kmock 0.8 matches each request against every
  reaction by scanning every request it has recorded, which costs more with each request (over
  200 ms per request after a few thousand). Reactions a test adds still go through kmock.

Not emulated: protobuf and CBOR bodies (answered 415; `kubectl create <generator>` sends
protobuf, so tests use `kubectl apply -f`), field ownership of server-side apply (an apply patch
merges like a strategic merge patch), OpenAPI documents (so kubectl needs `--validate=false`),
schema validation and defaulting of custom resources, and Table output (`kubectl get` shows names
and ages only).

Test controls live under `/_emulator/` (see `ControlApi`): a simulated Deployment controller
(mark Deployments rolled out and ready on demand), fault injection (error statuses, stalls,
dropped connections, dropped watch streams) and counts of the verbs and resources used.

Run it as a process: `python -m tests.support.kube_emulator --listen 127.0.0.1:PORT
--kubeconfig-out PATH`; the kubeconfig it writes points `kubectl` and the operator at it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import copy
import dataclasses
import datetime
import inspect
import itertools
import json
import logging
import random
import re
import signal
import string
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import rendering as kmock_rendering

logger = logging.getLogger("voicelane.kube_emulator")

ObjectKey = tuple[kmock.resource, str | None, str]
Body = dict[str, Any]

ALL_VERBS = frozenset({"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"})

# Resources served from the start: what the operator and its children use, plus the CRD and
# namespace resources that kopf and kubectl look for. Applied CRDs add their own.
BUILTIN_RESOURCES: dict[str, kmock.ResourceInfo] = {
    "v1/namespaces": kmock.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, shortnames={"ns"}, subresources={"status"}
    ),
    "v1/events": kmock.ResourceInfo(kind="Event", singular="event", namespaced=True, shortnames={"ev"}),
    "v1/services": kmock.ResourceInfo(
        kind="Service", singular="service", namespaced=True, shortnames={"svc"}, subresources={"status"}
    ),
    "v1/configmaps": kmock.ResourceInfo(kind="ConfigMap", singular="configmap", namespaced=True, shortnames={"cm"}),
    # kopf finds the resource of the sidecar-injection webhook's admission handler by discovery.
    "v1/pods": kmock.ResourceInfo(
        kind="Pod", singular="pod", namespaced=True, shortnames={"po"}, subresources={"status"}
    ),
    "v1/serviceaccounts": kmock.ResourceInfo(
        kind="ServiceAccount", singular="serviceaccount", namespaced=True, shortnames={"sa"}
    ),
    "v1/persistentvolumeclaims": kmock.ResourceInfo(
        kind="PersistentVolumeClaim",
        singular="persistentvolumeclaim",
        namespaced=True,
        shortnames={"pvc"},
        subresources={"status"},
    ),
    "apps/v1/deployments": kmock.ResourceInfo(
        kind="Deployment",
        singular="deployment",
        namespaced=True,
        shortnames={"deploy"},
        categories={"all"},
        subresources={"status"},
    ),
    "policy/v1/poddisruptionbudgets": kmock.ResourceInfo(
        kind="PodDisruptionBudget",
        singular="poddisruptionbudget",
        namespaced=True,
        shortnames={"pdb"},
        subresources={"status"},
    ),
    "networking.k8s.io/v1/networkpolicies": kmock.ResourceInfo(
        kind="NetworkPolicy", singular="networkpolicy", namespaced=True, shortnames={"netpol"}
    ),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition",
        singular="customresourcedefinition",
        namespaced=False,
        shortnames={"crd", "crds"},
        subresources={"status"},
    ),
    "voicelane.dev/v1alpha1/voicelanes": kmock.ResourceInfo(
        kind="VoiceLane",
        singular="voicelane",
        namespaced=True,
        shortnames={"vl"},
        categories={"voice"},
        subresources={"status"},
    ),
}
INITIAL_NAMESPACES = ("default", "kube-system")
RECENT_REQUESTS = 32
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
NAMESPACES = kmock.resource("", "v1", "namespaces")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")

# Strategic merge patches merge these lists item by item on the given key (the patchMergeKey of
# the Kubernetes types); every other list is replaced, as in a JSON merge patch.
STRATEGIC_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "conditions": "type",
}

STATUS_REASONS: dict[int, str] = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """An API-level refusal, answered as a Kubernetes `Status` object (never a traceback)."""

    def __init__(self, code: int, message: str, *, reason: str | None = None, details: Body | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason or STATUS_REASONS.get(code, "Unknown")
        self.message = message
        self.details = details or {}

    def status(self) -> Body:
        return status_body(self.code, self.reason, self.message, self.details)


def status_body(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> Body:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": dict(details or {}),
        "code": code,
    }


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- URL parsing -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ApiPath:
    group: str
    version: str | None
    namespace: str | None
    plural: str | None
    name: str | None
    subresource: str | None


def parse_api_path(path: str) -> ApiPath | None:
    """Split an API URL path; None for paths outside /api and /apis (discovery roots included)."""
    parts = [part for part in path.split("/") if part]
    version: str | None
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 2 and parts[0] == "apis":
        group, version, rest = parts[1], (parts[2] if len(parts) >= 3 else None), parts[3:]
    else:
        return None
    namespace = None
    # namespaces/NAME/status and /finalize address the namespace itself, not a resource inside it.
    if len(rest) >= 3 and rest[0] == "namespaces" and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return ApiPath(group, version, namespace, plural, name, subresource)


def request_verb(method: str, name: str | None, params: Mapping[str, str]) -> str:
    """The RBAC verb of an API request."""
    method = method.upper()
    if method == "GET":
        if params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if name else "list"
    return {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }.get(method, method.lower())


# --- selectors ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.operator:
            case "=":
                return present and value in self.values
            case "!=":
                return not present or value not in self.values
            case "in":
                return present and value in self.values
            case "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case _:
                return not present


_SET_TERM = re.compile(r"^(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQUALITY_TERM = re.compile(r"^(?P<key>[^\s!=(),]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^\s!=(),]*)$")
_KEY_TERM = re.compile(r"^(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)$")


def _split_terms(text: str) -> list[str]:
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current.append(char)
    terms.append("".join(current).strip())
    return [term for term in terms if term]


def parse_label_selector(text: str) -> list[LabelRequirement]:
    requirements = []
    for term in _split_terms(text):
        if match := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
            requirements.append(LabelRequirement(match["key"], match["op"], values))
        elif match := _EQUALITY_TERM.match(term):
            operator = "!=" if match["op"] == "!=" else "="
            requirements.append(LabelRequirement(match["key"], operator, frozenset({match["value"]})))
        elif match := _KEY_TERM.match(term):
            requirements.append(LabelRequirement(match["key"], "!" if match["neg"] else "exists"))
        else:
            raise ApiError(400, f"unable to parse requirement: {term!r}")
    return requirements


def parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    """Field selector terms as (dotted path, wanted equal, value)."""
    terms = []
    for term in _split_terms(text):
        match = re.match(r"^([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*)$", term)
        if not match:
            raise ApiError(400, f"invalid field selector: {term!r}")
        terms.append((match[1], match[2] != "!=", match[3]))
    return terms


def field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return "" if value is None else str(value)


def selected(obj: Mapping[str, Any], labels: list[LabelRequirement], fields: list[tuple[str, bool, str]]) -> bool:
    object_labels = obj.get("metadata", {}).get("labels") or {}
    if not all(requirement.matches(object_labels) for requirement in labels):
        return False
    return all((field_value(obj, path) == value) == equal for path, equal, value in fields)


# --- patches -----------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge patch, for the list fields in STRATEGIC_MERGE_KEYS.

    Directives: `$patch: replace|delete` in a map or list item, `$deleteFromPrimitiveList/F`;
    `$setElementOrder/F` and `$retainKeys` are accepted and ignored (order and key pruning).
    """
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    plain = {key: value for key, value in patch.items() if not key.startswith("$")}
    if directive == "replace":
        return copy.deepcopy(plain)
    if directive == "delete":
        return None
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field) or [] if item not in value]
    for key, value in plain.items():
        current = result.get(key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in STRATEGIC_MERGE_KEYS and isinstance(current, list):
            result[key] = _merge_list_by_key(current, value, STRATEGIC_MERGE_KEYS[key])
        elif isinstance(value, Mapping):
            merged = strategic_merge_patch(current, value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_list_by_key(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    # Service ports merge on "port", container ports on "containerPort": pick what the items carry.
    if merge_key == "name" and patch and all(isinstance(i, Mapping) and "name" not in i for i in patch):
        return copy.deepcopy(patch)
    result = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, Mapping):
            result.append(copy.deepcopy(item))
            continue
        index = next(
            (
                i
                for i, existing in enumerate(result)
                if isinstance(existing, Mapping) and existing.get(merge_key) == item.get(merge_key)
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append({k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("$")})
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def apply_patch(current: Body, patch_body: Any, content_type: str) -> Body:
    content_type = content_type.split(";")[0].strip().lower()
    if content_type == "application/json-patch+json":
        if not isinstance(patch_body, list):
            raise ApiError(400, "a JSON patch must be a list of operations")
        try:
            result = jsonpatch.apply_patch(copy.deepcopy(current), patch_body)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise ApiError(422, f"the server rejected our request due to an error in our request: {exc}") from exc
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise ApiError(422, f"invalid JSON patch: {exc}") from exc
    elif content_type == "application/merge-patch+json":
        result = merge_patch(current, patch_body)
    elif content_type in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
        result = strategic_merge_patch(current, patch_body)
    else:
        raise ApiError(
            415,
            f"the body of the request was in an unknown format - accepted media types include: "
            f"application/json-patch+json, application/merge-patch+json, "
            f"application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type})",
        )
    if not isinstance(result, dict):
        raise ApiError(422, "the patch does not leave an object")
    return result


# --- faults ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Fault:
    """A misbehaviour injected into matching API requests (None fields match anything).

    `status` answers with that error code instead of serving (410 on a watch: an expired-version
    ERROR event in the stream, as API servers send it); `delay_s` stalls first (a
    client with a shorter timeout sees a timeout); `disconnect` closes the connection with no
    answer. A stalled write whose client went away is not carried out. `times` counts down the
    requests it hits; None keeps it until cleared.
    """

    verb: str | None = None
    resource: str | None = None  # a plural ("deployments") or "group/version/plural"
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None
    status: int | None = None
    message: str | None = None
    delay_s: float = 0.0
    disconnect: bool = False
    times: int | None = 1
    id: int = 0
    hits: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        allowed = {f.name for f in dataclasses.fields(cls)} - {"id", "hits"}
        unknown = set(data) - allowed
        if unknown:
            raise ApiError(400, f"unknown fault fields: {sorted(unknown)}")
        fault = cls(**dict(data))
        if fault.status is not None and not 400 <= int(fault.status) <= 599:
            raise ApiError(400, "a fault status must be an HTTP error code (400-599)")
        return fault

    def matches(self, verb: str, path: ApiPath) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.verb is not None and self.verb != verb:
            return False
        if self.resource is not None:
            full = f"{path.group}/{path.version}/{path.plural}".lstrip("/")
            if self.resource not in (path.plural, full):
                return False
        return (
            (self.subresource is None or self.subresource == path.subresource)
            and (self.namespace is None or self.namespace == path.namespace)
            and (self.name is None or self.name == path.name)
        )


# --- the emulator ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Change:
    """One entry of the change log that watches replay from."""

    rv: int
    resource: kmock.resource
    event: Body


_DROP = object()  # put into a watcher's queue: end that watch stream now


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the API server contract kopf and kubectl rely on."""

    change_log_size: int = 20_000
    auto_ready_delay_s: float | None = None  # simulate the Deployment controller on every change
    faults: list[Fault] = attrs.field(factory=list)
    _rv: int = attrs.field(default=1000, init=False)
    _changes: collections.deque[Change] = attrs.field(init=False)
    _forgotten_rv: int = attrs.field(default=0, init=False)  # the newest rv evicted from the log
    _watchers: set[asyncio.Queue[Any]] = attrs.field(factory=set, init=False)
    _usage: collections.Counter[tuple[str, str, str, str]] = attrs.field(factory=collections.Counter, init=False)
    _fault_ids: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _background: set[asyncio.Task[Any]] = attrs.field(factory=set, init=False)
    # Indexes of the live objects, kept by _store/_remove, so that lists, garbage collection and
    # namespace deletion do not scan kmock's store (which also keeps every deleted object).
    _by_resource: dict[kmock.resource, dict[ObjectKey, Body]] = attrs.field(factory=dict, init=False)
    _uids: dict[str, ObjectKey] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[ObjectKey]] = attrs.field(factory=dict, init=False)
    _per_namespace: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _gone_uids: list[str] = attrs.field(factory=list, init=False)  # removed owners, for the collector
    _control: ControlApi | None = attrs.field(default=None, init=False)
    _own_reactions: int = attrs.field(default=0, init=False)
    _printer_columns: dict[kmock.resource, list[Body]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._changes = collections.deque(maxlen=self.change_log_size)
        # kmock routes PUT nowhere; a replace is an update of the whole object.
        self.fallback[kmock.method.PUT] << self._serve_replace
        for key, info in BUILTIN_RESOURCES.items():
            self.resources[key] = attrs.evolve(info, verbs=set(ALL_VERBS))
        for namespace in INITIAL_NAMESPACES:
            self._store(
                (NAMESPACES, None, namespace),
                self._stamp_new(
                    NAMESPACES,
                    None,
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                ),
            )
        self._control = ControlApi(self)
        self._control.install()
        self._own_reactions = len(self._payloads)

    # -- request entry: kmock 0.8's parser fails on /api/v1/namespaces, so parse here -------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        await raw_request.read()
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            request = await self._parse_request(raw_request)
            # kmock keeps every request for assertions, and matching a request to a reaction scans
            # them all: unbounded, each request costs more than the last. Keep a short tail: it
            # still holds every request between its arrival and its dispatch.
            self._requests.append(request)
            if len(self._requests) > 2 * RECENT_REQUESTS:
                del self._requests[:-RECENT_REQUESTS]
            try:
                return await self._handle(request)
            except kmock_rendering.StreamingError as exc:
                raw_response = exc.args[0]
                raise exc.__cause__ or exc from None
        except ApiError as exc:
            return aiohttp.web.json_response(exc.status(), status=exc.code)
        except Exception as exc:
            logger.exception("emulator failure on %s %s", raw_request.method, raw_request.path)
            if raw_response is not None and raw_response.prepared:
                await self._stream_error(exc, raw_response)
                await raw_response.write_eof()
                return raw_response
            return await self._render_error(exc)

    async def _parse_request(self, raw: aiohttp.web.BaseRequest) -> kmock.Request:
        body = await raw.read()
        if "protobuf" in (raw.content_type or "") or "cbor" in (raw.content_type or ""):
            # Binary encodings are not emulated; client-go falls back to JSON on a 415.
            raise ApiError(415, f"the body of the request was in an unknown format: {raw.content_type}")
        text = body.decode("utf-8", errors="replace")
        data: Any = None
        if body:
            try:
                data = json.loads(text)
            except ValueError:
                if "yaml" in (raw.content_type or ""):
                    try:
                        data = yaml.safe_load(text)
                    except yaml.YAMLError as exc:
                        raise ApiError(400, f"invalid YAML body: {exc}") from exc
        path = parse_api_path(raw.path)
        params = dict(raw.query)
        resource = None
        action = None
        if path is not None:
            resource = kmock.resource(group=path.group, version=path.version, plural=path.plural)
            verb = request_verb(raw.method, path.name, params) if path.plural else None
            action = {
                "watch": kmock.action.WATCH,
                "get": kmock.action.FETCH,
                "list": kmock.action.LIST,
                "create": kmock.action.CREATE,
                "patch": kmock.action.UPDATE,
                "delete": kmock.action.DELETE,
            }.get(verb or "")
        return kmock.Request(
            raw_request=raw,
            url=raw.url,
            method=raw.method,
            params=params,
            headers=dict(raw.headers),
            cookies=dict(raw.cookies),
            body=body,
            text=text,
            data=data,
            action=action,
            resource=resource,
            namespace=path.namespace if path else None,
            name=path.name if path else None,
            subresource=path.subresource if path else None,
        )

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        logger.log(
            logging.DEBUG if request.method.value == "GET" else logging.INFO,
            "%s %s",
            request.method.value,
            request.url.path_qs,
        )
        path = parse_api_path(request.url.path)
        if path is not None and path.plural:
            verb = request_verb(request.method.value, path.name, request.params)
            plural = f"{path.plural}/{path.subresource}" if path.subresource else path.plural
            # Who asked, by the User-Agent's product: kubectl, kopf, OpenAPI-Generator (the kubernetes client).
            agent = (request.headers.get("User-Agent") or "unknown").split("/", 1)[0]
            self._usage[(agent, verb, path.group, plural)] += 1
            fault = self._take_fault(verb, path)
            if fault is not None:
                return await self._inject(fault, request)
        return await self._dispatch(request)

    async def _dispatch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if len(self._payloads) > self._own_reactions:
            # A test added reactions: let kmock match them (slow: it filters every reaction). This
            # skips kmock's own stateful _handle: the state changes happen in the _serve_* reactions,
            # so that an intercepting reaction (or an injected fault) prevents them.
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        # Otherwise route directly to what those reactions would pick: same answers, no filtering.
        payload = await self._route(request)
        response: aiohttp.web.StreamResponse = await kmock.Response(payload=payload)(request)
        return response

    async def _route(self, request: kmock.Request) -> kmock_rendering.Payload:
        method, url_path = request.method.value, request.url.path.rstrip("/") or "/"
        control = self._control.route(method, url_path) if self._control is not None else None
        if control is not None:
            return await control(request)
        path = parse_api_path(url_path)
        if path is None or not path.plural:
            if method != "GET":
                raise ApiError(405, f"{method} is not allowed on {url_path}")
            if url_path == "/":
                return await self._serve_root(request)
            if url_path == "/version":
                return await self._serve_server_version(request)
            if url_path == "/api":
                return await self._serve_api(request)
            if url_path == "/apis":
                return await self._serve_apis(request)
            if path is not None and path.version is None:
                return await self._serve_group(request)
            if path is not None:
                return await self._serve_version(request)
            raise ApiError(404, "the server could not find the requested resource")
        verb = request_verb(method, path.name, request.params)
        serve = {
            "watch": self._serve_watch,
            "get": self._serve_fetch,
            "list": self._serve_list,
            "create": self._serve_create,
            "patch": self._serve_update,
            "update": self._serve_replace,
            "delete": self._serve_delete,
        }.get(verb)
        if serve is None:
            raise ApiError(405, f"{verb} is not supported by the emulator")
        result = serve(request)
        return await result if asyncio.iscoroutine(result) else result

    # -- faults -----------------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        fault.id = next(self._fault_ids)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def _take_fault(self, verb: str, path: ApiPath) -> Fault | None:
        for fault in self.faults:
            if fault.matches(verb, path):
                fault.hits += 1
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    async def _inject(self, fault: Fault, request: kmock.Request) -> aiohttp.web.StreamResponse:
        logger.info("fault %d on %s %s", fault.id, request.method.value, request.url.path_qs)
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        raw = request._raw_request
        transport = raw.transport if raw is not None else None
        if fault.disconnect or transport is None or transport.is_closing():
            if transport is not None:
                transport.close()
            return aiohttp.web.Response(status=499)
        if fault.status is None:  # a stall only: then serve as usual
            return await self._dispatch(request)
        code = int(fault.status)
        message = fault.message or f"injected fault {fault.id}"
        headers = {"Retry-After": "1"} if code in (429, 503) else None
        body = status_body(code, STATUS_REASONS.get(code, "InternalError"), message)
        if code == 410 and request.params.get("watch") in ("true", "1"):
            # An API server says "resourceVersion too old" to a watch inside the stream, not as
            # the HTTP status: clients (kopf among them) relist on that event.
            expired = kmock.Response(
                headers={"Content-Type": "application/json"}, payload=({"type": "ERROR", "object": body},)
            )
            response: aiohttp.web.StreamResponse = await expired(request)
            return response
        return aiohttp.web.json_response(body, status=code, headers=headers)

    async def drop_watches(self) -> int:
        """End every open watch stream, as an API server restart or a load balancer would."""
        for queue in self._watchers:
            queue.put_nowait(_DROP)
        return len(self._watchers)

    def usage(self) -> list[Body]:
        return [
            {"agent": agent, "verb": verb, "group": group, "resource": resource, "count": count}
            for (agent, verb, group, resource), count in sorted(self._usage.items())
        ]

    # -- the store --------------------------------------------------------------------------------

    def _info(self, resource: kmock.resource | None) -> kmock.ResourceInfo:
        if resource is None or resource.plural is None or resource not in self.resources:
            raise ApiError(404, "the server could not find the requested resource")
        return self.resources[resource]

    def _key(self, resource: kmock.resource | None, namespace: str | None, name: str) -> ObjectKey:
        info = self._info(resource)
        assert resource is not None  # _info() refuses None
        return (resource, namespace if info.namespaced else None, name)

    def _get(self, key: ObjectKey) -> Body | None:
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else obj.raw

    def _require(self, key: ObjectKey) -> Body:
        body = self._get(key)
        if body is None:
            resource, _, name = key
            raise ApiError(
                404,
                f'{_qualified(resource)} "{name}" not found',
                details={"name": name, "group": resource.group, "kind": resource.plural},
            )
        return body

    def _live(self, resource: kmock.resource | None = None) -> Iterator[tuple[ObjectKey, Body]]:
        indexes = [self._by_resource.get(resource, {})] if resource is not None else list(self._by_resource.values())
        for index in indexes:
            yield from list(index.items())

    def _store(self, key: ObjectKey, body: Body) -> None:
        self._unindex(key)
        if key in self._objects:
            history = self._objects[key].history
            history.append(body)
            if len(history) > 16:  # kmock keeps every version for assertions; bound it
                del history[:-8]
        else:
            self._objects[key] = body
        self._by_resource.setdefault(key[0], {})[key] = body
        self._uids[body["metadata"]["uid"]] = key
        for ref in body["metadata"].get("ownerReferences") or []:
            self._dependents.setdefault(str(ref.get("uid")), set()).add(key)
        if key[1] is not None:
            self._per_namespace[key[1]] += 1

    def _unindex(self, key: ObjectKey) -> None:
        body = self._by_resource.get(key[0], {}).pop(key, None)
        if body is None:
            return
        self._uids.pop(body["metadata"]["uid"], None)
        for ref in body["metadata"].get("ownerReferences") or []:
            dependents = self._dependents.get(str(ref.get("uid")))
            if dependents is not None:
                dependents.discard(key)
                if not dependents:
                    del self._dependents[str(ref.get("uid"))]
        if key[1] is not None:
            self._per_namespace[key[1]] -= 1
            if self._per_namespace[key[1]] <= 0:
                del self._per_namespace[key[1]]

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _publish(self, resource: kmock.resource, event_type: str, body: Body) -> None:
        rv = int(body["metadata"]["resourceVersion"])
        if len(self._changes) == self._changes.maxlen:
            self._forgotten_rv = self._changes[0].rv
        change = Change(rv, resource, {"type": event_type, "object": body})
        self._changes.append(change)
        for queue in self._watchers:
            queue.put_nowait(change)

    def _stamp_new(self, resource: kmock.resource, namespace: str | None, body: Body) -> Body:
        info = self._info(resource)
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise ApiError(422, "metadata.name: Required value: name or generateName is required")
            meta["name"] = prefix + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        if info.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        body.setdefault("apiVersion", f"{resource.group}/{resource.version}".lstrip("/"))
        body.setdefault("kind", info.kind)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["resourceVersion"] = self._next_rv()
        for server_owned in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields"):
            meta.pop(server_owned, None)
        if "status" in info.subresources:
            meta["generation"] = 1
            body.pop("status", None)
        if resource == NAMESPACES:
            body["status"] = {"phase": "Active"}
        return body

    # -- reactions: reads -------------------------------------------------------------------------

    async def _serve_fetch(self, request: kmock.Request) -> kmock_rendering.Payload:
        assert request.name is not None
        async with self._lock:
            key = self._key(request.resource, request.namespace, request.name)
            if request.subresource not in (None, "status"):
                raise ApiError(404, "the server could not find the requested resource")
            found = self._require(key)
            rv = str(self._rv)
        assert request.resource is not None
        columns = self._printer_columns.get(request.resource)
        return as_table([found], columns, rv) if columns and _wants_table(request) else found

    async def _serve_list(self, request: kmock.Request) -> kmock_rendering.Payload:
        info = self._info(request.resource)
        labels = parse_label_selector(request.params.get("labelSelector", ""))
        fields = parse_field_selector(request.params.get("fieldSelector", ""))
        async with self._lock:
            items = [
                body
                for (resource, namespace, _), body in self._live(request.resource)
                if request.namespace is None or namespace == request.namespace
                if selected(body, labels, fields)
            ]
            rv = str(self._rv)
        items.sort(key=lambda body: (body["metadata"].get("namespace") or "", body["metadata"]["name"]))
        assert request.resource is not None
        columns = self._printer_columns.get(request.resource)
        if columns and _wants_table(request):
            return as_table(items, columns, rv)
        return {
            "apiVersion": f"{request.resource.group}/{request.resource.version}".lstrip("/"),
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    def _serve_watch(self, request: kmock.Request) -> kmock_rendering.Payload:  # type: ignore[override]
        # kmock streams with aiohttp's default octet-stream type; client-go only decodes JSON.
        return kmock.Response(headers={"Content-Type": "application/json"}, payload=self._watch_events(request))

    async def _watch_events(self, request: kmock.Request) -> AsyncIterator[kmock_rendering.Payload]:
        self._info(request.resource)
        labels = parse_label_selector(request.params.get("labelSelector", ""))
        fields = parse_field_selector(request.params.get("fieldSelector", ""))
        since_text = request.params.get("resourceVersion", "")
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        bookmarks = request.params.get("allowWatchBookmarks") in ("true", "1")
        initial_bookmark = request.params.get("sendInitialEvents") in ("true", "1")

        def wanted(resource: kmock.resource, body: Body) -> bool:
            namespace = body.get("metadata", {}).get("namespace")
            return (
                resource == request.resource
                and (request.namespace is None or namespace == request.namespace)
                and selected(body, labels, fields)
            )

        queue: asyncio.Queue[Any] = asyncio.Queue()
        async with self._lock:
            last_rv = self._rv
            if since_text in ("", "0") or initial_bookmark:
                backlog = [
                    {"type": "ADDED", "object": body}
                    for (resource, _, _), body in self._live(request.resource)
                    if wanted(resource, body)
                ]
            else:
                try:
                    since = int(since_text)
                except ValueError:
                    raise ApiError(400, f"invalid resourceVersion: {since_text!r}") from None
                if since < self._forgotten_rv:
                    backlog = [
                        {
                            "type": "ERROR",
                            "object": status_body(410, "Expired", f"too old resource version: {since}"),
                        }
                    ]
                else:
                    backlog = [c.event for c in self._changes if c.rv > since and wanted(c.resource, c.event["object"])]
            self._watchers.add(queue)

        # kmock sends the headers with the first chunk; an empty one opens the stream at once.
        yield b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            for event in backlog:
                yield event
                if event["type"] == "ERROR":
                    return
            if initial_bookmark:
                yield self._bookmark(request, last_rv, initial_events_end=True)
            while True:
                remaining = 1.0 if deadline is None else min(1.0, deadline - loop.time())
                if remaining <= 0:
                    return
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    # Idle: notice a client that went away, so its queue does not grow forever.
                    raw = request._raw_request
                    if raw is None or raw.transport is None or raw.transport.is_closing():
                        return
                    continue
                if item is _DROP:
                    return
                if item.rv > last_rv and wanted(item.resource, item.event["object"]):
                    last_rv = item.rv
                    yield item.event
                elif bookmarks and item.rv > last_rv:
                    last_rv = item.rv
        finally:
            self._watchers.discard(queue)

    def _bookmark(self, request: kmock.Request, rv: int, *, initial_events_end: bool = False) -> Body:
        assert request.resource is not None
        info = self._info(request.resource)
        annotations = {"k8s.io/initial-events-end": "true"} if initial_events_end else {}
        return {
            "type": "BOOKMARK",
            "object": {
                "apiVersion": f"{request.resource.group}/{request.resource.version}".lstrip("/"),
                "kind": info.kind,
                "metadata": {"resourceVersion": str(rv), "annotations": annotations},
            },
        }

    # -- reactions: writes ------------------------------------------------------------------------

    async def _serve_create(self, request: kmock.Request) -> kmock_rendering.Payload:
        if not isinstance(request.data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        if request.subresource:
            raise ApiError(405, f"the server does not allow this method on {request.subresource}")
        async with self._lock:
            body = self._create(request.resource, request.namespace, request.data, dry_run=_dry_run(request))
        return kmock.Response(status=201, payload=body)

    def _create(
        self, resource: kmock.resource | None, url_namespace: str | None, data: Body, *, dry_run: bool = False
    ) -> Body:
        info = self._info(resource)
        assert resource is not None
        body_namespace = (data.get("metadata") or {}).get("namespace")
        if info.namespaced:
            if url_namespace and body_namespace and url_namespace != body_namespace:
                raise ApiError(
                    400,
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            namespace = url_namespace or body_namespace or "default"
            self._require_active_namespace(namespace)
        else:
            namespace = None
        body = self._stamp_new(resource, namespace, data)
        key = (resource, namespace, body["metadata"]["name"])
        if self._get(key) is not None:
            raise ApiError(
                409,
                f'{_qualified(resource)} "{key[2]}" already exists',
                reason="AlreadyExists",
                details={"name": key[2], "group": resource.group, "kind": resource.plural},
            )
        if dry_run:
            return body
        self._store(key, body)
        self._publish(resource, "ADDED", body)
        if resource == CRDS:
            self._register_crd(body)
        if resource == DEPLOYMENTS:
            self._schedule_auto_ready(key)
        self._collect_garbage(created=key)
        return body

    async def _serve_update(self, request: kmock.Request) -> kmock_rendering.Payload:
        assert request.name is not None
        raw = request._raw_request
        content_type = (raw.content_type if raw is not None else request.headers.get("Content-Type")) or ""
        async with self._lock:
            key = self._key(request.resource, request.namespace, request.name)
            current = self._get(key)
            if current is None and content_type.startswith("application/apply-patch"):
                # Server-side apply creates what is missing (field ownership is not emulated).
                if not isinstance(request.data, dict):
                    raise ApiError(400, "an apply patch must be an object")
                data = dict(request.data, metadata=dict(request.data.get("metadata") or {}, name=request.name))
                body = self._create(request.resource, request.namespace, data, dry_run=_dry_run(request))
                return kmock.Response(status=201, payload=body)
            current = self._require(key)
            patched = apply_patch(current, request.data, content_type)
            return self._update(key, current, patched, subresource=request.subresource, dry_run=_dry_run(request))

    async def _serve_replace(self, request: kmock.Request) -> kmock_rendering.Payload:
        if request.name is None or request.resource is None or request.resource.plural is None:
            raise ApiError(405, "PUT needs an object URL")
        if not isinstance(request.data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        async with self._lock:
            key = self._key(request.resource, request.namespace, request.name)
            current = self._require(key)
            return self._update(
                key,
                current,
                copy.deepcopy(request.data),
                subresource=request.subresource,
                dry_run=_dry_run(request),
            )

    def _update(
        self, key: ObjectKey, current: Body, new: Body, *, subresource: str | None, dry_run: bool = False
    ) -> Body:
        resource, _, name = key
        info = self._info(resource)
        if subresource not in (None, "status"):
            raise ApiError(404, "the server could not find the requested resource")
        wanted_rv = (new.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {_qualified(resource)} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                details={"name": name, "group": resource.group, "kind": resource.plural},
            )
        has_status = "status" in info.subresources
        if subresource == "status":
            # The status subresource writes the status only.
            result = copy.deepcopy(current)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = copy.deepcopy(new)  # patches share unchanged branches with the stored version
            if has_status:  # ...and the main resource never writes the status.
                if "status" in current:
                    result["status"] = copy.deepcopy(current["status"])
                else:
                    result.pop("status", None)
        meta = result.setdefault("metadata", {})
        for immutable in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation"):
            if immutable in current["metadata"]:
                meta[immutable] = current["metadata"][immutable]
            else:
                meta.pop(immutable, None)
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        result["apiVersion"] = current.get("apiVersion")
        result["kind"] = current.get("kind")
        if current.get("metadata", {}).get("deletionTimestamp") and len(meta.get("finalizers") or []) > len(
            current["metadata"].get("finalizers") or []
        ):
            raise ApiError(422, "no new finalizers can be added if the object is being deleted", reason="Forbidden")
        if result == current:
            return current  # a no-op write changes nothing, not even the resourceVersion
        if has_status and _without(result, "metadata", "status") != _without(current, "metadata", "status"):
            meta["generation"] = int(current["metadata"].get("generation") or 0) + 1
        meta["resourceVersion"] = self._next_rv()
        if dry_run:
            return result
        self._store(key, result)
        self._publish(resource, "MODIFIED", result)
        if resource == CRDS:
            self._register_crd(result)
        if resource == DEPLOYMENTS and meta.get("generation") != current["metadata"].get("generation"):
            self._schedule_auto_ready(key)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(key)
            self._collect_garbage()
            self._finish_namespaces()
        return result

    async def _serve_delete(self, request: kmock.Request) -> kmock_rendering.Payload:
        assert request.name is not None
        options = request.data if isinstance(request.data, dict) else {}
        async with self._lock:
            key = self._key(request.resource, request.namespace, request.name)
            current = self._require(key)
            preconditions = options.get("preconditions") or {}
            for field in ("uid", "resourceVersion"):
                if preconditions.get(field) and preconditions[field] != current["metadata"].get(field):
                    raise ApiError(
                        409,
                        f"Precondition failed: {field} in precondition: {preconditions[field]}, "
                        f"{field} in object meta: {current['metadata'].get(field)}",
                    )
            if _dry_run(request):
                return current
            if options.get("propagationPolicy") == "Orphan":
                self._orphan_dependents(current["metadata"]["uid"])
            result = self._delete(key)
            self._collect_garbage()
            self._finish_namespaces()
            return result

    def _delete(self, key: ObjectKey) -> Body:
        """Delete now, or mark for deletion while finalizers remain; returns the last state."""
        resource, _, name = key
        current = self._require(key)
        if resource == NAMESPACES:
            self._terminate_namespace(name)
            current = self._require(key)
        if current["metadata"].get("finalizers") or resource == NAMESPACES:
            if current["metadata"].get("deletionTimestamp"):
                return current
            marked = copy.deepcopy(current)
            marked["metadata"]["deletionTimestamp"] = now_rfc3339()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            marked["metadata"]["resourceVersion"] = self._next_rv()
            self._store(key, marked)
            self._publish(resource, "MODIFIED", marked)
            return marked
        return self._remove(key)

    def _remove(self, key: ObjectKey) -> Body:
        resource = key[0]
        last = copy.deepcopy(self._require(key))
        last["metadata"]["resourceVersion"] = self._next_rv()
        self._unindex(key)
        self._objects[key].delete()
        self._gone_uids.append(last["metadata"]["uid"])
        self._publish(resource, "DELETED", last)
        if resource == CRDS:
            self._unregister_crd(last)
        return last

    # -- controllers the emulator stands in for ------------------------------------------------

    def _collect_garbage(self, created: ObjectKey | None = None) -> None:
        """Delete objects all of whose owners are gone (background propagation), until stable.

        Looks at the dependents of the owners removed since the last call, and at an object just
        created (whose owners may be gone already, as the real collector would notice).
        """
        candidates: set[ObjectKey] = {created} if created is not None else set()
        while candidates or self._gone_uids:
            while self._gone_uids:
                candidates |= self._dependents.pop(self._gone_uids.pop(), set())
            for key in sorted(candidates, key=repr):
                body = self._get(key)
                refs = (body or {}).get("metadata", {}).get("ownerReferences") or []
                if (
                    body is not None
                    and refs
                    and not any(str(ref.get("uid")) in self._uids for ref in refs)
                    and not body["metadata"].get("deletionTimestamp")
                ):
                    self._delete(key)
            candidates = set()

    def _orphan_dependents(self, owner_uid: str) -> None:
        for key in sorted(self._dependents.get(owner_uid, set()), key=repr):
            body = self._get(key)
            if body is None:
                continue
            refs = body["metadata"].get("ownerReferences") or []
            kept = [ref for ref in refs if ref.get("uid") != owner_uid]
            if len(kept) != len(refs):
                metadata = {k: v for k, v in body["metadata"].items() if k != "ownerReferences"}
                if kept:
                    metadata["ownerReferences"] = kept
                self._update(key, body, dict(body, metadata=metadata), subresource=None)

    def _require_active_namespace(self, namespace: str) -> None:
        ns = self._get((NAMESPACES, None, namespace))
        if ns is None:
            raise ApiError(
                404, f'namespaces "{namespace}" not found', details={"name": namespace, "kind": "namespaces"}
            )
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                f"unable to create new content in namespace {namespace} because it is being terminated",
                reason="Forbidden",
            )

    def _terminate_namespace(self, namespace: str) -> None:
        for key, _ in list(self._live()):
            if key[1] == namespace and self._get(key) is not None:
                self._delete(key)

    def _finish_namespaces(self) -> None:
        for key, body in list(self._live(NAMESPACES)):
            if body["metadata"].get("deletionTimestamp") and not self._per_namespace.get(key[2]):
                self._remove(key)

    def _register_crd(self, crd: Body) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for version in spec.get("versions") or []:
            if not version.get("served", True):
                continue
            resource = kmock.resource(spec.get("group"), version.get("name"), names.get("plural"))
            self.resources[resource] = kmock.ResourceInfo(
                kind=names.get("kind"),
                singular=names.get("singular") or str(names.get("kind", "")).lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=set(names.get("shortNames") or []),
                categories=set(names.get("categories") or []),
                subresources=set((version.get("subresources") or {}).keys()),
                verbs=set(ALL_VERBS),
            )
            columns = version.get("additionalPrinterColumns") or spec.get("additionalPrinterColumns")
            if columns:
                self._printer_columns[resource] = list(columns)

    def _unregister_crd(self, crd: Body) -> None:
        spec = crd.get("spec") or {}
        for version in spec.get("versions") or []:
            resource = kmock.resource(spec.get("group"), version.get("name"), (spec.get("names") or {}).get("plural"))
            for key, _ in list(self._live(resource)):
                self._unindex(key)
                del self._objects[key]  # hard: kmock lists the resources of every key it keeps
            if resource in self.resources:
                del self.resources[resource]

    async def mark_deployments_ready(self, namespace: str | None = None, name: str | None = None) -> int:
        """Stand in for the Deployment controller: every matching Deployment rolled out and ready."""
        updated = 0
        async with self._lock:
            for key, body in list(self._live(DEPLOYMENTS)):
                if (namespace is None or key[1] == namespace) and (name is None or key[2] == name):
                    new = dict(body, status=_rolled_out_status(body, body.get("status") or {}))
                    if self._update(key, body, new, subresource="status") is not body:
                        updated += 1
        return updated

    def _schedule_auto_ready(self, key: ObjectKey) -> None:
        if self.auto_ready_delay_s is None:
            return

        async def later() -> None:
            await asyncio.sleep(self.auto_ready_delay_s or 0)
            await self.mark_deployments_ready(key[1], key[2])

        task = asyncio.get_running_loop().create_task(later())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- discovery --------------------------------------------------------------------------------

    async def _serve_version(self, request: kmock.Request) -> kmock_rendering.Payload:
        # kmock 0.8 gives subresources their parent's short names, which makes kubectl's
        # short-name expansion ambiguous ("ns" → namespaces/status); list them bare, as servers do.
        assert request.resource is not None
        group, version = request.resource.group, request.resource.version
        entries = []
        declared = [kmock.resource(key) for key in self.resources]
        for resource in sorted(declared, key=lambda r: r.plural or ""):
            if resource.group != group or resource.version != version:
                continue
            info = self.resources[resource]
            entries.append(
                {
                    "name": resource.plural,
                    "singularName": info.singular or "",
                    "namespaced": bool(info.namespaced),
                    "kind": info.kind,
                    "verbs": sorted(info.verbs),
                    "shortNames": sorted(info.shortnames),
                    "categories": sorted(info.categories),
                }
            )
            for subresource in sorted(info.subresources):
                entries.append(
                    {
                        "name": f"{resource.plural}/{subresource}",
                        "singularName": "",
                        "namespaced": bool(info.namespaced),
                        "kind": info.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        if not entries:
            raise ApiError(404, "the server could not find the requested resource")
        return {
            "apiVersion": "v1",
            "kind": "APIResourceList",
            "groupVersion": f"{group}/{version}".lstrip("/"),
            "resources": entries,
        }

    async def _serve_server_version(self, request: kmock.Request) -> kmock_rendering.Payload:
        return {
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0+voicelane-emulator",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24",
            "compiler": "gc",
            "platform": "linux/amd64",
        }


# --- server-side printing (kubectl get asks for a Table) ------------------------------------------


def _wants_table(request: kmock.Request) -> bool:
    return "as=Table" in (request.headers.get("Accept") or "")


def as_table(objects: list[Body], columns: list[Body], rv: str) -> Body:
    """A meta.k8s.io/v1 Table with a CRD's printer columns, as `kubectl get` shows it."""
    definitions = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
    definitions += [
        {
            "name": column["name"],
            "type": column.get("type", "string"),
            "format": column.get("format", ""),
            "description": column.get("description", ""),
            "priority": column.get("priority", 0),
        }
        for column in columns
    ]
    rows = []
    for obj in objects:
        cells: list[Any] = [obj["metadata"]["name"]]
        for column in columns:
            value = json_path(obj, column.get("jsonPath", ""))
            if column.get("type") == "date" and isinstance(value, str):
                value = _age(value)
            cells.append(value)
        partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
        rows.append({"cells": cells, "object": partial})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": definitions,
        "rows": rows,
    }


_JSON_PATH_STEP = re.compile(r"""\.([A-Za-z0-9_-]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_.-]+)\s*==\s*["']([^"']*)["']\)\]""")


def json_path(obj: Any, path: str) -> Any:
    """The value at a printer column's JSONPath; None when absent.

    Hand-written for the subset CRD printer columns use (`.field`, `[N]`, `[?(@.key=="value")]`):
    general JSONPath libraries implement other dialects, and this is all kubectl needs here.
    """
    value, position = obj, 0
    while position < len(path) and value is not None:
        step = _JSON_PATH_STEP.match(path, position)
        if step is None:
            return None
        position = step.end()
        field, index, key, wanted = step.groups()
        if field is not None:
            value = value.get(field) if isinstance(value, Mapping) else None
        elif index is not None:
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
        else:
            matches = [item for item in value or [] if json_path(item, "." + key) == wanted]
            value = matches[0] if matches else None
    return value


def _age(timestamp: str) -> str:
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return timestamp
    seconds = max(0, int((datetime.datetime.now(datetime.UTC) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 600:
        return f"{seconds // 60}m{seconds % 60}s"
    if seconds < 3 * 3600:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _rolled_out_status(deployment: Body, previous: Body) -> Body:
    replicas = int((deployment.get("spec") or {}).get("replicas", 1))
    now = now_rfc3339()
    status = {
        "observedGeneration": deployment["metadata"].get("generation", 1),
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "reason": "MinimumReplicasAvailable",
                "message": "Deployment has minimum availability.",
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable",
                "message": "ReplicaSet has successfully progressed.",
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            },
        ],
    }
    if _without(status, "conditions") == _without(previous, "conditions") and previous.get("conditions"):
        status["conditions"] = previous["conditions"]  # unchanged: keep the times, write nothing
    return status


def _qualified(resource: kmock.resource) -> str:
    return f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)


def _without(body: Mapping[str, Any], *keys: str) -> Body:
    return {key: value for key, value in body.items() if key not in keys}


def _dry_run(request: kmock.Request) -> bool:
    return bool(request.params.get("dryRun"))


# --- test controls over HTTP ---------------------------------------------------------------------


class ControlApi:
    """HTTP controls for tests that run the emulator as a process, under /_emulator/.

    GET  /_emulator/healthz                 → {"ok": true}
    POST /_emulator/deployments/ready       {"namespace"?, "name"?} → {"updated": N}
    GET  /_emulator/faults                  → the active faults with their hit counts
    POST /_emulator/faults                  a Fault as JSON → the stored fault with its id
    DELETE /_emulator/faults                → {"cleared": N}
    POST /_emulator/watches/drop            → {"dropped": N}
    GET  /_emulator/usage                   → [{"agent", "verb", "group", "resource", "count"}...]
    """

    def __init__(self, emulator: KubeEmulator) -> None:
        self.emulator = emulator

    def route(self, method: str, path: str) -> Callable[[kmock.Request], Awaitable[Any]] | None:
        """The control handler for a request, for the emulator's direct routing."""
        handlers: dict[tuple[str, str], Callable[..., Any]] = {
            ("GET", "/_emulator/healthz"): lambda: {"ok": True},
            ("POST", "/_emulator/deployments/ready"): self._ready,
            ("GET", "/_emulator/faults"): self._list_faults,
            ("POST", "/_emulator/faults"): self._add_fault,
            ("DELETE", "/_emulator/faults"): self._clear_faults,
            ("POST", "/_emulator/watches/drop"): self._drop_watches,
            ("GET", "/_emulator/usage"): self._usage,
        }
        handler = handlers.get((method, path))
        if handler is None:
            return None

        async def call(request: kmock.Request) -> Any:
            result = handler(request) if inspect.signature(handler).parameters else handler()
            return await result if inspect.isawaitable(result) else result

        return call

    def install(self) -> None:
        kmock_root = self.emulator
        kmock_root["get /_emulator/healthz"] << {"ok": True}
        kmock_root["post /_emulator/deployments/ready"] << self._ready
        kmock_root["get /_emulator/faults"] << self._list_faults
        kmock_root["post /_emulator/faults"] << self._add_fault
        kmock_root["delete /_emulator/faults"] << self._clear_faults
        kmock_root["post /_emulator/watches/drop"] << self._drop_watches
        kmock_root["get /_emulator/usage"] << self._usage

    async def _ready(self, request: kmock.Request) -> Body:
        data = request.data if isinstance(request.data, dict) else {}
        updated = await self.emulator.mark_deployments_ready(data.get("namespace"), data.get("name"))
        return {"updated": updated}

    def _list_faults(self) -> list[Body]:
        return [dataclasses.asdict(fault) for fault in self.emulator.faults]

    def _add_fault(self, request: kmock.Request) -> Body:
        if not isinstance(request.data, dict):
            raise ApiError(400, "a fault must be a JSON object")
        return dataclasses.asdict(self.emulator.add_fault(Fault.from_json(request.data)))

    def _clear_faults(self) -> Body:
        count = len(self.emulator.faults)
        self.emulator.clear_faults()
        return {"cleared": count}

    async def _drop_watches(self) -> Body:
        return {"dropped": await self.emulator.drop_watches()}

    def _usage(self) -> list[Body]:
        return self.emulator.usage()


# --- running as a process --------------------------------------------------------------------------


def kubeconfig_for(server_url: str, *, namespace: str = "default") -> Body:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server_url}}],
        "users": [{"name": "emulator", "user": {}}],
        "contexts": [
            {
                "name": "emulator",
                "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace},
            }
        ],
        "current-context": "emulator",
    }


def write_kubeconfig(path: Path, server_url: str) -> None:
    """Write atomically: whoever waits for the file never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(yaml.safe_dump(kubeconfig_for(server_url), sort_keys=False), encoding="utf-8")
    partial.replace(path)


async def serve(*, host: str, port: int, kubeconfig_out: Path | None, auto_ready_delay_s: float | None) -> None:
    emulator = KubeEmulator(auto_ready_delay_s=auto_ready_delay_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with emulator, kmock.Server(emulator, host=host, port=port) as server:
        url = f"http://{host}:{server.port}"
        if kubeconfig_out is not None:
            write_kubeconfig(kubeconfig_out, url)
        logger.info("Kubernetes API emulator listening on %s", url)
        await stop.wait()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.kube_emulator", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 0), help="HOST:PORT (port 0: any free one)")
    parser.add_argument("--kubeconfig-out", type=Path, help="write a kubeconfig pointing at the emulator here")
    parser.add_argument(
        "--auto-ready-delay",
        type=float,
        default=None,
        metavar="SECONDS",
        help="mark Deployments ready this long after each change (default: only on request)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    host, port = args.listen
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(
                host=host,
                port=port,
                kubeconfig_out=args.kubeconfig_out,
                auto_ready_delay_s=args.auto_ready_delay,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
