"""Speech audio decoding (LINEAR16, WAV) and resampling to the model's rate."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.audio import LINEAR16, WAV, Audio, StreamResampler, decode, pcm16, resample
from service.core.errors import InvalidArgument

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RNG = np.random.default_rng(7)
INT16 = np.concatenate([[-32768, -1, 0, 1, 32767], RNG.integers(-32768, 32768, 995)]).astype(np.int16)


def wav_bytes(samples: np.ndarray, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    """A WAV file written by the stdlib's wave module (PCM; ``samples`` already in the width's dtype)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def riff(
    fmt: bytes, data: bytes, *, data_size: int | None = None, riff_size: int | None = None, before_data: bytes = b""
) -> bytes:
    """A WAV file assembled by hand, so headers can lie."""
    body = b"WAVE" + chunk(b"fmt ", fmt) + before_data
    body += b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body + b"\0" * (len(body) % 2)


def fmt(tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16) -> bytes:
    width = (bits + 7) // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * width * channels, width * channels, bits)


def extensible(subformat: int, rate: int = 16000, bits: int = 16) -> bytes:
    guid = struct.pack("<H", subformat) + bytes.fromhex("000000001000800000aa00389b71")
    return fmt(0xFFFE, 1, rate, bits) + struct.pack("<HHI", 22, bits, 4) + guid


def expected() -> np.ndarray:
    return INT16.astype(np.float32) / 32768


# --- decoding -------------------------------------------------------------------------------------------


def test_linear16_round_trip_is_x_over_32768() -> None:
    audio = decode(INT16.astype("<i2").tobytes(), LINEAR16, 16000)
    assert audio.rate == 16000 and audio.samples.dtype == np.float32
    np.testing.assert_array_equal(audio.samples, expected())
    assert audio.samples.min() == -1.0 and audio.samples.max() < 1.0
    assert audio.seconds == pytest.approx(1000 / 16000)


@pytest.mark.parametrize("config_rate", [0, 16000])
def test_wav_round_trip(config_rate: int) -> None:
    audio = decode(wav_bytes(INT16, 16000), WAV, config_rate)
    assert audio.rate == 16000
    np.testing.assert_array_equal(audio.samples, expected())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            wav_bytes((INT16.astype(np.int32) << 8).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].copy(), width=3),
            id="pcm24",
        ),
        pytest.param(wav_bytes((INT16.astype(np.int32) << 16).astype("<i4"), width=4), id="pcm32"),
        pytest.param(riff(fmt(3, bits=32), expected().astype("<f4").tobytes()), id="float32"),
        pytest.param(riff(fmt(3, bits=64), expected().astype("<f8").tobytes()), id="float64"),
        pytest.param(riff(extensible(1), INT16.astype("<i2").tobytes()), id="extensible-pcm16"),
        pytest.param(riff(extensible(3, bits=32), expected().astype("<f4").tobytes()), id="extensible-float32"),
    ],
)
def test_wider_formats_decode_to_the_same_values(data: bytes) -> None:
    np.testing.assert_array_equal(decode(data, WAV, 0).samples, expected())


def test_pcm8_is_unsigned_around_128() -> None:
    u8 = np.array([0, 1, 127, 128, 129, 255], dtype=np.uint8)
    samples = decode(wav_bytes(u8, width=1), WAV, 0).samples
    np.testing.assert_array_equal(samples, (u8.astype(np.float32) - 128) / 128)


def test_pcm32_full_scale_stays_below_one() -> None:
    samples = decode(wav_bytes(np.array([2**31 - 1, -(2**31), 0], dtype="<i4"), width=4), WAV, 0).samples
    assert samples[0] < 1.0 and samples[0] > 0.9999 and samples[1] == -1.0 and samples[2] == 0.0


def test_float_wav_garbage_becomes_silence_or_clips() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 2.0, -3.0, 0.25, 1.0], dtype="<f4")
    samples = decode(riff(fmt(3, bits=32), x.tobytes()), WAV, 0).samples
    assert samples.dtype == np.float32 and np.isfinite(samples).all()
    assert samples[0] == 0.0 and samples[2] == -1.0 and samples[4] == -1.0 and samples[5] == 0.25
    assert all(0.9999 < samples[i] < 1.0 for i in (1, 3, 6))


