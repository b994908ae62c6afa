"""The statistics every suite reports: percentiles, summaries and ratios."""

from __future__ import annotations

import pytest

from voicelane.bench.stats import counter_delta, difference, per_item, percentile, ratio, summarize


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 4.0
    assert percentile(values, 0.5) == pytest.approx(2.5)
    assert percentile([7.0], 0.99) == 7.0


def test_percentile_of_nothing_is_none_and_q_is_checked() -> None:
    assert percentile([], 0.5) is None
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 1.5)


def test_summary_skips_missing_values() -> None:
    summary = summarize([1.0, None, 3.0])
    assert summary["count"] == 2
    assert summary["p50"] == pytest.approx(2.0)
    assert summary["max"] == 3.0
    assert summarize([])["p99"] is None


def test_ratio_is_none_rather_than_infinite_or_undefined() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 2.0) is None
    assert ratio(2.0, None) is None


def test_difference_and_counter_delta() -> None:
    assert difference(0.5, 0.2) == pytest.approx(0.3)
    assert difference(None, 0.2) is None
    assert counter_delta({"syntheses": 20}, {"syntheses": 21}, "syntheses") == 1
    assert counter_delta({}, {"hits": 3}, "hits") == 3


def test_per_item_keeps_small_figures() -> None:
    assert per_item(0.0011, 3) == pytest.approx(0.000366667, abs=1e-9)
    assert per_item(1.0, 0) is None
