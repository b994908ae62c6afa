"""Circuit breaker: consecutive failures open it, consecutive successes close it."""

from __future__ import annotations

import pytest

from voicelane.sidecar.circuit import CircuitBreaker


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
