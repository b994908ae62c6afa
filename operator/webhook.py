"""The sidecar-injection webhook: a kopf mutating admission handler for pods, and the HTTPS server it runs on.

The API server sends the creation of a pod here when the pod opts in (a `voicelane.dev/lane` label,
or `voicelane.dev/inject: enabled`: path /mutate-pods) or its namespace does (namespace label
`voicelane.dev/inject: enabled`: path /mutate-namespace-pods), unless the pod's label
`voicelane.dev/inject: disabled` opts it out; the chart's MutatingWebhookConfiguration holds one
entry per way in. Here the pod's annotation `voicelane.dev/inject: disabled`, which no selector sees,
opts it out too. The lane is the one the pod names (annotation or label `voicelane.dev/lane`), else
the only VoiceLane of its namespace. If that lane exists, the answer is a JSONPatch that adds its
sidecar (injection.py), tuned by the pod's annotations and given the lane's spec.sidecar env.

A pod whose own settings are wrong (an annotation with a value the sidecar cannot take, a lane named
by annotation that does not exist, a namespace with several lanes and none named) is refused, with a
message naming the annotation to fix. Anything else keeps the pod as it is, with a warning the client
sees (kubectl prints it) and a log line: a lane named by label that does not exist, a lane that
cannot be read, and any fault of the webhook's own, including a bug; the configuration's
failurePolicy Ignore covers a webhook that is down or slow. A request that is
not an AdmissionReview gets HTTP 400 naming what is wrong; its body is held to the sidecar's rules for
JSON (`voicelane.sidecar.edge`): it decodes as its Content-Encoding says, nests at most 128 levels,
and holds no string UTF-8 cannot carry (a lone surrogate escape), each refused naming the field.

TLS: with `--webhook-cert-dir`, the server uses tls.crt and tls.key from it and re-reads them when
they change (a Secret renewed by cert-manager or the chart). Without it, kopf makes a self-signed
certificate for the listen address at start (with the builder here, on `cryptography`);
`--webhook-ca-out` writes it out for whoever calls the webhook (a caBundle, `curl --cacert`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import functools
import ipaddress
import json
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import aiohttp.web
import kopf
from aiohttp.http_exceptions import HttpProcessingError
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from voicelane.operator.api import SpecError, parse_spec
from voicelane.operator.apply import LANE_RESOURCE
from voicelane.operator.handlers import KubeApi, TransientApiError
from voicelane.operator.injection import (
    DEFAULT_API_LISTEN,
    DEFAULT_SIDECAR_IMAGE,
    LANE_ANNOTATION,
    AnnotationError,
    InjectionError,
    LaneSettings,
    inject,
    opted_in_by_pod,
    requested_lane,
    sidecar_overrides,
    skip_reason,
)
from voicelane.operator.main import host_port
from voicelane.operator.render import LABEL_LANE
from voicelane.sidecar.edge import parse_json, parser_reason, unreadable_body
from voicelane.sidecar.errors import ApiError

# The handler id is the URL path kopf's server routes to it: the chart's webhook entries call
# /mutate-pods for pods that opt in themselves, /mutate-namespace-pods for pods of a namespace that does.
WEBHOOK_ID = "mutate-pods"
NAMESPACE_WEBHOOK_ID = "mutate-namespace-pods"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
# The API server waits `webhook.timeoutSeconds` (5 s by default) for the answer; the lane lookup
# must end well before, in one try, so the pod gets a warning rather than a silent timeout.
LOOKUP_TIMEOUT_S = (1.0, 2.5)  # (connect, read) of the one request
LOOKUP_DEADLINE_S = 3.0  # the whole lookup
SELF_SIGNED_VALIDITY = datetime.timedelta(days=365)
WARNING_PREFIX = "voicelane: "
REFUSAL_PREFIX = "the sidecar cannot be injected: "

LaneGetter = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
# The names of the VoiceLanes of a namespace.
LaneLister = Callable[[str], Awaitable[list[str]]]


class LaneLookupError(RuntimeError):
    """The lane could not be read (API server unreachable, slow, or access denied)."""


@dataclasses.dataclass(frozen=True)
class WebhookOptions:
    """The operator's webhook flags."""

    listen: str
    cert_dir: Path | None = None
    ca_out: Path | None = None
    sidecar_image: str = DEFAULT_SIDECAR_IMAGE

    @classmethod
    def from_args(cls, args: Any) -> WebhookOptions | None:
        """The options of `voicelane operator`'s flags; None (no webhook) without --webhook-listen."""
        listen = getattr(args, "webhook_listen", None)
        if not listen:
            return None
        cert_dir = getattr(args, "webhook_cert_dir", None)
        ca_out = getattr(args, "webhook_ca_out", None)
        return cls(
            listen=str(listen),
            cert_dir=Path(cert_dir) if cert_dir else None,
            ca_out=Path(ca_out) if ca_out else None,
            sidecar_image=getattr(args, "sidecar_image", None) or DEFAULT_SIDECAR_IMAGE,
        )


