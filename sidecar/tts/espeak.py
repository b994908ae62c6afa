"""Speech from libespeak-ng inside this process, through ctypes, on one dedicated thread.

The library and its voice data (Swedish and English included) come from the PyPI package
`espeakng-loader`, so a fresh machine speaks with no extra service. libespeak-ng keeps
global state and is not thread-safe: every call into it runs on one worker thread shared
by the whole process, and concurrent syntheses queue for it in arrival order (the speech
pipeline hands it one piece at a time, most urgent first: `tts/gate.py`). In synchronous
mode the library hands over about 100 ms of samples at a time while it synthesizes; each chunk goes
straight to the waiting coroutine, so the first audio is out long before a long text is
done. A consumer that stops (its client left) cancels its job: the callback then returns 1,
which makes the library stop at once, and the worker is free for the next synthesis. The
worker also pauses while its consumer is `max_ahead_s` of audio behind, and gives the job
up if the consumer takes nothing for `timeout_s`, so an abandoned stream cannot hold the
worker or pile up memory.

Voice: the request's language picks the espeak-ng voice ("sv", "en" → en-us, …). A
requested voice is used when it speaks that language ("en-gb" for English, "sv+f3" for
Swedish) or is a bare variant ("+f3"); a voice of another language gives only its variant,
since Swedish phonetics reading English text is worse than any voice. Rate: espeakRATE is
175 words per minute times `rate`, clamped to espeak-ng's 80 to 450. Style hints map mildly onto
pitch and pitch range (e.g. "cheerful": a little higher and livelier; "calm": lower and
flatter); other styles are ignored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import re
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

from voicelane.sidecar.tts.base import CountingBackend, SpeechRequest, TTSError

log = logging.getLogger("voicelane.sidecar.tts.espeak")

# From espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of ending the process
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000  # a sentence pause at the end, so consecutive segments do not run together
_POS_CHARACTER = 1
_EE_OK = 0
_PARAMETER_RATE = 1
_PARAMETER_PITCH = 3
_PARAMETER_RANGE = 4

BUFFER_MS = 100  # audio per callback
ESPEAK_SAMPLE_RATE = 22_050  # what espeak_Initialize returns for espeak-ng's voice data
DEFAULT_WPM = 175
MIN_WPM, MAX_WPM = 80, 450
NEUTRAL_PROSODY = (50, 50)  # espeak-ng's default pitch and pitch range (0 to 100)
STYLE_PROSODY: dict[str, tuple[int, int]] = {
    "cheerful": (58, 70),
    "happy": (58, 70),
    "excited": (62, 80),
    "friendly": (54, 60),
    "calm": (46, 35),
    "serious": (44, 35),
    "sad": (42, 30),
}
LANGUAGE_VOICES = {"en": "en-us", "en-gb": "en", "no": "nb"}
_VOICE_NAME = re.compile(r"[A-Za-z0-9_-]{0,40}(?:\+[A-Za-z0-9_-]{1,40})?")

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _language(lang: str) -> str:
    return lang.strip().lower().replace("_", "-")


def voice_candidates(lang: str, voice: str | None, default_voice: str) -> list[str]:
    """espeak-ng voice names to try, best first, for text in `lang` with an optional requested voice."""
    language = _language(lang)
    primary = language.split("-")[0]
    language_voice = LANGUAGE_VOICES.get(language, language)
    candidates: list[str] = []
    requested = (voice or "").strip()
    if requested and _VOICE_NAME.fullmatch(requested):
        name, _, variant = requested.partition("+")
        if _language(name).split("-")[0] == primary:
            candidates.append(
                LANGUAGE_VOICES.get(_language(name), _language(name)) + (f"+{variant}" if variant else "")
            )
        elif variant:
            candidates.append(f"{language_voice}+{variant}")
    fallback = LANGUAGE_VOICES.get(_language(default_voice), _language(default_voice))
    for name in (language_voice, LANGUAGE_VOICES.get(primary, primary), fallback, "en"):
        if name and _VOICE_NAME.fullmatch(name) and name not in candidates:
            candidates.append(name)
    return candidates


def words_per_minute(rate: float) -> int:
    return max(MIN_WPM, min(MAX_WPM, round(DEFAULT_WPM * rate)))


def prosody(style: str | None) -> tuple[int, int]:
    """(pitch, pitch range) for a style hint; unknown or no style: espeak-ng's defaults."""
    if not style:
        return NEUTRAL_PROSODY
    return STYLE_PROSODY.get(style.strip().lower(), NEUTRAL_PROSODY)


