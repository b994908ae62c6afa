"""What the lane reports as it decides, for a shell to count: the observer it calls.

The lane and the core keep no metrics of their own. They tell an observer what happened
(a cache look-up, a coalesced request, an admission or refusal, a dispatch, a tier's first
token, a finished or failed call, a failover, a pressure check) and the shell turns that into
its metrics (the sidecar's Prometheus families: voicelane.sidecar.metrics).
"""

from __future__ import annotations

from typing import Protocol

from voicelane.core.refusals import Refused


class LaneObserver(Protocol):
    def looked_up(self, *, hit: bool) -> None:
        """The result cache was asked for a finished text."""

    def coalesced(self, *, joined: bool) -> None:
        """A request that missed the cache led a new flight (False) or joined a running one (True)."""

    def admitted(self, priority: int) -> None:
        """New model work of `priority` passed the guardian and the rate limit."""

    def refused(self, refusal: Refused) -> None:
        """New model work was refused: at the door, or by a full waiting room."""

    def dispatched(self, priority: int, waited_s: float) -> None:
        """Model work got its slot after waiting `waited_s`."""

    def first_token(self, tier: str, seconds: float) -> None:
        """A call to `tier` sent its first token `seconds` after it was made."""

    def call_done(self, tier: str) -> None:
        """A call to `tier` ended with a whole answer."""

    def call_failed(self, tier: str, kind: str) -> None:
        """A call to `tier` failed; `kind` is the upstream error's kind."""

    def failed_over(self, from_tier: str, to_tier: str) -> None:
        """A request's call moved from one tier to the other."""

    def pressure_checked(self, *, failed: bool) -> None:
        """The guardian sampled pressure once; `failed` when the check counted against admission."""
