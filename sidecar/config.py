"""The sidecar's configuration schema: one typed source of truth.

The sidecar validates its YAML file, environment overrides and flags against
these models; the operator imports them to render each lane's ConfigMap and
the policy part of the VoiceLane CRD, so the two cannot drift.
Every number here is a default taken from the original fast-lane design.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from voicelane.core.routing import Tier

Percent = Annotated[float, Field(ge=1, le=100)]
Seconds = Annotated[float, Field(gt=0, le=86400)]
HostPort = Annotated[str, Field(pattern=r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]*):[0-9]{1,5}$")]


class RequestClass(StrEnum):
    """What the app says a text is; decides priority and speech policy."""

    CHAT = "chat"
    NOTIFICATION = "notification"
    EMAIL = "email"
    EMAIL_TLDR = "email_tldr"
    EMAIL_SEGMENT = "email_segment"


class Protocol(StrEnum):
    OLLAMA = "ollama"
    OPENAI = "openai"


class _Model(BaseModel):
    # Unknown keys are errors: a typo in a ConfigMap must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    listen: HostPort = Field("127.0.0.1:8787", description="Address of the API (loopback: only its pod reaches it).")
    metrics_listen: HostPort | None = Field(
        None, description="Separate address for /metrics, e.g. 0.0.0.0:9464 for scraping; None serves it on `listen`."
    )
    shutdown_grace_s: Seconds = Field(10.0, description="How long in-flight requests may finish on shutdown.")


class LimitsConfig(_Model):
    max_text_chars: int = Field(4096, ge=1, le=1_000_000, description="Longer texts are refused with 413.")
    max_body_bytes: int = Field(65536, ge=256, le=64 * 1024 * 1024, description="Larger bodies are refused with 413.")
    body_read_timeout_s: Seconds = Field(10.0, description="A client that sends its body slower than this is cut off.")
    send_timeout_s: Seconds = Field(
        30.0, description="A client that takes none of a streamed answer for this long is cut off."
    )


class ClassesConfig(_Model):
    short_max_chars: int = Field(
        130, ge=1, le=100_000, description="chat/notification up to this length run at priority 0."
    )
    tldr_max_chars: int = Field(200, ge=1, le=100_000, description="Upper bound of an email TL;DR.")


class SchedulerConfig(_Model):
    max_running_per_priority: int = Field(
        1, ge=1, le=64, description="Model calls per priority level that have not yet produced their first segment."
    )
    max_waiting: int = Field(3, ge=0, le=10_000, description="Requests waiting in total; beyond that 429.")
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After sent with a queue-full 429.")
    priorities: bool = Field(True, description="False: one FIFO queue for every class (the baseline).")
    segments_after_quiet_s: float = Field(
        0.0,
        ge=0,
        le=600,
        description="Email segments start only once priorities 0 and 1 have had nothing running or waiting this "
        "long, so the short pauses of a conversation are not filled with long background work.",
    )
    tiers_share_cpus: bool = Field(
        False,
        description="The tiers' model servers share CPUs (one machine): calls run on one tier at a time, since two "
        "CPU-bound servers side by side slow each other down far more than taking turns.",
    )


class RateLimitConfig(_Model):
    burst: int = Field(8, ge=1, le=100_000, description="Token bucket size.")
    sustained_per_s: float = Field(4.0, gt=0, le=100_000, description="Token refill rate (requests per second).")

    @model_validator(mode="after")
    def _burst_covers_rate(self) -> RateLimitConfig:
        if self.burst < self.sustained_per_s:
            raise ValueError("burst must be >= sustained_per_s")
        return self


class GuardianConfig(_Model):
    enabled: bool = True
    sample_interval_s: Seconds = Field(1.0, description="How often pressure is sampled.")
    cpu_threshold_percent: Percent = Field(85.0, description="CPU above this counts as pressure.")
    memory_threshold_percent: Percent = Field(80.0, description="Memory above this counts as pressure.")
    sustain_s: Seconds = Field(10.0, description="Both must hold this long for a check to fail.")
    fail_checks_to_block: int = Field(3, ge=1, le=1000, description="Consecutive failed checks that block model work.")
    ok_checks_to_unblock: int = Field(1, ge=1, le=1000, description="Consecutive good checks that unblock.")
    retry_after_s: int = Field(5, ge=1, le=3600, description="Retry-After sent while blocked.")
    sources: tuple[Literal["local", "upstream"], ...] = Field(
        ("local", "upstream"), description="Pressure sources consulted by each check."
    )
    upstream_ttft_inflation: float = Field(
        4.0, gt=1, le=1000, description="A tier is saturated when its recent TTFT exceeds its baseline by this factor."
    )
    upstream_error_ratio: float = Field(
        0.5, gt=0, le=1, description="A tier is saturated when this share of recent calls were 503s or timeouts."
    )
    upstream_window_s: Seconds = Field(10.0, description="The recent window for upstream saturation.")
    upstream_min_samples: int = Field(
        3, ge=1, le=10_000, description="Calls a tier needs in the recent window before saturation is judged."
    )
    upstream_min_ttft_s: float = Field(
        0.5, ge=0, le=3600, description="Recent TTFT below this is never saturation, however it compares."
    )


class SingleFlightConfig(_Model):
    enabled: bool = True
    window_s: float = Field(2.0, ge=0, le=3600, description="A finished result is shared this long after it completes.")


class CacheConfig(_Model):
    enabled: bool = True
    max_entries: int = Field(1024, ge=0, le=10_000_000)
    max_bytes: int = Field(64 * 1024 * 1024, ge=0, le=16 * 1024**3, description="Bound on cached text and audio.")
    ttl_s: Seconds = Field(3600.0)


DEFAULT_PHRASES: tuple[str, ...] = (
    "Okej.",
    "Tack!",
    "Ja.",
    "Nej.",
    "Ett ögonblick.",
    "Jag förstår.",
    "Hej!",
    "God morgon!",
    "Du har ett nytt meddelande.",
    "Du har ett nytt mejl.",
    "Påminnelse.",
    "Klart!",
    "Något gick fel.",
    "Försök igen.",
    "Okay.",
    "Thank you!",
    "One moment.",
    "You have a new message.",
    "Reminder.",
    "Done!",
)


class PhraseBankConfig(_Model):
    enabled: bool = True
    phrases: tuple[str, ...] = Field(DEFAULT_PHRASES, description="Prepared at start-up so they hit the cache at once.")
    source: RequestClass = RequestClass.CHAT


DEFAULT_COMPLEX_PATTERNS: dict[str, str] = {
    "url": r"(?i)\b(?:https?://|www\.)\S+",
    "email_address": r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b",
    # Keywords count only in code shape ("def f(", "return x;", a line "import os"), so that
    # prose such as "please return my call (after lunch)" stays on the fast tier.
    "code": r"(?m)`|=>|::|[{};]\s*$|\b\w+\(\)|\b(?:def|function)\s+\w+\s*\(|\bclass\s+\w+\s*[:({]"
    r"|\breturn\s+[\w.]+\s*[(;]|^\s*(?:import\s+[\w.]+\s*$|from\s+[\w.]+\s+import\b)",
    "long_digits": r"\d[\d\s-]{7,}\d",
    "list_or_table": r"(?m)^\s*(?:[-*•]|\d+[.)])\s+\S|\|.*\|",
    "mixed_scripts": r"[A-Za-zÀ-ÿ].*[\u0400-\u04FF\u0600-\u06FF\u0590-\u05FF\u3040-\u30FF\u4E00-\u9FFF]"
    r"|[\u0400-\u04FF\u0600-\u06FF\u0590-\u05FF\u3040-\u30FF\u4E00-\u9FFF].*[A-Za-zÀ-ÿ]",
}


class RoutingConfig(_Model):
    fast_max_chars: int = Field(130, ge=1, le=100_000, description="Longer texts go to the deep tier.")
    complex_patterns: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_COMPLEX_PATTERNS),
        description="Named regular expressions; a match sends the text to the deep tier.",
    )
    failover: bool = Field(True, description="Retry on the other tier when a call fails before its first token.")
    mode: Literal["auto", "fast_only", "deep_only"] = Field(
        "auto", description="auto routes by length and patterns; the others pin every request to one tier."
    )

    @model_validator(mode="after")
    def _patterns_compile(self) -> RoutingConfig:
        import re

        for name, pattern in self.complex_patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"complex_patterns.{name}: invalid regular expression: {exc}") from exc
        return self


class UpstreamConfig(_Model):
    url: str = Field(pattern=r"^https?://", description="Base URL of the model server.")
    protocol: Protocol = Protocol.OLLAMA
    model: str = Field("llama3.2:1b", min_length=1)
    keep_alive: str = Field("15m", description="Ollama keep_alive sent with each call.")
    num_predict: int = Field(256, ge=1, le=32768, description="Upper bound of generated tokens.")
    temperature: float = Field(0.0, ge=0, le=2)
    stop: tuple[str, ...] = Field(("\n\n\n", "<|im_end|>", "<|eot_id|>"), description="Strict stop sequences.")
    connect_timeout_s: Seconds = 2.0
    first_token_timeout_s: Seconds = Field(10.0, description="A call with no first token by then fails (failover).")
    total_timeout_s: Seconds = 60.0
    health_interval_s: Seconds = 5.0
    circuit_failures_to_open: int = Field(3, ge=1, le=1000)
    circuit_successes_to_close: int = Field(1, ge=1, le=1000)
    max_connections: int = Field(16, ge=1, le=10_000)
    api_key: str | None = Field(None, description="Bearer token for OpenAI-compatible servers.")
    parallel_slots: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Calls the tier's servers run at once (OLLAMA_NUM_PARALLEL times replicas). When set, the lane "
        "never has more calls on the tier at once, and priority-0 work whose own tier is full may take a free slot "
        "of this one; unset, the lane does not bound the tier.",
    )


class UpstreamsConfig(_Model):
    fast: UpstreamConfig = UpstreamConfig(url="http://127.0.0.1:11435", model="llama3.2:1b")
    deep: UpstreamConfig = UpstreamConfig(url="http://127.0.0.1:11434", model="llama3.1:8b")

    @model_validator(mode="before")
    @classmethod
    def _tier_defaults_under_given_settings(cls, data: Any) -> Any:
        # A tier given in part (`--deep-url` alone, say) keeps its own defaults for the rest: its own
        # model and URL, not UpstreamConfig's field defaults, which are the fast tier's.
        if not isinstance(data, Mapping):
            return data
        merged = dict(data)
        for tier in ("fast", "deep"):
            given = merged.get(tier)
            if isinstance(given, Mapping):
                default = cls.model_fields[tier].default
                merged[tier] = {"url": default.url, "model": default.model, **given}
        return merged

    def for_tier(self, tier: Tier) -> UpstreamConfig:
        return self.fast if tier is Tier.FAST else self.deep


DEFAULT_PROMPTS: dict[str, str] = {
    "chat": "Rewrite the message so it sounds natural when read aloud in {target_lang}. "
    "Keep the meaning, drop markup, spell out symbols. Reply with the spoken text only.",
    "notification": "Rewrite this notification as one short, friendly spoken sentence in {target_lang}. "
    "Reply with the spoken text only.",
    "email_tldr": "Summarise this email for listening in {target_lang} in at most {tldr_max_chars} characters: "
    "who wrote, what they want, any deadline. Reply with the summary only.",
    "email_segment": "Rewrite this part of an email so it reads well aloud in {target_lang}. "
    "Spell out links and numbers naturally. Reply with the spoken text only.",
}


class PromptsConfig(_Model):
    version: str = Field("v1", min_length=1, description="Part of the cache key: bump it when templates change.")
    templates: dict[RequestClass, str] = Field(
        default_factory=lambda: {RequestClass(k): v for k, v in DEFAULT_PROMPTS.items()}
    )
    passthrough: bool = Field(False, description="Skip the model: speak or return the text as given.")


class TTFATargets(_Model):
    chat: Seconds = 3.0
    notification: Seconds = 2.5
    email_tldr: Seconds = 3.5

    def for_class(self, request_class: RequestClass) -> float:
        if request_class is RequestClass.NOTIFICATION:
            return self.notification
        if request_class in (RequestClass.EMAIL, RequestClass.EMAIL_TLDR, RequestClass.EMAIL_SEGMENT):
            return self.email_tldr
        return self.chat


class TTFAConfig(_Model):
    targets: TTFATargets = TTFATargets()
    window_s: Seconds = Field(3600.0, description="Rolling window of /v1/stats and in-process alerts.")
    consecutive_slow_alert: int = Field(3, ge=1, le=1000, description="Slow requests in a row that raise an alert.")
    expected_tts_s: Seconds = Field(0.3, description="Subtracted from the target to get the model's deadline.")


class VoiceStyle(_Model):
    rate: float = Field(1.0, ge=0.25, le=4.0)
    style: str | None = None
    voice: str | None = None


class TTSConfig(_Model):
    backend: Literal["espeak", "openai"] = "espeak"
    url: str | None = Field(None, pattern=r"^https?://", description="Base URL of an OpenAI-compatible speech server.")
    model: str = "tts-1"
    voice: str = "sv"
    sample_rate: int = Field(
        24000, ge=8000, le=48000, description="Rate of raw PCM from the OpenAI-compatible server (OpenAI sends 24 kHz)."
    )
    sentence_streaming: bool = Field(
        True, description="Speak each segment as soon as the model completes it; False waits for the whole text."
    )
    timeout_s: Seconds = 15.0
    api_key: str | None = None
    classes: dict[RequestClass, VoiceStyle] = Field(
        default_factory=lambda: {RequestClass.NOTIFICATION: VoiceStyle(rate=1.08, style="cheerful")}
    )

    @model_validator(mode="after")
    def _openai_needs_url(self) -> TTSConfig:
        if self.backend == "openai" and not self.url:
            raise ValueError("tts.url is required when tts.backend is openai")
        return self


class SidecarConfig(_Model):
    """The complete sidecar configuration (what a lane's ConfigMap holds)."""

    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    classes: ClassesConfig = ClassesConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    guardian: GuardianConfig = GuardianConfig()
    single_flight: SingleFlightConfig = SingleFlightConfig()
    cache: CacheConfig = CacheConfig()
    phrase_bank: PhraseBankConfig = PhraseBankConfig()
    routing: RoutingConfig = RoutingConfig()
    upstreams: UpstreamsConfig = UpstreamsConfig()
    prompts: PromptsConfig = PromptsConfig()
    ttfa: TTFAConfig = TTFAConfig()
    tts: TTSConfig = TTSConfig()
    default_lang: str = Field("sv", min_length=2, max_length=16)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ConfigError(ValueError):
    """An invalid configuration, with each offending key and the reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration: " + "; ".join(problems))


ENV_PREFIX = "VOICELANE_"


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: `override` laid over `base`, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`VOICELANE_RATE_LIMIT__BURST=10` → {"rate_limit": {"burst": 10}}; values are YAML scalars.

    Written by hand rather than with pydantic-settings because the same models are
    also fed from a YAML file and CLI flags, merged in one precedence order here.
    """
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            node[path[-1]] = raw
    return tree


def describe_errors(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()]


def build_config(*layers: Mapping[str, Any]) -> SidecarConfig:
    """Validate the merge of the given layers (later wins) into a SidecarConfig."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    try:
        return SidecarConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError([f"{path}: top level must be a mapping, got {type(loaded).__name__}"])
    return loaded


def load_config(
    path: Path | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SidecarConfig:
    """File, then environment, then flags: each later layer overrides the earlier."""
    file_layer = read_config_file(path) if path is not None else {}
    env_layer = env_overrides(os.environ if environ is None else environ)
    return build_config(file_layer, env_layer, flags or {})
