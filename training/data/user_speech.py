"""A user's own recordings (``data.dataset: files`` for recognize): a folder of WAV files and a CSV
(or TSV) naming each file and its transcript.

Checked before training: a listed file that is missing or not a mono WAV, an empty transcript, a file
listed twice; each names the transcript file's line. Audio of any rate is resampled (soxr) to the
model's. The model is character-level: its labels are the characters of the training transcripts
(words separated by " "), and a val or test transcript may only use those. Split by a seeded shuffle
of the files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.files import DataError
from training.data.user import read_table, seeded_part

FILE_COLUMNS = ("file", "path", "audio", "filename", "wav")
TEXT_COLUMNS = ("transcript", "text", "sentence", "transcription", "label")


@dataclass(frozen=True)
class Utterance:
    audio: np.ndarray  # float32 (N,) at the model's rate
    text: str
    where: str  # the transcript file's line, for messages


def _column(table, given: str, known: Sequence[str], what: str, key: str) -> str:
    cols = [str(c) for c in table.frame.columns]
    if given:
        table.column(given)
        return given
    found = next((c for c in cols if c.lower() in known), None)
    if found is None:
        raise DataError(f"{table.path}: no {what} column (looked for {', '.join(known)}); columns are "
                        f"{', '.join(cols)}; name it with --set data.{key}=COLUMN")
    return found


def read_utterances(paths: Sequence[str], sample_rate: int, file_column: str = "", text_column: str = "",
                    lowercase: bool = False) -> list[Utterance]:
    """Every (audio, transcript) pair of ``paths``: [FOLDER, TABLE] (files relative to FOLDER) or [TABLE]
    (files relative to the table's folder)."""
    if len(paths) == 2 and Path(paths[0]).is_dir():
        folder, table_path = Path(paths[0]), Path(paths[1])
    elif len(paths) == 1:
        table_path = Path(paths[0])
        folder = table_path.parent
    else:
        raise DataError(f"data.paths {list(paths)}: give the recordings' folder and a CSV of file and transcript "
                        "(--data FOLDER --data transcripts.csv), or the CSV alone (files relative to it)")
    if not table_path.is_file():
        raise DataError(f"{table_path}: no such file (the CSV of file and transcript)")
    table = read_table(table_path)
    file_col = _column(table, file_column, FILE_COLUMNS, "audio file", "file_column")
    text_col = _column(table, text_column, TEXT_COLUMNS, "transcript", "text_column")
    out: list[Utterance] = []
    seen: dict[str, str] = {}
    for i, (name, text) in enumerate(zip(table.column(file_col), table.column(text_col))):
        where = table.where(i)
        name, text = str(name).strip(), " ".join(str(text).split())
        if not name:
            raise DataError(f"{where}, column {file_col!r}: the file name is empty")
        if name in seen:
            raise DataError(f"{where}, column {file_col!r}: {name!r} is listed twice (first at {seen[name]})")
        seen[name] = where
        if not text:
            raise DataError(f"{where}, column {text_col!r}: the transcript of {name!r} is empty")
        path = folder / name
        if not path.is_file():
            raise DataError(f"{where}, column {file_col!r}: {name!r} is not a file in {folder}")
        out.append(Utterance(read_wav(path, sample_rate, where), text.lower() if lowercase else text, where))
    if not out:
        raise DataError(f"{table_path}: the table has a header but no rows")
    return out


def read_wav(path: Path, sample_rate: int, where: str = "") -> np.ndarray:
    """A mono PCM WAV file as float32 samples at ``sample_rate`` (resampled with soxr)."""
    import wave

    import soxr

    at = f"{where}: {path}" if where else str(path)
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.readframes(w.getnframes())
    except (wave.Error, EOFError) as err:
        raise DataError(f"{at}: not a PCM WAV file ({err}); convert it, e.g. ffmpeg -i IN -ac 1 -c:a pcm_s16le OUT.wav") from None
    if channels != 1:
        raise DataError(f"{at}: the WAV file has {channels} channels; only mono is accepted (ffmpeg -i IN -ac 1 OUT.wav)")
    if width == 3:  # 24-bit: widen to 32
        raw = np.frombuffer(frames, np.uint8).reshape(-1, 3)
        frames = np.concatenate([np.zeros((len(raw), 1), np.uint8), raw], axis=1).tobytes()
        width = 4
    kinds = {1: (np.uint8, 128.0, 128.0), 2: (np.int16, 0.0, 32768.0), 4: (np.int32, 0.0, 2147483648.0)}
    dtype, zero, scale = kinds[width]
    samples = ((np.frombuffer(frames, dtype).astype(np.float64) - zero) / scale).astype(np.float32)
    if not len(samples):
        raise DataError(f"{at}: the WAV file holds no samples")
    if rate != sample_rate:
        samples = np.clip(soxr.resample(samples, rate, sample_rate, quality="HQ"), -1.0, 1.0).astype(np.float32)
    return samples


def split_utterances(items: Sequence[Utterance], split: str, seed: int, val_share: float,
                     test_share: float) -> list[Utterance]:
    """``split`` of a seeded shuffle of the recordings."""
    return [items[i] for i in sorted(seeded_part(range(len(items)), split, seed, val_share, test_share, "recordings"))]


def char_labels(train: Sequence[Utterance]) -> list[str]:
    """The CTC labels of a character model: blank, then every character of the training transcripts."""
    return ["", *sorted({c for u in train for c in u.text})]


def check_labels(items: Sequence[Utterance], labels: Sequence[str], split: str) -> None:
    known = set(labels)
    for u in items:
        unknown = sorted({c for c in u.text if c not in known})
        if unknown:
            raise DataError(f"{u.where}: the {split} transcript {u.text!r} has {', '.join(map(repr, unknown))}, "
                            "which no training transcript has (the model could never write it)")


def encode(text: str, labels: Sequence[str]) -> list[int]:
    index = {c: i for i, c in enumerate(labels)}
    return [index[c] for c in text]


def error_rates(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Character and word error rates (edit distance / reference length) and the share exactly right."""
    def edits(a: Sequence, b: Sequence) -> int:
        d = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            prev, d[0] = d[0], i
            for j, y in enumerate(b, 1):
                prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
        return d[len(b)]

    chars = sum(len(r) for r in refs)
    words = sum(len(r.split()) for r in refs)
    return {
        "cer": sum(edits(h, r) for h, r in zip(hyps, refs)) / max(1, chars),
        "wer": sum(edits(h.split(), r.split()) for h, r in zip(hyps, refs)) / max(1, words),
        "sentence_accuracy": float(np.mean([h == r for h, r in zip(hyps, refs)])) if refs else 0.0,
    }


# ---------------------------------------------------------------- batches


def augment(audio: np.ndarray, rng: np.random.Generator, sample_rate: int, tail: int = 0,
            channel_db: float = 0.0) -> np.ndarray:
    """One training rendering of a recording: speed 0.9-1.1 (resampled), with ``channel_db`` a random
    frequency response (training.data.speech.channel), silence 0-300 ms at each end, gain -10..+6 dB,
    white noise at 15-45 dB SNR on 80% of them, then ``tail`` samples of silence."""
    factor = float(rng.uniform(0.9, 1.1))
    n = max(2, int(round(len(audio) / factor)))
    audio = np.interp(np.linspace(0, len(audio) - 1, n), np.arange(len(audio)), audio).astype(np.float32)
    if channel_db:  # drawn only then: without it the draws stay as they were
        from training.data.speech import channel

        audio = channel(audio, rng, channel_db, sample_rate)
    edges = [np.zeros(int(rng.uniform(0, 0.3) * sample_rate), np.float32) for _ in range(2)]
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) or 1e-4
    gain = 10 ** (rng.uniform(-10.0, 6.0) / 20)
    out = np.concatenate([edges[0], audio, edges[1]]) * np.float32(gain)
    if rng.random() < 0.8:
        out = out + rng.normal(0.0, rms * gain * 10 ** (-rng.uniform(15.0, 45.0) / 20), len(out)).astype(np.float32)
    out = np.clip(out, -1.0, 1.0).astype(np.float32)
    return np.concatenate([out, np.zeros(tail, np.float32)]) if tail else out


class UtteranceBatches:
    """Training batches of a user's recordings, drawn and augmented afresh every step (seeded by seed,
    epoch, step, rank)."""

    stateful = False

    def __init__(self, items: Sequence[Utterance], labels: Sequence[str], features, batch_size: int, steps: int,
                 seed: int = 0, rank: int = 0, tail: int = 0, channel_db: float = 0.0) -> None:
        self.items, self.features, self.batch_size, self.steps = list(items), features, batch_size, steps
        self.channel_db = channel_db
        self.ids = [encode(u.text, labels) for u in self.items]
        self.seed, self.rank, self.tail = seed, rank, tail

    def __len__(self) -> int:
        return self.steps

    def batches(self, epoch: int = 0):
        from training.data.speech import collate_audio

        rate = self.features.spec.sample_rate
        for step in range(self.steps):
            rng = np.random.default_rng([self.seed, epoch, step, self.rank])
            picks = rng.integers(0, len(self.items), self.batch_size)
            yield collate_audio([(augment(self.items[i].audio, rng, rate, self.tail, self.channel_db), self.ids[i]) for i in picks],
                                self.features, offset=0)


def utterance_stats(items: Sequence[Utterance], features, count: int = 400, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-band mean and std of the features of up to ``count`` training recordings."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(items), min(count, len(items)), replace=False)
    stacked = np.concatenate([features(items[i].audio[None, :])[0] for i in picks]).astype(np.float64)
    return stacked.mean(0).tolist(), np.maximum(stacked.std(0), 1e-3).tolist()
