"""Generated hostile input for every JSON endpoint of the sidecar and for the operator's webhook.

Beside the schemathesis run (which generates from the OpenAPI description), hypothesis generates
what no description invites: text with lone surrogates, NULs, bidi controls and byte-order marks,
values of every JSON type in every field, keys that are not text UTF-8 can carry, JSON nested far
past the parser's recursion, bodies that are not JSON or not UTF-8, Content-Encodings that lie, and
headers with any byte a socket can send. The properties: no answer is a 500 (the only 5xx allowed are
the documented upstream refusals, and with a healthy simulator none is expected), every refusal is
the endpoint's JSON error, and neither log holds a traceback or an ERROR line.

`VOICELANE_HYPOTHESIS_EXAMPLES` sets the examples per test (default 60: some 700 requests, a few seconds).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import socket
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.api.live import LiveLane, live_lane
from tests.faults.conftest import CRASH_MARKS
from tests.security.webhook_server import REVIEW, InProcessWebhook, serving_webhook

pytestmark = pytest.mark.timeout(600)

EXAMPLES = int(os.environ.get("VOICELANE_HYPOTHESIS_EXAMPLES", "60"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
# 5xx the sidecar may answer when an upstream fails, each with its code (README, sidecar/openapi.json).
UPSTREAM_REFUSALS = {
    502: {"upstream_failed", "upstream_interrupted", "tts_failed"},
    503: {"upstream_unavailable", "guardian_emergency"},
    504: {"upstream_timeout"},
}

# ----- strategies -----------------------------------------------------------------------------------

# Characters that have broken text handling somewhere: lone surrogates (either half), NUL and other
# controls, a byte-order mark, bidi overrides, the largest code point, quotes and backslashes.
AWKWARD = [
    "\ud800",
    "\udbff",
    "\udc00",
    "\udfff",
    "\x00",
    "\x1b",
    "\x7f",
    "\ufeff",
    "\u202e",
    "\U0010ffff",
    '"',
    "\\",
    "\n",
]
hostile_text = st.lists(st.one_of(st.characters(), st.sampled_from(AWKWARD)), max_size=24).map("".join)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(hostile_text, children, max_size=4)),
    max_leaves=12,
)


# Deep values are written as text: building and encoding them as Python objects would hit this
# process's own recursion limit. A placeholder string stands for each until the body is encoded.
DEEP_TEXT: list[str] = []


@st.composite
def deeply_nested(draw: st.DrawFn) -> str:
    """A value nested 100 to 3,000 levels deep (under and over the edge's limit of 128), as a placeholder."""
    depth = draw(st.integers(min_value=100, max_value=3000))
    opening = "".join('{"k": ' if level % 2 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 else "]" for level in reversed(range(depth)))
    DEEP_TEXT.append(opening + json.dumps(draw(st.one_of(st.none(), st.integers(), st.just("x")))) + closing)
    return f"@@nested-{len(DEEP_TEXT) - 1}@@"


# Strings most often, as the fields mostly take text: that gets past the type checks to the text's own.
field_values = st.one_of(hostile_text, hostile_text, json_values, deeply_nested())


def messages() -> st.SearchStrategy[Any]:
    message = st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(["user", "system", "assistant"]), field_values)},
        optional={
            "content": st.one_of(
                hostile_text,
                field_values,
                st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": field_values}), max_size=3),
            ),
            "images": field_values,
        },
    )
    return st.one_of(st.lists(message, max_size=3), field_values)


