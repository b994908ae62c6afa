"""Email follow-up audio: the body of an email, rewritten and spoken in the background.

When an email is spoken, its TL;DR plays at once; its segments are queued here and
produced one at a time as background work, only while the scheduler says the levels above
it are idle (no chat or TL;DR model call or speech runs or waits; asked again before every
piece of speech, a sentence or part of a long one, so a chat burst pre-empts a long email
between pieces). Clients fetch the results from
`/v1/followups/<request_id>` (a JSON list) and `/v1/followups/<request_id>/<index>` (the
audio; 410 `segment_evicted` once it was let go).

Memory is bounded: all follow-up audio together, finished or being produced, stays within
`FOLLOWUP_AUDIO_BUDGET_BYTES` (plus the piece being synthesised); past it the audio that
finished first is let go and its segment says `evicted`. The listings themselves are kept
for the last `MAX_EMAILS` emails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from voicelane.core.refusals import LaneError
from voicelane.sidecar.config import RequestClass
from voicelane.sidecar.edge import TextRequest
from voicelane.sidecar.errors import ApiError
from voicelane.sidecar.segmenter import segment_text
from voicelane.sidecar.speech import Speaker
from voicelane.sidecar.tts.pieces import PIECE_MAX_CHARS, speech_pieces

log = logging.getLogger("voicelane.sidecar.followups")

SEGMENT_TARGET_CHARS = 400
# Listings (segment texts and states) of this many emails are kept; their audio is bounded apart.
MAX_EMAILS = 256
# All follow-up audio held for clients to fetch, the segment being produced included: about
# twelve minutes of espeak-ng's speech, three emails of 4,000 characters. A client fetches an
# email's follow-ups soon after its TL;DR, so what finished first is what goes first.
FOLLOWUP_AUDIO_BUDGET_BYTES = 32 * 1024 * 1024


@dataclass(eq=False)  # compared and hashed by identity: the kept audio is a set of these
class FollowUp:
    index: int
    text: str
    status: str = "pending"  # pending → running → ready → evicted, or failed
    pcm: bytes = b""
    sample_rate: int = 0
    error: str | None = None
    started_at: float | None = None  # wall-clock seconds, for clients and tests
    finished_at: float | None = None
    synth_windows: list[tuple[float, float]] = field(default_factory=list)

    def describe(self, request_id: str) -> dict[str, Any]:
        return {
            "index": self.index,
            "status": self.status,
            "chars": len(self.text),
            "url": f"/v1/followups/{request_id}/{self.index}",
            "audio_bytes": len(self.pcm),
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "synthesis_windows": self.synth_windows,
        }


def split_email(text: str, lang: str, target_chars: int = SEGMENT_TARGET_CHARS) -> list[str]:
    """Group the email's sentences into segments of about `target_chars`."""
    segments: list[str] = []
    current = ""
    for sentence in segment_text(text, lang):
        if current and len(current) + len(sentence) > target_chars:
            segments.append(current)
            current = ""
        current += sentence
    if current.strip():
        segments.append(current)
    return [s for s in (seg.strip() for seg in segments) if s]


class KeptFollowUpAudio:
    """Which follow-ups hold their audio, in the order they finished, within a byte budget.

    The audio being produced counts too, so that the segment in progress takes room from the
    oldest kept audio rather than going beyond the budget.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._kept: dict[FollowUp, None] = {}  # insertion order is finishing order
        self.kept_bytes = 0
        self.producing_bytes = 0
        self.evicted_total = 0

    @property
    def held_bytes(self) -> int:
        return self.kept_bytes + self.producing_bytes

    def producing(self, audio_bytes: int) -> bool:
        """The segment in progress holds `audio_bytes` (0 once it is done); False if it cannot fit at all."""
        self.producing_bytes = audio_bytes
        self._evict_over_budget()
        return audio_bytes <= self.budget_bytes

    def keep(self, followup: FollowUp) -> None:
        """`followup` is ready: keep its audio, letting go of the oldest kept audio beyond the budget."""
        self.producing_bytes = 0
        self._kept[followup] = None
        self.kept_bytes += len(followup.pcm)
        self._evict_over_budget()

    def release(self, followup: FollowUp) -> None:
        """`followup`'s email is gone: its audio no longer counts."""
        if followup in self._kept:
            del self._kept[followup]
            self.kept_bytes -= len(followup.pcm)

    def _evict_over_budget(self) -> None:
        while self.held_bytes > self.budget_bytes and self._kept:
            oldest = next(iter(self._kept))
            self.release(oldest)
            oldest.status, oldest.pcm = "evicted", b""
            oldest.error = "evicted: newer follow-up audio needed the room"
            self.evicted_total += 1


