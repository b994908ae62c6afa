"""Transparent mode: the official ollama client and an OpenAI-style client, pointed at the sidecar."""

from __future__ import annotations

import json

import ollama
import pytest
import requests

pytestmark = pytest.mark.timeout(60)


def test_official_ollama_client_chat_and_generate(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "5")
    sidecar = start_sidecar(sim.url)
    client = ollama.Client(host=sidecar.url)

    reply = client.chat(model="voicelane", messages=[{"role": "user", "content": "Hello there, friend."}])
    assert reply.message.content.strip() == "Hello there, friend."
    assert reply.done is True

    streamed = list(
        client.chat(model="voicelane", messages=[{"role": "user", "content": "One two three."}], stream=True)
    )
    assert len(streamed) >= 3
    assert "".join(part.message.content for part in streamed).strip() == "One two three."
    assert streamed[-1].done is True

    generated = client.generate(model="voicelane", prompt="Say this back.")
    assert generated.response.strip() == "Say this back."

    # The app's calls went through the lane: identical chats coalesce or hit the cache.
    client.chat(model="voicelane", messages=[{"role": "user", "content": "Hello there, friend."}])
    assert sim.get("/sim/stats").json()["calls"]["/api/chat"] == 3


def test_source_header_sets_the_class_and_bad_header_is_refused(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "5")
    sidecar = start_sidecar(sim.url)
    body = {"model": "voicelane", "messages": [{"role": "user", "content": "Segment text."}], "stream": False}
    ok = requests.post(
        sidecar.url + "/api/chat", json=body, headers={"X-Voicelane-Source": "email_segment"}, timeout=10
    )
    assert ok.status_code == 200
    assert ok.headers["X-Voicelane-Priority"] == "2"
    bad = requests.post(sidecar.url + "/api/chat", json=body, headers={"X-Voicelane-Source": "sms"}, timeout=10)
    assert bad.status_code == 400
    # Ollama's own error format: the message as a string, the sidecar's code in a header.
    assert "chat" in bad.json()["error"]
    assert bad.headers["X-Voicelane-Error"] == "unknown_source"


def test_openai_chat_completions_streams_sse(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "5")
    sidecar = start_sidecar(sim.url)
    body = {"model": "voicelane", "messages": [{"role": "user", "content": "Stream me please."}], "stream": True}
    with requests.post(sidecar.url + "/v1/chat/completions", json=body, stream=True, timeout=10) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.strip() == "Stream me please."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    plain = requests.post(sidecar.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=10).json()
    assert plain["choices"][0]["message"]["content"].strip() == "Stream me please."
