"""Build the sidecar's OpenAPI 3.1 document from its wire models, and keep the committed copy in step.

The schemas come from `voicelane.sidecar.wire_models` (pydantic's JSON Schema, one component per
model); what pydantic cannot say (paths, methods, status codes, media types, which headers go with which
answer) is the table of operations below. The server serves the committed sidecar/openapi.json as it is.

    python -P -m voicelane.sidecar.openapi --write   # refresh sidecar/openapi.json
    python -P -m voicelane.sidecar.openapi --check   # exit 1 if it is stale
    python -P -m voicelane.sidecar.openapi           # print the document

The runner is written here rather than taken from `voicelane.delivery`: runtime packages may not
import the code that builds the delivered files (see .importlinter).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from voicelane.sidecar import wire_models as wire
from voicelane.sidecar.config import LimitsConfig
from voicelane.sidecar.edge import MAX_JSON_DEPTH

DOCUMENT_PATH = Path(__file__).with_name("openapi.json")
REF_TEMPLATE = "#/components/schemas/{model}"
VERSION = "0.1.0"

Schema = dict[str, Any]


class DocumentSchema(GenerateJsonSchema):
    """pydantic's JSON Schema as the document states it: no generated titles, and `"type": [T, "null"]`
    for a nullable plain value rather than an `anyOf` with null."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        json_schema = super().model_schema(schema)
        json_schema.pop("title", None)
        if "description" in json_schema:
            # A docstring's line breaks are the source's wrapping, not the text's.
            json_schema["description"] = " ".join(json_schema["description"].split())
        return json_schema

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        if isinstance(inner.get("type"), str) and "$ref" not in inner and "anyOf" not in inner:
            return {**inner, "type": [inner["type"], "null"]}
        return super().nullable_schema(schema)


def _ref(model: type[BaseModel] | str) -> Schema:
    name = model if isinstance(model, str) else model.__name__
    return {"$ref": REF_TEMPLATE.format(model=name)}


def _field_schemas(model: type[BaseModel]) -> tuple[dict[str, Schema], set[str]]:
    """Each field's schema by its wire name (its alias), and the names that are required."""
    schema = model.model_json_schema(by_alias=True, ref_template=REF_TEMPLATE, schema_generator=DocumentSchema)
    return schema.get("properties", {}), set(schema.get("required", []))


def _never_null(schema: Schema) -> Schema:
    # Headers and parameters are left out when absent; they are never null.
    schema = dict(schema)
    wire.never_null(schema)
    return schema


def headers(model: type[BaseModel]) -> dict[str, Schema]:
    """A header model as OpenAPI header objects."""
    properties, required = _field_schemas(model)
    objects = {}
    for name, schema in properties.items():
        schema = _never_null(schema)
        description = schema.pop("description", "")
        objects[name] = {"description": description, "required": name in required, "schema": schema}
    return objects


def parameters(model: type[BaseModel], location: str) -> list[Schema]:
    """A model of headers, path or query values as OpenAPI parameter objects."""
    properties, required = _field_schemas(model)
    result = []
    for name, schema in properties.items():
        schema = _never_null(schema)
        parameter: Schema = {"name": name, "in": location, "required": location == "path" or name in required}
        if "description" in schema:
            parameter["description"] = schema.pop("description")
        parameter["schema"] = schema
        result.append(parameter)
    return result


# ----- answers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One documented answer: what it means, its body by media type, and its headers."""

    description: str
    content: dict[str, Schema] = field(default_factory=dict)
    headers: tuple[type[BaseModel], ...] = ()

    def build(self) -> Schema:
        response: Schema = {"description": self.description}
        merged: dict[str, Schema] = {}
        for model in self.headers:
            merged.update(headers(model))
        if merged:
            response["headers"] = merged
        if self.content:
            response["content"] = {media: {"schema": schema} for media, schema in self.content.items()}
        return response


def json_body(model: type[BaseModel] | str) -> dict[str, Schema]:
    return {"application/json": _ref(model)}


