"""Run the operator: log in to the API, then run kopf in-process with the handlers of handlers.py.

`run(args)` is what `voicelane operator` calls. The kubeconfig path is explicit (`--kubeconfig`,
else $KUBECONFIG read now, else the in-cluster service account): the kubernetes client fixes its
default kubeconfig path when it is imported, so it is never relied on. kopf runs with resource and
namespace scanning off: it serves the given namespaces, or the whole cluster, and needs no rights on
CRDs or namespaces. Alone by default (standalone, no peering); with `--peering NAME`, as one of several
replicas of which only the leader reconciles while all serve the webhook (peering.py). Metrics are
served on `--metrics-listen`, kopf's liveness probe on `--liveness`, the sidecar-injection webhook on
`--webhook-listen` (webhook.py), with `--webhook-cert-secret` on a certificate the operator keeps itself
and whose CA it puts into the webhook configuration (webhook_cert.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voicelane.operator.webhook import WebhookOptions
    from voicelane.operator.webhook_cert import WebhookCertificate

KOPF_PREFIX = "operator.voicelane.dev"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_API_TIMEOUT_S = 30.0
DEFAULT_CERT_VALIDITY_DAYS = 3650

logger = logging.getLogger("voicelane.operator")


class LoginFailed(RuntimeError):
    pass


class QuietWatchHandlers(logging.Filter):
    """Drops kopf's "Handler 'child_event/…' succeeded." lines: one per change of any child (and per pod
    the webhook sees, which logs what it did itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith(("Handler 'child_event/", "Handler 'lane_event'", "Webhook 'mutate-pods'"))
            and message.endswith("succeeded.")
        )


def client_configuration(kubeconfig: str | None) -> tuple[Any, str | None]:
    """A kubernetes client Configuration and the context's default namespace.

    `kubeconfig` may list several files separated by os.pathsep, as $KUBECONFIG may.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        try:
            config.load_kube_config(config_file=path, client_configuration=configuration)
            _, active = config.list_kube_config_contexts(config_file=path)
        except (OSError, config.ConfigException) as exc:
            raise LoginFailed(f"cannot use kubeconfig {path}: {exc}") from exc
        namespace = (active or {}).get("context", {}).get("namespace")
        return configuration, namespace
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as exc:
        raise LoginFailed(
            "no kubeconfig (--kubeconfig or KUBECONFIG) and not running in a cluster: " + str(exc)
        ) from exc
    namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() if SERVICE_ACCOUNT_NAMESPACE.exists() else None
    return configuration, namespace


def connection_info(configuration: Any, default_namespace: str | None) -> Any:
    """kopf's view of the same credentials the kubernetes client resolved (tokens, certificates)."""
    import kopf

    # The kubernetes client keeps a kubeconfig's or a service account's token under "BearerToken"
    # (older releases: "authorization").
    api_key = configuration.api_key or {}
    authorization = api_key.get("BearerToken") or api_key.get("authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if not token:
        scheme, token = "Bearer", scheme
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme.capitalize() if token else None,
        token=token or None,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
        default_namespace=default_namespace,
    )


def liveness_url(value: str | None) -> str | None:
    """kopf wants a URL; accept HOST:PORT as well (the path is then /healthz)."""
    if not value:
        return None
    return value if "://" in value else f"http://{value}/healthz"


