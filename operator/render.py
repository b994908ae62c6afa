"""The renderer: a VoiceLane in, every child object the operator keeps for it out.

Pure and deterministic: the same lane always renders the same objects in the same
order, with no clock, cluster or randomness involved, so `voicelane render` shows
exactly what the operator applies.

Per tier (`fast`, `deep`):
- a Deployment `<lane>-<tier>` of Ollama, in Guaranteed QoS (requests equal limits
  on every container, init containers included);
- a Service `<lane>-<tier>` (fast on port 11435, deep on 11434, both to the pod's
  11434);
- a PersistentVolumeClaim `<lane>-<tier>-models` when `storage.size` is given
  (`existingClaim` is mounted as is; without a claim an emptyDir holds the models, its
  `sizeLimit` from `storage.emptyDir.sizeLimit` or the model's download size, and the pod
  requests that much ephemeral-storage and more for its scratch space);
- a PodDisruptionBudget `<lane>-<tier>` when the tier has more than one replica, or leaves
  its replicas unset (to an autoscaler: the Deployment then has no `replicas` of the operator's).
Lane-wide: the ConfigMap `<lane>-sidecar` (`sidecar.yaml`, the complete sidecar
configuration) and the NetworkPolicy `<lane>-ollama`.

How a pod proves its model is resident before it counts as Ready:
1. the init container `pull-model` starts a private `ollama serve` on loopback and
   pulls the model into the model store (a failed pull is tolerated only when the
   store already holds the model, so air-gapped claims work);
2. the container `warmer` loads the model (`ollama run --keepalive=<keepAliveSeconds as
   a duration, 15m> <model> ""`, Ollama's documented preload) as soon as the server answers;
3. the model server's startup and readiness probes run `ollama ps` and require the
   model in its list of loaded models: only a resident model passes. The liveness
   probe only asks whether the server answers, so a slow reload never kills a pod.
The warmer then stays in the pod: every 10 s it checks `ollama ps` and reloads the
model if it was unloaded (say keepAliveSeconds expired while the lane was idle), and every
`rewarmIntervalSeconds` it loads it again regardless, which also resets its keep-alive. An
in-pod loop rather than a CronJob: it needs no API access, reaches the server on
loopback, and lives and dies with the pod it keeps warm.

The official image runs as root; here every container runs as uid 65532 with a
read-only root filesystem, HOME and the model store on writable volumes. The model
server runs with Ollama's cloud features off (OLLAMA_NO_CLOUD=1, unless the lane's
`env` sets it): a cloud model would send the lane's texts to ollama.com.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import yaml
from pydantic import BaseModel

from voicelane.operator.api import (
    ANNOTATION_DEFAULT_CONTAINER,
    API_VERSION,
    GUARDIAN_SOURCES,
    KIND,
    LABEL_COMPONENT,
    LABEL_GATE,
    LABEL_INSTANCE,
    LABEL_LANE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_TIER,
    LOG_LEVELS,
    RENAMED_SIDECAR_FIELDS,
    ROUTING_MODES,
    TIERS,
    TTS_BACKENDS,
    GateSpec,
    SpecError,
    TierName,
    TierSpec,
    VoiceLaneSpec,
    check_lane_name,
    k8s_field_name,
    parse_quantity,
    parse_spec,
)
from voicelane.sidecar.config import ConfigError, RequestClass, SidecarConfig, UpstreamConfig, build_config

TIER_SERVICE_PORTS: Mapping[str, int] = {"fast": 11435, "deep": 11434}
OLLAMA_PORT = 11434
# With the gate, Ollama listens on loopback inside the pod, where only the gate (and the pod's own
# pull, warmer and probes) reach it; the gate takes OLLAMA_PORT and the Service's target port name.
GATED_OLLAMA_PORT = 11400
GATE_CONTAINER_NAME = "gate"
SIDECAR_METRICS_LISTEN = "0.0.0.0:9464"
# The gate's /metrics on a port of its own, which the NetworkPolicy opens to scrapers in any namespace
# (counts and model names, never text), while the port that takes model calls stays the lane's own.
GATE_METRICS_PORT = 9465
GATE_METRICS_PORT_NAME = "gate-metrics"
SIDECAR_CONFIG_KEY = "sidecar.yaml"

ANNOTATION_SPEC_HASH = "voicelane.dev/spec-hash"
OPERATOR_NAME = "voicelane-operator"
MODEL_SERVER_NAME = "ollama"

# The image has a root user only; any fixed non-root uid works once HOME and the
# model store are writable volumes, and fsGroup makes a claim writable for it.
RUN_AS_UID = 65532
MODELS_PATH = "/models"
HOME_PATH = "/home/ollama"
WARMER_CHECK_SECONDS = 10
# The warmer writes nothing but its log lines.
WARMER_RESOURCES = {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "64Mi"}
# Besides the model store, the model server and the pull write HOME (keys), /tmp and their logs.
HOME_SIZE_LIMIT = "256Mi"
TMP_SIZE_LIMIT = "256Mi"
SCRATCH_STORAGE = "1Gi"  # HOME, /tmp and up to 512Mi of logs

# Download sizes of common models (as ollama.com lists them, in bytes), the base of the default emptyDir
# sizeLimit: the size with a quarter more, rounded up to whole GiB. Keyed by the name `ollama ps` shows.
MODEL_DOWNLOAD_BYTES: Mapping[str, int] = {
    "gemma3:1b": 815_000_000,
    "gemma3:4b": 3_300_000_000,
    "llama3.1:8b": 4_900_000_000,
    "llama3.1:latest": 4_900_000_000,
    "llama3.2:1b": 1_300_000_000,
    "llama3.2:3b": 2_000_000_000,
    "llama3.2:latest": 2_000_000_000,
    "llama3:8b": 4_700_000_000,
    "llama3:latest": 4_700_000_000,
    "qwen2.5:0.5b": 398_000_000,
    "qwen2.5:1.5b": 986_000_000,
    "qwen2.5:3b": 1_900_000_000,
    "qwen2.5:7b": 4_700_000_000,
    "qwen2.5:latest": 4_700_000_000,
    "smollm2:135m": 271_000_000,
}
MODEL_STORE_HEADROOM = Decimal("1.25")
# Enough for most 13B models at 4-bit quantization; a tier of another model says its own size.
UNKNOWN_MODEL_STORE_LIMIT = "16Gi"
# Generous: an 8B model pulls gigabytes before its first load.
PROGRESS_DEADLINE_SECONDS = 3600
STARTUP_PROBE_PERIOD_SECONDS = 5
STARTUP_PROBE_FAILURES = 360  # 30 minutes to load a large model from a slow disk

_LOOPBACK_HOST = f"127.0.0.1:{OLLAMA_PORT}"

# True only if the model is in `ollama ps`, the server's list of loaded models. The probes run in the
# server's container, whose OLLAMA_HOST is the address it listens on (0.0.0.0:<port>): they ask on
# loopback at that port, so the port is written once, in the environment.
_RESIDENT_CHECK = (
    'OLLAMA_HOST="127.0.0.1:${OLLAMA_HOST##*:}" ollama ps'
    " | awk 'NR > 1 { print $1 }' | grep -Fxq -- \"$VOICELANE_MODEL\""
)

# The server answers at all (its liveness, when the gate holds the pod's port).
_SERVER_ANSWERS = 'OLLAMA_HOST="127.0.0.1:${OLLAMA_HOST##*:}" ollama list >/dev/null'
GATE_EPHEMERAL_STORAGE = "64Mi"

_PULL_SCRIPT = """\
set -eu
ollama serve &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
waited=0
until ollama list >/dev/null 2>&1; do
  waited=$((waited + 1))
  if [ "$waited" -gt 120 ]; then echo "ollama did not start within 120 s" >&2; exit 1; fi
  sleep 1