@pytest.mark.parametrize(
    ("data_size", "riff_size"),
    [(0xFFFFFFFF, 0xFFFFFFFF), (0, 0), (0x7FFFFFFF, 36), (2000, 0xFFFFFFFF), (2000, 12)],
    ids=["ffffffff", "zero", "7fffffff", "riff-ffffffff", "riff-too-small"],
)
def test_streamed_or_wrong_sizes_are_accepted_when_the_data_is_there(data_size: int, riff_size: int) -> None:
    data = riff(fmt(), INT16.astype("<i2").tobytes(), data_size=data_size, riff_size=riff_size)
    np.testing.assert_array_equal(decode(data, WAV, 16000).samples, expected())


def test_rf64_with_placeholder_sizes() -> None:
    data = riff(fmt(), INT16.astype("<i2").tobytes(), data_size=0xFFFFFFFF, riff_size=0xFFFFFFFF)
    np.testing.assert_array_equal(decode(b"RF64" + data[4:], WAV, 0).samples, expected())


def test_a_partial_last_sample_is_dropped() -> None:
    streamed = riff(fmt(), INT16.astype("<i2").tobytes() + b"\x01", data_size=0xFFFFFFFF)
    np.testing.assert_array_equal(decode(streamed, WAV, 0).samples, expected())
    odd_size = riff(fmt(), INT16.astype("<i2").tobytes() + b"\x01\x02", data_size=2001)
    np.testing.assert_array_equal(decode(odd_size, WAV, 0).samples, expected())


def test_other_chunks_are_skipped_with_their_padding() -> None:
    extra = chunk(b"LIST", b"INFOabc") + chunk(b"fact", struct.pack("<I", 1000))  # odd LIST: one pad byte
    data = riff(fmt(), INT16.astype("<i2").tobytes(), before_data=extra)
    np.testing.assert_array_equal(decode(data, WAV, 0).samples, expected())


def test_duration_at_the_limit_is_accepted() -> None:
    audio = decode(np.zeros(8000 * 60, "<i2").tobytes(), LINEAR16, 8000, max_seconds=60)
    assert audio.seconds == 60.0


def test_pcm16_of_an_empty_chunk_is_empty() -> None:
    assert pcm16(b"").shape == (0,) and pcm16(b"").dtype == np.float32


# --- errors ---------------------------------------------------------------------------------------------


def pcm(n: int) -> bytes:
    return np.zeros(n, "<i2").tobytes()


RATE, AUDIO, ENC = "config.sample_rate_hertz", "audio", "config.encoding"


def err(name: str, data: bytes, encoding: str, rate: int, field: str, *fragments: str, limit: float | None = None):
    """One error case: decode(data, encoding, rate, max_seconds=limit) raises on ``field`` with ``fragments``."""
    return pytest.param(data, encoding, rate, limit, field, fragments, id=name)


