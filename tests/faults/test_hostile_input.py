"""Input that used to get a 500 or a traceback: text UTF-8 cannot carry, bodies that lie about their
encoding, JSON nested past the parser's recursion, requests the HTTP parser refuses, clients that leave.

Every JSON endpoint of a real sidecar (in front of the simulator) answers each with a 400 in its own
API's error format, naming the field or the reason; the log gets one line per request and no traceback.
"""

from __future__ import annotations

import gzip
import json
import random
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

import voicelane.sidecar
from tests.api.live import LiveLane, live_lane
from tests.faults.conftest import CRASH_MARKS
from voicelane.sidecar.edge import REQUEST_ID

pytestmark = pytest.mark.timeout(180)

LONE = "\ud800"  # json.dumps writes it as the escape "\ud800", which json.loads reads back as a lone surrogate


@dataclass(frozen=True)
class Endpoint:
    path: str
    body: dict[str, Any]  # a valid request
    errors: str  # the error format: "native", "ollama" or "openai"


CHAT = [{"role": "user", "content": "Hej på dig."}]
ENDPOINTS = {
    "text": Endpoint("/v1/text", {"text": "Hej på dig.", "source": "chat"}, "native"),
    "speak": Endpoint("/v1/speak", {"text": "Hej på dig.", "source": "chat"}, "native"),
    "ollama_chat": Endpoint("/api/chat", {"model": "voicelane", "messages": CHAT, "stream": False}, "ollama"),
    "ollama_generate": Endpoint("/api/generate", {"model": "voicelane", "prompt": "Hej.", "stream": False}, "ollama"),
    "openai_chat": Endpoint("/v1/chat/completions", {"model": "voicelane", "messages": CHAT}, "openai"),
    "ollama_show": Endpoint("/api/show", {"model": "fast-model"}, "ollama"),
    "ollama_embed": Endpoint("/api/embed", {"model": "fast-model", "input": "Hej."}, "ollama"),
    "openai_embeddings": Endpoint("/v1/embeddings", {"model": "fast-model", "input": "Hej."}, "openai"),
}


def error_code(response: requests.Response, errors: str) -> str | None:
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    if errors == "ollama":
        return response.headers.get("X-Voicelane-Error")
    return response.json()["error"]["code"]


def error_message(response: requests.Response) -> str:
    error = response.json()["error"]
    return error if isinstance(error, str) else error["message"]


class LogCursor:
    """The lines a process logged since the cursor was last moved."""

    def __init__(self, lane: LiveLane) -> None:
        self.lane = lane
        self.offset = len(lane.sidecar.log())

    def new_lines(self) -> list[str]:
        text = self.lane.sidecar.log()
        lines, self.offset = text[self.offset :].splitlines(), len(text)
        return lines

    def records(self, *, settle_s: float = 0.3) -> list[dict[str, Any]]:
        time.sleep(settle_s)  # a line is written just after its answer
        lines = self.new_lines()
        crashes = [line for line in lines if any(mark in line for mark in CRASH_MARKS)]
        assert not crashes, "\n".join(crashes[:3])
        return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLane]:
    settings = {"rate_limit": {"burst": 10_000, "sustained_per_s": 10_000}, "scheduler": {"max_waiting": 500}}
    with live_lane(tmp_path_factory.mktemp("hostile"), settings=settings) as started:
        yield started
        log = started.sidecar.log()
        assert not [line for line in log.splitlines() if any(mark in line for mark in CRASH_MARKS)]


def post(lane: LiveLane, path: str, body: bytes, **headers: str) -> requests.Response:
    return requests.post(
        lane.url + path, data=body, headers={"Content-Type": "application/json", **headers}, timeout=30
    )


# ----- text UTF-8 cannot carry ---------------------------------------------------------------------