done
if ! ollama pull "$VOICELANE_MODEL"; then
  if ollama show "$VOICELANE_MODEL" >/dev/null 2>&1; then
    echo "pulling $VOICELANE_MODEL failed; using the copy already in the model store" >&2
  else
    echo "pulling $VOICELANE_MODEL failed and the model store does not hold it" >&2
    exit 1
  fi
fi
"""

_WARMER_SCRIPT = """\
set -u
trap 'exit 0' TERM INT
pause() { sleep "$1" & wait "$!"; }
resident() { ollama ps 2>/dev/null | awk 'NR > 1 { print $1 }' | grep -Fxq -- "$VOICELANE_MODEL"; }
warm() {
  # The CLI draws a spinner on stderr even without a terminal; of that, the log gets the error only.
  if output=$(ollama run --keepalive="$OLLAMA_KEEP_ALIVE" "$VOICELANE_MODEL" "" 2>&1 </dev/null >/dev/null); then
    echo "loaded $VOICELANE_MODEL"
  else
    echo "loading $VOICELANE_MODEL failed: $(printf '%s\\n' "$output" | sed -n 's/.*Error: //p' | tail -n 1)" >&2
  fi
}
until ollama list >/dev/null 2>&1; do pause 1; done
warm
last=$(date +%s)
while :; do
  pause "$VOICELANE_CHECK_SECONDS"
  now=$(date +%s)
  if [ $((now - last)) -ge "$VOICELANE_REWARM_SECONDS" ] || ! resident; then
    warm
    last=$(date +%s)
  fi
done
"""


# --- names, labels, owner -------------------------------------------------------------


def tier_name(lane_name: str, tier: TierName) -> str:
    """Name of the tier's Deployment, Service and PodDisruptionBudget."""
    return f"{lane_name}-{tier}"


def claim_name(lane_name: str, tier: TierName) -> str:
    return f"{lane_name}-{tier}-models"


def sidecar_configmap_name(lane_name: str) -> str:
    return f"{lane_name}-sidecar"


def network_policy_name(lane_name: str) -> str:
    return f"{lane_name}-ollama"


def service_endpoint(lane_name: str, namespace: str, tier: TierName) -> str:
    """Base URL of a tier as sidecars reach it (also the status `endpoint`).

    `<service>.<namespace>.svc`, not `...svc.cluster.local`: the pods' DNS search list completes it,
    and a cluster whose domain is not cluster.local resolves it too.
    """
    return f"http://{tier_name(lane_name, tier)}.{namespace}.svc:{TIER_SERVICE_PORTS[tier]}"


