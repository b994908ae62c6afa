"""Audio formats the sidecar speaks: streaming WAV headers, WAV parsing, PCM arithmetic.

All audio inside the sidecar is 16-bit little-endian PCM at the TTS backend's native rate
(no resampling: the rate goes out in the WAV header and in a response header). A streamed
response cannot know its length when the header goes out, so `wav_header` without a length
writes 0xFFFFFFFF as both the RIFF and the data size, as streaming speech servers do.
Readers accept that: Python's `wave` reads frames until the end of the input (its frame
count is then meaningless); ffmpeg's WAV demuxer treats a 0xFFFFFFFF data size as "until
the end" (with a warning); SoX reads until the end of input too (its own marker for an
unknown length is 0x7FFFF000, which espeak-ng also writes). `WavReader` here accepts all
of these markers, as well as 0, as "the data runs to the end of the stream".

The WAV reader is written by hand because the standard `wave` module needs a whole,
seekable file with a known length, while speech arrives as a stream.
"""

from __future__ import annotations

import struct
from enum import StrEnum

PCM_SAMPLE_WIDTH = 2  # bytes: 16-bit signed little-endian
UNKNOWN_SIZE = 0xFFFFFFFF
# Sizes at or above this (SoX's and espeak-ng's 0x7FFFF000 and 0xFFFFFFFF) and 0 stand for "unknown".
_PLACEHOLDER_MIN = 0x7FFFF000
_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_HEADER_LIMIT = 1 << 16  # bytes of chunks before "data" that a reader tolerates


class AudioFormat(StrEnum):
    """What a client asked for: WAV (header, then PCM) or raw PCM."""

    WAV = "wav"
    PCM = "pcm"

    @property
    def content_type(self) -> str:
        return "audio/wav" if self is AudioFormat.WAV else "application/octet-stream"


class WavError(ValueError):
    """Bytes that are not a WAV stream this sidecar can use, with the reason."""


def wav_header(
    sample_rate: int, channels: int = 1, sample_width: int = PCM_SAMPLE_WIDTH, data_bytes: int | None = None
) -> bytes:
    """A 44-byte PCM WAV header; `data_bytes=None` marks a stream of unknown length (0xFFFFFFFF sizes)."""
    if sample_rate <= 0 or channels <= 0 or sample_width <= 0:
        raise ValueError("sample_rate, channels and sample_width must be positive")
    if data_bytes is None:
        riff_size = data_size = UNKNOWN_SIZE
    else:
        if not 0 <= data_bytes <= UNKNOWN_SIZE - 36:
            raise ValueError(f"data_bytes out of range for a WAV header: {data_bytes}")
        riff_size, data_size = 36 + data_bytes, data_bytes
    block_align = channels * sample_width
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff_size,
        b"WAVE",
        b"fmt ",
        16,
        _WAVE_FORMAT_PCM,
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        sample_width * 8,
        b"data",
        data_size,
    )


def pcm_duration_s(
    pcm: bytes | int, sample_rate: int, channels: int = 1, sample_width: int = PCM_SAMPLE_WIDTH
) -> float:
    """Seconds of audio in `pcm` (bytes, or their count)."""
    size = pcm if isinstance(pcm, int) else len(pcm)
    if sample_rate <= 0 or channels <= 0 or sample_width <= 0:
        raise ValueError("sample_rate, channels and sample_width must be positive")
    return size / (sample_rate * channels * sample_width)


class WavReader:
    """Incremental WAV parser: feed bytes as they arrive, get the PCM of the data chunk back.

    The format is known once the header has passed (`sample_rate` etc. are then set);
    `feed` returns b"" until then. Chunks after a data chunk of declared length are ignored.
    """

    def __init__(self) -> None:
        self.sample_rate = 0
        self.channels = 0
        self.sample_width = 0
        self._pending = bytearray()
        self._in_data = False
        self._data_left: int | None = None  # None: runs to the end of the stream
        self._data_seen = 0
        self._consumed_header = 0

    @property
    def header_done(self) -> bool:
        return self._in_data

    def feed(self, data: bytes) -> bytes:
        if self._in_data:
            return self._take_data(bytes(data))
        self._pending += data
        self._parse_header()
        if not self._in_data:
            return b""
        rest = bytes(self._pending)
        self._pending.clear()
        return self._take_data(rest)

    def finish(self) -> None:
        """Raise WavError if the stream ended before its header or its declared data were complete."""
        if not self._in_data:
            if not self._pending and not self._consumed_header:
                raise WavError("empty: no WAV header")
            raise WavError("the stream ended inside the WAV header")
        if self._data_left:
            raise WavError(f"truncated: {self._data_left} bytes of declared audio data missing")
        if self._data_seen % (self.channels * self.sample_width):
            raise WavError("the audio data ends inside a sample")

    def _take_data(self, data: bytes) -> bytes:
        if self._data_left is None:
            self._data_seen += len(data)
            return data
        taken = data[: self._data_left]
        self._data_left -= len(taken)
        self._data_seen += len(taken)
        return taken

    def _parse_header(self) -> None:
        buffer = self._pending
        if not self._consumed_header:
            if len(buffer) < 12:
                self._check_prefix(bytes(buffer))
                return
            riff, _, wave = struct.unpack_from("<4sI4s", buffer)
            if riff != b"RIFF" or wave != b"WAVE":
                raise WavError("not a WAV stream (no RIFF/WAVE signature)")
            del buffer[:12]
            self._consumed_header = 12
        while len(buffer) >= 8:
            chunk_id, size = struct.unpack_from("<4sI", buffer)
            if chunk_id == b"data":
                if not self.sample_rate:
                    raise WavError("the data chunk comes before the fmt chunk")
                del buffer[:8]
                self._in_data = True
                self._data_left = None if size == 0 or size >= _PLACEHOLDER_MIN else size
                return
            padded = size + (size & 1)
            if self._consumed_header + 8 + padded > _HEADER_LIMIT:
                raise WavError(f"no audio data within the first {_HEADER_LIMIT} bytes")
            if len(buffer) < 8 + padded:
                return
            body = bytes(buffer[8 : 8 + size])
            del buffer[: 8 + padded]
            self._consumed_header += 8 + padded
            if chunk_id == b"fmt ":
                self._read_format(body)

    @staticmethod
    def _check_prefix(prefix: bytes) -> None:
        expected = b"RIFF"
        if prefix[:4] != expected[: len(prefix[:4])]:
            raise WavError("not a WAV stream (no RIFF/WAVE signature)")

    def _read_format(self, body: bytes) -> None:
        if len(body) < 16:
            raise WavError("fmt chunk too short")
        tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", body)
        if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
            tag = struct.unpack_from("<H", body, 24)[0]  # the sub-format GUID starts with the format tag
        if tag != _WAVE_FORMAT_PCM:
            raise WavError(f"not integer PCM (format tag {tag})")
        if channels < 1 or rate < 1 or bits < 8 or bits % 8:
            raise WavError(f"unusable format: {channels} channels, {rate} Hz, {bits} bits")
        if block_align != channels * bits // 8:
            raise WavError("inconsistent block alignment in the fmt chunk")
        self.sample_rate, self.channels, self.sample_width = rate, channels, bits // 8


def parse_wav(data: bytes) -> tuple[int, int, int, bytes]:
    """(sample_rate, channels, sample_width, pcm) of a whole WAV, streaming headers included.

    Raises WavError for anything that is not PCM WAV, or whose data is shorter than declared.
    """
    reader = WavReader()
    pcm = reader.feed(data)
    reader.finish()
    return reader.sample_rate, reader.channels, reader.sample_width, pcm
