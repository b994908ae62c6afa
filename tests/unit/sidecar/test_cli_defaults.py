"""`voicelane sidecar` flags: a tier's flag sets that one setting, and the tier keeps its own defaults for the rest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from voicelane.cli import build_parser
from voicelane.sidecar.cli import flag_overrides
from voicelane.sidecar.config import SidecarConfig, UpstreamsConfig, load_config

README = Path(__file__).resolve().parents[3] / "README.md"
DEFAULTS = UpstreamsConfig()


def config_of(*flags: str, config_file: Path | None = None, environ: dict[str, str] | None = None) -> SidecarConfig:
    args = build_parser().parse_args(["sidecar", *flags])
    return load_config(config_file, flags=flag_overrides(args), environ=environ or {})


def test_the_tiers_defaults_are_the_ones_the_readme_documents() -> None:
    readme = README.read_text(encoding="utf-8")
    for tier in (DEFAULTS.fast, DEFAULTS.deep):
        assert re.search(rf"`{re.escape(tier.url)}`[^.;]*`{re.escape(tier.model)}`", readme), (tier.url, tier.model)
    assert (DEFAULTS.fast.model, DEFAULTS.deep.model) == ("llama3.2:1b", "llama3.1:8b")


def test_deep_url_alone_keeps_the_deep_tiers_default_model() -> None:
    config = config_of("--deep-url", "http://10.0.0.9:11434")
    assert config.upstreams.deep.url == "http://10.0.0.9:11434"
    assert config.upstreams.deep.model == "llama3.1:8b"
    assert config.upstreams.fast == DEFAULTS.fast


def test_fast_url_alone_keeps_the_fast_tiers_default_model_and_the_deep_tier_untouched() -> None:
    config = config_of("--fast-url", "http://10.0.0.8:11435")
    assert (config.upstreams.fast.url, config.upstreams.fast.model) == ("http://10.0.0.8:11435", "llama3.2:1b")
    assert config.upstreams.deep == DEFAULTS.deep


@pytest.mark.parametrize(
    ("flags", "tier", "url"),
    [
        (("--deep-model", "qwen2.5:7b"), "deep", "http://127.0.0.1:11434"),
        (("--fast-model", "qwen2.5:0.5b"), "fast", "http://127.0.0.1:11435"),
        (("--deep-protocol", "openai"), "deep", "http://127.0.0.1:11434"),
    ],
)
def test_any_one_tier_flag_keeps_that_tiers_default_url(flags: tuple[str, ...], tier: str, url: str) -> None:
    # These were refused before ("upstreams.deep.url: Field required").
    config = config_of(*flags)
    assert getattr(config.upstreams, tier).url == url


def test_both_urls_give_each_tier_its_own_default_model() -> None:
    config = config_of("--fast-url", "http://a:1", "--deep-url", "http://b:2")
    assert (config.upstreams.fast.model, config.upstreams.deep.model) == ("llama3.2:1b", "llama3.1:8b")


def test_a_model_the_file_names_is_kept_when_a_flag_sets_only_the_url(tmp_path: Path) -> None:
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text(yaml.safe_dump({"upstreams": {"deep": {"model": "mistral:7b"}}}))
    config = config_of("--deep-url", "http://b:2", config_file=config_file)
    assert (config.upstreams.deep.url, config.upstreams.deep.model) == ("http://b:2", "mistral:7b")


def test_the_same_holds_for_a_file_and_the_environment(tmp_path: Path) -> None:
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text(yaml.safe_dump({"upstreams": {"deep": {"url": "http://from-file:11434"}}}))
    assert config_of(config_file=config_file).upstreams.deep.model == "llama3.1:8b"
    from_env = config_of(environ={"VOICELANE_UPSTREAMS__DEEP__URL": "http://from-env:11434"})
    assert (from_env.upstreams.deep.url, from_env.upstreams.deep.model) == ("http://from-env:11434", "llama3.1:8b")