ERRORS = [
    err("encoding", pcm(10), "MP3", 8000, ENC, "config.encoding 'MP3'", "LINEAR16 or WAV"),
    err("rate-low", pcm(10), LINEAR16, 4000, RATE, "config.sample_rate_hertz 4000 is outside 8000..48000"),
    err("rate-missing", pcm(10), LINEAR16, 0, RATE, "sample_rate_hertz 0 is outside 8000..48000", "LINEAR16 needs"),
    err("rate-high-wav", wav_bytes(INT16), WAV, 96000, RATE, "sample_rate_hertz 96000 is outside 8000..48000"),
    err("odd", bytes(1001), LINEAR16, 8000, AUDIO, "audio has 1,001 bytes; LINEAR16 needs an even number (2 bytes"),
    err("empty-linear16", b"", LINEAR16, 8000, AUDIO, "audio is empty"),
    err("empty-wav", b"", WAV, 0, AUDIO, "audio is empty"),
    err("no-samples", wav_bytes(INT16[:0]), WAV, 0, AUDIO, "audio is empty", "no samples"),
    err("stereo", wav_bytes(INT16, channels=2), WAV, 0, AUDIO, "the WAV file has 2 channels; only mono is accepted"),
    err("zero-channels", riff(fmt(channels=0), pcm(4)), WAV, 0, AUDIO, "has 0 channels"),
    err("not-wav", b"ID3\x04" + bytes(100), WAV, 0, AUDIO, "audio: not a WAV file (no RIFF/WAVE header)"),
    err("riff-not-wave", b"RIFF\x04\0\0\0AVI LIST", WAV, 0, AUDIO, "no RIFF/WAVE header"),
    err(
        "truncated",
        riff(fmt(), pcm(50), data_size=32000),
        WAV,
        0,
        AUDIO,
        "audio: the WAV file's data chunk is truncated: its header says 32,000 bytes, the file holds 100",
    ),
    err("no-data", b"RIFF\0\0\0\0WAVE" + chunk(b"fmt ", fmt()), WAV, 0, AUDIO, "no data chunk"),
    err(
        "data-first",
        b"RIFF\0\0\0\0WAVE" + chunk(b"data", pcm(4)) + chunk(b"fmt ", fmt()),
        WAV,
        0,
        AUDIO,
        "data chunk comes before its fmt chunk",
    ),
    err("fmt-short", riff(fmt()[:14], pcm(4)), WAV, 0, AUDIO, "fmt chunk has 14 bytes; it needs at least 16"),
    err("extensible-short", riff(fmt(0xFFFE), pcm(4)), WAV, 0, AUDIO, "extensible fmt chunk has 16 bytes"),
    err(
        "float16",
        riff(fmt(3, bits=16), pcm(4)),
        WAV,
        0,
        AUDIO,
        "WAV sample format is 16-bit float; accepted are 8/16/24/32-bit PCM and 32/64-bit float",
    ),
    err("pcm40", riff(fmt(1, bits=40), bytes(10)), WAV, 0, AUDIO, "WAV sample format is 40-bit PCM"),
    err("alaw", riff(fmt(6, bits=8), bytes(4)), WAV, 0, AUDIO, "WAV sample format is A-law"),
    err("mulaw", riff(fmt(7, bits=8), bytes(4)), WAV, 0, AUDIO, "WAV sample format is mu-law"),
    err("mp3", riff(fmt(0x55, bits=0), bytes(4)), WAV, 0, AUDIO, "WAV sample format is MPEG Layer 3"),
    err("unknown-tag", riff(fmt(0x1234), bytes(4)), WAV, 0, AUDIO, "WAV sample format is format tag 0x1234"),
    err("extensible-alaw", riff(extensible(6, bits=8), bytes(4)), WAV, 0, AUDIO, "WAV sample format is A-law"),
    err(
        "rate-differs",
        wav_bytes(INT16, rate=8000),
        WAV,
        16000,
        RATE,
        "config.sample_rate_hertz 16000 differs from the WAV file's 8000 Hz",
    ),
    err("wav-rate-low", wav_bytes(INT16, rate=4000), WAV, 0, AUDIO, "WAV file's rate 4000 Hz is outside 8000..48000"),
    err(
        "too-long",
        pcm(8000 * 61 + 1600),
        LINEAR16,
        8000,
        AUDIO,
        "audio is 61.2 s; the limit is 60 s (max_audio_seconds)",
        limit=60,
    ),
    err("just-over", pcm(8000 * 60 + 1), LINEAR16, 8000, AUDIO, "audio is 60.1 s; the limit is 60 s", limit=60),
    err(
        "too-long-wav",
        wav_bytes(np.zeros(48000, np.int16)),
        WAV,
        0,
        AUDIO,
        "audio is 3 s; the limit is 2.5 s",
        limit=2.5,
    ),
]


