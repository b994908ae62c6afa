"""The sidecar's wire format as pydantic models: every request body, answer body, stream frame, error body
and documented header, with the descriptions its OpenAPI document carries.

`voicelane.sidecar.openapi` builds the committed sidecar/openapi.json from these models, and the edge
validates a /v1/text or /v1/speak body through `TextRequest` (see `voicelane.sidecar.edge`), so what
the document promises and what the sidecar accepts are one definition. The transparent endpoints'
bodies are described here for their clients and checked by hand in `voicelane.sidecar.transparent`,
where a call carrying fields the lane does not read must pass on to the model server untouched.

Header models name each header by its alias (`X-Request-Id`); a field with a default is a header that
may be absent.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, StrictBool, StrictStr, WithJsonSchema

from voicelane.sidecar.config import ClassesConfig, LimitsConfig, RequestClass


def _whitespace_class() -> str:
    """A regex character class of every character `str.isspace()` calls whitespace, in ranges."""
    spaces = [code for code in range(sys.maxunicode + 1) if chr(code).isspace()]
    ranges: list[tuple[int, int]] = []
    for code in spaces:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    named = {0x09: r"\t", 0x0A: r"\n", 0x0C: r"\f", 0x0D: r"\r"}

    def escape(code: int) -> str:
        return named.get(code, f"\\u{code:04x}")

    return "".join(escape(low) if low == high else f"{escape(low)}-{escape(high)}" for low, high in ranges)


# A text with at least one character the server does not trim away with str.strip().
NON_BLANK = f"[^{_whitespace_class()}]"
# The request ids the sidecar echoes in headers and follow-up URLs (edge.REQUEST_ID, unanchored).
REQUEST_ID_CHARS = "[A-Za-z0-9._:-]"
REQUEST_ID_MAX = 128
LANG_MAX = 16
VOICE_MAX = 64
# The documented text limit: the default of `limits.max_text_chars`, which a deployment may change, so
# it is stated in the document but enforced by the edge against the configured value.
DEFAULT_MAX_TEXT_CHARS = LimitsConfig().max_text_chars

ERROR_CODES = (
    "invalid_json, invalid_utf8, invalid_unicode, invalid_content_encoding, invalid_body, invalid_http, "
    "missing_text, empty_text, invalid_text, missing_source, unknown_source, invalid_field, invalid_messages, "
    "body_timeout, text_too_long, body_too_large, not_found, method_not_allowed, unknown_email, "
    "unknown_segment, segment_pending, segment_evicted, segment_failed, queue_full, rate_limited, "
    "guardian_emergency, upstream_unavailable, upstream_failed, upstream_interrupted, upstream_timeout, "
    "tts_failed"
)

REQUEST_CLASS_DESCRIPTION = (
    f"What the app says the text is. chat/notification up to {ClassesConfig().short_max_chars} characters "
    "(`classes.short_max_chars`) run at priority 0, longer ones "
    "and email TL;DRs at 1, email segments at 2 (only while nothing of priority 0/1 runs or waits). `email` "
    "is a whole email: its TL;DR is spoken first, its body follows as follow-up audio."
)

MODEL_DESCRIPTION = (
    "Which model answers. A tier's model (`upstreams.fast.model`, `upstreams.deep.model`) pins that tier; "
    "`voicelane` lets the lane route by the text (as `/v1/text` does); any other name passes untouched to the "
    "deep tier's server, which answers it itself (Ollama's 404 for an unknown model). The answer names the "
    "model that answered."
)

CONVERSATION_DESCRIPTION = (
    "The conversation. All contents together must contain a non-whitespace character (400 `empty_text`) and "
    "be at most `limits.max_text_chars` long (413 `text_too_long`); the class and the tier are chosen from "
    "the last user message."
)

NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Ratio = Annotated[float, Field(ge=0, le=1)]
Priority = Annotated[int, Field(ge=0, le=2)]
ModelName = Annotated[str, Field(min_length=1, pattern=r"\S")]


def never_null(schema: dict[str, Any]) -> None:
    """For a field that may be left out but is never null when sent: its schema names no null (nor a null
    default)."""
    if "default" in schema and schema["default"] is None:
        del schema["default"]
    if isinstance(schema.get("type"), list):
        kinds = [kind for kind in schema["type"] if kind != "null"]
        schema["type"] = kinds[0] if len(kinds) == 1 else kinds
    if "anyOf" in schema:
        choices = [choice for choice in schema.pop("anyOf") if choice != {"type": "null"}]
        if len(choices) == 1:
            schema.update(choices[0])
        else:
            schema["anyOf"] = choices


def _trimmed(value: str) -> str:
    return value.strip()


def _optional_word(description: str) -> Any:
    """A field that is absent, null, or a non-blank string (kept trimmed)."""
    return Field(
        None, description=f"{description} Surrounding whitespace is trimmed; null or absent means the default."
    )


# A non-blank string of at most N characters, trimmed once accepted (the length counts the untrimmed text).
Lang = Annotated[StrictStr, Field(min_length=1, max_length=LANG_MAX, pattern=NON_BLANK), AfterValidator(_trimmed)]
Voice = Annotated[StrictStr, Field(min_length=1, max_length=VOICE_MAX, pattern=NON_BLANK), AfterValidator(_trimmed)]


class WireModel(BaseModel):
    """Fields a client adds beyond the documented ones are ignored, as the server does."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# ----- errors -------------------------------------------------------------------------------------


