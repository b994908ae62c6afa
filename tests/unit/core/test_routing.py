"""Fast/deep routing: plain short text stays fast; long or complex text goes deep; failover order."""

from __future__ import annotations

import pytest

from voicelane.core.routing import ComplexityDetector, RouteDecision, Router
from voicelane.sidecar.config import DEFAULT_COMPLEX_PATTERNS, RoutingConfig, Tier

DETECTOR = ComplexityDetector(DEFAULT_COMPLEX_PATTERNS)
ROUTER = Router(RoutingConfig())

# (pattern, text) pairs that must be detected, in Swedish and English.
COMPLEX = [
    ("url", "Läs mer på https://www.svt.se/nyheter idag."),
    ("url", "See www.example.com for details."),
    ("url", "Open HTTP://EXAMPLE.ORG/path?x=1 now"),
    ("email_address", "Mejla anna.berg@example.se om du kan."),
    ("email_address", "Write to john+news@mail.example.com, please."),
    ("code", "Kör `npm install` först."),
    ("code", "def greet(name): return name"),
    ("code", "const add = (a, b) => a + b"),
    ("code", "Use std::vector here"),
    ("code", "if (ready) { start(); }"),
    ("code", "Call flush() before closing."),
    ("code", "import numpy"),
    ("code", "from os import path"),
    ("long_digits", "Ring mig på 070-123 45 67."),
    ("long_digits", "Card number 4111 1111 1111 1111"),
    ("long_digits", "OCR-nummer 12345678901"),
    ("list_or_table", "Att göra:\n- mjölk\n- bröd"),
    ("list_or_table", "Steps:\n1. Open the app\n2. Sign in"),
    ("list_or_table", "| Namn | Tid |\n| Anna | 15.30 |"),
    ("list_or_table", "* first\n* second"),
    ("mixed_scripts", "Hej, 你好 betyder hej."),
    ("mixed_scripts", "Привет means hello"),
    ("mixed_scripts", "Shalom is שלום in Hebrew"),
    ("mixed_scripts", "Marhaba: مرحبا"),
]

# Plain sentences a small model handles: none may match any pattern.
PLAIN = [
    "Vi ses kl. 15.30 i rum 4.",
    "Ring mig om 5 minuter.",
    "Det kostar 1 500 kr.",
    "Ring 112 om det brinner.",
    "Temperaturen är -5 grader, t.ex. i Kiruna.",
    "Hej Åsa, café på söndag?",
    "Jag kommer att returnera boken (imorgon).",
    "Meeting at 10:30 in room 4B.",
    "Can you return my call (after lunch)?",
    "The class (starting Monday) is full.",
    "Import the file, see the attachment.",
    "It takes 3.5 s to load.",
    "Naïve résumé at the Zoë café!",
    "Tack :) Vi hörs ;)",
]


@pytest.mark.parametrize(("name", "text"), COMPLEX)
def test_each_default_pattern_detects_its_kind(name: str, text: str) -> None:
    assert name in DETECTOR.matches(text)
    decision = ROUTER.choose(text)
    assert decision.tier is Tier.DEEP
    assert f"pattern:{name}" in decision.reasons


def test_every_default_pattern_has_an_example() -> None:
    assert {name for name, _ in COMPLEX} == set(DEFAULT_COMPLEX_PATTERNS)


@pytest.mark.parametrize("text", PLAIN)
def test_plain_short_text_stays_fast(text: str) -> None:
    assert DETECTOR.matches(text) == []
    assert ROUTER.choose(text) == RouteDecision(Tier.FAST, ())


def test_long_text_goes_deep_with_its_length_as_the_reason() -> None:
    assert ROUTER.choose("a" * 130).tier is Tier.FAST
    assert ROUTER.choose("a" * 131) == RouteDecision(Tier.DEEP, ("length>130",))


def test_all_reasons_are_reported() -> None:
    text = "Se https://example.se och mejla anna@example.se. " + "Mer text. " * 10
    assert ROUTER.choose(text).reasons == ("length>130", "pattern:url", "pattern:email_address")


def test_patterns_and_length_limit_come_from_config() -> None:
    router = Router(RoutingConfig(fast_max_chars=10, complex_patterns={"ticket": r"\bJIRA-\d+\b"}))
    assert router.choose("Se JIRA-42") == RouteDecision(Tier.DEEP, ("pattern:ticket",))
    assert router.choose("https://x.se") == RouteDecision(Tier.DEEP, ("length>10",))
    assert router.choose("Hej") == RouteDecision(Tier.FAST, ())
    assert router.detector.names == ("ticket",)


FAST = RouteDecision(Tier.FAST)
DEEP = RouteDecision(Tier.DEEP, ("length>130",))


@pytest.mark.parametrize(
    ("decision", "open_tiers", "expected"),
    [
        (FAST, set(), [Tier.FAST, Tier.DEEP]),
        (DEEP, set(), [Tier.DEEP, Tier.FAST]),
        (FAST, {Tier.FAST}, [Tier.DEEP]),
        (DEEP, {Tier.DEEP}, [Tier.FAST]),
        (FAST, {Tier.DEEP}, [Tier.FAST]),
        (FAST, {Tier.FAST, Tier.DEEP}, [Tier.FAST]),
        (DEEP, {Tier.FAST, Tier.DEEP}, [Tier.DEEP]),
    ],
)
def test_failover_order_skips_open_circuits(
    decision: RouteDecision, open_tiers: set[Tier], expected: list[Tier]
) -> None:
    assert ROUTER.order(decision, open_tiers) == expected


@pytest.mark.parametrize("open_tiers", [set(), {Tier.FAST}, {Tier.FAST, Tier.DEEP}])
def test_without_failover_only_the_chosen_tier_is_tried(open_tiers: set[Tier]) -> None:
    router = Router(RoutingConfig(failover=False))
    assert router.order(FAST, open_tiers) == [Tier.FAST]


@pytest.mark.parametrize(
    ("decision", "open_tiers", "stalled", "expected"),
    [
        (FAST, set(), {Tier.FAST}, [Tier.DEEP, Tier.FAST]),
        (FAST, set(), {Tier.DEEP}, [Tier.FAST, Tier.DEEP]),
        (FAST, set(), {Tier.FAST, Tier.DEEP}, [Tier.FAST, Tier.DEEP]),
        (DEEP, set(), {Tier.DEEP}, [Tier.FAST, Tier.DEEP]),
        (FAST, {Tier.DEEP}, {Tier.FAST}, [Tier.FAST]),
        (FAST, {Tier.FAST}, {Tier.DEEP}, [Tier.DEEP]),
    ],
)
def test_a_stalled_tier_is_tried_after_the_other(
    decision: RouteDecision, open_tiers: set[Tier], stalled: set[Tier], expected: list[Tier]
) -> None:
    assert ROUTER.order(decision, open_tiers, stalled) == expected
