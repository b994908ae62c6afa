"""Tier 4: the real local stack — two Ollama servers with the shipped small model, and embedded espeak.

The sidecar talks to Ollama in both protocols it speaks: Ollama's native API and the OpenAI-compatible
one Ollama also serves. The tiny model's wording is not the point (quality is the user's model's
business); these tests assert structure: real audio for every class, and the TTFA stages recorded.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.realstack.conftest import running_sidecar
from voicelane.sidecar.audio import parse_wav
from voicelane.stack.ollama import Stack

pytestmark = [pytest.mark.realstack, pytest.mark.timeout(600)]


@pytest.fixture(scope="module", params=["ollama", "openai"])
def sidecar_url(
    request: pytest.FixtureRequest, ollama_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    protocol = request.param
    logs = tmp_path_factory.mktemp(f"sidecar-{protocol}-logs")
    config: dict = {
        "upstreams": {
            tier.tier: {"url": tier.url, "protocol": protocol, "model": tier.model, "num_predict": 64}
            for tier in (ollama_stack.fast, ollama_stack.deep)
        },
        "phrase_bank": {"enabled": False},
        # The shared 2-core machine may be slow; the deadline must not turn every answer into a fallback.
        "ttfa": {"targets": {"chat": 60, "notification": 60, "email_tldr": 60}},
    }
    with running_sidecar(config, logs) as url:
        yield url


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("chat", "Hej! Kan du ringa mig efter lunch?"),
        ("notification", "Your package has been delivered."),
        ("email", "Hi team. The release moves to Friday because the tests found a bug. Please update your plans."),
    ],
)
def test_each_class_is_spoken_by_the_real_model(sidecar_url: str, source: str, text: str) -> None:
    response = requests.post(
        sidecar_url + "/v1/speak", json={"text": text, "source": source, "lang": "en"}, timeout=300
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Voicelane-Tier"] in {"fast", "deep"}
    assert "X-Voicelane-Fallback" not in response.headers  # the model answered, not the deadline's phrase
    rate, channels, width, pcm = parse_wav(response.content)
    assert (channels, width) == (1, 2)
    assert rate > 0
    assert len(pcm) > rate  # more than half a second of speech
    stats = requests.get(sidecar_url + "/v1/stats", timeout=10).json()["ttfa"]["classes"][source]
    assert stats["count"] >= 1
    assert set(stats["stages_mean_s"]) >= {
        "dispatched",
        "first_token",
        "first_segment",
        "tts_first_byte",
        "first_audio_sent",
    }
    assert 0 < stats["p50_s"] < 300


def test_text_endpoint_uses_the_real_model(sidecar_url: str) -> None:
    response = requests.post(
        sidecar_url + "/v1/text", json={"text": "Good morning, everyone.", "source": "chat"}, timeout=300
    )
    assert response.status_code == 200
    body = response.json()
    assert body["text"].strip()
    assert body["tier"] == "fast"
    assert body["timings"]["first_token"] > 0
