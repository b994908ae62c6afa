"""What has happened to one flight's work, as typed events: dispatched, first token, done, failed.

Every reader of a flight (its leader and each joiner) sees the same state, so what a request
reports about its work (the tier that answers it, when its model slot was granted) is read
from the flight it holds, never looked up by a key two flights may share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from voicelane.core.refusals import LaneError


@dataclass(frozen=True)
class Dispatched:
    """The work got its model slot (`runs_on`: the tier whose slot it holds, if slots are counted)."""

    at: float
    runs_on: str | None = None


@dataclass(frozen=True)
class FirstToken:
    """The first token came, from `tier` (or the passthrough, which answers without a model)."""

    at: float
    tier: str


@dataclass(frozen=True)
class Done:
    """The work finished with a whole answer from `tier`."""

    at: float
    tier: str


@dataclass(frozen=True)
class WorkFailed:
    """The work ended without a whole answer, for the reason `error` gives."""

    at: float
    error: LaneError


FlightEvent = Dispatched | FirstToken | Done | WorkFailed
E = TypeVar("E", Dispatched, FirstToken, Done, WorkFailed)


class FlightState:
    """The events of one flight's work in the order they happened; the producer records, readers ask."""

    def __init__(self) -> None:
        self._events: list[FlightEvent] = []

    def record(self, event: FlightEvent) -> None:
        self._events.append(event)

    @property
    def events(self) -> tuple[FlightEvent, ...]:
        return tuple(self._events)

    def latest(self, kind: type[E]) -> E | None:
        """The most recent event of `kind`, or None if there was none."""
        for event in reversed(self._events):
            if isinstance(event, kind):
                return event
        return None

    @property
    def dispatched_at(self) -> float | None:
        dispatched = self.latest(Dispatched)
        return None if dispatched is None else dispatched.at

    @property
    def tier(self) -> str | None:
        """The tier answering the work: known from its first token on, kept once it is done."""
        for event in reversed(self._events):
            if isinstance(event, Done | FirstToken):
                return event.tier
        return None
