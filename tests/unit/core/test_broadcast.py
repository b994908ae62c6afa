"""Broadcast: every subscriber gets every chunk from the first, whenever it arrives."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import pytest

from voicelane.core.broadcast import Broadcast, BroadcastClosed

T = TypeVar("T")


async def collect(broadcast: Broadcast[T]) -> list[T]:
    return [chunk async for chunk in broadcast.subscribe()]


async def test_a_late_subscriber_gets_the_replay_and_then_follows_live() -> None:
    broadcast: Broadcast[bytes] = Broadcast()
    broadcast.publish(b"RIFF")
    broadcast.publish(b"fmt ")
    late = asyncio.create_task(collect(broadcast))
    await asyncio.sleep(0)
    broadcast.publish(b"data")
    broadcast.finish()
    assert await late == [b"RIFF", b"fmt ", b"data"]


async def test_subscribers_arriving_at_different_times_get_identical_streams() -> None:
    broadcast: Broadcast[bytes] = Broadcast()
    early = asyncio.create_task(collect(broadcast))
    await asyncio.sleep(0)
    broadcast.publish(b"a")
    middle = asyncio.create_task(collect(broadcast))
    await asyncio.sleep(0)
    broadcast.publish(b"b")
    broadcast.finish()
    after_the_end = await collect(broadcast)
    assert await early == await middle == after_the_end == [b"a", b"b"]


async def test_failure_reaches_every_subscriber_after_the_chunks_before_it() -> None:
    broadcast: Broadcast[str] = Broadcast()
    received: list[list[str]] = [[], []]
    error = RuntimeError("tts crashed")

    async def read(into: list[str]) -> None:
        async for chunk in broadcast.subscribe():
            into.append(chunk)

    readers = [asyncio.create_task(read(into)) for into in received]
    await asyncio.sleep(0)
    broadcast.publish("Hej ")
    broadcast.publish("där")
    broadcast.fail(error)
    for reader in readers:
        with pytest.raises(RuntimeError) as caught:
            await reader
        assert caught.value is error
    assert received == [["Hej ", "där"], ["Hej ", "där"]]
    with pytest.raises(RuntimeError):
        await collect(broadcast)


async def test_state_and_sizes_are_visible() -> None:
    text: Broadcast[str] = Broadcast()
    text.publish("å")
    text.publish("ab")
    assert text.total_bytes == 4  # UTF-8: å is two bytes
    assert text.chunks == ["å", "ab"]
    assert not text.done
    text.finish()
    assert text.done
    assert text.exception is None

    audio: Broadcast[bytes] = Broadcast()
    audio.publish(b"\x00" * 10)
    assert audio.total_bytes == 10


async def test_chunks_is_a_copy() -> None:
    broadcast: Broadcast[str] = Broadcast()
    broadcast.publish("a")
    broadcast.chunks.append("x")
    assert broadcast.chunks == ["a"]


async def test_publishing_after_the_end_is_refused_and_the_first_outcome_stands() -> None:
    broadcast: Broadcast[str] = Broadcast()
    broadcast.finish()
    broadcast.fail(RuntimeError("late"))
    assert broadcast.exception is None
    with pytest.raises(BroadcastClosed):
        broadcast.publish("late")


async def test_a_cancelled_subscriber_does_not_disturb_the_others() -> None:
    broadcast: Broadcast[str] = Broadcast()
    doomed = asyncio.create_task(collect(broadcast))
    survivor = asyncio.create_task(collect(broadcast))
    await asyncio.sleep(0)
    doomed.cancel()
    broadcast.publish("x")
    broadcast.finish()
    assert await survivor == ["x"]
    with pytest.raises(asyncio.CancelledError):
        await doomed