# --- the decision -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Admission:
    """What to admit: `pod` instead of the submitted one (None: the submitted one, unchanged).

    With `refusal`, nothing is admitted: the pod's creation fails with that message.
    """

    pod: dict[str, Any] | None
    warnings: tuple[str, ...] = ()
    refusal: str | None = None


@dataclasses.dataclass(frozen=True)
class LaneSidecar:
    """What a lane gives each sidecar it injects (API address, environment), and a warning if unsure."""

    settings: LaneSettings = dataclasses.field(default_factory=LaneSettings)
    warning: str | None = None


def lane_sidecar(lane: Mapping[str, Any]) -> LaneSidecar:
    """The sidecar settings of a lane's spec; the defaults and a warning if the spec is not valid."""
    try:
        spec = parse_spec(lane.get("spec") or {})
    except SpecError as exc:
        name = (lane.get("metadata") or {}).get("name")
        return LaneSidecar(
            warning=f"VoiceLane {name} has an invalid spec ({exc}); VOICELANE_URL assumes the default "
            f"{DEFAULT_API_LISTEN} and the sidecar gets none of spec.sidecar's env"
        )
    return LaneSidecar(LaneSettings.of(spec))


def wants_sidecar(pod: Mapping[str, Any], *, namespace_opted_in: bool) -> bool:
    """Whether a pod is to get the sidecar: it or its namespace opts in, and it does not opt out.

    The chart's webhook entries select the same pods by label (an annotation they cannot see); this
    is the webhook's own reading. AnnotationError if the pod's voicelane.dev/inject is not a value.
    """
    if skip_reason(pod) is not None:
        return False
    return namespace_opted_in or opted_in_by_pod(pod)


async def admit_pod(
    pod: Mapping[str, Any],
    *,
    namespace: str,
    get_lane: LaneGetter,
    list_lanes: LaneLister | None = None,
    image: str = DEFAULT_SIDECAR_IMAGE,
    served_namespaces: Collection[str] = (),
    namespace_opted_in: bool = False,
) -> Admission:
    """Decide what becomes of a pod being created: with the sidecar of its lane, as it is, or refused."""
    try:
        if not wants_sidecar(pod, namespace_opted_in=namespace_opted_in):
            return Admission(None)
        sidecar_overrides(pod)  # checked before any lookup: a pod with a wrong annotation is refused at once
        lane_name = requested_lane(pod)
    except AnnotationError as exc:
        return _refused(str(exc))
    if served_namespaces and namespace not in served_namespaces:
        return _untouched(f"namespace {namespace} is not one this operator serves")
    if lane_name is None:
        chosen = await _only_lane(namespace, list_lanes)
        if isinstance(chosen, Admission):
            return chosen
        lane_name = chosen
    try:
        lane = await get_lane(namespace, lane_name)
    except LaneLookupError as exc:
        return _untouched(f"cannot read VoiceLane {lane_name} in namespace {namespace}: {exc}")
    if lane is None:
        if LANE_ANNOTATION in ((pod.get("metadata") or {}).get("annotations") or {}):
            return _refused(f"annotation {LANE_ANNOTATION}: there is no VoiceLane {lane_name} in namespace {namespace}")
        return _untouched(f"there is no VoiceLane {lane_name} in namespace {namespace}")
    sidecar = lane_sidecar(lane)
    try:
        injected = inject(
            pod,
            lane=lane_name,
            image=image,
            api_listen=sidecar.settings.api_listen,
            env=sidecar.settings.env,
            env_from=sidecar.settings.env_from,
        )
    except InjectionError as exc:
        return _untouched(str(exc))
    return Admission(injected, (sidecar.warning,) if sidecar.warning else ())