class ErrorDetail(WireModel):
    code: str = Field(description=ERROR_CODES)
    message: str = Field(description="For people: what was wrong and, where it helps, what is valid.")
    details: dict[str, Any] = Field(
        default_factory=dict, description="Structured extras, e.g. `valid` (the classes) or `field`."
    )


class Error(WireModel):
    """Every refusal of the sidecar's own API. `code` is stable and machine-readable; `message` is for people;
    `details` carries structured extras (e.g. the valid classes)."""

    error: ErrorDetail

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "unknown_source",
                        "message": "unknown source 'sms'; valid classes: chat, notification, email, "
                        "email_tldr, email_segment",
                        "details": {"valid": ["chat", "notification", "email", "email_tldr", "email_segment"]},
                    }
                }
            ]
        }
    )


class OllamaError(WireModel):
    """Ollama's own error body; the sidecar's error code is in the `X-Voicelane-Error` header."""

    error: str


class OpenAIErrorDetail(WireModel):
    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None


class OpenAIError(WireModel):
    """OpenAI's error body; on the lane's own refusals `code` and `type` carry the sidecar's error code, on an
    answer passed through from the model server they are the server's (`code` may be null)."""

    error: OpenAIErrorDetail


# ----- /v1/text and /v1/speak -----------------------------------------------------------------------


class TextRequest(WireModel):
    """The body of /v1/text and /v1/speak. Unknown fields are ignored."""

    text: StrictStr = Field(
        min_length=1,
        pattern=NON_BLANK,
        description="The text to make speakable. Must contain a character that is not whitespace (the pattern "
        "lists what counts as whitespace). Longer than `limits.max_text_chars` (default 4,096 characters): "
        "413 `text_too_long`.",
        # Stated, not enforced here: the edge holds the text to the configured limit.
        json_schema_extra={"maxLength": DEFAULT_MAX_TEXT_CHARS},
    )
    source: RequestClass
    lang: Lang | None = _optional_word("Language of the text (default: the sidecar's `default_lang`, sv).")
    target_lang: Lang | None = _optional_word("Language to speak in (default: `lang`).")
    request_id: (
        Annotated[StrictStr, Field(min_length=1, max_length=REQUEST_ID_MAX, pattern=f"^{REQUEST_ID_CHARS}+$")] | None
    ) = Field(
        None,
        description="Echoed in `X-Request-Id` and in follow-up URLs, hence letters, digits and . _ : - only; "
        "absent or null: the sidecar makes one.",
    )
    stream: StrictBool = Field(False, description="POST /v1/text only: answer as NDJSON while the model streams.")
    voice: Voice | None = _optional_word("Speech voice (backend-specific, e.g. `sv+f3`; /v1/speak only).")
    format: Literal["wav", "pcm"] = Field(
        "wav", description="Audio container (/v1/speak only): WAV with a streaming header, or raw PCM."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"text": "Mötet flyttas till klockan tre.", "source": "notification"},
                {"text": "Kan du ringa mig i eftermiddag?", "source": "chat", "lang": "sv", "stream": True},
            ]
        }
    )


