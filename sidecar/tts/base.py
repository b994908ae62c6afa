"""The speech backend interface: what to say, streamed PCM back, and failures by kind.

Every backend yields 16-bit little-endian mono PCM at its own native `sample_rate`, in
chunks, the first as early as the backend can produce it. Failures are `TTSError`s with a
kind the caller can act on; nothing else escapes a backend.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from voicelane.sidecar.config import TTSConfig

TTSErrorKind = Literal["unavailable", "timeout", "bad_audio", "rejected"]
# The OpenAI speech API's `pcm` is 24 kHz; servers that follow it (Kokoro-FastAPI, Speaches) do too.
OPENAI_PCM_SAMPLE_RATE = 24_000


@dataclass(frozen=True)
class SpeechRequest:
    """One piece of text to speak. `voice` None: the backend's default; `rate` 1.0: normal speed."""

    text: str
    lang: str = "sv"
    voice: str | None = None
    rate: float = 1.0
    style: str | None = None


class TTSError(Exception):
    """A synthesis that failed.

    kinds: `unavailable` (backend down, unreachable or broken off), `timeout` (no audio in
    time), `bad_audio` (what came back is not usable audio), `rejected` (the backend refused
    this request: unknown voice, bad key, text it will not take).
    """

    def __init__(self, kind: TTSErrorKind, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind: TTSErrorKind = kind
        self.message = message


@runtime_checkable
class TTSBackend(Protocol):
    """What the speech pipeline needs from a backend."""

    name: str
    calls: int  # syntheses started so far: proves coalesced requests used one
    parallel: int  # syntheses it runs at once; the speech pipeline never starts more

    @property
    def sample_rate(self) -> int: ...

    def synthesize(self, request: SpeechRequest) -> AsyncGenerator[bytes, None]:
        """16-bit little-endian mono PCM chunks; raises TTSError. Close it to stop the synthesis early."""
        ...

    async def health(self) -> bool: ...

    async def close(self) -> None: ...


class CountingBackend(abc.ABC):
    """Base of the backends here: counts syntheses, skips text with nothing to say, stops cleanly."""

    name: str
    parallel = 1

    def __init__(self) -> None:
        self.calls = 0

    @property
    @abc.abstractmethod
    def sample_rate(self) -> int: ...

    async def synthesize(self, request: SpeechRequest) -> AsyncGenerator[bytes, None]:
        if not request.text.strip():
            return
        self.calls += 1
        stream = self._stream(request)
        try:
            async for chunk in stream:
                if chunk:
                    yield chunk
        finally:
            # A consumer that stops early (its client left) must stop the synthesis now, not at
            # garbage collection: close the inner stream explicitly.
            await stream.aclose()

    @abc.abstractmethod
    def _stream(self, request: SpeechRequest) -> AsyncGenerator[bytes, None]: ...

    @abc.abstractmethod
    async def health(self) -> bool: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


def make_backend(config: TTSConfig) -> TTSBackend:
    """The backend `config.backend` names.

    Each backend reports its native sample rate (espeak-ng: what espeak_Initialize returns,
    22050 Hz; OpenAI-compatible servers: `config.sample_rate`, 24 kHz for OpenAI's `pcm`);
    audio is not resampled.
    """
    if config.backend == "openai":
        from voicelane.sidecar.tts.openai import OpenAIBackend

        if not config.url:  # the config model already refuses this; kept for direct callers
            raise ValueError("tts.url is required when tts.backend is openai")
        return OpenAIBackend(
            url=config.url,
            model=config.model,
            voice=config.voice,
            api_key=config.api_key,
            timeout_s=config.timeout_s,
            sample_rate=config.sample_rate,
        )
    from voicelane.sidecar.tts.espeak import EspeakBackend

    return EspeakBackend(voice=config.voice, timeout_s=config.timeout_s)
