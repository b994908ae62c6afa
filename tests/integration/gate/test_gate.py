"""`voicelane gate` in front of a model server (the simulator, speaking Ollama's protocol), over real HTTP.

Several callers stand for the sidecars of several app pods: the gate orders their calls by priority
through the server's slots, refuses beyond its waiting room, shares identical calls, cancels the
calls of callers that left, refuses work while the model server's own process is overloaded, and
passes the rest of Ollama's API through.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import requests
from prometheus_client.parser import text_string_to_metric_families

from voicelane.core.gate_headers import CallInfo


def chat(text: str) -> dict:
    return {"model": "llama3.2:1b", "messages": [{"role": "user", "content": text}], "stream": True}


async def first_byte_at(session: aiohttp.ClientSession, url: str, text: str, info: CallInfo, start: float) -> float:
    async with session.post(url + "/api/chat", json=chat(text), headers=info.headers()) as response:
        assert response.status == 200, await response.text()
        await response.content.readany()
        at = time.monotonic() - start
        await response.read()
        return at


def gauge(url: str, name: str) -> dict[str, float]:
    """The samples of one series name in the gate's /metrics, by their labels."""
    families = text_string_to_metric_families(requests.get(url + "/metrics", timeout=5).text)
    return {
        ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())): s.value
        for family in families
        for s in family.samples
        if s.name == name
    }


async def test_calls_from_every_caller_take_the_servers_slot_highest_priority_first(start_sim, start_gate) -> None:
    sim = start_sim("--ttft-ms", "200", "--tokens-per-s", "10")
    gate = start_gate(sim.url, "--slots", "1")
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        # An email segment from one pod holds the one slot; then, while it runs, another email
        # segment, a long chat and a chat arrive from three other pods, in that order.
        running = asyncio.create_task(
            first_byte_at(session, gate.url, "Mejl ett handlar om mötet i morgon.", CallInfo(2, "email_segment"), start)
        )
        await asyncio.sleep(0.1)
        later = []
        for text, info in (
            ("Mejl två.", CallInfo(2, "email_segment")),
            ("En lång chatt.", CallInfo(1, "chat")),
            ("Hej!", CallInfo(0, "chat")),
        ):
            later.append(asyncio.create_task(first_byte_at(session, gate.url, text, info, start)))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        waiting = gauge(gate.url, "voicelane_gate_requests_waiting")
        assert waiting == {"priority=0": 1, "priority=1": 1, "priority=2": 1}
        first = await running
        email, long_chat, short_chat = await asyncio.gather(*later)
    assert first < short_chat < long_chat < email
    stats = sim.get("/sim/stats").json()
    assert stats["max_concurrent_seen"] == 1  # the server never saw more than its slot


async def test_with_two_slots_a_chat_takes_the_reserved_one_while_longer_work_waits(start_sim, start_gate) -> None:
    sim = start_sim("--ttft-ms", "100", "--tokens-per-s", "10", "--parallel", "2")
    gate = start_gate(sim.url, "--slots", "2")
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        long_chats = [
            asyncio.create_task(
                first_byte_at(
                    session,
                    gate.url,
                    f"Lång chatt {n} om allt möjligt som hände i går och i dag på jobbet.",
                    CallInfo(1),
                    start,
                )
            )
            for n in range(2)
        ]
        await asyncio.sleep(0.2)
        assert gauge(gate.url, "voicelane_gate_requests_waiting")["priority=1"] == 1
        chat_at = await first_byte_at(session, gate.url, "Hej!", CallInfo(0, "chat"), time.monotonic())
        second_long = max(await asyncio.gather(*long_chats))
    assert chat_at < 0.5  # the model's 0.1 s to a first token, not a long reply's whole length
    assert second_long > 1.0


async def test_a_full_waiting_room_is_refused_with_ollamas_error_shape_and_retry_after(start_sim, start_gate) -> None:
    sim = start_sim("--ttft-ms", "600")
    gate = start_gate(sim.url, "--slots", "1", "--max-waiting", "0=1,1=1,2=0")
    async with aiohttp.ClientSession() as session:
        holder = asyncio.create_task(
            session.post(gate.url + "/api/chat", json=chat("Ett."), headers=CallInfo(1).headers())
        )
        await asyncio.sleep(0.2)
        async with session.post(gate.url + "/api/chat", json=chat("Två."), headers=CallInfo(2).headers()) as refused:
            assert refused.status == 429
            assert refused.headers["Retry-After"] == "1"
            assert refused.headers["X-Voicelane-Error"] == "queue_full"
            body = await refused.json()
            assert isinstance(body["error"], str)
            assert body["code"] == "queue_full"
        # A chat still finds its place in the same moment: the cap was priority 2's.
        async with session.post(gate.url + "/api/chat", json=chat("Tre."), headers=CallInfo(0).headers()) as chat_call:
            assert chat_call.status == 200
            await chat_call.read()
        (await holder).release()
    assert gauge(gate.url, "voicelane_gate_rejects_total")["reason=queue_full"] == 1
    finished = gauge(gate.url, "voicelane_gate_requests_total")
    assert finished["outcome=refused,priority=2,request_class=direct"] == 1
    assert finished["outcome=ok,priority=0,request_class=direct"] == 1


