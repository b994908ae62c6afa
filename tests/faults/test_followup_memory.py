"""Email follow-up audio stays within its memory bound, however many long emails come, and plays in full.

Real processes on loopback: the simulator as the model tiers, the sidecar speaking with
espeak-ng in process. The emails go to speech as written (`prompts.passthrough`), so each
follow-up segment's audio is the segment's own text spoken. Each email has 4,000 characters
in sentences, twelve segments and 12 MB of audio: sixteen of them make six times the budget.
Before the fix every email's follow-up audio was kept whole for the last 256 emails.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.faults.conftest import fault_config
from tests.faults.test_speech_load import MIB, is_speech, rss_sampler, speak
from voicelane.sidecar.audio import parse_wav
from voicelane.sidecar.followups import FOLLOWUP_AUDIO_BUDGET_BYTES, split_email

pytestmark = pytest.mark.timeout(180)

EMAILS = 16
EMAIL_CHARS = 4000
# Resident memory may grow by the follow-up audio budget plus working memory (sockets, buffers,
# the allocator's slack, the speech of the short TL;DRs).
RSS_GROWTH_BOUND_BYTES = FOLLOWUP_AUDIO_BUDGET_BYTES + 16 * MIB
# espeak-ng's output varies a little between syntheses and with where a text is cut into pieces;
# a lost piece would be far more than this of a segment.
LENGTH_TOLERANCE = 0.02


def long_email(number: int, chars: int = EMAIL_CHARS) -> str:
    """Sentences of about 90 characters, each naming the email, up to about `chars` characters."""
    sentences: list[str] = []
    while sum(len(s) + 1 for s in sentences) < chars - 100:
        sentences.append(
            f"Brev {number}, stycke {len(sentences) + 1}: här kommer en längre mening om projektets läge och nästa steg."
        )
    return " ".join(sentences)


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def wait_for_followups(session: aiohttp.ClientSession, url: str, emails: int, audio_bytes: list[int]) -> None:
    """Until `emails` emails came and none of their follow-ups waits or runs, noting the audio held meanwhile."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        followups = (await get_json(session, url + "/v1/stats"))["followups"]
        audio_bytes.append(followups["audio_bytes"])
        idle = followups["queued"] == 0 and not followups.get("pending") and not followups.get("running")
        if followups["emails"] == emails and idle:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"follow-ups still in progress: {followups}")


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with session.get(url) as response:
        return response.status, dict(response.headers), await response.read()


async def test_many_long_emails_keep_their_follow_up_audio_within_the_bound_and_it_plays_in_full(
    start_sim, start_sidecar
) -> None:
    sim = start_sim("--ttft-ms", "10", "--tokens-per-s", "2000")
    # The response cache, bounded apart, would keep each TL;DR's audio and blur what follow-ups hold.
    sidecar = start_sidecar(sim.url, config=fault_config(prompts={"passthrough": True}, cache={"enabled": False}))
    emails = {f"long-email-{n}": long_email(n) for n in range(EMAILS)}
    reported_audio_bytes: list[int] = []
    async with aiohttp.ClientSession() as session:
        await speak(session, sidecar.url, "Hej, nu börjar vi.", "chat")  # the first request warms the process
        with rss_sampler(sidecar.process.pid) as rss:
            settled = asyncio.create_task(wait_for_followups(session, sidecar.url, EMAILS, reported_audio_bytes))
            for request_id, text in emails.items():
                async with session.post(
                    sidecar.url + "/v1/speak", json={"text": text, "source": "email", "request_id": request_id}
                ) as response:
                    assert response.status == 200
                    assert int(response.headers["X-Voicelane-Followup-Count"]) == len(split_email(text, "sv"))
                    assert len(parse_wav(await response.read())[3]) > 0  # the TL;DR
            await settled
            listings = {
                request_id: (await get_json(session, f"{sidecar.url}/v1/followups/{request_id}"))["segments"]
                for request_id in emails
            }
            fetched = {
                (request_id, segment["index"]): await fetch(session, sidecar.url + segment["url"])
                for request_id, segments in listings.items()
                for segment in segments
            }
        stats = (await get_json(session, sidecar.url + "/v1/stats"))["followups"]
        # The newest email's segments, spoken again one at a time as chats: the same text, the same voice.
        newest_id = list(emails)[-1]
        alone = [
            await speak(session, sidecar.url, segment_text, "chat", audio_format="pcm")
            for segment_text in split_email(emails[newest_id], "sv")
        ]

    growth = max(rss) - rss[0]
    segments = [(request_id, segment) for request_id, listed in listings.items() for segment in listed]
    kept = [(request_id, segment) for request_id, segment in segments if segment["status"] == "ready"]
    evicted = [(request_id, segment) for request_id, segment in segments if segment["status"] == "evicted"]
    differences = [
        abs(segment["audio_bytes"] - len(solo.body)) / len(solo.body)
        for segment, solo in zip(listings[newest_id], alone, strict=True)
    ]
    produced_bytes = sum(s["audio_bytes"] for _, s in kept) / max(1, len(kept)) * len(segments)
    print(
        f"\n{EMAILS} emails, {len(segments)} follow-ups, about {produced_bytes / MIB:.0f} MiB of follow-up audio: "
        f"{len(kept)} kept ({stats['audio_bytes'] / MIB:.1f} MiB), {len(evicted)} evicted; "
        f"RSS {rss[0] / MIB:.0f} MiB before, peak {max(rss) / MIB:.0f} MiB (+{growth / MIB:.1f} MiB); "
        f"the newest email's segments within {max(differences):.1%} of their texts spoken alone"
    )

    assert growth <= RSS_GROWTH_BOUND_BYTES, f"RSS grew by {growth / MIB:.0f} MiB"
    assert max(reported_audio_bytes) <= FOLLOWUP_AUDIO_BUDGET_BYTES
    assert stats["audio_budget_bytes"] == FOLLOWUP_AUDIO_BUDGET_BYTES
    assert stats["audio_bytes"] == sum(segment["audio_bytes"] for _, segment in kept)
    # More audio was produced than the budget holds, so some was let go: the budget was really tested.
    assert evicted
    assert stats["evicted_total"] == len(evicted)
    assert {segment["status"] for _, segment in segments} == {"ready", "evicted"}
    # What finished first went first: the newest email is kept whole, and everything evicted
    # finished before everything kept.
    assert all(segment["status"] == "ready" for segment in listings[newest_id])
    assert max(s["finished_at"] for _, s in evicted) <= min(s["finished_at"] for _, s in kept)

    for request_id, segment in evicted:
        status, headers, body = fetched[request_id, segment["index"]]
        assert status == 410
        assert headers["Content-Type"].startswith("application/json")
        assert b'"code": "segment_evicted"' in body
        assert segment["audio_bytes"] == 0

    for request_id, segment in kept:
        status, headers, body = fetched[request_id, segment["index"]]
        assert status == 200
        assert headers["Content-Type"] == "audio/wav"
        rate, channels, width, pcm = parse_wav(body)
        assert (rate, channels, width) == (int(headers["X-Voicelane-Sample-Rate"]), 1, 2)
        assert len(pcm) == segment["audio_bytes"]
        assert is_speech(pcm)

    # Complete: each kept segment of the newest email is as long as its text spoken alone.
    assert all(solo.status == 200 for solo in alone)
    assert max(differences) <= LENGTH_TOLERANCE, differences
