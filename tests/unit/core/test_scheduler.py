"""The priority scheduler: caps, refusal, priority and FIFO order, idle-only levels, cancellation,
settling after first audio, tier slots and borrowing a free slot of another tier."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from voicelane.core.scheduler import PriorityScheduler, QueueFull, SchedulerCore, Ticket, TicketState
from voicelane.sidecar.config import SchedulerConfig

RUNNING = TicketState.RUNNING
WAITING = TicketState.WAITING


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ----- the pure policy --------------------------------------------------------------------------


def test_an_arrival_with_a_free_slot_runs_at_once_without_waiting() -> None:
    core = SchedulerCore(max_waiting=0)
    ticket = core.offer(0)
    assert ticket.state is RUNNING
    assert ticket.waited_s == 0.0
    assert core.waiting_total == 0


def test_the_fourth_waiter_is_refused_and_holds_no_place() -> None:
    core = SchedulerCore(retry_after_s=2)
    core.offer(0)
    waiters = [core.offer(0) for _ in range(3)]
    assert [t.state for t in waiters] == [WAITING] * 3
    with pytest.raises(QueueFull) as refused:
        core.offer(0)
    assert refused.value.retry_after_s == 2
    assert core.waiting_total == 3
    assert core.refused_total == 1
    # Work that can start at once needs no waiting place, so a full queue does not refuse it.
    assert core.offer(1).state is RUNNING


def test_a_level_with_its_own_waiting_cap_is_refused_while_other_levels_still_queue() -> None:
    core = SchedulerCore(max_waiting=10, max_waiting_per_priority={2: 1}, tier_slots={"server": 1})
    core.offer(0, "server")
    assert core.offer(2, "server").state is WAITING
    with pytest.raises(QueueFull):
        core.offer(2, "server")
    # The cap is level 2's alone: chats keep queueing up to the total.
    assert [core.offer(0, "server").state for _ in range(3)] == [WAITING] * 3


def test_a_reserved_slot_keeps_a_chat_from_waiting_behind_lower_priority_work() -> None:
    core = SchedulerCore(max_waiting=10, tier_slots={"server": 2}, reserved_slots=1)
    long_chat = core.offer(1, "server")
    assert long_chat.state is RUNNING
    assert core.offer(1, "server").state is WAITING  # the second slot is the chats'
    assert core.offer(0, "server").state is RUNNING
    # With one slot nothing can be reserved: lower priorities keep their last slot.
    single = SchedulerCore(tier_slots={"server": 1}, reserved_slots=1)
    assert single.offer(2, "server").state is RUNNING


def test_waiting_work_starts_first_come_first_served_within_a_level() -> None:
    core = SchedulerCore()
    running = core.offer(1)
    first, second = core.offer(1), core.offer(1)
    assert core.release(running) == [first]
    assert core.release(first) == [second]


def test_idle_only_work_waits_until_higher_levels_are_idle_even_if_it_came_first() -> None:
    core = SchedulerCore(max_waiting=10)
    chat, tldr = core.offer(0), core.offer(1)
    segment = core.offer(2)
    later_tldr, later_chat = core.offer(1), core.offer(0)
    assert segment.state is WAITING
    assert core.release(chat) == [later_chat]
    assert core.release(tldr) == [later_tldr]
    assert core.release(later_chat) == []
    assert core.release(later_tldr) == [segment]


def test_a_running_segment_is_not_preempted_but_does_not_hold_up_chat() -> None:
    core = SchedulerCore()
    segment = core.offer(2)
    chat = core.offer(0)
    assert (segment.state, chat.state) == (RUNNING, RUNNING)


def test_without_idle_only_levels_run_side_by_side() -> None:
    core = SchedulerCore(idle_only=())
    assert [core.offer(p).state for p in (0, 1, 2)] == [RUNNING] * 3


def test_a_cancelled_waiter_frees_its_place() -> None:
    core = SchedulerCore(max_waiting=1)
    running = core.offer(0)
    waiter = core.offer(0)
    with pytest.raises(QueueFull):
        core.offer(0)
    assert core.cancel(waiter) == []
    assert waiter.state is TicketState.CANCELLED
    replacement = core.offer(0)
    assert core.release(running) == [replacement]


def test_cancelling_the_last_higher_priority_work_lets_a_segment_start() -> None:
    core = SchedulerCore()
    chat = core.offer(0)
    segment = core.offer(2)
    assert core.cancel(chat) == [segment]  # a running ticket's client went away


def test_cancel_is_idempotent_and_release_needs_a_running_ticket() -> None:
    core = SchedulerCore()
    running = core.offer(0)
    waiter = core.offer(0)
    with pytest.raises(ValueError, match="running"):
        core.release(waiter)
    core.cancel(waiter)
    assert core.cancel(waiter) == []
    core.release(running)
    assert core.cancel(running) == []
    assert running.state is TicketState.DONE


@pytest.mark.parametrize("priority", [-1, 1.5, True, "0"])
def test_an_invalid_priority_is_refused(priority: object) -> None:
    with pytest.raises(ValueError, match="priority"):
        SchedulerCore().offer(priority)  # type: ignore[arg-type]


def test_a_raised_cap_starts_waiters_and_a_lowered_one_keeps_queued_work() -> None:
    core = SchedulerCore(max_waiting=3)
    core.offer(0)
    waiters = [core.offer(0) for _ in range(3)]
    assert core.reconfigure(max_running_per_priority=1, max_waiting=1) == []
    assert core.waiting(0) == tuple(waiters)
    with pytest.raises(QueueFull):
        core.offer(0)
    assert core.reconfigure(max_running_per_priority=3, max_waiting=1) == waiters[:2]
    assert core.waiting(0) == (waiters[2],)


def test_wait_time_is_measured_with_the_clock() -> None:
    clock = FakeClock()
    core = SchedulerCore(clock=clock)
    running = core.offer(0)
    waiter = core.offer(0)
    clock.advance(2.5)
    core.release(running)
    assert waiter.waited_s == pytest.approx(2.5)


# ----- settling after first audio, tier slots, borrowing ----------------------------------------


def test_a_settled_chat_lets_the_next_chat_start_while_it_finishes() -> None:
    core = SchedulerCore()
    first = core.offer(0)
    second = core.offer(0)
    assert second.state is WAITING
    assert core.settle(first) == [second]
    assert (first.state, core.running(0), core.starting(0)) == (RUNNING, 2, 1)
    assert core.settle(first) == []  # idempotent
    assert core.release(first) == []
    assert core.running(0) == 1


def test_a_settled_chat_still_keeps_segments_waiting() -> None:
    core = SchedulerCore()
    chat = core.offer(0)
    segment = core.offer(2)
    assert core.settle(chat) == []
    assert segment.state is WAITING
    assert core.release(chat) == [segment]


def test_a_tier_never_runs_more_than_its_slots_whatever_the_priority() -> None:
    core = SchedulerCore(tier_slots={"fast": 1, "deep": 1}, borrowing=(), idle_only=())
    chat = core.offer(0, "fast")
    core.settle(chat)
    later_chat = core.offer(0, "fast")
    tldr = core.offer(1, "fast")
    assert (later_chat.state, tldr.state) == (WAITING, WAITING)
    assert core.on_tier("fast") == 1
    # The slot goes to the highest priority waiting for it.
    assert core.release(chat) == [later_chat]
    assert core.release(later_chat) == [tldr]


def test_priority_zero_borrows_a_free_slot_of_another_tier_and_lower_levels_do_not() -> None:
    core = SchedulerCore(tier_slots={"fast": 1, "deep": 2}, idle_only=())
    first = core.offer(0, "fast")
    core.settle(first)
    second = core.offer(0, "fast")
    assert (second.state, second.runs_on, second.borrowed) == (RUNNING, "deep", True)
    tldr = core.offer(1, "fast")
    assert tldr.state is WAITING  # deep still has a slot, but a TL;DR keeps to its own tier
    assert core.borrowed_total == 1
    assert core.release(first) == [tldr]
    assert tldr.runs_on == "fast"


def test_work_kept_on_its_tier_does_not_borrow() -> None:
    core = SchedulerCore(tier_slots={"fast": 1, "deep": 2})
    core.settle(core.offer(0, "fast"))
    kept = core.offer(0, "fast", may_borrow=False)
    assert kept.state is WAITING
    assert core.on_tier("deep") == 0


def test_no_borrowing_from_a_tier_without_a_known_slot_count() -> None:
    core = SchedulerCore(tier_slots={"fast": 1})
    core.settle(core.offer(0, "fast"))
    assert core.offer(0, "fast").state is WAITING
    # Unknown slots bound nothing: work routed to that tier runs as before.
    assert [core.offer(1, "deep").state, core.offer(1, "deep").state] == [RUNNING, WAITING]


def test_waiting_for_a_tier_slot_counts_against_the_waiting_room() -> None:
    core = SchedulerCore(tier_slots={"fast": 1}, max_waiting=1, retry_after_s=4)
    core.settle(core.offer(0, "fast"))
    core.offer(0, "fast")
    with pytest.raises(QueueFull) as refused:
        core.offer(0, "fast")
    assert refused.value.retry_after_s == 4


def test_lowered_tier_slots_stop_nothing_that_runs_and_start_nothing_new() -> None:
    core = SchedulerCore(tier_slots={"deep": 2}, idle_only=())
    running = [core.offer(1, "deep"), core.offer(2, "deep")]
    core.reconfigure(max_running_per_priority=1, max_waiting=3, tier_slots={"deep": 1})
    waiter = core.offer(1, "deep")
    assert [t.state for t in running] == [RUNNING, RUNNING]
    assert core.settle(running[0]) == []
    assert core.release(running[0]) == []  # one still runs on the single slot left
    assert core.release(running[1]) == [waiter]


def test_segments_wait_for_a_quiet_period_after_the_last_chat() -> None:
    clock = FakeClock()
    core = SchedulerCore(idle_only_quiet_s=2.0, clock=clock)
    chat = core.offer(0)
    segment = core.offer(2)
    clock.advance(1.0)
    assert core.release(chat) == []
    assert core.quiet_remaining_s() == pytest.approx(2.0)
    clock.advance(1.5)
    later_chat = core.offer(0)  # the conversation goes on: the quiet period starts again after it
    clock.advance(1.0)
    assert core.release(later_chat) == []
    clock.advance(1.9)
    assert core.poll() == []
    clock.advance(0.1)
    assert core.poll() == [segment]
    assert core.quiet_remaining_s() is None


async def test_a_segment_held_for_quiet_starts_by_itself_when_the_quiet_period_ends() -> None:
    scheduler = PriorityScheduler(SchedulerConfig(segments_after_quiet_s=0.05))
    started: list[Ticket] = []
    chat, finish_chat = spawn(scheduler, 0, started)
    segment, finish_segment = spawn(scheduler, 2, started)
    await settle()
    finish_chat.set()
    await settle()
    assert [t.priority for t in started] == [0]
    await asyncio.sleep(0.1)
    assert [t.priority for t in started] == [0, 2]
    finish_segment.set()
    await asyncio.gather(chat, segment)


@pytest.mark.parametrize("slots", [0, -1, True, 1.5])
def test_a_tier_needs_a_whole_positive_number_of_slots(slots: object) -> None:
    with pytest.raises(ValueError, match="slot"):
        SchedulerCore(tier_slots={"fast": slots})  # type: ignore[dict-item]


# ----- invariants under random offer/release/cancel sequences -----------------------------------

LEVELS = (0, 1, 2)
TIERS = ("fast", "deep")


class SchedulerMachine(RuleBasedStateMachine):
    """Drives SchedulerCore with random operations and checks it against the rules it promises."""

    @initialize(
        cap=st.integers(1, 3),
        max_waiting=st.integers(0, 4),
        idle_only=st.sampled_from([frozenset(), frozenset({2}), frozenset({1, 2})]),
        tier_slots=st.dictionaries(st.sampled_from(TIERS), st.integers(1, 3)),
        exclusive=st.booleans(),
    )
    def setup(
        self, cap: int, max_waiting: int, idle_only: frozenset[int], tier_slots: dict[str, int], exclusive: bool
    ) -> None:
        self.clock = FakeClock()
        self.cap, self.max_waiting, self.idle_only, self.tier_slots = cap, max_waiting, idle_only, tier_slots
        self.exclusive = exclusive
        self.core = SchedulerCore(
            max_running_per_priority=cap,
            max_waiting=max_waiting,
            idle_only=idle_only,
            tier_slots=tier_slots,
            exclusive_tiers=exclusive,
            clock=self.clock,
        )
        self.offered = 0
        self.refused = 0
        self.accepted: list[Ticket] = []
        self.start_order: dict[int, list[int]] = defaultdict(list)

    def in_state(self, state: TicketState) -> list[Ticket]:
        return [t for t in self.accepted if t.state is state]

    def busy(self, level: int) -> bool:
        return self.core.running(level) > 0 or bool(self.core.waiting(level))

    def record_started(self, started: list[Ticket]) -> None:
        for ticket in started:
            assert ticket.state is RUNNING
            if ticket.priority in self.idle_only:
                assert not any(self.busy(level) for level in LEVELS if level < ticket.priority)
            self.start_order[ticket.priority].append(ticket.seq)

    @rule(priority=st.sampled_from(LEVELS), tier=st.sampled_from((*TIERS, None)))
    def offer(self, priority: int, tier: str | None) -> None:
        self.clock.advance(0.1)
        self.offered += 1
        waiting_before = self.core.waiting_total
        try:
            ticket = self.core.offer(priority, tier)
        except QueueFull:
            self.refused += 1
            assert waiting_before >= self.max_waiting
            return
        self.accepted.append(ticket)
        if ticket.state is RUNNING:
            self.record_started([ticket])

    @precondition(lambda self: any(t.state is RUNNING for t in self.accepted))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        self.clock.advance(0.1)
        self.record_started(self.core.release(data.draw(st.sampled_from(self.in_state(RUNNING)))))

    @precondition(lambda self: any(t.state is RUNNING for t in self.accepted))
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        self.clock.advance(0.1)
        self.record_started(self.core.settle(data.draw(st.sampled_from(self.in_state(RUNNING)))))

    @precondition(lambda self: any(t.state in (RUNNING, WAITING) for t in self.accepted))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.clock.advance(0.1)
        live = self.in_state(WAITING) + self.in_state(RUNNING)
        self.record_started(self.core.cancel(data.draw(st.sampled_from(live))))

    def slot_free_for(self, ticket: Ticket) -> bool:
        def free(tier: str) -> bool:
            others_busy = any(self.core.on_tier(other) for other in TIERS if other != tier)
            if self.exclusive and others_busy:
                return False
            return tier not in self.tier_slots or self.core.on_tier(tier) < self.tier_slots[tier]

        if ticket.tier is None or free(ticket.tier):
            return True
        return ticket.priority == 0 and any(free(t) for t in self.tier_slots if t != ticket.tier)

    @invariant()
    def caps_hold(self) -> None:
        assert all(self.core.starting(level) <= self.cap for level in LEVELS)
        assert self.core.waiting_total <= self.max_waiting
        for tier, slots in self.tier_slots.items():
            assert self.core.on_tier(tier) == sum(t.runs_on == tier for t in self.in_state(RUNNING)) <= slots

    @invariant()
    def tiers_that_share_cpus_take_turns(self) -> None:
        if self.exclusive:
            assert sum(1 for tier in TIERS if self.core.on_tier(tier)) <= 1

    @invariant()
    def only_priority_zero_runs_on_another_tier(self) -> None:
        for ticket in self.in_state(RUNNING):
            assert ticket.runs_on == ticket.tier or (ticket.priority == 0 and ticket.runs_on in self.tier_slots)

    @invariant()
    def every_ticket_is_accounted_for(self) -> None:
        assert self.offered == self.refused + len(self.accepted)
        for level in LEVELS:
            assert self.core.running(level) == sum(t.priority == level for t in self.in_state(RUNNING))
            unsettled = [t for t in self.in_state(RUNNING) if t.priority == level and not t.settled]
            assert self.core.starting(level) == len(unsettled)
            queued = self.core.waiting(level)
            assert list(queued) == [t for t in self.in_state(WAITING) if t.priority == level]

    @invariant()
    def first_come_first_served_within_a_level(self) -> None:
        for level in LEVELS:
            started = self.start_order[level]
            assert started == sorted(started)
            queued = [t.seq for t in self.core.waiting(level)]
            assert queued == sorted(queued)
            # Nothing that waits now may have been overtaken by a later arrival.
            assert not queued or not started or queued[0] > max(started)

    @invariant()
    def no_dispatchable_ticket_is_left_waiting(self) -> None:
        for level in LEVELS:
            if not self.core.waiting(level):
                continue
            full = self.core.starting(level) >= self.cap
            held_for_idle = level in self.idle_only and any(self.busy(higher) for higher in LEVELS if higher < level)
            no_slot = not self.slot_free_for(self.core.waiting(level)[0])
            assert full or held_for_idle or no_slot

    def teardown(self) -> None:
        # Drain: with everything finished, every accepted ticket must have run or been cancelled.
        if not hasattr(self, "core"):
            return
        while running := self.in_state(RUNNING):
            self.record_started(self.core.release(running[0]))
        assert all(t.state in (TicketState.DONE, TicketState.CANCELLED) for t in self.accepted)
        assert self.core.waiting_total == 0


SchedulerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestSchedulerInvariants = SchedulerMachine.TestCase


# ----- the async wrapper ------------------------------------------------------------------------


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(10):
        await asyncio.sleep(0)


async def hold(scheduler: PriorityScheduler, priority: int, until: asyncio.Event, started: list[Ticket]) -> None:
    async with scheduler.slot(priority) as ticket:
        started.append(ticket)
        await until.wait()


def spawn(
    scheduler: PriorityScheduler, priority: int, started: list[Ticket]
) -> tuple[asyncio.Task[None], asyncio.Event]:
    done = asyncio.Event()
    return asyncio.create_task(hold(scheduler, priority, done, started)), done


async def test_a_waiter_starts_when_the_slot_is_given_back_and_knows_how_long_it_waited() -> None:
    clock = FakeClock()
    scheduler = PriorityScheduler(SchedulerConfig(), clock=clock)
    started: list[Ticket] = []
    first, finish_first = spawn(scheduler, 0, started)
    second, finish_second = spawn(scheduler, 0, started)
    await settle()
    assert len(started) == 1
    assert scheduler.snapshot()["waiting"][0] == 1
    clock.advance(1.5)
    finish_first.set()
    await settle()
    assert len(started) == 2
    assert started[1].waited_s == pytest.approx(1.5)
    finish_second.set()
    await asyncio.gather(first, second)
    assert scheduler.snapshot()["running_total"] == 0


async def test_queue_full_is_raised_at_once() -> None:
    scheduler = PriorityScheduler(SchedulerConfig(max_waiting=1, retry_after_s=3))
    started: list[Ticket] = []
    tasks = [spawn(scheduler, 0, started) for _ in range(2)]
    await settle()
    with pytest.raises(QueueFull) as refused:
        async with scheduler.slot(0):
            pytest.fail("a refused arrival must not run")
    assert refused.value.retry_after_s == 3
    for task, done in tasks:
        done.set()
        await task


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    scheduler = PriorityScheduler(SchedulerConfig(max_waiting=1))
    started: list[Ticket] = []
    running, finish_running = spawn(scheduler, 0, started)
    waiter, _ = spawn(scheduler, 0, started)
    await settle()
    waiter.cancel()
    await settle()
    assert waiter.cancelled()
    assert scheduler.snapshot()["waiting_total"] == 0
    replacement, finish_replacement = spawn(scheduler, 0, started)
    await settle()
    finish_running.set()
    await settle()
    assert [t.seq for t in started] == [0, 2]
    finish_replacement.set()
    await asyncio.gather(running, replacement)


async def test_the_slot_is_given_back_when_the_work_fails() -> None:
    scheduler = PriorityScheduler(SchedulerConfig())
    with pytest.raises(RuntimeError):
        async with scheduler.slot(0):
            raise RuntimeError("upstream broke")
    async with scheduler.slot(0) as ticket:
        assert ticket.state is RUNNING
    assert scheduler.snapshot()["running"][0] == 0


async def test_segments_wait_for_idle_higher_levels() -> None:
    scheduler = PriorityScheduler(SchedulerConfig())
    started: list[Ticket] = []
    tldr, finish_tldr = spawn(scheduler, 1, started)
    segment, finish_segment = spawn(scheduler, 2, started)
    await settle()
    assert [t.priority for t in started] == [1]
    finish_tldr.set()
    await settle()
    assert [t.priority for t in started] == [1, 2]
    finish_segment.set()
    await asyncio.gather(tldr, segment)


async def test_reconfigure_raises_caps_live_without_losing_waiters() -> None:
    scheduler = PriorityScheduler(SchedulerConfig(max_waiting=3))
    started: list[Ticket] = []
    tasks = [spawn(scheduler, 0, started) for _ in range(4)]
    await settle()
    scheduler.reconfigure(SchedulerConfig(max_running_per_priority=2, max_waiting=1))
    await settle()
    snapshot = scheduler.snapshot()
    assert (snapshot["running"][0], snapshot["waiting"][0]) == (2, 2)
    for task, done in tasks:
        done.set()
        await task
    assert len(started) == 4


async def test_snapshot_counts_per_priority_and_in_total() -> None:
    clock = FakeClock()
    scheduler = PriorityScheduler(SchedulerConfig(), clock=clock)
    started: list[Ticket] = []
    tasks = [spawn(scheduler, p, started) for p in (0, 0, 1, 2)]
    await settle()
    clock.advance(0.5)
    snapshot = scheduler.snapshot()
    assert snapshot["running"] == {0: 1, 1: 1, 2: 0}
    assert snapshot["waiting"] == {0: 1, 1: 0, 2: 1}
    assert (snapshot["running_total"], snapshot["waiting_total"]) == (2, 2)
    assert snapshot["oldest_wait_s"] == {0: 0.5, 2: 0.5}
    for _, done in tasks:
        done.set()
    await asyncio.gather(*(task for task, _ in tasks))
    assert scheduler.snapshot()["started_total"] == 4