async def test_identical_calls_from_different_callers_share_one_model_call(start_sim, start_gate) -> None:
    sim = start_sim("--ttft-ms", "300")
    gate = start_gate(sim.url, "--slots", "1")
    info = CallInfo(1, "notification", key="a1b2c3")

    async def one(session: aiohttp.ClientSession) -> bytes:
        async with session.post(gate.url + "/api/chat", json=chat("Paketet har kommit."), headers=info.headers()) as r:
            assert r.status == 200
            return await r.read()

    # Twenty callers on four connections pools, as four app pods' sidecars would be.
    sessions = [aiohttp.ClientSession() for _ in range(4)]
    try:
        bodies = await asyncio.gather(*(one(sessions[i % 4]) for i in range(20)))
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    assert len(set(bodies)) == 1
    assert b"Paketet" in bodies[0]
    assert sim.get("/sim/stats").json()["calls"]["/api/chat"] == 1
    # Without the key nothing is shared.
    with requests.post(gate.url + "/api/chat", json=chat("Paketet har kommit."), timeout=10) as plain:
        assert plain.status_code == 200
    assert sim.get("/sim/stats").json()["calls"]["/api/chat"] == 2


async def test_a_caller_that_leaves_frees_its_place_and_its_model_call(start_sim, start_gate) -> None:
    sim = start_sim("--ttft-ms", "100", "--tokens-per-s", "5")  # a reply of a few seconds
    gate = start_gate(sim.url, "--slots", "1")
    async with aiohttp.ClientSession() as session:
        running = await session.post(
            gate.url + "/api/chat", json=chat("Ett två tre fyra fem sex."), headers=CallInfo(0).headers()
        )
        await running.content.readany()
        waiter = asyncio.create_task(
            session.post(gate.url + "/api/chat", json=chat("Väntar."), headers=CallInfo(1).headers())
        )
        await asyncio.sleep(0.2)
        assert gauge(gate.url, "voicelane_gate_requests_waiting")["priority=1"] == 1
        waiter.cancel()  # the waiting caller hangs up
        await asyncio.sleep(0.2)
        assert gauge(gate.url, "voicelane_gate_requests_waiting")["priority=1"] == 0
        running.close()  # the running caller hangs up mid-stream
        await asyncio.sleep(0.3)
    assert sim.get("/sim/stats").json()["in_flight"] == 0
    assert gauge(gate.url, "voicelane_gate_requests_running")["priority=0"] == 0
    assert sim.get("/sim/stats").json()["calls"]["/api/chat"] == 1  # the caller that left never reached the model


def test_malformed_gate_headers_are_refused_naming_the_header(start_sim, start_gate) -> None:
    gate = start_gate(start_sim().url)
    for header, value in (
        ("X-Voicelane-Priority", "7"),
        ("X-Voicelane-Deadline-Ms", "soon"),
        ("X-Voicelane-Key", "x" * 500),
        ("X-Voicelane-Class", "Chat Now"),
    ):
        response = requests.post(gate.url + "/api/chat", json=chat("Hej."), headers={header: value}, timeout=10)
        assert response.status_code == 400, header
        assert header in response.json()["error"]