BINARY = {"type": "string", "format": "binary"}
AUDIO = {"audio/wav": BINARY, "application/octet-stream": BINARY}
EDGE_400 = (
    "A string or key holding a lone surrogate escape such as `\\ud800` (`invalid_unicode`, {field}), JSON nested "
    f"deeper than {MAX_JSON_DEPTH} levels (`invalid_json`), a body that does not decode as its `Content-Encoding` "
    "says or a coding other than gzip and deflate (`invalid_content_encoding`), a body whose framing breaks "
    "(`invalid_body`), a request the HTTP parser refuses (`invalid_http`)."
)
LANE_400 = (
    "Malformed JSON, invalid UTF-8, a missing, empty or non-string text, a missing or unknown source "
    "(`details.valid` lists the classes), or another invalid field."
)
TRANSPARENT_400 = (
    f"{LANE_400} Also an unknown `X-Voicelane-Source`, an `X-Request-Id` that is not 1 to 128 letters, digits or "
    f"`._:-`. A missing `model`. {EDGE_400.format(field='the field named')}"
)
PASSTHROUGH_400 = (
    "Malformed JSON, invalid UTF-8, or no `model` (`invalid_json`, `invalid_utf8`, `invalid_field`); the server's "
    f"own 400 for a body it refuses. {EDGE_400.format(field='the field named')}"
)
BODY_TIMEOUT = "The body was not received within `limits.body_read_timeout_s` (`body_timeout`)."
TOO_LARGE = (
    "The text is over `limits.max_text_chars` (`text_too_long`) or the body over `limits.max_body_bytes` "
    "(`body_too_large`, refused before the body is read whole)."
)
BODY_TOO_LARGE = "The body is over `limits.max_body_bytes` (`body_too_large`)."
ADMISSION_REFUSED = "Admission refused: `rate_limited` (token bucket) or `queue_full` (too many requests waiting)."
BLOCKED = (
    "The guardian blocks model work under sustained pressure (`guardian_emergency`), or no tier is available "
    "(`upstream_unavailable`)."
)
MODEL_TIMEOUT = "The model did not answer in time (`upstream_timeout`)."
SERVER_MISSED = "The tier's server did not answer (`upstream_failed`)."
SERVER_TIMEOUT = "The tier's server did not answer in time (`upstream_timeout`)."
NOT_SUPPORTED = "No tier speaks this API (`not_supported`)."
PASSED_THROUGH = "The model server's answer, untouched."

# The refusals of the sidecar's own endpoints, shared as components/responses.
LANE_REFUSALS: dict[str, Answer] = {
    "BadRequest": Answer(
        f"{LANE_400} {EDGE_400.format(field='`details.field` names the field')}", json_body(wire.Error)
    ),
    "BodyTimeout": Answer(BODY_TIMEOUT, json_body(wire.Error)),
    "TooLarge": Answer(TOO_LARGE, json_body(wire.Error)),
    "MethodNotAllowed": Answer("The path exists, the method does not.", json_body(wire.Error), (wire.AllowHeader,)),
    "NotFound": Answer("Unknown path or resource.", json_body(wire.Error)),
    "TooManyRequests": Answer(ADMISSION_REFUSED, json_body(wire.Error), (wire.LaneRefusalHeaders,)),
    "BadGateway": Answer(
        "The model failed on every tier (`upstream_failed`), broke off after its first token "
        "(`upstream_interrupted`), or speech synthesis failed (`tts_failed`).",
        json_body(wire.Error),
        (wire.LaneRefusalHeaders,),
    ),
    "ServiceUnavailable": Answer(BLOCKED, json_body(wire.Error), (wire.LaneRefusalHeaders,)),
    "GatewayTimeout": Answer(MODEL_TIMEOUT, json_body(wire.Error), (wire.LaneRefusalHeaders,)),
}
LANE_REFUSAL_STATUSES = {
    "400": "BadRequest",
    "405": "MethodNotAllowed",
    "408": "BodyTimeout",
    "413": "TooLarge",
    "429": "TooManyRequests",
    "502": "BadGateway",
    "503": "ServiceUnavailable",
    "504": "GatewayTimeout",
}


