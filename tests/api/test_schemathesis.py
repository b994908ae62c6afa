"""The live sidecar against its OpenAPI description: generated requests, valid and invalid, from schemathesis.

The description is the committed sidecar/openapi.json, itself built from the wire models
(`python -P -m voicelane.sidecar.openapi --write`; test_openapi_generated holds the two equal).

Every operation is called with a bounded number of generated requests on a real sidecar in front
of the simulator: about 400 examples (30 per POST operation, positive and negative), plus
schemathesis' boundary values and undeclared methods, some 800 calls in 15 to 30 s. Each answer must be documented (status, content type,
headers, JSON body; NDJSON lines one by one), invalid input must be refused with a 4xx, valid
input accepted, and no request may hang. The only 5xx allowed are the documented upstream
conditions (502/503/504 with their codes), though with a healthy simulator none is expected.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

import voicelane.sidecar
from tests.api.live import live_lane

pytestmark = pytest.mark.timeout(240)

SPEC_PATH = Path(voicelane.sidecar.__file__).with_name("openapi.json")
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
REQUEST_TIMEOUT_S = 30.0

# Admission is not what this test is about: room enough that refusals are rare (still documented).
SIDECAR_SETTINGS = {
    "rate_limit": {"burst": 100_000, "sustained_per_s": 100_000},
    "scheduler": {"max_waiting": 1000, "max_running_per_priority": 4},
}

# 5xx the sidecar may answer when its upstreams or speech fail, each with its error code.
UPSTREAM_ERROR_CODES = {
    502: {"upstream_failed", "upstream_interrupted", "tts_failed", "segment_failed"},
    503: {"upstream_unavailable", "guardian_emergency"},
    504: {"upstream_timeout"},
}

# Budget per operation: the POST operations have the richest inputs; parameterless GETs need one call.
# A deeper search (say 500) is one environment variable away; CI runs the default.
MAX_EXAMPLES_POST = int(os.environ.get("VOICELANE_SCHEMATHESIS_EXAMPLES", "30"))
MAX_EXAMPLES_GET = 10

CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {"max-examples": MAX_EXAMPLES_GET},
        # Nothing here is secret, and `max_tokens` would otherwise print as "[Filtered]".
        "output": {"sanitization": {"enabled": False}},
        "checks": {
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", 502, 503, 504]},
            # Valid input may still be refused for capacity (429/503) or by an upstream (502/504),
            # and a follow-up that does not exist is a 404 however valid its id.
            "positive_data_acceptance": {"expected-statuses": ["2xx", 404, 409, 429, 502, 503, 504]},
            "negative_data_rejection": {"expected-statuses": [400, 404, 405, 408, 413, 429, 503]},
        },
        "operations": [
            {"include-method": "POST", "generation": {"max-examples": MAX_EXAMPLES_POST}},
            {
                # The messages' combined length and the whole body have limits no JSON schema can
                # state (413), so valid-looking conversations may exceed them.
                "include-tag": "transparent",
                # A generated model name is not the lane's: the call passes to the model server, whose
                # own refusals of what it cannot read (400, 404) come back as they are.
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2xx", 400, 404, 413, 429, 502, 503, 504]}
                },
            },
        ],
    }
)

schema = schemathesis.openapi.from_path(SPEC_PATH, config=CONFIG)

# (operation, status) of every generated call, to show that the run exercised the API.
ANSWERS: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module")
def sidecar_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("schemathesis-logs")
    with live_lane(logs, settings=SIDECAR_SETTINGS) as lane:
        yield lane.url
        assert lane.sidecar.alive(), lane.sidecar.log()[-4000:]
        assert "Traceback" not in lane.sidecar.log(), lane.sidecar.log()[-4000:]
    print(f"\n{sum(ANSWERS.values())} generated calls:", dict(sorted(ANSWERS.items())))
    if ANSWERS:  # the conformance test ran (not only a selection of this module)
        # Refusals alone would prove little: every operation that needs no existing resource served some.
        served = {label for (label, status), _ in ANSWERS.items() if 200 <= status < 300}
        expected = {f"{m.upper()} {p}" for p, item in SPEC["paths"].items() for m in item if "{" not in p}
        assert expected <= served, f"never answered with success: {sorted(expected - served)}"


# ----- checks beyond schemathesis' own -------------------------------------------------------------


def _header(response: schemathesis.Response, name: str) -> str | None:
    values = response.headers.get(name.lower())
    return values[0] if values else None


def _documented_schema(case: schemathesis.Case, status: int, media_type: str) -> dict[str, Any] | None:
    operation = SPEC["paths"][case.operation.path][case.method.lower()]
    documented = operation["responses"].get(str(status))
    if documented is None:
        return None
    if "$ref" in documented:
        documented = SPEC["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    return documented.get("content", {}).get(media_type, {}).get("schema")


def _validator(item_schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    # References point into the document's components: carry them along with the schema.
    return jsonschema.Draft202012Validator({**item_schema, "components": SPEC["components"]})


def ndjson_lines_conform(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """NDJSON bodies: every line is a documented JSON object, and the stream ends with a final line."""
    content_type = (_header(response, "Content-Type") or "").split(";")[0].strip()
    if content_type != "application/x-ndjson":
        return
    item_schema = _documented_schema(case, response.status_code, content_type)
    assert item_schema is not None, f"{content_type} is not documented for {response.status_code}"
    validator = _validator(item_schema)
    lines = [line for line in response.content.decode("utf-8").split("\n") if line]
    assert lines, "an NDJSON answer without any line"
    for number, line in enumerate(lines, 1):
        item = json.loads(line)
        errors = sorted(validator.iter_errors(item), key=str)
        assert not errors, f"line {number} {line!r} does not match its schema: {errors[0].message}"
    final = json.loads(lines[-1])
    assert final.get("done") is True or "error" in final, f"the stream ended without a final line: {lines[-1]!r}"


def server_errors_are_documented(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """A 5xx is only ever a documented upstream condition, named by its code."""
    status = response.status_code
    if status < 500:
        return
    assert status in UPSTREAM_ERROR_CODES, f"undocumented server error {status}: {response.content[:500]!r}"
    if case.operation.path == "/readyz":
        return
    body = json.loads(response.content)
    error = body["error"]
    code = error["code"] if isinstance(error, dict) else _header(response, "X-Voicelane-Error")
    assert code in UPSTREAM_ERROR_CODES[status], f"{status} with unexpected code {code!r}"


# ----- tests ---------------------------------------------------------------------------------------------


def test_served_document_is_the_repository_file(sidecar_url: str) -> None:
    response = requests.get(sidecar_url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.content == SPEC_PATH.read_bytes()


@schema.parametrize()
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_sidecar_conforms_to_its_openapi_description(case: schemathesis.Case, sidecar_url: str) -> None:
    response = case.call_and_validate(
        base_url=sidecar_url,
        timeout=REQUEST_TIMEOUT_S,
        additional_checks=[ndjson_lines_conform, server_errors_are_documented],
    )
    ANSWERS[(case.operation.label, response.status_code)] += 1
