"""Add the VoiceLane sidecar to a pod: the one construction the webhook, `voicelane inject` and the samples share.

Pure: a pod (or a pod template: anything with `metadata` and `spec`) in, a new pod out, the input left
as it was. `inject` adds

- the sidecar as a native sidecar: an init container with `restartPolicy: Always` (Kubernetes 1.29+),
  placed first so it serves before any other init container or the app starts, running the image's
  `voicelane sidecar` with the lane's configuration and its metrics listener on 0.0.0.0:9464;
- the lane's ConfigMap `<lane>-sidecar` mounted at /etc/voicelane (the directory, not a subPath, so the
  sidecar sees edits of the lane and reloads) and a small writable /tmp;
- startup, liveness and readiness probes on the metrics listener (the API listens on loopback, where
  the kubelet cannot reach it), the metrics port named for the chart's PodMonitor, resource requests
  and limits, and a securityContext that meets the Pod Security "restricted" profile on its own;
- the sidecar's address in every app container, in each variable it does not set already:
  `VOICELANE_URL`, `OLLAMA_HOST` (read by Ollama's own clients) and `OPENAI_BASE_URL` (the
  address with `/v1`, read by the official OpenAI clients), so an unchanged app reaches the lane;
- the `voicelane.dev/lane` label (the lane's NetworkPolicy admits only pods carrying it) and an
  annotation recording the injection.

A pod that already has the sidecar container is left as it is, so injecting twice (the webhook is
reinvoked, or a manifest from `voicelane inject` is created where the webhook runs) changes nothing.
Pods of a lane's own Ollama tiers (label `voicelane.dev/tier`) are never injected.

Per pod, annotations tune the sidecar (`sidecar_overrides`): its image, log level, CPU and memory
requests and limits, and the lane it joins; a value that is not valid is an `AnnotationError` naming
the annotation. A pod labelled or annotated `voicelane.dev/inject: disabled` opts out (`opted_out`).
The lane's `spec.sidecar.env` and `envFrom` are the sidecar's environment (`inject`'s env, env_from),
and its `spec.policy.server.listen` the apps' address (`api_listen`): `LaneSettings.of` reads the three
from a lane's spec, for the webhook and `voicelane inject --lane-file` alike.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from voicelane.operator.api import (
    DEFAULT_SIDECAR_IMAGE,
    LOG_LEVELS,
    QUANTITY_PATTERN,
    SpecError,
    VoiceLaneSpec,
    check_lane_name,
    parse_quantity,
)
from voicelane.operator.render import (
    LABEL_LANE,
    LABEL_TIER,
    SIDECAR_CONFIG_KEY,
    SIDECAR_METRICS_LISTEN,
    sidecar_configmap_name,
)
from voicelane.sidecar.config import ServerConfig

SIDECAR_CONTAINER_NAME = "voicelane-sidecar"
# Kubernetes port names are IANA service names: at most 15 characters. The chart's PodMonitor
# scrapes the port of this name (podMonitor.port).
SIDECAR_METRICS_PORT_NAME = "vl-metrics"
SIDECAR_METRICS_PORT = int(SIDECAR_METRICS_LISTEN.rpartition(":")[2])
SIDECAR_CONFIG_DIR = "/etc/voicelane"
SIDECAR_CONFIG_PATH = f"{SIDECAR_CONFIG_DIR}/{SIDECAR_CONFIG_KEY}"
CONFIG_VOLUME = "voicelane-config"
TMP_VOLUME = "voicelane-tmp"
URL_ENV = "VOICELANE_URL"
OLLAMA_HOST_ENV = "OLLAMA_HOST"
OPENAI_BASE_URL_ENV = "OPENAI_BASE_URL"
INJECTED_ANNOTATION = "voicelane.dev/sidecar-injected"
# The uid the images run as (images/*.Dockerfile, USER 65532:65532).
IMAGE_UID = 65532
# The sidecar's API address unless the lane's spec.policy.server.listen says otherwise.
DEFAULT_API_LISTEN: str = ServerConfig.model_fields["listen"].default

SIDECAR_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"cpu": "1", "memory": "512Mi"},
}

# Opting in and out: the namespace label `voicelane.dev/inject: enabled` sends every pod of the
# namespace to the webhook, as the pod label of the same name or a `voicelane.dev/lane` label sends
# one pod; the pod label or annotation `voicelane.dev/inject: disabled` keeps a pod out.
INJECT_KEY = "voicelane.dev/inject"
INJECT_ENABLED = "enabled"
INJECT_DISABLED = "disabled"
# Per-pod settings of the sidecar. The lane's key is the label's: as an annotation it names the lane
# without putting the pod in the lane's label selectors (a Deployment's, a NetworkPolicy's).
LANE_ANNOTATION = LABEL_LANE
IMAGE_ANNOTATION = "voicelane.dev/sidecar-image"
LOG_LEVEL_ANNOTATION = "voicelane.dev/sidecar-log-level"
RESOURCE_ANNOTATIONS: Mapping[tuple[str, str], str] = {
    ("requests", "cpu"): "voicelane.dev/sidecar-cpu-request",
    ("limits", "cpu"): "voicelane.dev/sidecar-cpu-limit",
    ("requests", "memory"): "voicelane.dev/sidecar-memory-request",
    ("limits", "memory"): "voicelane.dev/sidecar-memory-limit",
}
SIDECAR_ANNOTATIONS = (IMAGE_ANNOTATION, LOG_LEVEL_ANNOTATION, *RESOURCE_ANNOTATIONS.values())

# An image reference as container runtimes parse it: [registry[:port]/]path[:tag][@digest], written
# from the OCI distribution grammar (no maintained Python library parses references on its own).
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?/)?"
    rf"{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?"
)
MAX_IMAGE_NAME_LENGTH = 255


class InjectionError(ValueError):
    """The pod cannot take the sidecar as it is (not a pod, or a name or port the sidecar needs is taken)."""


class AnnotationError(ValueError):
    """A pod's label or annotation for the sidecar holds a value it cannot take; the message names the key."""

    def __init__(self, key: str, problem: str, *, kind: str = "annotation") -> None:
        super().__init__(f"{kind} {key}: {problem}")
        self.key = key