def _component_response(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


METHOD_NOT_ALLOWED = _component_response("MethodNotAllowed")


def lane_refusals() -> dict[str, Schema]:
    return {status: _component_response(name) for status, name in LANE_REFUSAL_STATUSES.items()}


def transparent_call_refusals(error: type[BaseModel], *, code_header: bool) -> dict[str, Answer]:
    """The refusals of a chat or generate call in an API's own error format.

    Ollama's error body has no code, so the lane's refusals carry it in `X-Voicelane-Error`; OpenAI's has one.
    """
    code: tuple[type[BaseModel], ...] = (wire.LaneErrorCodeHeader,) if code_header else ()
    retry: tuple[type[BaseModel], ...] = (wire.LaneErrorRetryHeaders,) if code_header else (wire.RetryHeaders,)
    body = json_body(error)
    return {
        "400": Answer(TRANSPARENT_400, body, code),
        "404": Answer(
            "The model is not the lane's and its server does not have it: the server's own answer (Ollama: "
            '`{"error": "model \'x\' not found"}`).',
            body,
        ),
        "408": Answer(BODY_TIMEOUT, body, code),
        "413": Answer(TOO_LARGE, body, code),
        "429": Answer(ADMISSION_REFUSED, body, retry),
        "501": Answer(
            "A call that must be passed on (e.g. with `format` or `tools`) to a tier that speaks the other API "
            "(`not_supported`).",
            body,
            (wire.LaneErrorCodeHeader,),
        ),
        "502": Answer("The model failed on every tier (`upstream_failed`).", body, retry),
        "503": Answer(BLOCKED, body, retry),
        "504": Answer(MODEL_TIMEOUT, body, retry),
    }


def passthrough_refusals(error: type[BaseModel]) -> dict[str, Answer]:
    """The refusals of a call passed untouched to a model server: the lane's own, and the server's."""
    code = (wire.LaneErrorCodeHeader,)
    retry = (wire.LaneErrorRetryHeaders,)
    body = json_body(error)
    return {
        "400": Answer(PASSTHROUGH_400, body, code),
        "404": Answer("The server does not have the model: its own answer.", body),
        "408": Answer(BODY_TIMEOUT, body, code),
        "413": Answer(BODY_TOO_LARGE, body, code),
        "429": Answer("The server is busy: its own answer, passed through.", body),
        "501": Answer(NOT_SUPPORTED, body, code),
        "502": Answer(SERVER_MISSED, body, retry),
        "503": Answer("The server is busy (Ollama: its queue is full): its own answer, passed through.", body),
        "504": Answer(SERVER_TIMEOUT, body, retry),
    }


# ----- operations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    operation_id: str
    tag: str
    summary: str
    answers: dict[str, Answer | Schema]
    description: str | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    header_parameters: tuple[str, ...] = ()

    def build(self) -> Schema:
        operation: Schema = {"operationId": self.operation_id, "tags": [self.tag], "summary": self.summary}
        if self.description:
            operation["description"] = self.description
        listed: list[Schema] = [{"$ref": f"#/components/parameters/{name}"} for name in self.header_parameters]
        if self.query is not None:
            listed += parameters(self.query, "query")
        if listed:
            operation["parameters"] = listed
        if self.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(self.body)}}}
        answers = {"405": METHOD_NOT_ALLOWED, **self.answers}
        operation["responses"] = {
            status: answer.build() if isinstance(answer, Answer) else answer
            for status, answer in sorted(answers.items())
        }
        return operation


