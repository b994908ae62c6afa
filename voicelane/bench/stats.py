"""Summaries of measured samples: percentiles, ratios and differences, defined once for every suite.

Pure functions over plain numbers, so every suite reports the same statistics the same way.
Percentiles use linear interpolation between closest ranks (the "inclusive" method), which
is defined for any non-empty sample; an empty sample has no percentiles (None).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0 ≤ q ≤ 1) of `values`, or None when there are none."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within [0, 1], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Iterable[float | None]) -> dict[str, Any]:
    """Count, mean, p50/p95/p99 and max of the values that exist (None counts as missing)."""
    present = [float(v) for v in values if v is not None]
    return {
        "count": len(present),
        "mean": round(statistics.fmean(present), 6) if present else None,
        "p50": _round(percentile(present, 0.50)),
        "p95": _round(percentile(present, 0.95)),
        "p99": _round(percentile(present, 0.99)),
        "max": _round(max(present)) if present else None,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the quotient is not finite."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    value = numerator / denominator
    return round(value, 4) if math.isfinite(value) else None


def per_item(total: float | None, count: int) -> float | None:
    """total / count kept to nanosecond-scale precision (CPU seconds per request), or None if count is 0."""
    if total is None or count <= 0:
        return None
    return round(total / count, 9)


def difference(after: float | None, before: float | None) -> float | None:
    """after minus before, or None when either is missing."""
    if after is None or before is None:
        return None
    return round(after - before, 6)


def counter_delta(before: dict[str, Any], after: dict[str, Any], key: str) -> int:
    """How much a counter in a stats document grew between two readings (missing counts as 0)."""
    return int(after.get(key, 0) or 0) - int(before.get(key, 0) or 0)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
