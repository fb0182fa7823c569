"""Speech audio from request bytes (LINEAR16 or a WAV file) to mono float32 samples, and resampling."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import soxr

from service.core.errors import InvalidArgument

LINEAR16, WAV = "LINEAR16", "WAV"
ENCODINGS = (LINEAR16, WAV)
MIN_RATE, MAX_RATE = 8000, 48000  # Hz a request may carry; anything in between is resampled
QUALITY = "HQ"  # soxr's default: 20-bit precision, passband to 91% of Nyquist; VHQ buys nothing for speech

# Below 1.0 by one float32 step: clipped float input and resampler overshoot stay in [-1, 1) like int16/32768.
_BELOW_ONE = np.nextafter(np.float32(1.0), np.float32(0.0))

# A data chunk size this large cannot be real (requests are far below 2 GiB): it is the placeholder a
# streaming writer (ffmpeg, arecord, sox to a pipe) leaves when it cannot seek back to patch the header.
_UNKNOWN_SIZE = 0x7F000000

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_FORMAT_NAMES = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MPEG Layer 3",
}
_ACCEPTED = "accepted are 8/16/24/32-bit PCM and 32/64-bit float"


@dataclass(frozen=True)
class Audio:
    """Decoded speech: ``samples`` is float32 (N,), mono, in [-1, 1), at ``rate`` Hz."""

    samples: np.ndarray
    rate: int

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return len(self.samples) / self.rate


def decode(data: bytes, encoding: str, sample_rate_hertz: int, *, max_seconds: float | None = None) -> Audio:
    """Bytes as the request carries them -> mono float32 samples at their own rate (not resampled).

    ``encoding`` is LINEAR16 (raw little-endian int16 mono; ``sample_rate_hertz`` required) or WAV (a whole
    RIFF/WAVE file; ``sample_rate_hertz`` 0 takes the file's rate, otherwise it must equal it). WAV may hold
    8/16/24/32-bit PCM or 32/64-bit IEEE float, mono only. ``max_seconds`` caps the duration in seconds.
    Raises InvalidArgument for anything else, whatever the bytes are.
    """
    if encoding not in ENCODINGS:
        raise InvalidArgument(
            f"config.encoding {encoding!r} is not supported; use {' or '.join(ENCODINGS)}", field="config.encoding"
        )
    if encoding == WAV and sample_rate_hertz == 0:
        pass  # the file's own rate
    elif not MIN_RATE <= sample_rate_hertz <= MAX_RATE:
        need = "" if encoding == WAV else "; LINEAR16 needs the audio's rate"
        raise InvalidArgument(
            f"config.sample_rate_hertz {sample_rate_hertz} is outside {MIN_RATE}..{MAX_RATE}{need}",
            field="config.sample_rate_hertz",
        )
    if not data:
        raise InvalidArgument("audio is empty", field="audio")

    if encoding == LINEAR16:
        samples = pcm16(data)
        _check_seconds(len(samples) / sample_rate_hertz, max_seconds)
        return Audio(samples, sample_rate_hertz)

    fmt, body = _parse_wav(data)
    if not MIN_RATE <= fmt.rate <= MAX_RATE:
        raise InvalidArgument(
            f"audio: the WAV file's rate {fmt.rate} Hz is outside {MIN_RATE}..{MAX_RATE}", field="audio"
        )
    if sample_rate_hertz and sample_rate_hertz != fmt.rate:
        raise InvalidArgument(
            f"config.sample_rate_hertz {sample_rate_hertz} differs from the WAV file's {fmt.rate} Hz; "
            f"send 0 or {fmt.rate}",
            field="config.sample_rate_hertz",
        )
    if not body:
        raise InvalidArgument("audio is empty: the WAV file's data chunk has no samples", field="audio")
    _check_seconds(len(body) // fmt.width / fmt.rate, max_seconds)
    return Audio(_samples(body, fmt), fmt.rate)


def from_samples(samples: np.ndarray, sample_rate_hertz: int, *, max_seconds: float | None = None) -> Audio:
    """Float samples (N,) in [-1, 1] at ``sample_rate_hertz`` (as the Open Inference Protocol's FP32
    audio tensors carry them) -> Audio; NaN/inf, values beyond +-1, emptiness, a bad rate and the
    duration limit are InvalidArgument."""
    if not MIN_RATE <= sample_rate_hertz <= MAX_RATE:
        raise InvalidArgument(
            f"config.sample_rate_hertz {sample_rate_hertz} is outside {MIN_RATE}..{MAX_RATE}; samples need their rate",
            field="config.sample_rate_hertz",
        )
    samples = np.asarray(samples)
    if samples.ndim != 1 or not len(samples):
        raise InvalidArgument(f"audio has shape {list(samples.shape)}; it must be a non-empty row of samples",
                              field="audio")
    bad = ~np.isfinite(samples) | (np.abs(samples) > 1.0)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidArgument(f"audio sample {i} is {samples[i]}; samples must be finite, within -1..1", field="audio")
    _check_seconds(len(samples) / sample_rate_hertz, max_seconds)
    return Audio(samples.astype(np.float32), sample_rate_hertz)


def pcm16(data: bytes, field: str = "audio") -> np.ndarray:
    """LINEAR16 bytes (little-endian int16) -> float32 (N,) in [-1, 1) as x / 32768; empty gives (0,).

    Raises InvalidArgument naming ``field`` for an odd byte count (also used for streaming chunks).
    """
    if len(data) % 2:
        raise InvalidArgument(
            f"{field} has {len(data):,} bytes; LINEAR16 needs an even number (2 bytes per sample)", field=field
        )
    # 1/32768 is a power of two, so the product is exact in float32.
    return np.frombuffer(data, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """float32 (N,) at ``rate`` Hz -> float32 (about N * target / rate,) at ``target`` Hz with soxr 'HQ'.

    Returns the samples unchanged (as float32) when the rates are equal. Output is clipped to [-1, 1):
    the filter's ringing can overshoot full-scale input slightly.
    """
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if rate == target:
        return samples
    return _clip(soxr.resample(samples, rate, target, quality=QUALITY))


class StreamResampler:
    """Chunk-by-chunk resampling of one stream from ``rate`` to ``target`` Hz (soxr.ResampleStream).

    Concatenating every ``push`` and the final ``flush`` gives the same samples as ``resample`` on the
    whole signal (bit-identical with soxr 0.5.0.post1; same length). soxr holds back a filter's worth of
    input, so early pushes return fewer samples than they imply. Identity passthrough when rates are equal.
    """

    def __init__(self, rate: int, target: int) -> None:
        self.rate, self.target = rate, target
        self._stream = None if rate == target else soxr.ResampleStream(rate, target, 1, "float32", QUALITY)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """float32 (n,) at ``rate`` -> the float32 samples at ``target`` that are ready so far."""
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if self._stream is None:
            return chunk
        return _clip(self._stream.resample_chunk(chunk))

    def flush(self) -> np.ndarray:
        """The samples still held back, at the end of the stream; the resampler is then ready for a new one."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = _clip(self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        self._stream.clear()
        return tail


def _clip(samples: np.ndarray) -> np.ndarray:
    return np.clip(samples, np.float32(-1.0), _BELOW_ONE, out=samples)


def _check_seconds(seconds: float, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        # Rounded up to 0.1 s so a file just over the limit never reads as equal to it.
        shown = math.ceil(round(seconds * 10, 6)) / 10
        raise InvalidArgument(
            f"audio is {shown:g} s; the limit is {max_seconds:g} s (max_audio_seconds)", field="audio"
        )


@dataclass(frozen=True)
class _Format:
    tag: int  # _PCM or _FLOAT (an extensible file's subformat)
    rate: int  # Hz
    width: int  # bytes per sample


def _parse_wav(data: bytes) -> tuple[_Format, memoryview]:
    """The sample format and the data chunk's bytes (whole samples only) of a mono WAV file.

    The RIFF size is ignored (often wrong); a data size of 0 or a placeholder >= 2 GiB - 16 MiB means
    "the rest of the file", as streaming writers leave it; any other size must be there in full.
    """
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise InvalidArgument("audio: not a WAV file (no RIFF/WAVE header)", field="audio")
    view = memoryview(data)
    fmt: _Format | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = bytes(data[pos : pos + 4])
        (size,) = struct.unpack_from("<I", data, pos + 4)
        start = pos + 8
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(view[start : start + size], size)
        elif chunk_id == b"data":
            if fmt is None:
                raise InvalidArgument("audio: the WAV file's data chunk comes before its fmt chunk", field="audio")
            available = len(data) - start
            if size == 0 or size >= _UNKNOWN_SIZE:
                size = available
            elif size > available:
                raise InvalidArgument(
                    f"audio: the WAV file's data chunk is truncated: its header says {size:,} bytes, "
                    f"the file holds {available:,}",
                    field="audio",
                )
            size -= size % fmt.width  # a partial last sample is dropped, as readers commonly do
            return fmt, view[start : start + size]
        pos = start + size + (size & 1)  # chunks are padded to an even length
    raise InvalidArgument("audio: the WAV file has no data chunk", field="audio")


def _parse_fmt(body: memoryview, size: int) -> _Format:
    if size < 16 or len(body) < 16:
        raise InvalidArgument(
            f"audio: the WAV file's fmt chunk has {min(size, len(body))} bytes; it needs at least 16", field="audio"
        )
    tag, channels, rate, _byte_rate, _block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise InvalidArgument(
                f"audio: the WAV file's extensible fmt chunk has {len(body)} bytes; it needs 40", field="audio"
            )
        (tag,) = struct.unpack_from("<H", body, 24)  # the subformat GUID starts with the format tag
    if channels != 1:
        raise InvalidArgument(f"audio: the WAV file has {channels} channels; only mono is accepted", field="audio")
    # The container width follows from the bits, as in the stdlib's wave: block_align is often wrong.
    width = (bits + 7) // 8
    if tag == _PCM and 1 <= width <= 4:
        return _Format(_PCM, rate, width)
    if tag == _FLOAT and bits in (32, 64):
        return _Format(_FLOAT, rate, width)
    if tag == _PCM:
        kind = f"{bits}-bit PCM"
    elif tag == _FLOAT:
        kind = f"{bits}-bit float"
    else:
        kind = _FORMAT_NAMES.get(tag, f"format tag 0x{tag:04X}")
    raise InvalidArgument(f"audio: WAV sample format is {kind}; {_ACCEPTED}", field="audio")


def _samples(body: memoryview, fmt: _Format) -> np.ndarray:
    """Little-endian samples -> float32 in [-1, 1), full scale mapping to -1 as int16 / 32768 does."""
    if fmt.tag == _FLOAT:
        x = np.frombuffer(body, dtype="<f4" if fmt.width == 4 else "<f8")
        # Garbage floats (NaN, inf, out of range) would poison the model's state; make them silence/clip.
        x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)  # before the cast can overflow
        return _clip(x.astype(np.float32))
    if fmt.width == 1:  # 8-bit WAV is unsigned, centred on 128
        return (np.frombuffer(body, dtype=np.uint8).astype(np.float32) - 128) * np.float32(1 / 128)
    if fmt.width == 2:
        return np.frombuffer(body, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)
    if fmt.width == 3:
        b = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        x = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(x >= 1 << 23, x - (1 << 24), x)  # sign-extend
        return x.astype(np.float32) * np.float32(1 / (1 << 23))
    # 32-bit: float32 holds 24 bits, so drop the low 8 rather than let rounding reach 1.0.
    x = np.frombuffer(body, dtype="<i4") >> 8
    return x.astype(np.float32) * np.float32(1 / (1 << 23))
