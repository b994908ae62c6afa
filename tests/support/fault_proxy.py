"""A fault-injecting reverse proxy in front of a real Kubernetes API server, for the operator's tests.

Clients speak plain HTTP to the proxy on 127.0.0.1 with their own bearer token, which is forwarded
unchanged: the API server authenticates and authorizes the real caller. The proxy speaks TLS to the
API server named by a kubeconfig, verifying it with that kubeconfig's certificate authority, and
streams every answer through chunk by chunk (a watch is one long chunked response).

On the way it can misbehave on purpose, and it counts. Test controls live under `/_proxy/`:

    GET    /_proxy/healthz        → {"ok": true}
    GET    /_proxy/faults         → the active faults with their hit counts
    POST   /_proxy/faults         a Fault as JSON → the stored fault with its id
    DELETE /_proxy/faults         → {"cleared": N}
    POST   /_proxy/watches/drop   → {"dropped": N}: every open watch stream ends, as on an API server restart
    GET    /_proxy/usage          → [{"agent", "verb", "group", "resource", "count", "codes"}...]

Usage counts requests by the client's User-Agent product (kubectl, kopf, OpenAPI-Generator for the
kubernetes client), the verb as the API server's authorizer derives it, the API group and the
resource (with its subresource, "voicelanes/status"); `codes` counts the answers by HTTP status. A
request with `dryRun` writes nothing, so it is counted apart under the verb "dryrun-<verb>".

Run it as a process (it imports nothing of the project, so `-P` keeps the repository root off
sys.path, where the folder operator/ would shadow the standard library's module):

    python -P tests/support/fault_proxy.py --kubeconfig ADMIN_KUBECONFIG --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import signal
import ssl
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import yaml

logger = logging.getLogger("voicelane.fault_proxy")

Body = dict[str, Any]

CONTROL_PREFIX = "/_proxy"
# Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are not forwarded; the body's
# length and framing are set anew by whoever sends it on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
STATUS_REASONS: dict[int, str] = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


# --- what a request addresses --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ApiPath:
    """The parts of a Kubernetes API URL path: /api/v1/namespaces/NS/PLURAL/NAME/SUBRESOURCE and /apis/GROUP/…"""

    group: str
    version: str | None
    namespace: str | None
    plural: str | None
    name: str | None
    subresource: str | None

    @property
    def resource(self) -> str:
        """The resource as RBAC names it: the plural, with its subresource after a slash."""
        return f"{self.plural}/{self.subresource}" if self.subresource else str(self.plural)


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
    """The verb the API server's authorizer sees for a request (a GET with watch=true is a watch)."""
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


def counted_verb(method: str, name: str | None, params: Mapping[str, str]) -> str:
    """The verb a request is counted under: a dry run writes nothing, so it is not counted as a write."""
    verb = request_verb(method, name, params)
    return f"dryrun-{verb}" if params.get("dryRun") else verb


# --- faults --------------------------------------------------------------------------------------


class FaultError(ValueError):
    """A fault that cannot be used; names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass
class Fault:
    """A misbehaviour injected into matching API requests (None fields match anything).

    `status` answers with that error code instead of forwarding (410 on a watch: an expired-version
    ERROR event inside the stream, as API servers send it); `delay_s` stalls first (a client with a
    shorter timeout sees a timeout); `disconnect` closes the connection with no answer. A stalled
    request whose client went away is not forwarded, as if it never reached the API server. `times`
    counts down the requests it hits; None keeps it until cleared. `verb` is matched as requests are
    counted: "patch" strikes real patches, "dryrun-patch" the dry runs. `subresource` "" strikes only
    requests for the object itself (None: with or without a subresource).
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
    def from_json(cls, data: object) -> Fault:
        if not isinstance(data, Mapping):
            raise FaultError("(body)", "a fault must be a JSON object")
        fields = {field.name for field in dataclasses.fields(cls)}
        for key, value in data.items():
            if key not in fields or key in ("id", "hits"):
                raise FaultError(str(key), f"unknown field (known: {sorted(set(fields) - {'id', 'hits'})})")
            _check_type(key, value)
        fault = cls(**dict(data))
        if fault.status is not None and not 400 <= fault.status <= 599:
            raise FaultError("status", f"must be an HTTP error code (400-599), got {fault.status}")
        if fault.delay_s < 0:
            raise FaultError("delay_s", f"must not be negative, got {fault.delay_s}")
        if fault.times is not None and fault.times < 1:
            raise FaultError("times", f"must be at least 1 (or null: until cleared), got {fault.times}")
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
            (self.subresource is None or self.subresource == (path.subresource or ""))
            and (self.namespace is None or self.namespace == path.namespace)
            and (self.name is None or self.name == path.name)
        )


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "verb": (str,),
    "resource": (str,),
    "subresource": (str,),
    "namespace": (str,),
    "name": (str,),
    "message": (str,),
    "status": (int,),
    "times": (int,),
    "delay_s": (int, float),
    "disconnect": (bool,),
}


