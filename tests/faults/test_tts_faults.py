"""Faults of an OpenAI-compatible speech server (`tts.backend: openai`), injected by the simulator.

The model tier is healthy here; only speech breaks. Nothing can be spoken without a
speech server, so the rule is: complete audio, or a clear 502 with Retry-After within
`tts.timeout_s`, or (once audio flows) a connection cut without the final chunk.
Never a hang, never audio that is not audio, never a 500.
"""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest

from tests.faults.conftest import TTS_TIMEOUT_S, Lane, fault_config, start_shared_lane
from tests.faults.wire import arm, assert_refusal, call, sim_stats
from voicelane.sidecar.audio import parse_wav

pytestmark = pytest.mark.timeout(90)

SPEECH = ["/v1/audio/speech"]
WAV_HEADER_BYTES = 44
# The model's part takes well under a second on the simulator; a TTS fault adds at most its timeout.
BOUND_S = TTS_TIMEOUT_S + 4.0


@pytest.fixture(scope="module")
def speech_lane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lane]:
    """Model sims and a sidecar that speaks through the deep sim's speech API, for the module."""
    config = fault_config(tts={"timeout_s": TTS_TIMEOUT_S})
    yield from start_shared_lane(tmp_path_factory, config, speech_on_deep=True)


@pytest.fixture
def speaking_lane(start_sim, start_sidecar):
    """A model sim, a separate speech sim that may be killed, and a sidecar speaking through it."""
    model = start_sim("--ttft-ms", "10", "--tokens-per-s", "200", "--parallel", "8", name="model")
    speech = start_sim("--tts-first-byte-ms", "10", name="speech")
    sidecar = start_sidecar(
        model.url, config=fault_config(tts={"backend": "openai", "url": speech.url, "timeout_s": TTS_TIMEOUT_S})
    )
    return model, speech, sidecar


async def speak(sidecar_url: str, text: str) -> object:
    async with aiohttp.ClientSession() as session:
        return await call(
            session, sidecar_url + "/v1/speak", {"text": text, "source": "chat"}, skip_first=WAV_HEADER_BYTES
        )


# Faults that strike before the speech server has sent any audio.
BEFORE_AUDIO: dict[str, dict[str, float]] = {
    "refuse": {},
    "http_503": {},
    "http_500": {},
    "stall_after_headers": {"hold_s": 60},
    "stall_first_token": {"hold_s": 60},
    "garbage_audio": {},
}


@pytest.mark.parametrize("fault", sorted(BEFORE_AUDIO))
async def test_speech_server_failing_before_any_audio_is_a_clear_502(speech_lane: Lane, fault: str) -> None:
    speech_lane.reset()
    speech, sidecar = speech_lane.deep, speech_lane.sidecar
    text = f"Det här går inte att säga ({fault})."
    arm(speech.url, fault, paths=SPEECH, count=1, **BEFORE_AUDIO[fault])
    reply = await speak(sidecar.url, text)
    assert reply.elapsed_s < BOUND_S, reply.describe()
    assert_refusal(reply, "tts_failed")
    assert reply.status == 502
    assert sim_stats(speech.url)["faults_injected"][fault] >= 1
    # Failed audio is not cached: once the server is well again, the same text is spoken.
    again = await speak(sidecar.url, text)
    assert again.status == 200, again.describe()
    assert again.complete
    assert len(parse_wav(again.body)[3]) > 0


async def test_speech_server_down_is_a_clear_502(speaking_lane) -> None:
    _, speech, sidecar = speaking_lane
    speech.process.kill()
    reply = await speak(sidecar.url, "Ingen röst finns kvar.")
    assert reply.elapsed_s < BOUND_S, reply.describe()
    assert_refusal(reply, "tts_failed")
    # Text still works: a dead speech server does not take the lane down.
    async with aiohttp.ClientSession() as session:
        text = await call(session, sidecar.url + "/v1/text", {"text": "Text går fortfarande.", "source": "chat"})
    assert text.status == 200, text.describe()


async def test_slow_speech_server_still_delivers_complete_audio(speech_lane: Lane) -> None:
    speech_lane.reset()
    speech, sidecar = speech_lane.deep, speech_lane.sidecar
    # A chunk every 0.2 s: slow, but never silent for as long as the read timeout.
    arm(speech.url, "slow_tokens", paths=SPEECH, tokens_per_s=5)
    text = "Långsam men säker."
    reply = await speak(sidecar.url, text)
    assert reply.status == 200, reply.describe()
    assert reply.complete, reply.describe()
    pcm = parse_wav(reply.body)[3]
    # The simulator speaks 60 ms per character at 24 kHz: all of it arrived.
    assert len(pcm) == len(text) * round(24_000 * 0.060) * 2


async def test_speech_server_breaking_off_mid_audio_cuts_the_stream(speech_lane: Lane) -> None:
    speech_lane.reset()
    speech, sidecar = speech_lane.deep, speech_lane.sidecar
    arm(speech.url, "reset_mid_stream", paths=SPEECH, after_tokens=2)
    reply = await speak(sidecar.url, "Den här meningen blir aldrig färdig att höra på.")
    assert reply.elapsed_s < BOUND_S, reply.describe()
    # Audio had started: the status cannot change, so the connection ends without its final chunk.
    assert reply.status == 200, reply.describe()
    assert not reply.complete, reply.describe()
    assert len(reply.body) > WAV_HEADER_BYTES
