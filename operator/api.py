"""The VoiceLane API: the typed spec and status of a lane, the one Python source of truth.

The CRD's openAPIV3Schema is generated from these models (see `crd.py`), and the
renderer validates every VoiceLane through them, so the API server and
`voicelane render` reject the same specs. Field names are camelCase on the wire
(the Kubernetes convention) and snake_case in Python.

The lane-wide policy, routing, TTS and per-tier client sections are subclasses of
the sidecar's own configuration models: the same fields, defaults, ranges and
validators, only spelled the Kubernetes way (`retry_after_s` → `retryAfterSeconds`).
A sidecar field that is not reachable from here must be listed in
`OPERATOR_OWNED_SIDECAR_FIELDS`, which a test checks.

Cross-field rules are `CelRule`s: each carries its CEL expression and message for
the CRD's `x-kubernetes-validations` and a Python predicate for the same rule, so
both sides enforce one definition.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from voicelane import __version__
from voicelane.sidecar.config import (
    DEFAULT_COMPLEX_PATTERNS,
    CacheConfig,
    ClassesConfig,
    GuardianConfig,
    LimitsConfig,
    PhraseBankConfig,
    PromptsConfig,
    Protocol,
    RateLimitConfig,
    RequestClass,
    RoutingConfig,
    SchedulerConfig,
    ServerConfig,
    SingleFlightConfig,
    TTFAConfig,
    TTFATargets,
    TTSConfig,
    UpstreamConfig,
    VoiceStyle,
)

GROUP = "voicelane.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "VoiceLane"
PLURAL = "voicelanes"
SINGULAR = "voicelane"
CRD_NAME = f"{PLURAL}.{GROUP}"

TIERS: tuple[Literal["fast", "deep"], ...] = ("fast", "deep")
TierName = Literal["fast", "deep"]

# Pinned rather than `latest`, so a lane's pods do not change under it: the release the real-stack
# tests run (voicelane/gobuild/modules/ollama), so the scripts the pods run are proven on that binary.
DEFAULT_OLLAMA_IMAGE = "ollama/ollama:0.17.4"
# The sidecar's image also runs the gate (`voicelane gate`): one image for the lane's own code.
SIDECAR_IMAGE_REPOSITORY = "ghcr.io/voicelane/voicelane-sidecar"
DEFAULT_SIDECAR_IMAGE = f"{SIDECAR_IMAGE_REPOSITORY}:{__version__}"

# Labels the operator puts on every child. On a tier's pods they select the pods (Service, Deployment,
# NetworkPolicy, disruption budget), so a lane's podLabels cannot set them.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_LANE = "voicelane.dev/lane"
LABEL_TIER = "voicelane.dev/tier"
# On a tier pod that runs the gate: the chart's PodMonitor scrapes the gate's port on those alone.
LABEL_GATE = "voicelane.dev/gate"
OPERATOR_POD_LABELS: tuple[str, ...] = (
    LABEL_NAME,
    LABEL_INSTANCE,
    LABEL_COMPONENT,
    LABEL_PART_OF,
    LABEL_MANAGED_BY,
    LABEL_LANE,
    LABEL_TIER,
)
ANNOTATION_DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
OPERATOR_POD_ANNOTATIONS: tuple[str, ...] = (ANNOTATION_DEFAULT_CONTAINER,)
# Keys under this prefix are the operator's and the sidecar injector's (present and future).
RESERVED_KEY_PREFIX = "voicelane.dev/"

# A lane's name prefixes Service names such as `<lane>-fast-models` (12 characters
# of suffix), and Service names are DNS-1035 labels of at most 63 characters.
MAX_LANE_NAME_LENGTH = 50
LANE_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class SpecError(ValueError):
    """An invalid VoiceLane: each problem names the field (`spec.fast.resources.cpu: ...`)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.message = message
        self.problems = problems if problems is not None else [message]
        super().__init__(message)


class CelRule(NamedTuple):
    """One cross-field rule, in CEL for the API server and in Python for the renderer.

    A rule that reads defaulted fields guards each with `has()`: the API server also checks rules
    against the bare `{}` default of their object, before the fields' own defaults are filled in.
    """

    rule: str
    message: str
    holds: Callable[[Any], bool]
    # Where the API server reports a failure when that is not the rule's own object, e.g. `.metadata.name`
    # for a rule on the whole lane (which it would otherwise report at no field at all).
    field_path: str | None = None

    def as_validation(self) -> dict[str, str]:
        validation = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            validation["fieldPath"] = self.field_path
        return validation


def k8s_field_name(python_name: str) -> str:
    """`retry_after_s` → `retryAfterSeconds`, `sustained_per_s` → `sustainedPerSecond`.

    The sidecar's YAML abbreviates seconds as `_s`; Kubernetes spells units out
    (`periodSeconds`), so the CRD does too.
    """
    if python_name.endswith("_per_s"):
        python_name = python_name[: -len("_per_s")] + "_per_second"
    elif python_name.endswith("_s"):
        python_name = python_name[: -len("_s")] + "_seconds"
    head, *rest = python_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _add_cel_rules(schema: dict[str, Any], model: type) -> None:
    rules: tuple[CelRule, ...] = getattr(model, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.as_validation() for rule in rules]


