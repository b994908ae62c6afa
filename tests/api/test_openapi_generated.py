"""The committed OpenAPI document is the one built from the wire models, and the document, the models and the
edge's hand-written checks accept and refuse the same request bodies.

The agreement tests validate against the committed document with jsonschema-rs, an implementation apart from
pydantic whose regexes follow JSON Schema's (ECMA-262: `$` is the end of the text, not before a final newline).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import voicelane.sidecar
from voicelane.sidecar import openapi
from voicelane.sidecar.config import LimitsConfig
from voicelane.sidecar.edge import REQUEST_ID, parse_text_request
from voicelane.sidecar.errors import ApiError
from voicelane.sidecar.transparent import _check_options

SPEC_PATH = Path(voicelane.sidecar.__file__).with_name("openapi.json")
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))


def component_validator(name: str) -> Any:
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}
    )


# ----- generated, and in step --------------------------------------------------------------------------


def test_the_committed_document_is_the_generated_one() -> None:
    assert SPEC_PATH.read_text(encoding="utf-8") == openapi.document_text(), (
        "sidecar/openapi.json is stale: run `python -P -m voicelane.sidecar.openapi --write`"
    )
    assert openapi.main(["--check"]) == 0


def test_check_names_a_stale_copy_and_write_refreshes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "openapi.json"
    stale = json.loads(openapi.document_text())
    stale["paths"]["/v1/text"]["post"]["summary"] = "edited by hand"
    copy.write_text(json.dumps(stale, indent=2), encoding="utf-8")

    assert openapi.main(["--check", "--path", str(copy)]) == 1
    assert f"stale: {copy}" in capsys.readouterr().err

    assert openapi.main(["--write", "--path", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == openapi.document_text()
    assert openapi.main(["--check", "--path", str(copy)]) == 0


def test_check_of_a_missing_copy_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert openapi.main(["--check", "--path", str(tmp_path / "absent.json")]) == 2
    assert "absent.json" in capsys.readouterr().err


def test_every_schema_the_document_refers_to_is_defined() -> None:
    text = json.dumps(SPEC)
    referred = {ref.split('"')[0] for ref in text.split('"$ref": "#/components/schemas/')[1:]}
    assert referred <= set(SPEC["components"]["schemas"])
    assert not [name for name, schema in SPEC["components"]["schemas"].items() if "title" in schema]


# ----- /v1/text and /v1/speak bodies: the document against the edge ----------------------------------

# Values near each rule's edges, beside arbitrary JSON.
EDGE_STRINGS = [
    "",
    " ",
    "\u3000",
    "\u0085",
    "\x1c",
    "\u200b",  # zero-width space: not whitespace to str.strip(), so a real character
    " sv ",
    "sv",
    "x" * 16,
    "x" * 17,
    "v" * 64,
    "v" * 65,
    "id-1.2:3_a",
    "a" * 128,
    "a" * 129,
    "id\n",
    "bad id",
    "chat",
    "email_segment",
    "CHAT",
    "wav",
    "pcm",
    "mp3",
    "x" * LimitsConfig().max_text_chars,
    "x" * (LimitsConfig().max_text_chars + 1),
]
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(EDGE_STRINGS),
    st.text(max_size=12),
    st.lists(st.sampled_from(["chat", "a"]), max_size=2),
    st.dictionaries(st.sampled_from(["a", "text"]), st.integers(), max_size=1),
)
CLASSES = st.sampled_from(["chat", "notification", "email", "email_tldr", "email_segment"])
ANY_TEXT_REQUEST = st.fixed_dictionaries(
    {},
    optional={
        "text": st.one_of(st.text(min_size=1, max_size=30), JSON_VALUES),
        "source": st.one_of(CLASSES, JSON_VALUES),
        "lang": JSON_VALUES,
        "target_lang": JSON_VALUES,
        "request_id": JSON_VALUES,
        "stream": JSON_VALUES,
        "voice": JSON_VALUES,
        "format": JSON_VALUES,
        "unknown": JSON_VALUES,
    },
)
FIELDS = ["text", "source", "lang", "target_lang", "request_id", "stream", "voice", "format"]
EDGE_VALUES = [*EDGE_STRINGS, None, True, False, 0, 1.5, [], {}]
TEXT_REQUESTS = ANY_TEXT_REQUEST


def edge_refusal(payload: dict[str, Any]) -> ApiError | None:
    try:
        parse_text_request(payload, LimitsConfig(), default_lang="sv")
    except ApiError as exc:
        return exc
    return None


def edge_accepts(payload: dict[str, Any]) -> bool:
    refusal = edge_refusal(payload)
    # A refusal is the client's error, never the server's.
    assert refusal is None or refusal.status in (400, 413), refusal.body()
    return refusal is None


@settings(max_examples=600)
@given(payload=TEXT_REQUESTS)
def test_the_document_and_the_edge_accept_the_same_text_requests(payload: dict[str, Any]) -> None:
    assert component_validator("TextRequest").is_valid(payload) == edge_accepts(payload)


@pytest.mark.parametrize("field", FIELDS)
def test_the_document_and_the_edge_agree_on_each_field_at_its_edges(field: str) -> None:
    # A valid body with one field set to each value near the rules' edges: where a bound moved, this finds it.
    validator = component_validator("TextRequest")
    disagree = [
        value
        for value in EDGE_VALUES
        if validator.is_valid(payload := {"text": "Hej", "source": "chat", field: value}) != edge_accepts(payload)
    ]
    assert disagree == []


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        ({"source": "chat"}, "missing_text", "text"),
        ({"text": "   ", "source": "chat"}, "empty_text", "text"),
        ({"text": 3, "source": "chat"}, "invalid_text", "text"),
        ({"text": "Hej", "source": None}, "missing_source", "source"),
        ({"text": "Hej", "source": "sms"}, "unknown_source", "source"),
        ({"text": "Hej", "source": "chat", "lang": " "}, "invalid_field", "lang"),
        ({"text": "Hej", "source": "chat", "target_lang": "x" * 17}, "invalid_field", "target_lang"),
        ({"text": "Hej", "source": "chat", "request_id": "id\n"}, "invalid_field", "request_id"),
        ({"text": "Hej", "source": "chat", "stream": "true"}, "invalid_field", "stream"),
        ({"text": "Hej", "source": "chat", "voice": 7}, "invalid_field", "voice"),
        ({"text": "Hej", "source": "chat", "format": "mp3"}, "invalid_field", "format"),
        # The first field in the body's order is the one refused.
        ({"text": "Hej", "source": "sms", "stream": "yes"}, "unknown_source", "source"),
        ({"text": "x" * 4097, "source": "sms"}, "text_too_long", "text"),
    ],
)
def test_each_refusal_keeps_its_code_and_names_its_field(payload: dict[str, Any], code: str, field: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_text_request(payload, LimitsConfig(), default_lang="sv")
    assert refused.value.code == code
    assert f"'{field}'" in refused.value.message or f"{field} " in refused.value.message
    assert not component_validator("TextRequest").is_valid(payload)


def test_the_wire_model_calls_blank_what_the_server_trims() -> None:
    # pydantic checks the pattern with its own regex engine; around every whitespace character it must
    # agree with str.strip(), as the document's pattern does (test_openapi_document checks that one).
    spaces = [code for code in range(sys.maxunicode + 1) if chr(code).isspace()]
    near = sorted({near for code in spaces for near in (code - 1, code, code + 1)})
    disagree = [
        hex(code)
        for code in near
        if edge_accepts({"text": "Hej", "source": "chat", "lang": chr(code)}) == chr(code).isspace()
    ]
    assert disagree == []


def test_an_accepted_request_reads_as_documented() -> None:
    parsed = parse_text_request(
        {"text": "Hej", "source": "email", "lang": " en ", "voice": " sv+f3 ", "format": "pcm", "extra": [1]},
        LimitsConfig(),
        default_lang="sv",
    )
    assert (parsed.lang, parsed.target_lang, parsed.voice, parsed.audio_format) == ("en", "en", "sv+f3", "pcm")
    assert REQUEST_ID.fullmatch(parsed.request_id)
    assert parsed.stream is False


def test_a_configured_text_limit_beyond_the_documented_default_is_the_one_enforced() -> None:
    # The document states the default limit; a deployment that raises it accepts the longer text.
    long_text = "x" * (LimitsConfig().max_text_chars + 10)
    parsed = parse_text_request(
        {"text": long_text, "source": "chat"}, LimitsConfig(max_text_chars=10_000), default_lang="sv"
    )
    assert parsed.text == long_text


# ----- transparent options: the document against the hand-written checks ------------------------------

OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "num_predict": st.one_of(JSON_VALUES, st.integers(-3, 10_000), st.sampled_from([1.0, 2.5, 64.0])),
        "temperature": JSON_VALUES,
        "stop": st.one_of(JSON_VALUES, st.lists(st.text(max_size=3), max_size=3)),
        "seed": JSON_VALUES,  # any other option passes on to the model server untouched
    },
)


def options_refusal(options: dict[str, Any]) -> ApiError | None:
    try:
        _check_options({key: options[key] for key in ("num_predict", "temperature", "stop") if key in options})
    except ApiError as exc:
        return exc
    return None


def options_accepted(options: dict[str, Any]) -> bool:
    refusal = options_refusal(options)
    assert refusal is None or (refusal.status, refusal.code) == (400, "invalid_field"), refusal.body()
    return refusal is None


@settings(max_examples=400)
@given(options=OPTIONS)
def test_the_document_and_the_transparent_checks_accept_the_same_options(options: dict[str, Any]) -> None:
    assert component_validator("OllamaOptions").is_valid(options) == options_accepted(options)