LANE_PARAMETERS = ("SourceHeader", "RequestIdHeader")
TRANSPARENT_ANSWER = (wire.TransparentAnswerHeaders,)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "/v1/text",
        "post",
        "text",
        "lane",
        "Make a text speakable (translate/rewrite through the model)",
        description="Admitted through cache, single-flight, guardian (rate limit, pressure) and the priority "
        'scheduler, then routed to the fast or deep tier with failover. With `"stream": true` the answer is '
        'NDJSON: one `{"text"}` line per token, then a final line with `"done": true`.',
        body=wire.TextRequest,
        answers={
            "200": Answer(
                "The answer; NDJSON when `stream` is true.",
                {"application/json": _ref(wire.TextResponse), "application/x-ndjson": _ref(wire.TextStreamLine)},
                (wire.RequestIdHeader,),
            ),
            **lane_refusals(),
        },
    ),
    Operation(
        "/v1/speak",
        "post",
        "speak",
        "speech",
        "Speak a text: streamed audio, first segment first",
        description="The model's tokens are cut into sentences and each goes to speech at once, so the first "
        "audio comes long before the rewrite ends. Chat, notifications and emails always speak: on a model "
        "failure or a missed deadline the original text is spoken (`X-Voicelane-Fallback`). For an email the "
        "TL;DR is spoken and its body is produced in the background as follow-ups. Once audio flows the status "
        "cannot change: a failure then ends the connection without the final chunk.",
        body=wire.TextRequest,
        answers={
            "200": Answer(
                "16-bit mono PCM, chunked as it is synthesized: WAV with a streaming header (`format` wav) or raw "
                "samples (`format` pcm).",
                AUDIO,
                (wire.SpeechHeaders,),
            ),
            **lane_refusals(),
        },
    ),
    Operation(
        "/v1/followups/{request_id}",
        "get",
        "followups",
        "speech",
        "The follow-up segments of a spoken email",
        answers={
            "200": Answer("The segments and their state.", json_body(wire.Followups)),
            "404": Answer("No email with this request id (`unknown_email`), or it was evicted.", json_body(wire.Error)),
        },
    ),
    Operation(
        "/v1/followups/{request_id}/{index}",
        "get",
        "followupAudio",
        "speech",
        "The audio of one follow-up segment",
        query=wire.FollowupAudioQuery,
        answers={
            "200": Answer(
                "The segment's complete audio (16-bit mono PCM, as WAV or raw).", AUDIO, (wire.FollowupAudioHeaders,)
            ),
            "400": Answer(
                "The index is not an integer, or `format` is not wav or pcm (`invalid_field`).", json_body(wire.Error)
            ),
            "404": Answer("No such email or segment (`unknown_segment`).", json_body(wire.Error)),
            "409": Answer(
                "The segment is not ready yet (`segment_pending`).", json_body(wire.Error), (wire.RetryHeaders,)
            ),
            "410": Answer(
                "The segment's audio was let go to keep follow-up audio within its memory bound "
                "(`segment_evicted`); its email's newer segments may still be kept.",
                json_body(wire.Error),
            ),
            "502": Answer("The segment could not be produced (`segment_failed`).", json_body(wire.Error)),
        },
    ),
    Operation(
        "/v1/stats",
        "get",
        "stats",
        "observation",
        "Queue, upstreams and circuits, guardian, cache, single-flight and TTFA statistics",
        query=wire.StatsQuery,
        answers={
            "200": Answer("The sidecar's state.", json_body(wire.Stats)),
            "400": Answer(
                f"`minutes` is not a number in (0, {wire.MAX_STATS_MINUTES}] (`invalid_field`).", json_body(wire.Error)
            ),
        },
    ),
    Operation(
        "/healthz",
        "get",
        "healthz",
        "observation",
        "Liveness",
        answers={"200": Answer("The process serves requests.", json_body(wire.Health))},
    ),
    Operation(
        "/readyz",
        "get",
        "readyz",
        "observation",
        "Readiness: at least one tier healthy, or passthrough",
        answers={
            "200": Answer("Ready.", json_body(wire.Readiness)),
            "503": Answer("Not ready: no tier healthy.", json_body(wire.Readiness)),
        },
    ),
    Operation(
        "/metrics",
        "get",
        "metrics",
        "observation",
        "Prometheus metrics (voicelane_ prefix, base units)",
        description="Served here unless `server.metrics_listen` names another address. Labels carry classes, "
        "tiers, priorities and reasons only, never request text.",
        answers={"200": Answer("Prometheus text exposition format 0.0.4.", {"text/plain": {"type": "string"}})},
    ),
    Operation(
        "/openapi.json",
        "get",
        "openapi",
        "observation",
        "This document",
        answers={"200": Answer("The OpenAPI description of the sidecar.", {"application/json": {"type": "object"}})},
    ),
    Operation(
        "/api/chat",
        "post",
        "ollamaChat",
        "transparent",
        "Ollama-compatible chat, through the lane",
        description='Ollama\'s API: NDJSON stream by default, one JSON answer with `"stream": false`. A failure '
        'after the first line ends the stream with an `{"error"}` line, as Ollama does.',
        body=wire.OllamaChatRequest,
        header_parameters=LANE_PARAMETERS,
        answers={
            "200": Answer(
                "The answer, or its NDJSON stream.",
                {
                    "application/json": _ref(wire.OllamaChatResponse),
                    "application/x-ndjson": _ref(wire.OllamaChatLine),
                },
                TRANSPARENT_ANSWER,
            ),
            **transparent_call_refusals(wire.OllamaError, code_header=True),
        },
    ),
    Operation(
        "/api/generate",
        "post",
        "ollamaGenerate",
        "transparent",
        "Ollama-compatible generate, through the lane",
        body=wire.OllamaGenerateRequest,
        header_parameters=LANE_PARAMETERS,
        answers={
            "200": Answer(
                "The answer, or its NDJSON stream.",
                {
                    "application/json": _ref(wire.OllamaGenerateResponse),
                    "application/x-ndjson": _ref(wire.OllamaGenerateLine),
                },
                TRANSPARENT_ANSWER,
            ),
            **transparent_call_refusals(wire.OllamaError, code_header=True),
        },
    ),
    Operation(
        "/api/version",
        "get",
        "ollamaVersion",
        "transparent",
        "The version of the deep tier's Ollama, as it answers",
        answers={"200": Answer("Version.", json_body(wire.OllamaVersion))},
    ),
    Operation(
        "/api/tags",
        "get",
        "ollamaTags",
        "transparent",
        "Ollama's model list from the tiers' servers (one server's as it is; two servers' together)",
        answers={"200": Answer("Models.", json_body(wire.OllamaTags))},
    ),
    Operation(
        "/api/ps",
        "get",
        "ollamaPs",
        "transparent",
        "Ollama's loaded models from the tiers' servers (one server's as it is; two servers' together)",
        answers={
            "200": Answer(PASSED_THROUGH, json_body(wire.OllamaPs)),
            **{
                status: answer
                for status, answer in passthrough_refusals(wire.OllamaError).items()
                if status in ("501", "502", "504")
            },
        },
    ),
    Operation(
        "/api/show",
        "post",
        "ollamaShow",
        "transparent",
        "Ollama's model details, from the server of the tier serving the model",
        body=wire.OllamaModelRequest,
        answers={
            "200": Answer(PASSED_THROUGH, json_body(wire.PassedThrough)),
            **passthrough_refusals(wire.OllamaError),
        },
    ),
    Operation(
        "/api/embed",
        "post",
        "ollamaEmbed",
        "transparent",
        "Ollama embeddings, passed through untouched (no voice policy applies)",
        body=wire.OllamaEmbedRequest,
        answers={
            "200": Answer(PASSED_THROUGH, json_body(wire.OllamaEmbedResponse)),
            **passthrough_refusals(wire.OllamaError),
        },
    ),
    Operation(
        "/v1/chat/completions",
        "post",
        "openaiChat",
        "transparent",
        "OpenAI-compatible chat completions, through the lane",
        description='One JSON completion, or server-sent events with `"stream": true` ending in `[DONE]`. A '
        "failure after the first event sends an error event and no `[DONE]`.",
        body=wire.OpenAIChatRequest,
        header_parameters=LANE_PARAMETERS,
        answers={
            "200": Answer(
                "The completion, or its event stream.",
                {"application/json": _ref(wire.OpenAIChatCompletion), "text/event-stream": _ref(wire.OpenAIChatEvent)},
                TRANSPARENT_ANSWER,
            ),
            **transparent_call_refusals(wire.OpenAIError, code_header=False),
        },
    ),
    Operation(
        "/v1/models",
        "get",
        "openaiModels",
        "transparent",
        "The OpenAI-style model list from the tiers' servers (one server's as it is; two servers' together)",
        answers={"200": Answer("Models.", json_body(wire.OpenAIModels))},
    ),
    Operation(
        "/v1/embeddings",
        "post",
        "openaiEmbeddings",
        "transparent",
        "OpenAI-style embeddings, passed through untouched (no voice policy applies)",
        body=wire.OpenAIEmbeddingsRequest,
        answers={
            "200": Answer(PASSED_THROUGH, json_body(wire.OpenAIEmbeddings)),
            **passthrough_refusals(wire.OpenAIError),
        },
    ),
)