# Each JSON endpoint: a valid request, and the fields a client fills (each may get any value).
ENDPOINTS: dict[str, tuple[dict[str, Any], dict[str, st.SearchStrategy[Any]]]] = {
    "/v1/text": (
        {"text": "Hej på dig.", "source": "chat"},
        {k: field_values for k in ("text", "source", "lang", "target_lang", "request_id", "stream", "voice", "format")},
    ),
    "/v1/speak": (
        {"text": "Hej.", "source": "notification"},
        {k: field_values for k in ("text", "source", "lang", "target_lang", "request_id", "voice", "format")},
    ),
    "/api/chat": (
        {"model": "voicelane", "messages": [{"role": "user", "content": "Hej."}], "stream": False},
        {
            "messages": messages(),
            **{k: field_values for k in ("model", "options", "stream", "format", "keep_alive", "think", "tools")},
        },
    ),
    "/api/generate": (
        {"model": "voicelane", "prompt": "Hej.", "stream": False},
        {k: field_values for k in ("model", "prompt", "system", "options", "stream", "format", "keep_alive")},
    ),
    "/v1/chat/completions": (
        {"model": "voicelane", "messages": [{"role": "user", "content": "Hej."}]},
        {
            "messages": messages(),
            **{k: field_values for k in ("model", "stream", "temperature", "max_tokens", "stop", "seed")},
        },
    ),
    "/api/show": ({"model": "fast-model"}, {k: field_values for k in ("model", "name", "verbose")}),
    "/api/embed": ({"model": "fast-model", "input": "Hej."}, {k: field_values for k in ("model", "input", "truncate")}),
    "/v1/embeddings": ({"model": "fast-model", "input": "Hej."}, {k: field_values for k in ("model", "input")}),
}


def encode(value: Any, how: str) -> bytes:
    """JSON as a client may send it: escaped to ASCII, raw UTF-8, or with surrogates as (invalid) UTF-8 bytes."""
    text = json.dumps(value, ensure_ascii=how == "ascii")
    text = re.sub(r'"@@nested-(\d+)@@"', lambda found: DEEP_TEXT[int(found.group(1))], text)
    return text.encode("utf-8", "surrogatepass" if how == "surrogatepass" else "replace")


@st.composite
def hostile_bodies(draw: st.DrawFn, endpoint: str) -> bytes:
    valid, fields = ENDPOINTS[endpoint]
    shape = draw(st.sampled_from(["fields", "fields", "fields", "any_json", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=300))
    if shape == "any_json":
        value = draw(st.one_of(json_values, deeply_nested()))
    else:
        changed = draw(st.dictionaries(st.sampled_from(sorted(fields)), st.just(None), min_size=1, max_size=3))
        value = {**valid, **{name: draw(fields[name]) for name in changed}}
        value.update(draw(st.dictionaries(hostile_text, json_values, max_size=2)))  # keys no one expects
    return encode(value, draw(st.sampled_from(["ascii", "utf8", "surrogatepass"])))


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60)
some_hostile_headers = st.fixed_dictionaries(
    {},
    optional={
        "X-Request-Id": header_text,
        "X-Voicelane-Source": st.one_of(header_text, st.sampled_from(["chat", "email", "notification", ""])),
        "Content-Type": st.one_of(header_text, st.sampled_from(["application/json; charset=latin-1", "text/plain"])),
        "Accept": header_text,
        "Accept-Encoding": header_text,
    },
).map(lambda headers: {name: value.strip() for name, value in headers.items()})
# Half the requests without: a refused header would hide what the body does.
hostile_headers = st.one_of(st.just({}), some_hostile_headers)
content_codings = st.one_of(
    st.none(), st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "gzip, deflate", "x-unknown"])
)


def compress(body: bytes, coding: str | None, really: bool) -> bytes:
    if not really or coding not in ("gzip", "deflate"):
        return body
    return gzip.compress(body) if coding == "gzip" else zlib.compress(body)


# ----- the sidecar ------------------------------------------------------------------------------------


class SidecarLog:
    """Reads the sidecar's log as it grows, failing on the first crash mark."""

    def __init__(self, lane: LiveLane) -> None:
        self.lane, self.offset = lane, 0

    def assert_clean(self) -> None:
        text = self.lane.sidecar.log()
        fresh, self.offset = text[self.offset :], len(text)
        bad = [
            line
            for line in fresh.splitlines()
            if any(mark in line for mark in CRASH_MARKS) or '"level": "ERROR"' in line or '"level": "CRITICAL"' in line
        ]
        assert not bad, "\n".join(bad[:3])


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveLane, SidecarLog]]:
    settings_ = {
        "rate_limit": {"burst": 100_000, "sustained_per_s": 100_000},
        "scheduler": {"max_waiting": 1000, "max_running_per_priority": 8},
        # A generated Content-Length the body does not fill is cut off soon.
        "limits": {"body_read_timeout_s": 1.0},
        # Generated texts are short; the check is what the sidecar does with them, not how fast.
        "phrase_bank": {"enabled": False},
    }
    with live_lane(tmp_path_factory.mktemp("hostile-properties"), settings=settings_) as started:
        log = SidecarLog(started)
        yield started, log
        log.assert_clean()