def selector_labels(lane_name: str, tier: TierName) -> dict[str, str]:
    """Labels that select a tier's pods (the Deployment's immutable selector)."""
    return {LABEL_NAME: MODEL_SERVER_NAME, LABEL_INSTANCE: lane_name, LABEL_TIER: tier}


def lane_labels(lane_name: str, *, component: str, tier: TierName | None = None) -> dict[str, str]:
    labels = {
        LABEL_NAME: MODEL_SERVER_NAME if tier is not None else "voicelane",
        LABEL_INSTANCE: lane_name,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: "voicelane",
        LABEL_MANAGED_BY: OPERATOR_NAME,
        LABEL_LANE: lane_name,
    }
    if tier is not None:
        labels[LABEL_TIER] = tier
    return labels


def owner_reference(lane_name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": lane_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def loaded_model_name(model: str) -> str:
    """The name `ollama ps` lists a model under: default registry dropped, `:latest` added if untagged."""
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/", "library/"):
        if model.startswith(prefix):
            model = model[len(prefix) :]
            break
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


# --- the model store ---------------------------------------------------------------------

_GI = 2**30
_MI = 2**20


def byte_quantity(amount: Decimal) -> str:
    """Bytes as a quantity: whole GiB as `NGi`, anything else rounded up to whole MiB."""
    if amount % _GI == 0:
        return f"{int(amount // _GI)}Gi"
    return f"{math.ceil(amount / _MI)}Mi"


def byte_count(size: str) -> int:
    """The bytes of a size quantity (64Ki → 65536), a fraction of a byte rounded up."""
    return math.ceil(parse_quantity(size))


def default_model_store_limit(model: str) -> str:
    """The emptyDir sizeLimit of a model when the lane sets none (see MODEL_DOWNLOAD_BYTES)."""
    download = MODEL_DOWNLOAD_BYTES.get(loaded_model_name(model))
    if download is None:
        return UNKNOWN_MODEL_STORE_LIMIT
    return f"{max(1, math.ceil(download * MODEL_STORE_HEADROOM / _GI))}Gi"


def model_store_size_limit(tier_spec: TierSpec) -> str | None:
    """The sizeLimit of a tier's model-store emptyDir; None when a claim holds the models."""
    storage = tier_spec.storage
    if storage is not None and storage.uses_claim():
        return None
    if storage is not None and storage.empty_dir is not None and storage.empty_dir.size_limit is not None:
        return storage.empty_dir.size_limit
    return default_model_store_limit(tier_spec.model)


def model_server_ephemeral_storage(tier_spec: TierSpec) -> str:
    """Ephemeral storage of the model server and the pull: the emptyDir model store, if any, and scratch."""
    total = parse_quantity(SCRATCH_STORAGE)
    store = model_store_size_limit(tier_spec)
    if store is not None:
        total += parse_quantity(store)
    return byte_quantity(total)


# --- the sidecar configuration ---------------------------------------------------------


def sidecar_layer(spec: VoiceLaneSpec, *, lane_name: str, namespace: str) -> dict[str, Any]:
    """The lane's spec mapped onto the sidecar's configuration keys (before validation)."""
    layer: dict[str, Any] = spec.policy.model_dump(mode="json")
    layer["server"]["metrics_listen"] = SIDECAR_METRICS_LISTEN
    # Kubernetes spellings (FastOnly, 64Ki) into the sidecar's own (fast_only, 65536).
    layer["log_level"] = LOG_LEVELS[spec.policy.log_level]
    layer["guardian"]["sources"] = [GUARDIAN_SOURCES[source] for source in spec.policy.guardian.sources]
    del layer["limits"]["max_body_size"]
    layer["limits"]["max_body_bytes"] = byte_count(spec.policy.limits.max_body_size)
    del layer["cache"]["max_size"]
    layer["cache"]["max_bytes"] = byte_count(spec.policy.cache.max_size)
    layer["routing"] = {**spec.routing.model_dump(mode="json"), "mode": ROUTING_MODES[spec.routing.mode]}
    layer["tts"] = {**spec.tts.model_dump(mode="json"), "backend": TTS_BACKENDS[spec.tts.backend]}
    layer["upstreams"] = {
        tier: {
            **spec.tier(tier).upstream.model_dump(mode="json"),
            "url": service_endpoint(lane_name, namespace, tier),
            "protocol": "ollama",
            "model": spec.tier(tier).model,
            "keep_alive": ollama_duration(spec.tier(tier).keep_alive_s),
            "parallel_slots": tier_parallel_slots(spec.tier(tier)),
        }
        for tier in TIERS
    }
    return layer


def tier_parallel_slots(tier_spec: TierSpec) -> int | None:
    """Calls a tier runs at once: each pod's OLLAMA_NUM_PARALLEL times its pods. None while an autoscaler
    owns the replica count, which the lane cannot know; the sidecars then leave the tier unbounded."""
    if tier_spec.replicas is None:
        return None
    return tier_spec.num_parallel * tier_spec.replicas if tier_spec.replicas > 0 else None


def render_sidecar_config(spec: VoiceLaneSpec, *, lane_name: str, namespace: str) -> SidecarConfig:
    """The complete sidecar configuration of a lane, validated by the sidecar's own schema.

    The lane's own models check the same fields first, so a failure here is a gap between the two;
    it is still reported at the lane's field (spec.policy.rateLimit.burst), never the sidecar's key.
    """
    try:
        return build_config(sidecar_layer(spec, lane_name=lane_name, namespace=namespace))
    except ConfigError as exc:
        problems = [_problem_at_crd_field(problem) for problem in exc.problems]
        raise SpecError("; ".join(problems), problems) from None


# Sidecar keys of a tier that the lane sets from the tier's own fields, not from spec.<tier>.upstream.
_TIER_FIELDS_OF_UPSTREAM_KEYS = {"model": "model", "keep_alive": "keepAliveSeconds", "parallel_slots": "numParallel"}


def crd_path_of_sidecar_key(key: str) -> str:
    """`upstreams.fast.first_token_timeout_s` → `spec.fast.upstream.firstTokenTimeoutSeconds`."""
    if key in RENAMED_SIDECAR_FIELDS:
        return RENAMED_SIDECAR_FIELDS[key]
    parts = [part for part in key.split(".") if part]
    if len(parts) >= 2 and parts[0] == "upstreams" and parts[1] in TIERS:
        tier, rest = parts[1], parts[2:]
        if rest and rest[0] in _TIER_FIELDS_OF_UPSTREAM_KEYS:
            return f"spec.{tier}.{_TIER_FIELDS_OF_UPSTREAM_KEYS[rest[0]]}"
        return f"spec.{tier}.upstream" + _crd_subpath(UpstreamConfig, rest)
    if parts and parts[0] in ("routing", "tts"):
        return "spec" + _crd_subpath(SidecarConfig, parts)
    return "spec.policy" + _crd_subpath(SidecarConfig, parts)


def _crd_subpath(model: Any, parts: list[str]) -> str:
    """Walk the sidecar's models: field names in their CRD spelling, map keys and list indexes as they are."""
    path, node = "", model
    for part in parts:
        node = _without_none(node)
        if isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            path += f".{k8s_field_name(part)}"
            node = node.model_fields[part].annotation
        elif part.isdigit():
            path += f"[{part}]"
            node = next(iter(typing.get_args(node)), None)
        else:  # a map key (a request class, a pattern name): the CRD spells it the same
            path += f".{part}"
            node = typing.get_args(node)[-1] if typing.get_origin(node) is dict else None
    return path


def _without_none(annotation: Any) -> Any:
    options = [option for option in typing.get_args(annotation) if option is not type(None)]
    return options[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and options else annotation


def _problem_at_crd_field(problem: str) -> str:
    key, separator, message = problem.partition(": ")
    if not separator or " " in key:
        return f"spec: {crd_names_in(problem)}"
    where = "spec" if key == "<root>" else crd_path_of_sidecar_key(key)
    return f"{where}: {crd_names_in(message.removeprefix('Value error, '))}"


def _sidecar_field_names(annotation: Any, found: set[str]) -> set[str]:
    for argument in typing.get_args(annotation):
        _sidecar_field_names(argument, found)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            if name != k8s_field_name(name):
                found.add(name)
            _sidecar_field_names(field.annotation, found)
    return found


# The sidecar's own spellings that differ from the CRD's; request classes (email_tldr) are map keys and
# values the CRD spells the same, so they are left alone.
SIDECAR_ONLY_FIELD_NAMES = _sidecar_field_names(SidecarConfig, set()) - {str(value) for value in RequestClass}
_SNAKE_WORD = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")


def crd_names_in(message: str) -> str:
    """A sidecar message with its field names spelled as in the CRD (`sustained_per_s` → `sustainedPerSecond`)."""
    return _SNAKE_WORD.sub(
        lambda word: k8s_field_name(word[0]) if word[0] in SIDECAR_ONLY_FIELD_NAMES else word[0], message
    )


def sidecar_config_yaml(config: SidecarConfig, *, lane_name: str, namespace: str) -> str:
    header = f"# Rendered by the VoiceLane operator from {namespace}/{lane_name}; edit the VoiceLane instead.\n"
    body = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=1000)
    return header + body


# --- warnings ---------------------------------------------------------------------------


def tier_warnings(spec: VoiceLaneSpec | Mapping[str, Any]) -> list[str]:
    """Accepted but worth knowing: the status writer reports these in a condition."""
    lane = parse_spec(spec)
    warnings: list[str] = []
    for tier in TIERS:
        tier_spec = lane.tier(tier)
        cpu = parse_quantity(tier_spec.resources.cpu)
        if cpu != cpu.to_integral_value():
            warnings.append(
                f"spec.{tier}.resources.cpu is {tier_spec.resources.cpu}, not a whole number of CPUs: "
                "the kubelet's static CPU manager pins only whole CPUs, so this tier shares cores"
            )
        storage = tier_spec.storage
        if (
            storage is not None
            and storage.uses_claim()
            and tier_spec.replicas is None
            and storage.access_mode != "ReadWriteMany"
        ):
            warnings.append(
                f"spec.{tier}.storage.accessMode is {storage.access_mode} and spec.{tier}.replicas is unset: "
                "a scale above 1 (an autoscaler, kubectl scale) leaves the pods that cannot mount the claim "
                "Pending; use ReadWriteMany"
            )
        store = model_store_size_limit(tier_spec)
        download = MODEL_DOWNLOAD_BYTES.get(loaded_model_name(tier_spec.model))
        if store is not None and download is None and store == default_model_store_limit(tier_spec.model):
            warnings.append(
                f"spec.{tier}.model {tier_spec.model} has no built-in download size: its emptyDir is limited to "
                f"{UNKNOWN_MODEL_STORE_LIMIT} (and as much ephemeral-storage requested); "
                f"set spec.{tier}.storage.emptyDir.sizeLimit to fit it"
            )
        elif store is not None and download is not None and parse_quantity(store) < download:
            warnings.append(
                f"spec.{tier}.storage.emptyDir.sizeLimit is {store}, less than the {download / 1e9:.1f} GB "
                f"{tier_spec.model} downloads: the pod is evicted while it pulls"
            )
        if tier_spec.replicas == 0:
            warnings.append(f"spec.{tier}.replicas is 0: the {tier} tier has no pods and the lane cannot be ready")
        if tier_spec.keep_alive_s == 0:
            warnings.append(
                f"spec.{tier}.keepAliveSeconds is 0: the model is unloaded after every request "
                "and reloaded by the warmer"
            )
    return warnings


# --- children ---------------------------------------------------------------------------


def _metadata(name: str, namespace: str, labels: dict[str, str], owner: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [owner]}


def _resources(
    cpu: str, memory: str, ephemeral_storage: str, extended: Mapping[str, int] | None = None
) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory, "ephemeral-storage": ephemeral_storage}
    # Extended resources cannot be overcommitted: Kubernetes requires their requests to equal their limits.
    amounts.update((name, str(count)) for name, count in sorted((extended or {}).items()))
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_UID,
        "runAsGroup": RUN_AS_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(pairs: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"name": name, "value": value} for name, value in pairs.items()]


