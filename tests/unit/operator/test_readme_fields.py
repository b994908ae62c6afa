"""The README's VoiceLane field reference is the one generated from the CRD."""

from __future__ import annotations

from pathlib import Path

from voicelane.operator.docs import BEGIN_MARKER, END_MARKER, spec_fields_markdown

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_lists_every_spec_field_with_its_default() -> None:
    text = README.read_text(encoding="utf-8")
    assert BEGIN_MARKER in text, "README lacks the generated spec-field table"
    assert END_MARKER in text, "README's spec-field table is not closed"
    embedded = text.split(BEGIN_MARKER, 1)[1].split(END_MARKER, 1)[0].strip()
    assert embedded == spec_fields_markdown(), "README spec table is stale: run python -P -m voicelane.operator.docs"


def test_table_covers_tier_and_policy_fields() -> None:
    table = spec_fields_markdown()
    for field in (
        "fast\\|deep.model",
        "fast\\|deep.keepAliveSeconds",
        "policy.rateLimit.burst",
        "routing.fastMaxChars",
    ):
        assert f"`{field}`" in table