async def _only_lane(namespace: str, list_lanes: LaneLister | None) -> str | Admission:
    """The one VoiceLane of the namespace, for a pod that names none; else what becomes of the pod."""
    if list_lanes is None:
        return _untouched(f"the pod names no lane (annotation or label {LABEL_LANE})")
    try:
        names = sorted(await list_lanes(namespace))
    except LaneLookupError as exc:
        return _untouched(f"cannot list the VoiceLanes of namespace {namespace}: {exc}")
    if not names:
        return _untouched(f"there is no VoiceLane in namespace {namespace}")
    if len(names) > 1:
        return _refused(
            f"annotation {LANE_ANNOTATION}: namespace {namespace} has several VoiceLanes ({', '.join(names)});"
            " name the pod's lane with this annotation"
        )
    return names[0]


def _untouched(why: str) -> Admission:
    return Admission(None, (f"the sidecar was not injected: {why}",))


def _refused(why: str) -> Admission:
    return Admission(None, refusal=REFUSAL_PREFIX + why)


def lane_getter(api: KubeApi, *, deadline_s: float = LOOKUP_DEADLINE_S) -> LaneGetter:
    """Reads a lane through the API; None if it does not exist, LaneLookupError if it cannot be read."""

    async def get_lane(namespace: str, name: str) -> Mapping[str, Any] | None:
        async with _lookup(deadline_s):
            return await api.get(LANE_RESOURCE.object_path(namespace, name))

    return get_lane


@contextlib.asynccontextmanager
async def _lookup(deadline_s: float) -> AsyncIterator[None]:
    """A lookup of lanes within `deadline_s`; its failures as LaneLookupError with a short reason."""
    try:
        async with asyncio.timeout(deadline_s):
            yield
    except TimeoutError:
        raise LaneLookupError(f"no answer from the API server within {deadline_s:g} s") from None
    except TransientApiError as exc:
        # Short: API servers may cut warnings longer than 120 characters.
        cause = exc.__cause__
        detail = f"{cause.status} {cause.reason}" if isinstance(cause, ApiException) else "no answer from the API"
        raise LaneLookupError(detail) from exc
    except ApiException as exc:
        raise LaneLookupError(f"{exc.status} {exc.reason}") from exc


def lane_lister(api: KubeApi, *, deadline_s: float = LOOKUP_DEADLINE_S) -> LaneLister:
    """Lists the names of a namespace's lanes through the API; LaneLookupError if they cannot be read."""

    async def list_lanes(namespace: str) -> list[str]:
        async with _lookup(deadline_s):
            lanes = await api.list_objects(LANE_RESOURCE.collection_path(namespace), label_selector="")
        return [str(lane["metadata"]["name"]) for lane in lanes]

    return list_lanes


def lookup_client(configuration: Any) -> ApiClient:
    """An API client for the lane lookups: one try per request, no retries past the webhook's deadline."""
    quick = copy.deepcopy(configuration)
    quick.retries = 0
    return ApiClient(quick)


# --- the AdmissionReview, checked before kopf sees it ------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class ReviewResource(_Loose):
    group: str
    version: str
    resource: str


class ObjectMeta(_Loose):
    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class ReviewedObject(_Loose):
    metadata: ObjectMeta | None = None


class ReviewRequest(_Loose):
    uid: str = Field(min_length=1)
    resource: ReviewResource
    operation: str
    userInfo: dict[str, Any]
    namespace: str | None = None
    object: ReviewedObject | None = None
    oldObject: ReviewedObject | None = None

    @model_validator(mode="after")
    def _has_an_object(self) -> ReviewRequest:
        if self.object is None and self.oldObject is None:
            raise ValueError("names neither object nor oldObject")
        return self


