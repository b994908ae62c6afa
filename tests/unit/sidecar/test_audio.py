"""Audio formats: streaming WAV headers that common readers accept, and a strict WAV parser."""

from __future__ import annotations

import io
import struct
import wave

import pytest

from voicelane.sidecar.audio import (
    UNKNOWN_SIZE,
    AudioFormat,
    WavError,
    WavReader,
    parse_wav,
    pcm_duration_s,
    wav_header,
)

PCM = struct.pack("<8h", 0, 1000, -1000, 32767, -32768, 5, -5, 0)


def written_by_wave(pcm: bytes, rate: int = 22050, channels: int = 1, width: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def chunk(name: bytes, body: bytes) -> bytes:
    return name + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def fmt_body(tag: int = 1, channels: int = 1, rate: int = 24000, bits: int = 16) -> bytes:
    align = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


def riff(*chunks: bytes, size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if size is None else size) + body


# ----- writing -------------------------------------------------------------------------------------


def test_a_header_with_a_known_length_is_what_the_wave_module_writes() -> None:
    assert wav_header(22050, data_bytes=len(PCM)) + PCM == written_by_wave(PCM)


def test_a_streaming_header_marks_both_sizes_unknown() -> None:
    header = wav_header(24000)
    assert len(header) == 44
    riff_size, data_size = struct.unpack_from("<I", header, 4)[0], struct.unpack_from("<I", header, 40)[0]
    assert riff_size == data_size == UNKNOWN_SIZE


def test_the_wave_module_reads_a_streamed_wav_to_its_end() -> None:
    streamed = wav_header(22050) + PCM
    with wave.open(io.BytesIO(streamed), "rb") as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (22050, 1, 2)
        # The frame count is the placeholder's, so read "everything": the stream's end stops it.
        assert reader.readframes(1 << 20) == PCM


def test_our_parser_reads_streamed_and_complete_wavs_alike() -> None:
    assert parse_wav(wav_header(22050) + PCM) == (22050, 1, 2, PCM)
    assert parse_wav(written_by_wave(PCM, rate=16000)) == (16000, 1, 2, PCM)
    assert parse_wav(written_by_wave(PCM, channels=2)) == (22050, 2, 2, PCM)


def test_invalid_header_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        wav_header(0)
    with pytest.raises(ValueError, match="out of range"):
        wav_header(22050, data_bytes=-1)


# ----- reading what other writers produce ----------------------------------------------------------


@pytest.mark.parametrize("placeholder", [0, 0x7FFFF000, UNKNOWN_SIZE])
def test_placeholder_data_sizes_mean_until_the_end(placeholder: int) -> None:
    data = riff(chunk(b"fmt ", fmt_body()), size=placeholder) + b"data" + struct.pack("<I", placeholder) + PCM
    assert parse_wav(data) == (24000, 1, 2, PCM)


def test_other_chunks_before_and_after_the_data_are_skipped() -> None:
    data = riff(chunk(b"LIST", b"INFOodd"), chunk(b"fmt ", fmt_body()), chunk(b"data", PCM), chunk(b"id3 ", b"tag"))
    assert parse_wav(data) == (24000, 1, 2, PCM)


def test_extensible_pcm_is_accepted() -> None:
    guid_pcm = struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    body = fmt_body(tag=0xFFFE) + struct.pack("<HHI", 22, 16, 4) + guid_pcm
    assert parse_wav(riff(chunk(b"fmt ", body), chunk(b"data", PCM)))[3] == PCM


def test_a_stream_fed_a_byte_at_a_time_gives_the_same_audio() -> None:
    data = wav_header(22050) + PCM
    reader = WavReader()
    pcm = b"".join(reader.feed(data[i : i + 1]) for i in range(len(data)))
    reader.finish()
    assert pcm == PCM
    assert (reader.sample_rate, reader.channels, reader.sample_width) == (22050, 1, 2)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"<html><body>upstream error</body></html>", "not a WAV"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "inside the WAV header"),
        (riff(chunk(b"fmt ", fmt_body(tag=3, bits=32)), chunk(b"data", PCM)), "not integer PCM"),
        (riff(chunk(b"data", PCM)), "before the fmt chunk"),
        (riff(chunk(b"fmt ", fmt_body())) + b"data" + struct.pack("<I", 100) + PCM, "truncated"),
        (wav_header(22050) + PCM + b"\x01", "inside a sample"),
        (riff(chunk(b"fmt ", fmt_body()[:10])), "too short"),
    ],
)
def test_broken_wavs_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(WavError, match=reason):
        parse_wav(data)


# ----- arithmetic and formats ----------------------------------------------------------------------


def test_pcm_duration() -> None:
    assert pcm_duration_s(bytes(44100), 22050) == pytest.approx(1.0)
    assert pcm_duration_s(48000, 24000) == pytest.approx(1.0)
    assert pcm_duration_s(bytes(48000), 24000, channels=2) == pytest.approx(0.5)


def test_audio_formats_and_their_content_types() -> None:
    assert AudioFormat("wav").content_type == "audio/wav"
    assert AudioFormat("pcm").content_type == "application/octet-stream"
    with pytest.raises(ValueError, match="mp3"):
        AudioFormat("mp3")