def assert_answered_properly(response: requests.Response, endpoint: str) -> None:
    where = f"{endpoint} answered {response.status_code}: {response.content[:300]!r}"
    assert response.status_code != 500, where
    if response.status_code < 400:
        return
    assert response.headers.get("Content-Type", "").startswith("application/json"), where
    error = response.json()["error"]
    if response.status_code >= 500:
        code = error["code"] if isinstance(error, dict) else response.headers.get("X-Voicelane-Error")
        assert code in UPSTREAM_REFUSALS.get(response.status_code, set()), where


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_no_generated_body_gets_a_500_or_a_traceback(lane: tuple[LiveLane, SidecarLog], endpoint: str) -> None:
    live, log = lane
    session = requests.Session()

    @PROPERTY
    @given(body=hostile_bodies(endpoint), headers=hostile_headers, coding=content_codings, really=st.booleans())
    def check(body: bytes, headers: dict[str, str], coding: str | None, really: bool) -> None:
        sent = dict(headers)
        if coding is not None:
            sent["Content-Encoding"] = coding
        response = session.post(live.url + endpoint, data=compress(body, coding, really), headers=sent, timeout=60)
        assert_answered_properly(response, endpoint)
        log.assert_clean()

    check()


# Header lines a socket can send that no HTTP library would: any byte but CR and LF, NULs, very long
# values, bare names, many of them. A generated Connection header could keep the connection open.
raw_header_bytes = st.binary(max_size=120).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
raw_header_lines = st.lists(
    st.one_of(
        st.builds(lambda name, value: name + b": " + value, raw_header_bytes, raw_header_bytes),
        st.builds(lambda value: b"X-Long: " + value * 200, st.binary(min_size=1, max_size=60)),
        raw_header_bytes,
        st.sampled_from(
            [
                b"Transfer-Encoding: chunked",
                b"Content-Length: 3",
                b"Content-Length: x",
                b"Expect: 100-continue",
                b"Host: a",
            ]
        ),
    ),
    max_size=12,
).map(lambda lines: [line for line in lines if not line.lower().lstrip().startswith(b"connection")])


def raw_exchange(live: LiveLane, raw: bytes) -> bytes:
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(raw)
        answer = bytearray()
        while chunk := sock.recv(65536):
            answer += chunk
    return bytes(answer)


@PROPERTY
@given(
    endpoint=st.sampled_from(sorted(ENDPOINTS)),
    method=st.sampled_from([b"POST", b"GET", b"PUT", b"P\x00ST", b"POST POST"]),
    lines=raw_header_lines,
    many=st.integers(min_value=0, max_value=200),
)
def test_no_generated_header_gets_a_500_or_a_traceback(
    lane: tuple[LiveLane, SidecarLog], endpoint: str, method: bytes, lines: list[bytes], many: int
) -> None:
    live, log = lane
    valid, _ = ENDPOINTS[endpoint]
    body = json.dumps(valid).encode()
    head = [method + b" " + endpoint.encode() + b" HTTP/1.1", b"Host: sidecar", b"Connection: close", *lines]
    head += [b"X-Many-%d: 1" % n for n in range(many)]
    if not any(line.lower().startswith((b"content-length", b"transfer-encoding")) for line in lines):
        head.append(b"Content-Length: %d" % len(body))
    answer = raw_exchange(live, b"\r\n".join(head) + b"\r\n\r\n" + body)
    if answer:  # a connection may end without a word (a request line that is not HTTP at all, say)
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1."), answer[:200]
        status = int(status_line.split()[1])
        assert status != 500, answer[:300]
        if status == 400:
            assert b"application/json" in answer.split(b"\r\n\r\n", 1)[0].lower(), answer[:300]
    log.assert_clean()


