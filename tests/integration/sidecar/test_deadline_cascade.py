"""A chat that misses its deadline must not make the next chat late, over real processes.

The simulated model server has one parallel slot (as Ollama with OLLAMA_NUM_PARALLEL=1)
and holds back the first token of one call for far longer than a chat's deadline. The chat
that gets that call is spoken from its original text at its deadline; from then on nothing of
it may hold the chat's place, the tier's slot or the model server's slot, so the next chat
gets the model's own answer within its target instead of waiting out the abandoned call.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

pytestmark = pytest.mark.timeout(120)

TARGET_S = 1.5
EXPECTED_TTS_S = 0.3
DEADLINE_S = TARGET_S - EXPECTED_TTS_S
# The stalled call's first token would come this long after it started: far past the deadline.
STALL_S = 8.0


def speak_timed(url: str, text: str) -> tuple[requests.Response, float, bytes]:
    """Speak `text` as a chat: the response, the seconds to its first audio byte, and all of its audio."""
    started = time.monotonic()
    body = {"text": text, "source": "chat", "format": "pcm"}
    with requests.post(url + "/v1/speak", json=body, stream=True, timeout=60) as response:
        chunks = response.iter_content(chunk_size=2)
        first = next(chunks, b"")
        first_audio_s = time.monotonic() - started
        return response, first_audio_s, first + b"".join(chunks)


def sidecar_with_one_model_slot(start_sim, start_sidecar, parallel_slots: int | None):
    """A sidecar whose chats have `TARGET_S` to first audio, in front of a one-slot model server that
    has answered one chat already (so its tiers have a usual first-token time, as in a running lane);
    the next model call after this returns is stalled for `STALL_S`."""
    sim = start_sim("--ttft-ms", "50", "--tokens-per-s", "200", "--parallel", "1")
    # A first-token timeout past the stall: the stalled call is ended by the fallback or not at all.
    upstream = {"first_token_timeout_s": 30.0, "parallel_slots": parallel_slots}
    sidecar = start_sidecar(
        sim.url,
        config={
            "ttfa": {"targets": {"chat": TARGET_S}, "expected_tts_s": EXPECTED_TTS_S},
            # fast_only never lends the other tier's slot: with parallel_slots set, the next chat
            # needs the very tier slot the abandoned call had.
            "routing": {"mode": "fast_only"},
            "upstreams": {"fast": upstream, "deep": upstream},
        },
    )
    warm, _, _ = speak_timed(sidecar.url, "Hej.")
    assert warm.status_code == 200
    assert "X-Voicelane-Fallback" not in warm.headers
    requests.post(
        sim.url + "/sim/faults", json={"fault": "stall_first_token", "count": 1, "hold_s": STALL_S}, timeout=5
    ).raise_for_status()
    return sim, sidecar


def assert_answered_by_the_model_in_time(response: requests.Response, first_audio_s: float, audio: bytes) -> None:
    assert response.status_code == 200
    assert "X-Voicelane-Fallback" not in response.headers, (response.headers["X-Voicelane-Fallback"], first_audio_s)
    assert response.headers["X-Voicelane-Tier"] in {"fast", "deep"}
    assert first_audio_s < TARGET_S, first_audio_s
    assert audio


@pytest.mark.parametrize("parallel_slots", [None, 1], ids=["tier-unbounded", "tier-one-slot"])
def test_the_chat_after_a_fallback_gets_the_model_at_once(start_sim, start_sidecar, parallel_slots) -> None:
    sim, sidecar = sidecar_with_one_model_slot(start_sim, start_sidecar, parallel_slots)

    first, first_audio_s, first_audio = speak_timed(sidecar.url, "Din taxi är framme.")
    assert first.status_code == 200
    assert first.headers["X-Voicelane-Fallback"] == "deadline"
    assert first_audio
    assert first_audio_s < STALL_S / 2, first_audio_s
    # Once the first chat has been spoken from its text, nothing of it holds a chat place or a tier slot.
    stats = sidecar.get("/v1/stats").json()
    assert stats["queue"]["running"]["0"] == 0, stats["queue"]
    assert all(tier["running"] == 0 for tier in stats["queue"]["tiers"].values()), stats["queue"]
    # Its model call was cancelled, not left to stream into a flight nobody reads.
    assert stats["single_flight"]["text"]["cancellations"] == 1, stats["single_flight"]

    # The one model slot is free again: the next chat is answered by the model, well inside its target.
    assert_answered_by_the_model_in_time(*speak_timed(sidecar.url, "Mötet börjar om fem minuter."))
    assert sim.get("/sim/stats").json()["faults_injected"] == {"stall_first_token": 1}


def test_a_chat_sent_while_another_is_stalled_waits_only_until_that_ones_deadline(start_sim, start_sidecar) -> None:
    """The next chat may wait for the stalled one's place until that one is given up at its deadline,
    never for the rest of its model call: here it is sent 0.3 s after the first and must still be in time."""
    sim, sidecar = sidecar_with_one_model_slot(start_sim, start_sidecar, None)
    first: dict[str, tuple[requests.Response, float, bytes]] = {}
    sent = time.monotonic()
    stalled = threading.Thread(target=lambda: first.update(stalled=speak_timed(sidecar.url, "Din taxi är framme.")))
    stalled.start()
    time.sleep(0.3)
    second_sent = time.monotonic() - sent
    second = speak_timed(sidecar.url, "Mötet börjar om fem minuter.")
    stalled.join()
    response, first_audio_s, _ = first["stalled"]
    assert response.headers["X-Voicelane-Fallback"] == "deadline"
    assert_answered_by_the_model_in_time(*second)
    # It waited at most until the first chat's deadline (plus its own model call), not for the stall.
    assert second_sent + second[1] < DEADLINE_S + TARGET_S, (second_sent, second[1], first_audio_s)
    assert sim.get("/sim/stats").json()["faults_injected"] == {"stall_first_token": 1}