class Timings(WireModel):
    """Seconds since the request was received, per stage reached (dispatched, first_token, done), and
    `total`."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, NonNegativeFloat] = Field(init=False)

    total: NonNegativeFloat


class TextResponse(WireModel):
    text: str = Field(description="The speakable text.")
    tier: Literal["fast", "deep", "passthrough", "phrase_bank"] = Field(description="Who produced the text.")
    cached: bool = Field(description="Served from the cache (no model work).")
    shared: bool = Field(description="Coalesced with an identical request (single-flight).")
    request_id: str
    priority: Priority
    timings: Timings


class TextStreamToken(WireModel):
    """A token of a streamed /v1/text answer, as the model produced it."""

    text: str
    done: Literal[False] = False


class TextStreamEnd(TextResponse):
    """The final line of a complete streamed /v1/text answer: the full answer."""

    done: Literal[True]


class TextStreamBreak(Error):
    """The final line of a stream the model broke off after its first token: the answer is not complete."""

    done: Literal[True]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "done": True,
                    "error": {"code": "upstream_interrupted", "message": "the fast tier broke off mid-answer"},
                }
            ]
        }
    )


class TextStreamLine(RootModel[TextStreamToken | TextStreamEnd | TextStreamBreak]):
    """One NDJSON line of a streamed /v1/text answer: tokens `{"text"}` as the model streams, then exactly one
    final line with `"done": true` — the full answer, or an error when the model broke off after the first
    token (the stream is then not complete)."""


# ----- follow-ups ---------------------------------------------------------------------------------


class Followup(WireModel):
    index: NonNegativeInt
    status: Literal["pending", "running", "ready", "evicted", "failed"]
    chars: NonNegativeInt = Field(description="Length of the segment's text.")
    url: str = Field(description="Where its audio is fetched (GET).")
    audio_bytes: NonNegativeInt
    error: str | None = None
    started_at: float | None = Field(None, description="Wall-clock seconds (Unix time).")
    finished_at: float | None = None
    synthesis_windows: list[Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(
        default_factory=list,
        description="[start, end] wall-clock seconds of each piece's synthesis (a sentence, or part of a long one).",
    )


class Followups(WireModel):
    request_id: str
    segments: list[Followup]


class FollowupPath(WireModel):
    """The path of a follow-up segment's audio."""

    request_id: str = Field(
        min_length=1,
        max_length=REQUEST_ID_MAX,
        pattern=f"^{REQUEST_ID_CHARS}+$",
        description="The `request_id` of the spoken email.",
    )
    index: NonNegativeInt = Field(description="The segment's index (0-based).")


class FollowupAudioQuery(WireModel):
    format: Literal["wav", "pcm"] = "wav"


# ----- observation ----------------------------------------------------------------------------------


class QueueStats(WireModel):
    """The priority scheduler: running and waiting work per priority."""

    running: dict[str, NonNegativeInt]
    waiting: dict[str, NonNegativeInt]
    running_total: NonNegativeInt
    waiting_total: NonNegativeInt
    max_running_per_priority: int | None = Field(None, json_schema_extra=never_null)
    max_waiting: int | None = Field(None, json_schema_extra=never_null)


class GuardianStats(WireModel):
    """Admission: blocked state, failing pressure sources, success rate, emergency blocks, current RPS,
    rejections by reason, the rate limiter's bucket."""

    enabled: bool
    blocked: bool
    emergency_blocks: NonNegativeInt
    sources: list[Literal["local", "upstream"]] = Field(default_factory=list)
    failing_sources: dict[str, Any]
    success_rate: Ratio | None = None
    rejections: dict[str, NonNegativeInt]
    current_rps: NonNegativeFloat
    rate_limit: dict[str, Any] = Field(default_factory=dict)


class UpstreamStats(WireModel):
    url: str
    protocol: Literal["ollama", "openai"]
    model: str
    healthy: bool | None = Field(description="null until the first health check.")
    circuit: Literal["closed", "open"]


class CacheStats(WireModel):
    entries: NonNegativeInt
    bytes: NonNegativeInt
    hits: NonNegativeInt
    misses: NonNegativeInt


class FlightFigures(WireModel):
    leaders: NonNegativeInt
    joiners: NonNegativeInt
    running: NonNegativeInt = 0
    cancellations: NonNegativeInt = 0


class FlightStats(FlightFigures):
    """Coalescing totals, and the figures of model-text flights and spoken-audio flights apart."""

    text: FlightFigures
    speech: FlightFigures


class TtfaClassStats(WireModel):
    count: NonNegativeInt
    target_s: float
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    within_target_ratio: Ratio
    error_ratio: Ratio
    stages_mean_s: dict[str, float] = Field(default_factory=dict)


