"""The token bucket: burst, sustained rate, refill, Retry-After and the tokens lower priorities
leave for chats, under a driven clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicelane.core.ratelimit import TokenBucket, tokens_kept_from


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_full_bucket_accepts_the_burst_then_refuses() -> None:
    bucket = TokenBucket(8, 4.0, clock=FakeClock())
    assert [bucket.try_acquire() for _ in range(9)] == [True] * 8 + [False]


def test_retry_after_is_the_time_until_one_token() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2, 4.0, clock=clock)
    assert bucket.retry_after_s() == 0.0
    bucket.try_acquire(2)
    assert bucket.retry_after_s() == pytest.approx(0.25)
    clock.advance(0.1)
    assert bucket.retry_after_s() == pytest.approx(0.15)
    clock.advance(0.15)
    assert bucket.try_acquire()


def test_refill_recovers_after_the_rate_allows() -> None:
    clock = FakeClock()
    bucket = TokenBucket(3, 0.5, clock=clock)
    assert all(bucket.try_acquire() for _ in range(3))
    clock.advance(1.9)
    assert not bucket.try_acquire()
    clock.advance(0.1)
    assert bucket.try_acquire()
    assert not bucket.try_acquire()


def test_a_refused_multi_token_request_takes_nothing() -> None:
    bucket = TokenBucket(3, 1.0, clock=FakeClock())
    bucket.try_acquire(2)
    assert not bucket.try_acquire(2)
    assert bucket.tokens == pytest.approx(1.0)


def test_reconfigure_keeps_saved_tokens_up_to_the_new_size() -> None:
    clock = FakeClock()
    bucket = TokenBucket(8, 4.0, clock=clock)
    bucket.reconfigure(2, 1.0)
    assert bucket.tokens == 2.0
    bucket.try_acquire(2)
    bucket.reconfigure(10, 1.0)
    clock.advance(3)
    assert bucket.tokens == pytest.approx(3.0)


@pytest.mark.parametrize(("burst", "rate", "n"), [(0, 1.0, 1), (1, 0.0, 1), (1, -1.0, 1), (1, 1.0, 0)])
def test_invalid_arguments_are_refused(burst: int, rate: float, n: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(burst, rate).try_acquire(n)


# ----- properties -------------------------------------------------------------------------------

bursts = st.integers(min_value=1, max_value=50)
rates = st.floats(min_value=0.05, max_value=100.0, allow_nan=False, allow_infinity=False)
gaps = st.lists(st.floats(min_value=0.0, max_value=5.0, allow_nan=False), min_size=1, max_size=200)


@given(burst=bursts, rate=rates, gaps=gaps)
def test_acceptances_never_exceed_burst_plus_rate_times_elapsed(burst: int, rate: float, gaps: list[float]) -> None:
    clock = FakeClock()
    bucket = TokenBucket(burst, rate, clock=clock)
    start = clock.now
    accepted = 0
    for gap in gaps:
        clock.advance(gap)
        accepted += bucket.try_acquire()
        assert accepted <= math.floor(burst + rate * (clock.now - start) + 1e-6)


@given(burst=bursts, rate=rates, steps=st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(1, 5)), max_size=200))
def test_tokens_stay_between_zero_and_burst(burst: int, rate: float, steps: list[tuple[float, int]]) -> None:
    clock = FakeClock()
    bucket = TokenBucket(burst, rate, clock=clock)
    for gap, n in steps:
        clock.advance(gap)
        bucket.try_acquire(n)
        assert 0.0 <= bucket.tokens <= burst


@given(burst=bursts, rate=rates, taken=st.integers(0, 50), idle=st.floats(0.0, 10_000.0))
def test_after_idle_time_the_bucket_refills_to_at_most_burst(burst: int, rate: float, taken: int, idle: float) -> None:
    clock = FakeClock()
    bucket = TokenBucket(burst, rate, clock=clock)
    for _ in range(taken):
        bucket.try_acquire()
    left = bucket.tokens
    clock.advance(idle)
    assert bucket.tokens == pytest.approx(min(burst, left + rate * idle), abs=1e-6)
    assert bucket.tokens <= burst


@given(
    burst=bursts,
    rate=rates,
    slack=st.floats(min_value=1.0, max_value=4.0),
    arrivals=st.integers(min_value=1, max_value=200),
)
def test_steady_arrivals_at_or_under_the_rate_are_all_accepted_after_the_burst(
    burst: int, rate: float, slack: float, arrivals: int
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(burst, rate, clock=clock)
    while bucket.try_acquire():
        pass
    interval = slack / rate  # slack 1.0 is exactly the sustained rate
    for _ in range(arrivals):
        clock.advance(interval)
        assert bucket.try_acquire()


@pytest.mark.parametrize(
    ("burst", "kept"),
    [(1, [0, 0, 0, 0]), (2, [0, 1, 1, 1]), (4, [0, 1, 2, 2]), (8, [0, 2, 4, 4]), (100, [0, 25, 50, 50])],
)
def test_lower_priorities_leave_a_quarter_and_a_half_of_the_burst(burst: int, kept: list[int]) -> None:
    assert [tokens_kept_from(priority, burst) for priority in range(4)] == kept


def test_a_request_that_must_leave_tokens_behind_waits_for_them() -> None:
    clock = FakeClock()
    bucket = TokenBucket(8, 4.0, clock=clock)
    assert [bucket.try_acquire(keep=2) for _ in range(7)] == [True] * 6 + [False]
    assert bucket.retry_after_s(keep=2) == pytest.approx(0.25)
    assert bucket.retry_after_s() == 0.0
    # What was kept is there for the others.
    assert bucket.try_acquire()
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    with pytest.raises(ValueError, match="keep"):
        bucket.try_acquire(keep=-1)


@given(
    burst=st.integers(min_value=2, max_value=1000),
    rate=rates,
    flood=st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 2), st.integers(1, 20)), max_size=100),
)
def test_a_flood_of_lower_priorities_never_refuses_chats_at_the_sustained_rate(
    burst: int, rate: float, flood: list[tuple[float, int, int]]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(burst, rate, clock=clock)
    for gap, priority, attempts in flood:
        # However hard the flood tries between two chats, a chat a whole token's time later gets in.
        clock.advance(gap)
        for _ in range(attempts):
            bucket.try_acquire(keep=tokens_kept_from(priority, burst))
        clock.advance(1.0 / rate)
        assert bucket.try_acquire(keep=tokens_kept_from(0, burst))


@given(burst=st.integers(min_value=1, max_value=100), rate=rates, priority=st.integers(1, 3))
def test_a_flood_alone_still_gets_the_sustained_rate(burst: int, rate: float, priority: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(burst, rate, clock=clock)
    keep = tokens_kept_from(priority, burst)
    accepted = 0
    steps = 200
    for _ in range(steps):
        clock.advance(0.25 / rate)  # four attempts per token's time
        accepted += bucket.try_acquire(keep=keep)
    elapsed = steps * 0.25 / rate
    assert accepted >= math.floor(burst - keep + rate * elapsed) - 1