# Path parameters, declared once on their path.
PATH_PARAMETERS: dict[str, list[Schema]] = {
    "/v1/followups/{request_id}": [{"$ref": "#/components/parameters/EmailRequestId"}],
    "/v1/followups/{request_id}/{index}": [
        {"$ref": "#/components/parameters/EmailRequestId"},
        *[p for p in parameters(wire.FollowupPath, "path") if p["name"] == "index"],
    ],
}

# Every model that is a component: the operations' bodies and whatever they refer to by name.
SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    wire.Error,
    wire.OllamaError,
    wire.OpenAIError,
    wire.TextRequest,
    wire.TextResponse,
    wire.TextStreamLine,
    wire.Followups,
    wire.Stats,
    wire.Health,
    wire.Readiness,
    wire.OllamaChatRequest,
    wire.OllamaGenerateRequest,
    wire.OllamaChatResponse,
    wire.OllamaGenerateResponse,
    wire.OllamaChatLine,
    wire.OllamaGenerateLine,
    wire.OpenAIChatRequest,
    wire.OpenAIChatCompletion,
    wire.OpenAIChatCompletionChunk,
    wire.OpenAIChatEvent,
    wire.OllamaVersion,
    wire.OllamaTags,
    wire.OllamaPs,
    wire.OpenAIModels,
    wire.PassedThrough,
    wire.OllamaModelRequest,
    wire.OllamaEmbedRequest,
    wire.OllamaEmbedResponse,
    wire.OpenAIEmbeddingsRequest,
    wire.OpenAIEmbeddings,
    wire.TransparentCallHeaders,  # for the RequestClass it refers to
)


