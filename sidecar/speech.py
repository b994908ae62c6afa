"""The speech pipeline: model tokens → segmenter → TTS → audio chunks, coalesced and cached.

The first audio byte is what users feel, so nothing waits for the whole rewrite:
each segment the segmenter completes goes to TTS at once while the model keeps
streaming. Segments are synthesised in pieces of at most `PIECE_MAX_CHARS`, each in a
turn of the synthesis gate, highest priority first: a chat waits for at most one piece
of a long text, never for the whole of it. A spoken request is its own single flight, so
identical requests get the same audio from the first byte from one synthesis; finished
audio is cached. Chat and notifications always speak: if the model fails or misses the
class deadline, the original text is spoken instead (and counted).

Memory is bounded whatever the mix of requests: a request's next piece is synthesised
only once its slowest client is within `READ_AHEAD_S` of audio of what is already
synthesised, audio every client has taken is let go (kept only while a request's audio is
at most `KEEP_S` long, so that identical requests can join and the result be cached, and
`KEPT_AUDIO_BYTES` for all of them together), and no piece starts while spoken requests
hold `SPEECH_AUDIO_BUDGET_BYTES` of audio in all (the last `SPEECH_AUDIO_RESERVE_BYTES` of
it only for priority 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from voicelane.core.broadcast import Broadcast
from voicelane.core.refusals import LaneError, Refused
from voicelane.core.singleflight import Flight, FlightCancelled, SingleFlight
from voicelane.sidecar.audio import PCM_SAMPLE_WIDTH
from voicelane.sidecar.config import RequestClass, SidecarConfig, VoiceStyle
from voicelane.sidecar.edge import TextRequest
from voicelane.sidecar.errors import ApiError
from voicelane.sidecar.lane import Lane, Submission
from voicelane.sidecar.metrics import SidecarMetrics
from voicelane.sidecar.segmenter import Segmenter, segment_text
from voicelane.sidecar.ttfa import StageClock, TTFAMonitor
from voicelane.sidecar.tts.base import SpeechRequest, TTSBackend, TTSError
from voicelane.sidecar.tts.gate import SynthesisGate
from voicelane.sidecar.tts.pieces import PIECE_MAX_CHARS, speech_pieces
from voicelane.sidecar.tts.stream import AudioReader, AudioStream, KeptAudio

log = logging.getLogger("voicelane.sidecar.speech")

ALWAYS_SPEAK = frozenset({RequestClass.CHAT, RequestClass.NOTIFICATION, RequestClass.EMAIL, RequestClass.EMAIL_TLDR})

# A request's next piece waits until its slowest client is this close behind: enough that a
# client playing in real time never runs dry (a piece takes milliseconds), little to hold.
READ_AHEAD_S = 5.0
# Audio up to this long is kept whole while it plays, for identical requests to join and for the
# cache: a chat or a notification (a few seconds) always is, a long text is not.
KEEP_S = 30.0
# Below the budget less its reserve, so audio that is only kept can never stop every piece:
# what is over it is audio some client has still to take, and clients take it.
KEPT_AUDIO_BYTES = 8 * 1024 * 1024
# All audio held for spoken requests together; no piece starts while they hold this much, and
# none below priority 0 while they hold all but the reserve (a few dozen seconds of chat).
SPEECH_AUDIO_BUDGET_BYTES = 16 * 1024 * 1024
SPEECH_AUDIO_RESERVE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class AudioResult:
    """Finished audio of one spoken request (16-bit mono PCM); `pcm` None: too long to keep."""

    pcm: bytes | None
    sample_rate: int
    tier: str
    fallback: str | None
    spoken_text: str

    @property
    def size_bytes(self) -> int:
        return len(self.pcm or b"") + len(self.spoken_text.encode("utf-8")) + 256


@dataclass
class SpeechMeta:
    """What a running audio flight has decided so far (read by joiners for their headers)."""

    tier: str | None = None
    fallback: str | None = None
    stages: StageClock | None = None
    stream: AudioStream | None = None
    flight_key: str = ""


@dataclass
class AudioSubmission:
    request: TextRequest
    priority: int
    key: str
    cached: AudioResult | None = None
    flight: Flight[bytes, AudioResult] | None = None
    meta: SpeechMeta = field(default_factory=SpeechMeta)
    reader: AudioReader | None = None

    @property
    def shared(self) -> bool:
        return self.flight is not None and self.flight.shared

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        if self.cached is not None:
            if self.cached.pcm:
                yield self.cached.pcm
            return
        assert self.flight is not None
        assert self.reader is not None
        try:
            # The subscription holds the shared work while this client reads; the audio itself
            # comes through the reader, which lets go of what every client has taken.
            async with self.flight.subscribe():
                async for chunk in self.reader:
                    yield chunk
        finally:
            self.reader.close()

    async def tier(self) -> str:
        if self.cached is not None:
            return "cache"
        assert self.flight is not None
        if self.flight.done:
            with contextlib.suppress(Exception):
                return (await self.flight.result()).tier
        return self.meta.tier or "unknown"


class Speaker:
    """Runs spoken requests through the lane and the TTS backend."""

    def __init__(
        self,
        lane: Lane,
        backend: TTSBackend,
        metrics: SidecarMetrics,
        monitor: TTFAMonitor,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lane = lane
        self.backend = backend
        self.metrics = metrics
        self.monitor = monitor
        self.clock = clock
        # Running audio flights by audio key: the ones an identical request may join.
        self._running: dict[str, SpeechMeta] = {}
        self._flight_numbers = itertools.count()
        # Audio flights are apart from the lane's text flights. A finished one is not shared: its
        # audio is in the cache if it was short enough to keep, and let go if not.
        self.flights: SingleFlight[str, bytes] = SingleFlight(window_s=0, clock=clock)
        self.gate = SynthesisGate(
            capacity=backend.parallel,
            budget_bytes=SPEECH_AUDIO_BUDGET_BYTES,
            reserve_bytes=SPEECH_AUDIO_RESERVE_BYTES,
        )
        self.kept_audio = KeptAudio(KEPT_AUDIO_BYTES)

    @property
    def config(self) -> SidecarConfig:
        return self.lane.config

    # ----- keys and styles -----------------------------------------------------------------------

    def style_for(self, request: TextRequest) -> VoiceStyle:
        style = self.config.tts.classes.get(request.request_class, VoiceStyle())
        return style

    def audio_key(self, request: TextRequest, text_key: str) -> str:
        """The text's key (text, class, language, tier, prompt version) plus how it is voiced."""
        style = self.style_for(request)
        voice = request.voice or style.voice or self.config.tts.voice
        voicing = f"{self.config.tts.backend}|{voice}|{style.rate}|{style.style}"
        return "audio:" + hashlib.sha256(f"{text_key}|{voicing}".encode()).hexdigest()

    # ----- admission -----------------------------------------------------------------------------

    def submit(self, request: TextRequest, stages: StageClock) -> AudioSubmission:
        """Admit a spoken request now: audio cache, audio flight, or a new flight over the text lane."""
        text_job = self.lane.text_job(
            text=request.text,
            request_class=request.request_class,
            target_lang=request.target_lang,
            request_id=request.request_id,
        )
        key = self.audio_key(request, text_job.key)
        cached = self.lane.cache.get(key)
        if isinstance(cached, AudioResult):
            stages.mark("admitted")  # cache hits and joiners are admitted at once; they use no capacity
            self.metrics.cache_lookups.labels("hit", "audio").inc()
            return AudioSubmission(request, text_job.priority, key, cached=cached)
        self.metrics.cache_lookups.labels("miss", "audio").inc()
        running = self._running.get(key) if self.lane.coalesces else None
        if running is not None and running.stream is not None and running.flight_key in self.flights:
            reader = running.stream.reader()  # None once it has let audio go: then it is not joined
            if reader is not None:
                stages.mark("admitted")
                self.metrics.singleflight.labels("joiner").inc()
                flight: Flight[bytes, AudioResult] = self.flights.join(running.flight_key, self._never_started)
                return AudioSubmission(request, text_job.priority, key, flight=flight, meta=running, reader=reader)
        # May raise Refused (rate limit, guardian, queue): a refusal leaves before any audio work.
        text = self.lane.submit(text_job, received=stages.received)
        stages.mark("admitted")
        stream = AudioStream(keep_bytes=self._audio_bytes(KEEP_S), kept=self.kept_audio, on_hold=self.gate.hold)
        meta = SpeechMeta(stages=stages, stream=stream, flight_key=f"{key}:{next(self._flight_numbers)}")
        if self.lane.coalesces:
            self._running[key] = meta
        producer = self._producer(request, text, text_job.priority, key, meta)
        flight = self.flights.join(meta.flight_key, producer)
        # The leader's reader is registered now, before any audio exists, so none is let go unread.
        reader = stream.reader()
        return AudioSubmission(request, text_job.priority, key, flight=flight, meta=meta, reader=reader)

    def _audio_bytes(self, seconds: float) -> int:
        return round(seconds * self.backend.sample_rate) * PCM_SAMPLE_WIDTH

    @staticmethod
    async def _never_started(out: Broadcast[bytes]) -> AudioResult:  # pragma: no cover - joins only
        raise RuntimeError("a joiner never starts a flight")

    # ----- production ----------------------------------------------------------------------------

    def _producer(
        self, request: TextRequest, text: Submission, priority: int, key: str, meta: SpeechMeta
    ) -> Callable[[Broadcast[bytes]], Any]:
        # The flight's own broadcast stays empty: the audio goes through the meta's AudioStream.
        stream = meta.stream
        assert stream is not None

        async def produce(_: Broadcast[bytes]) -> AudioResult:
            try:
                # Speaking holds no model slot, yet background work waits for it as for model work:
                # the scheduler counts it at the request's priority and decides what it holds back.
                with self.lane.scheduler.occupied(priority):
                    result = await self._speak(request, text, priority, stream, meta)
            except asyncio.CancelledError:
                stream.fail(FlightCancelled(f"the speech of {meta.flight_key!r} was cancelled"))
                raise
            except BaseException as exc:
                stream.fail(exc)
                raise
            finally:
                if self._running.get(key) is meta:
                    del self._running[key]
            stream.finish()
            if result.fallback is None and result.pcm is not None:
                self.lane.cache.put(key, result, result.size_bytes)
            return result

        return produce

    def _deadline_s(self, request_class: RequestClass) -> float:
        ttfa = self.config.ttfa
        return max(0.05, ttfa.targets.for_class(request_class) - ttfa.expected_tts_s)

    def _fallback_text(self, request: TextRequest) -> str:
        if request.request_class is RequestClass.EMAIL:
            # The first sentences of the email, up to the TL;DR length, stand in for a summary.
            spoken = ""
            for sentence in segment_text(request.text, request.lang):
                if spoken and len(spoken) + len(sentence) > self.config.classes.tldr_max_chars:
                    break
                spoken += sentence
            return spoken.strip() or request.text[: self.config.classes.tldr_max_chars]
        return request.text

    async def _speak(
        self, request: TextRequest, text: Submission, priority: int, stream: AudioStream, meta: SpeechMeta
    ) -> AudioResult:
        stages = meta.stages or StageClock(self.clock())
        segments: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        limit = self.config.classes.tldr_max_chars if request.request_class is RequestClass.EMAIL else None
        pump = asyncio.create_task(self._pump_segments(request, text, segments, stages, limit))
        out = _StreamOut(stream, priority, self._audio_bytes(READ_AHEAD_S), stages)
        spoken: list[str] = []
        fallback: str | None = None
        try:
            budget = self._deadline_s(request.request_class) - (self.clock() - stages.received)
            try:
                first = await asyncio.wait_for(segments.get(), timeout=max(0.0, budget))
            except TimeoutError:
                first = None
                fallback = "deadline"
            if isinstance(first, BaseException):
                if request.request_class in ALWAYS_SPEAK and not _is_refusal(first):
                    fallback = "model_failure"
                else:
                    raise first
            if fallback is not None:
                # The pump is this request's only reader of the text flight: stopping it cancels the
                # model call unless an identical request still reads it, which gives back the chat's
                # place, the tier slot and the model server's slot, so the next chat is not held up
                # by an answer nobody will speak (tests/integration/sidecar/test_deadline_cascade.py).
                pump.cancel()
                queue_items: list[str | None] = self._fall_back(request, meta, stages, fallback)
            else:
                meta.tier = text.tier() or "unknown"
                queue_items = [first] if isinstance(first, str) else [None]
            await self._synthesize_all(request, queue_items, segments, out, spoken, use_queue=fallback is None)
            if fallback is None and not stream.published_bytes and request.request_class in ALWAYS_SPEAK:
                # The model answered with nothing to say (an empty or blank reply): the app was promised
                # speech, so the original text is spoken rather than a silent, empty answer.
                fallback = "empty_reply"
                items = self._fall_back(request, meta, stages, fallback)
                await self._synthesize_all(request, items, segments, out, spoken, use_queue=False)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        stages.mark("done")
        return AudioResult(
            stream.whole_audio(), self.backend.sample_rate, meta.tier or "unknown", fallback, "".join(spoken)
        )

    def _fall_back(self, request: TextRequest, meta: SpeechMeta, stages: StageClock, reason: str) -> list[str | None]:
        """Record a fallback; the items that speak the original text instead of the model's reply."""
        stages.mark("fallback")
        meta.fallback = reason
        meta.tier = "fallback"
        self.metrics.fallbacks.labels(request.request_class.value, reason).inc()
        log.warning("speaking the original text", extra={"request_id": request.request_id, "reason": reason})
        return [self._fallback_text(request), None]

    async def _pump_segments(
        self,
        request: TextRequest,
        text: Submission,
        segments: asyncio.Queue[str | BaseException | None],
        stages: StageClock,
        limit: int | None,
    ) -> None:
        segmenter = Segmenter.for_model_reply(request.target_lang)
        emitted = 0
        streaming = self.config.tts.sentence_streaming
        held: list[str] = []  # without sentence streaming, segments wait for the whole text
        try:
            async for token in text.tokens():
                if "first_token" not in stages.marks:
                    dispatched = text.dispatched_at
                    if dispatched is not None:
                        stages.mark("dispatched", dispatched)
                stages.mark("first_token")
                for segment in segmenter.feed(token):
                    if not streaming:
                        held.append(segment)
                        continue
                    if limit is not None and emitted >= limit:
                        break
                    stages.mark("first_segment")
                    emitted += len(segment)
                    await segments.put(segment)
                if limit is not None and emitted >= limit:
                    # The TL;DR is long enough; the email's body follows as segments.
                    break
            else:
                for segment in [*held, *segmenter.flush()]:
                    stages.mark("first_segment")
                    await segments.put(segment)
        except (ApiError, LaneError) as exc:
            await segments.put(exc)
            return
        await segments.put(None)

    async def _synthesize_all(
        self,
        request: TextRequest,
        first_items: list[str | None],
        segments: asyncio.Queue[str | BaseException | None],
        out: _Out,
        spoken: list[str],
        *,
        use_queue: bool,
    ) -> None:
        pending = list(first_items)
        while True:
            item = pending.pop(0) if pending else (await segments.get() if use_queue else None)
            if item is None:
                return
            if isinstance(item, BaseException):
                # The model broke off after speech began: what was spoken stands, the rest is an error.
                raise item
            sentence = item.strip()
            if not sentence:
                continue
            spoken.append(item)
            await self._synthesize(request, sentence, out)

    async def synthesize_whole(self, request: TextRequest, text: str) -> bytes:
        """Speak `text` at the request's priority and return all of its PCM; the caller bounds how long it is."""
        out = _CollectingOut(self.lane.priority(request.request_class, request.text))
        await self._synthesize(request, text, out)
        return b"".join(out.chunks)

    async def _synthesize(self, request: TextRequest, text: str, out: _Out) -> None:
        """Speak `text` piece by piece, each piece in a turn of the synthesis gate at `out.priority`."""
        style = self.style_for(request)
        voice = request.voice or style.voice or self.config.tts.voice
        for piece in speech_pieces(text, PIECE_MAX_CHARS):
            await out.ready_for_more()
            speech = SpeechRequest(
                text=piece, lang=request.target_lang, voice=voice, rate=style.rate, style=style.style
            )
            async with self.gate.turn(out.priority):
                await self._synthesize_piece(speech, out)

    async def _synthesize_piece(self, speech: SpeechRequest, out: _Out) -> None:
        backend_name = self.config.tts.backend
        try:
            # Closed at once however this ends, so the engine is free for the next turn.
            async with contextlib.aclosing(self.backend.synthesize(speech)) as chunks:
                async for chunk in chunks:
                    if chunk:
                        out.publish(chunk)
        except TTSError as exc:
            self.metrics.tts_calls.labels(backend_name, "error").inc()
            raise ApiError(502, "tts_failed", f"speech synthesis failed: {exc}", retry_after_s=2) from None
        self.metrics.tts_calls.labels(backend_name, "ok").inc()

    # ----- phrase bank ---------------------------------------------------------------------------

    async def prepare_phrase_bank(self) -> int:
        """Synthesize the phrase bank into the cache so those phrases play from memory."""
        bank = self.config.phrase_bank
        if not bank.enabled:
            return 0
        prepared = 0
        for phrase in bank.phrases:
            request = TextRequest(
                text=phrase,
                request_class=bank.source,
                lang=self.config.default_lang,
                target_lang=self.config.default_lang,
                request_id="phrase-bank",
            )
            text_job = self.lane.text_job(
                text=phrase, request_class=bank.source, target_lang=request.target_lang, request_id="phrase-bank"
            )
            self.lane.prime_text(text_job, phrase)
            try:
                pcm = await self.synthesize_whole(request, phrase)
            except ApiError:
                log.warning("phrase bank: could not synthesize a phrase; it will be synthesized on first use")
                continue
            result = AudioResult(pcm, self.backend.sample_rate, "phrase_bank", None, phrase)
            self.lane.cache.put(self.audio_key(request, text_job.key), result, result.size_bytes, pinned=True)
            prepared += 1
        return prepared