def host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def own_webhook_certificate(
    args: argparse.Namespace, configuration: Any, operator_namespace: str | None
) -> WebhookCertificate:
    """The webhook certificate this operator keeps in `--webhook-cert-secret` (webhook_cert.py)."""
    import tempfile

    from kubernetes.client import ApiClient

    from voicelane.operator.webhook_cert import WebhookCertificate

    if not operator_namespace:
        raise ValueError("--webhook-cert-secret needs the operator's namespace (--operator-namespace)")
    hosts = list(getattr(args, "webhook_cert_host", None) or [])
    configuration_name = getattr(args, "webhook_configuration", None)
    if not hosts or not configuration_name:
        raise ValueError("--webhook-cert-secret needs --webhook-cert-host and --webhook-configuration")
    days = int(getattr(args, "webhook_cert_validity_days", None) or DEFAULT_CERT_VALIDITY_DAYS)
    return WebhookCertificate(
        ApiClient(configuration),
        namespace=operator_namespace,
        secret=str(args.webhook_cert_secret),
        configuration=str(configuration_name),
        hosts=hosts,
        # Private to this process (mode 0700); in the chart's pod, on its /tmp emptyDir.
        cert_dir=Path(tempfile.mkdtemp(prefix="voicelane-webhook-tls-")),
        validity=datetime.timedelta(days=days),
    )


def run(args: argparse.Namespace) -> int:
    import kopf

    from voicelane.operator.webhook import WebhookOptions
    from voicelane.operator.webhook_cert import CertificateUnavailable

    kubeconfig = str(args.kubeconfig) if getattr(args, "kubeconfig", None) else None
    verbose = bool(getattr(args, "verbose", False))
    kopf.configure(verbose=verbose, log_prefix=True)  # prefix object lines with [namespace/name]
    if not verbose:
        logging.getLogger("kopf.objects").addFilter(QuietWatchHandlers())
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # kopf's webhook server logs every call
    try:
        configuration, default_namespace = client_configuration(kubeconfig)
    except LoginFailed as exc:
        logger.error("%s", exc)
        return 2
    in_cluster = not (kubeconfig or os.environ.get("KUBECONFIG"))
    # The NetworkPolicy admits the operator's namespace; in a pod it is the service account's.
    operator_namespace = (
        getattr(args, "operator_namespace", None)
        or os.environ.get("POD_NAMESPACE")
        or (default_namespace if in_cluster else None)
    )
    peering_name = getattr(args, "peering", None) or None
    namespaces = list(getattr(args, "namespace", None) or [])
    if peering_name:
        import urllib3
        from kubernetes.client import ApiClient
        from kubernetes.client.exceptions import ApiException

        from voicelane.operator.peering import PeeringUnavailable, ensure_peering_objects

        try:
            with ApiClient(configuration) as api_client:
                ensure_peering_objects(api_client, peering_name, namespaces)
        except (PeeringUnavailable, ApiException, urllib3.exceptions.HTTPError) as exc:
            logger.error("voicelane operator: cannot prepare leader election: %s", exc)
            return 2
    webhook_options = WebhookOptions.from_args(args)
    webhook_certificate = None
    if webhook_options is not None and getattr(args, "webhook_cert_secret", None):
        try:
            webhook_certificate = own_webhook_certificate(args, configuration, operator_namespace)
            webhook_certificate.ensure()
        except (CertificateUnavailable, ValueError) as exc:
            logger.error("voicelane operator: webhook certificate: %s", exc)
            if webhook_certificate is not None:
                webhook_certificate.discard_files()
            return 2
        webhook_options = dataclasses.replace(webhook_options, cert_dir=webhook_certificate.cert_dir)
    try:
        asyncio.run(
            operate(
                configuration,
                kubeconfig=kubeconfig,
                namespaces=namespaces,
                peering=peering_name,
                metrics_listen=getattr(args, "metrics_listen", None),
                liveness=liveness_url(getattr(args, "liveness", None)),
                operator_namespace=operator_namespace,
                webhook_options=webhook_options,
                webhook_certificate=webhook_certificate,
                api_timeout_s=float(getattr(args, "api_timeout", None) or DEFAULT_API_TIMEOUT_S),
            )
        )
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as exc:  # e.g. a taken or malformed --metrics-listen address
        logger.error("voicelane operator: %s", exc)
        return 2
    finally:
        if webhook_certificate is not None:
            webhook_certificate.discard_files()
    return 0