class SpecModel(BaseModel):
    """Base of every API model: camelCase on the wire, frozen, unknown keys refused, CEL rules checked."""

    model_config = ConfigDict(
        alias_generator=k8s_field_name,
        extra="forbid",
        frozen=True,
        json_schema_extra=_add_cel_rules,
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = ()
    # Sidecar fields the operator sets itself: wire name → where the value comes from.
    operator_owned: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_operator_owned(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key, source in cls.operator_owned.items():
                if key in data:
                    raise ValueError(f"{key} cannot be set here: {source}")
        return data

    @model_validator(mode="after")
    def _check_cel_rules(self) -> SpecModel:
        for rule in type(self).cel_rules:
            if not rule.holds(self):
                if rule.field_path is None:
                    raise ValueError(rule.message)
                # Reported at the same field as the API server reports it (see describe_validation_errors).
                raise PydanticCustomError("cel_rule", rule.message, {"field_path": rule.field_path})
        return self


# --- Kubernetes value types -------------------------------------------------------------

# Positive quantities only (at least one non-zero digit); the exponent forms are left out.
QUANTITY_PATTERN = r"^([0-9]*[1-9][0-9]*(\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*)(m|[KMGTPE]i|[kMGTPE])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Ollama model references: [registry/][namespace/]name[:tag]; no shell metacharacters.
# Ollama's model names: [registry[:port]/][namespace/]model[:tag]. A registry may carry a port (a
# mirror at registry.local:5000); nothing a shell would read as syntax is allowed anywhere.
MODEL_PATTERN = (
    r"^(?:[A-Za-z0-9][A-Za-z0-9.-]*:[0-9]{1,5}/)?"
    r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*(?::[A-Za-z0-9][A-Za-z0-9._-]*)?$"
)
IMAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"
# An extended resource (nvidia.com/gpu, amd.com/gpu): a DNS-subdomain domain, '/', a name of at most 63
# characters. Names in the kubernetes.io domains are native resources and are refused separately.
EXTENDED_RESOURCE_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
MAX_EXTENDED_RESOURCES = 16
# Label and annotation keys: an optional DNS-subdomain prefix (at most 253 characters) and '/', then a
# name of at most 63 characters; label values at most 63 characters of the same alphabet.
QUALIFIED_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
MAX_POD_METADATA_ENTRIES = 64


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes quantity as a Decimal (`500m` → 0.5); ValueError if it is not one."""
    from kubernetes.utils.quantity import parse_quantity as _parse

    if isinstance(value, bool):
        raise ValueError("must be a quantity, not a boolean")
    try:
        return Decimal(_parse(value))
    except (ValueError, TypeError, InvalidOperation) as exc:
        raise ValueError(f"{value!r} is not a Kubernetes quantity such as 2, 500m or 4Gi") from exc


def _positive_quantity(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError("must be a positive quantity such as 2, 500m or 4Gi")
        return str(value)
    if not isinstance(value, str) or not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a positive Kubernetes quantity such as 2, 500m or 4Gi")
    parse_quantity(value)
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_positive_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]


def _byte_size(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a size such as 64Ki, 64Mi or 1Gi")
    parse_quantity(value)
    return value


# A size in bytes, written as a quantity string (64Mi). A string only, not int-or-string: the CEL range
# rules read it with quantity(), which takes strings.
ByteSize = Annotated[
    str,
    BeforeValidator(_byte_size),
    WithJsonSchema({"type": "string", "pattern": QUANTITY_PATTERN, "maxLength": 32}),
]


def byte_size_range_rule(field: str, python_name: str, least: str, most: str) -> CelRule:
    """A ByteSize field between two sizes, in CEL (Kubernetes' quantity library) and in Python."""
    return CelRule(
        # A size that is no quantity is the schema's to refuse (the API server runs the rule all the same).
        f"!has(self.{field}) || !isQuantity(self.{field}) || (quantity(self.{field}).compareTo(quantity('{least}')) >= 0"
        f" && quantity(self.{field}).compareTo(quantity('{most}')) <= 0)",
        f"{field} must be between {least} and {most}",
        lambda m: parse_quantity(least) <= parse_quantity(getattr(m, python_name)) <= parse_quantity(most),
        field_path=f".{field}",
    )


# --- per tier ---------------------------------------------------------------------------

# keepAliveSeconds: -1 keeps the model loaded for good (Ollama reads any negative keep-alive so; one value
# spells it here), 0 unloads it after each request. The upper bound is a year: anything longer is what -1
# says, and seconds far beyond it would overflow Go's duration in Ollama.
KEEP_ALIVE_FOREVER = -1
MAX_KEEP_ALIVE_SECONDS = 365 * 24 * 3600
# The earlier duration-string spellings of a tier's fields, refused with their new names.
RENAMED_TIER_FIELDS: Mapping[str, str] = {
    "keepAlive": "it is keepAliveSeconds now, in seconds (900 for 15m; -1 keeps the model loaded for good)",
    "rewarmInterval": "it is rewarmIntervalSeconds now, in seconds (1800 for 30m)",
}


def _cel_string(text: str) -> str:
    """A CEL single-quoted string literal of `text` (regular expressions carry backslashes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(_cel_string(item) for item in items) + "]"


def is_qualified_name(key: str) -> bool:
    """A valid label or annotation key: `app`, `example.com/team`."""
    prefix, _, _ = key.rpartition("/")
    return re.fullmatch(QUALIFIED_NAME_PATTERN, key) is not None and len(prefix) <= 253


def is_operator_key(key: str, operator_keys: tuple[str, ...]) -> bool:
    return key in operator_keys or key.startswith(RESERVED_KEY_PREFIX)


def is_extended_resource_name(name: str) -> bool:
    """`nvidia.com/gpu` yes; `cpu`, `hugepages-2Mi` and `kubernetes.io/...` names (native resources) no."""
    return (
        len(name) <= 317
        and re.fullmatch(EXTENDED_RESOURCE_PATTERN, name) is not None
        and len(name.split("/", 1)[0]) <= 253
        and "kubernetes.io/" not in name
    )


class ResourcesSpec(SpecModel):
    """What the model server reserves: requests equal limits (Guaranteed QoS)."""

    cel_rules = (
        CelRule(
            "!has(self.extended) || self.extended.all(k, k.size() <= 317 && k.matches("
            + _cel_string(EXTENDED_RESOURCE_PATTERN)
            + ") && k.matches('^[^/]{1,253}/') && !k.contains('kubernetes.io/'))",
            "each name must be an extended resource such as nvidia.com/gpu or amd.com/gpu (a domain, '/', a name); "
            "cpu and memory have their own fields, and kubernetes.io names are not extended resources",
            lambda r: all(is_extended_resource_name(name) for name in r.extended),
            field_path=".extended",
        ),
    )

    cpu: Quantity = Field(
        description="CPUs, e.g. 4 or 1500m. Whole CPUs let the kubelet's static CPU manager pin them; "
        "a fraction is accepted and reported in a condition."
    )
    memory: Quantity = Field(description="Memory, e.g. 8Gi: the model, its context cache and the server.")
    extended: dict[str, Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=dict,
        max_length=MAX_EXTENDED_RESOURCES,
        description="Extended resources by name, e.g. {nvidia.com/gpu: 1} or {amd.com/gpu: 1}: whole devices "
        "the model server requests and limits alike. Pair it with the tier's tolerations, nodeSelector or "
        "runtimeClassName as the GPU nodes need.",
    )


class EmptyDirSpec(SpecModel):
    """The model store of a tier without a claim: an emptyDir of each pod, pulled into when the pod starts."""

    size_limit: Quantity | None = Field(
        None,
        description="Most the store may hold, e.g. 8Gi; the model server requests and limits as much "
        "ephemeral-storage more (1Gi more, for its home, /tmp and logs). Unset: derived from the model's "
        "download size (the README lists the built-in sizes; 16Gi for a model not listed).",
    )


class StorageSpec(SpecModel):
    """Where pulled models are kept: a new claim (size), yours (existingClaim) or, with neither, an emptyDir."""

    cel_rules = (
        CelRule(
            "!has(self.emptyDir) || !(has(self.size) || has(self.existingClaim))",
            "emptyDir is the store without a claim: set it, or size or existingClaim, not both",
            lambda s: s.empty_dir is None or (s.size is None and s.existing_claim is None),
        ),
        CelRule(
            "!(has(self.size) && has(self.existingClaim))",
            "size and existingClaim are mutually exclusive: size asks for a new claim, existingClaim mounts yours",
            lambda s: not (s.size is not None and s.existing_claim is not None),
        ),
        CelRule(
            "!has(self.storageClassName) || has(self.size)",
            "storageClassName applies only to a new claim: set size with it",
            lambda s: s.storage_class_name is None or s.size is not None,
        ),
    )

    size: Quantity | None = Field(None, description="Size of a new PersistentVolumeClaim for the model store.")
    storage_class_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="StorageClass of the new claim."
    )
    existing_claim: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Mount this existing claim instead."
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"] = Field(
        "ReadWriteOnce",
        description="Access mode of the claim (new or existing). Pods of a ReadWriteMany claim roll over "
        "with a surge; the others are replaced one after the other (Recreate). A tier of more than one "
        "replica needs ReadWriteMany: each replica does not get a claim of its own.",
    )
    empty_dir: EmptyDirSpec | None = Field(None, description="Without a claim: the emptyDir's size.")

    def uses_claim(self) -> bool:
        return self.size is not None or self.existing_claim is not None


class Toleration(SpecModel):
    """A core/v1 Toleration."""

    cel_rules = (
        CelRule(
            "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "value must be empty when operator is Exists",
            lambda t: t.operator != "Exists" or not t.value,
        ),
    )

    key: str | None = Field(None, max_length=316)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, description="Only with effect NoExecute.")


class LocalObjectReference(SpecModel):
    """A core/v1 LocalObjectReference: an object of the lane's namespace, by name."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)


class TopologySpreadConstraint(SpecModel):
    """A core/v1 TopologySpreadConstraint; without a labelSelector it spreads the tier's own pods."""

    cel_rules = (
        CelRule(
            "!has(self.minDomains) || self.whenUnsatisfiable == 'DoNotSchedule'",
            "minDomains applies only with whenUnsatisfiable: DoNotSchedule",
            lambda c: c.min_domains is None or c.when_unsatisfiable == "DoNotSchedule",
        ),
    )

    max_skew: int = Field(ge=1, description="How unevenly the pods may be spread.")
    topology_key: str = Field(min_length=1, max_length=317, description="Node label of the domains, e.g. zone.")
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"]
    label_selector: dict[str, Any] | None = Field(
        None, description="A metav1.LabelSelector, passed as is. Unset: the tier's own pods (its selector labels)."
    )
    min_domains: int | None = Field(None, ge=1)
    match_label_keys: tuple[str, ...] | None = Field(None, max_length=16)
    node_affinity_policy: Literal["Honor", "Ignore"] | None = None
    node_taints_policy: Literal["Honor", "Ignore"] | None = None


# Set by the operator on the model server; a lane that sets them would break the pod.
RESERVED_ENV_NAMES: tuple[str, ...] = (
    "HOME",
    "OLLAMA_HOST",
    "OLLAMA_MODELS",
    "OLLAMA_KEEP_ALIVE",
    "OLLAMA_NUM_PARALLEL",
    "OLLAMA_MAX_QUEUE",
    "OLLAMA_CONTEXT_LENGTH",
    "OLLAMA_MAX_LOADED_MODELS",
    "VOICELANE_MODEL",
)
_RESERVED_ENV_CEL = "[" + ", ".join(f"'{name}'" for name in RESERVED_ENV_NAMES) + "]"


# An environment variable, of the model server or of the sidecar, as core/v1 has it.
_VALUE_OR_VALUE_FROM = CelRule(
    "!(has(self.value) && has(self.valueFrom))",
    "set value or valueFrom, not both",
    lambda e: not (e.value is not None and e.value_from is not None),
)


class EnvVar(SpecModel):
    """An extra environment variable for the model server (e.g. HTTPS_PROXY for pulling)."""

    cel_rules = (
        CelRule(
            f"!(self.name in {_RESERVED_ENV_CEL})",
            "this variable is set by the operator from the tier's fields: " + ", ".join(RESERVED_ENV_NAMES),
            lambda e: e.name not in RESERVED_ENV_NAMES,
        ),
        _VALUE_OR_VALUE_FROM,
    )

    name: str = Field(min_length=1, max_length=128, pattern=ENV_NAME_PATTERN)
    value: str | None = Field(None, max_length=32768)
    value_from: dict[str, Any] | None = Field(
        None, description="A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, ...), passed as is."
    )


class KeySelector(SpecModel):
    """A key of a Secret or ConfigMap in the lane's namespace (core/v1 SecretKeySelector, ConfigMapKeySelector)."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    optional: bool | None = Field(None, description="Start the sidecar even if the object or key is missing.")


class ObjectFieldSelector(SpecModel):
    """A field of the app pod, e.g. metadata.name (core/v1 ObjectFieldSelector)."""

    field_path: str = Field(min_length=1, max_length=256)
    api_version: str | None = Field(None, max_length=64)


class SidecarEnvVarSource(SpecModel):
    """Where a sidecar variable's value comes from (core/v1 EnvVarSource): one of its fields."""

    cel_rules = (
        CelRule(
            "(has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0) + (has(self.fieldRef) ? 1 : 0) == 1",
            "set exactly one of secretKeyRef, configMapKeyRef, fieldRef",
            lambda s: [s.secret_key_ref, s.config_map_key_ref, s.field_ref].count(None) == 2,
        ),
    )

    secret_key_ref: KeySelector | None = None
    config_map_key_ref: KeySelector | None = None
    field_ref: ObjectFieldSelector | None = None


class SidecarEnvVar(SpecModel):
    """A variable of the sidecar's environment (core/v1 EnvVar), e.g. an upstream API key from a Secret."""

    cel_rules = (_VALUE_OR_VALUE_FROM,)

    name: str = Field(min_length=1, max_length=128, pattern=ENV_NAME_PATTERN)
    value: str | None = Field(None, max_length=32768)
    value_from: SidecarEnvVarSource | None = None


class EnvFromReference(SpecModel):
    """A Secret or ConfigMap of the lane's namespace whose every key becomes a variable."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    optional: bool | None = None


class EnvFromSource(SpecModel):
    """All keys of a Secret or ConfigMap as sidecar variables (core/v1 EnvFromSource)."""

    cel_rules = (
        CelRule(
            "has(self.secretRef) != has(self.configMapRef)",
            "set exactly one of secretRef, configMapRef",
            lambda s: (s.secret_ref is None) != (s.config_map_ref is None),
        ),
    )

    prefix: str | None = Field(None, max_length=128, pattern=ENV_NAME_PATTERN, description="Put before each key.")
    secret_ref: EnvFromReference | None = None
    config_map_ref: EnvFromReference | None = None


class SidecarSpec(SpecModel):
    """The environment of the sidecar the webhook injects into the lane's app pods (set when a pod is created)."""

    env: tuple[SidecarEnvVar, ...] = Field(
        (),
        max_length=64,
        description="Variables of the sidecar, e.g. VOICELANE_UPSTREAMS__DEEP__API_KEY from a secretKeyRef.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    env_from: tuple[EnvFromSource, ...] = Field(
        (), max_length=16, description="Secrets and ConfigMaps whose keys become variables of the sidecar."
    )

    @model_validator(mode="after")
    def _names_unique(self) -> SidecarSpec:
        names = [var.name for var in self.env]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"env names a variable more than once: {', '.join(repeated)}")
        return self


class TierUpstreamSpec(SpecModel, UpstreamConfig):
    """How each sidecar calls this tier: generation options, timeouts and its circuit breaker."""

    cel_rules = (
        CelRule(
            "!has(self.connectTimeoutSeconds) || !has(self.firstTokenTimeoutSeconds)"
            " || self.connectTimeoutSeconds <= self.firstTokenTimeoutSeconds",
            "connectTimeoutSeconds must not exceed firstTokenTimeoutSeconds",
            lambda u: u.connect_timeout_s <= u.first_token_timeout_s,
        ),
        CelRule(
            "!has(self.firstTokenTimeoutSeconds) || !has(self.totalTimeoutSeconds)"
            " || self.firstTokenTimeoutSeconds <= self.totalTimeoutSeconds",
            "firstTokenTimeoutSeconds must not exceed totalTimeoutSeconds",
            lambda u: u.first_token_timeout_s <= u.total_timeout_s,
        ),
    )
    operator_owned = {
        "url": "the operator points sidecars at the tier's Service",
        "protocol": "the operator runs Ollama",
        "model": "set the tier's model",
        "keepAlive": "set the tier's keepAliveSeconds",
        "parallelSlots": "set the tier's numParallel and replicas: the operator gives sidecars their product",
        "apiKey": "secrets do not belong in a VoiceLane; "
        "give the sidecar VOICELANE_UPSTREAMS__<TIER>__API_KEY from a Secret",
    }

    url: SkipJsonSchema[str] = Field("http://set-by-the-operator.invalid", exclude=True)
    protocol: SkipJsonSchema[Protocol] = Field(Protocol.OLLAMA, exclude=True)
    model: SkipJsonSchema[str] = Field("set-by-the-operator", exclude=True)
    keep_alive: SkipJsonSchema[str] = Field("15m", exclude=True)
    parallel_slots: SkipJsonSchema[int | None] = Field(None, exclude=True)
    api_key: SkipJsonSchema[None] = Field(None, exclude=True)


def _qualified_keys_rule(field: str, python_name: str) -> CelRule:
    return CelRule(
        f"!has(self.{field}) || self.{field}.all(k, k.size() <= 317 && k.matches({_cel_string(QUALIFIED_NAME_PATTERN)})"
        " && (!k.contains('/') || k.matches('^[^/]{1,253}/')))",
        "each key must be a qualified name: an optional DNS-subdomain prefix and '/', "
        "then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        lambda t: all(is_qualified_name(key) for key in getattr(t, python_name)),
        field_path=f".{field}",
    )


def _operator_keys_rule(field: str, python_name: str, operator_keys: tuple[str, ...], what: str) -> CelRule:
    return CelRule(
        f"!has(self.{field}) || self.{field}.all(k, !(k in {_cel_list(operator_keys)})"
        f" && !k.startsWith({_cel_string(RESERVED_KEY_PREFIX)}))",
        f"the operator sets the {what} {', '.join(operator_keys)} on the tier's pods, and keys under "
        f"{RESERVED_KEY_PREFIX} are reserved: they cannot be set here",
        lambda t: not any(is_operator_key(key, operator_keys) for key in getattr(t, python_name)),
        field_path=f".{field}",
    )


class TierSpec(SpecModel):
    """One Ollama deployment of the lane (fast or deep)."""

    operator_owned = RENAMED_TIER_FIELDS
    cel_rules = (
        CelRule(
            "!has(self.replicas) || self.replicas <= 1 || !has(self.storage)"
            " || !(has(self.storage.size) || has(self.storage.existingClaim))"
            " || (has(self.storage.accessMode) && self.storage.accessMode == 'ReadWriteMany')",
            "more than one replica cannot share a ReadWriteOnce or ReadWriteOncePod claim (one node or one pod "
            "mounts it): set replicas to 1, storage.accessMode to ReadWriteMany, or leave size and existingClaim "
            "unset for an emptyDir per pod",
            lambda t: (
                t.replicas is None
                or t.replicas <= 1
                or t.storage is None
                or not t.storage.uses_claim()
                or t.storage.access_mode == "ReadWriteMany"
            ),
            field_path=".replicas",
        ),
        _qualified_keys_rule("podLabels", "pod_labels"),
        _operator_keys_rule("podLabels", "pod_labels", OPERATOR_POD_LABELS, "labels"),
        _qualified_keys_rule("podAnnotations", "pod_annotations"),
        _operator_keys_rule("podAnnotations", "pod_annotations", OPERATOR_POD_ANNOTATIONS, "annotation"),
    )

    model: str = Field(
        min_length=1,
        max_length=200,
        pattern=MODEL_PATTERN,
        description="Ollama model to pull and keep loaded, e.g. llama3.2:1b.",
    )
    image: str = Field(DEFAULT_OLLAMA_IMAGE, max_length=512, pattern=IMAGE_PATTERN, description="Ollama image.")
    replicas: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Pods of this tier. Unset: the Deployment starts with 1 and its scale is left to others "
        "(a HorizontalPodAutoscaler, kubectl scale). Unset or more than 1 adds a PodDisruptionBudget.",
    )
    resources: ResourcesSpec
    keep_alive_s: int = Field(
        900,
        ge=KEEP_ALIVE_FOREVER,
        le=MAX_KEEP_ALIVE_SECONDS,
        description="Seconds the model stays loaded after a request (OLLAMA_KEEP_ALIVE and each sidecar call): "
        "-1 keeps it loaded for good, 0 unloads it after every request (the warmer then loads it again); "
        "at most 31536000 (365 days).",
    )
    num_parallel: int = Field(1, ge=1, le=64, description="Requests the model serves at once (OLLAMA_NUM_PARALLEL).")
    max_queue: int = Field(
        16, ge=1, le=100_000, description="Requests Ollama queues before answering 503 (OLLAMA_MAX_QUEUE)."
    )
    context_length: int | None = Field(
        None,
        ge=256,
        le=1_048_576,
        description="Context window in tokens (OLLAMA_CONTEXT_LENGTH); unset: Ollama's.",
    )
    storage: StorageSpec | None = Field(
        None, description="Model store; unset: an emptyDir sized from the model (pulled again per pod)."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Passed to the pod.")
    tolerations: tuple[Toleration, ...] = Field((), max_length=64, description="Passed to the pod.")
    affinity: dict[str, Any] | None = Field(None, description="A core/v1 Affinity, passed to the pod as is.")
    priority_class_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Passed to the pod."
    )
    topology_spread_constraints: tuple[TopologySpreadConstraint, ...] = Field(
        (), max_length=8, description="Passed to the pod; a constraint without labelSelector spreads the tier's pods."
    )
    runtime_class_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="RuntimeClass of the pod, e.g. nvidia for the NVIDIA container runtime.",
    )
    image_pull_secrets: tuple[LocalObjectReference, ...] = Field(
        (),
        max_length=16,
        description="Secrets of the lane's namespace for pulling the image from a private registry.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    pod_labels: dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]] = Field(
        default_factory=dict,
        max_length=MAX_POD_METADATA_ENTRIES,
        description="Extra labels of the tier's pods. The operator's own (app.kubernetes.io/name, instance, "
        "component, part-of, managed-by, voicelane.dev/lane, voicelane.dev/tier) and any voicelane.dev/ key "
        "are refused: they select the pods.",
    )
    pod_annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_POD_METADATA_ENTRIES,
        description="Extra annotations of the tier's pods (e.g. for a service mesh or a log shipper). "
        "kubectl.kubernetes.io/default-container and any voicelane.dev/ key are the operator's and refused.",
    )
    env: tuple[EnvVar, ...] = Field(
        (),
        max_length=64,
        description="Extra environment of the model server and the model pull.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    rewarm_interval_s: int = Field(
        1800,
        ge=60,
        le=86400,
        description="Seconds between the background loads that keep the model resident and warm (60 to 86400).",
    )
    upstream: TierUpstreamSpec = Field(TierUpstreamSpec(), description="How sidecars call this tier.")

    @model_validator(mode="after")
    def _unique_names(self) -> TierSpec:
        for field, names in (
            ("env", [var.name for var in self.env]),
            ("imagePullSecrets", [secret.name for secret in self.image_pull_secrets]),
        ):
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise PydanticCustomError(
                    "duplicate_names", f"duplicate names {', '.join(duplicates)}", {"field_path": f".{field}"}
                )
        return self