class FollowUpStore:
    """Follow-ups per email request id: listings for the last `max_emails`, audio within a byte budget."""

    def __init__(
        self,
        speaker: Speaker,
        *,
        max_emails: int = MAX_EMAILS,
        audio_budget_bytes: int = FOLLOWUP_AUDIO_BUDGET_BYTES,
    ) -> None:
        self.speaker = speaker
        self.max_emails = max_emails
        self.audio = KeptFollowUpAudio(audio_budget_bytes)
        self._emails: OrderedDict[str, list[FollowUp]] = OrderedDict()
        self._queue: asyncio.Queue[tuple[TextRequest, FollowUp]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="voicelane-followups")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def enqueue_email(self, request: TextRequest) -> list[FollowUp]:
        followups = [FollowUp(i, seg) for i, seg in enumerate(split_email(request.text, request.lang))]
        replaced = self._emails.pop(request.request_id, None)
        if replaced is not None:
            self._drop(replaced, "dropped: a newer email has the same request id")
        self._emails[request.request_id] = followups
        while len(self._emails) > self.max_emails:
            _, dropped = self._emails.popitem(last=False)
            self._drop(dropped, "dropped: too many emails in flight")
        for followup in followups:
            segment_request = TextRequest(
                text=followup.text,
                request_class=RequestClass.EMAIL_SEGMENT,
                lang=request.lang,
                target_lang=request.target_lang,
                request_id=f"{request.request_id}-{followup.index}",
                voice=request.voice,
            )
            self._queue.put_nowait((segment_request, followup))
        return followups

    def _drop(self, followups: list[FollowUp], reason: str) -> None:
        """Let go of an email's follow-ups: the worker skips the queued ones and abandons the running one."""
        for followup in followups:
            self.audio.release(followup)
            if followup.status in ("pending", "running"):
                followup.status, followup.error = "failed", reason

    def get(self, request_id: str) -> list[FollowUp] | None:
        return self._emails.get(request_id)

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for followups in self._emails.values():
            for f in followups:
                counts[f.status] = counts.get(f.status, 0) + 1
        return {
            "emails": len(self._emails),
            "queued": self._queue.qsize(),
            **counts,
            "audio_bytes": self.audio.held_bytes,
            "audio_budget_bytes": self.audio.budget_bytes,
            "evicted_total": self.audio.evicted_total,
        }

    async def _run(self) -> None:
        while True:
            request, followup = await self._queue.get()
            if followup.status != "pending":
                continue
            try:
                await self._produce(request, followup)
            except asyncio.CancelledError:
                raise
            except (ApiError, LaneError) as exc:
                followup.status, followup.error = "failed", exc.message
            except Exception as exc:  # one bad segment must not stop the others
                log.exception("follow-up segment failed")
                followup.status, followup.error = "failed", type(exc).__name__
            finally:
                followup.finished_at = time.time()
                self.audio.producing(0)

    async def _produce(self, request: TextRequest, followup: FollowUp) -> None:
        speaker, lane = self.speaker, self.speaker.lane
        await lane.scheduler.until_background_idle()
        if followup.status != "pending":
            return  # its email was dropped meanwhile
        followup.status, followup.started_at = "running", time.time()
        job = lane.text_job(
            text=request.text,
            request_class=RequestClass.EMAIL_SEGMENT,
            target_lang=request.target_lang,
            request_id=request.request_id,
        )
        rewritten = await lane.submit(job, internal=True).result()
        pieces: list[bytes] = []
        produced_bytes = 0
        for sentence in segment_text(rewritten.text, request.target_lang):
            # A piece at a time, so the audio budget is checked after each at most 250 characters.
            for piece in speech_pieces(sentence, PIECE_MAX_CHARS):
                # Yield to chat and TL;DRs between pieces.
                await lane.scheduler.until_background_idle()
                if followup.status != "running":
                    return  # its email was dropped meanwhile
                started = time.time()
                pieces.append(await speaker.synthesize_whole(request, piece))
                followup.synth_windows.append((started, time.time()))
                produced_bytes += len(pieces[-1])
                if not self.audio.producing(produced_bytes):
                    followup.status, followup.error = "failed", "its audio is longer than the follow-up audio budget"
                    return
        if followup.status != "running":
            return
        followup.pcm, followup.sample_rate = b"".join(pieces), speaker.backend.sample_rate
        pieces.clear()
        followup.status = "ready"
        self.audio.keep(followup)