def _extra_env(tier_spec: TierSpec) -> list[dict[str, Any]]:
    return [var.model_dump(by_alias=True, exclude_none=True) for var in tier_spec.env]


def ollama_duration(seconds: int) -> str:
    """Whole seconds as the Go duration Ollama reads: `900` → `15m`, `5400` → `1h30m`, `0` → `0s`, `-1` → `-1s`.

    With a unit, because `ollama run --keepalive` (the warmer) takes only Go durations, while
    OLLAMA_KEEP_ALIVE and a call's `keep_alive` take those too; a negative one keeps the model for good.
    """
    hours, rest = divmod(abs(seconds), 3600)
    minutes, rest_seconds = divmod(rest, 60)
    parts = [f"{count}{unit}" for count, unit in ((hours, "h"), (minutes, "m"), (rest_seconds, "s")) if count]
    return ("-" if seconds < 0 else "") + ("".join(parts) or "0s")


def model_server_environment(tier_spec: TierSpec, *, gated: bool = False) -> dict[str, str]:
    """The Ollama settings a tier's model server runs with (the spec's own `env` entries aside)."""
    pairs = {
        "OLLAMA_HOST": f"127.0.0.1:{GATED_OLLAMA_PORT}" if gated else f"0.0.0.0:{OLLAMA_PORT}",
        "OLLAMA_MODELS": MODELS_PATH,
        "HOME": HOME_PATH,
        "OLLAMA_KEEP_ALIVE": ollama_duration(tier_spec.keep_alive_s),
        "OLLAMA_NUM_PARALLEL": str(tier_spec.num_parallel),
        "OLLAMA_MAX_QUEUE": str(tier_spec.max_queue),
        # One model per pod: the memory reserved for it is not shared with another.
        "OLLAMA_MAX_LOADED_MODELS": "1",
    }
    if tier_spec.context_length is not None:
        pairs["OLLAMA_CONTEXT_LENGTH"] = str(tier_spec.context_length)
    if not any(var.name == "OLLAMA_NO_CLOUD" for var in tier_spec.env):
        # Self-hosted: Ollama's cloud models would send the lane's texts to ollama.com. A lane may
        # still opt in with its own OLLAMA_NO_CLOUD entry (one entry only: the env list is keyed by name).
        pairs["OLLAMA_NO_CLOUD"] = "1"
    pairs["VOICELANE_MODEL"] = loaded_model_name(tier_spec.model)
    return pairs


