"""How a tier is judged: consecutive failures open its circuit, consecutive successes close it, a
health check cannot clear what real calls found, and a call overdue for its first token stalls it."""

from __future__ import annotations

import pytest

from voicelane.core.circuit import MIN_PATIENCE_S, STALL_FACTOR, CircuitBreaker, FirstTokenWatch


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_three_consecutive_failures_open_the_circuit() -> None:
    clock = FakeClock()
    circuit = CircuitBreaker(clock=clock)
    circuit.record_failure()
    circuit.record_failure()
    assert circuit.state == "closed"
    assert not circuit.is_open
    clock.now = 60.0
    circuit.record_failure()
    assert circuit.state == "open"
    assert circuit.is_open
    assert circuit.opened_at == 60.0
    assert circuit.times_opened == 1


def test_a_success_in_between_resets_the_failure_count() -> None:
    circuit = CircuitBreaker(clock=FakeClock())
    for _ in range(5):
        circuit.record_failure()
        circuit.record_failure()
        circuit.record_success()
    assert circuit.state == "closed"
    assert circuit.times_opened == 0


def test_one_success_closes_an_open_circuit() -> None:
    circuit = CircuitBreaker(clock=FakeClock())
    for _ in range(3):
        circuit.record_failure()
    circuit.record_failure()  # further failures keep it open without reopening
    assert circuit.times_opened == 1
    circuit.record_success()
    assert circuit.state == "closed"
    assert circuit.opened_at is None
    assert circuit.times_closed == 1


def test_closing_needs_consecutive_successes_when_configured() -> None:
    circuit = CircuitBreaker(failures_to_open=1, successes_to_close=2, clock=FakeClock())
    circuit.record_failure()
    assert circuit.is_open
    circuit.record_success()
    circuit.record_failure()  # breaks the streak
    circuit.record_success()
    assert circuit.is_open
    circuit.record_success()
    assert not circuit.is_open


def test_after_closing_it_takes_a_full_run_of_failures_to_reopen() -> None:
    circuit = CircuitBreaker(clock=FakeClock())
    for _ in range(3):
        circuit.record_failure()
    circuit.record_success()
    circuit.record_failure()
    circuit.record_failure()
    assert circuit.state == "closed"
    circuit.record_failure()
    assert circuit.state == "open"
    assert circuit.snapshot()["times_opened"] == 2


def test_thresholds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CircuitBreaker(failures_to_open=0)


def test_health_checks_between_failed_calls_do_not_reset_their_streak() -> None:
    # A stuck model runner: every chat fails while the status endpoint keeps answering.
    circuit = CircuitBreaker(clock=FakeClock())
    for _ in range(3):
        circuit.record_failure()
        circuit.record_probe(True)
        circuit.record_probe(True)
    assert circuit.is_open
    assert circuit.needs_real_probe
    circuit.record_probe(True)  # still cannot close it
    assert circuit.is_open
    circuit.record_success()  # a real generation answered
    assert not circuit.is_open
    assert not circuit.needs_real_probe


def test_health_checks_alone_open_and_close_a_circuit_when_no_real_call_failed() -> None:
    # A server that is down answers nothing, its status endpoint included; when it is back, that is enough.
    circuit = CircuitBreaker(clock=FakeClock())
    for _ in range(3):
        circuit.record_probe(False)
    assert circuit.is_open
    assert not circuit.needs_real_probe
    circuit.record_probe(True)
    assert not circuit.is_open


def test_a_failed_health_check_counts_towards_the_streak_of_failed_calls() -> None:
    circuit = CircuitBreaker(clock=FakeClock())
    circuit.record_failure()
    circuit.record_failure()
    circuit.record_probe(False)
    assert circuit.is_open
    assert circuit.snapshot()["calls_failing"] is True


def test_an_answered_call_lets_health_checks_count_again() -> None:
    circuit = CircuitBreaker(clock=FakeClock())
    circuit.record_failure()
    circuit.record_success()
    circuit.record_probe(False)
    circuit.record_probe(False)
    circuit.record_probe(True)  # counts: no real call is failing
    circuit.record_probe(False)
    circuit.record_probe(False)
    assert not circuit.is_open


def test_patience_is_the_deadline_until_the_tier_has_a_usual_first_token_time() -> None:
    watch = FirstTokenWatch(clock=FakeClock())
    assert watch.patience_s(deadline_s=2.7, timeout_s=10.0) == 2.7
    for _ in range(3):
        watch.first_token(0.05)
    # Several times the usual time, never under the floor, never past the deadline.
    assert watch.patience_s(deadline_s=2.7, timeout_s=10.0) == MIN_PATIENCE_S
    for _ in range(20):
        watch.first_token(0.5)
    assert watch.patience_s(deadline_s=2.7, timeout_s=10.0) == pytest.approx(STALL_FACTOR * 0.5, rel=0.05)
    for _ in range(20):
        watch.first_token(2.0)
    assert watch.patience_s(deadline_s=2.7, timeout_s=10.0) == 2.7


def test_no_patience_when_the_first_token_timeout_comes_first() -> None:
    watch = FirstTokenWatch(clock=FakeClock())
    assert watch.patience_s(deadline_s=2.7, timeout_s=2.7) is None
    assert watch.patience_s(deadline_s=2.7, timeout_s=1.0) is None


def test_first_tokens_of_other_calls_do_not_shape_the_usual_time() -> None:
    watch = FirstTokenWatch(clock=FakeClock())
    for _ in range(5):
        watch.first_token(8.0, typical=False)
    assert watch.usual_s is None


def test_an_overdue_call_stalls_the_tier_until_any_first_token() -> None:
    clock = FakeClock()
    watch = FirstTokenWatch(clock=clock)
    assert watch.overdue(started_at=clock.now - 3.0)
    assert watch.stalled
    assert watch.overdue(started_at=clock.now - 1.0)  # still stalled; counted once
    assert watch.times_stalled == 1
    clock.now += 5
    watch.first_token(0.1, typical=False)
    assert not watch.stalled


def test_an_overdue_call_does_not_stall_a_tier_that_answered_since_it_started() -> None:
    clock = FakeClock()
    watch = FirstTokenWatch(clock=clock)
    started = clock.now
    clock.now += 0.5
    watch.first_token(0.2)  # another call on the tier answered after this one started
    clock.now += 2.5
    assert not watch.overdue(started_at=started)
    assert not watch.stalled
