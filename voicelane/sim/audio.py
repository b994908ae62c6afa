"""Synthetic speech for the simulated OpenAI speech endpoint: a tone whose length follows the text.

Each character becomes a fixed slice of audio (a tone for letters and marks, silence for
whitespace), so a test can check that the audio it got belongs to the text it sent.
The output is what the endpoint promises: 16-bit little-endian mono PCM at 24 kHz,
optionally wrapped in a WAV header.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator

SAMPLE_RATE = 24_000
SAMPLE_WIDTH = 2
CHANNELS = 1
MS_PER_CHAR = 60.0
TONE_HZ = 400.0  # a whole number of samples per period at 24 kHz, so slices join without clicks
_AMPLITUDE = 8000


def samples_per_char(speed: float = 1.0) -> int:
    return max(1, round(SAMPLE_RATE * MS_PER_CHAR / 1000.0 / speed))


def pcm_length(text: str, speed: float = 1.0) -> int:
    """Bytes of PCM the endpoint returns for `text` at `speed`."""
    return len(text) * samples_per_char(speed) * SAMPLE_WIDTH


def _tone(samples: int) -> bytes:
    values = (round(_AMPLITUDE * math.sin(2 * math.pi * TONE_HZ * i / SAMPLE_RATE)) for i in range(samples))
    return struct.pack(f"<{samples}h", *values)


def pcm_chunks(text: str, speed: float = 1.0, chunk_bytes: int = 4800) -> Iterator[bytes]:
    """The PCM for `text`, in chunks of about `chunk_bytes` (whole samples)."""
    per_char = samples_per_char(speed)
    tone = _tone(per_char)
    silence = bytes(per_char * SAMPLE_WIDTH)
    chunk_bytes = max(SAMPLE_WIDTH, chunk_bytes - chunk_bytes % SAMPLE_WIDTH)
    pending = bytearray()
    for char in text:
        pending += silence if char.isspace() else tone
        while len(pending) >= chunk_bytes:
            yield bytes(pending[:chunk_bytes])
            del pending[:chunk_bytes]
    if pending:
        yield bytes(pending)


def wav_header(data_bytes: int) -> bytes:
    """A 44-byte RIFF/WAVE header for `data_bytes` of PCM.

    Written with struct rather than the `wave` module because the header must go out
    before the audio, as the first chunk of a streamed response.
    """
    byte_rate = SAMPLE_RATE * CHANNELS * SAMPLE_WIDTH
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        CHANNELS,
        SAMPLE_RATE,
        byte_rate,
        CHANNELS * SAMPLE_WIDTH,
        SAMPLE_WIDTH * 8,
        b"data",
        data_bytes,
    )


def garbage(length: int) -> bytes:
    """Bytes that no audio decoder accepts: markup, then an odd tail so it is not even whole samples."""
    head = b"<html><body>upstream error</body></html>\n"
    body = (head * (length // len(head) + 1))[: max(length, len(head))]
    return body if len(body) % 2 else body + b"!"
