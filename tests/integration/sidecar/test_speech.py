"""/v1/speak over real processes: valid audio, pipelining, coalesced audio, email follow-ups, fallback."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import requests

from voicelane.sidecar.audio import parse_wav
from voicelane.sidecar.segmenter import Segmenter

pytestmark = pytest.mark.timeout(120)


def speak(url: str, text: str, source: str = "chat", **extra) -> requests.Response:
    return requests.post(url + "/v1/speak", json={"text": text, "source": source, **extra}, timeout=60)


def test_speak_returns_valid_wav_that_grows_with_the_text(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "5", "--tokens-per-s", "500")
    sidecar = start_sidecar(sim.url)
    short = speak(sidecar.url, "Hej.")
    long = speak(sidecar.url, "Hej, det här är en betydligt längre mening som tar längre tid att säga högt.")
    for response in (short, long):
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "audio/wav"
        assert response.headers["X-Voicelane-Tier"] in {"fast", "deep"}
        assert response.headers["X-Voicelane-Priority"] == "0"
        assert response.headers["X-Request-Id"]
    rate, channels, width, pcm = parse_wav(short.content)
    assert (channels, width) == (1, 2)
    assert rate == int(short.headers["X-Voicelane-Sample-Rate"])
    assert len(pcm) > 0
    assert len(parse_wav(long.content)[3]) > 3 * len(pcm)
    raw = speak(sidecar.url, "Hej.", format="pcm")
    assert raw.headers["Content-Type"] == "application/octet-stream"
    assert raw.headers["X-Voicelane-Tier"] == "cache"
    assert raw.content == pcm


async def test_first_audio_comes_before_the_rewrite_is_finished(start_sim, start_sidecar) -> None:
    # One token per 50 ms: the whole rewrite takes ttft + 50 ms per word.
    sim = start_sim("--ttft-ms", "100", "--tokens-per-s", "20")
    sidecar = start_sidecar(sim.url, config={"ttfa": {"targets": {"chat": 30.0}}})
    first = "Hej Anna och alla andra i gruppen, mötet i morgon är flyttat till klockan tre."
    second = "Ta med er de senaste siffrorna från försäljningen och en kort sammanfattning av läget."
    third = "Vi ses i det stora konferensrummet på tredje våningen bredvid köket."
    text = f"{first} {second} {third}"
    token_s = 0.05
    full_rewrite_s = 0.1 + len(text.split()) * token_s
    last_two_s = len(f"{second} {third}".split()) * token_s
    async with aiohttp.ClientSession() as session:
        sent = time.monotonic()
        async with session.post(sidecar.url + "/v1/speak", json={"text": text, "source": "email_tldr"}) as response:
            assert response.status == 200
            await response.content.readexactly(44)  # the WAV header is not audio
            await response.content.readexactly(2)
            ttfa = time.monotonic() - sent
            rest = await response.read()
            done = time.monotonic() - sent
    assert len(rest) > 0
    assert done >= full_rewrite_s * 0.9
    assert ttfa <= full_rewrite_s - last_two_s, (ttfa, full_rewrite_s, last_two_s)
    stats = requests.get(sidecar.url + "/v1/stats", timeout=5).json()["ttfa"]["classes"]["email_tldr"]
    assert set(stats["stages_mean_s"]) >= {"first_token", "first_segment", "tts_first_byte", "first_audio_sent"}


async def test_twenty_identical_speakers_get_identical_audio_from_one_synthesis(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "300", "--tokens-per-s", "100")
    sidecar = start_sidecar(sim.url)
    before = requests.get(sidecar.url + "/v1/stats", timeout=5).json()["tts"]["syntheses"]
    async with aiohttp.ClientSession() as session:

        async def one() -> tuple[bytes, str]:
            async with session.post(
                sidecar.url + "/v1/speak", json={"text": "Paketet har levererats.", "source": "notification"}
            ) as response:
                assert response.status == 200
                return await response.read(), response.headers["X-Voicelane-Shared"]

        results = await asyncio.gather(*(one() for _ in range(20)))
    bodies = {body for body, _ in results}
    assert len(bodies) == 1
    assert sum(1 for _, shared in results if shared == "false") == 1
    after = requests.get(sidecar.url + "/v1/stats", timeout=5).json()["tts"]["syntheses"]
    # The simulator echoes the text: one synthesis per segment of one reply, not twenty replies' worth.
    segmenter = Segmenter.for_model_reply("sv")
    one_reply = segmenter.feed("Paketet har levererats.") + segmenter.flush()
    assert after - before == len(one_reply) == 2  # "Paketet har ", "levererats."
    assert sim.get("/sim/stats").json()["calls"]["/api/chat"] == 1


async def test_email_tldr_first_then_segments_only_while_chat_is_idle(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "150", "--tokens-per-s", "200", "--parallel", "4")
    sidecar = start_sidecar(sim.url, config={"rate_limit": {"burst": 50, "sustained_per_s": 50}})
    paragraphs = [
        f"Stycke {n}. Här kommer en längre mening om projektets status och nästa steg för teamet. "
        f"Vi behöver också prata om budgeten, tidplanen och vem som gör vad under vecka {n}."
        for n in range(1, 7)
    ]
    email = " ".join(paragraphs)
    chat_windows: list[tuple[float, float]] = []
    async with aiohttp.ClientSession() as session:
        async with session.post(sidecar.url + "/v1/speak", json={"text": email, "source": "email"}) as response:
            assert response.status == 200
            followups_url = response.headers["X-Voicelane-Followups"]
            count = int(response.headers["X-Voicelane-Followup-Count"])
            tldr_audio = await response.read()
        assert count >= 2
        assert len(parse_wav(tldr_audio)[3]) > 0

        async def chat(n: int) -> None:
            started = time.time()
            async with session.post(
                sidecar.url + "/v1/speak", json={"text": f"Chatt nummer {n}.", "source": "chat"}
            ) as r:
                assert r.status == 200
                await r.read()
            chat_windows.append((started, time.time()))

        await asyncio.sleep(0.3)  # let segment work begin, then burst chat over it
        await asyncio.gather(*(chat(n) for n in range(4)))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            async with session.get(sidecar.url + followups_url) as r:
                listing = await r.json()
            if all(s["status"] == "ready" for s in listing["segments"]):
                break
            await asyncio.sleep(0.2)
        assert all(s["status"] == "ready" for s in listing["segments"]), listing
        async with session.get(sidecar.url + listing["segments"][0]["url"]) as r:
            assert r.status == 200
            assert len(parse_wav(await r.read())[3]) > 0
    windows = [tuple(w) for s in listing["segments"] for w in s["synthesis_windows"]]
    assert windows
    # The client sees a chat start before the sidecar does and its end after: on a loaded machine that
    # is tens of milliseconds each way, still far inside a chat's window (the model's first token alone is 150 ms).
    slack_s = 0.05
    for start, _ in windows:
        for chat_start, chat_end in chat_windows:
            assert not (chat_start + slack_s < start < chat_end - slack_s), (
                "segment speech started while chat was running"
            )


def test_deadline_miss_speaks_the_original_text(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "8000")
    sidecar = start_sidecar(sim.url, config={"ttfa": {"targets": {"chat": 1.0}, "expected_tts_s": 0.3}})
    started = time.monotonic()
    response = speak(sidecar.url, "Din taxi är framme.")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.headers["X-Voicelane-Fallback"] == "deadline"
    assert len(parse_wav(response.content)[3]) > 0
    assert elapsed < 5
    assert (
        'voicelane_fallbacks_total{reason="deadline",request_class="chat"} 1.0'
        in requests.get(sidecar.url + "/metrics", timeout=5).text
    )


def test_model_failure_still_speaks_for_chat(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "5")
    sidecar = start_sidecar(sim.url)
    requests.post(sim.url + "/sim/faults", json={"fault": "http_500"}, timeout=5).raise_for_status()
    response = speak(sidecar.url, "Ditt paket är försenat.", source="notification")
    assert response.status_code == 200
    assert response.headers["X-Voicelane-Fallback"] == "model_failure"
    assert len(parse_wav(response.content)[3]) > 0


def test_an_empty_reply_still_speaks_for_chat(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "5")
    # The simulated model echoes the text; a stop sequence at its very start leaves the reply empty.
    sidecar = start_sidecar(sim.url, config={"upstreams": {"fast": {"stop": ["Ring"]}, "deep": {"stop": ["Ring"]}}})
    response = speak(sidecar.url, "Ring mig i morgon.", source="chat")
    assert response.status_code == 200
    assert response.headers["X-Voicelane-Fallback"] == "empty_reply"
    assert len(parse_wav(response.content)[3]) > 0