# (endpoint, the field, the valid body with a lone surrogate put into that field)
SURROGATE_CASES = [
    ("text", "text", {"text": f"Hej {LONE}", "source": "chat"}),
    ("text", "lang", {"text": "Hej", "source": "chat", "lang": f"sv{LONE}"}),
    ("text", "target_lang", {"text": "Hej", "source": "chat", "target_lang": LONE}),
    ("text", "source", {"text": "Hej", "source": f"chat{LONE}"}),
    ("text", "request_id", {"text": "Hej", "source": "chat", "request_id": LONE}),
    ("speak", "text", {"text": f"Hej {LONE}", "source": "chat"}),
    ("speak", "voice", {"text": "Hej", "source": "chat", "voice": f"sv{LONE}"}),
    ("speak", "lang", {"text": "Hej", "source": "chat", "lang": LONE}),
    ("ollama_chat", "messages[0].role", {"model": "voicelane", "messages": [{"role": LONE, "content": "Hej"}]}),
    ("ollama_chat", "messages[0].content", {"model": "voicelane", "messages": [{"role": "user", "content": LONE}]}),
    ("ollama_chat", "options.stop[1]", {"model": "voicelane", "messages": CHAT, "options": {"stop": ["x", LONE]}}),
    ("ollama_chat", "model", {"model": f"voicelane{LONE}", "messages": CHAT}),
    ("ollama_generate", "system", {"model": "voicelane", "prompt": "Hej", "system": LONE}),
    ("ollama_generate", "prompt", {"model": "voicelane", "prompt": f"Hej {LONE}"}),
    ("ollama_generate", "options.stop", {"model": "voicelane", "prompt": "Hej", "options": {"stop": LONE}}),
    ("openai_chat", "messages[0].role", {"model": "voicelane", "messages": [{"role": LONE, "content": "Hej"}]}),
    (
        "openai_chat",
        "messages[0].content[0].text",
        {"model": "voicelane", "messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
    ),
    ("openai_chat", "stop", {"model": "voicelane", "messages": CHAT, "stop": LONE}),
    ("ollama_show", "model", {"model": LONE}),
    ("ollama_embed", "input", {"model": "fast-model", "input": LONE}),
    ("openai_embeddings", "input[0]", {"model": "fast-model", "input": [LONE]}),
    ("text", "\\ud800", {"text": "Hej", "source": "chat", LONE: 1}),  # a key: named by its escape
]


@pytest.mark.parametrize(
    ("endpoint", "field", "body"), SURROGATE_CASES, ids=[f"{e}-{f}" for e, f, _ in SURROGATE_CASES]
)
def test_a_lone_surrogate_in_any_field_is_refused_naming_the_field(
    lane: LiveLane, endpoint: str, field: str, body: dict[str, Any]
) -> None:
    target = ENDPOINTS[endpoint]
    raw = json.dumps(body).encode()
    assert b"\\ud800" in raw  # the escape, as a client sends it
    logs = LogCursor(lane)
    response = post(lane, target.path, raw)
    assert response.status_code == 400, response.text
    assert error_code(response, target.errors) == "invalid_unicode"
    assert f"'{field}'" in error_message(response)
    if target.errors == "native":
        assert response.json()["error"]["details"] == {"field": field}
    assert [r["error_code"] for r in logs.records() if r.get("msg") == "request finished"] in ([], ["invalid_unicode"])


def test_a_valid_surrogate_pair_is_a_character_and_is_accepted(lane: LiveLane) -> None:
    # "\ud83d\ude00" is one character (U+1F600) escaped as a pair: nothing to refuse.
    raw = b'{"text": "Hej \\ud83d\\ude00", "source": "chat"}'
    assert post(lane, "/v1/text", raw).status_code == 200


def test_a_request_id_header_that_cannot_be_echoed_is_refused(lane: LiveLane) -> None:
    body = json.dumps(ENDPOINTS["ollama_chat"].body).encode()
    response = post(lane, "/api/chat", body, **{"X-Request-Id": "not an id!"})
    assert response.status_code == 400
    assert response.headers["X-Voicelane-Error"] == "invalid_field"
    assert "X-Request-Id" in error_message(response)
    assert post(lane, "/api/chat", body, **{"X-Request-Id": "chat-1.a:b"}).headers["X-Request-Id"] == "chat-1.a:b"


def test_the_documented_request_id_header_is_the_one_enforced() -> None:
    spec = json.loads(Path(voicelane.sidecar.__file__).with_name("openapi.json").read_text(encoding="utf-8"))
    schema = spec["components"]["parameters"]["RequestIdHeader"]["schema"]
    assert schema["pattern"] == f"^{REQUEST_ID.pattern.removesuffix('{1,128}')}*$"
    assert schema["maxLength"] == 128


# ----- bodies that are not what they say ----------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_a_body_that_is_not_compressed_as_its_content_encoding_says_is_a_400(
    lane: LiveLane, endpoint: str, encoding: str
) -> None:
    target = ENDPOINTS[endpoint]
    logs = LogCursor(lane)
    response = post(lane, target.path, json.dumps(target.body).encode(), **{"Content-Encoding": encoding})
    assert response.status_code == 400, response.text
    assert error_code(response, target.errors) == "invalid_content_encoding"
    assert encoding in error_message(response)
    logs.records()  # no traceback


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_a_body_that_is_compressed_as_it_says_is_read(lane: LiveLane, encoding: str, compress: Any) -> None:
    body = compress(json.dumps({"text": "Hej komprimerat.", "source": "chat"}).encode())
    response = post(lane, "/v1/text", body, **{"Content-Encoding": encoding})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_json_nested_past_the_parsers_recursion_is_a_400(lane: LiveLane, endpoint: str) -> None:
    target = ENDPOINTS[endpoint]
    deep = json.dumps(target.body)[:-1] + ', "nested": ' + "[" * 20_000 + "]" * 20_000 + "}"
    logs = LogCursor(lane)
    response = post(lane, target.path, deep.encode())
    assert response.status_code == 400, response.text
    assert error_code(response, target.errors) == "invalid_json"
    assert "nests deeper than 128 levels" in error_message(response)
    logs.records()


