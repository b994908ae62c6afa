"""Plays a generated reply onto the wire on the latency model's schedule, with any injected fault.

Shared by Ollama chat/generate and OpenAI chat completions: the handler decides what
the reply is and in which dialect; this module holds the slot, waits for the model to
load, paces the tokens and breaks the stream the way an armed fault says.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aiohttp import web

from voicelane.sim.faults import Fault, FaultSpec
from voicelane.sim.replies import Reply, oversized_tokens
from voicelane.sim.state import Simulator
from voicelane.sim.wire import Dialect, Timings, dumps

# How many times the token bound an `oversized` reply runs to if the client never gives up.
OVERSIZED_FACTOR = 50

_MID_STREAM = frozenset({Fault.RESET_MID_STREAM, Fault.TRUNCATED, Fault.ERROR_LINE, Fault.MALFORMED_LINE})


@dataclass(frozen=True)
class GenerationPlan:
    model: str  # canonical name, for residency
    reply: Reply
    prompt_tokens: int
    keep_alive_s: float
    stream: bool
    max_tokens: int | None


def abort(request: web.Request) -> None:
    """Drop the connection at once (an RST where the OS allows): no response, or a cut one."""
    request["aborted"] = True
    transport = request.transport
    if transport is not None:
        transport.abort()


async def hold(seconds: float) -> None:
    """A stall. The server cancels the handler when the client goes away, which ends it early."""
    await asyncio.sleep(seconds)


async def play(
    request: web.Request, sim: Simulator, dialect: Dialect, plan: GenerationPlan, fault: FaultSpec | None
) -> web.StreamResponse:
    """Run one generation in a slot (the caller turns ServerBusy into a 503)."""
    async with sim.slot():
        load_wait = sim.residency.begin(plan.model, sim.settings.profile.load_s)
        try:
            return await _Playback(request, sim, dialect, plan, fault, load_wait).run()
        finally:
            sim.residency.end(plan.model, plan.keep_alive_s)


class _Playback:
    def __init__(
        self,
        request: web.Request,
        sim: Simulator,
        dialect: Dialect,
        plan: GenerationPlan,
        fault: FaultSpec | None,
        load_wait: float,
    ) -> None:
        self.request = request
        self.sim = sim
        self.dialect = dialect
        self.plan = plan
        self.fault = fault
        self.kind = fault.fault if fault is not None else None
        self.loop = asyncio.get_running_loop()
        self.arrived: float = request.get("arrived", self.loop.time())
        self.load_wait = load_wait
        self.profile = sim.settings.profile
        self.response: web.StreamResponse | None = None

    async def run(self) -> web.StreamResponse:
        tokens = self.plan.reply.tokens
        done_reason: str = self.plan.reply.done_reason
        tokens_per_s = self.profile.tokens_per_s
        if self.fault is not None and self.kind is Fault.SLOW_TOKENS:
            tokens_per_s = self.fault.tokens_per_s
        if self.kind is Fault.OVERSIZED:
            bound = self.plan.max_tokens if self.plan.max_tokens and self.plan.max_tokens > 0 else 64
            tokens = oversized_tokens(self.plan.reply.text, max(bound, 16) * OVERSIZED_FACTOR)
            done_reason = "stop"
        start = self.loop.time() + self.load_wait
        if self.fault is not None and self.kind is Fault.STALL_FIRST_TOKEN:
            await self._prepare(self.dialect.content_type if self.plan.stream else self.dialect.whole_content_type)
            await asyncio.sleep(self.load_wait)
            await hold(self.fault.hold_s)
            start = self.loop.time()
        offsets = self.profile.token_offsets(len(tokens), tokens_per_s=tokens_per_s)
        interval = 1.0 / tokens_per_s
        try:
            if self.plan.stream:
                return await self._stream(tokens, offsets, start, done_reason, interval)
            return await self._whole(tokens, offsets, start, done_reason, interval)
        except ConnectionError:
            # The client went away mid-write; nothing more to send.
            return self.response or web.Response()

    def _timings(self, token_count: int, interval: float) -> Timings:
        return Timings(
            load_s=self.load_wait,
            prompt_eval_s=self.profile.ttft_s,
            eval_s=token_count * interval,
            total_s=self.loop.time() - self.arrived,
            prompt_tokens=self.plan.prompt_tokens,
            eval_tokens=token_count,
        )

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - self.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _prepare(self, content_type: str) -> web.StreamResponse:
        if self.response is None:
            response = web.StreamResponse(status=200, headers={"Content-Type": content_type})
            if content_type == "text/event-stream":
                response.headers["Cache-Control"] = "no-cache"
            await response.prepare(self.request)
            self.response = response
        return self.response

    async def _stream(
        self, tokens: tuple[str, ...], offsets: list[float], start: float, done_reason: str, interval: float
    ) -> web.StreamResponse:
        fault_at = min(self.fault.after_tokens, len(tokens)) if self.fault and self.kind in _MID_STREAM else -1
        for index, token in enumerate(tokens):
            if index == fault_at and await self._break_stream():
                return self._finished()
            await self._sleep_until(start + offsets[index])
            # Headers go out with the first token, as Ollama's do, so queueing and loading
            # show up to the client as a late response rather than an idle open stream.
            response = await self._prepare(self.dialect.content_type)
            await response.write(self.dialect.token_frame(token))
        if fault_at == len(tokens) and await self._break_stream():
            return self._finished()
        if not tokens:
            await self._sleep_until(start + self.profile.ttft_s)
        response = await self._prepare(self.dialect.content_type)
        await response.write(self.dialect.final_frames(done_reason, self._timings(len(tokens), interval)))
        await response.write_eof()
        return response

    def _finished(self) -> web.StreamResponse:
        return self.response or web.Response()

    async def _break_stream(self) -> bool:
        """Apply a mid-stream fault; True if the stream is over."""
        assert self.fault is not None
        response = await self._prepare(self.dialect.content_type)
        if self.kind is Fault.RESET_MID_STREAM:
            abort(self.request)
            return True
        if self.kind is Fault.TRUNCATED:
            await response.write_eof()
            return True
        if self.kind is Fault.ERROR_LINE:
            await response.write(self.dialect.error_frame(self.fault.message))
            await response.write_eof()
            return True
        await response.write(self.dialect.malformed_frame())
        return False

    async def _whole(
        self, tokens: tuple[str, ...], offsets: list[float], start: float, done_reason: str, interval: float
    ) -> web.StreamResponse:
        await self._sleep_until(start + (offsets[-1] if offsets else self.profile.ttft_s))
        body = dumps(self.dialect.whole("".join(tokens), done_reason, self._timings(len(tokens), interval)))
        content_type = self.dialect.whole_content_type
        if self.fault is not None and self.kind is Fault.ERROR_LINE:
            return web.Response(
                status=500,
                body=dumps(self.dialect.error_body(self.fault.message)),
                content_type="application/json",
            )
        if self.kind is Fault.MALFORMED_LINE:
            return web.Response(status=200, body=body[: len(body) // 2] + b"\n", headers={"Content-Type": content_type})
        if self.kind in (Fault.RESET_MID_STREAM, Fault.TRUNCATED):
            response = await self._prepare(content_type)
            await response.write(body[: len(body) // 2])
            if self.kind is Fault.RESET_MID_STREAM:
                abort(self.request)
            else:
                await response.write_eof()
            return response
        if self.response is not None:
            await self.response.write(body)
            await self.response.write_eof()
            return self.response
        return web.Response(status=200, body=body, headers={"Content-Type": content_type})


async def hang_then_abort(request: web.Request, sim: Simulator, seconds: float) -> web.StreamResponse:
    """A stuck model: the body is read and a slot taken, then nothing at all for `seconds`, then a
    dropped connection. The caller turns ServerBusy (no slot and a full queue) into a 503."""
    await request.read()
    async with sim.slot():
        with contextlib.suppress(ConnectionError):
            await hold(seconds)
    abort(request)
    return web.Response()


async def stall_then_abort(request: web.Request, content_type: str, seconds: float) -> web.StreamResponse:
    """Headers, then nothing for `seconds`, then a dropped connection."""
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        await hold(seconds)
    abort(request)
    return response
