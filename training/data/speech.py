"""Spoken digits: the Free Spoken Digit Dataset, its splits, connected-digit strings, augmentation and batches.

FSDD (CC BY-SA 4.0, "Free Spoken Digit Dataset (FSDD), Zohar Jackson and contributors"): 3,000 WAVs
``{digit}_{speaker}_{index}.wav``, 8 kHz mono, six speakers x ten digits x 50 takes.
Splits by take index: test 0-4 (the dataset's standard test set), val 5-9 (held out of the standard
train part for early stopping), train 10-49. ``holdout`` moves one whole speaker into test (and out
of train and val): the unseen-speaker folds.
Connected digits: 2-10 recordings joined with 50-400 ms gaps over light noise, seeded; training
builds new ones every batch from its own split, evaluation builds a fixed set from test.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.request
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from training.data.files import DataError, check_split, default_data_dir

FSDD_DIR = "fsdd/recordings"
FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_URL = f"https://codeload.github.com/Jakobovski/free-spoken-digit-dataset/tar.gz/{FSDD_COMMIT}"
# sha256 of `LC_ALL=C ls | xargs sha256sum` in recordings/ (shared/data/fsdd/README.md)
FSDD_TREE_SHA256 = "1801eae019c063377d98f831d3f93574f259475df7332bb0e3d1b080fb5e6959"
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
FSDD_RATE = 8000
LABELS = ["", *(str(d) for d in range(10))]  # CTC outputs: blank, then the digits "0".."9" at 1..10
SPLIT_TAKES = {"test": range(0, 5), "val": range(5, 10), "train": range(10, 50)}


@dataclass(frozen=True)
class Recording:
    digit: int
    speaker: str
    take: int
    audio: np.ndarray  # float32 (N,) in [-1, 1), 8 kHz


def tree_sha256(folder: Path) -> str:
    """The README's integrity check of a recordings folder: sha256 of its ``sha256sum`` listing, C-sorted."""
    lines = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name.encode()):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _download(dest: Path) -> None:
    """Fetch FSDD's recordings at the pinned commit into ``dest`` (verified before it is moved in place)."""
    tmp = dest.with_name(dest.name + ".part")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(FSDD_URL, timeout=60) as resp:
            blob = resp.read()
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if member.isfile() and len(parts) == 3 and parts[1] == "recordings" and parts[2].endswith(".wav"):
                    (tmp / parts[2]).write_bytes(tar.extractfile(member).read())
        got = tree_sha256(tmp)
        if got != FSDD_TREE_SHA256:
            raise DataError(f"download of {FSDD_URL} has recordings hash {got}, expected {FSDD_TREE_SHA256}")
        tmp.rename(dest)
    except (OSError, tarfile.TarError) as err:
        raise DataError(f"could not download FSDD from {FSDD_URL}: {err}") from None
    finally:
        if tmp.exists():
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()


_CACHE: dict[str, list[Recording]] = {}


def load_fsdd(data_dir: str | os.PathLike | None = None, *, download: bool = True) -> list[Recording]:
    """Every FSDD recording, verified against the README's hash (downloaded when missing and allowed)."""
    folder = default_data_dir(data_dir) / FSDD_DIR
    key = str(folder.resolve())
    if key in _CACHE:
        return _CACHE[key]
    if not folder.is_dir():
        if not download:
            raise DataError(f"{folder} does not exist (canonical copy: {FSDD_URL})")
        folder.parent.mkdir(parents=True, exist_ok=True)
        _download(folder)
    got = tree_sha256(folder)
    if got != FSDD_TREE_SHA256:
        raise DataError(f"{folder} has recordings hash {got}, expected {FSDD_TREE_SHA256} (see shared/data/fsdd/README.md)")
    out = []
    for path in sorted(folder.glob("*.wav")):
        digit, speaker, take = path.stem.split("_")
        with wave.open(str(path), "rb") as w:
            if w.getframerate() != FSDD_RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise DataError(f"{path}: expected 8 kHz mono 16-bit PCM")
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        out.append(Recording(int(digit), speaker, int(take), pcm.astype(np.float32) / 32768.0))
    _CACHE[key] = out
    return out


