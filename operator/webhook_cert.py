"""The webhook's CA and serving certificate, owned by the operator at run time, and the caBundle it keeps.

The chart renders neither a certificate nor a caBundle (both would change on every `helm template`,
which GitOps tools run on every sync): it renders an empty Secret and a MutatingWebhookConfiguration
without caBundle. The operator fills them in. `WebhookCertificate.ensure()` reads the Secret; if it holds
no CA, or a serving certificate that does not cover the webhook's host names or ends within
`RENEW_BEFORE`, it makes what is missing (the CA is kept while it is valid, so the caBundle stays the
same through renewals) and writes the Secret back with the resourceVersion it read. Replicas starting
together race for that write: the API server accepts one, and the others read the winner's
certificate and use it, so every replica serves with the same CA. Then it writes the PEM files kopf's
server reads (kopf restarts its server when they change), and patches the CA into each webhook of the
configuration whose caBundle differs. `keep()` repeats that every `CHECK_INTERVAL_S` seconds: a
renewal by another replica is picked up, and a caBundle that a re-apply of the configuration dropped
is put back.

Needs: get and update on that one Secret, get and patch on that one MutatingWebhookConfiguration
(the chart's Role and ClusterRole grant exactly those, by name).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_KEY = "ca.crt"
CA_KEY_KEY = "ca.key"
CERT_KEY = "tls.crt"
KEY_KEY = "tls.key"
RENEW_BEFORE = datetime.timedelta(days=30)
CHECK_INTERVAL_S = 60.0

logger = logging.getLogger("voicelane.operator")


class CertificateUnavailable(RuntimeError):
    """The Secret or the webhook configuration cannot be read or written."""


@dataclasses.dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_ca(common_name: str, validity: datetime.timedelta, now: datetime.datetime) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_serving(ca: KeyPair, hosts: Sequence[str], validity: datetime.timedelta, now: datetime.datetime) -> KeyPair:
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = ca.certificate
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + validity, ca_cert.not_valid_after_utc)  # never past its issuer
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _fresh(pair: KeyPair | None, now: datetime.datetime) -> bool:
    return pair is not None and pair.certificate.not_valid_after_utc - now > RENEW_BEFORE


def _covers(pair: KeyPair, hosts: Sequence[str], ca: KeyPair) -> bool:
    certificate = pair.certificate
    if certificate.issuer != ca.certificate.subject:
        return False
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(_san(hosts)) <= set(san)


def _pair(data: dict[str, str], cert_key: str, key_key: str) -> KeyPair | None:
    """The pair stored under two keys of a Secret's data, or None if missing or unreadable."""
    try:
        pair = KeyPair(base64.b64decode(data[cert_key]), base64.b64decode(data[key_key]))
        pair.certificate  # noqa: B018 - parses, or raises
        serialization.load_pem_private_key(pair.key_pem, password=None)
    except (KeyError, ValueError, TypeError):
        return None
    return pair


