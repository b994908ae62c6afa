"""The audio of one spoken request on its way to its readers, held in memory only as long as needed.

A spoken request's audio is read by its own client and by the clients of identical
requests that joined it. Each reader is registered when its request is admitted, so no
audio can be let go before it has read it. A chunk is let go once every reader has taken
it, unless the stream still keeps its whole audio: it does while the audio is at most
`keep_bytes` long and the process-wide allowance for kept audio (`KeptAudio`) has room.
While it keeps everything, a late identical request can still join and hear it from the
first byte, and the finished audio can be cached; once it has let anything go, it takes
no new readers. Every byte taken in or let go is reported through `on_hold`, which is how
the synthesis gate keeps all spoken requests together within its budget.

The producer never waits for readers while publishing; it waits *between* pieces
(`wait_for_readers`) until its slowest reader is close enough behind, so a slow reader
holds back only its own request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable


class KeptAudio:
    """The process-wide allowance for audio kept whole after every reader has taken it."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.kept_bytes = 0

    def take(self, size: int) -> bool:
        if self.kept_bytes + size > self.limit_bytes:
            return False
        self.kept_bytes += size
        return True

    def give_back(self, size: int) -> None:
        self.kept_bytes -= size


class AudioStream:
    """Chunks of PCM from one producer to registered readers; see the module docstring."""

    def __init__(self, *, keep_bytes: int, kept: KeptAudio, on_hold: Callable[[int], None]) -> None:
        self._chunks: deque[bytes] = deque()
        self._first = 0  # the index of _chunks[0] among every chunk ever published
        self._readers: set[AudioReader] = set()
        self._keep_bytes = keep_bytes
        self._kept = kept
        self._on_hold = on_hold
        self._kept_size = 0  # bytes of this stream counted against the allowance
        self.keeping = True
        self.published_bytes = 0
        self.held_bytes = 0
        self.done = False
        self.exception: BaseException | None = None
        # Replaced on every change: waiters hold the old one, which is set to wake them.
        self._changed = asyncio.Event()

    # ----- readers -------------------------------------------------------------------------------

    def reader(self) -> AudioReader | None:
        """A new reader from the first byte, or None once the stream can no longer replay that far."""
        if not self.keeping:
            return None
        reader = AudioReader(self)
        self._readers.add(reader)
        return reader

    def unread_bytes(self) -> int:
        """How far the slowest reader is behind the producer (0 without readers)."""
        if not self._readers:
            return 0
        return self.published_bytes - min(reader.taken_bytes for reader in self._readers)

    async def wait_for_readers(self, ahead_bytes: int) -> None:
        """Return once the slowest reader is at most `ahead_bytes` behind (or there is no reader)."""
        while self._readers and self.unread_bytes() > ahead_bytes:
            await self._changed.wait()

    # ----- producing -----------------------------------------------------------------------------

    def publish(self, chunk: bytes) -> None:
        if self.done:
            raise RuntimeError("cannot publish to a finished audio stream")
        if not chunk:
            return
        self.published_bytes += len(chunk)
        if self.keeping and self.published_bytes > self._keep_bytes:
            self._stop_keeping()
        if not self.keeping and not self._readers:
            return  # nobody will ever read it
        self._chunks.append(chunk)
        self._held(len(chunk))
        self._notify()

    def whole_audio(self) -> bytes | None:
        """Everything published, if the stream still keeps all of it."""
        return b"".join(self._chunks) if self.keeping else None

    def finish(self) -> None:
        """The producer is done: no more readers join, and kept audio goes once its readers have it."""
        if not self.done:
            self.done = True
            self._stop_keeping()
            self._notify()

    def fail(self, exc: BaseException) -> None:
        """The producer failed: readers get the audio so far, then `exc`."""
        if not self.done:
            self.exception = exc
            self.finish()

    # ----- bookkeeping ---------------------------------------------------------------------------

    def _taken(self, reader: AudioReader) -> None:
        """A reader moved on: count what every reader has now taken, and let it go unless kept."""
        if self.keeping:
            self._keep_what_all_have_taken()
        else:
            self._let_go_what_all_have_taken()
        self._notify()

    def _left(self, reader: AudioReader) -> None:
        self._readers.discard(reader)
        if not self._readers:
            # Nobody reads any more, and no one may join a stream that has let audio go.
            self._stop_keeping()
        self._taken(reader)

    def _taken_index(self) -> int:
        """The index of the first chunk some reader has not taken yet (everything, without readers)."""
        if not self._readers:
            return self._first + len(self._chunks)
        return min(reader.index for reader in self._readers)

    def _keep_what_all_have_taken(self) -> None:
        # Nothing was let go while keeping, so what a reader has taken is counted from the first byte.
        taken = min((reader.taken_bytes for reader in self._readers), default=self.published_bytes)
        growth = taken - self._kept_size
        if growth <= 0:
            return
        if self._kept.take(growth):
            self._kept_size = taken
        else:
            self._stop_keeping()

    def _stop_keeping(self) -> None:
        if self.keeping:
            self.keeping = False
            self._kept.give_back(self._kept_size)
            self._kept_size = 0
        self._let_go_what_all_have_taken()

    def _let_go_what_all_have_taken(self) -> None:
        let_go = 0
        for _ in range(self._taken_index() - self._first):
            let_go += len(self._chunks.popleft())
            self._first += 1
        if let_go:
            self._held(-let_go)

    def _held(self, delta: int) -> None:
        self.held_bytes += delta
        self._on_hold(delta)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class AudioReader(AsyncIterator[bytes]):
    """One reader's place in an AudioStream; `close()` when done reading, however that ends."""

    def __init__(self, stream: AudioStream) -> None:
        self._stream = stream
        self.index = stream._first  # the next chunk to take
        self.taken_bytes = 0
        self.closed = False

    def __aiter__(self) -> AudioReader:
        return self

    async def __anext__(self) -> bytes:
        stream = self._stream
        if self.closed:
            raise StopAsyncIteration
        while self.index >= stream._first + len(stream._chunks) and not stream.done:
            await stream._changed.wait()
        if self.index < stream._first + len(stream._chunks):
            chunk = stream._chunks[self.index - stream._first]
            self.index += 1
            self.taken_bytes += len(chunk)
            stream._taken(self)
            return chunk
        if stream.exception is not None:
            raise stream.exception
        raise StopAsyncIteration

    def close(self) -> None:
        """Stop reading (idempotent): what only this reader still needed is let go."""
        if not self.closed:
            self.closed = True
            self._stream._left(self)
