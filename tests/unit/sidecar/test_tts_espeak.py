"""espeak-ng in process: real Swedish and English speech, streamed, serialised, cancellable."""

from __future__ import annotations

import array
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from voicelane.sidecar.config import TTSConfig
from voicelane.sidecar.tts.base import SpeechRequest, TTSBackend, TTSError, make_backend
from voicelane.sidecar.tts.espeak import EspeakBackend, prosody, voice_candidates, words_per_minute

pytestmark = pytest.mark.timeout(60)

SWEDISH = "Hej Anna, mötet i morgon är flyttat till klockan tre."
ENGLISH = "Hello Anna, tomorrow's meeting has moved to three o'clock."
LONG_SWEDISH = " ".join([SWEDISH] * 30)  # about two minutes of speech


@pytest.fixture
async def backend() -> AsyncIterator[EspeakBackend]:
    speech = EspeakBackend(voice="sv", timeout_s=10.0, max_ahead_s=1.0)
    yield speech
    await speech.close()


async def speak(backend: EspeakBackend, text: str, lang: str = "sv", **options: Any) -> bytes:
    request = SpeechRequest(text=text, lang=lang, **options)
    return b"".join([chunk async for chunk in backend.synthesize(request)])


def samples(pcm: bytes) -> array.array[int]:
    assert len(pcm) % 2 == 0, "whole 16-bit samples"
    values = array.array("h")
    values.frombytes(pcm)
    return values


def is_speech(pcm: bytes, sample_rate: int) -> bool:
    values = samples(pcm)
    loud = sum(1 for value in values if abs(value) > 1000)
    return len(values) / sample_rate > 0.5 and loud > len(values) // 20