class _Out(Protocol):
    """Where synthesised audio goes, at which priority, and when the next piece may be synthesised."""

    priority: int

    async def ready_for_more(self) -> None: ...

    def publish(self, chunk: bytes) -> None: ...


class _StreamOut:
    """A spoken request's AudioStream: the next piece waits until its slowest client is close behind."""

    def __init__(self, stream: AudioStream, priority: int, read_ahead_bytes: int, stages: StageClock) -> None:
        self.stream = stream
        self.priority = priority
        self.read_ahead_bytes = read_ahead_bytes
        self.stages = stages

    async def ready_for_more(self) -> None:
        await self.stream.wait_for_readers(self.read_ahead_bytes)

    def publish(self, chunk: bytes) -> None:
        self.stages.mark("tts_first_byte")
        self.stream.publish(chunk)


class _CollectingOut:
    """The whole audio collected (phrase bank, email follow-ups), as chunks to join once at the end."""

    def __init__(self, priority: int) -> None:
        self.chunks: list[bytes] = []
        self.priority = priority

    async def ready_for_more(self) -> None:
        return None  # its caller keeps the whole audio anyway

    def publish(self, chunk: bytes) -> None:
        self.chunks.append(chunk)


def _is_refusal(exc: BaseException) -> bool:
    return isinstance(exc, Refused)
