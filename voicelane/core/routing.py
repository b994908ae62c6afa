"""Fast/deep routing: which model tier answers a text, and in what order tiers are tried.

Short plain text goes to the fast tier; long text, or text with anything a small model
tends to mangle (URLs, code, long digit runs, lists and tables, mixed scripts: see
config.DEFAULT_COMPLEX_PATTERNS), goes to the deep tier. Failover order takes the
tiers' circuits, and tiers that have stalled on a first token, into account.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Tier(StrEnum):
    FAST = "fast"
    DEEP = "deep"


class RoutingSettings(Protocol):
    """What the router reads from a configuration (the sidecar's RoutingConfig)."""

    @property
    def fast_max_chars(self) -> int: ...
    @property
    def complex_patterns(self) -> Mapping[str, str]: ...
    @property
    def failover(self) -> bool: ...


def text_length(text: str) -> int:
    """Length as the length rules count it: NFC characters with whitespace runs counted once.

    Shared with the priority rules (sidecar/classify.py) so that "short" means the same thing
    for priority and tier.
    """
    return len(" ".join(unicodedata.normalize("NFC", text).split()))


class ComplexityDetector:
    """Named regular expressions; a text is complex when any of them matches."""

    def __init__(self, patterns: Mapping[str, str]) -> None:
        self._patterns = [(name, re.compile(pattern)) for name, pattern in patterns.items()]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._patterns)

    def matches(self, text: str) -> list[str]:
        """Names of the patterns found in `text`, in configuration order."""
        return [name for name, pattern in self._patterns if pattern.search(text)]


@dataclass(frozen=True)
class RouteDecision:
    """The chosen tier and why: e.g. ("length>130", "pattern:url"); empty for plain short text."""

    tier: Tier
    reasons: tuple[str, ...] = ()


class Router:
    def __init__(self, config: RoutingSettings) -> None:
        self.config = config
        self.detector = ComplexityDetector(config.complex_patterns)

    def choose(self, text: str) -> RouteDecision:
        """Fast when the text is at most fast_max_chars long and no pattern matches; deep otherwise."""
        reasons: list[str] = []
        if text_length(text) > self.config.fast_max_chars:
            reasons.append(f"length>{self.config.fast_max_chars}")
        reasons.extend(f"pattern:{name}" for name in self.detector.matches(text))
        return RouteDecision(Tier.DEEP if reasons else Tier.FAST, tuple(reasons))

    def order(
        self, decision: RouteDecision, open_tiers: set[Tier], stalled_tiers: frozenset[Tier] | set[Tier] = frozenset()
    ) -> list[Tier]:
        """Tiers to try in turn: the chosen one, then the other one as failover.

        A tier whose circuit is open is skipped, unless both are open: then the chosen
        tier is still tried (its circuit may be stale, and failing fast is no worse than
        refusing). A stalled tier (a call on it is overdue for its first token) is tried
        after the other one rather than first. Without failover only the chosen tier is tried.
        """
        primary = decision.tier
        if not self.config.failover:
            return [primary]
        candidates = [primary, Tier.DEEP if primary is Tier.FAST else Tier.FAST]
        closed = [tier for tier in candidates if tier not in open_tiers]
        # A stable sort: the chosen tier keeps its place unless it stalled and the other did not.
        return sorted(closed, key=lambda tier: tier in stalled_tiers) or [primary]