# --- lane-wide: the sidecar's policy in Kubernetes spelling ----------------------------


class ServerPolicy(SpecModel, ServerConfig):
    """The sidecar's own listener inside each app pod."""

    operator_owned = {"metricsListen": "the operator serves sidecar metrics on 0.0.0.0:9464 for scraping"}
    metrics_listen: SkipJsonSchema[None] = Field(None, exclude=True)


class LimitsPolicy(SpecModel, LimitsConfig):
    """Bounds on what an app may send to its sidecar."""

    cel_rules = (byte_size_range_rule("maxBodySize", "max_body_size", "256", "64Mi"),)
    operator_owned = {"maxBodyBytes": "it is maxBodySize now, a size such as 64Ki"}

    max_body_size: ByteSize = Field("64Ki", description="Larger request bodies are refused with 413 (256 to 64Mi).")
    # The sidecar's own field, given max_body_size's bytes when the lane renders.
    max_body_bytes: SkipJsonSchema[int] = Field(65536, exclude=True)


class ClassesPolicy(SpecModel, ClassesConfig):
    """Length bounds of the request classes."""


class SchedulerPolicy(SpecModel, SchedulerConfig):
    """Queue limits of each sidecar's priority scheduler."""


class RateLimitPolicy(SpecModel, RateLimitConfig):
    """Token bucket of each sidecar."""

    cel_rules = (
        CelRule(
            "!has(self.burst) || !has(self.sustainedPerSecond) || double(self.burst) >= double(self.sustainedPerSecond)",
            "burst must be at least sustainedPerSecond: a bucket smaller than one second of refill never fills",
            lambda r: r.burst >= r.sustained_per_s,
        ),
    )

    @model_validator(mode="after")
    def _burst_covers_rate(self) -> RateLimitPolicy:
        # Replaces the sidecar's check, which names its own fields (sustained_per_s): the CelRule above.
        return self