async def operate(
    configuration: Any,
    *,
    kubeconfig: str | None,
    namespaces: list[str],
    peering: str | None = None,
    metrics_listen: str | None,
    liveness: str | None,
    operator_namespace: str | None,
    webhook_options: WebhookOptions | None = None,
    webhook_certificate: WebhookCertificate | None = None,
    api_timeout_s: float = DEFAULT_API_TIMEOUT_S,
) -> None:
    """Run kopf with the VoiceLane handlers until it is stopped (SIGTERM or SIGINT).

    `api_timeout_s` bounds every API request but the watches, the reconciler's and kopf's alike: a
    stalled request fails after it and is retried with backoff. With `peering`, the name of a kopf
    peering object, this replica reconciles only while it leads (peering.py); it serves the webhook
    either way.
    """
    import kopf
    from kubernetes.client import ApiClient

    from voicelane.operator import handlers
    from voicelane.operator.apply import CHILD_RESOURCES
    from voicelane.operator.metrics import OperatorMetrics, start_server
    from voicelane.operator.render import LABEL_LANE

    def login() -> kopf.ConnectionInfo:
        # Re-read on every (re-)login so rotated tokens and edited kubeconfigs are picked up.
        fresh, namespace = client_configuration(kubeconfig)
        return connection_info(fresh, namespace)

    metrics = OperatorMetrics()
    configuration.connection_pool_maxsize = handlers.KubeApi.MAX_IN_FLIGHT
    reconciler = handlers.LaneReconciler(
        handlers.KubeApi(ApiClient(configuration), timeout_s=(min(5.0, api_timeout_s), api_timeout_s)),
        metrics,
        operator_namespace=operator_namespace,
    )
    memo = handlers.OperatorMemo(reconciler=reconciler, metrics=metrics, login=login)

    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True  # no CRD or namespace watching: fixed scope, fewer rights
    settings.posting.level = logging.WARNING  # kopf's handler chatter stays in the log
    settings.networking.request_timeout = api_timeout_s
    settings.networking.connect_timeout = min(10.0, api_timeout_s)
    settings.persistence.finalizer = "voicelane.dev/operator"
    # kopf's bookkeeping goes into annotations only: the CRD's status schema has no room for it
    # (the API server would prune it), and the status is the lane's, written by status.py.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX)

    for resource in CHILD_RESOURCES:  # watch only the lanes' children, filtered by the API server
        settings.watching.label_selectors[resource.group, resource.version, resource.plural] = LABEL_LANE

    if webhook_options is not None:  # the sidecar-injection webhook (webhook.py)
        from voicelane.operator import webhook

        webhook.enable(
            settings, handlers.registry, options=webhook_options, configuration=configuration, namespaces=namespaces
        )

    ready = asyncio.Event()
    runner = None
    # Every replica keeps the certificate and the caBundle (webhook_cert.py); kopf ignores tasks that
    # predate it, so this one is stopped below.
    keeper = asyncio.create_task(webhook_certificate.keep()) if webhook_certificate is not None else None
    if metrics_listen:
        host, port = host_port(metrics_listen)
        runner = await start_server(metrics, host, port, ready=ready)
        logger.info("Serving /metrics, /healthz and /readyz on http://%s:%d", host, port)
    priority = None
    if peering:
        from voicelane.operator.peering import LIFETIME_S, start_priority

        settings.peering.lifetime = LIFETIME_S
        priority = start_priority()
        # kopf starts every peer paused and says nothing while it stays so: say how this one is elected.
        logger.info(
            "Leader election through kopf peering %s (priority %d): reconciling only while no replica that "
            "started earlier is alive; serving the webhook either way.",
            peering,
            priority,
        )
    try:
        await kopf.operator(
            registry=handlers.registry,
            settings=settings,
            memo=memo,
            standalone=not peering,
            peering_name=peering or None,
            priority=priority,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
            ready_flag=ready,
        )
    finally:
        if keeper is not None:
            keeper.cancel()
        if runner is not None:
            await runner.cleanup()