async def wait_until_idle(backend: EspeakBackend, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while backend.busy:  # noqa: ASYNC110 - a flag of the worker thread: there is nothing to await
            await asyncio.sleep(0.01)


async def test_swedish_and_english_come_out_as_speech_at_espeaks_rate(backend: EspeakBackend) -> None:
    assert backend.sample_rate == 22050
    assert isinstance(backend, TTSBackend)
    for text, lang in ((SWEDISH, "sv"), (ENGLISH, "en")):
        pcm = await speak(backend, text, lang)
        assert is_speech(pcm, backend.sample_rate), lang


async def test_longer_text_gives_longer_audio(backend: EspeakBackend) -> None:
    short = await speak(backend, "Hej.")
    one = await speak(backend, SWEDISH)
    three = await speak(backend, " ".join([SWEDISH] * 3))
    assert 0 < len(short) < len(one)
    assert len(three) > 2.5 * len(one)


async def test_a_faster_rate_gives_shorter_audio(backend: EspeakBackend) -> None:
    normal = await speak(backend, SWEDISH, rate=1.0)
    fast = await speak(backend, SWEDISH, rate=2.0)
    assert len(fast) < 0.7 * len(normal)


async def test_an_unknown_language_still_speaks_with_the_fallback_voice(backend: EspeakBackend) -> None:
    assert is_speech(await speak(backend, SWEDISH, "xx-YY", voice="no such voice!"), backend.sample_rate)


async def test_the_first_chunk_arrives_while_a_long_text_is_still_being_synthesized(
    backend: EspeakBackend,
) -> None:
    stream = backend.synthesize(SpeechRequest(text=LONG_SWEDISH, lang="sv"))
    first = await anext(stream)
    # The worker cannot be done: it runs at most max_ahead_s of audio ahead of this reader.
    assert backend.busy
    rest = b"".join([chunk async for chunk in stream])
    assert len(rest) > 20 * len(first)
    assert not backend.busy


async def test_four_concurrent_syntheses_each_get_their_own_complete_audio(backend: EspeakBackend) -> None:
    texts = [" ".join([SWEDISH] * n) for n in (1, 2, 3, 4)]
    alone = [len(await speak(backend, text)) for text in texts]
    calls = backend.calls
    together = await asyncio.gather(*(speak(backend, text) for text in texts))
    assert backend.calls == calls + 4
    for pcm, expected in zip(together, alone, strict=True):
        # espeak-ng varies a few samples between runs; a mixed-up or cut stream would differ by far more.
        assert len(pcm) == pytest.approx(expected, rel=0.02)
        assert is_speech(pcm, backend.sample_rate)


async def test_a_reader_that_leaves_midway_stops_the_synthesis_and_the_next_one_works(
    backend: EspeakBackend,
) -> None:
    reference = len(await speak(backend, SWEDISH))
    stream = backend.synthesize(SpeechRequest(text=LONG_SWEDISH, lang="sv"))
    for _ in range(3):
        await anext(stream)
    await stream.aclose()
    await wait_until_idle(backend)
    assert len(await speak(backend, SWEDISH)) == pytest.approx(reference, rel=0.02)


async def test_a_cancelled_consumer_task_does_not_wedge_the_worker(backend: EspeakBackend) -> None:
    got_audio = asyncio.Event()

    async def listen() -> None:
        async for _ in backend.synthesize(SpeechRequest(text=LONG_SWEDISH, lang="sv")):
            got_audio.set()

    task = asyncio.create_task(listen())
    await got_audio.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until_idle(backend)
    assert is_speech(await speak(backend, ENGLISH, "en"), backend.sample_rate)


async def test_a_reader_that_stalls_is_given_up_after_the_timeout() -> None:
    backend = EspeakBackend(timeout_s=0.3, max_ahead_s=0.5)
    stream = backend.synthesize(SpeechRequest(text=LONG_SWEDISH, lang="sv"))
    await anext(stream)
    await wait_until_idle(backend)  # the worker gave up on its own, without the reader closing
    with pytest.raises(TTSError) as caught:
        async for _ in stream:
            pass
    assert caught.value.kind == "timeout"
    assert is_speech(await speak(backend, SWEDISH), backend.sample_rate)


async def test_calls_count_syntheses_and_blank_text_is_not_one(backend: EspeakBackend) -> None:
    before = backend.calls
    assert await speak(backend, "  \n ") == b""
    await speak(backend, "Ja.")
    assert backend.calls == before + 1


async def test_health_and_close(backend: EspeakBackend) -> None:
    assert await backend.health()
    await backend.close()
    assert not await backend.health()
    with pytest.raises(TTSError) as caught:
        await speak(backend, SWEDISH)
    assert caught.value.kind == "unavailable"


def test_make_backend_builds_espeak_by_default() -> None:
    backend = make_backend(TTSConfig())
    assert isinstance(backend, EspeakBackend)
    assert backend.default_voice == "sv"


# ----- voice, rate and style choices (no synthesis) -----------------------------------------------


@pytest.mark.parametrize(
    ("lang", "voice", "first"),
    [
        ("sv", None, "sv"),
        ("en", None, "en-us"),
        ("en", "sv", "en-us"),  # a Swedish default voice must not read English text
        ("en-GB", None, "en"),
        ("sv-SE", None, "sv-se"),  # then "sv", see below
        ("sv", "sv+f3", "sv+f3"),
        ("sv", "+f3", "sv+f3"),
        ("en", "sv+m2", "en-us+m2"),
        ("en", "en-gb", "en"),
        ("sv", "bad voice; rm -rf", "sv"),
    ],
)
def test_the_language_decides_the_voice_and_a_matching_voice_refines_it(
    lang: str, voice: str | None, first: str
) -> None:
    candidates = voice_candidates(lang, voice, "sv")
    assert candidates[0] == first
    assert "en" in candidates  # the last resort


def test_a_regional_language_falls_back_to_its_base_language() -> None:
    assert voice_candidates("sv-SE", None, "sv")[:2] == ["sv-se", "sv"]


def test_rate_and_style_map_to_espeak_parameters() -> None:
    assert words_per_minute(1.0) == 175
    assert words_per_minute(1.08) == 189
    assert words_per_minute(0.25) == 80
    assert words_per_minute(4.0) == 450
    pitch, pitch_range = prosody("Cheerful")
    assert pitch > 50
    assert pitch_range > 50
    assert prosody("whispering") == prosody(None) == (50, 50)