@pytest.mark.parametrize(("data", "encoding", "rate", "max_seconds", "field", "fragments"), ERRORS)
def test_errors_name_the_field_value_and_limit(
    data: bytes, encoding: str, rate: int, max_seconds: float | None, field: str, fragments: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode(data, encoding, rate, max_seconds=max_seconds)
    assert info.value.field == field
    assert info.value.code == "INVALID_ARGUMENT"
    for fragment in fragments:
        assert fragment in info.value.message


def test_pcm16_names_the_callers_field() -> None:
    with pytest.raises(InvalidArgument, match=r"audio_content has 3 bytes") as info:
        pcm16(b"abc", field="audio_content")
    assert info.value.field == "audio_content"


# --- fuzzing: any bytes give an Audio or an InvalidArgument ---------------------------------------------


def decode_or_invalid(data: bytes, encoding: str, rate: int) -> None:
    try:
        audio = decode(data, encoding, rate, max_seconds=600)
    except InvalidArgument as e:
        assert e.field in ("audio", "config.sample_rate_hertz") and e.message
        return
    assert isinstance(audio, Audio) and 8000 <= audio.rate <= 48000 and len(audio.samples) > 0
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert np.isfinite(audio.samples).all() and audio.samples.min() >= -1.0 and audio.samples.max() < 1.0


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_wav(data: bytes) -> None:
    decode_or_invalid(data, WAV, 0)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_linear16(data: bytes) -> None:
    decode_or_invalid(data, LINEAR16, 8000)


@FUZZ
@given(
    data=st.binary(max_size=200),
    tag=st.sampled_from([1, 3, 6, 0xFFFE, 0]),
    bits=st.sampled_from([0, 8, 12, 16, 24, 32, 64, 65535]),
)
def test_random_bodies_behind_a_wav_header(data: bytes, tag: int, bits: int) -> None:
    # Random bytes rarely get past "RIFF....WAVE"; start deeper so the chunk walk and sample paths are hit.
    decode_or_invalid(b"RIFF\xff\xff\xff\xffWAVE" + chunk(b"fmt ", fmt(tag, rate=8000, bits=bits)) + data, WAV, 0)


VALID = riff(extensible(1, rate=8000), INT16[:40].astype("<i2").tobytes(), before_data=chunk(b"LIST", b"INFOx"))


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_corrupted_wav(edits: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for pos, value in edits:
        data[pos] = value
    decode_or_invalid(bytes(data), WAV, 0)


def test_every_truncation_of_a_wav() -> None:
    messages = {}
    for n in range(len(VALID)):
        with pytest.raises(InvalidArgument) as info:
            decode(VALID[:n], WAV, 0)
        messages[n] = info.value.message
    assert decode(VALID, WAV, 0).samples.shape == (40,)
    # Each cut lands in one part of the file and is reported as that part.
    assert "not a WAV file" in messages[11]
    assert "no data chunk" in messages[12]
    assert "fmt chunk has 10 bytes" in messages[30]
    assert "extensible fmt chunk has 30 bytes" in messages[50]
    assert "no data chunk" in messages[70]  # inside the LIST chunk
    assert "truncated: its header says 80 bytes, the file holds 0" in messages[82]
    assert "truncated: its header says 80 bytes, the file holds 79" in messages[len(VALID) - 1]


# --- resampling -----------------------------------------------------------------------------------------


def sine(rate: int, seconds: float = 1.0, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_resampling_to_8k_keeps_frequency_and_level(rate: int) -> None:
    x = sine(rate)
    y = resample(x, rate, 8000)
    assert y.dtype == np.float32 and abs(len(y) - 8000) <= 1
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * 8000 / len(y)
    assert abs(peak_hz - 440) <= 8000 / len(y)  # within one FFT bin
    core = slice(400, -400)  # skip the filter's start-up and tail
    assert rms(y[core]) == pytest.approx(rms(x), rel=0.02)


def test_resampling_removes_what_8k_cannot_hold() -> None:
    # A 6 kHz tone is above 8 kHz's Nyquist: it must be filtered out, not folded back to 2 kHz.
    y = resample(sine(16000, hz=6000), 16000, 8000)
    assert rms(y[400:-400]) < 0.01


def test_equal_rates_are_identity() -> None:
    x = sine(8000)
    np.testing.assert_array_equal(resample(x, 8000, 8000), x)
    s = StreamResampler(8000, 8000)
    np.testing.assert_array_equal(np.concatenate([s.push(x[:3]), s.push(x[3:]), s.flush()]), x)


def test_resampled_full_scale_stays_in_range() -> None:
    square = np.where(sine(16000, hz=300) >= 0, np.float32(0.99997), np.float32(-1.0))  # rings on every edge
    y = resample(square, 16000, 8000)
    assert y.min() >= -1.0 and y.max() < 1.0


CHUNKS = [1, 333, 1600, 7, 4000, 59, 2, 0, 911]


def stream(resampler: StreamResampler, x: np.ndarray) -> np.ndarray:
    parts, i, k = [], 0, 0
    while i < len(x):
        size = CHUNKS[k % len(CHUNKS)]
        parts.append(resampler.push(x[i : i + size]))
        i, k = i + size, k + 1
    parts.append(resampler.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_stream_in_uneven_chunks_equals_whole(rate: int) -> None:
    x = (RNG.standard_normal(int(rate * 1.3)) * 0.2).astype(np.float32)
    whole = resample(x, rate, 8000)
    resampler = StreamResampler(rate, 8000)
    streamed = stream(resampler, x)
    # Measured with soxr 0.5.0.post1: the same length and bit-identical samples.
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, atol=1e-4, rtol=0)
    # flush() readies it for a new stream that starts from a clean state.
    np.testing.assert_allclose(stream(resampler, x), whole, atol=1e-4, rtol=0)


def test_stream_holds_back_early_then_flush_gives_the_rest() -> None:
    resampler = StreamResampler(16000, 8000)
    first = resampler.push(sine(16000, seconds=0.01))  # 160 in, 80 implied
    tail = resampler.flush()
    assert len(first) < 80 and len(first) + len(tail) == 80
