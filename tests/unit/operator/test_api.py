"""The typed VoiceLane spec: Kubernetes spelling, defaults, errors, and no drift from the sidecar."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import pytest
from pydantic import BaseModel

from tests.unit.operator.conftest import with_spec
from voicelane.operator.api import (
    DEFAULT_OLLAMA_IMAGE,
    GUARDIAN_SOURCES,
    LOG_LEVELS,
    OPERATOR_OWNED_SIDECAR_FIELDS,
    RENAMED_SIDECAR_FIELDS,
    ROUTING_MODES,
    TTS_BACKENDS,
    SpecError,
    k8s_field_name,
    parse_spec,
)
from voicelane.sidecar.config import GuardianConfig, RoutingConfig, SidecarConfig, TTSConfig


def leaf_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
            paths |= leaf_paths(annotation, f"{prefix}{name}.")
        else:
            paths.add(f"{prefix}{name}")
    return paths


def dumped_paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    return {f"{prefix}{key}" for key in tree} | {
        path
        for key, value in tree.items()
        if isinstance(value, dict)
        for path in dumped_paths(value, f"{prefix}{key}.")
    }


def test_defaults_of_a_minimal_lane(minimal_lane: dict) -> None:
    spec = parse_spec(minimal_lane["spec"])
    assert spec.fast.image == DEFAULT_OLLAMA_IMAGE != "ollama/ollama:latest"
    assert (spec.fast.replicas, spec.fast.keep_alive_s, spec.fast.rewarm_interval_s) == (None, 900, 1800)
    assert spec.fast.storage is None
    assert spec.routing.fast_max_chars == 130
    targets = spec.policy.ttfa.targets
    assert (targets.chat, targets.notification, targets.email_tldr) == (3.0, 2.5, 3.5)
    assert spec.fast.resources.cpu == "1"  # an integer CPU count is kept as a quantity string


def test_fields_are_spelled_the_kubernetes_way(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, policy={"rateLimit": {"burst": 10, "sustainedPerSecond": 5}})
    assert parse_spec(lane["spec"]).policy.rate_limit.burst == 10
    with pytest.raises(SpecError, match=r"spec\.policy\.rate_limit: Extra inputs are not permitted"):
        parse_spec(with_spec(minimal_lane, policy={"rate_limit": {"burst": 10}})["spec"])


@pytest.mark.parametrize(
    ("python", "wire"),
    [
        ("fast_max_chars", "fastMaxChars"),
        ("retry_after_s", "retryAfterSeconds"),
        ("sustained_per_s", "sustainedPerSecond"),
        ("email_tldr", "emailTldr"),
        ("model", "model"),
    ],
)
def test_field_names(python: str, wire: str) -> None:
    assert k8s_field_name(python) == wire


def test_unknown_fields_and_bad_values_name_the_field(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, fast={"modle": "x", "resources": {"cpu": "lots", "memory": "2Gi"}})
    with pytest.raises(SpecError) as raised:
        parse_spec(lane["spec"])
    assert "spec.fast.modle: Extra inputs are not permitted" in raised.value.problems
    assert any(p.startswith("spec.fast.resources.cpu: 'lots' is not") for p in raised.value.problems)


def test_operator_owned_sidecar_fields_are_refused_with_the_reason(minimal_lane: dict) -> None:
    lane = with_spec(minimal_lane, deep={"upstream": {"url": "http://elsewhere:11434"}})
    with pytest.raises(SpecError, match=r"spec\.deep\.upstream: url cannot be set here: the operator points"):
        parse_spec(lane["spec"])
    with pytest.raises(SpecError, match=r"spec\.tts: apiKey cannot be set here: secrets do not belong"):
        parse_spec(with_spec(minimal_lane, tts={"apiKey": "sk-1"})["spec"])


def test_checks_inherited_from_the_sidecar_name_the_crd_fields(minimal_lane: dict) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(with_spec(minimal_lane, policy={"rateLimit": {"burst": 2, "sustainedPerSecond": 5}})["spec"])
    assert raised.value.problems == [
        "spec.policy.rateLimit: burst must be at least sustainedPerSecond: "
        "a bucket smaller than one second of refill never fills"
    ]
    with pytest.raises(SpecError) as raised:
        parse_spec(with_spec(minimal_lane, tts={"backend": "OpenAI"})["spec"])
    assert raised.value.problems == ["spec.tts: url is required when backend is OpenAI"]
    with pytest.raises(SpecError) as raised:
        parse_spec(with_spec(minimal_lane, routing={"complexPatterns": {"ticket": "([A-Z]+-"}})["spec"])
    [problem] = raised.value.problems
    assert problem.startswith("spec.routing.complexPatterns.ticket: invalid regular expression: missing )"), problem


@pytest.mark.parametrize(
    ("spelled", "sidecar_field"),
    [
        (ROUTING_MODES, RoutingConfig.model_fields["mode"]),
        (TTS_BACKENDS, TTSConfig.model_fields["backend"]),
        (LOG_LEVELS, SidecarConfig.model_fields["log_level"]),
        (GUARDIAN_SOURCES, GuardianConfig.model_fields["sources"]),
    ],
)
def test_every_sidecar_enum_value_has_one_kubernetes_spelling(spelled: dict, sidecar_field: Any) -> None:
    annotation = sidecar_field.annotation
    literal = typing.get_args(annotation)[0] if typing.get_origin(annotation) is tuple else annotation
    assert sorted(spelled.values()) == sorted(typing.get_args(literal))
    assert all(name[:1].isupper() and "_" not in name for name in spelled)  # FastOnly, not fast_only


@pytest.mark.parametrize(
    ("section", "old", "new"),
    [
        ({"routing": {"mode": "fast_only"}}, "spec.routing.mode: Input should be 'Auto', 'FastOnly' or 'DeepOnly'", ""),
        ({"policy": {"logLevel": "debug"}}, "spec.policy.logLevel: Input should be 'Debug'", ""),
        ({"tts": {"backend": "espeak"}}, "spec.tts.backend: Input should be 'Espeak' or 'OpenAI'", ""),
        (
            {"policy": {"limits": {"maxBodyBytes": 65536}}},
            "spec.policy.limits: maxBodyBytes cannot be set here",
            "maxBodySize",
        ),
        ({"policy": {"cache": {"maxBytes": 1024}}}, "spec.policy.cache: maxBytes cannot be set here", "maxSize"),
        ({"policy": {"cache": {"maxSize": 1024}}}, "spec.policy.cache.maxSize: 1024 is not a size such as 64Ki", ""),
    ],
)
def test_the_earlier_spellings_are_refused_naming_the_new_one(
    minimal_lane: dict, section: dict, old: str, new: str
) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(with_spec(minimal_lane, **section)["spec"])
    [problem] = raised.value.problems
    assert problem.startswith(old), problem
    assert new in problem


def test_a_spec_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(SpecError, match="spec: must be a mapping, got list"):
        parse_spec([1, 2])


def test_every_sidecar_field_is_reachable_from_a_voicelane(minimal_lane: dict) -> None:
    spec = parse_spec(minimal_lane["spec"])
    reachable = dumped_paths(spec.policy.model_dump())
    reachable |= dumped_paths({"routing": spec.routing.model_dump(), "tts": spec.tts.model_dump()})
    for tier in ("fast", "deep"):
        reachable |= dumped_paths(spec.tier(tier).upstream.model_dump(), f"upstreams.{tier}.")
        reachable |= {
            f"upstreams.{tier}.model",
            f"upstreams.{tier}.keep_alive",
            f"upstreams.{tier}.parallel_slots",
        }  # the tier's model, keepAliveSeconds, numParallel times replicas
    reachable |= set(RENAMED_SIDECAR_FIELDS)  # set in another form: maxBodySize: 64Ki for max_body_bytes: 65536
    unreachable = leaf_paths(SidecarConfig) - reachable
    assert unreachable == set(OPERATOR_OWNED_SIDECAR_FIELDS)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("keepAliveSeconds", -2, "spec.fast.keepAliveSeconds: Input should be greater than or equal to -1"),
        ("keepAliveSeconds", 31_536_001, "spec.fast.keepAliveSeconds: Input should be less than or equal to 31536000"),
        ("keepAliveSeconds", "15m", "spec.fast.keepAliveSeconds: Input should be a valid integer"),
        ("rewarmIntervalSeconds", 59, "spec.fast.rewarmIntervalSeconds: Input should be greater than or equal to 60"),
        (
            "rewarmIntervalSeconds",
            86401,
            "spec.fast.rewarmIntervalSeconds: Input should be less than or equal to 86400",
        ),
    ],
)
def test_tier_durations_out_of_range_name_the_field(
    minimal_lane: dict, field: str, value: object, problem: str
) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(with_spec(minimal_lane, fast={field: value})["spec"])
    assert any(found.startswith(problem) for found in raised.value.problems), raised.value.problems


@pytest.mark.parametrize(
    ("field", "value"), [("keepAliveSeconds", -1), ("keepAliveSeconds", 0), ("rewarmIntervalSeconds", 60)]
)
def test_tier_durations_at_their_bounds_are_accepted(minimal_lane: dict, field: str, value: int) -> None:
    tier = parse_spec(with_spec(minimal_lane, fast={field: value})["spec"]).fast
    assert (tier.keep_alive_s if field == "keepAliveSeconds" else tier.rewarm_interval_s) == value


@pytest.mark.parametrize(
    ("old", "value", "new"),
    [("keepAlive", "15m", "keepAliveSeconds"), ("rewarmInterval", "30m", "rewarmIntervalSeconds")],
)
def test_the_earlier_duration_strings_are_refused_with_their_new_names(
    minimal_lane: dict, old: str, value: str, new: str
) -> None:
    with pytest.raises(SpecError, match=rf"spec\.deep: .*{old} cannot be set here: it is {new} now, in seconds"):
        parse_spec(with_spec(minimal_lane, deep={old: value})["spec"])


@pytest.mark.parametrize(
    "name",
    ["llama3.2:1b", "library/llama3:8b", "registry.local:5000/library/llama3:8b", "hf.co/org/model:Q4_K_M"],
)
def test_model_names_ollama_accepts_are_accepted(minimal_lane: dict, name: str) -> None:
    minimal_lane["spec"]["fast"]["model"] = name
    assert parse_spec(minimal_lane["spec"]).fast.model == name


@pytest.mark.parametrize("name", ["llama3;rm -rf /", "host:port/x", ":tag", "a b"])
def test_model_names_with_shell_syntax_or_a_bad_registry_are_refused(minimal_lane: dict, name: str) -> None:
    minimal_lane["spec"]["fast"]["model"] = name
    with pytest.raises(SpecError):
        parse_spec(minimal_lane["spec"])