# ----- the operator's webhook ------------------------------------------------------------------------

# Where in a review a hostile value goes: (path of keys, what it replaces).
REVIEW_PLACES = [
    ("apiVersion",),
    ("kind",),
    ("request",),
    ("request", "uid"),
    ("request", "namespace"),
    ("request", "operation"),
    ("request", "userInfo"),
    ("request", "resource"),
    ("request", "object"),
    ("request", "object", "metadata"),
    ("request", "object", "metadata", "labels"),
    ("request", "object", "metadata", "labels", "app"),
    ("request", "object", "metadata", "annotations"),
    ("request", "object", "metadata", "name"),
    ("request", "object", "spec"),
    ("request", "object", "spec", "containers"),
]


@st.composite
def hostile_reviews(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["places", "places", "places", "any_json", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=300))
    if shape == "any_json":
        return encode(draw(field_values), draw(st.sampled_from(["ascii", "utf8", "surrogatepass"])))
    review = json.loads(json.dumps(REVIEW))
    for place in draw(st.lists(st.sampled_from(REVIEW_PLACES), min_size=1, max_size=3)):
        node = review
        for key in place[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node[place[-1]] = draw(field_values)
    labels: Any = review
    for key in ("request", "object", "metadata", "labels"):
        labels = labels.get(key) if isinstance(labels, dict) else None
    if isinstance(labels, dict):
        labels.update(draw(st.dictionaries(hostile_text, hostile_text, max_size=2)))
    return encode(review, draw(st.sampled_from(["ascii", "utf8", "surrogatepass"])))


@pytest.fixture(scope="module")
def webhook() -> Iterator[InProcessWebhook]:
    with serving_webhook() as served:
        yield served


def assert_webhook_log_clean(webhook: InProcessWebhook, mark: int) -> None:
    bad = [r for r in webhook.records_since(mark) if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad[:3]]


@PROPERTY
@given(body=hostile_reviews(), headers=hostile_headers, coding=content_codings, really=st.booleans())
def test_no_generated_review_gets_a_500_or_a_traceback(
    webhook: InProcessWebhook, body: bytes, headers: dict[str, str], coding: str | None, really: bool
) -> None:
    # Known limit (RELIABILITY.md): kopf's own server waits for the end of a body that claims deflate
    # and is not compressed, until the client gives up; the webhook never sees it to refuse it.
    assume(not (coding == "deflate" and not really))
    mark = webhook.mark()
    sent = dict(headers)
    if coding is not None:
        sent["Content-Encoding"] = coding
    response = requests.post(webhook.url, data=compress(body, coding, really), headers=sent, timeout=30)
    where = f"answered {response.status_code}: {response.content[:300]!r}"
    assert response.status_code < 500, where
    if response.status_code == 200:
        assert response.json()["response"]["allowed"] is True, where  # the webhook never denies a pod
    assert_webhook_log_clean(webhook, mark)


@PROPERTY
@given(lines=raw_header_lines, many=st.integers(min_value=0, max_value=200))
def test_no_generated_header_gets_the_webhook_a_500_or_a_traceback(
    webhook: InProcessWebhook, lines: list[bytes], many: int
) -> None:
    mark = webhook.mark()
    body = json.dumps(REVIEW).encode()
    head = [b"POST /mutate-pods HTTP/1.1", b"Host: webhook", b"Connection: close", *lines]
    head += [b"X-Many-%d: 1" % n for n in range(many)]
    if not any(line.lower().startswith((b"content-length", b"transfer-encoding")) for line in lines):
        head.append(b"Content-Length: %d" % len(body))
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        answer = bytearray()
        while chunk := sock.recv(65536):
            answer += chunk
    if answer:
        status_line = bytes(answer).split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1."), bytes(answer[:200])
        assert int(status_line.split()[1]) != 500, bytes(answer[:300])
    assert_webhook_log_clean(webhook, mark)
