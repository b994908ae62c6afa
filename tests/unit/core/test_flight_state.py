"""A flight's state: the typed events its work records, seen alike by every reader of the flight."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from voicelane.core.broadcast import Broadcast
from voicelane.core.flight_state import Dispatched, Done, FirstToken, FlightState, WorkFailed
from voicelane.core.refusals import Failed, Failure
from voicelane.core.singleflight import SingleFlight


def test_the_answering_tier_is_known_from_the_first_token_and_kept_once_done() -> None:
    state = FlightState()
    assert (state.tier, state.dispatched_at) == (None, None)
    state.record(Dispatched(1.0, runs_on="fast"))
    assert (state.tier, state.dispatched_at) == (None, 1.0)
    state.record(FirstToken(1.2, "fast"))
    assert state.tier == "fast"
    state.record(Done(1.9, "fast"))
    assert state.tier == "fast"
    assert [type(event) for event in state.events] == [Dispatched, FirstToken, Done]


def test_a_failure_is_an_event_with_its_reason() -> None:
    state = FlightState()
    state.record(Dispatched(1.0))
    state.record(WorkFailed(3.0, Failed(Failure.UPSTREAM_TIMEOUT, "no first token in 2 s")))
    failed = state.latest(WorkFailed)
    assert failed is not None
    assert failed.error.reason is Failure.UPSTREAM_TIMEOUT
    assert state.tier is None
    assert state.latest(Done) is None


async def test_a_joiner_sees_the_state_of_the_flight_it_joined() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    release = asyncio.Event()

    def producer(state: FlightState) -> Callable[[Broadcast[str]], Awaitable[str]]:
        async def produce(out: Broadcast[str]) -> str:
            state.record(FirstToken(0.0, "deep"))
            await release.wait()
            return "ok"

        return produce

    leader_state = FlightState()
    leader = flights.join("k", producer(leader_state), state=leader_state)
    joiner = flights.join("k", producer(FlightState()), state=FlightState())
    assert joiner.shared
    await asyncio.sleep(0)
    assert joiner.state is leader.state is leader_state
    assert joiner.state.tier == "deep"
    release.set()
    assert await joiner.result() == await leader.result() == "ok"


async def test_without_coalescing_each_join_is_a_flight_of_its_own_with_its_own_state() -> None:
    flights: SingleFlight[str, str] = SingleFlight(coalescing=False)
    tiers = iter(["fast", "deep"])

    async def produce(out: Broadcast[str]) -> str:
        return "ok"

    first, second = FlightState(), FlightState()
    one = flights.join("k", produce, state=first)
    other = flights.join("k", produce, state=second)
    assert not other.shared
    assert "k" not in flights
    one.state.record(FirstToken(0.0, next(tiers)))
    other.state.record(FirstToken(0.0, next(tiers)))
    assert (first.tier, second.tier) == ("fast", "deep")
    assert await one.result() == await other.result() == "ok"
    assert flights.stats()["leaders"] == 2
    assert "k" not in flights  # nor shared after it finished