class GuardianPolicy(SpecModel, GuardianConfig):
    """Pressure guardian: thresholds and hysteresis for blocking model work."""

    sources: tuple[Literal["Local", "Upstream"], ...] = Field(  # type: ignore[assignment]  # Kubernetes enum style
        ("Local", "Upstream"),
        description="Pressure sources consulted by each check: Local (this pod's CPU and memory), "
        "Upstream (the tiers' recent first-token times and errors). Unset: both.",
    )

    cel_rules = (
        CelRule(
            "!has(self.sustainSeconds) || !has(self.sampleIntervalSeconds) || self.sustainSeconds >= self.sampleIntervalSeconds",
            "sustainSeconds must be at least sampleIntervalSeconds: pressure is judged over one sample at least",
            lambda g: g.sustain_s >= g.sample_interval_s,
        ),
    )


class SingleFlightPolicy(SpecModel, SingleFlightConfig):
    """Coalescing of identical concurrent requests."""


class CachePolicy(SpecModel, CacheConfig):
    """Cache of finished texts and audio."""

    cel_rules = (byte_size_range_rule("maxSize", "max_size", "1", "16Gi"),)
    operator_owned = {"maxBytes": "it is maxSize now, a size such as 64Mi"}

    max_size: ByteSize = Field("64Mi", description="Bound on cached text and audio (1 to 16Gi).")
    # The sidecar's own field, given max_size's bytes when the lane renders.
    max_bytes: SkipJsonSchema[int] = Field(64 * 2**20, exclude=True)


