"""Follow-up audio stays within its byte budget: what finished first goes first, and what is gone says so."""

from __future__ import annotations

from typing import Any, cast

import pytest

from voicelane.sidecar.config import RequestClass
from voicelane.sidecar.edge import TextRequest
from voicelane.sidecar.followups import FollowUp, FollowUpStore, KeptFollowUpAudio
from voicelane.sidecar.speech import Speaker

pytestmark = pytest.mark.timeout(30)


def ready(index: int, audio_bytes: int) -> FollowUp:
    return FollowUp(index, f"segment {index}", status="ready", pcm=b"\x00" * audio_bytes, sample_rate=22050)


def test_kept_audio_lets_go_of_what_finished_first_once_over_budget() -> None:
    kept = KeptFollowUpAudio(budget_bytes=1000)
    first, second, third = ready(0, 400), ready(1, 400), ready(2, 400)
    kept.keep(first)
    kept.keep(second)
    assert kept.held_bytes == 800
    kept.keep(third)
    assert kept.held_bytes == 800
    assert (first.status, first.pcm, first.error) == ("evicted", b"", "evicted: newer follow-up audio needed the room")
    assert [second.status, third.status] == ["ready", "ready"]
    assert len(second.pcm) == len(third.pcm) == 400
    assert kept.evicted_total == 1


def test_the_segment_in_production_takes_room_from_the_oldest_kept_audio() -> None:
    kept = KeptFollowUpAudio(budget_bytes=1000)
    older, newer = ready(0, 300), ready(1, 300)
    kept.keep(older)
    kept.keep(newer)
    assert kept.producing(400)
    assert older.status == "ready"
    assert kept.producing(500)
    assert (older.status, newer.status) == ("evicted", "ready")
    assert kept.held_bytes == 800
    kept.producing(0)
    assert kept.held_bytes == 300


def test_a_segment_longer_than_the_whole_budget_does_not_fit() -> None:
    kept = KeptFollowUpAudio(budget_bytes=1000)
    other = ready(0, 600)
    kept.keep(other)
    assert kept.producing(1000)
    assert not kept.producing(1001)
    assert other.status == "evicted"


def test_released_audio_no_longer_counts_and_is_not_evicted_later() -> None:
    kept = KeptFollowUpAudio(budget_bytes=1000)
    gone, stays = ready(0, 600), ready(1, 300)
    kept.keep(gone)
    kept.keep(stays)
    kept.release(gone)
    kept.release(gone)  # twice is harmless
    assert kept.held_bytes == 300
    kept.keep(ready(2, 700))
    assert (gone.status, stays.status) == ("ready", "ready")
    assert kept.evicted_total == 0


def email(request_id: str, sentences: int = 18) -> TextRequest:
    """About 60 characters a sentence: 18 of them make three segments."""
    text = " ".join(f"Mening nummer {n} i brevet om projektet och dess nästa steg." for n in range(sentences))
    return TextRequest(text, RequestClass.EMAIL, "sv", "sv", request_id)


def store(**limits: Any) -> FollowUpStore:
    # Queuing and dropping never touch the speaker; only producing does.
    return FollowUpStore(cast(Speaker, object()), **limits)


def test_an_email_dropped_for_a_newer_one_gives_back_its_audio_and_stops_its_pending_segments() -> None:
    followups = store(max_emails=2, audio_budget_bytes=10_000)
    first = followups.enqueue_email(email("first"))
    assert len(first) == 3
    first[0].status, first[0].pcm = "ready", b"\x00" * 4000
    followups.audio.keep(first[0])
    first[1].status = "running"
    followups.enqueue_email(email("second"))
    assert followups.audio.held_bytes == 4000
    followups.enqueue_email(email("third"))
    assert followups.get("first") is None
    assert followups.audio.held_bytes == 0
    assert (first[1].status, first[1].error) == ("failed", "dropped: too many emails in flight")
    assert all(f.status == "failed" for f in first[1:])
    stats = followups.stats()
    assert stats["emails"] == 2
    assert (stats["audio_bytes"], stats["audio_budget_bytes"], stats["evicted_total"]) == (0, 10_000, 0)


def test_an_email_sent_again_with_its_request_id_replaces_the_old_one_and_its_audio() -> None:
    followups = store(audio_budget_bytes=10_000)
    old = followups.enqueue_email(email("same"))
    old[0].status, old[0].pcm = "ready", b"\x00" * 4000
    followups.audio.keep(old[0])
    new = followups.enqueue_email(email("same"))
    assert followups.get("same") is new
    assert followups.audio.held_bytes == 0
    assert [f.status for f in old] == ["ready", "failed", "failed"]
    assert old[1].error == "dropped: a newer email has the same request id"
    assert [f.status for f in new] == ["pending"] * 3
