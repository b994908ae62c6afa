"""The injection webhook under input that used to end in a 500 or a traceback.

Its body is held to the sidecar's rules for JSON: a body that is not what its Content-Encoding
says, JSON nested past the parser's recursion, and strings UTF-8 cannot carry (a lone surrogate
escape) are each refused with 400, the webhook's JSON error naming the field or the reason. A
request aiohttp's HTTP parser refuses is logged in one info line, without a traceback.
"""

from __future__ import annotations

import copy
import gzip
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.security.webhook_server import REVIEW, InProcessWebhook, serving_webhook

pytestmark = pytest.mark.timeout(60)

LONE = "\ud800"


@pytest.fixture(scope="module")
def webhook() -> Iterator[InProcessWebhook]:
    with serving_webhook() as served:
        yield served


def post(webhook: InProcessWebhook, body: bytes, **headers: str) -> requests.Response:
    return requests.post(webhook.url, data=body, headers={"Content-Type": "application/json", **headers}, timeout=10)


def problems(response: requests.Response) -> list[str]:
    assert response.status_code == 400, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "not an AdmissionReview request"
    found: list[str] = body["problems"]
    return found


def no_traceback(webhook: InProcessWebhook, mark: int) -> list[logging.LogRecord]:
    time.sleep(0.2)
    records = webhook.records_since(mark)
    assert not [r for r in records if r.exc_info or r.levelno >= logging.ERROR], [r.getMessage() for r in records]
    return records


def test_a_valid_review_is_answered(webhook: InProcessWebhook) -> None:
    response = post(webhook, json.dumps(REVIEW).encode())
    assert response.status_code == 200, response.text
    assert response.json()["response"]["allowed"] is True


def with_label(key: str, value: str) -> dict[str, Any]:
    review = copy.deepcopy(REVIEW)
    review["request"]["object"]["metadata"]["labels"][key] = value
    return review


@pytest.mark.parametrize(
    ("review", "field"),
    [
        (with_label("app", LONE), "request.object.metadata.labels.app"),
        (with_label(LONE, "web"), "request.object.metadata.labels.\\ud800"),
        ({**REVIEW, "request": {**REVIEW["request"], "uid": f"uid-{LONE}"}}, "request.uid"),
    ],
    ids=["label_value", "label_key", "uid"],
)
def test_a_lone_surrogate_is_refused_naming_the_field(
    webhook: InProcessWebhook, review: dict[str, Any], field: str
) -> None:
    mark = webhook.mark()
    found = problems(post(webhook, json.dumps(review).encode()))
    assert len(found) == 1
    assert f"'{field}'" in found[0]
    assert "lone surrogate" in found[0]
    no_traceback(webhook, mark)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_is_not_compressed_as_it_says_is_refused(webhook: InProcessWebhook, encoding: str) -> None:
    mark = webhook.mark()
    found = problems(post(webhook, json.dumps(REVIEW).encode(), **{"Content-Encoding": encoding}))
    assert encoding in found[0]
    no_traceback(webhook, mark)
    compressed = post(webhook, gzip.compress(json.dumps(REVIEW).encode()), **{"Content-Encoding": "gzip"})
    assert compressed.status_code == 200


def test_json_nested_past_the_parsers_recursion_is_refused(webhook: InProcessWebhook) -> None:
    mark = webhook.mark()
    deep = json.dumps(REVIEW)[:-1] + ', "nested": ' + "[" * 20_000 + "]" * 20_000 + "}"
    found = problems(post(webhook, deep.encode()))
    assert "nests deeper than 128 levels" in found[0]
    no_traceback(webhook, mark)


def test_a_request_the_http_parser_refuses_is_one_info_line(webhook: InProcessWebhook) -> None:
    mark = webhook.mark()
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=10) as sock:
        sock.sendall(
            b"POST /mutate-pods HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: 1\r\n" % i for i in range(200))
            + b"Content-Length: 2\r\n\r\n{}"
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.0 400")
    records = no_traceback(webhook, mark)
    refused = [r for r in records if "refused by the HTTP parser" in r.getMessage()]
    assert len(refused) == 1
    assert refused[0].levelno == logging.INFO
    assert "Too many headers" in refused[0].getMessage()
    assert post(webhook, json.dumps(REVIEW).encode()).status_code == 200
