"""Turns at the speech engine: priority first, never over capacity, none started over the audio budget."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicelane.sidecar.tts.gate import SynthesisGate, Turn, TurnQueue, TurnState

pytestmark = pytest.mark.timeout(30)


def test_a_turn_with_a_free_engine_runs_at_once() -> None:
    queue = TurnQueue(capacity=1, budget_bytes=100)
    assert queue.offer(1).state is TurnState.RUNNING
    assert queue.offer(0).state is TurnState.WAITING


def test_waiting_turns_start_highest_priority_first_then_in_arrival_order() -> None:
    queue = TurnQueue(capacity=1, budget_bytes=100)
    running = queue.offer(1)  # a piece of a long text
    email, long_a, chat, long_b, notification = (queue.offer(p) for p in (2, 1, 0, 1, 0))
    order: list[Turn] = []
    current = running
    for _ in range(5):
        (current,) = queue.finish(current)
        order.append(current)
    assert order == [chat, notification, long_a, long_b, email]


def test_a_long_text_asking_again_after_each_piece_lets_a_chat_in_between() -> None:
    queue = TurnQueue(capacity=1, budget_bytes=100)
    piece = queue.offer(1)
    chat = queue.offer(0)
    assert queue.finish(piece) == [chat]  # the chat takes the engine before the next piece
    next_piece = queue.offer(1)
    assert next_piece.state is TurnState.WAITING
    assert queue.finish(chat) == [next_piece]


def test_capacity_bounds_turns_running_at_once() -> None:
    queue = TurnQueue(capacity=2, budget_bytes=100)
    turns = [queue.offer(1) for _ in range(3)]
    assert [t.state for t in turns] == [TurnState.RUNNING, TurnState.RUNNING, TurnState.WAITING]
    assert queue.finish(turns[0]) == [turns[2]]


def test_no_turn_starts_while_the_audio_budget_is_spent_and_one_starts_when_audio_is_let_go() -> None:
    queue = TurnQueue(capacity=1, budget_bytes=100)
    queue.hold(100)
    waiting = queue.offer(0)
    assert waiting.state is TurnState.WAITING
    assert queue.hold(-1) == [waiting]


def test_the_reserve_is_for_priority_zero_only() -> None:
    queue = TurnQueue(capacity=4, budget_bytes=100, reserve_bytes=30)
    queue.hold(70)
    long_text = queue.offer(1)
    assert long_text.state is TurnState.WAITING
    assert queue.offer(0).state is TurnState.RUNNING
    assert queue.hold(-1) == [long_text]


def test_a_waiter_that_gives_up_leaves_the_queue_and_finish_is_idempotent() -> None:
    queue = TurnQueue(capacity=1, budget_bytes=100)
    running = queue.offer(1)
    leaving, staying = queue.offer(0), queue.offer(1)
    assert queue.finish(leaving) == []
    assert queue.waiting == 1
    assert queue.finish(running) == [staying]
    assert queue.finish(running) == []
    assert queue.running == 1


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        TurnQueue(capacity=0, budget_bytes=1)
    with pytest.raises(ValueError, match="reserve_bytes"):
        TurnQueue(capacity=1, budget_bytes=10, reserve_bytes=10)
    queue = TurnQueue(capacity=1, budget_bytes=10)
    with pytest.raises(ValueError, match="priority"):
        queue.offer(-1)
    with pytest.raises(ValueError, match="let go"):
        queue.hold(-1)


# Steps of the property test: offer a turn at a priority, finish the running or waiting turn at
# an index, take audio in or let it go.
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.integers(0, 2)),
        st.tuples(st.just("finish"), st.integers(0, 20)),
        st.tuples(st.just("hold"), st.integers(-60, 60)),
    ),
    max_size=60,
)


@given(capacity=st.integers(1, 3), steps=_STEPS)
def test_the_policy_holds_after_every_step(capacity: int, steps: list[tuple[str, int]]) -> None:
    queue = TurnQueue(capacity=capacity, budget_bytes=100, reserve_bytes=20)
    live: list[Turn] = []
    for action, value in steps:
        before_held = queue.held_bytes
        if action == "offer":
            turn = queue.offer(value)
            live.append(turn)
            if turn.state is TurnState.RUNNING:
                # Started within the budget: all of it for priority 0, all but the reserve for the rest.
                assert before_held < (100 if value == 0 else 80)
        elif action == "finish" and live:
            queue.finish(live.pop(value % len(live)))
        elif action == "hold":
            queue.hold(max(value, -queue.held_bytes))
        running = [t for t in live if t.state is TurnState.RUNNING]
        waiting = [t for t in live if t.state is TurnState.WAITING]
        assert len(running) == queue.running <= capacity
        assert len(waiting) == queue.waiting
        if waiting:
            best = min(waiting, key=lambda t: (t.priority, t.seq))
            # Nothing that could run is left waiting.
            assert queue.running == capacity or not queue.room_for(best.priority)
            # Nothing that runs overtook a more urgent waiter by priority after it arrived.
            assert all(not (t.priority > best.priority and t.seq > best.seq) for t in running)


async def test_the_gate_wakes_waiters_in_priority_order() -> None:
    gate = SynthesisGate(capacity=1, budget_bytes=100)
    order: list[str] = []
    release = asyncio.Event()

    async def piece(name: str, priority: int) -> None:
        async with gate.turn(priority):
            order.append(name)
            if name == "long-1":
                await release.wait()

    first = asyncio.create_task(piece("long-1", 1))
    await asyncio.sleep(0)
    others = [asyncio.create_task(piece(n, p)) for n, p in (("long-2", 1), ("email", 2), ("chat", 0))]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *others)
    assert order == ["long-1", "chat", "long-2", "email"]


async def test_a_cancelled_waiter_gives_up_its_place_and_the_budget_wakes_the_next() -> None:
    gate = SynthesisGate(capacity=1, budget_bytes=100)
    gate.hold(100)
    started = asyncio.Event()

    async def piece() -> None:
        async with gate.turn(0):
            started.set()

    cancelled = asyncio.create_task(piece())
    waiting = asyncio.create_task(piece())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert not started.is_set()
    gate.hold(-50)
    await asyncio.wait_for(waiting, timeout=5)
    assert started.is_set()
    assert gate.snapshot()["running"] == 0
    assert gate.snapshot()["waiting"] == 0