def component_schemas() -> dict[str, Schema]:
    _, top = models_json_schema(
        [(model, "validation") for model in SCHEMA_MODELS], ref_template=REF_TEMPLATE, schema_generator=DocumentSchema
    )
    schemas: dict[str, Schema] = dict(top["$defs"])
    schemas.pop("TransparentCallHeaders")  # its fields are parameters, not a body
    schemas["RequestClass"]["description"] = wire.REQUEST_CLASS_DESCRIPTION
    for schema in schemas.values():
        schema.pop("title", None)  # the component's name says it
    return dict(sorted(schemas.items()))


def component_parameters() -> dict[str, Schema]:
    call_headers = {p["name"]: p for p in parameters(wire.TransparentCallHeaders, "header")}
    (email_request_id,) = [p for p in parameters(wire.FollowupPath, "path") if p["name"] == "request_id"]
    return {
        "SourceHeader": call_headers["X-Voicelane-Source"],
        "RequestIdHeader": call_headers["X-Request-Id"],
        "EmailRequestId": email_request_id,
    }


def build_document() -> Schema:
    """The sidecar's OpenAPI 3.1 document."""
    paths: dict[str, Schema] = {}
    for operation in OPERATIONS:
        item = paths.setdefault(operation.path, {})
        if operation.path in PATH_PARAMETERS:
            item["parameters"] = PATH_PARAMETERS[operation.path]
        item[operation.method] = operation.build()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "VoiceLane sidecar",
            "version": VERSION,
            "summary": "Low-latency voice lane beside an app: text and speech through admission, priority "
            "scheduling, single-flight, cache and fast/deep routing.",
            "description": "Binds 127.0.0.1 by default: only its own pod reaches it, so there is no "
            "authentication. Errors of the sidecar's own endpoints are JSON "
            '`{"error": {"code", "message", "details"?}}`; the transparent Ollama and OpenAI endpoints answer '
            "errors in their API's own format. Refusals that clear with time carry `Retry-After`. "
            f"Limits stated in the schemas are the defaults (`limits.max_text_chars` {LimitsConfig().max_text_chars}).",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "http://127.0.0.1:8787", "description": "The default listen address."}],
        "tags": [
            {"name": "lane", "description": "Text through the lane."},
            {"name": "speech", "description": "Speech and email follow-ups."},
            {"name": "transparent", "description": "Ollama- and OpenAI-compatible APIs, served through the lane."},
            {"name": "observation", "description": "Health, readiness, statistics and metrics."},
        ],
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "responses": {name: answer.build() for name, answer in LANE_REFUSALS.items()},
            "parameters": component_parameters(),
        },
    }


def document_text() -> str:
    """The document as committed: two-space indented JSON, UTF-8, one trailing newline."""
    return json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -P -m voicelane.sidecar.openapi",
        description="Print, write or check the sidecar's OpenAPI document, built from its wire models.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"refresh {DOCUMENT_PATH.name}")
    action.add_argument("--check", action="store_true", help=f"exit 1 if {DOCUMENT_PATH.name} is stale")
    parser.add_argument(
        "--path", type=Path, default=DOCUMENT_PATH, help="the committed document (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    text = document_text()
    if args.write:
        args.path.write_text(text, encoding="utf-8")
        print(f"wrote {args.path}")
        return 0
    if args.check:
        try:
            committed = args.path.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"voicelane.sidecar.openapi: {exc}", file=sys.stderr)
            return 2
        if committed != text:
            print(f"stale: {args.path} (run `python -P -m voicelane.sidecar.openapi --write`)", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