class AdmissionReview(_Loose):
    apiVersion: Literal["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]
    kind: Literal["AdmissionReview"]
    request: ReviewRequest


def review_problems(data: Any) -> list[str]:
    """What makes `data` no AdmissionReview request kopf can answer; empty if it is one."""
    try:
        AdmissionReview.model_validate(data)
    except ValidationError as exc:
        return [f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}" for error in exc.errors()]
    return []


def with_request_namespace(data: dict[str, Any]) -> dict[str, Any]:
    """The review with the request's namespace copied into the object when the object names none.

    The API server may send a pod being created without metadata.namespace (it fills it in later);
    the request's `namespace` is the one the pod is created in.
    """
    request = data["request"]
    namespace = request.get("namespace")
    body = request.get("object")
    if namespace and isinstance(body, dict):
        metadata = body.setdefault("metadata", {})
        if isinstance(metadata, dict) and not metadata.get("namespace"):
            metadata["namespace"] = namespace
    return data


def _bad_request(problems: list[str]) -> aiohttp.web.HTTPBadRequest:
    body = json.dumps({"error": "not an AdmissionReview request", "problems": problems})
    return aiohttp.web.HTTPBadRequest(text=body, content_type="application/json")


class QuietHttpRefusals(logging.Filter):
    """One info line, without a traceback, for each request aiohttp's HTTP parser refuses.

    aiohttp logs those (headers too large, Content-Length beside Transfer-Encoding, a bad chunk
    size, …) at ERROR with a traceback each, so any client could flood the log. kopf builds the
    webhook's HTTP server itself, so its answer to them stays aiohttp's own plain-text 400.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | aiohttp.web.RequestPayloadError):
            line = "Webhook request refused by the HTTP parser: %s", parser_reason(str(exc))
        elif isinstance(exc, ConnectionError):
            line = "Webhook client left before its answer: %s", type(exc).__name__
        else:
            return True
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.msg, record.args = line[0], line[1:]
        record.exc_info, record.exc_text = None, None
        return True


class QuietPodRefusals(logging.Filter):
    """Drops kopf's ERROR line for a pod the webhook refused: the pod's own mistake, logged once at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            record.levelno >= logging.ERROR and "failed permanently: " + WARNING_PREFIX + REFUSAL_PREFIX in message
        )