class TtfaStats(WireModel):
    """Time to first audio over the rolling window (or the last `minutes`), per class."""

    window_s: NonNegativeFloat
    alerts: NonNegativeInt
    classes: dict[str, TtfaClassStats]


class TtsStats(WireModel):
    backend: Literal["espeak", "openai"]
    syntheses: NonNegativeInt


class PhraseBankStats(WireModel):
    prepared: NonNegativeInt = 0
    total: NonNegativeInt = 0


class Stats(WireModel):
    version: str
    uptime_s: NonNegativeFloat
    queue: QueueStats
    guardian: GuardianStats
    upstreams: dict[str, UpstreamStats] = Field(json_schema_extra={"required": ["fast", "deep"]})
    cache: CacheStats
    single_flight: FlightStats
    ttfa: TtfaStats
    tts: TtsStats
    phrase_bank: PhraseBankStats
    followups: dict[str, NonNegativeInt]


MAX_STATS_MINUTES = 7 * 24 * 60


class StatsQuery(WireModel):
    minutes: float | None = Field(
        None,
        gt=0,
        le=MAX_STATS_MINUTES,
        description="TTFA statistics over the last N minutes instead of the whole rolling window.",
    )


class Health(WireModel):
    status: Literal["ok"]


class Readiness(WireModel):
    ready: bool
    healthy_tiers: list[Literal["fast", "deep"]]
    passthrough: bool


# ----- transparent: Ollama and OpenAI -------------------------------------------------------------


class ChatMessage(WireModel):
    role: str = Field(description="system, user or assistant.")
    content: str


class ChatMessages(RootModel[list[ChatMessage]]):
    root: list[ChatMessage] = Field(
        min_length=1,
        description=CONVERSATION_DESCRIPTION,
        json_schema_extra={
            "contains": {"type": "object", "properties": {"content": {"type": "string", "pattern": NON_BLANK}}}
        },
    )


class StopSequences(RootModel[str | list[str]]):
    """Stop sequences: a string or a list of strings."""


class OllamaOptions(WireModel):
    """Model options. num_predict is capped at the tier's bound; temperature and stop take the tier's values
    when not given; every other option is passed on to the model server as it is."""

    model_config = ConfigDict(extra="allow")

    num_predict: int | None = Field(None, ge=1, json_schema_extra=never_null)
    temperature: float | None = Field(None, json_schema_extra=never_null)
    stop: StopSequences | None = Field(None, json_schema_extra=never_null)


class OllamaChatRequest(WireModel):
    """Ollama's /api/chat body. Other fields (`format`, `tools`, `images`, other options…) are passed on to
    the model server with the call; `keep_alive` and `think` are set by the lane (the header
    `X-Voicelane-Overridden` names those it changed)."""

    model: ModelName = Field(description=MODEL_DESCRIPTION)
    messages: ChatMessages
    stream: bool = True
    options: OllamaOptions | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"model": "voicelane", "messages": [{"role": "user", "content": "Hej!"}], "stream": False}]
        }
    )


class OllamaGenerateRequest(WireModel):
    """Ollama's /api/generate body. Other fields (`format`, `images`, `raw`, other options…) are passed on to
    the model server with the call; `keep_alive` and `think` are set by the lane."""

    model: ModelName = Field(description=MODEL_DESCRIPTION)
    prompt: str = Field(
        min_length=1,
        pattern=NON_BLANK,
        description="Must contain a non-whitespace character; at most `limits.max_text_chars`.",
        json_schema_extra={"maxLength": DEFAULT_MAX_TEXT_CHARS},
    )
    system: str | None = Field(None, description="A system prompt (used when it is a non-empty string).")
    stream: bool = True
    options: OllamaOptions | None = None


class AssistantMessage(WireModel):
    role: Literal["assistant"]
    content: str


class _OllamaAnswer(WireModel):
    """What /api/chat and /api/generate answers share."""

    model: str
    created_at: str
    done: bool
    done_reason: str | None = Field(None, json_schema_extra=never_null)
    total_duration: NonNegativeInt | None = Field(None, json_schema_extra=never_null)
    load_duration: NonNegativeInt | None = Field(None, json_schema_extra=never_null)


class OllamaChatResponse(_OllamaAnswer):
    """One answer (stream false) or one NDJSON line (stream true; the last has done true)."""

    message: AssistantMessage


