"""The audio of the recognize endpoints: connected-digit strings built from the Free Spoken Digit Dataset.

The strings follow the recognisers' connected-digits test (training/data/speech.py ``eval_strings``
with ``EVAL_MIX``): 2-10 recordings of FSDD's test takes (file index 0-4, ``{digit}_{speaker}_{index}.wav``,
8 kHz mono 16-bit) joined with 50-400 ms silences, 0-300 ms of silence at either end, white noise 30 dB
below the speech, seeded. The WAVs are read here with the standard ``wave`` module: the serving install
has no torch, and training.data.speech imports it. Without the recordings (no data directory, or no
``fsdd/recordings`` in it) the strings are made of synthetic tones instead (digit d: a 0.15-0.4 s tone
at 300 + 300 d Hz with a harmonic), and the report says ``synthetic``.
"""

from __future__ import annotations

import logging
import os
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DATA_ENV = "SEQSERVE_DATA_DIR"
FSDD_DIR = "fsdd/recordings"
FSDD_RATE = 8000
TEST_TAKES = range(0, 5)  # FSDD's standard test split: take index 0-4
SPEAKERS = 6  # synthetic "speakers" (FSDD has six)
DIGITS = (2, 10)  # digits per string
GAP_MS = (50.0, 400.0)  # silence between two digits
EDGE_MS = (0.0, 300.0)  # silence before the first and after the last digit
SNR_DB = 30.0  # white noise below the speech's RMS

FSDD = "fsdd"
SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class Utterance:
    """One connected-digit string: LINEAR16 bytes (signed 16-bit little-endian, mono) at ``rate``."""

    pcm: bytes
    rate: int
    digits: tuple[int, ...]

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2

    @property
    def seconds(self) -> float:
        return self.samples / self.rate


def fsdd_folder(data_dir: str = "") -> Path | None:
    """``DATA/fsdd/recordings`` of ``data_dir`` (else $SEQSERVE_DATA_DIR) when it exists, else None."""
    root = data_dir or os.environ.get(DATA_ENV, "")
    if not root:
        return None
    folder = Path(root) / FSDD_DIR
    return folder if folder.is_dir() else None


def read_test_takes(folder: Path) -> list[tuple[int, np.ndarray]]:
    """(digit, float32 samples in [-1, 1) at 8 kHz) of every test take in ``folder``, sorted by file name.
    Files that are not 8 kHz mono 16-bit PCM are skipped with a warning."""
    out = []
    for path in sorted(folder.glob("*.wav")):
        parts = path.stem.split("_")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit() or int(parts[2]) not in TEST_TAKES:
            continue
        try:
            with wave.open(str(path), "rb") as w:
                if w.getframerate() != FSDD_RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
                    log.warning("%s: not 8 kHz mono 16-bit PCM; skipped", path)
                    continue
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        except (OSError, wave.Error, EOFError) as err:
            log.warning("%s: cannot read it (%s); skipped", path, err)
            continue
        out.append((int(parts[0]), pcm.astype(np.float32) / 32768.0))
    return out


def synthetic_takes(rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """FSDD-shaped takes of tones instead of words (as training's ``synthetic_recordings``): six
    "speakers" x ten digits x five takes, digit d a 0.15-0.4 s tone at 300 + 300 d Hz (shifted per
    speaker) with a harmonic and a random envelope, 8 kHz."""
    out = []
    for s in range(SPEAKERS):
        shift = 1.0 + 0.02 * (s - 2.5)
        for digit in range(10):
            for _ in TEST_TAKES:
                n = int(rng.uniform(0.15, 0.4) * FSDD_RATE)
                t = np.arange(n) / FSDD_RATE
                f = (300.0 + 300.0 * digit) * shift * rng.uniform(0.98, 1.02)
                env = np.sin(np.pi * np.arange(n) / n) ** rng.uniform(0.5, 2.0)
                tone = np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t + rng.uniform(0, np.pi))
                out.append((digit, (0.3 * env * tone).astype(np.float32)))
    return out


def connected_digits(takes: Sequence[tuple[int, np.ndarray]], rng: np.random.Generator,
                     digits: Sequence[int] = DIGITS) -> tuple[np.ndarray, list[int]]:
    """One string at 8 kHz: ``digits`` takes (a count, or a low-high range; default 2-10), 50-400 ms
    gaps, 0-300 ms edges, white noise 30 dB below the speech."""
    n = int(rng.integers(digits[0], digits[-1] + 1))
    picks = [takes[i] for i in rng.integers(0, len(takes), n)]
    ms = FSDD_RATE / 1000.0
    pieces = [np.zeros(int(rng.uniform(*EDGE_MS) * ms), np.float32)]
    for k, (_, audio) in enumerate(picks):
        pieces.append(audio)
        if k < n - 1:
            pieces.append(np.zeros(int(rng.uniform(*GAP_MS) * ms), np.float32))
    pieces.append(np.zeros(int(rng.uniform(*EDGE_MS) * ms), np.float32))
    audio = np.concatenate(pieces)
    speech_rms = float(np.sqrt(np.mean(np.concatenate(pieces[1:-1]).astype(np.float64) ** 2))) or 1e-4
    audio = audio + rng.normal(0.0, speech_rms * 10 ** (-SNR_DB / 20), len(audio)).astype(np.float32)
    return np.clip(audio, -1.0, 1.0).astype(np.float32), [d for d, _ in picks]


def linear16(audio: np.ndarray, rate: int) -> bytes:
    """8 kHz float samples as LINEAR16 bytes at ``rate`` (linear interpolation when it is not 8 kHz)."""
    if rate != FSDD_RATE:
        n = max(1, int(round(len(audio) * rate / FSDD_RATE)))
        audio = np.interp(np.arange(n) * (FSDD_RATE / rate), np.arange(len(audio)), audio).astype(np.float32)
    return (np.clip(audio, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()


def speech_workload(count: int, rate: int, rng: np.random.Generator, data_dir: str = "",
                    digits: Sequence[int] = ()) -> tuple[list[Utterance], str]:
    """``count`` connected-digit strings of ``digits`` digits (a count or a range; () = 2-10) at
    ``rate`` Hz, and where their audio came from: ``FSDD``
    (test takes read from ``data_dir`` or $SEQSERVE_DATA_DIR) or ``SYNTHETIC`` (logged as a warning)."""
    folder = fsdd_folder(data_dir)
    takes = read_test_takes(folder) if folder is not None else []
    source = FSDD
    if not takes:
        where = f"{folder} has no readable test takes" if folder is not None else (
            f"no {FSDD_DIR} under {data_dir or os.environ.get(DATA_ENV) or f'--data-dir or ${DATA_ENV} (neither is set)'}")
        log.warning("speech workload: %s; using synthetic tone strings instead of spoken digits", where)
        takes, source = synthetic_takes(rng), SYNTHETIC
    out = []
    for _ in range(count):
        audio, said = connected_digits(takes, rng, digits or DIGITS)
        out.append(Utterance(linear16(audio, rate), rate, tuple(said)))
    return out, source