def fsdd_split(recordings: Sequence[Recording], split: str, holdout: str = "") -> list[Recording]:
    """Recordings of ``split`` (by take index); with ``holdout``, that speaker's every take is test and nothing else."""
    check_split(split)
    if holdout and holdout not in FSDD_SPEAKERS:
        raise ValueError(f"holdout speaker {holdout!r} is not one of {', '.join(FSDD_SPEAKERS)}")
    if holdout:
        if split == "test":
            return [r for r in recordings if r.speaker == holdout]
        recordings = [r for r in recordings if r.speaker != holdout]
    return [r for r in recordings if r.take in SPLIT_TAKES[split]]


def synthetic_recordings(seed: int = 0, takes: int = 50) -> list[Recording]:
    """FSDD-shaped recordings of tones instead of words: digit d is a 0.15-0.4 s tone at 300 + 300 d Hz
    with a harmonic and a random envelope, six "speakers" with their own pitch shift. For tests and
    smoke runs: a tiny model learns it in seconds."""
    rng = np.random.default_rng(seed)
    out = []
    for s, speaker in enumerate(FSDD_SPEAKERS):
        shift = 1.0 + 0.02 * (s - 2.5)
        for digit in range(10):
            for take in range(takes):
                n = int(rng.uniform(0.15, 0.4) * FSDD_RATE)
                t = np.arange(n) / FSDD_RATE
                f = (300.0 + 300.0 * digit) * shift * rng.uniform(0.98, 1.02)
                env = np.sin(np.pi * np.arange(n) / n) ** rng.uniform(0.5, 2.0)
                tone = np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t + rng.uniform(0, np.pi))
                out.append(Recording(digit, speaker, take, (0.3 * env * tone).astype(np.float32)))
    return out


# ---- audio construction --------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """How utterances are built: string lengths, gaps, silence, noise and (training) augmentation."""

    min_digits: int = 2
    max_digits: int = 10
    single_share: float = 0.0  # share of utterances that are one recording
    gap_ms: tuple[float, float] = (50.0, 400.0)
    edge_ms: tuple[float, float] = (0.0, 300.0)  # silence before the first and after the last digit
    snr_db: tuple[float, float] = (30.0, 30.0)  # white noise relative to the speech's RMS
    noise_share: float = 1.0  # share of utterances with noise
    speed: tuple[float, float] = (1.0, 1.0)  # per-recording speed factor (resampled), 1 = none
    gain_db: tuple[float, float] = (0.0, 0.0)  # per-utterance gain
    digit_gain_db: float = 0.0  # per-recording gain spread (+-)
    tail_ms: int = 0  # pure silence after the end (and after the noise): a model's SpeechSpec.tail_ms
    channel_db: float = 0.0  # each recording through a random microphone/line response (channel()); 0 = none


# Training strings stay shorter than the test's (2-7 digits: a recurrent model carries over to longer
# ones, and each step costs less); longer silences at the edges, noisier and louder or quieter.
TRAIN_MIX = Mix(max_digits=7, single_share=0.3, edge_ms=(0.0, 600.0), snr_db=(12.0, 45.0), noise_share=0.8,
                speed=(0.88, 1.12), gain_db=(-15.0, 8.0), digit_gain_db=3.0)
EVAL_MIX = Mix()  # the connected-digits test: 2-10 digits, 50-400 ms gaps, 30 dB white noise


def _speed(audio: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return audio
    n = max(2, int(round(len(audio) / factor)))
    return np.interp(np.linspace(0, len(audio) - 1, n), np.arange(len(audio)), audio).astype(np.float32)


def channel(audio: np.ndarray, rng: np.random.Generator, db: float, rate: int = FSDD_RATE) -> np.ndarray:
    """``audio`` through a random smooth frequency response, as another microphone, room or line would
    colour it: a spectral tilt of up to +-``db`` across the band (pivot 1 kHz), three cosine ripples of up
    to +-``db``/4, a high-pass (half the time, 60-400 Hz, 12 dB per octave) and a low-pass (a third of the
    time, 2.4-3.8 kHz, 24 dB per octave), applied in the frequency domain; the RMS level is kept."""
    n = len(audio)
    if n < 2:
        return audio
    f = np.fft.rfftfreq(n, 1.0 / rate)
    nyq = rate / 2.0
    gain_db = rng.uniform(-db, db) * (f - 1000.0) / nyq
    for k in (1, 2, 3):
        gain_db += rng.uniform(-db / 4, db / 4) * np.cos(np.pi * k * f / nyq)
    if rng.random() < 0.5:
        fc = rng.uniform(60.0, 400.0)
        gain_db -= 10 * np.log10(1.0 + (fc / np.maximum(f, 1.0)) ** 4)
    if rng.random() < 1 / 3:
        fc = rng.uniform(0.3, 0.475) * rate
        gain_db -= 10 * np.log10(1.0 + (f / fc) ** 8)
    out = np.fft.irfft(np.fft.rfft(audio.astype(np.float64)) * 10 ** (gain_db / 20), n)
    before, after = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))), float(np.sqrt(np.mean(out ** 2)))
    return (out * (before / after if after > 0 else 1.0)).astype(np.float32)