_Item = bytes | TTSError | None  # a chunk, a failure, or None for the end


class _Job:
    """One synthesis: its settings, and the hand-over of chunks from the worker to the loop."""

    def __init__(
        self,
        request: SpeechRequest,
        voices: Sequence[str],
        loop: asyncio.AbstractEventLoop,
        *,
        max_ahead_chunks: int,
        stall_timeout_s: float,
    ) -> None:
        self.text = request.text
        self.voices = list(voices)
        self.wpm = words_per_minute(request.rate)
        self.pitch, self.pitch_range = prosody(request.style)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.cancelled = False
        self.stalled = False
        self._loop = loop
        self._max_ahead = max(1, max_ahead_chunks)
        self._stall_timeout_s = stall_timeout_s
        self._ahead = 0
        self._changed = threading.Condition()

    # ----- worker thread -------------------------------------------------------------------------

    def deliver(self, chunk: bytes) -> bool:
        """Hand a chunk to the consumer; False when synthesis should stop."""
        with self._changed:
            if self.cancelled:
                return False
            self._ahead += 1
        if not self._post(chunk):
            return False
        with self._changed:
            caught_up = self._changed.wait_for(
                lambda: self.cancelled or self._ahead < self._max_ahead, timeout=self._stall_timeout_s
            )
            if not caught_up:
                # The consumer stopped reading without closing its stream: free the worker.
                self.cancelled = self.stalled = True
            return not self.cancelled

    def finish(self, error: TTSError | None) -> None:
        if error is None and self.stalled:
            error = TTSError("timeout", f"the consumer took no audio for {self._stall_timeout_s:g} s")
        if error is not None:
            self._post(error)
        self._post(None)

    def _post(self, item: _Item) -> bool:
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()
            return False
        return True

    # ----- event loop ----------------------------------------------------------------------------

    def taken(self) -> None:
        with self._changed:
            self._ahead -= 1
            self._changed.notify_all()

    def cancel(self) -> None:
        with self._changed:
            self.cancelled = True
            self._changed.notify_all()