CLASS_NAMES = ", ".join(str(request_class) for request_class in RequestClass)


class PhraseBankPolicy(SpecModel, PhraseBankConfig):
    """Phrases prepared at start-up (default: the sidecar's built-in set)."""

    source: RequestClass = Field(
        RequestClass.CHAT,
        description=f"The request class the phrases are prepared as: one of {CLASS_NAMES}, the `source` "
        "an app sends (class names are spelled as apps send them).",
    )


class PromptsPolicy(SpecModel, PromptsConfig):
    """Prompt templates per request class (default: the sidecar's built-in set)."""

    templates: dict[RequestClass, str] = Field(
        default_factory=PromptsConfig.model_fields["templates"].default_factory,  # type: ignore[arg-type]
        description=f"Prompt template per request class; the keys are request class names ({CLASS_NAMES}). "
        "Unset: the sidecar's built-in templates.",
    )


class TTFATargetsPolicy(SpecModel, TTFATargets):
    """Time-to-first-audio targets per request class, in seconds."""


class TTFAPolicy(SpecModel, TTFAConfig):
    """Time-to-first-audio targets and alerting."""

    cel_rules = (
        CelRule(
            "!has(self.targets) || !has(self.expectedTtsSeconds) || !has(self.targets.chat)"
            " || !has(self.targets.notification) || !has(self.targets.emailTldr)"
            " || [self.targets.chat, self.targets.notification, self.targets.emailTldr]"
            ".all(t, self.expectedTtsSeconds < t)",
            "expectedTtsSeconds must be below every TTFA target: the model's deadline is the target minus it",
            lambda t: t.expected_tts_s < min(t.targets.chat, t.targets.notification, t.targets.email_tldr),
        ),
    )

    targets: TTFATargetsPolicy = TTFATargetsPolicy()