def test_other_ollama_endpoints_pass_through_and_readiness_follows_the_loaded_model(start_sim, start_gate) -> None:
    sim = start_sim("--model", "smollm2-fast:135m")
    gate = start_gate(sim.url, "--model", "smollm2-fast:135m")
    assert requests.get(gate.url + "/api/tags", timeout=5).json() == sim.get("/api/tags").json()
    assert requests.get(gate.url + "/api/version", timeout=5).json() == sim.get("/api/version").json()
    missing = requests.post(gate.url + "/api/chat", json={**chat("Hej."), "model": "nope:1b"}, timeout=10)
    assert missing.status_code == 404  # the server's own answer, unchanged
    assert "error" in missing.json()
    assert requests.get(gate.url + "/readyz", timeout=5).status_code == 503
    loaded = requests.post(gate.url + "/api/chat", json={**chat("Hej."), "model": "smollm2-fast:135m"}, timeout=10)
    assert loaded.status_code == 200
    deadline = time.monotonic() + 15
    while requests.get(gate.url + "/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, requests.get(gate.url + "/readyz", timeout=5).json()
        time.sleep(0.2)


def test_an_overloaded_model_server_process_blocks_model_work_with_retry_after(start_sim, start_gate) -> None:
    sim = start_sim()
    # Stands for the model server: a process that burns a whole core, judged against a tenth of one.
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        gate = start_gate(
            sim.url,
            *("--server-pid", str(burner.pid), "--cpu-limit", "100m", "--memory-limit", "1Mi"),
            *("--sustain", "0.3", "--check-interval", "0.1"),
        )
        deadline = time.monotonic() + 15
        while True:
            response = requests.post(gate.url + "/api/chat", json=chat("Hej."), timeout=10)
            if response.status_code == 503:
                break
            assert response.status_code == 200
            assert time.monotonic() < deadline, "the guardian never blocked"
            time.sleep(0.1)
        assert response.headers["X-Voicelane-Error"] == "guardian_emergency"
        assert int(response.headers["Retry-After"]) >= 1
        assert gauge(gate.url, "voicelane_gate_guardian_blocked") == {"": 1.0}
        assert gauge(gate.url, "voicelane_gate_requests_total")["outcome=refused,priority=1,request_class=direct"] >= 1
    finally:
        burner.kill()
        burner.wait()
    # One good check unblocks: the server's process is gone, so nothing presses any more.
    deadline = time.monotonic() + 15
    while requests.post(gate.url + "/api/chat", json=chat("Hej."), timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the guardian never unblocked"
        time.sleep(0.1)


async def test_sidecars_in_front_of_the_gate_tell_it_each_calls_priority_class_and_key(
    start_sim, start_sidecar, start_gate
) -> None:
    sim = start_sim("--ttft-ms", "300")
    gate = start_gate(sim.url, "--slots", "2")
    pod_a, pod_b = start_sidecar(gate.url, name="pod-a"), start_sidecar(gate.url, name="pod-b")
    assert pod_a.post("/v1/speak", json={"text": "Hej Anna, ses vi i kväll?", "source": "chat"}).status_code == 200
    segment = pod_a.post("/v1/speak", json={"text": "Mötet flyttas till torsdag.", "source": "email_segment"})
    assert segment.status_code == 200
    finished = gauge(gate.url, "voicelane_gate_requests_total")
    assert finished["outcome=ok,priority=0,request_class=chat"] == 1
    assert finished["outcome=ok,priority=2,request_class=email_segment"] == 1
    # The same notification from two app pods at once: one model call, shared at the gate.
    calls = sim.get("/sim/stats").json()["calls"]["/api/chat"]
    text = {"text": "Paketet har kommit till brevlådan.", "source": "notification"}
    async with aiohttp.ClientSession() as session:

        async def speak(url: str) -> bytes:
            async with session.post(url + "/v1/speak", json=text) as response:
                assert response.status == 200
                return await response.read()

        first, second = await asyncio.gather(speak(pod_a.url), speak(pod_b.url))
    assert len(first) > 44  # audio beyond the WAV header (each pod synthesises its own: espeak varies a little)
    assert len(second) > 44
    assert gauge(gate.url, "voicelane_gate_calls_total")["priority=0,role=joiner"] == 1
    assert sim.get("/sim/stats").json()["calls"]["/api/chat"] == calls + 1


def test_requests_the_http_parser_refuses_and_sighup_neither_crash_the_gate_nor_flood_its_log(
    start_sim, start_gate
) -> None:
    gate = start_gate(start_sim().url)
    bad_requests = (
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
    )
    for raw in bad_requests:
        with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as connection:
            connection.sendall(raw)
            answer = connection.recv(65536)
        assert answer.split(b" ", 2)[1].startswith(b"4"), answer[:80]
        assert b"application/json" in answer
    os.kill(gate.process.pid, signal.SIGHUP)
    time.sleep(0.3)
    assert requests.post(gate.url + "/api/chat", json=chat("Hej."), timeout=10).status_code == 200
    log = gate.process.log()
    assert "Traceback" not in log
    assert "ERROR" not in log
