"""A token bucket: how many requests may start now, and how long until the next may.

One bucket serves every priority, but not equally: lower priorities give way first as
it drains. Priority 1 may not take the last quarter of the burst, priority 2 and below
not the last half (`tokens_kept_from`), so a flood of background work leaves tokens
that only chats (priority 0) can take, and those refill before the flood may take any
again. Within what is left the flood still gets the whole sustained rate.

Written here rather than taken from a rate-limiting library because the sidecar needs
exactly these things, which those libraries bundle with much more: a non-blocking
`try_acquire` that can leave tokens behind, the wait until the next token (for
`Retry-After`), and an injected clock so tests drive time instead of sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# Float refill can land a hair under a whole token; a client pacing exactly at the
# sustained rate must not be refused for that.
TOLERANCE = 1e-9
# The share of the burst each priority below 0 must leave in the bucket; the lowest listed
# share holds for every priority below it.
KEPT_SHARE_BY_PRIORITY = {1: 0.25, 2: 0.5}


def tokens_kept_from(priority: int, burst: int) -> int:
    """Tokens that work of `priority` must leave in a bucket of `burst` (0 for priority 0).

    Never the whole bucket: at least one token is left for every priority to take.
    """
    if priority <= 0:
        return 0
    share = KEPT_SHARE_BY_PRIORITY.get(priority, KEPT_SHARE_BY_PRIORITY[max(KEPT_SHARE_BY_PRIORITY)])
    return min(burst - 1, math.ceil(burst * share))


class TokenBucket:
    """Holds up to `burst` tokens, refilled continuously at `rate_per_s`; starts full."""

    def __init__(self, burst: int, rate_per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        _validate(burst, rate_per_s)
        self._burst = burst
        self._rate = rate_per_s
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    @property
    def burst(self) -> int:
        return self._burst

    @property
    def rate_per_s(self) -> float:
        return self._rate

    @property
    def tokens(self) -> float:
        """Tokens available now (fractional while refilling)."""
        self._refill()
        return self._tokens

    def try_acquire(self, n: int = 1, *, keep: int = 0) -> bool:
        """Take `n` tokens if they are available with `keep` more left behind; otherwise take none."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if keep < 0:
            raise ValueError(f"keep must not be negative, got {keep}")
        self._refill()
        if self._tokens + TOLERANCE >= n + keep:
            self._tokens = max(0.0, self._tokens - n)
            return True
        return False

    def retry_after_s(self, *, keep: int = 0) -> float:
        """Seconds until one token is available with `keep` left behind (0.0 if it is now)."""
        self._refill()
        return max(0.0, (1.0 + keep - TOLERANCE - self._tokens) / self._rate)

    def reconfigure(self, burst: int, rate_per_s: float) -> None:
        """Change size and rate live; tokens already saved are kept, up to the new size."""
        _validate(burst, rate_per_s)
        self._refill()
        self._burst = burst
        self._rate = rate_per_s
        self._tokens = min(self._tokens, float(burst))

    def _refill(self) -> None:
        now = self._clock()
        # A clock that steps back (it should not) must not drain the bucket.
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self._burst), self._tokens + elapsed * self._rate)
        self._updated = max(now, self._updated)


def _validate(burst: int, rate_per_s: float) -> None:
    if burst < 1:
        raise ValueError(f"burst must be at least 1, got {burst}")
    if not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
