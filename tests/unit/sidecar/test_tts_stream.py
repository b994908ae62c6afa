"""A spoken request's audio stream: every reader gets every byte, and memory holds only what is still needed."""

from __future__ import annotations

import asyncio

import pytest

from voicelane.sidecar.tts.stream import AudioReader, AudioStream, KeptAudio

pytestmark = pytest.mark.timeout(30)

CHUNK = b"\x01\x00" * 50  # 100 bytes of PCM


class Held:
    """What the stream reports to the synthesis gate, summed."""

    def __init__(self) -> None:
        self.bytes = 0

    def __call__(self, delta: int) -> None:
        self.bytes += delta
        assert self.bytes >= 0


def make_stream(keep_bytes: int = 1000, kept_limit: int = 10_000) -> tuple[AudioStream, Held, KeptAudio]:
    held, kept = Held(), KeptAudio(kept_limit)
    return AudioStream(keep_bytes=keep_bytes, kept=kept, on_hold=held), held, kept


async def take(reader: AudioReader, count: int) -> bytes:
    return b"".join([await anext(reader) for _ in range(count)])


async def read_all(reader: AudioReader) -> bytes:
    try:
        return b"".join([chunk async for chunk in reader])
    finally:
        reader.close()


async def test_short_audio_is_kept_whole_for_a_late_reader_and_the_cache() -> None:
    stream, held, kept = make_stream(keep_bytes=1000)
    first = stream.reader()
    assert first is not None
    for _ in range(3):
        stream.publish(CHUNK)
    assert await take(first, 3) == CHUNK * 3
    late = stream.reader()  # an identical request that joins after the audio began
    assert late is not None
    assert await take(late, 3) == CHUNK * 3
    assert stream.whole_audio() == CHUNK * 3
    assert kept.kept_bytes == 300
    assert held.bytes == 300


async def test_long_audio_is_let_go_once_every_reader_has_it_and_takes_no_new_readers() -> None:
    stream, held, kept = make_stream(keep_bytes=250)
    fast, slow = stream.reader(), stream.reader()
    assert fast is not None
    assert slow is not None
    for _ in range(3):
        stream.publish(CHUNK)  # 300 bytes: over what is kept whole
    assert stream.reader() is None
    assert stream.whole_audio() is None
    assert await take(fast, 3) == CHUNK * 3
    assert held.bytes == 300  # the slow reader has taken nothing yet
    assert await take(slow, 2) == CHUNK * 2
    assert held.bytes == 100
    assert kept.kept_bytes == 0
    stream.finish()
    assert await read_all(slow) == CHUNK
    fast.close()
    assert held.bytes == 0


async def test_the_producer_waits_between_pieces_until_the_slowest_reader_is_close_behind() -> None:
    stream, _, _ = make_stream(keep_bytes=0)
    reader = stream.reader()
    assert reader is not None
    for _ in range(5):
        stream.publish(CHUNK)
    waiter = asyncio.create_task(stream.wait_for_readers(ahead_bytes=200))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await take(reader, 2)
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await take(reader, 1)
    await asyncio.wait_for(waiter, timeout=5)
    assert stream.unread_bytes() == 200


async def test_the_allowance_for_kept_audio_is_shared_and_a_stream_over_it_stops_keeping() -> None:
    held, kept = Held(), KeptAudio(250)
    first = AudioStream(keep_bytes=1000, kept=kept, on_hold=held)
    second = AudioStream(keep_bytes=1000, kept=kept, on_hold=held)
    readers = [first.reader(), second.reader()]
    assert None not in readers
    for stream in (first, second):
        stream.publish(CHUNK)
        stream.publish(CHUNK)
    for reader in readers:
        assert reader is not None
        await take(reader, 2)
    assert first.keeping
    assert not second.keeping  # 400 bytes kept would be over the 250 allowed
    assert kept.kept_bytes == 200
    assert held.bytes == 200
    first.finish()
    assert kept.kept_bytes == 0  # a finished stream takes no joiners: the cache has its audio
    assert held.bytes == 0


async def test_when_the_last_reader_leaves_everything_is_let_go_and_later_audio_is_not_held() -> None:
    stream, held, kept = make_stream(keep_bytes=1000)
    reader = stream.reader()
    assert reader is not None
    stream.publish(CHUNK)
    stream.publish(CHUNK)
    await take(reader, 1)
    reader.close()
    assert held.bytes == 0
    assert kept.kept_bytes == 0
    stream.publish(CHUNK)
    assert held.bytes == 0
    assert stream.reader() is None


async def test_a_failure_reaches_each_reader_after_the_audio_before_it() -> None:
    stream, held, _ = make_stream()
    reader = stream.reader()
    assert reader is not None
    stream.publish(CHUNK)
    stream.fail(RuntimeError("the speech engine broke"))
    assert await anext(reader) == CHUNK
    with pytest.raises(RuntimeError, match="broke"):
        await anext(reader)
    reader.close()
    assert held.bytes == 0


async def test_a_reader_waits_for_audio_and_ends_with_the_stream() -> None:
    stream, _, _ = make_stream()
    reader = stream.reader()
    assert reader is not None
    reading = asyncio.create_task(read_all(reader))
    await asyncio.sleep(0.01)
    stream.publish(CHUNK)
    await asyncio.sleep(0.01)
    stream.publish(CHUNK)
    stream.finish()
    assert await asyncio.wait_for(reading, timeout=5) == CHUNK * 2
    with pytest.raises(RuntimeError, match="finished"):
        stream.publish(CHUNK)
