"""The lane: one request's path from admission to the model's token stream.

It wires the stages in the order of the architecture — cache and single-flight
first (they use no model capacity), then the guardian (pressure and rate limit),
the priority scheduler, and the router with its circuits and failover — and owns
the background loops that feed them (health checks and generation probes, pressure
checks). Each stage is its own module (most of them in voicelane.core); this one only
decides the order, records each flight's progress on the flight itself, and tells its
observer what happened. It speaks no HTTP: what it refuses or fails it raises as
voicelane.core.refusals values, which the HTTP layer answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voicelane.core.broadcast import Broadcast
from voicelane.core.cache import BoundedCache
from voicelane.core.circuit import CircuitBreaker, FirstTokenWatch
from voicelane.core.flight_state import Dispatched, Done, FirstToken, FlightState, WorkFailed
from voicelane.core.gate_headers import MAX_DEADLINE_MS, CallInfo
from voicelane.core.guardian import Guardian, PressureSource
from voicelane.core.keys import request_key
from voicelane.core.observer import LaneObserver
from voicelane.core.refusals import Failed, Failure, LaneError, Refusal, Refused
from voicelane.core.routing import RouteDecision, Router
from voicelane.core.scheduler import PriorityScheduler, QueueFull, Ticket
from voicelane.core.singleflight import Flight, SingleFlight
from voicelane.sidecar.classify import priority_for
from voicelane.sidecar.config import RequestClass, SidecarConfig, Tier
from voicelane.sidecar.pressure import LocalPressureSource, UpstreamSaturation
from voicelane.sidecar.prompts import build_messages
from voicelane.sidecar.segmenter import Segmenter
from voicelane.sidecar.ttfa import StageClock
from voicelane.sidecar.upstream import ChatRequest, UpstreamClient, UpstreamError, make_client

log = logging.getLogger("voicelane.sidecar.lane")

PASSTHROUGH = "passthrough"
# What a generation probe asks: the shortest real work that shows the model runner answers.
PROBE_MESSAGES = ({"role": "user", "content": "Hi"},)
# Generation probes one tier may have running at once; each lasts at most one first-token timeout.
MAX_RUNNING_PROBES = 3


@dataclass(frozen=True)
class TextResult:
    """The finished text of a flight and how it was produced."""

    text: str
    tier: str
    priority: int
    timings: Mapping[str, float]

    @property
    def size_bytes(self) -> int:
        return len(self.text.encode("utf-8")) + 256


@dataclass(frozen=True)
class Job:
    """Model work described independently of the API it arrived through."""

    key: str
    request_class: RequestClass
    priority: int
    route: RouteDecision
    messages: list[dict[str, str]]
    request_id: str
    passthrough_text: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Submission:
    """What a client holds after admission: a cached result or a (possibly shared) flight."""

    job: Job
    cached: TextResult | None = None
    flight: Flight[str, TextResult] | None = None

    @property
    def shared(self) -> bool:
        return self.flight is not None and self.flight.shared

    async def tokens(self) -> AsyncGenerator[str, None]:
        """Every token from the first, live while the model runs; raises Refused or Failed when it cannot be had."""
        if self.cached is not None:
            yield self.cached.text
            return
        assert self.flight is not None
        async with self.flight.subscribe() as stream:
            async for token in stream:
                yield token

    def tier(self) -> str | None:
        """The tier answering this submission, once its first token has come."""
        if self.cached is not None:
            return self.cached.tier
        assert self.flight is not None
        return self.flight.state.tier

    @property
    def dispatched_at(self) -> float | None:
        """When the work got its model slot (None for a cached answer, or work still waiting)."""
        return None if self.flight is None else self.flight.state.dispatched_at

    async def result(self) -> TextResult:
        if self.cached is not None:
            return self.cached
        assert self.flight is not None
        async with self.flight.subscribe() as stream:
            async for _ in stream:
                pass
        return await self.flight.result()


class Lane:
    """Admission, coalescing, scheduling and routing of model work for one sidecar."""

    def __init__(
        self,
        config: SidecarConfig,
        observer: LaneObserver,
        *,
        local_pressure: PressureSource | None = None,
        client_factory: Callable[..., UpstreamClient] = make_client,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.observer = observer  # told each decision; the shell counts them (see core/observer.py)
        self.clock = clock
        self._client_factory = client_factory
        self.cache: BoundedCache[Any] = BoundedCache(
            max_entries=config.cache.max_entries if config.cache.enabled else 0,
            max_bytes=config.cache.max_bytes if config.cache.enabled else 0,
            ttl_s=config.cache.ttl_s,
            clock=clock,
        )
        self.flights: SingleFlight[str, str] = SingleFlight(clock=clock)
        self._share_flights(config)
        self.saturation = UpstreamSaturation(config.guardian, clock=clock)
        self.local_pressure = local_pressure if local_pressure is not None else LocalPressureSource()
        self.guardian = Guardian(
            config.guardian, config.rate_limit, local=self.local_pressure, upstream=self.saturation, clock=clock
        )
        self.scheduler = PriorityScheduler(config.scheduler, tier_slots=self._tier_slots(config), clock=clock)
        self.router = Router(config.routing)
        self.clients: dict[Tier, UpstreamClient] = {
            tier: client_factory(config.upstreams.for_tier(tier)) for tier in Tier
        }
        self.circuits: dict[Tier, CircuitBreaker] = {tier: self._circuit(config, tier) for tier in Tier}
        self.first_tokens: dict[Tier, FirstTokenWatch] = {tier: FirstTokenWatch(clock=clock) for tier in Tier}
        self.healthy: dict[Tier, bool | None] = dict.fromkeys(Tier)
        self._tasks: list[asyncio.Task[None]] = []
        self._probes: dict[Tier, set[asyncio.Task[None]]] = {tier: set() for tier in Tier}
        self._retired_clients: list[UpstreamClient] = []
        self._retiring: set[asyncio.Task[None]] = set()

    # ----- configuration -------------------------------------------------------------------------

    @staticmethod
    def _tier_slots(config: SidecarConfig) -> dict[str, int]:
        """The parallel slots of each tier whose count is configured; the others are not bounded."""
        return {
            tier.value: slots for tier in Tier if (slots := config.upstreams.for_tier(tier).parallel_slots) is not None
        }

    def _share_flights(self, config: SidecarConfig) -> None:
        """The one place that decides whether identical requests share a flight (and for how long after)."""
        self.flights.coalescing = config.single_flight.enabled
        self.flights.window_s = config.single_flight.window_s

    @property
    def coalesces(self) -> bool:
        """Whether identical requests share one piece of work: the text flights', the audio's and the gate's."""
        return self.flights.coalescing

    def _circuit(self, config: SidecarConfig, tier: Tier) -> CircuitBreaker:
        upstream = config.upstreams.for_tier(tier)
        return CircuitBreaker(
            failures_to_open=upstream.circuit_failures_to_open,
            successes_to_close=upstream.circuit_successes_to_close,
            clock=self.clock,
        )

    def reconfigure(self, config: SidecarConfig) -> None:
        """Apply a new configuration without dropping in-flight work."""
        old = self.config
        self.config = config
        self.cache.reconfigure(config.cache)
        self._share_flights(config)
        self.guardian.reconfigure(config.guardian, config.rate_limit)
        self.saturation.reconfigure(config.guardian)
        self.scheduler.reconfigure(config.scheduler, tier_slots=self._tier_slots(config))
        self.router = Router(config.routing)
        for tier in Tier:
            if old.upstreams.for_tier(tier) != config.upstreams.for_tier(tier):
                # In-flight calls keep the old client; it is closed once they have surely ended.
                self._retire(self.clients[tier], after_s=old.upstreams.for_tier(tier).total_timeout_s + 1.0)
                self.clients[tier] = self._client_factory(config.upstreams.for_tier(tier))
                self.circuits[tier] = self._circuit(config, tier)
                self.first_tokens[tier] = FirstTokenWatch(clock=self.clock)
                self.healthy[tier] = None

    def _retire(self, client: UpstreamClient, *, after_s: float) -> None:
        """Close a replaced client after `after_s`: no call outlives its total timeout, and
        without this every reload that touched an upstream would leave a pool of connections."""
        self._retired_clients.append(client)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # reconfigured outside the loop: closed when the lane stops
            return

        async def close_later() -> None:
            await asyncio.sleep(after_s)
            self._retired_clients.remove(client)
            with contextlib.suppress(Exception):
                await client.close()

        task = asyncio.create_task(close_later(), name="voicelane-retire-client")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # ----- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        for tier in Tier:
            self._tasks.append(asyncio.create_task(self._health_loop(tier), name=f"voicelane-health-{tier.value}"))
        self._tasks.append(asyncio.create_task(self._guardian_loop(), name="voicelane-guardian"))

    async def stop(self) -> None:
        for task in [*self._retiring]:
            task.cancel()  # their clients are closed below with the rest
        for task in [task for probes in self._probes.values() for task in probes]:
            task.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for client in [*self.clients.values(), *self._retired_clients]:
            with contextlib.suppress(Exception):
                await client.close()

    async def _health_loop(self, tier: Tier) -> None:
        # One loop per tier, so a tier that is slow to answer never delays the other's checks.
        while True:
            await self._probe(tier)
            await asyncio.sleep(self.config.upstreams.for_tier(tier).health_interval_s)

    async def _probe(self, tier: Tier) -> None:
        """Check the tier's status endpoint; while its real work is in doubt, also a real generation.

        The status endpoint answers even when the model runner behind it is stuck, so it
        cannot clear doubts that real calls raised (see voicelane/core/circuit.py): a tier whose circuit
        opened on failed calls, or that stalled on a first token, is sent a tiny generation.
        """
        client = self.clients[tier]
        circuit = self.circuits[tier]
        try:
            ok = await client.health()
        except Exception:  # a health probe reports; it never takes the loop down
            ok = False
        self.healthy[tier] = ok
        in_doubt = circuit.needs_real_probe or self.first_tokens[tier].stalled
        if not ok or not in_doubt:
            circuit.record_probe(ok)
            return
        # Probes are started, not awaited: one per interval, so that a stuck tier opens its circuit
        # within a few first-token timeouts rather than one timeout plus one interval per failure.
        probes = self._probes[tier]
        if len(probes) < min(MAX_RUNNING_PROBES, circuit.failures_to_open):
            task = asyncio.create_task(self._generation_probe(tier), name=f"voicelane-probe-{tier.value}")
            probes.add(task)
            task.add_done_callback(probes.discard)

    async def _generation_probe(self, tier: Tier) -> None:
        """One token of a real generation, bounded by the tier's first-token timeout; it reports like a call."""
        client, circuit, watch = self.clients[tier], self.circuits[tier], self.first_tokens[tier]
        started = self.clock()
        tokens = client.stream_chat(ChatRequest(PROBE_MESSAGES, num_predict=1))
        try:
            await anext(tokens, None)
        except UpstreamError as exc:
            if exc.kind == "cancelled":  # the client was replaced or closed: nothing learnt
                return
            if exc.retryable:
                circuit.record_failure()
                # Every interval while the tier is down: the circuit's state is what to watch, not each probe.
                log.debug("generation probe of %s failed: %s (%s)", tier.value, exc.kind, exc)
                return
            # The server answered, refusing this request (see UpstreamError): it is up, and real
            # calls will meet the same refusal as an error of their own.
        except Exception:  # a probe reports; it never takes the lane down
            log.exception("generation probe of %s failed unexpectedly", tier.value)
            return
        finally:
            if isinstance(tokens, AsyncGenerator):
                await tokens.aclose()  # the one token was all it asked for: the call ends here
        was_in_doubt = circuit.is_open or watch.stalled
        circuit.record_success()
        watch.first_token(self.clock() - started, typical=False)
        if was_in_doubt:
            log.info("%s answers a generation again: it takes work again", tier.value)

    async def _guardian_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.guardian.sample_interval_s)
            if not self.config.guardian.enabled:
                continue
            try:
                result = await asyncio.to_thread(self.guardian.check)
            except Exception:
                log.exception("guardian check failed")
                continue
            self.observer.pressure_checked(failed=result.failed)

    # ----- admission -----------------------------------------------------------------------------

    def text_job(
        self, *, text: str, request_class: RequestClass, target_lang: str, request_id: str, kind: str = "text"
    ) -> Job:
        config = self.config
        route = self.route(text)
        passthrough = config.prompts.passthrough
        key = request_key(
            text=text,
            request_class=request_class.value,
            target_lang=target_lang,
            tier=PASSTHROUGH if passthrough else route.tier.value,
            prompt_version=config.prompts.version,
            kind=kind,
        )
        return Job(
            key=key,
            request_class=request_class,
            priority=self.priority(request_class, text),
            route=route,
            messages=build_messages(config, text=text, request_class=request_class, target_lang=target_lang),
            request_id=request_id,
            passthrough_text=text if passthrough else None,
        )

    def chat_job(
        self,
        *,
        messages: list[dict[str, str]],
        request_class: RequestClass | None,
        request_id: str,
        options: Mapping[str, Any],
        api: str,
    ) -> Job:
        """A transparent-API call: the app's own messages, coalesced on their normalized form."""
        from voicelane.sidecar.classify import default_class_for_text

        last_user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), messages[-1]["content"])
        request_class = request_class or default_class_for_text(last_user, self.config.classes)
        route = self.route(last_user)
        canonical = json.dumps([messages, dict(options)], sort_keys=True, ensure_ascii=False)
        key = request_key(
            text=canonical,
            request_class=request_class.value,
            target_lang="-",
            tier=route.tier.value,
            prompt_version=self.config.prompts.version,
            kind=f"chat:{api}",
        )
        return Job(
            key=key,
            request_class=request_class,
            priority=self.priority(request_class, last_user),
            route=route,
            messages=messages,
            request_id=request_id,
            options=options,
        )

    def route(self, text: str) -> RouteDecision:
        mode = self.config.routing.mode
        if mode == "fast_only":
            return RouteDecision(Tier.FAST, ("mode:fast_only",))
        if mode == "deep_only":
            return RouteDecision(Tier.DEEP, ("mode:deep_only",))
        return self.router.choose(text)

    def priority(self, request_class: RequestClass, text: str) -> int:
        # Without priorities every class shares one FIFO level (the baseline the demo compares with).
        return priority_for(request_class, text, self.config.classes) if self.config.scheduler.priorities else 0

    def submit(self, job: Job, *, received: float | None = None, internal: bool = False) -> Submission:
        """Admit `job` now (no awaiting between look-up and flight creation, so admission is atomic).

        Order matters: a cache hit or a join uses no model capacity, so neither is rate
        limited nor queued; only a new leader goes through the guardian and the scheduler.
        `internal` work (an admitted email's segments) skips the guardian, not the scheduler.
        """
        received = self.clock() if received is None else received
        cached = self.cache.get(job.key)
        if cached is not None:
            self.observer.looked_up(hit=True)
            return Submission(job, cached=cached)
        self.observer.looked_up(hit=False)
        if job.key in self.flights:  # never, with single-flight off
            self.observer.coalesced(joined=True)
            return Submission(job, flight=self.flights.join(job.key, self._producer(job, received, FlightState())))
        if job.passthrough_text is None and not internal:
            self._admit(job.priority)
        self.observer.coalesced(joined=False)
        state = FlightState()
        return Submission(job, flight=self.flights.join(job.key, self._producer(job, received, state), state=state))

    def admit_forwarded(self, priority: int) -> None:
        """Admit a call the transparent API forwards as it is: the same door as `submit`'s new work.

        Raises Refused when it may not start now.
        """
        self._admit(priority)

    @contextlib.asynccontextmanager
    async def forwarded_slot(self, priority: int, tier: Tier) -> AsyncIterator[Ticket]:
        """A model slot for a call forwarded as it is, pinned to its tier (it names that tier's model):
        it counts against that tier's slots and never borrows the other's. Refused when the waiting room is full.
        """
        try:
            async with self.scheduler.slot(priority, tier.value, may_borrow=False) as ticket:
                yield ticket
        except QueueFull as exc:
            raise self._queue_full(exc) from None

    def _admit(self, priority: int) -> None:
        """The door for new model work. Lower priorities give way first: the last place in the
        waiting room and the last tokens of the rate limit are kept for priority 0, so a chat is
        never refused because of lower-priority traffic."""
        if priority > 0 and self._waiting_room_kept_for_priority_0():
            raise self._refused(
                Refused(
                    Refusal.QUEUE_FULL,
                    "too many requests are waiting for the model; the last place is kept for chats",
                    retry_after_s=self.config.scheduler.retry_after_s,
                )
            )
        decision = self.guardian.admit(priority)
        if not decision.allowed:
            raise self._refused(decision.refused())
        self.observer.admitted(priority)

    def _refused(self, refusal: Refused) -> Refused:
        self.observer.refused(refusal)
        return refusal

    def _waiting_room_kept_for_priority_0(self) -> bool:
        """Only one place is left in the waiting room (of at least two): it is priority 0's."""
        queue = self.scheduler.snapshot()
        return queue["max_waiting"] >= 2 and queue["waiting_total"] >= queue["max_waiting"] - 1

    def prime_text(self, job: Job, text: str) -> None:
        """Cache `text` as the answer to `job` (the phrase bank: phrases are already speakable)."""
        result = TextResult(text, "phrase_bank", job.priority, {})
        self.cache.put(job.key, result, result.size_bytes, pinned=True)

    # ----- model work ----------------------------------------------------------------------------

    def _producer(self, job: Job, received: float, state: FlightState) -> Callable[[Broadcast[str]], Any]:
        """The work of a new flight; its progress goes into `state`, which every reader of the flight sees."""

        async def produce(out: Broadcast[str]) -> TextResult:
            timeline = StageClock(received, clock=self.clock)
            if job.passthrough_text is not None:
                state.record(FirstToken(self.clock(), PASSTHROUGH))
                out.publish(job.passthrough_text)
                result = TextResult(job.passthrough_text, PASSTHROUGH, job.priority, {})
                state.record(Done(self.clock(), PASSTHROUGH))
            else:
                try:
                    result = await self._run_model(job, out, timeline, state)
                except LaneError as exc:
                    state.record(WorkFailed(self.clock(), exc))
                    raise
            self.cache.put(job.key, result, result.size_bytes)
            return result

        return produce

    async def _run_model(self, job: Job, out: Broadcast[str], timeline: StageClock, state: FlightState) -> TextResult:
        try:
            automatic = self.config.routing.mode == "auto"
            route = self._route_around_trouble(job.route) if automatic else job.route
            # A tier forced by the routing mode is kept; only automatic routing lends another tier's slot.
            slot = self.scheduler.slot(job.priority, route.tier.value, may_borrow=automatic)
            async with slot as ticket:
                timeline.mark("dispatched", self.clock())
                state.record(Dispatched(self.clock(), ticket.runs_on))
                self.observer.dispatched(job.priority, ticket.waited_s)
                return await self._call_tiers(job, route, out, timeline, state, ticket)
        except QueueFull as exc:
            raise self._queue_full(exc) from None

    def _queue_full(self, exc: QueueFull) -> Refused:
        return self._refused(
            Refused(Refusal.QUEUE_FULL, "too many requests are waiting for the model", retry_after_s=exc.retry_after_s)
        )

    def _troubled_tiers(self) -> tuple[set[Tier], set[Tier]]:
        """Tiers whose circuit is open, and tiers stalled on a first token."""
        open_tiers = {tier for tier, circuit in self.circuits.items() if circuit.is_open}
        stalled = {tier for tier, watch in self.first_tokens.items() if watch.stalled}
        return open_tiers, stalled

    def _route_around_trouble(self, route: RouteDecision) -> RouteDecision:
        """The tier to queue for: the routed one, unless it is open or stalled and the other is not.

        Deciding before the slot is taken keeps the scheduler's per-tier counts true to where
        the call goes, and keeps work off a stuck tier instead of queueing behind it.
        """
        first = self.router.order(route, *self._troubled_tiers())[0]
        if first is route.tier:
            return route
        return RouteDecision(first, (*route.reasons, f"avoiding:{route.tier.value}"))

    async def _call_tiers(
        self,
        job: Job,
        route: RouteDecision,
        out: Broadcast[str],
        timeline: StageClock,
        state: FlightState,
        ticket: Ticket,
    ) -> TextResult:
        open_tiers, stalled = self._troubled_tiers()
        if ticket.runs_on is not None and ticket.runs_on != route.tier.value:
            route = RouteDecision(Tier(ticket.runs_on), (*route.reasons, "borrowed_slot"))
        order = self.router.order(route, open_tiers, stalled)
        first_audio = self._first_segment_watch(ticket)
        last_error: UpstreamError | None = None
        for attempt, tier in enumerate(order):
            if attempt:
                self.observer.failed_over(order[attempt - 1].value, tier.value)
            try:
                borrowed = ticket.borrowed and tier.value == ticket.runs_on
                return await self._call_tier(tier, job, out, timeline, state, first_audio, ticket, borrowed=borrowed)
            except UpstreamError as exc:
                last_error = exc
                if not exc.fails_over:
                    break
        raise self._upstream_failure(last_error, open_tiers)

    def _first_segment_watch(self, ticket: Ticket) -> Callable[[str], None]:
        """Feeds the model's tokens to a segmenter and settles the ticket at the first complete segment.

        The first segment is what the speech path sends to TTS at once, so from then on the call is
        no longer what a listener waits for: its level's place goes to the next request.
        """
        if not self.config.scheduler.priorities:
            # One plain FIFO queue (the baseline): each request keeps its place until it ends.
            return lambda token: None
        segmenter = Segmenter(lang=self.config.default_lang)

        def feed(token: str) -> None:
            if not ticket.settled and segmenter.feed(token):
                self.scheduler.settle(ticket)

        return feed

    async def _call_tier(
        self,
        tier: Tier,
        job: Job,
        out: Broadcast[str],
        timeline: StageClock,
        state: FlightState,
        on_token: Callable[[str], None],
        ticket: Ticket,
        *,
        borrowed: bool = False,
    ) -> TextResult:
        upstream = self.config.upstreams.for_tier(tier)
        # A call on a borrowed slot keeps the reply its own tier asks for (length, stop): only the server differs.
        shape = self.config.upstreams.for_tier(job.route.tier) if borrowed else upstream
        request = ChatRequest(
            messages=job.messages,
            model=upstream.model,
            num_predict=min(int(job.options.get("num_predict", shape.num_predict)), shape.num_predict),
            temperature=float(job.options.get("temperature", shape.temperature)),
            stop=tuple(job.options.get("stop", shape.stop)),
            keep_alive=upstream.keep_alive,
            call_info=self._call_info(job, timeline),
        )
        started = self.clock()
        watch = self.first_tokens[tier]
        latency_critical = self._latency_critical(job)
        patience = self._patience_s(job, tier) if latency_critical else None
        overdue = (
            asyncio.get_running_loop().call_later(patience, self._call_overdue, tier, ticket, started)
            if patience is not None
            else None
        )
        pieces: list[str] = []
        try:
            async for token in self.clients[tier].stream_chat(request):
                if not pieces:
                    if overdue is not None:
                        overdue.cancel()
                    state.record(FirstToken(self.clock(), tier.value))
                    ttft = self.clock() - started
                    timeline.mark("first_token", self.clock())
                    self.observer.first_token(tier.value, ttft)
                    self.saturation.record_ttft(tier.value, ttft)
                    watch.first_token(ttft, typical=latency_critical)
                pieces.append(token)
                out.publish(token)
                on_token(token)
        except UpstreamError as exc:
            self._record_failure(tier, exc)
            raise
        finally:
            if overdue is not None:
                overdue.cancel()
        timeline.mark("done", self.clock())
        state.record(Done(self.clock(), tier.value))
        self.circuits[tier].record_success()
        self.saturation.record_success(tier.value)
        self.observer.call_done(tier.value)
        return TextResult("".join(pieces), tier.value, job.priority, dict(timeline.marks))

    def _call_info(self, job: Job, timeline: StageClock) -> CallInfo:
        """The call's priority, class, remaining first-token wait and key, for a gate in front of the server."""
        deadline_ms = None
        if self._latency_critical(job):
            left_s = self.first_audio_deadline_s(job.request_class) - (self.clock() - timeline.received)
            deadline_ms = min(MAX_DEADLINE_MS, max(1, round(left_s * 1000)))
        # Only a lane that coalesces asks the gate to coalesce: its key is then the request's own.
        key = job.key if self.coalesces else None
        return CallInfo(job.priority, job.request_class.value, deadline_ms, key)

    def _latency_critical(self, job: Job) -> bool:
        """Short chats and notifications: the work a listener waits for, which a stalled tier must not hold up."""
        return self.config.scheduler.priorities and job.priority == 0

    def first_audio_deadline_s(self, request_class: RequestClass) -> float:
        """How long after a request its listener waits for audio before the original text is spoken instead."""
        ttfa = self.config.ttfa
        return max(0.05, ttfa.targets.for_class(request_class) - ttfa.expected_tts_s)

    def _patience_s(self, job: Job, tier: Tier) -> float | None:
        return self.first_tokens[tier].patience_s(
            deadline_s=self.first_audio_deadline_s(job.request_class),
            timeout_s=self.config.upstreams.for_tier(tier).first_token_timeout_s,
        )

    def _call_overdue(self, tier: Tier, ticket: Ticket, started: float) -> None:
        """A latency-critical call is past its patience with no first token.

        Its listener has stopped waiting, so it gives up its level's place: the next chat
        starts instead of queueing behind it (and, if the tier has stalled, on the other
        tier). The call itself goes on until its first-token timeout, which is what the
        circuit counts.
        """
        self.scheduler.settle(ticket)
        watch = self.first_tokens[tier]
        was_stalled = watch.stalled
        if watch.overdue(started) and not was_stalled:
            log.warning(
                "no first token from %s after %.1f s: new work goes to the other tier until it answers",
                tier.value,
                self.clock() - started,
            )

    def _record_failure(self, tier: Tier, exc: UpstreamError) -> None:
        if exc.retryable:
            # Only the tier's own failures count against it (see UpstreamError).
            self.circuits[tier].record_failure()
            kind = "http_503" if exc.status == 503 else ("timeout" if exc.kind == "timeout" else "other")
            self.saturation.record_failure(tier.value, kind)
        self.observer.call_failed(tier.value, exc.kind)
        log.warning("upstream %s failed: %s (%s)", tier.value, exc.kind, exc)

    def _upstream_failure(self, error: UpstreamError | None, open_tiers: set[Tier]) -> Failed:
        if error is None or len(open_tiers) == len(Tier):
            return Failed(Failure.UPSTREAM_UNAVAILABLE, "no model tier is available")
        if not error.before_first_token:
            return Failed(Failure.UPSTREAM_INTERRUPTED, f"the model stream broke off: {error}")
        if not error.retryable:
            return Failed(Failure.UPSTREAM_FAILED, f"the model server refused the request: {error}")
        if error.kind == "timeout":
            return Failed(Failure.UPSTREAM_TIMEOUT, f"the model did not answer in time: {error}")
        return Failed(Failure.UPSTREAM_FAILED, f"every model tier failed: {error}")

    # ----- observation ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "queue": self.scheduler.snapshot(),
            "guardian": self.guardian.snapshot(),
            "upstreams": {
                tier.value: {
                    "url": self.config.upstreams.for_tier(tier).url,
                    "protocol": self.config.upstreams.for_tier(tier).protocol.value,
                    "model": self.config.upstreams.for_tier(tier).model,
                    "healthy": self.healthy[tier],
                    "circuit": self.circuits[tier].state,
                    "stalled": self.first_tokens[tier].stalled,
                }
                for tier in Tier
            },
            "cache": self.cache.stats(),
            "single_flight": self.flights.stats(),
        }