@dataclasses.dataclass(frozen=True)
class SidecarOverrides:
    """What a pod's annotations change in its sidecar; None and the defaults leave the sidecar as it is."""

    image: str | None = None
    log_level: str | None = None  # in the VoiceLane's spelling (Debug), as spec.policy.logLevel
    resources: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=lambda: SIDECAR_RESOURCES)


@dataclasses.dataclass(frozen=True)
class LaneSettings:
    """What a lane gives every sidecar injected into its pods: `inject`'s api_listen, env and env_from."""

    api_listen: str = DEFAULT_API_LISTEN
    env: tuple[dict[str, Any], ...] = ()
    env_from: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, spec: VoiceLaneSpec) -> LaneSettings:
        """The settings of a parsed lane spec: spec.policy.server.listen, spec.sidecar.env and envFrom."""

        def wire(items: tuple[Any, ...]) -> tuple[dict[str, Any], ...]:
            return tuple(item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in items)

        return cls(spec.policy.server.listen, wire(spec.sidecar.env), wire(spec.sidecar.env_from))


def _metadata_map(pod: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    return _mapping(_mapping(pod.get("metadata")).get(field))


def _inject_setting(value: Any, key: str, kind: str) -> str | None:
    if value is None:
        return None
    if value not in (INJECT_ENABLED, INJECT_DISABLED):
        raise AnnotationError(key, f"{value!r} is neither {INJECT_ENABLED} nor {INJECT_DISABLED}", kind=kind)
    return str(value)


def opted_out(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's label or annotation voicelane.dev/inject says disabled (AnnotationError if neither value)."""
    label = _inject_setting(_metadata_map(pod, "labels").get(INJECT_KEY), INJECT_KEY, "label")
    annotation = _inject_setting(_metadata_map(pod, "annotations").get(INJECT_KEY), INJECT_KEY, "annotation")
    return INJECT_DISABLED in (label, annotation)


def opted_in_by_pod(pod: Mapping[str, Any]) -> bool:
    """Whether the pod asks for the sidecar itself: a voicelane.dev/lane label, or voicelane.dev/inject: enabled."""
    labels = _metadata_map(pod, "labels")
    return bool(labels.get(LABEL_LANE)) or labels.get(INJECT_KEY) == INJECT_ENABLED


def requested_lane(pod: Mapping[str, Any]) -> str | None:
    """The lane the pod names: its voicelane.dev/lane annotation, else its label; None if neither.

    AnnotationError if the annotation is no lane name, or names another lane than the label: the
    label stays as it is (a Deployment may select on it), so the two must agree.
    """
    label = _metadata_map(pod, "labels").get(LABEL_LANE)
    annotation = _metadata_map(pod, "annotations").get(LANE_ANNOTATION)
    if annotation is None:
        return str(label) if label else None
    try:
        check_lane_name(annotation)
    except SpecError as exc:
        raise AnnotationError(LANE_ANNOTATION, f"{annotation!r} is not a lane name: {exc}") from None
    if label and label != annotation:
        raise AnnotationError(LANE_ANNOTATION, f"names lane {annotation}, but the pod is labelled {LABEL_LANE}={label}")
    return str(annotation)


def sidecar_overrides(pod: Mapping[str, Any]) -> SidecarOverrides:
    """The pod's annotations for its sidecar, checked; AnnotationError names the first that is not valid."""
    annotations = _metadata_map(pod, "annotations")
    image = annotations.get(IMAGE_ANNOTATION)
    if image is not None:
        name = str(image).partition("@")[0]
        if not IMAGE_REFERENCE.fullmatch(str(image)) or len(name.rpartition(":")[0] or name) > MAX_IMAGE_NAME_LENGTH:
            raise AnnotationError(
                IMAGE_ANNOTATION, f"{image!r} is not an image reference such as registry.example/voicelane-sidecar:1.0"
            )
    log_level = annotations.get(LOG_LEVEL_ANNOTATION)
    if log_level is not None and log_level not in LOG_LEVELS:
        raise AnnotationError(LOG_LEVEL_ANNOTATION, f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    resources = {kind: dict(values) for kind, values in SIDECAR_RESOURCES.items()}
    for (kind, resource), key in RESOURCE_ANNOTATIONS.items():
        value = annotations.get(key)
        if value is None:
            continue
        if not re.fullmatch(QUANTITY_PATTERN, str(value)):
            raise AnnotationError(key, f"{value!r} is not a positive Kubernetes quantity such as 500m, 2 or 256Mi")
        resources[kind][resource] = str(value)
    for resource in ("cpu", "memory"):
        request, limit = resources["requests"][resource], resources["limits"][resource]
        if parse_quantity(request) > parse_quantity(limit):
            request_key = RESOURCE_ANNOTATIONS["requests", resource]
            limit_key = RESOURCE_ANNOTATIONS["limits", resource]
            raise AnnotationError(
                request_key if request_key in annotations else limit_key,
                f"the {resource} request {request} is more than its limit {limit}"
                f" (set {limit_key} too, or a request below the limit)",
            )
    return SidecarOverrides(image=image, log_level=log_level, resources=resources)


def restricted_container_security() -> dict[str, Any]:
    """A container securityContext that meets the Pod Security "restricted" profile whatever the pod sets."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def loopback_url(listen: str) -> str:
    """The URL an app container reaches a sidecar listening on `listen` at, always through loopback."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def app_environment(url: str) -> dict[str, str]:
    """The variables that point an app container's clients at the sidecar listening at `url`."""
    return {URL_ENV: url, OLLAMA_HOST_ENV: url, OPENAI_BASE_URL_ENV: f"{url}/v1"}


def sidecar_container(
    image: str,
    *,
    image_pull_policy: str = "IfNotPresent",
    overrides: SidecarOverrides | None = None,
    env: Sequence[Mapping[str, Any]] = (),
    env_from: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    def probe(path: str) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": SIDECAR_METRICS_PORT_NAME}}

    overrides = overrides or SidecarOverrides()
    args = ["--config", SIDECAR_CONFIG_PATH, "--metrics-listen", SIDECAR_METRICS_LISTEN]
    if overrides.log_level is not None:
        # A flag outlasts the sidecar's reloads of the lane's configuration, which keep flags on top.
        args += ["--log-level", LOG_LEVELS[overrides.log_level]]
    container: dict[str, Any] = {
        "name": SIDECAR_CONTAINER_NAME,
        "image": overrides.image or image,
        "imagePullPolicy": image_pull_policy,
        # A native sidecar: started before the app, kept running beside it, stopped after it (and it
        # does not keep a Job's pod from completing).
        "restartPolicy": "Always",
        # The image's entrypoint is `voicelane sidecar`.
        "args": args,
        "ports": [{"name": SIDECAR_METRICS_PORT_NAME, "containerPort": SIDECAR_METRICS_PORT, "protocol": "TCP"}],
        # The app starts only once the sidecar serves (a native sidecar's startup probe gates the next
        # containers). Readiness follows the sidecar's /readyz: a pod whose lane has no healthy tier
        # (and no passthrough) cannot answer by voice, so it takes no traffic until one recovers.
        "startupProbe": {**probe("/healthz"), "periodSeconds": 1, "failureThreshold": 60},
        "livenessProbe": {**probe("/healthz"), "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        "readinessProbe": {**probe("/readyz"), "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3},
        "resources": {kind: dict(values) for kind, values in overrides.resources.items()},
        # The uid is set here too: the app's pod may leave it to its own image, which may run as root.
        "securityContext": {**restricted_container_security(), "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID},
        "volumeMounts": [
            # The whole directory, not a subPath: the sidecar reloads sidecar.yaml when the lane changes.
            {"name": CONFIG_VOLUME, "mountPath": SIDECAR_CONFIG_DIR, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
    }
    if env:
        container["env"] = [copy.deepcopy(dict(var)) for var in env]
    if env_from:
        container["envFrom"] = [copy.deepcopy(dict(source)) for source in env_from]
    return container


def sidecar_volumes(lane: str) -> list[dict[str, Any]]:
    return [
        {"name": CONFIG_VOLUME, "configMap": {"name": sidecar_configmap_name(lane)}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
    ]


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    spec = _mapping(pod.get("spec"))
    return any(
        isinstance(container, Mapping) and container.get("name") == SIDECAR_CONTAINER_NAME
        for field in ("initContainers", "containers")
        for container in _list_or_empty(spec.get(field))
    )


def skip_reason(pod: Mapping[str, Any]) -> str | None:
    """Why `inject` leaves this pod as it is, or None if it would add the sidecar.

    AnnotationError if its voicelane.dev/inject label or annotation is neither enabled nor disabled.
    """
    labels = _mapping(_mapping(pod.get("metadata")).get("labels"))
    if LABEL_TIER in labels:
        return f"a model server pod of a lane (label {LABEL_TIER})"
    if has_sidecar(pod):
        return f"it already has the container {SIDECAR_CONTAINER_NAME}"
    if opted_out(pod):
        return f"it opts out ({INJECT_KEY}: {INJECT_DISABLED})"
    return None


def inject(
    pod: Mapping[str, Any],
    *,
    lane: str,
    image: str = DEFAULT_SIDECAR_IMAGE,
    api_listen: str = DEFAULT_API_LISTEN,
    image_pull_policy: str = "IfNotPresent",
    env: Sequence[Mapping[str, Any]] = (),
    env_from: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any] | None:
    """The pod with the sidecar of `lane` added, or None when it is to stay as it is (see `skip_reason`).

    The pod's annotations tune the sidecar (`sidecar_overrides`); `env` and `env_from` (core/v1 EnvVar
    and EnvFromSource objects, the lane's spec.sidecar) are its environment. Raises AnnotationError
    naming an annotation whose value is not valid, and InjectionError if the pod is not a pod, names
    another lane, or already uses a volume name or port the sidecar needs.
    """
    if not isinstance(pod, Mapping) or not isinstance(pod.get("spec"), Mapping):
        raise InjectionError("not a pod or pod template: no spec")
    if skip_reason(pod) is not None:
        return None
    overrides = sidecar_overrides(pod)
    named = requested_lane(pod)
    if named is not None and named != lane:
        raise InjectionError(f"the pod names lane {named} ({LABEL_LANE}), not {lane}")
    injected: dict[str, Any] = copy.deepcopy(dict(pod))
    metadata = injected.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InjectionError("metadata is not an object")
    injected["metadata"] = metadata
    spec: dict[str, Any] = injected["spec"]
    containers = _container_list(spec, "containers")
    init_containers = _container_list(spec, "initContainers")
    if not containers:
        raise InjectionError("the pod has no containers")
    labels: dict[str, Any] = dict(_mapping(metadata.get("labels")))
    _check_free(spec, containers + init_containers)

    labels[LABEL_LANE] = lane
    metadata["labels"] = labels
    metadata["annotations"] = {**_mapping(metadata.get("annotations")), INJECTED_ANNOTATION: "true"}
    sidecar = sidecar_container(
        image, image_pull_policy=image_pull_policy, overrides=overrides, env=env, env_from=env_from
    )
    if "initContainers" not in spec:  # listed before the containers, as it runs first (readable output)
        spec = injected["spec"] = _insert_before(spec, "containers", "initContainers", [])
    spec["initContainers"] = [sidecar, *init_containers]
    addresses = app_environment(loopback_url(api_listen))
    for container in containers:
        env = _list_of_mappings(container.get("env"), f"env of container {container.get('name')}")
        already_set = {var.get("name") for var in env}
        # An app's own setting wins: it may talk to a model server of its own on purpose.
        missing = [{"name": name, "value": value} for name, value in addresses.items() if name not in already_set]
        if missing:
            container["env"] = [*env, *missing]
    spec["volumes"] = [*_list_of_mappings(spec.get("volumes"), "spec.volumes"), *sidecar_volumes(lane)]
    return injected


def _insert_before(mapping: Mapping[str, Any], key: str, new_key: str, value: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for existing, existing_value in mapping.items():
        if existing == key:
            result[new_key] = value
        result[existing] = existing_value
    result.setdefault(new_key, value)
    return result


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list_or_empty(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _list_of_mappings(value: Any, what: str) -> list[dict[str, Any]]:
    """`value` as a list of objects (None: empty); InjectionError if it is something else."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InjectionError(f"{what} is not a list of objects")
    return list(value)


def _container_list(spec: Mapping[str, Any], field: str) -> list[dict[str, Any]]:
    return _list_of_mappings(spec.get(field), f"spec.{field}")


def _check_free(spec: Mapping[str, Any], containers: Sequence[Mapping[str, Any]]) -> None:
    """The sidecar's volume names and metrics port must not be in use already: the pod would be invalid."""
    taken_volumes = {volume.get("name") for volume in _list_of_mappings(spec.get("volumes"), "spec.volumes")}
    for name in (CONFIG_VOLUME, TMP_VOLUME):
        if name in taken_volumes:
            raise InjectionError(f"the pod already has a volume named {name}")
    for container in containers:
        for port in _list_of_mappings(container.get("ports"), f"ports of container {container.get('name')}"):
            if port.get("name") == SIDECAR_METRICS_PORT_NAME or port.get("containerPort") == SIDECAR_METRICS_PORT:
                raise InjectionError(
                    f"container {container.get('name')} already uses port {SIDECAR_METRICS_PORT_NAME}"
                    f" or {SIDECAR_METRICS_PORT}, the sidecar's metrics port"
                )