def make_utterance(pool: Sequence[Recording], rng: np.random.Generator, mix: Mix, extra: Sequence[Recording] = (),
                   extra_share: float = 0.0) -> tuple[np.ndarray, list[int]]:
    """One utterance from ``pool``: (audio float32 (N,), digits). With ``extra`` (synthetic voices), each
    digit comes from it with probability ``extra_share``."""
    single = rng.random() < mix.single_share
    n = 1 if single else int(rng.integers(mix.min_digits, mix.max_digits + 1))
    picks = [pool[i] for i in rng.integers(0, len(pool), n)]
    if len(extra) and extra_share > 0:  # drawn only then: without them the draws stay as they were
        other = rng.integers(0, len(extra), n)
        picks = [extra[j] if u < extra_share else p for p, j, u in zip(picks, other, rng.random(n))]
    rate = FSDD_RATE / 1000.0
    pieces = [np.zeros(int(rng.uniform(*mix.edge_ms) * rate), np.float32)]
    for k, rec in enumerate(picks):
        audio = _speed(rec.audio, float(rng.uniform(*mix.speed)))
        if mix.digit_gain_db:
            audio = audio * np.float32(10 ** (rng.uniform(-mix.digit_gain_db, mix.digit_gain_db) / 20))
        if mix.channel_db:  # drawn only then: without it the draws stay as they were
            audio = channel(audio, rng, mix.channel_db)
        pieces.append(audio)
        if k < n - 1:
            pieces.append(np.zeros(int(rng.uniform(*mix.gap_ms) * rate), np.float32))
    pieces.append(np.zeros(int(rng.uniform(*mix.edge_ms) * rate), np.float32))
    audio = np.concatenate(pieces)
    speech_rms = float(np.sqrt(np.mean(np.concatenate(pieces[1:-1]).astype(np.float64) ** 2))) or 1e-4
    gain = 10 ** (rng.uniform(*mix.gain_db) / 20)
    audio = audio * np.float32(gain)
    if rng.random() < mix.noise_share:
        sigma = speech_rms * gain * 10 ** (-rng.uniform(*mix.snr_db) / 20)
        audio = audio + rng.normal(0.0, sigma, len(audio)).astype(np.float32)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    if mix.tail_ms:
        audio = np.concatenate([audio, np.zeros(int(mix.tail_ms * rate), np.float32)])
    return audio, [r.digit for r in picks]


def eval_strings(pool: Sequence[Recording], count: int, seed: int, mix: Mix = EVAL_MIX) -> list[tuple[np.ndarray, list[int]]]:
    """A fixed, seeded set of connected-digit utterances from ``pool``."""
    rng = np.random.default_rng(seed)
    return [make_utterance(pool, rng, mix) for _ in range(count)]


def digit_error_rate(hyps: Sequence[Sequence[int]], refs: Sequence[Sequence[int]]) -> tuple[float, int, int]:
    """(edit distance / reference digits, total edits, reference digits) over every pair."""
    edits = total = 0
    for h, r in zip(hyps, refs):
        d = list(range(len(r) + 1))
        for i, hi in enumerate(h, 1):
            prev, d[0] = d[0], i
            for j, rj in enumerate(r, 1):
                prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (hi != rj))
        edits += d[len(r)]
        total += len(r)
    return (edits / total if total else 0.0), edits, total