class OllamaGenerateResponse(_OllamaAnswer):
    """One answer (stream false) or one NDJSON line (stream true; the last has done true)."""

    response: str


class OllamaChatLine(RootModel[OllamaChatResponse | OllamaError]):
    """One NDJSON line of a streamed /api/chat answer; a failure after the first line ends the stream with an
    `{"error"}` line, as Ollama does."""


class OllamaGenerateLine(RootModel[OllamaGenerateResponse | OllamaError]):
    """One NDJSON line of a streamed /api/generate answer; a failure after the first line ends the stream with
    an `{"error"}` line, as Ollama does."""


class ContentPart(WireModel):
    type: str
    text: str | None = Field(None, json_schema_extra=never_null)


class OpenAIChatMessage(WireModel):
    role: str
    content: str | list[ContentPart] = Field(
        description="A string, or a list of content parts: text parts become messages of their own, as on "
        "Ollama; a call with other parts (images) is passed on to the model server."
    )


class OpenAIChatRequest(WireModel):
    """OpenAI's chat completions body. Other fields (`response_format`, `tools`, `seed`…) are passed on to the
    model server with the call."""

    model: ModelName = Field(description=MODEL_DESCRIPTION)
    messages: list[OpenAIChatMessage] = Field(
        min_length=1,
        description=CONVERSATION_DESCRIPTION,
        json_schema_extra={
            "contains": {"type": "object", "properties": {"content": {"type": "string", "pattern": NON_BLANK}}}
        },
    )
    stream: bool = False
    temperature: float | None = None
    max_tokens: int | None = Field(None, ge=1, description="Capped at the tier's `num_predict`.")
    stop: StopSequences | None = None

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "voicelane", "messages": [{"role": "user", "content": "Hej!"}]}]}
    )


class CompletionChoice(WireModel):
    index: int
    message: AssistantMessage
    finish_reason: str


class OpenAIChatCompletion(WireModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[CompletionChoice] = Field(min_length=1)


class ChunkChoice(WireModel):
    index: int
    delta: dict[str, Any]
    finish_reason: str | None = None


class OpenAIChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]


class OpenAIChatEvent(WireModel):
    """One server-sent event: a JSON chunk, an error object when the model broke off after the first token
    (then no `[DONE]` follows), or the final `[DONE]`."""

    data: Annotated[
        str,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {
                            "anyOf": [
                                {"$ref": "#/components/schemas/OpenAIChatCompletionChunk"},
                                {"$ref": "#/components/schemas/OpenAIError"},
                            ]
                        },
                    },
                ]
            }
        ),
    ]


class OllamaVersion(WireModel):
    version: str


class OllamaModel(WireModel):
    name: str
    model: str
    modified_at: str | None = Field(None, json_schema_extra=never_null)


class OllamaTags(WireModel):
    models: list[OllamaModel]


class RunningModel(WireModel):
    name: str
    model: str


class OllamaPs(WireModel):
    models: list[RunningModel]


class OpenAIModel(WireModel):
    id: str
    object: Literal["model"]
    owned_by: str


class OpenAIModels(WireModel):
    object: Literal["list"]
    data: list[OpenAIModel]


class PassedThrough(WireModel):
    """The model server's own answer, passed through untouched."""

    model_config = ConfigDict(extra="allow")


class OllamaModelRequest(WireModel):
    """Passed untouched to the server of the tier serving `model` (the deep tier's for any other name)."""

    model: ModelName


class OllamaEmbedRequest(WireModel):
    """Passed untouched to the server of the tier serving `model` (the deep tier's for any other name)."""

    model: ModelName
    input: str | Annotated[list[str], Field(min_length=1)]


class OpenAIEmbeddingsRequest(WireModel):
    """Passed untouched to the server of the tier serving `model` (the deep tier's for any other name)."""

    model: ModelName
    input: str | Annotated[list[str], Field(min_length=1)]


class OllamaEmbedResponse(WireModel):
    model: str
    embeddings: list[list[float]]


class OpenAIEmbedding(WireModel):
    object: Literal["embedding"]
    embedding: list[float]
    index: int


class OpenAIEmbeddings(WireModel):
    object: Literal["list"]
    data: list[OpenAIEmbedding]


# ----- headers --------------------------------------------------------------------------------------

TRUE_OR_FALSE = Literal["true", "false"]


class RequestIdHeader(WireModel):
    request_id: str = Field(
        alias="X-Request-Id", description="The request's id (given by the client or made by the sidecar)."
    )