class PolicySpec(SpecModel):
    """The policy every sidecar of the lane follows; the field names match the sidecar's configuration."""

    server: ServerPolicy = ServerPolicy()
    limits: LimitsPolicy = LimitsPolicy()
    classes: ClassesPolicy = ClassesPolicy()
    scheduler: SchedulerPolicy = SchedulerPolicy()
    rate_limit: RateLimitPolicy = RateLimitPolicy()
    guardian: GuardianPolicy = GuardianPolicy()
    single_flight: SingleFlightPolicy = SingleFlightPolicy()
    cache: CachePolicy = CachePolicy()
    phrase_bank: PhraseBankPolicy = PhraseBankPolicy()
    prompts: PromptsPolicy = PromptsPolicy()
    ttfa: TTFAPolicy = TTFAPolicy()
    default_lang: str = Field("sv", min_length=2, max_length=16, description="Language spoken when none is asked.")
    log_level: Literal["Debug", "Info", "Warning", "Error"] = "Info"


# The routing modes in Kubernetes spelling, and the sidecar's name for each.
ROUTING_MODES: Mapping[str, str] = {"Auto": "auto", "FastOnly": "fast_only", "DeepOnly": "deep_only"}


class RoutingSpec(SpecModel, RoutingConfig):
    """Which tier a text goes to (default complexPatterns: the sidecar's built-in set)."""

    mode: Literal["Auto", "FastOnly", "DeepOnly"] = Field(  # type: ignore[assignment]  # Kubernetes enum style
        "Auto", description="Auto routes by length and patterns; FastOnly and DeepOnly send every request to one tier."
    )
    complex_patterns: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_COMPLEX_PATTERNS),
        description="Regular expressions by a name of your choice; a match sends the text to the deep tier. "
        "Unset: the sidecar's built-in set (" + ", ".join(DEFAULT_COMPLEX_PATTERNS) + ").",
    )

    @model_validator(mode="after")
    def _patterns_compile(self) -> RoutingSpec:
        # The sidecar's check, reported at the pattern's CRD field rather than at complex_patterns.<name>.
        for name, pattern in self.complex_patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise PydanticCustomError(
                    "invalid_pattern",
                    "invalid regular expression: {reason}",
                    {"reason": str(exc), "field_path": f".complexPatterns.{name}"},
                ) from None
        return self


