"""The scheduler's one test of "nothing above is busy": model work, waiting work and work that
holds no model slot (speech) all keep background work back, and waiters learn when it may go."""

from __future__ import annotations

import asyncio

import pytest

from voicelane.core.scheduler import PriorityScheduler, SchedulerCore, TicketState
from voicelane.sidecar.config import SchedulerConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_speech_of_a_chat_holds_back_a_segment_until_it_ends() -> None:
    core = SchedulerCore()
    core.occupy(0)  # a chat's reply is being spoken; its model call is over
    segment = core.offer(2)
    assert segment.state is TicketState.WAITING
    assert not core.background_idle
    assert core.vacate(0) == [segment]
    assert segment.state is TicketState.RUNNING


def test_background_is_idle_only_when_no_level_above_it_runs_waits_or_speaks() -> None:
    core = SchedulerCore(max_running_per_priority=1)
    assert core.background_idle
    first = core.offer(1)
    second = core.offer(1)  # waits behind the first at its level
    assert not core.background_idle
    core.release(first)
    assert not core.background_idle  # the second runs now
    core.release(second)
    assert core.background_idle
    core.occupy(2)  # speech of background work itself holds nothing back from background work
    assert core.background_idle
    assert core.idle_above(3) is False
    core.vacate(2)
    assert core.idle_above(3)


def test_without_idle_only_levels_nothing_is_background_work_to_hold() -> None:
    core = SchedulerCore(idle_only=())
    core.occupy(0)
    assert core.background_idle


def test_the_quiet_period_counts_from_the_end_of_the_speech() -> None:
    clock = FakeClock()
    core = SchedulerCore(idle_only_quiet_s=2.0, clock=clock)
    core.occupy(0)
    segment = core.offer(2)
    clock.advance(5.0)
    assert core.vacate(0) == []
    assert core.quiet_remaining_s() == pytest.approx(2.0)
    clock.advance(2.0)
    assert core.poll() == [segment]


def test_vacating_what_was_never_occupied_is_an_error() -> None:
    core = SchedulerCore()
    with pytest.raises(ValueError, match="nothing occupies priority 0"):
        core.vacate(0)
    with pytest.raises(ValueError, match="priority"):
        core.occupy(-1)


async def test_a_background_waiter_goes_once_speech_and_model_work_above_it_are_over() -> None:
    scheduler = PriorityScheduler(SchedulerConfig())
    chat_done, speech_done = asyncio.Event(), asyncio.Event()

    async def chat() -> None:
        async with scheduler.slot(0, "fast"):
            await chat_done.wait()

    async def speech() -> None:
        with scheduler.occupied(1):
            await speech_done.wait()

    tasks = [asyncio.create_task(chat()), asyncio.create_task(speech())]
    await asyncio.sleep(0)
    background = asyncio.create_task(scheduler.until_background_idle())
    await asyncio.sleep(0.01)
    assert not background.done()
    chat_done.set()
    await asyncio.sleep(0.01)
    assert not background.done()  # the speech still runs
    speech_done.set()
    await asyncio.wait_for(background, timeout=1)
    await asyncio.gather(*tasks)