# ---- batches -------------------------------------------------------------------------------------


def collate_audio(items: Sequence[tuple[np.ndarray, list[int]]], features, offset: int = 1) -> dict[str, Tensor]:
    """(audio, digits) items -> features (B, F, M), feat_len (B,), labels (B, L) (digit + ``offset``, 0-padded),
    label_len (B,). ``offset`` 0: the items carry label ids already."""
    lengths = [len(a) for a, _ in items]
    hop = features.spec.hop
    width = max(max(lengths), hop)
    audio = np.zeros((len(items), width), np.float32)
    for i, (a, _) in enumerate(items):
        audio[i, : len(a)] = a
    feats = features(audio)
    L = max(len(d) for _, d in items)
    labels = torch.zeros(len(items), L, dtype=torch.int64)
    for i, (_, d) in enumerate(items):
        labels[i, : len(d)] = torch.tensor(d, dtype=torch.int64) + offset
    return {
        "features": torch.from_numpy(feats),
        "feat_len": torch.tensor([n // hop for n in lengths], dtype=torch.int64),
        "labels": labels,
        "label_len": torch.tensor([len(d) for _, d in items], dtype=torch.int64),
    }


class SpeechBatches:
    """Training batches built fresh every step from ``pool`` (seeded by seed, epoch, step, rank)."""

    stateful = False

    def __init__(self, pool: Sequence[Recording], features, batch_size: int, steps: int, mix: Mix = TRAIN_MIX,
                 seed: int = 0, rank: int = 0, teacher=None, extra: Sequence[Recording] = (),
                 extra_share: float = 0.0) -> None:
        self.pool, self.features, self.batch_size, self.steps, self.mix = list(pool), features, batch_size, steps, mix
        self.extra, self.extra_share = list(extra), extra_share  # synthetic voices (training.data.tts)
        self.seed, self.rank = seed, rank
        self.teacher = teacher  # batch -> (B, T, V) target log-probs (distillation), or None

    def __len__(self) -> int:
        return self.steps

    def batches(self, epoch: int = 0) -> Iterator[dict[str, Tensor]]:
        for step in range(self.steps):
            rng = np.random.default_rng([self.seed, epoch, step, self.rank])
            batch = collate_audio([make_utterance(self.pool, rng, self.mix, self.extra, self.extra_share)
                                   for _ in range(self.batch_size)], self.features)
            if self.teacher is not None:
                batch["teacher"] = self.teacher(batch)
            yield batch


class Teacher:
    """A trained recognizer's per-frame log-probabilities of a batch, ``delay`` frames later (the first
    frames: certain blank): the targets a streaming student is distilled towards."""

    def __init__(self, model, delay: int) -> None:
        self.model, self.delay = model.eval(), delay

    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        with torch.no_grad():
            lp, _ = self.model(batch["features"], batch["feat_len"])  # (B, T, V)
        if self.delay:
            blank = torch.full_like(lp[:, : self.delay], -1e4)
            blank[..., 0] = 0.0
            lp = torch.cat([blank, lp[:, : lp.shape[1] - self.delay]], dim=1)[:, : lp.shape[1]]
        return lp


class FixedSpeechBatches:
    """A fixed list of utterances, batched in order (validation); features computed once."""

    stateful = False

    def __init__(self, items: Sequence[tuple[np.ndarray, list[int]]], features, batch_size: int, offset: int = 1) -> None:
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]))  # similar lengths share a batch
        self._batches = [collate_audio([items[j] for j in order[i : i + batch_size]], features, offset)
                         for i in range(0, len(order), batch_size)]

    def __len__(self) -> int:
        return len(self._batches)

    def batches(self, epoch: int = 0) -> Iterator[dict[str, Tensor]]:
        return iter(self._batches)


def feature_stats(pool: Sequence[Recording], features, count: int = 400, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-band mean and std of the features of ``count`` training utterances (no augmentation but noise)."""
    items = eval_strings(pool, count, seed, Mix(single_share=0.3))
    feats = [features(a[None, :])[0] for a, _ in items]
    stacked = np.concatenate(feats, axis=0).astype(np.float64)
    return [float(x) for x in stacked.mean(0)], [float(x) for x in np.maximum(stacked.std(0), 1e-3)]