class _Engine:
    """The process's one libespeak-ng and the one thread allowed to call it."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="voicelane-espeak")
        self._lib: Any = None
        self._failure: str | None = None
        self._voice: str | None = None
        self._job: _Job | None = None
        self.sample_rate = 0
        self.busy = False
        # Kept referenced for the life of the engine: the library holds a raw pointer to it.
        self._callback = _SynthCallback(self._on_samples)

    def submit(self, work: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        try:
            return self._executor.submit(work, *args)
        except RuntimeError as exc:  # the interpreter is shutting down
            raise TTSError("unavailable", f"the espeak-ng worker has stopped: {exc}") from None

    # Everything below runs on the worker thread only.

    def initialize(self) -> int:
        if self._lib is not None:
            return self.sample_rate
        if self._failure is not None:
            raise TTSError("unavailable", self._failure)
        try:
            import espeakng_loader

            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path()
        except (ImportError, OSError, RuntimeError) as exc:
            self._failure = f"libespeak-ng could not be loaded (pip install espeakng-loader): {exc}"
            raise TTSError("unavailable", self._failure) from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if sample_rate <= 0:
            self._failure = f"espeak_Initialize failed (voice data at {data_path})"
            raise TTSError("unavailable", self._failure)
        lib.espeak_SetSynthCallback(self._callback)
        self._lib, self.sample_rate = lib, sample_rate
        return sample_rate

    def synthesize(self, job: _Job) -> None:
        """Speak one job; it always ends with its end marker, after any error."""
        error: TTSError | None = None
        self.busy = True
        try:
            if not job.cancelled:
                self._speak(job)
        except TTSError as exc:
            error = exc
        except Exception as exc:  # a ctypes failure must reach the consumer, not kill the worker
            error = TTSError("unavailable", f"espeak-ng failed: {exc}")
        finally:
            self.busy = False
            job.finish(error)

    def _speak(self, job: _Job) -> None:
        self.initialize()
        lib = self._lib
        self._select_voice(job.voices)
        lib.espeak_SetParameter(_PARAMETER_RATE, job.wpm, 0)
        lib.espeak_SetParameter(_PARAMETER_PITCH, job.pitch, 0)
        lib.espeak_SetParameter(_PARAMETER_RANGE, job.pitch_range, 0)
        text = job.text.encode("utf-8")
        self._job = job
        try:
            status = lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
        finally:
            self._job = None
        if status != _EE_OK and not job.cancelled:
            raise TTSError("unavailable", f"espeak_Synth failed with status {status}")

    def _select_voice(self, candidates: Sequence[str]) -> None:
        for name in candidates:
            if name == self._voice:
                return
            if self._lib.espeak_SetVoiceByName(name.encode("ascii")) == _EE_OK:
                self._voice = name
                return
        raise TTSError("rejected", f"no espeak-ng voice among {', '.join(candidates)}")

    def _on_samples(self, samples: Any, count: int, events: Any) -> int:
        """The library's callback: 0 to go on, 1 to stop synthesizing."""
        job = self._job
        try:
            if job is None or job.cancelled:
                return 1
            if count > 0 and samples:
                return 0 if job.deliver(ctypes.string_at(samples, count * 2)) else 1
            return 0
        except Exception:  # an exception cannot cross back into C: stop instead
            log.exception("espeak-ng callback failed")
            return 1


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def shared_engine() -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Engine()
        return _engine


class EspeakBackend(CountingBackend):
    """espeak-ng speech in this process (shares the one engine with any other instance)."""

    name = "espeak"
    parallel = 1  # the engine's one thread

    def __init__(self, *, voice: str = "sv", timeout_s: float = 15.0, max_ahead_s: float = 5.0) -> None:
        super().__init__()
        self.default_voice = voice
        self.timeout_s = timeout_s
        self.max_ahead_s = max_ahead_s
        self._engine = shared_engine()
        self._jobs: set[_Job] = set()
        self._closed = False
        try:
            # Once per process, a few milliseconds: the rate must be known before any audio goes out.
            self._sample_rate = int(self._engine.submit(self._engine.initialize).result())
        except TTSError as exc:
            log.warning("espeak-ng is unavailable: %s", exc.message)
            self._sample_rate = ESPEAK_SAMPLE_RATE

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def busy(self) -> bool:
        """True while the engine is synthesizing (for this or another instance)."""
        return self._engine.busy

    async def _stream(self, request: SpeechRequest) -> AsyncGenerator[bytes, None]:
        if self._closed:
            raise TTSError("unavailable", "the espeak backend is closed")
        chunk_s = BUFFER_MS / 1000.0
        job = _Job(
            request,
            voice_candidates(request.lang, request.voice, self.default_voice),
            asyncio.get_running_loop(),
            max_ahead_chunks=max(1, round(self.max_ahead_s / chunk_s)),
            stall_timeout_s=self.timeout_s,
        )
        self._jobs.add(job)
        try:
            self._engine.submit(self._engine.synthesize, job)
            while True:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        item = await job.queue.get()
                except TimeoutError:
                    raise TTSError("timeout", f"no audio from espeak-ng within {self.timeout_s:g} s") from None
                if item is None:
                    return
                if isinstance(item, TTSError):
                    raise item
                job.taken()
                yield item
        finally:
            job.cancel()
            self._jobs.discard(job)

    async def health(self) -> bool:
        if self._closed:
            return False
        try:
            await asyncio.wrap_future(self._engine.submit(self._engine.initialize))
        except TTSError:
            return False
        return True

    async def close(self) -> None:
        """Stop this instance's syntheses; the shared engine stays for other instances."""
        self._closed = True
        for job in list(self._jobs):
            job.cancel()