class RetryHeaders(WireModel):
    """On refusals that clear with time."""

    retry_after: int = Field(ge=1, alias="Retry-After", description="Seconds after which a retry may succeed.")


class LaneRefusalHeaders(RetryHeaders):
    request_id: str | None = Field(
        None, alias="X-Request-Id", description="The request's id (given by the client or made by the sidecar)."
    )


class AllowHeader(WireModel):
    allow: str = Field(alias="Allow", description="The methods the path supports.")


class SpeechHeaders(RequestIdHeader):
    """The headers of a /v1/speak answer, sent before its first audio."""

    tier: Literal["fast", "deep", "cache", "passthrough", "fallback", "phrase_bank", "unknown"] = Field(
        alias="X-Voicelane-Tier",
        description="Who produced the speech: a model tier, the cache, the text as given (passthrough), the "
        "original text after a model failure or deadline miss (fallback), or the phrase bank.",
    )
    priority: Priority = Field(alias="X-Voicelane-Priority", description="The priority the request ran at (0 highest).")
    shared: TRUE_OR_FALSE = Field(
        alias="X-Voicelane-Shared",
        description="Whether the answer was shared with an identical request in flight (single-flight).",
    )
    sample_rate: int = Field(
        ge=8000, le=48000, alias="X-Voicelane-Sample-Rate", description="Samples per second of the audio."
    )
    channels: Literal[1] = Field(alias="X-Voicelane-Channels", description="Audio channels.")
    sample_format: Literal["s16le"] = Field(
        alias="X-Voicelane-Sample-Format", description="Sample format: signed 16-bit little-endian."
    )
    fallback: Literal["deadline", "model_failure", "empty_reply"] | None = Field(
        None,
        alias="X-Voicelane-Fallback",
        description="Present when the original text was spoken instead of the model's: why.",
    )
    followups: str | None = Field(
        None,
        alias="X-Voicelane-Followups",
        description="Emails only: where the list of follow-up segments is fetched.",
    )
    followup_count: NonNegativeInt | None = Field(
        None,
        alias="X-Voicelane-Followup-Count",
        description="Emails only: how many follow-up segments the email's body was split into.",
    )


class FollowupAudioHeaders(WireModel):
    sample_rate: int = Field(
        ge=8000, le=48000, alias="X-Voicelane-Sample-Rate", description="Samples per second of the audio."
    )


class TransparentAnswerHeaders(RequestIdHeader):
    """The headers of a transparent chat or generate answer."""

    shared: TRUE_OR_FALSE | None = Field(
        None,
        alias="X-Voicelane-Shared",
        description="Whether the answer was shared with an identical request in flight (single-flight). Only "
        "on answers from the lane's token path (plain text chats).",
    )
    cached: TRUE_OR_FALSE | None = Field(
        None,
        alias="X-Voicelane-Cached",
        description="Whether the answer came from the cache. Only on answers from the lane's token path (plain "
        "text chats).",
    )
    priority: Priority | None = Field(
        None,
        alias="X-Voicelane-Priority",
        description="The priority the request ran at (0 highest). On every call the lane admitted; absent on a "
        "call for a model the lane does not serve.",
    )
    overridden: str | None = Field(
        None,
        alias="X-Voicelane-Overridden",
        description="The caller's fields the lane's policy set otherwise, comma-separated: `keep_alive`, "
        "`think`, `num_predict` or `max_tokens` (over the tier's bound).",
    )


class LaneErrorCodeHeader(WireModel):
    error_code: str | None = Field(
        None,
        alias="X-Voicelane-Error",
        description="The sidecar's error code on the lane's own refusals; absent on an answer the model server "
        "gave (passed through as it is).",
    )


class LaneErrorRetryHeaders(LaneErrorCodeHeader, RetryHeaders):
    pass


class TransparentCallHeaders(WireModel):
    """Request headers of the transparent chat and generate endpoints."""

    source: RequestClass | None = Field(
        None,
        alias="X-Voicelane-Source",
        description="The request class; absent: chat or notification by the last user message's length.",
    )
    request_id: str | None = Field(
        None,
        alias="X-Request-Id",
        max_length=REQUEST_ID_MAX,
        pattern=f"^{REQUEST_ID_CHARS}*$",
        description="The request's id, echoed in the response (default, and when empty: one made by the "
        "sidecar). Any other character is refused with 400 `invalid_field`.",
    )