def _check_type(key: str, value: object) -> None:
    wanted = _FIELD_TYPES[key]
    if value is None and key not in ("delay_s", "disconnect"):
        return
    # bool is an int in Python; JSON true is not a status code or a count.
    if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
        names = " or ".join(kind.__name__ for kind in wanted)
        raise FaultError(key, f"must be {names}, got {json.dumps(value)}")


def status_body(code: int, message: str) -> Body:
    """A Kubernetes `Status` object, the shape clients expect an API error in."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": STATUS_REASONS.get(code, "InternalError"),
        "details": {},
        "code": code,
    }


# --- the upstream API server ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Upstream:
    """Where the API server is and how to trust it, from a kubeconfig's current context."""

    server: str
    ssl: ssl.SSLContext | bool

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Upstream:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        contexts = {entry["name"]: entry.get("context") or {} for entry in config.get("contexts") or []}
        clusters = {entry["name"]: entry.get("cluster") or {} for entry in config.get("clusters") or []}
        context = contexts.get(config.get("current-context", ""))
        if context is None:
            raise ValueError(f"{path}: no current-context")
        cluster = clusters.get(context.get("cluster", ""))
        if cluster is None or not cluster.get("server"):
            raise ValueError(f"{path}: the current context's cluster has no server")
        server = str(cluster["server"]).rstrip("/")
        if not server.startswith("https://"):
            return cls(server, False)
        if cluster.get("insecure-skip-tls-verify"):
            return cls(server, False)  # the kubeconfig's own choice for this cluster
        context_ssl = ssl.create_default_context()
        if cluster.get("certificate-authority-data"):
            context_ssl.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        elif cluster.get("certificate-authority"):
            authority = Path(cluster["certificate-authority"])
            context_ssl.load_verify_locations(
                cafile=str(authority if authority.is_absolute() else path.parent / authority)
            )
        return cls(server, context_ssl)


# --- the proxy -----------------------------------------------------------------------------------


