"""Email follow-up audio: the body of an email, rewritten and spoken in the background.

When an email is spoken, its TL;DR plays at once; its segments are queued here and
produced one at a time at priority 2, only while no priority-0/1 work runs or waits
(checked again before every sentence, so a chat burst pre-empts a long email between
sentences). Clients fetch the results from `/v1/followups/<request_id>` (a JSON list)
and `/v1/followups/<request_id>/<index>` (the audio).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from voicelane.sidecar.broadcast import Broadcast
from voicelane.sidecar.config import RequestClass
from voicelane.sidecar.edge import TextRequest
from voicelane.sidecar.errors import ApiError
from voicelane.sidecar.segmenter import segment_text
from voicelane.sidecar.speech import Speaker

log = logging.getLogger("voicelane.sidecar.followups")

SEGMENT_TARGET_CHARS = 400


@dataclass
class FollowUp:
    index: int
    text: str
    status: str = "pending"  # pending → running → ready | failed
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


class FollowUpStore:
    """Follow-ups per email request id, bounded in number of emails kept."""

    def __init__(self, speaker: Speaker, *, max_emails: int = 256) -> None:
        self.speaker = speaker
        self.max_emails = max_emails
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
        self._emails[request.request_id] = followups
        while len(self._emails) > self.max_emails:
            # Dropping an email also drops its queued segments: the worker skips what is gone.
            _, dropped = self._emails.popitem(last=False)
            for followup in dropped:
                if followup.status == "pending":
                    followup.status, followup.error = "failed", "dropped: too many emails in flight"
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

    def get(self, request_id: str) -> list[FollowUp] | None:
        return self._emails.get(request_id)

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for followups in self._emails.values():
            for f in followups:
                counts[f.status] = counts.get(f.status, 0) + 1
        return {"emails": len(self._emails), "queued": self._queue.qsize(), **counts}

    async def _run(self) -> None:
        while True:
            request, followup = await self._queue.get()
            if followup.status != "pending":
                continue
            try:
                await self._produce(request, followup)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                followup.status, followup.error = "failed", exc.message
            except Exception as exc:  # one bad segment must not stop the others
                log.exception("follow-up segment failed")
                followup.status, followup.error = "failed", type(exc).__name__
            finally:
                followup.finished_at = time.time()

    async def _produce(self, request: TextRequest, followup: FollowUp) -> None:
        speaker, lane = self.speaker, self.speaker.lane
        await speaker.wait_for_idle_high_priority()
        followup.status, followup.started_at = "running", time.time()
        job = lane.text_job(
            text=request.text,
            request_class=RequestClass.EMAIL_SEGMENT,
            target_lang=request.target_lang,
            request_id=request.request_id,
        )
        rewritten = await lane.submit(job, internal=True).result()
        pcm = bytearray()
        sink: Broadcast[bytes] = Broadcast()
        for sentence in segment_text(rewritten.text, request.target_lang):
            if not sentence.strip():
                continue
            # Yield to chat and TL;DRs between sentences.
            await speaker.wait_for_idle_high_priority()
            started = time.time()
            await speaker.synthesize_into(request, sentence.strip(), sink, pcm, None)
            followup.synth_windows.append((started, time.time()))
        followup.pcm, followup.sample_rate, followup.status = bytes(pcm), speaker.backend.sample_rate, "ready"