def _model_server_env(tier_spec: TierSpec, *, gated: bool) -> list[dict[str, Any]]:
    return _env(model_server_environment(tier_spec, gated=gated)) + _extra_env(tier_spec)


def _exec_probe(command: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "exec": {"command": ["sh", "-c", command]},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def _model_store_volume(lane_name: str, tier: TierName, tier_spec: TierSpec) -> dict[str, Any]:
    storage = tier_spec.storage
    if storage is not None and storage.existing_claim is not None:
        return {"name": "models", "persistentVolumeClaim": {"claimName": storage.existing_claim}}
    if storage is not None and storage.size is not None:
        return {"name": "models", "persistentVolumeClaim": {"claimName": claim_name(lane_name, tier)}}
    return {"name": "models", "emptyDir": {"sizeLimit": model_store_size_limit(tier_spec)}}


def _uses_exclusive_claim(tier_spec: TierSpec) -> bool:
    storage = tier_spec.storage
    return storage is not None and storage.uses_claim() and storage.access_mode != "ReadWriteMany"


def _gate_container(tier_spec: TierSpec, gate: GateSpec) -> dict[str, Any]:
    """`voicelane gate` in front of the pod's Ollama: the tier's port, its slots, its model and limits."""

    def probe(path: str, **timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}, "timeoutSeconds": 2, **timing}

    return {
        "name": GATE_CONTAINER_NAME,
        "image": gate.image,
        "command": ["voicelane", "gate"],
        "args": [
            *("--listen", f"0.0.0.0:{OLLAMA_PORT}"),
            *("--metrics-listen", f"0.0.0.0:{GATE_METRICS_PORT}"),
            *("--upstream", f"http://127.0.0.1:{GATED_OLLAMA_PORT}"),
            *("--slots", str(tier_spec.num_parallel)),
            *("--reserve-for-chats", str(gate.reserve_for_chats)),
            *("--model", loaded_model_name(tier_spec.model)),
            # The guardian judges Ollama's own processes (the pod shares its process namespace)
            # against the limits of Ollama's container.
            *("--cpu-limit", tier_spec.resources.cpu, "--memory-limit", tier_spec.resources.memory),
        ],
        "ports": [
            {"name": "http", "containerPort": OLLAMA_PORT, "protocol": "TCP"},
            {"name": GATE_METRICS_PORT_NAME, "containerPort": GATE_METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": _resources(gate.cpu, gate.memory, GATE_EPHEMERAL_STORAGE),
        "securityContext": _container_security(),
        # Ready once the model is loaded (Ollama's /api/ps, read by the gate).
        "readinessProbe": probe("/readyz", periodSeconds=5, failureThreshold=3),
        "livenessProbe": probe("/healthz", periodSeconds=10, failureThreshold=3),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def _pod_spec(lane_name: str, tier: TierName, tier_spec: TierSpec, gate: GateSpec | None = None) -> dict[str, Any]:
    gated = gate is not None and gate.enabled
    loopback_host = f"127.0.0.1:{GATED_OLLAMA_PORT}" if gated else _LOOPBACK_HOST
    cpu, memory = tier_spec.resources.cpu, tier_spec.resources.memory
    ephemeral_storage = model_server_ephemeral_storage(tier_spec)
    server_mounts = [
        {"name": "models", "mountPath": MODELS_PATH},
        {"name": "home", "mountPath": HOME_PATH},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    model = loaded_model_name(tier_spec.model)
    pull_model = {
        "name": "pull-model",
        "image": tier_spec.image,
        "command": ["sh", "-c", _PULL_SCRIPT],
        "env": _env(
            {
                "OLLAMA_HOST": loopback_host,
                "OLLAMA_MODELS": MODELS_PATH,
                "HOME": HOME_PATH,
                "VOICELANE_MODEL": model,
            }
        )
        + _extra_env(tier_spec),
        # Equal to the server's: keeps the pod Guaranteed without raising its total.
        "resources": _resources(cpu, memory, ephemeral_storage),
        "securityContext": _container_security(),
        "volumeMounts": server_mounts,
    }
    server = {
        "name": MODEL_SERVER_NAME,
        "image": tier_spec.image,
        "args": ["serve"],
        "ports": [{"name": "http", "containerPort": OLLAMA_PORT, "protocol": "TCP"}],
        "env": _model_server_env(tier_spec, gated=gated),
        # Only the model server gets the tier's devices: the pull and the warmer never run the model.
        "resources": _resources(cpu, memory, ephemeral_storage, tier_spec.resources.extended),
        "securityContext": _container_security(),
        "volumeMounts": server_mounts,
        "startupProbe": _exec_probe(
            _RESIDENT_CHECK, period=STARTUP_PROBE_PERIOD_SECONDS, failures=STARTUP_PROBE_FAILURES
        ),
        # Six misses (a minute) leave the warmer time to reload an unloaded model.
        "readinessProbe": _exec_probe(_RESIDENT_CHECK, period=10, failures=6),
        "livenessProbe": (
            # Behind the gate Ollama listens on loopback, which the kubelet cannot reach.
            _exec_probe(_SERVER_ANSWERS, period=20, failures=3)
            if gated
            else {
                "httpGet": {"path": "/api/version", "port": "http"},
                "periodSeconds": 20,
                "timeoutSeconds": 5,
                "failureThreshold": 3,
                "successThreshold": 1,
            }
        ),
    }
    if gated:
        del server["ports"]  # the gate holds the pod's port and its name, which the Service targets
    warmer = {
        "name": "warmer",
        "image": tier_spec.image,
        "command": ["sh", "-c", _WARMER_SCRIPT],
        "env": _env(
            {
                "OLLAMA_HOST": loopback_host,
                "HOME": "/tmp",
                "OLLAMA_KEEP_ALIVE": ollama_duration(tier_spec.keep_alive_s),
                "VOICELANE_MODEL": model,
                "VOICELANE_REWARM_SECONDS": str(tier_spec.rewarm_interval_s),
                "VOICELANE_CHECK_SECONDS": str(WARMER_CHECK_SECONDS),
            }
        ),
        "resources": _resources(
            WARMER_RESOURCES["cpu"], WARMER_RESOURCES["memory"], WARMER_RESOURCES["ephemeral-storage"]
        ),
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_UID,
            "fsGroup": RUN_AS_UID,
            # A model store holds a few large files; a recursive chown on every start is waste.
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [pull_model],
        "containers": [server, _gate_container(tier_spec, gate), warmer] if gate and gate.enabled else [server, warmer],
        "volumes": [
            _model_store_volume(lane_name, tier, tier_spec),
            {"name": "home", "emptyDir": {"sizeLimit": HOME_SIZE_LIMIT}},
            {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
        ],
    }
    if gated:
        pod["shareProcessNamespace"] = True  # the gate's guardian reads Ollama's processes
    if tier_spec.node_selector:
        pod["nodeSelector"] = dict(sorted(tier_spec.node_selector.items()))
    if tier_spec.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in tier_spec.tolerations]
    if tier_spec.affinity is not None:
        pod["affinity"] = tier_spec.affinity
    if tier_spec.priority_class_name is not None:
        pod["priorityClassName"] = tier_spec.priority_class_name
    if tier_spec.topology_spread_constraints:
        pod["topologySpreadConstraints"] = [
            {
                **constraint.model_dump(by_alias=True, exclude_none=True),
                "labelSelector": constraint.label_selector or {"matchLabels": selector_labels(lane_name, tier)},
            }
            for constraint in tier_spec.topology_spread_constraints
        ]
    if tier_spec.runtime_class_name is not None:
        pod["runtimeClassName"] = tier_spec.runtime_class_name
    if tier_spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": secret.name} for secret in tier_spec.image_pull_secrets]
    return pod


# checkov's Kubernetes checks that a tier Deployment deliberately does not meet, each with its reason
# (checkov reads `checkov.io/skipN: CHECK=reason` annotations; tests/delivery/test_checkov.py keeps them honest).
TIER_CHECKOV_SKIPS = {
    "checkov.io/skip1": "CKV_K8S_8=the warmer container is a reload loop; the model server's liveness probe guards the pod",
    "checkov.io/skip2": "CKV_K8S_9=the warmer container is a reload loop; the model server's readiness probe gates the pod",
    "checkov.io/skip3": "CKV_K8S_43=spec.image is the user's choice; the default is a pinned tag and a digest is accepted",
    "checkov.io/skip4": "CKV_K8S_15=images are pinned tags of several GB; IfNotPresent avoids a pull on every restart",
}


def _deployment(
    lane_name: str,
    namespace: str,
    tier: TierName,
    tier_spec: TierSpec,
    owner: dict[str, Any],
    gate: GateSpec | None = None,
) -> dict[str, Any]:
    labels = lane_labels(lane_name, component="model-server", tier=tier)
    if _uses_exclusive_claim(tier_spec):
        # The old pod holds the claim; a surge pod elsewhere could never mount it.
        strategy: dict[str, Any] = {"type": "Recreate"}
    else:
        # Keep the tier serving through a rollout: the new pod is Ready (model loaded) first.
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    metadata = _metadata(tier_name(lane_name, tier), namespace, labels, owner)
    metadata["annotations"] = dict(TIER_CHECKOV_SKIPS)
    # Unset replicas are left out, so the operator owns no scale and an autoscaler's stays.
    scale = {} if tier_spec.replicas is None else {"replicas": tier_spec.replicas}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            **scale,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "selector": {"matchLabels": selector_labels(lane_name, tier)},
            "strategy": strategy,
            "template": {
                "metadata": {
                    # The lane's own keys first: the operator's win (the spec refuses them anyway).
                    "labels": {
                        **dict(sorted(tier_spec.pod_labels.items())),
                        **labels,
                        **({LABEL_GATE: "true"} if gate is not None and gate.enabled else {}),
                    },
                    "annotations": {
                        **dict(sorted(tier_spec.pod_annotations.items())),
                        ANNOTATION_DEFAULT_CONTAINER: MODEL_SERVER_NAME,
                    },
                },
                "spec": _pod_spec(lane_name, tier, tier_spec, gate),
            },
        },
    }


def _service(lane_name: str, namespace: str, tier: TierName, owner: dict[str, Any]) -> dict[str, Any]:
    labels = lane_labels(lane_name, component="model-server", tier=tier)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(tier_name(lane_name, tier), namespace, labels, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(lane_name, tier),
            "ports": [
                {
                    "name": "http",
                    "port": TIER_SERVICE_PORTS[tier],
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def _claim(
    lane_name: str, namespace: str, tier: TierName, tier_spec: TierSpec, owner: dict[str, Any]
) -> dict[str, Any] | None:
    storage = tier_spec.storage
    if storage is None or storage.size is None:
        return None
    spec: dict[str, Any] = {
        "accessModes": [storage.access_mode],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name is not None:
        spec["storageClassName"] = storage.storage_class_name
    labels = lane_labels(lane_name, component="model-store", tier=tier)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(claim_name(lane_name, tier), namespace, labels, owner),
        "spec": spec,
    }


def _disruption_budget(
    lane_name: str, namespace: str, tier: TierName, tier_spec: TierSpec, owner: dict[str, Any]
) -> dict[str, Any] | None:
    if tier_spec.replicas is not None and tier_spec.replicas <= 1:
        return None  # unset replicas may be scaled up by others: the budget is kept for them
    labels = lane_labels(lane_name, component="model-server", tier=tier)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(tier_name(lane_name, tier), namespace, labels, owner),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(lane_name, tier)},
            # A pod whose model never loaded must not block a node drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _sidecar_configmap(spec: VoiceLaneSpec, lane_name: str, namespace: str, owner: dict[str, Any]) -> dict[str, Any]:
    config = render_sidecar_config(spec, lane_name=lane_name, namespace=namespace)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(
            sidecar_configmap_name(lane_name),
            namespace,
            lane_labels(lane_name, component="sidecar-config"),
            owner,
        ),
        "data": {SIDECAR_CONFIG_KEY: sidecar_config_yaml(config, lane_name=lane_name, namespace=namespace)},
    }


def _network_policy(
    lane_name: str, namespace: str, owner: dict[str, Any], operator_namespace: str | None, *, gated: bool
) -> dict[str, Any]:
    operator_peer: dict[str, Any] = {
        "namespaceSelector": (
            {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}} if operator_namespace else {}
        ),
        "podSelector": {"matchLabels": {LABEL_NAME: OPERATOR_NAME}},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(
            network_policy_name(lane_name),
            namespace,
            lane_labels(lane_name, component="network-policy"),
            owner,
        ),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_NAME: MODEL_SERVER_NAME, LABEL_LANE: lane_name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {LABEL_LANE: lane_name}}}, operator_peer],
                    "ports": [{"protocol": "TCP", "port": OLLAMA_PORT}],
                },
                # A Prometheus runs in a namespace of its own: the gate's metrics port is open to every source.
                *([{"ports": [{"protocol": "TCP", "port": GATE_METRICS_PORT}]}] if gated else []),
            ],
        },
    }


