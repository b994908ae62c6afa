"""Speech from any OpenAI-compatible `POST /v1/audio/speech` server, streamed.

Works with Kokoro-FastAPI, Speaches, LocalAI and OpenAI itself. The request asks for `pcm`
(16-bit little-endian mono at 24 kHz, the API's definition) by default, or `wav`; audio
chunks are passed on as they arrive. What comes back is checked before any of it is
passed on: text where audio should be (an error page with status 200), a WAV in another
format than 16-bit mono at the expected rate, an odd byte count or no audio at all are
`bad_audio`. A server that answers `wav` although `pcm` was asked for is understood too.

One aiohttp session per backend, created lazily inside the running loop, pools the
connections. Health is `GET /v1/models`, else `GET /health`: whichever answers 2xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from typing import Literal

import aiohttp

from voicelane.sidecar.audio import PCM_SAMPLE_WIDTH, WavError, WavReader
from voicelane.sidecar.tts.base import OPENAI_PCM_SAMPLE_RATE, CountingBackend, SpeechRequest, TTSError

log = logging.getLogger("voicelane.sidecar.tts.openai")

SpeechFormat = Literal["pcm", "wav"]
MIN_SPEED, MAX_SPEED = 0.25, 4.0  # the API's range for `speed`
SNIFF_BYTES = 64  # enough to tell audio from an error page
_TEXT_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
_NOT_AUDIO_TYPES = ("text/", "application/json", "application/problem+json", "application/xml")
_HEALTH_PATHS = ("/v1/models", "/health")


def base_url(url: str) -> str:
    """The server root: accepts both "http://host:8880" and OpenAI-style "http://host:8880/v1"."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def instructions_for(style: str) -> str:
    """A one-word style hint ("cheerful") as an instruction; a longer hint is passed as written."""
    hint = style.strip()
    return hint if " " in hint else f"Speak in a {hint} tone."


