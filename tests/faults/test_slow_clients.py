"""Clients that are slow on purpose: bodies sent a byte at a time, answers never read, idle sockets.

None of them may hold the sidecar: a slow body is cut off with 408 after
`limits.body_read_timeout_s`, a reader that stops taking a stream is cut off after
`limits.send_timeout_s`, and a thousand idle connections leave it answering at once.
"""

from __future__ import annotations

import contextlib
import json
import resource
import select
import socket
import time
from collections.abc import Iterator

import psutil
import pytest
import requests

from tests.faults.conftest import fault_config
from tests.faults.wire import wait_until

pytestmark = pytest.mark.timeout(90)

SEND_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 1.0


def http_request(port: int, path: str, body: bytes, *, declared_length: int | None = None) -> bytes:
    length = len(body) if declared_length is None else declared_length
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    return head.encode() + body


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, str]:
    """Everything the peer sends until it closes (or resets) the connection, and how it ended."""
    sock.settimeout(timeout_s)
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return bytes(data), "reset"
    except TimeoutError:
        return bytes(data), "still open"
    return bytes(data), "closed"


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response with a Content-Length body."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def quick(method: str, url: str, **kwargs) -> requests.Response:
    """A request that must be answered at once although the sidecar is being abused."""
    started = time.monotonic()
    response = requests.request(method, url, timeout=5, **kwargs)
    assert time.monotonic() - started < 3.0, f"{url} took {time.monotonic() - started:.1f} s"
    return response


def test_slowloris_body_is_cut_off_with_408(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "5")
    sidecar = start_sidecar(sim.url, config=fault_config(limits={"body_read_timeout_s": BODY_TIMEOUT_S}))
    body = b'{"text": "Hej.", "source": "chat"}'
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as sock:
        sock.sendall(http_request(sidecar.port, "/v1/text", b"", declared_length=len(body)))
        started = time.monotonic()
        answer = b""
        # One byte every 0.3 s: never idle for long, never done in time.
        for byte in body:
            if select.select([sock], [], [], 0.3)[0]:
                answer = read_response(sock)
                break
            sock.sendall(bytes([byte]))
            assert quick("GET", sidecar.url + "/healthz").status_code == 200
        elapsed = time.monotonic() - started
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b'"body_timeout"' in payload
    assert BODY_TIMEOUT_S * 0.8 < elapsed < BODY_TIMEOUT_S + 3


def test_a_reader_that_stops_reading_is_cut_off_and_wedges_nothing(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "5", "--tts-first-byte-ms", "5")
    sidecar = start_sidecar(
        sim.url,
        config=fault_config(
            tts={"backend": "openai", "url": sim.url},
            prompts={"passthrough": True},
            limits={"send_timeout_s": SEND_TIMEOUT_S},
        ),
    )
    # About 4,000 characters: some 11 MB of speech, far more than socket buffers hold.
    text = " ".join(f"Mening nummer {i} är här." for i in range(160))
    payload = json.dumps({"text": text, "source": "chat", "format": "pcm"}).encode()
    process = psutil.Process(sidecar.process.pid)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", sidecar.port))
        client_port = sock.getsockname()[1]
        sock.sendall(http_request(sidecar.port, "/v1/speak", payload))
        sock.settimeout(10)
        head = sock.recv(1024)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        # Now read nothing while the sidecar has megabytes left to send.
        time.sleep(0.5)
        for _ in range(3):
            assert quick("GET", sidecar.url + "/healthz").status_code == 200
            reply = quick("POST", sidecar.url + "/v1/text", json={"text": "Fortfarande här?", "source": "chat"})
            assert reply.status_code == 200
            spoken = quick("POST", sidecar.url + "/v1/speak", json={"text": "Hej där.", "source": "chat"})
            assert spoken.status_code == 200
            time.sleep(0.3)

        def sidecar_dropped_the_connection() -> bool:
            return not any(
                c.laddr.port == sidecar.port and c.raddr and c.raddr.port == client_port
                for c in process.net_connections(kind="tcp")
                if c.status == psutil.CONN_ESTABLISHED
            )

        wait_until(sidecar_dropped_the_connection, timeout_s=SEND_TIMEOUT_S + 5, what="the stuck reader to be cut off")
        rest, ended = read_until_closed(sock, timeout_s=10)
    assert ended in ("reset", "closed"), ended
    # The stream was cut, not finished: no final chunk.
    assert not (head + rest).endswith(b"0\r\n\r\n")
    stats = requests.get(sidecar.url + "/v1/stats", timeout=5).json()
    assert stats["single_flight"]["running"] == 0


@contextlib.contextmanager
def open_file_limit(soft: int) -> Iterator[None]:
    """Run the block with this process's soft limit on open files set to `soft` (children inherit it)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, before[1]), before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_a_thousand_idle_connections_leave_the_sidecar_answering(start_sim, start_sidecar) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"the hard open-file limit ({hard}) is too low for 1,000 client sockets")
    sim = start_sim("--ttft-ms", "5")
    # The sidecar starts with a soft open-file limit below the number of connections (containers
    # commonly get 1,024, shared with everything else the process has open); it lifts its own.
    with open_file_limit(800):
        sidecar = start_sidecar(sim.url, config=fault_config())
    process = psutil.Process(sidecar.process.pid)
    # This test process needs the room for its own thousand sockets.
    with open_file_limit(max(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[0])), contextlib.ExitStack() as stack:
        idle = []
        for index in range(1000):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", sidecar.port), timeout=10))
            if index % 2:
                # Half send the start of a request and then nothing: headers that never end.
                sock.sendall(b"POST /v1/text HTTP/1.1\r\nHost: x\r\n")
            idle.append(sock)
        wait_until(lambda: process.num_fds() >= 1000, timeout_s=10, what="the sidecar to accept every connection")
        assert quick("GET", sidecar.url + "/healthz").status_code == 200
        reply = quick("POST", sidecar.url + "/v1/text", json={"text": "Tusen väntar.", "source": "chat"})
        assert reply.status_code == 200
        assert reply.json()["text"].strip() == "Tusen väntar."
        assert process.rlimit(psutil.RLIMIT_NOFILE)[0] > 1000