# The speech backends in Kubernetes spelling, and the sidecar's name for each.
TTS_BACKENDS: Mapping[str, str] = {"Espeak": "espeak", "OpenAI": "openai"}


class TTSSpec(SpecModel, TTSConfig):
    """Speech: espeak inside each sidecar, or an OpenAI-compatible speech endpoint."""

    cel_rules = (
        CelRule(
            "!has(self.backend) || self.backend != 'OpenAI' || has(self.url)",
            "url is required when backend is OpenAI",
            lambda t: t.backend != "OpenAI" or t.url is not None,
        ),
        CelRule(
            "(has(self.backend) && self.backend == 'OpenAI') || !has(self.url)",
            "url is used only with backend: OpenAI; set the backend too",
            lambda t: t.backend == "OpenAI" or t.url is None,
        ),
    )

    backend: Literal["Espeak", "OpenAI"] = Field(  # type: ignore[assignment]  # Kubernetes enum style
        "Espeak", description="Espeak speaks inside each sidecar; OpenAI calls the speech endpoint at url."
    )
    classes: dict[RequestClass, VoiceStyle] = Field(
        default_factory=TTSConfig.model_fields["classes"].default_factory,  # type: ignore[arg-type]
        description=f"Voice per request class; the keys are request class names ({CLASS_NAMES}). "
        "Unset: notifications a little faster and cheerful.",
    )

    @model_validator(mode="after")
    def _openai_needs_url(self) -> TTSSpec:
        # Replaces the sidecar's check, which names its own fields (tts.backend): the CelRules above.
        return self

    operator_owned = {
        "apiKey": "secrets do not belong in a VoiceLane; give the sidecar VOICELANE_TTS__API_KEY from a Secret"
    }

    api_key: SkipJsonSchema[None] = Field(None, exclude=True)


class GateSpec(SpecModel):
    """The model-side gate: a second container in each tier pod, in front of Ollama (README: The gate)."""

    enabled: bool = Field(
        False,
        description="Run `voicelane gate` in each tier pod: the Service reaches Ollama only through it, and every "
        "app pod's model calls share one priority queue, waiting room, single-flight and guardian per server.",
    )
    image: str = Field(
        DEFAULT_SIDECAR_IMAGE, max_length=512, pattern=IMAGE_PATTERN, description="Image that runs the gate."
    )
    cpu: Quantity = Field("250m", description="The gate's CPU, requested and limited alike.")
    memory: Quantity = Field("128Mi", description="The gate's memory, requested and limited alike.")
    reserve_for_chats: int = Field(
        1,
        ge=0,
        le=64,
        description="Of the server's parallel slots, how many only priority 0 (chats) may take; never the last.",
    )


