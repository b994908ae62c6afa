"""The OpenAI speech backend against `voicelane sim`'s /v1/audio/speech over real HTTP.

The simulator answers with 16-bit mono 24 kHz PCM (or WAV) whose length follows the text
and the speed, after `--tts-first-byte-ms`; faults armed through /sim/faults break it.
"""

from __future__ import annotations

import array
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import requests

from voicelane.processes import free_port, running, voicelane_argv
from voicelane.sidecar.config import TTSConfig
from voicelane.sidecar.tts.base import SpeechRequest, TTSError, make_backend
from voicelane.sidecar.tts.openai import OpenAIBackend, SpeechFormat, base_url, instructions_for

pytestmark = pytest.mark.timeout(60)

API_KEY = "sk-test-speech"
TEXT = "Hej Anna, mötet är flyttat till klockan tre."


def start_sim(tmp_path_factory: pytest.TempPathFactory, *flags: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = voicelane_argv("sim", "--listen", f"127.0.0.1:{port}", "--tts-first-byte-ms", "20", *flags)
    with running(argv, ready_url=url + "/sim/stats", log_dir=tmp_path_factory.mktemp("sim-logs"), name="sim"):
        yield url


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start_sim(tmp_path_factory)


@pytest.fixture(scope="module")
def keyed_sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start_sim(tmp_path_factory, "--api-key", API_KEY)


@pytest.fixture
def sim(sim_url: str) -> Iterator[str]:
    yield sim_url
    requests.delete(sim_url + "/sim/faults", timeout=5).raise_for_status()
    set_first_byte_ms(sim_url, 20)


@pytest.fixture
async def backend(sim: str) -> AsyncIterator[OpenAIBackend]:
    speech = OpenAIBackend(url=sim, model="tts-1", voice="alloy", timeout_s=5.0)
    yield speech
    await speech.close()


def arm(sim: str, fault: str, **options: Any) -> None:
    body = {"fault": fault, "count": 1, **options}
    requests.post(sim + "/sim/faults", json=body, timeout=5).raise_for_status()


def set_first_byte_ms(sim: str, delay_ms: float) -> None:
    requests.post(sim + "/sim/config", json={"tts_first_byte_ms": delay_ms}, timeout=5).raise_for_status()


async def speak(backend: OpenAIBackend, text: str = TEXT, **options: Any) -> bytes:
    return b"".join([chunk async for chunk in backend.synthesize(SpeechRequest(text=text, **options))])


def loud_share(pcm: bytes) -> float:
    values = array.array("h")
    values.frombytes(pcm)
    return sum(1 for value in values if abs(value) > 1000) / max(1, len(values))


async def test_pcm_speech_is_24khz_16bit_and_grows_with_the_text(backend: OpenAIBackend) -> None:
    assert backend.sample_rate == 24000
    one = await speak(backend)
    three = await speak(backend, f"{TEXT} {TEXT} {TEXT}")
    assert len(one) % 2 == 0
    assert len(one) / 2 / 24000 > 1.0
    assert loud_share(one) > 0.3
    assert len(three) == pytest.approx(3 * len(one), rel=0.05)


async def test_the_rate_is_sent_as_speed(backend: OpenAIBackend) -> None:
    normal = await speak(backend, rate=1.0)
    fast = await speak(backend, rate=2.0)
    assert len(fast) == pytest.approx(len(normal) / 2, rel=0.05)


async def test_wav_responses_give_the_same_audio_as_pcm(sim: str, backend: OpenAIBackend) -> None:
    wav_backend = OpenAIBackend(url=sim + "/v1", response_format="wav", timeout_s=5.0)
    try:
        assert await speak(wav_backend) == await speak(backend)
    finally:
        await wav_backend.close()


async def test_chunks_are_passed_on_as_they_arrive(sim: str, backend: OpenAIBackend) -> None:
    arm(sim, "slow_tokens", tokens_per_s=10)  # one audio chunk every 100 ms
    started = time.monotonic()
    arrivals = [time.monotonic() - started async for _ in backend.synthesize(SpeechRequest(text=TEXT))]
    assert len(arrivals) >= 5
    assert arrivals[0] < arrivals[-1] - 0.3, arrivals


async def test_garbage_instead_of_audio_is_bad_audio(sim: str, backend: OpenAIBackend) -> None:
    formats: tuple[SpeechFormat, ...] = ("pcm", "wav")
    for response_format in formats:
        backend.response_format = response_format
        arm(sim, "garbage_audio")
        with pytest.raises(TTSError) as caught:
            await speak(backend)
        assert caught.value.kind == "bad_audio", response_format
    assert await speak(backend), "the next answer is audio again"


async def test_a_stream_that_breaks_off_is_unavailable(sim: str, backend: OpenAIBackend) -> None:
    arm(sim, "reset_mid_stream", after_tokens=2)
    with pytest.raises(TTSError) as caught:
        await speak(backend, " ".join([TEXT] * 5))
    assert caught.value.kind == "unavailable"


async def test_server_errors_and_refusals_have_their_kinds(sim: str, backend: OpenAIBackend) -> None:
    arm(sim, "http_500")
    with pytest.raises(TTSError) as server_error:
        await speak(backend)
    assert server_error.value.kind == "unavailable"
    with pytest.raises(TTSError) as refused:
        await speak(backend, "x" * 5000)  # longer than the API's 4096 characters
    assert refused.value.kind == "rejected"
    assert "4096" in refused.value.message


async def test_no_first_byte_within_the_timeout_is_a_timeout(sim: str) -> None:
    set_first_byte_ms(sim, 3000)
    backend = OpenAIBackend(url=sim, timeout_s=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(TTSError) as caught:
            await speak(backend)
        assert caught.value.kind == "timeout"
        assert time.monotonic() - started < 2.5
    finally:
        await backend.close()


async def test_leaving_a_stream_early_keeps_the_backend_usable(sim: str, backend: OpenAIBackend) -> None:
    arm(sim, "slow_tokens", tokens_per_s=20)
    stream = backend.synthesize(SpeechRequest(text=" ".join([TEXT] * 5)))
    await anext(stream)
    await stream.aclose()
    assert await speak(backend)
    assert backend.calls == 2


async def test_the_api_key_is_sent_as_a_bearer_token(keyed_sim_url: str) -> None:
    keyed = OpenAIBackend(url=keyed_sim_url, api_key=API_KEY, timeout_s=5.0)
    keyless = OpenAIBackend(url=keyed_sim_url, timeout_s=5.0)
    try:
        assert await speak(keyed)
        assert await keyed.health()
        with pytest.raises(TTSError) as caught:
            await speak(keyless)
        assert caught.value.kind == "rejected"
        assert "401" in caught.value.message
    finally:
        await keyed.close()
        await keyless.close()


async def test_health_follows_the_server(backend: OpenAIBackend) -> None:
    assert await backend.health()
    gone = OpenAIBackend(url=f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    try:
        assert not await gone.health()
        with pytest.raises(TTSError) as caught:
            await speak(gone)
        assert caught.value.kind == "unavailable"
    finally:
        await gone.close()


async def test_make_backend_builds_the_openai_backend_from_config(sim: str) -> None:
    backend = make_backend(TTSConfig(backend="openai", url=sim, voice="alloy", model="tts-1"))
    try:
        assert isinstance(backend, OpenAIBackend)
        assert len(b"".join([chunk async for chunk in backend.synthesize(SpeechRequest(text=TEXT))])) > 0
        assert backend.calls == 1
    finally:
        await backend.close()


def test_the_request_body_follows_the_speech_api() -> None:
    backend = OpenAIBackend(url="http://speech:8880/v1/", model="kokoro", voice="af_heart")
    assert backend.url == "http://speech:8880"
    body = backend.request_body(SpeechRequest(text="Hej!", lang="sv", rate=1.08, style="cheerful"))
    assert body == {
        "model": "kokoro",
        "input": "Hej!",
        "voice": "af_heart",
        "speed": 1.08,
        "response_format": "pcm",
        "instructions": "Speak in a cheerful tone.",
    }
    plain = backend.request_body(SpeechRequest(text="Hej!", voice="sv_female", rate=9.0))
    assert plain["voice"] == "sv_female"
    assert plain["speed"] == 4.0
    assert "instructions" not in plain
    assert instructions_for("calm and slow, like a radio host") == "calm and slow, like a radio host"
    assert base_url("http://host:1") == "http://host:1"