@dataclasses.dataclass
class WebhookCertificate:
    """The webhook's CA and certificate in `secret` (of `namespace`), served from `cert_dir`, trusted by
    `configuration`."""

    api_client: Any  # a kubernetes.client.ApiClient
    namespace: str
    secret: str
    configuration: str
    hosts: Sequence[str]
    cert_dir: Path
    validity: datetime.timedelta = datetime.timedelta(days=3650)

    def ensure(self) -> bytes:
        """Make the Secret hold a usable CA and certificate, serve them, trust the CA; returns the CA (PEM)."""
        import urllib3

        try:
            ca, serving = self._ensure_secret()
            self._write_files(serving)
            self._patch_ca_bundle(ca.cert_pem)
        except urllib3.exceptions.HTTPError as exc:  # no answer at all (the client's retries are spent)
            raise CertificateUnavailable(f"the API server did not answer: {exc}") from exc
        return ca.cert_pem

    def discard_files(self) -> None:
        """Remove the served copies (the key among them) when the operator stops; the Secret keeps them."""
        for name in (CERT_KEY, KEY_KEY):
            (self.cert_dir / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.cert_dir.rmdir()

    async def keep(self) -> None:
        """`ensure()` every CHECK_INTERVAL_S seconds, for as long as the operator runs."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            try:
                await asyncio.to_thread(self.ensure)
            except CertificateUnavailable as exc:
                logger.warning("Webhook certificate check failed (retrying in %.0f s): %s", CHECK_INTERVAL_S, exc)
            except Exception:  # the next check may succeed; a dead keeper would never renew again
                logger.exception("Webhook certificate check failed (retrying in %.0f s).", CHECK_INTERVAL_S)

    # -- the Secret ------------------------------------------------------------------------------------

    def _ensure_secret(self) -> tuple[KeyPair, KeyPair]:
        from kubernetes.client import CoreV1Api
        from kubernetes.client.exceptions import ApiException

        api = CoreV1Api(self.api_client)
        for _ in range(3):  # a lost race is settled by reading the winner's
            try:
                secret = api.read_namespaced_secret(self.secret, self.namespace)
            except ApiException as exc:
                raise CertificateUnavailable(
                    f"cannot read Secret {self.namespace}/{self.secret}: {exc.status} {exc.reason}"
                ) from exc
            data: dict[str, str] = {str(k): str(v) for k, v in (secret.data or {}).items()}
            now = datetime.datetime.now(datetime.UTC)
            ca = _pair(data, CA_CERT_KEY, CA_KEY_KEY)
            serving = _pair(data, CERT_KEY, KEY_KEY)
            if ca is not None and serving is not None and _fresh(serving, now) and _covers(serving, self.hosts, ca):
                return ca, serving
            if ca is None or not _fresh(ca, now):
                ca = make_ca(f"{self.secret}-ca", self.validity, now)
                logger.info("Made a new CA for the webhook in Secret %s/%s.", self.namespace, self.secret)
            serving = make_serving(ca, self.hosts, self.validity, now)
            data.update(
                {
                    CA_CERT_KEY: base64.b64encode(ca.cert_pem).decode(),
                    CA_KEY_KEY: base64.b64encode(ca.key_pem).decode(),
                    CERT_KEY: base64.b64encode(serving.cert_pem).decode(),
                    KEY_KEY: base64.b64encode(serving.key_pem).decode(),
                }
            )
            secret.data = dict(data)  # the client's model types its values loosely
            try:  # replace carries the resourceVersion read: a concurrent writer makes this a 409
                api.replace_namespaced_secret(self.secret, self.namespace, secret)
            except ApiException as exc:
                if exc.status == 409:
                    continue
                raise CertificateUnavailable(
                    f"cannot write Secret {self.namespace}/{self.secret}: {exc.status} {exc.reason}"
                ) from exc
            logger.info("Issued the webhook's certificate for %s.", ", ".join(self.hosts))
            return ca, serving
        raise CertificateUnavailable(f"Secret {self.namespace}/{self.secret} kept changing while being written")

    def _write_files(self, serving: KeyPair) -> None:
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        for name, content in ((CERT_KEY, serving.cert_pem), (KEY_KEY, serving.key_pem)):
            path = self.cert_dir / name
            if path.exists() and path.read_bytes() == content:
                continue
            staged = path.with_suffix(".new")
            staged.touch(mode=0o600)
            staged.write_bytes(content)
            staged.replace(path)  # kopf's server never reads half a file

    # -- the webhook configuration ---------------------------------------------------------------------

    def _patch_ca_bundle(self, ca_pem: bytes) -> None:
        from kubernetes.client import AdmissionregistrationV1Api
        from kubernetes.client.exceptions import ApiException

        api = AdmissionregistrationV1Api(self.api_client)
        bundle = base64.b64encode(ca_pem).decode()
        try:
            stored = api.api_client.sanitize_for_serialization(
                api.read_mutating_webhook_configuration(self.configuration)
            )
        except ApiException as exc:
            raise CertificateUnavailable(
                f"cannot read MutatingWebhookConfiguration {self.configuration}: {exc.status} {exc.reason}"
            ) from exc
        operations: list[dict[str, Any]] = []
        for index, webhook in enumerate(stored.get("webhooks") or []):
            if (webhook.get("clientConfig") or {}).get("caBundle") == bundle:
                continue
            # The test guards the index: a configuration re-ordered meanwhile fails the patch, not another webhook.
            operations += [
                {"op": "test", "path": f"/webhooks/{index}/name", "value": webhook["name"]},
                {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle},
            ]
        if not operations:
            return
        try:
            api.patch_mutating_webhook_configuration(self.configuration, operations)
        except ApiException as exc:
            raise CertificateUnavailable(
                f"cannot patch the caBundle of MutatingWebhookConfiguration {self.configuration}: "
                f"{exc.status} {exc.reason}"
            ) from exc
        logger.info("Put the webhook's CA into MutatingWebhookConfiguration %s.", self.configuration)