class VoiceLaneSpec(SpecModel):
    """A low-latency voice lane: fast and deep Ollama tiers and the policy of the sidecars that use them."""

    cel_rules = (
        CelRule(
            "self.routing.fastMaxChars <= self.policy.limits.maxTextChars",
            "routing.fastMaxChars must not exceed policy.limits.maxTextChars: longer texts are refused before routing",
            lambda s: s.routing.fast_max_chars <= s.policy.limits.max_text_chars,
        ),
    )

    fast: TierSpec = Field(description="The fast tier: a small model for short, simple texts (Service port 11435).")
    deep: TierSpec = Field(description="The deep tier: a larger model for long or complex texts (port 11434).")
    routing: RoutingSpec = RoutingSpec()
    policy: PolicySpec = PolicySpec()
    tts: TTSSpec = TTSSpec()
    gate: GateSpec = GateSpec()
    sidecar: SidecarSpec = SidecarSpec()

    def tier(self, name: TierName) -> TierSpec:
        return self.fast if name == "fast" else self.deep


# Rules on the whole object (only metadata.name is visible to CEL there).
LANE_NAME_RULE = CelRule(
    f"self.metadata.name.size() <= {MAX_LANE_NAME_LENGTH} && self.metadata.name.matches('{LANE_NAME_PATTERN}')",
    f"metadata.name must be a DNS-1035 label of at most {MAX_LANE_NAME_LENGTH} characters "
    "(lowercase letters, digits, '-'; starting with a letter): it prefixes the lane's Services",
    lambda name: len(name) <= MAX_LANE_NAME_LENGTH and re.fullmatch(LANE_NAME_PATTERN, name) is not None,
    field_path=".metadata.name",
)

# The log levels in Kubernetes spelling, and the sidecar's name for each.
LOG_LEVELS: Mapping[str, str] = {"Debug": "debug", "Info": "info", "Warning": "warning", "Error": "error"}
# The guardian's pressure sources in Kubernetes spelling, and the sidecar's name for each.
GUARDIAN_SOURCES: Mapping[str, str] = {"Local": "local", "Upstream": "upstream"}

# Sidecar configuration fields a VoiceLane sets under another name or in another form.
RENAMED_SIDECAR_FIELDS: Mapping[str, str] = {
    "limits.max_body_bytes": "spec.policy.limits.maxBodySize",
    "cache.max_bytes": "spec.policy.cache.maxSize",
}

# Sidecar configuration fields that no VoiceLane field reaches, and why.
OPERATOR_OWNED_SIDECAR_FIELDS: Mapping[str, str] = {
    "server.metrics_listen": "always 0.0.0.0:9464, the port the PodMonitor scrapes",
    "upstreams.fast.url": "the fast tier's Service",
    "upstreams.deep.url": "the deep tier's Service",
    "upstreams.fast.protocol": "the operator runs Ollama",
    "upstreams.deep.protocol": "the operator runs Ollama",
    "upstreams.fast.api_key": "a secret: from the sidecar's environment",
    "upstreams.deep.api_key": "a secret: from the sidecar's environment",
    "tts.api_key": "a secret: from the sidecar's environment",
}

# --- status -----------------------------------------------------------------------------


class TierStatus(SpecModel):
    """What a tier has: ready and desired pods, its model and where sidecars reach it."""

    ready_replicas: int | None = Field(None, ge=0)
    replicas: int | None = Field(None, ge=0)
    model: str | None = None
    endpoint: str | None = Field(None, description="Base URL of the tier's Service, as sidecars use it.")


class Condition(SpecModel):
    """A metav1.Condition."""

    type: str = Field(max_length=316, pattern=r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field("", max_length=32768)
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, ge=0)


class VoiceLaneStatus(SpecModel):
    """Observed state of a lane, written by the operator."""

    observed_generation: int | None = Field(None, ge=0)
    fast: TierStatus | None = None
    deep: TierStatus | None = None
    conditions: tuple[Condition, ...] | None = Field(
        None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


# --- parsing ----------------------------------------------------------------------------


def describe_validation_errors(exc: ValidationError, *, prefix: str) -> list[str]:
    problems = []
    for error in exc.errors():
        path = prefix
        for part in error["loc"]:
            # pydantic marks a bad mapping key as the segment "[key]".
            path += f"[{part}]" if isinstance(part, int) else part if part == "[key]" else f".{part}"
        # A CelRule with a fieldPath is reported at that field, as the API server reports it.
        path += (error.get("ctx") or {}).get("field_path", "")
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{path}: {message}")
    return problems


def parse_spec(spec: Any) -> VoiceLaneSpec:
    """Validate a VoiceLane's `spec`; SpecError names every offending field."""
    if isinstance(spec, VoiceLaneSpec):
        return spec
    if not isinstance(spec, Mapping):
        raise SpecError(f"spec: must be a mapping, got {type(spec).__name__}")
    try:
        return VoiceLaneSpec.model_validate(spec)
    except ValidationError as exc:
        problems = describe_validation_errors(exc, prefix="spec")
        raise SpecError("; ".join(problems), problems) from None


def check_lane_name(name: Any) -> str:
    if not isinstance(name, str) or not LANE_NAME_RULE.holds(name):
        raise SpecError(LANE_NAME_RULE.message)
    return name