def spec_hash(child: Mapping[str, Any]) -> str:
    """A short digest of a child's rendered content, for cheap change detection."""
    canonical = json.dumps(child, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _finished(child: dict[str, Any]) -> dict[str, Any]:
    # A fresh tree: no dict is shared between or within children, so a caller may
    # patch one freely, and the YAML of it has no anchors.
    child = json.loads(json.dumps(child))
    child["metadata"]["annotations"] = {
        **child["metadata"].get("annotations", {}),
        ANNOTATION_SPEC_HASH: spec_hash(child),
    }
    return child


def _lane_identity(lane: Mapping[str, Any]) -> tuple[str, str, str]:
    if not isinstance(lane, Mapping):
        raise SpecError(f"a VoiceLane must be a mapping, got {type(lane).__name__}")
    api_version, kind = lane.get("apiVersion", API_VERSION), lane.get("kind", KIND)
    if api_version != API_VERSION or kind != KIND:
        raise SpecError(f"expected apiVersion {API_VERSION} kind {KIND}, got {api_version} {kind}")
    metadata = lane.get("metadata")
    if not isinstance(metadata, Mapping):
        raise SpecError("metadata: required (name, namespace, uid)")
    name = check_lane_name(metadata.get("name"))
    namespace, uid = metadata.get("namespace"), metadata.get("uid")
    if not isinstance(namespace, str) or not namespace:
        raise SpecError("metadata.namespace: required")
    if not isinstance(uid, str) or not uid:
        raise SpecError("metadata.uid: required (the owner reference of every child)")
    return name, namespace, uid


def render_children(lane: Mapping[str, Any], *, operator_namespace: str | None = None) -> list[dict[str, Any]]:
    """Every object the operator keeps for a VoiceLane, in apply order.

    `lane` is the whole object (apiVersion, kind, metadata with name, namespace and
    uid, spec). `operator_namespace` narrows the NetworkPolicy's operator peer to that
    namespace; None admits operator pods from any namespace. Raises SpecError.
    """
    name, namespace, uid = _lane_identity(lane)
    spec = parse_spec(lane.get("spec"))
    owner = owner_reference(name, uid)
    children: list[dict[str, Any] | None] = [
        _sidecar_configmap(spec, name, namespace, owner),
        _network_policy(name, namespace, owner, operator_namespace, gated=spec.gate is not None and spec.gate.enabled),
    ]
    for tier in TIERS:
        tier_spec = spec.tier(tier)
        children += [
            _claim(name, namespace, tier, tier_spec, owner),
            _service(name, namespace, tier, owner),
            _deployment(name, namespace, tier, tier_spec, owner, spec.gate),
            _disruption_budget(name, namespace, tier, tier_spec, owner),
        ]
    return [_finished(child) for child in children if child is not None]