def test_nesting_up_to_the_limit_is_accepted(lane: LiveLane) -> None:
    body = {"text": "Hej djupt.", "source": "chat", "extra": json.loads("[" * 127 + "]" * 127)}
    assert post(lane, "/v1/text", json.dumps(body).encode()).status_code == 200
    body["extra"] = [body["extra"]]
    assert post(lane, "/v1/text", json.dumps(body).encode()).status_code == 400


# ----- what the HTTP parser refuses -----------------------------------------------------------------


def exchange(lane: LiveLane, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; the status, headers and body of the answer (the server closes after a refusal)."""
    host, port = lane.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        answer = bytearray()
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


BODY = json.dumps({"text": "Hej", "source": "chat"}).encode()
LENGTH = b"Content-Length: %d\r\n" % len(BODY)
PARSER_REFUSALS = {
    "oversized_header": b"POST /v1/text HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 9000
    + b"\r\n"
    + LENGTH
    + b"\r\n"
    + BODY,
    "too_many_headers": b"POST /v1/text HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: 1\r\n" % i for i in range(200))
    + LENGTH
    + b"\r\n"
    + BODY,
    "te_with_content_length": b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    + LENGTH
    + b"\r\n"
    + BODY,
    "bad_chunk_size": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    + BODY,
    "bad_content_length": b"POST /v1/speak HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n" + BODY,
    "header_with_nul": b"POST /api/generate HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n" + LENGTH + b"\r\n" + BODY,
    "not_http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
}


@pytest.mark.parametrize("case", sorted(PARSER_REFUSALS))
def test_requests_the_http_parser_refuses_get_the_json_error_and_one_log_line(lane: LiveLane, case: str) -> None:
    logs = LogCursor(lane)
    status, headers, body = exchange(lane, PARSER_REFUSALS[case])
    assert status == 400, body
    assert headers["content-type"].startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_http"
    assert error["message"].startswith("not a valid HTTP request: ")
    assert b"aaaa" not in body  # what the client sent is not quoted back
    refused = [r for r in logs.records() if r.get("msg") == "request refused by the HTTP parser"]
    assert len(refused) == 1
    assert refused[0]["level"] == "INFO"
    assert refused[0]["error_code"] == "invalid_http"


def test_an_unsupported_content_encoding_is_refused_by_name(lane: LiveLane) -> None:
    status, _headers, body = exchange(
        lane, b"POST /v1/text HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\n" + LENGTH + b"\r\n" + BODY
    )
    assert status == 400
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_content_encoding"
    assert "install" not in error["message"]


@pytest.mark.parametrize(
    ("endpoint", "head", "later", "code"),
    [
        ("/v1/text", b"Transfer-Encoding: chunked", [b'5\r\n{"tex\r\n', b"zz\r\n"], "invalid_body"),
        ("/api/chat", b"Transfer-Encoding: chunked", [b'5\r\n{"mod\r\n', b"zz\r\n"], "invalid_body"),
        ("/v1/speak", b"Content-Encoding: deflate\r\nContent-Length: 4", [b"[{}]"], "invalid_content_encoding"),
    ],
    ids=["bad_chunk_size_later", "bad_chunk_size_later_transparent", "deflate_that_never_ends"],
)
def test_a_body_the_parser_fails_part_way_through_is_refused_at_once(
    lane: LiveLane, endpoint: str, head: bytes, later: list[bytes], code: str
) -> None:
    # The request's head arrives first, so its handler is already reading the body when the parser
    # fails; aiohttp left that body open, and the handler waited for the body timeout (10 s).
    host, port = lane.url.removeprefix("http://").split(":")
    logs = LogCursor(lane)
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST " + endpoint.encode() + b" HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n\r\n")
        for piece in later:
            time.sleep(0.2)
            sock.sendall(piece)
        answer = sock.recv(65536)
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 400"), answer
    assert time.monotonic() - started < 3
    assert b"Connection: close" in head_part  # the rest of this connection cannot be read as requests
    error = json.loads(body)["error"]
    if endpoint.startswith("/api/"):  # Ollama's error format: the code in a header
        assert f"X-Voicelane-Error: {code}".encode() in head_part
    else:
        assert error["code"] == code
    assert [r["error_code"] for r in logs.records() if r.get("msg") == "request finished"] == [code]


def test_an_answer_to_a_body_it_could_not_read_closes_the_connection(lane: LiveLane) -> None:
    # Otherwise a client sends its next request into a connection the sidecar is about to close.
    with requests.Session() as session:
        refused = session.post(
            lane.url + "/v1/text", data=BODY, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )
        assert refused.status_code == 400
        assert refused.headers["Connection"] == "close"
        assert session.post(lane.url + "/v1/text", data=BODY, timeout=30).status_code == 200


# ----- clients that leave mid-speech ------------------------------------------------------------------


def leave_mid_speech(lane: LiveLane, request_id: str, rng: random.Random) -> None:
    """Ask for long speech, read a little of it, then reset the connection (a client that crashes or is killed)."""
    body = json.dumps(
        {
            "text": f"Ett långt mejl {request_id}. " * 60,
            "source": rng.choice(["chat", "notification"]),
            "request_id": request_id,
        }
    ).encode()
    host, port = lane.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.settimeout(10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rng.choice([2048, 65536]))
    try:
        sock.connect((host, int(port)))
        sock.sendall(b"POST /v1/speak HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        wanted, got = rng.choice([1, 5_000, 50_000, 200_000]), 0
        while got < wanted and (chunk := sock.recv(65536)):
            got += len(chunk)
    except OSError:
        pass
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def test_clients_that_leave_mid_speech_are_one_info_line_each_never_an_error(lane: LiveLane) -> None:
    # The fault was a race (a write to a connection the client had just reset, before aiohttp saw the
    # reset): about one leave in fifteen logged "Error handling request" with a traceback. Ninety leaves,
    # six at a time, make it show.
    rng = random.Random(14)
    logs = LogCursor(lane)
    ids = [f"leaver-{n}" for n in range(90)]
    for start in range(0, len(ids), 6):
        batch = [
            threading.Thread(target=leave_mid_speech, args=(lane, i, random.Random(rng.random())))
            for i in ids[start : start + 6]
        ]
        for thread in batch:
            thread.start()
        for thread in batch:
            thread.join()
    records = logs.records(settle_s=1.0)  # asserts: no traceback, no "Error handling request"
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")]
    lines_per_id: dict[str, int] = {}
    for record in records:
        if record.get("logger") == "voicelane.sidecar.requests" and record.get("request_id") in ids:
            lines_per_id[record["request_id"]] = lines_per_id.get(record["request_id"], 0) + 1
        assert record.get("request_id", "set") is not None, record
    assert set(lines_per_id) == set(ids)  # every request is named by its id, from the body
    assert set(lines_per_id.values()) == {1}
    assert requests.get(lane.url + "/healthz", timeout=5).status_code == 200