class FaultProxy:
    """Forwards API requests to `upstream`, injecting faults and counting requests on the way."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self._fault_ids: Iterator[int] = itertools.count(1)
        self._usage: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        self._codes: dict[tuple[str, str, str, str], collections.Counter[int]] = collections.defaultdict(
            collections.Counter
        )
        self._watches: set[aiohttp.ClientResponse] = set()
        self._session: aiohttp.ClientSession | None = None

    def application(self) -> aiohttp.web.Application:
        app = aiohttp.web.Application(client_max_size=64 * 2**20)
        app.router.add_get(f"{CONTROL_PREFIX}/healthz", self._healthz)
        app.router.add_get(f"{CONTROL_PREFIX}/faults", self._list_faults)
        app.router.add_post(f"{CONTROL_PREFIX}/faults", self._add_fault)
        app.router.add_delete(f"{CONTROL_PREFIX}/faults", self._clear_faults)
        app.router.add_post(f"{CONTROL_PREFIX}/watches/drop", self._drop_watches)
        app.router.add_get(f"{CONTROL_PREFIX}/usage", self._usage_rows)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _: aiohttp.web.Application) -> None:
        # No total timeout: a watch lasts as long as the API server keeps it open. Bodies pass
        # through as they are (no decompression), so the client decodes what the server encoded.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(ssl=self.upstream.ssl, limit=0),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )

    async def _close(self, _: aiohttp.web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    # -- controls -------------------------------------------------------------------------------------

    async def _healthz(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"ok": True})

    async def _list_faults(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response([dataclasses.asdict(fault) for fault in self.faults])

    async def _add_fault(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        try:
            fault = Fault.from_json(await request.json())
        except json.JSONDecodeError as exc:
            return aiohttp.web.json_response({"error": f"the body is not JSON: {exc}", "field": "(body)"}, status=400)
        except FaultError as exc:
            return aiohttp.web.json_response({"error": exc.message, "field": exc.field}, status=400)
        fault.id = next(self._fault_ids)
        self.faults.append(fault)
        return aiohttp.web.json_response(dataclasses.asdict(fault), status=201)

    async def _clear_faults(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        cleared = len(self.faults)
        self.faults.clear()
        return aiohttp.web.json_response({"cleared": cleared})

    async def _drop_watches(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        dropped = list(self._watches)
        for upstream in dropped:
            upstream.close()  # the forwarding loop sees the end and ends the client's stream
        return aiohttp.web.json_response({"dropped": len(dropped)})

    async def _usage_rows(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        rows = [
            {
                "agent": agent,
                "verb": verb,
                "group": group,
                "resource": resource,
                "count": count,
                "codes": {str(code): n for code, n in sorted(self._codes[(agent, verb, group, resource)].items())},
            }
            for (agent, verb, group, resource), count in sorted(self._usage.items())
        ]
        return aiohttp.web.json_response(rows)

    # -- forwarding -----------------------------------------------------------------------------------

    async def _forward(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        path = parse_api_path(request.path)
        key: tuple[str, str, str, str] | None = None
        if path is not None and path.plural:
            verb = counted_verb(request.method, path.name, request.query)
            # Who asked, by the User-Agent's product: kubectl, kopf, OpenAPI-Generator (the kubernetes client).
            agent = (request.headers.get("User-Agent") or "unknown").split("/", 1)[0]
            key = (agent, verb, path.group, path.resource)
            self._usage[key] += 1
            fault = self._take_fault(verb, path)
            if fault is not None:
                answer = await self._inject(fault, request, verb)
                if answer is not None:
                    self._codes[key][answer.status] += 1
                    return answer
                if _client_gone(request):
                    return aiohttp.web.Response(status=499)  # nobody to answer: never forwarded
        response = await self._relay(request, watch=path is not None and request.query.get("watch") in ("true", "1"))
        if key is not None:
            self._codes[key][response.status] += 1
        return response

    def _take_fault(self, verb: str, path: ApiPath) -> Fault | None:
        for fault in self.faults:
            if fault.matches(verb, path):
                fault.hits += 1
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    async def _inject(self, fault: Fault, request: aiohttp.web.Request, verb: str) -> aiohttp.web.StreamResponse | None:
        """The fault's answer, or None when the request goes on to the API server (a stall only)."""
        logger.info("fault %d on %s %s", fault.id, request.method, request.path_qs)
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.disconnect:
            if request.transport is not None:
                request.transport.close()
            return aiohttp.web.Response(status=499)
        if fault.status is None:
            return None
        message = fault.message or f"injected fault {fault.id}"
        if fault.status == 410 and verb == "watch":
            # An API server says "resourceVersion too old" to a watch inside the stream, not as the
            # HTTP status: clients (kopf among them) relist on that event.
            event = {"type": "ERROR", "object": status_body(410, message)}
            return aiohttp.web.Response(
                status=200, body=json.dumps(event).encode() + b"\n", content_type="application/json"
            )
        headers = {"Retry-After": "1"} if fault.status in (429, 503) else None
        return aiohttp.web.json_response(status_body(fault.status, message), status=fault.status, headers=headers)

    async def _relay(self, request: aiohttp.web.Request, *, watch: bool) -> aiohttp.web.StreamResponse:
        assert self._session is not None
        headers = {name: value for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP}
        body = await request.read() if request.can_read_body else None
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream.server + request.path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError) as exc:
            logger.warning("upstream %s %s: %s", request.method, request.path_qs, exc)
            return aiohttp.web.json_response(status_body(502, f"the API server did not answer: {exc}"), status=502)
        async with upstream:
            response = aiohttp.web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            if watch:
                self._watches.add(upstream)
            try:
                await response.prepare(request)
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                pass  # the client went away mid-answer (a watch it stopped, a timeout it gave up at)
            finally:
                self._watches.discard(upstream)
        return response


def _client_gone(request: aiohttp.web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


# --- running as a process ------------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def serve(proxy: FaultProxy, host: str, port: int) -> None:
    # A client that goes away ends its request here too: a stalled request is then never forwarded,
    # and a watch it stopped reading stops being read from the API server.
    runner = aiohttp.web.AppRunner(proxy.application(), access_log=None, handler_cancellation=True)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port).start()
    logger.info("forwarding http://%s:%d to %s", host, port, proxy.upstream.server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fault_proxy.py", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", type=Path, required=True, help="whose current context names the API server")
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 0), help="HOST:PORT to serve on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        upstream = Upstream.from_kubeconfig(args.kubeconfig)
    except (OSError, ValueError, KeyError) as exc:
        print(f"fault_proxy: cannot use --kubeconfig {args.kubeconfig}: {exc}", file=sys.stderr)
        return 2
    host, port = args.listen
    asyncio.run(serve(FaultProxy(upstream), host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
