"""Single-flight: one piece of work per key, shared from the first chunk, owned by its readers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from voicelane.core.broadcast import Broadcast
from voicelane.core.singleflight import Flight, FlightCancelled, SingleFlight


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Producer:
    """Publishes the given chunks, each after its gate opens (all open unless `gated`), and counts runs."""

    def __init__(self, chunks: list[str], *, gated: bool = False, error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error
        self.runs = 0
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()
        self.gates = [asyncio.Event() for _ in chunks]
        if not gated:
            for gate in self.gates:
                gate.set()

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()

    async def __call__(self, out: Broadcast[str]) -> str:
        self.runs += 1
        self.started.set()
        try:
            for chunk, gate in zip(self.chunks, self.gates, strict=True):
                await gate.wait()
                out.publish(chunk)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        if self.error is not None:
            raise self.error
        return "".join(self.chunks)


async def read_all(flight: Flight[str, str]) -> tuple[list[str], str]:
    async with flight.subscribe() as stream:
        chunks = [chunk async for chunk in stream]
    return chunks, await flight.result()


@pytest.fixture(autouse=True)
async def no_task_left_behind() -> AsyncIterator[None]:
    yield
    for _ in range(5):  # let cancelled work finish unwinding
        await asyncio.sleep(0)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_fifty_concurrent_joins_run_the_producer_once() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    producer = Producer(["Hej ", "där", "!"], gated=True)
    joined = [flights.join("k", producer) for _ in range(50)]
    readers = [asyncio.create_task(read_all(flight)) for flight in joined]
    await producer.started.wait()
    producer.open_all()
    results = await asyncio.gather(*readers)
    assert producer.runs == 1
    assert all(result == (["Hej ", "där", "!"], "Hej där!") for result in results)
    assert [flight.shared for flight in joined] == [False] + [True] * 49
    assert flights.stats()["leaders"] == 1
    assert flights.stats()["joiners"] == 49


async def test_different_keys_do_not_share() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    first, second = Producer(["a"]), Producer(["b"])
    results = await asyncio.gather(read_all(flights.join("a", first)), read_all(flights.join("b", second)))
    assert results == [(["a"], "a"), (["b"], "b")]
    assert first.runs == second.runs == 1


async def test_a_late_joiner_gets_the_stream_from_the_first_chunk() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    producer = Producer(["one ", "two ", "three"], gated=True)
    leader = asyncio.create_task(read_all(flights.join("k", producer)))
    producer.gates[0].set()
    producer.gates[1].set()
    await asyncio.sleep(0.01)
    assert flights.get("k") is not None
    assert flights.get("k").chunks == ["one ", "two "]  # type: ignore[union-attr]
    joiner = asyncio.create_task(read_all(flights.join("k", producer)))
    producer.gates[2].set()
    assert await joiner == await leader == (["one ", "two ", "three"], "one two three")


async def test_a_joiner_gets_the_full_result_when_the_leader_disconnects() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    producer = Producer(["first ", "second"], gated=True)
    leader = asyncio.create_task(read_all(flights.join("k", producer)))
    joiner = asyncio.create_task(read_all(flights.join("k", producer)))
    producer.gates[0].set()
    await asyncio.sleep(0.01)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    producer.gates[1].set()
    assert await joiner == (["first ", "second"], "first second")
    assert not producer.cancelled.is_set()
    assert flights.stats()["cancellations"] == 0


async def test_work_is_cancelled_when_every_reader_leaves() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    producer = Producer(["never"], gated=True)
    readers = [asyncio.create_task(read_all(flights.join("k", producer))) for _ in range(3)]
    await producer.started.wait()
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.wait_for(producer.cancelled.wait(), timeout=5)
    assert flights.stats()["cancellations"] == 1
    # The cancelled work is forgotten: the next request starts afresh.
    retry = Producer(["again"])
    again = flights.join("k", retry)
    assert not again.shared
    assert await read_all(again) == (["again"], "again")


async def test_releasing_the_last_hold_before_the_work_starts_settles_it_as_cancelled() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    producer = Producer(["x"])
    flight = flights.join("k", producer)
    flight.release()
    flight.release()  # idempotent
    with pytest.raises(FlightCancelled):
        await flight.result()
    assert producer.runs == 0
    assert "k" not in flights


async def test_a_caller_that_has_not_subscribed_yet_keeps_the_work_alive() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    producer = Producer(["a", "b"], gated=True)
    leader = flights.join("k", producer)  # admitted, response not started yet
    joiner = asyncio.create_task(read_all(flights.join("k", producer)))
    producer.gates[0].set()
    await asyncio.sleep(0.01)
    joiner.cancel()
    await asyncio.gather(joiner, return_exceptions=True)
    producer.gates[1].set()
    assert await read_all(leader) == (["a", "b"], "ab")
    assert not producer.cancelled.is_set()


async def test_errors_are_shared_and_not_kept() -> None:
    clock = FakeClock()
    flights: SingleFlight[str, str] = SingleFlight(window_s=2.0, clock=clock)
    error = RuntimeError("upstream down")
    failing = Producer(["partial "], gated=True, error=error)
    readers = [asyncio.create_task(read_all(flights.join("k", failing))) for _ in range(3)]
    await failing.started.wait()
    failing.open_all()
    outcomes = await asyncio.gather(*readers, return_exceptions=True)
    assert outcomes == [error, error, error]
    assert failing.runs == 1
    # Same instant, well inside the window: still a fresh flight.
    healthy = Producer(["ok"])
    retry = flights.join("k", healthy)
    assert not retry.shared
    assert await read_all(retry) == (["ok"], "ok")


async def test_result_is_shared_for_the_window_after_success_then_work_starts_afresh() -> None:
    clock = FakeClock()
    flights: SingleFlight[str, str] = SingleFlight(window_s=2.0, clock=clock)
    first = Producer(["svar"])
    assert await read_all(flights.join("k", first)) == (["svar"], "svar")

    clock.now += 1.9
    within = flights.join("k", Producer(["other"]))
    assert within.shared
    assert await read_all(within) == (["svar"], "svar")

    clock.now += 0.2
    later = Producer(["nytt"])
    after = flights.join("k", later)
    assert not after.shared
    assert await read_all(after) == (["nytt"], "nytt")
    assert first.runs == later.runs == 1


async def test_a_zero_window_shares_only_while_running() -> None:
    flights: SingleFlight[str, str] = SingleFlight(window_s=0, clock=FakeClock())
    await read_all(flights.join("k", Producer(["a"])))
    assert not flights.join("k", Producer(["b"])).shared
    await flights.close()


async def test_a_shrunken_window_applies_to_finished_flights() -> None:
    clock = FakeClock()
    flights: SingleFlight[str, str] = SingleFlight(window_s=10.0, clock=clock)
    await read_all(flights.join("k", Producer(["a"])))
    clock.now += 1.0
    flights.window_s = 0.5
    assert "k" not in flights
    assert flights.stats()["recent"] == 0


async def test_the_result_is_ready_once_the_stream_has_ended() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    flight = flights.join("k", Producer(["a", "b"]))
    async with flight.subscribe() as stream:
        assert [chunk async for chunk in stream] == ["a", "b"]
    assert flight.done
    assert await asyncio.wait_for(flight.result(), timeout=0.01) == "ab"


async def test_close_cancels_running_work_and_tells_its_readers() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    producer = Producer(["never"], gated=True)
    reader = asyncio.create_task(read_all(flights.join("k", producer)))
    await producer.started.wait()
    await flights.close()
    with pytest.raises(FlightCancelled):
        await reader
    assert producer.cancelled.is_set()
    assert flights.stats()["running"] == 0