def quiet_http_refusals() -> None:
    """Install `QuietHttpRefusals` on aiohttp's server log, once."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(existing, QuietHttpRefusals) for existing in server_log.filters):
        server_log.addFilter(QuietHttpRefusals())


class InjectionWebhookServer(kopf.WebhookServer):
    """kopf's webhook server, made strict about its input and able to make its own certificate."""

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        quiet_http_refusals()

        async def checked(request: Any, **kwargs: Any) -> Any:
            # kopf reads the review with plain indexing: a wrong shape would end in a 500 there.
            problems = review_problems(request)
            if problems:
                raise _bad_request(problems)
            with_request_namespace(request)
            return await fn(request, **kwargs)

        async for client_config in super().__call__(checked):
            yield client_config

    @staticmethod
    async def _serve(fn: kopf.WebhookFn, request: aiohttp.web.Request) -> aiohttp.web.Response:
        # kopf reads the body and decodes it as JSON itself; a body it cannot read (not what its
        # Content-Encoding says), bytes that are not text in the declared charset, or JSON it cannot
        # decode or carry (nested past the recursion limit, lone surrogates) would end there in a 500,
        # so they are refused here first.
        try:
            body = await request.read()  # aiohttp keeps the body: kopf reads it again
        except aiohttp.web.RequestPayloadError as exc:
            raise _bad_request([f"body: {unreadable_body(request, exc).message}"]) from None
        try:
            text = body.decode(request.charset or "utf-8")
        except (UnicodeDecodeError, LookupError) as exc:
            raise _bad_request([f"body: not text in {request.charset or 'utf-8'}: {exc}"]) from None
        try:
            parse_json(text)
        except ApiError as exc:
            raise _bad_request([f"body: {exc.message}"]) from None
        response: aiohttp.web.Response = await kopf.WebhookServer._serve(fn, request)
        return response

    @staticmethod
    def build_certificate(hostnames: Collection[str], password: str | None = None) -> tuple[bytes, bytes]:
        """A self-signed certificate (its own CA) for `hostnames`, and its key, both PEM.

        kopf's own builder needs certbuilder and oscrypto, and oscrypto cannot identify OpenSSL
        3.0.10 and later; `cryptography` is the maintained library for this.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        names: list[x509.GeneralName] = []
        common_name = ""
        for hostname in dict.fromkeys(hostnames):  # in order, without repeats
            try:
                address = ipaddress.ip_address(hostname)
            except ValueError:
                names.append(x509.DNSName(hostname))
                common_name = common_name or hostname
                continue
            if not address.is_unspecified:  # 0.0.0.0 and :: can be listened on, not connected to
                names.append(x509.IPAddress(address))
        common_name = common_name or next((str(n.value) for n in names), "localhost")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + SELF_SIGNED_VALIDITY)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def webhook_server(options: WebhookOptions) -> InjectionWebhookServer:
    host, port = host_port(options.listen)
    tls: dict[str, Any] = {}
    if options.cert_dir is not None:
        cert, key = options.cert_dir / CERT_FILE, options.cert_dir / KEY_FILE
        missing = [path.name for path in (cert, key) if not path.is_file()]
        if missing:
            raise ValueError(f"--webhook-cert-dir {options.cert_dir}: no {' or '.join(missing)} in it")
        tls = {"certfile": cert, "pkeyfile": key}
    # localhost as well: the self-signed certificate then serves local clients by name too.
    return InjectionWebhookServer(addr=host, port=port, cadump=options.ca_out, extra_sans=["localhost"], **tls)


# --- kopf wiring --------------------------------------------------------------------------------

_registered: weakref.WeakSet[kopf.OperatorRegistry] = weakref.WeakSet()


def enable(
    settings: kopf.OperatorSettings,
    registry: kopf.OperatorRegistry,
    *,
    options: WebhookOptions,
    configuration: Any,
    namespaces: Collection[str] = (),
) -> None:
    """Serve the injection webhook from this operator: its server in `settings`, its handler in `registry`.

    The handler is registered once per registry; a second call only replaces the server.
    """
    settings.admission.server = webhook_server(options)
    objects_log = logging.getLogger("kopf.objects")
    if not any(isinstance(existing, QuietPodRefusals) for existing in objects_log.filters):
        objects_log.addFilter(QuietPodRefusals())
    if registry in _registered:
        return
    api = KubeApi(lookup_client(configuration), timeout_s=LOOKUP_TIMEOUT_S)
    get_lane, list_lanes = lane_getter(api), lane_lister(api)
    # One handler per way in; the path the API server calls tells which (no filter here: the
    # chart's selectors pick the pods, the handler decides on what they cannot see).
    for handler_id, namespace_opted_in in ((WEBHOOK_ID, False), (NAMESPACE_WEBHOOK_ID, True)):
        kopf.on.mutate(
            "",
            "v1",
            "pods",
            id=handler_id,
            operations=["CREATE"],
            side_effects=False,
            ignore_failures=True,
            registry=registry,
        )(
            mutate_handler(
                get_lane,
                list_lanes=list_lanes,
                image=options.sidecar_image,
                served_namespaces=frozenset(namespaces),
                namespace_opted_in=namespace_opted_in,
            )
        )
    _registered.add(registry)


def mutate_handler(
    get_lane: LaneGetter,
    *,
    image: str,
    list_lanes: LaneLister | None = None,
    served_namespaces: Collection[str] = (),
    namespace_opted_in: bool = False,
) -> Callable[..., Awaitable[None]]:
    """The kopf mutating handler for pods: the sidecar as a patch, the pod's own mistakes as a refusal,
    anything else that went wrong as warnings."""

    async def mutate_pod(
        body: kopf.Body, patch: kopf.Patch, warnings: list[str], logger: kopf.Logger, **_: Any
    ) -> None:
        who = "?"
        try:
            pod = copy.deepcopy(dict(body))
            metadata = pod.get("metadata") or {}
            namespace = str(metadata.get("namespace") or "")
            # A pod made by a controller has no name yet, only the prefix of one.
            who = metadata.get("name") or f"{metadata.get('generateName') or ''}*"
            admission = await admit_pod(
                pod,
                namespace=namespace,
                get_lane=get_lane,
                list_lanes=list_lanes,
                image=image,
                served_namespaces=served_namespaces,
                namespace_opted_in=namespace_opted_in,
            )
        except Exception as exc:  # a pod is never refused for a fault of the webhook's own
            logger.exception("Sidecar injection into pod %s failed; the pod is admitted unchanged.", who)
            warnings.append(f"{WARNING_PREFIX}the sidecar was not injected: internal error {type(exc).__name__}")
            return
        if admission.refusal is not None:
            logger.info("Pod %s refused: %s", who, admission.refusal)
            # 400: the request is wrong, not the webhook (kopf answers 500 otherwise).
            raise kopf.AdmissionError(WARNING_PREFIX + admission.refusal, code=400)
        for warning in admission.warnings:
            logger.warning("Pod %s: %s", who, warning)
            warnings.append(WARNING_PREFIX + warning)
        if admission.pod is not None:
            lane = admission.pod["metadata"]["labels"][LABEL_LANE]
            logger.info("Injected the sidecar of lane %s into pod %s.", lane, who)
            patch.fns.append(functools.partial(_become, admission.pod))

    return mutate_pod


def _become(target: Mapping[str, Any], body: dict[str, Any]) -> None:
    """A kopf patch function: turn the submitted pod into `target` (kopf diffs the two into a JSONPatch)."""
    body.clear()
    body.update(copy.deepcopy(dict(target)))