class AudioCheck:
    """Checks a speech response's bytes and turns them into whole 16-bit mono samples.

    Raw PCM or WAV (recognised by its RIFF signature) are accepted; text, a WAV of another
    format or rate, a half sample at the end or nothing at all raise TTSError("bad_audio").
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.audio_bytes = 0
        self._head = bytearray()
        self._wav: WavReader | None = None
        self._sniffed = False
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        if not self._sniffed:
            self._head += data
            if len(self._head) < SNIFF_BYTES:
                return b""
            data = self._sniff()
        if self._wav is not None:
            data = self._from_wav(data)
        return self._whole_samples(data)

    def finish(self) -> bytes:
        tail = b""
        if not self._sniffed:
            data = self._sniff()
            if self._wav is not None:
                data = self._from_wav(data)
            tail = self._whole_samples(data)
        if self._wav is not None:
            try:
                self._wav.finish()
            except WavError as exc:
                raise TTSError("bad_audio", f"broken WAV from the speech server: {exc}") from None
        if self._carry:
            raise TTSError("bad_audio", "the audio ends inside a sample: not 16-bit PCM")
        if self.audio_bytes == 0:
            raise TTSError("bad_audio", "the speech server returned no audio")
        return tail

    def _sniff(self) -> bytes:
        self._sniffed = True
        head = bytes(self._head)
        self._head.clear()
        if head.startswith(b"RIFF"):
            self._wav = WavReader()
        elif head and all(byte in _TEXT_BYTES for byte in head[:SNIFF_BYTES]):
            raise TTSError("bad_audio", f"the speech server sent text, not audio: {head[:80]!r}")
        return head

    def _from_wav(self, data: bytes) -> bytes:
        assert self._wav is not None
        try:
            pcm = self._wav.feed(data)
        except WavError as exc:
            raise TTSError("bad_audio", f"broken WAV from the speech server: {exc}") from None
        if self._wav.header_done:
            wav = self._wav
            if (wav.channels, wav.sample_width) != (
                1,
                PCM_SAMPLE_WIDTH,
            ) or wav.sample_rate != self.sample_rate:
                raise TTSError(
                    "bad_audio",
                    f"the speech server sent {wav.channels} channel(s) of {8 * wav.sample_width}-bit "
                    f"audio at {wav.sample_rate} Hz; expected 16-bit mono at {self.sample_rate} Hz",
                )
        return pcm

    def _whole_samples(self, data: bytes) -> bytes:
        if self._carry:
            data = self._carry + data
        cut = len(data) - len(data) % PCM_SAMPLE_WIDTH
        self._carry = data[cut:]
        self.audio_bytes += cut
        return data[:cut]


class OpenAIBackend(CountingBackend):
    """An OpenAI-compatible speech server over pooled, streamed HTTP."""

    name = "openai"

    def __init__(
        self,
        *,
        url: str,
        model: str = "tts-1",
        voice: str = "alloy",
        api_key: str | None = None,
        timeout_s: float = 15.0,
        response_format: SpeechFormat = "pcm",
        sample_rate: int = OPENAI_PCM_SAMPLE_RATE,
        max_connections: int = 8,
    ) -> None:
        super().__init__()
        self.url = base_url(url)
        self.model = model
        self.default_voice = voice
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.response_format: SpeechFormat = response_format
        self.max_connections = max_connections
        self.parallel = max_connections  # more would queue in the connection pool, out of priority order
        self._sample_rate = sample_rate
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=min(self.timeout_s, 5.0), sock_read=self.timeout_s
                ),
            )
            self._session_loop = loop
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def request_body(self, request: SpeechRequest) -> dict[str, object]:
        body: dict[str, object] = {
            "model": self.model,
            "input": request.text,
            "voice": request.voice or self.default_voice,
            "speed": max(MIN_SPEED, min(MAX_SPEED, request.rate)),
            "response_format": self.response_format,
        }
        if request.style and request.style.strip():
            body["instructions"] = instructions_for(request.style)
        return body

    async def _stream(self, request: SpeechRequest) -> AsyncGenerator[bytes, None]:
        check = AudioCheck(self.sample_rate)
        try:
            async with self._client().post(
                self.url + "/v1/audio/speech", json=self.request_body(request), headers=self._headers()
            ) as response:
                if response.status != 200:
                    raise await _refusal(response)
                content_type = response.headers.get("Content-Type", "").lower()
                if content_type.startswith(_NOT_AUDIO_TYPES):
                    snippet = (await response.content.read(200)).decode("utf-8", "replace")
                    raise TTSError("bad_audio", f"the speech server sent {content_type}, not audio: {snippet!r}")
                async for data in response.content.iter_any():
                    chunk = check.feed(data)
                    if chunk:
                        yield chunk
                tail = check.finish()
                if tail:
                    yield tail
        except TTSError:
            raise
        except TimeoutError:
            raise TTSError("timeout", f"no audio from {self.url} within {self.timeout_s:g} s") from None
        except aiohttp.ClientPayloadError as exc:
            raise TTSError("unavailable", f"the speech stream from {self.url} broke off: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TTSError("unavailable", f"speech server {self.url} unreachable: {exc}") from None

    async def health(self) -> bool:
        timeout = aiohttp.ClientTimeout(total=min(self.timeout_s, 5.0))
        for path in _HEALTH_PATHS:
            try:
                async with self._client().get(self.url + path, headers=self._headers(), timeout=timeout) as response:
                    if 200 <= response.status < 300:
                        return True
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue
        return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _refusal(response: aiohttp.ClientResponse) -> TTSError:
    """A non-200 answer as a TTSError, with the server's own message when it gave one."""
    raw = await response.content.read(2000)
    message = raw.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(message)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("detail", payload))
        if isinstance(error, dict):
            error = error.get("message", error)
        message = str(error)
    message = f"HTTP {response.status}: {message[:300] or response.reason}"
    if response.status == 429 or response.status >= 500:
        return TTSError("unavailable", message)
    return TTSError("rejected", message)
