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


def test_an_upstream_503_is_passed_on_when_forwarded_and_failed_over_on_the_lanes_path(
    start_sim, start_sidecar
) -> None:
    fast, deep = start_sim("--ttft-ms", "5", name="fast"), start_sim("--ttft-ms", "5", name="deep")
    sidecar = start_sidecar(fast.url, deep.url)
    busy = {"fault": "http_503", "count": 1, "paths": ["/api/chat"]}
    fast.post("/sim/faults", json=busy)
    # A call with a seed is forwarded as it is: the model server's own 503 comes back unchanged.
    body = {"model": "fast-model", "messages": [{"role": "user", "content": "Hi."}], "stream": False}
    forwarded = requests.post(sidecar.url + "/api/chat", json={**body, "options": {"seed": 1}}, timeout=10)
    assert forwarded.status_code == 503
    assert forwarded.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
    # On the lane's own path the 503 is a routing failure: the deep tier answers, and says so.
    fast.post("/sim/faults", json=busy)
    answered = requests.post(sidecar.url + "/api/chat", json=body, timeout=10)
    assert answered.status_code == 200, answered.text
    assert answered.json()["model"] == "deep-model"


def test_an_unknown_model_gets_the_servers_own_404(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "5", "--model", "fast-model", "--model", "deep-model")
    sidecar = start_sidecar(sim.url)
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=sidecar.url).chat(model="does-not-exist:7b", messages=[{"role": "user", "content": "Hi"}])
    assert (caught.value.status_code, caught.value.error) == (404, "model 'does-not-exist:7b' not found")
    assert sim.get("/sim/stats").json()["calls"]["/api/chat"] == 1


def test_forwarded_calls_count_against_their_tiers_slots(start_sim, start_sidecar) -> None:
    from concurrent.futures import ThreadPoolExecutor

    fast = start_sim("--ttft-ms", "300", "--parallel", "4", name="fast")
    deep = start_sim("--ttft-ms", "5", name="deep")
    sidecar = start_sidecar(
        fast.url,
        deep.url,
        # Three may run per priority level: only the tier's one slot keeps them apart.
        config={"upstreams": {"fast": {"parallel_slots": 1}}, "scheduler": {"max_running_per_priority": 3}},
    )
    # Calls with a seed are forwarded as they are, pinned to the tier whose model they name.
    body = {
        "model": "fast-model",
        "messages": [{"role": "user", "content": "Hi."}],
        "stream": False,
        "options": {"seed": 1},
    }
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: requests.post(sidecar.url + "/api/chat", json=body, timeout=30), range(3)))
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    stats = fast.get("/sim/stats").json()
    assert stats["max_concurrent_seen"] == 1  # the tier's one slot was never exceeded
    assert deep.get("/sim/stats").json()["calls"].get("/api/chat", 0) == 0  # and nothing borrowed the deep tier
