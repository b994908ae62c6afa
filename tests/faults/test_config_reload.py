"""Configuration reload under load: the ConfigMap is swapped while requests run.

The file is replaced the way kubelet updates a mounted ConfigMap (a new file renamed
into place, never a half-written one). Valid changes apply without failing a single
request, the upstream switch included; an invalid file (bytes that are not UTF-8
included) is rejected, logged, counted, and the running configuration kept, and the
watcher goes on watching. SIGHUP re-reads the file at once and drops no request, and
SIGTERM still ends the sidecar cleanly.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import yaml

from tests.faults.conftest import fault_config
from tests.faults.wire import Reply, call, metric_value, sidecar_stats, sim_stats, wait_until_async

pytestmark = pytest.mark.timeout(90)


def replace_config(path: Path, content: str | bytes) -> None:
    """Write-then-rename, as a ConfigMap volume update is atomic."""
    staging = path.with_suffix(".staging")
    staging.write_bytes(content.encode() if isinstance(content, str) else content)
    os.replace(staging, path)


def settings(fast_url: str, deep_url: str, **overrides: Any) -> dict[str, Any]:
    return fault_config(
        upstreams={
            "fast": {"url": fast_url, "model": "fast-model", "health_interval_s": 0.2},
            "deep": {"url": deep_url, "model": "deep-model", "health_interval_s": 0.2},
        },
        phrase_bank={"enabled": False},
        **overrides,
    )


async def keep_asking(sidecar_url: str, stop: asyncio.Event, replies: list[tuple[str, Reply]]) -> None:
    counter = itertools.count()
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            index = next(counter)
            asks = [
                ("/v1/text", {"text": f"Fråga {index} under omladdning.", "source": "chat"}),
                ("/v1/text", {"text": f"Ström {index} under omladdning.", "source": "chat", "stream": True}),
                ("/v1/speak", {"text": f"Tal {index} under omladdning.", "source": "notification"}),
            ]
            results = await asyncio.gather(*(call(session, sidecar_url + path, body) for path, body in asks))
            replies.extend((path, reply) for (path, _), reply in zip(asks, results, strict=True))


def assert_all_answered(replies: list[tuple[str, Reply]]) -> None:
    assert replies
    for path, reply in replies:
        assert reply.status == 200, (path, reply.describe())
        assert reply.complete, (path, reply.describe())
        if path == "/v1/text" and reply.headers.get("Content-Type", "").startswith("application/x-ndjson"):
            final = reply.lines()[-1]
            assert final["done"] is True
            assert "error" not in final, (path, reply.describe())


async def test_config_swapped_under_load_fails_no_request(start_sim, start_sidecar) -> None:
    sim_a = start_sim("--ttft-ms", "30", "--tokens-per-s", "100", "--parallel", "8", name="sim-a")
    sim_b = start_sim("--ttft-ms", "30", "--tokens-per-s", "100", "--parallel", "8", name="sim-b")
    sidecar = start_sidecar(sim_a.url, config=settings(sim_a.url, sim_a.url))
    config_file: Path = sidecar.config_file  # type: ignore[attr-defined]

    replies: list[tuple[str, Reply]] = []
    stop = asyncio.Event()
    load = asyncio.create_task(keep_asking(sidecar.url, stop, replies))
    await asyncio.sleep(1.0)

    # Swap to the other model server, with new limits, cache and TTFA targets.
    swapped = settings(
        sim_b.url,
        sim_b.url,
        scheduler={"max_waiting": 40},
        cache={"max_bytes": 8 * 1024 * 1024},
        ttfa={"targets": {"notification": 2.0}},
    )
    replace_config(config_file, yaml.safe_dump(swapped))
    await wait_until_async(
        lambda: sidecar_stats(sidecar.url)["upstreams"]["fast"]["url"] == sim_b.url, timeout_s=10, what="the swap"
    )
    calls_b = sim_stats(sim_b.url)["calls"].get("/api/chat", 0)
    await asyncio.sleep(1.5)
    assert sim_stats(sim_b.url)["calls"].get("/api/chat", 0) > calls_b, "the new upstream gets the work"

    # And back, while requests keep running.
    replace_config(config_file, yaml.safe_dump(settings(sim_a.url, sim_a.url, scheduler={"max_waiting": 30})))
    await wait_until_async(
        lambda: sidecar_stats(sidecar.url)["queue"]["max_waiting"] == 30, timeout_s=10, what="the swap back"
    )
    await asyncio.sleep(1.0)
    stop.set()
    await load

    assert_all_answered(replies)
    stats = sidecar_stats(sidecar.url)
    assert stats["upstreams"]["fast"]["url"] == sim_a.url
    metrics = sidecar.get("/metrics").text
    assert metric_value(metrics, "voicelane_config_reloads_total", {"result": "applied"}) == 2


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        ("rate_limit:\n  burst: 1\n  sustained_per_s: 50\n", "burst must be >= sustained_per_s"),
        ("upstreams: [this is: not, valid\n", "not valid YAML"),
        ("scheduler:\n  max_waitng: 5\n", "max_waitng"),
        # Latin-1 where UTF-8 belongs. This killed the watcher for good: nothing logged or counted,
        # no later file applied, and SIGTERM then exited 1 with a traceback.
        (b"scheduler:\n  max_waiting: 7  # caf\xe9\n", "not UTF-8 text (byte 34 is"),
    ],
    ids=["invalid_value", "broken_yaml", "unknown_key", "not_utf8"],
)
async def test_invalid_config_is_rejected_logged_counted_and_the_old_one_kept(
    start_sim, start_sidecar, broken: str | bytes, why: str
) -> None:
    sim = start_sim("--ttft-ms", "30", "--parallel", "8")
    good = settings(sim.url, sim.url, scheduler={"max_waiting": 25})
    sidecar = start_sidecar(sim.url, config=good)
    config_file: Path = sidecar.config_file  # type: ignore[attr-defined]

    replies: list[tuple[str, Reply]] = []
    stop = asyncio.Event()
    load = asyncio.create_task(keep_asking(sidecar.url, stop, replies))
    await asyncio.sleep(0.5)
    replace_config(config_file, broken)

    def rejected() -> bool:
        metrics = sidecar.get("/metrics").text
        return metric_value(metrics, "voicelane_config_reloads_total", {"result": "rejected"}) == 1

    await wait_until_async(rejected, timeout_s=10, what="the rejection to be counted")
    await asyncio.sleep(1.0)
    stop.set()
    await load

    assert_all_answered(replies)
    stats = sidecar_stats(sidecar.url)
    assert stats["queue"]["max_waiting"] == 25, "the running configuration is kept"
    assert stats["upstreams"]["fast"]["url"] == sim.url
    metrics = sidecar.get("/metrics").text
    assert metric_value(metrics, "voicelane_config_reloads_total", {"result": "applied"}) == 0
    # Logged in the same step that counted it.
    log = sidecar.process.log()
    assert "configuration change rejected, keeping the running one" in log
    assert why in log

    # Fixing the file applies it: the sidecar was not stuck on the broken version.
    replace_config(config_file, yaml.safe_dump(settings(sim.url, sim.url, scheduler={"max_waiting": 26})))
    await wait_until_async(
        lambda: sidecar_stats(sidecar.url)["queue"]["max_waiting"] == 26, timeout_s=10, what="the fixed config"
    )


async def test_repeated_reloads_leave_no_upstream_connections_behind(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "10", "--parallel", "8")
    total_timeout_s = 2.0

    def version(num_predict: int) -> dict[str, Any]:
        config = settings(sim.url, sim.url)
        for tier in ("fast", "deep"):
            config["upstreams"][tier].update(total_timeout_s=total_timeout_s, num_predict=num_predict)
        return config

    sidecar = start_sidecar(sim.url, config=version(100))
    config_file: Path = sidecar.config_file  # type: ignore[attr-defined]
    process = psutil.Process(sidecar.process.pid)

    def upstream_connections() -> int:
        return sum(
            1
            for c in process.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == sim.port and c.status == psutil.CONN_ESTABLISHED
        )

    async with aiohttp.ClientSession() as session:
        for reload in range(6):
            # Each change of an upstream's settings gives it a new client (and connection pool).
            replace_config(config_file, yaml.safe_dump(version(101 + reload)))
            await wait_until_async(
                lambda n=reload: (
                    metric_value(sidecar.get("/metrics").text, "voicelane_config_reloads_total", {"result": "applied"})
                    == n + 1
                ),
                timeout_s=10,
                what=f"reload {reload + 1}",
            )
            reply = await call(
                session, sidecar.url + "/v1/text", {"text": f"Efter omladdning {reload}.", "source": "chat"}
            )
            assert reply.status == 200, reply.describe()
    # Calls on a replaced client end within its total timeout; after that its pool is closed.
    await wait_until_async(
        lambda: upstream_connections() <= 4,
        timeout_s=total_timeout_s + 5,
        what="replaced clients to close their connections",
    )


async def test_shutdown_after_a_file_that_is_not_utf8_exits_cleanly(start_sim, start_sidecar) -> None:
    sim = start_sim("--ttft-ms", "10")
    sidecar = start_sidecar(sim.url, config=settings(sim.url, sim.url, scheduler={"max_waiting": 25}))
    config_file: Path = sidecar.config_file  # type: ignore[attr-defined]
    replace_config(config_file, b"\xff\xfe\x00s\x00c\x00h\x00")  # UTF-16, as some editors save
    await wait_until_async(
        lambda: (
            metric_value(sidecar.get("/metrics").text, "voicelane_config_reloads_total", {"result": "rejected"}) == 1
        ),
        timeout_s=10,
        what="the rejection to be counted",
    )
    assert sidecar.get("/healthz").status_code == 200
    assert sidecar.process.stop() == 0
    log = sidecar.process.log()
    assert "not UTF-8 text" in log
    assert "Traceback" not in log


async def test_sighup_reloads_the_configuration_and_drops_no_request(start_sim, start_sidecar) -> None:
    # Slow tokens: the requests are still running when the signal comes.
    sim = start_sim("--ttft-ms", "30", "--tokens-per-s", "40", "--parallel", "8")
    sidecar = start_sidecar(sim.url, config=settings(sim.url, sim.url, scheduler={"max_waiting": 25}))
    config_file: Path = sidecar.config_file  # type: ignore[attr-defined]
    long_text = " ".join(f"ord{i}" for i in range(60)) + "."

    async with aiohttp.ClientSession() as session:
        asks = [
            ("/v1/text", {"text": f"Ström: {long_text}", "source": "chat", "stream": True}),
            ("/v1/text", {"text": f"Hel: {long_text}", "source": "chat"}),
            ("/v1/speak", {"text": f"Tal: {long_text}", "source": "notification"}),
            ("/api/chat", {"model": "voicelane", "messages": [{"role": "user", "content": long_text}]}),
        ]
        in_flight = [asyncio.create_task(call(session, sidecar.url + path, body)) for path, body in asks]
        await wait_until_async(lambda: sim_stats(sim.url)["in_flight"] >= 3, timeout_s=5, what="the calls to start")

        replace_config(config_file, yaml.safe_dump(settings(sim.url, sim.url, scheduler={"max_waiting": 31})))
        sidecar.process.signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert sidecar.process.alive(), sidecar.process.log()[-2000:]
        assert any(not task.done() for task in in_flight), "the signal came while requests ran"
        replies = await asyncio.gather(*in_flight)

    for (path, _), reply in zip(asks, replies, strict=True):
        assert reply.status == 200, (path, reply.describe())
        assert reply.complete, (path, reply.describe())
    assert replies[0].lines()[-1]["done"] is True
    assert "error" not in replies[0].lines()[-1]
    assert sidecar_stats(sidecar.url)["queue"]["max_waiting"] == 31
    metrics = sidecar.get("/metrics").text
    assert metric_value(metrics, "voicelane_config_reloads_total", {"result": "applied"}) == 1
    # One line says what the signal did: reloaded, or (if the file watch got there first) unchanged.
    assert "SIGHUP: " in sidecar.process.log()

    # A signal with nothing changed is said so; one with a broken file is a counted rejection.
    sidecar.process.signal(signal.SIGHUP)
    await wait_until_async(
        lambda: "is unchanged; nothing to reload" in sidecar.process.log(), timeout_s=5, what="the unchanged line"
    )
    replace_config(config_file, "scheduler: [broken\n")
    sidecar.process.signal(signal.SIGHUP)
    await wait_until_async(
        lambda: (
            metric_value(sidecar.get("/metrics").text, "voicelane_config_reloads_total", {"result": "rejected"}) == 1
        ),
        timeout_s=5,
        what="the rejection",
    )
    assert sidecar.process.alive()
    assert sidecar.process.stop() == 0
