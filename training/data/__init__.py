"""Datasets: verified files, the standard splits, synthetic sets, and batchers for every task."""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import os
import random
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

DATA_ENV = "SEQSERVE_DATA_DIR"
PAD_ID = 0  # the vocab modules' [PAD]; batches are right-padded with it


class DataError(RuntimeError):
    """A dataset file that is missing, cannot be fetched, or does not match its sha256."""


@dataclass(frozen=True)
class DataFile:
    sha256: str
    url: str  # canonical copy (a pinned commit); gz=True when the URL serves a gzip of the file
    gz: bool = False


# The table in shared/data/README.md: path -> sha256 of the file as stored, and where it came from.
_GH = "https://raw.githubusercontent.com"
_M30K = f"{_GH}/multi30k/dataset/a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw"
_ETT = f"{_GH}/zhouhaoyi/ETDataset/1d16c8f4f943005d613b5bc962e9eeb06058cf07/ETT-small"
FILES: dict[str, DataFile] = {
    "ETDataset/ETTh1.csv": DataFile(
        "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066", f"{_ETT}/ETTh1.csv"
    ),
    "ETDataset/ETTm1.csv": DataFile(
        "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e",
        f"{_GH}/darfire/flax-lmu/0b0041ad61acaca39ad0a1fa6722212fb7cb4c80/data/ETTm1.csv.gz",
        gz=True,
    ),
    "tinyshakespeare/input.txt": DataFile(
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        f"{_GH}/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
    ),
    "multi30k/train.en.gz": DataFile("d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f", f"{_M30K}/train.en.gz"),
    "multi30k/train.de.gz": DataFile("726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6", f"{_M30K}/train.de.gz"),
    "multi30k/val.en.gz": DataFile("14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28", f"{_M30K}/val.en.gz"),
    "multi30k/val.de.gz": DataFile("f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a", f"{_M30K}/val.de.gz"),
    "multi30k/test_2016_flickr.en.gz": DataFile(
        "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9", f"{_M30K}/test_2016_flickr.en.gz"
    ),
    "multi30k/test_2016_flickr.de.gz": DataFile(
        "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8", f"{_M30K}/test_2016_flickr.de.gz"
    ),
    "tatoeba-cmn-eng/cmn.txt": DataFile(
        "3a8ac6cb8cdaab6e235d3075ec3680084044d975882d6139c903bf7893097ff6",
        f"{_GH}/JimEverest/transformer-ready-go/7745df43beea3501a578e17090277ea2d755cb82/data/cmn.txt",
    ),
}
SPLITS = ("train", "val", "test")
_MULTI30K_SPLIT = {"train": "train", "val": "val", "test": "test_2016_flickr"}
ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
_ETT_ROWS_PER_DAY = {"ETTh1": 24, "ETTm1": 96}  # hourly / 15-minute rows
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


# ---------------------------------------------------------------- files and hashes


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else $SEQSERVE_DATA_DIR; raises DataError when neither is set."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_ENV)
    if not env:
        raise DataError(f"no data directory: pass --data-dir or set {DATA_ENV}")
    return Path(env)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, sha256: str, *, gz: bool = False, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` (gunzipping when ``gz``) and check its sha256; raises DataError."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(gzip.GzipFile(fileobj=resp) if gz else resp, out)
        got = file_sha256(tmp)
        if got != sha256:
            raise DataError(f"download of {url} has sha256 {got}, expected {sha256}; not saved")
        tmp.replace(dest)
        return dest
    except (OSError, EOFError) as err:  # URLError, timeouts and bad gzip streams are OSErrors/EOFErrors
        raise DataError(f"could not download {url} to {dest}: {err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def data_file(rel: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Path of the verified dataset file ``rel`` (a key of FILES) under the data directory.

    A missing file is downloaded from its canonical URL when ``download`` (no internet: DataError saying
    so); a file whose sha256 differs from the README's table raises DataError naming both hashes.
    """
    if rel not in FILES:
        raise DataError(f"unknown dataset file {rel!r}; known: {', '.join(sorted(FILES))}")
    spec = FILES[rel]
    path = default_data_dir(data_dir) / rel
    if not path.is_file():
        if not download:
            raise DataError(f"{path} does not exist (canonical copy: {spec.url})")
        fetch(spec.url, path, spec.sha256, gz=spec.gz)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    got = _verified.get(key) or file_sha256(path)
    if got != spec.sha256:
        raise DataError(f"{path} has sha256 {got}, expected {spec.sha256} (see shared/data/README.md)")
    _verified[key] = got
    return path


def data_hashes(rels: Sequence[str], data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """{file: sha256} of the files ``rels``, each verified on disk first (DataError when missing or altered)."""
    for rel in rels:
        data_file(rel, data_dir, download=False)
    return {rel: FILES[rel].sha256 for rel in rels}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    return split


# ---------------------------------------------------------------- translation corpora


def multi30k_files(split: str, langs: Sequence[str] = ("de", "en")) -> list[str]:
    _check_split(split)
    return [f"multi30k/{_MULTI30K_SPLIT[split]}.{lang}.gz" for lang in langs]


def load_multi30k(split: str, src: str = "de", tgt: str = "en", data_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """Multi30k task 1 (train 29,000 / val 1,014 / test2016 1,000) as (source, target) sentence pairs."""
    for lang in (src, tgt):
        if lang not in ("de", "en"):
            raise ValueError(f"Multi30k language {lang!r} is not one of de, en")
    sides = []
    for rel in multi30k_files(split, (src, tgt)):
        with gzip.open(data_file(rel, data_dir), "rt", encoding="utf-8") as f:
            sides.append(f.read().split("\n"))
    a, b = (s[:-1] if s and s[-1] == "" else s for s in sides)
    if len(a) != len(b):
        raise DataError(f"Multi30k {split}: {len(a)} {src} lines but {len(b)} {tgt} lines")
    return list(zip(a, b))


TATOEBA_FILE = "tatoeba-cmn-eng/cmn.txt"


def load_tatoeba(
    split: str,
    src: str = "zh",
    tgt: str = "en",
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
) -> list[tuple[str, str]]:
    """Tatoeba cmn-eng pairs, split by a seeded shuffle of the distinct English sentences.

    All translations of one English sentence land in the same split, so none straddles two splits.
    """
    _check_split(split)
    if sorted((src, tgt)) != ["en", "zh"]:
        raise ValueError(f"Tatoeba languages must be en and zh, got {src!r}, {tgt!r}")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions {fractions!r} must be three non-negative numbers summing to 1")
    pairs: list[tuple[str, str]] = []  # (english, chinese)
    with open(data_file(TATOEBA_FILE, data_dir), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 2:
                raise DataError(f"{TATOEBA_FILE} line {n}: expected tab-separated columns, got {line!r}")
            pairs.append((cols[0], cols[1]))
    english = sorted({en for en, _ in pairs})
    random.Random(seed).shuffle(english)
    n_train = int(round(fractions[0] * len(english)))
    n_val = int(round(fractions[1] * len(english)))
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(english))}
    lo, hi = bounds[split]
    chosen = set(english[lo:hi])
    out = [(en, zh) for en, zh in pairs if en in chosen]
    return out if src == "en" else [(zh, en) for en, zh in out]


# ---------------------------------------------------------------- forecasting


@dataclass
class Scaler:
    """StandardScaler (population std) fitted on the training rows only."""

    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, x: np.ndarray) -> "Scaler":  # x (N, C)
        std = x.std(axis=0)
        return cls(mean=x.mean(axis=0).tolist(), std=np.where(std > 0, std, 1.0).tolist())

    def transform(self, x: np.ndarray) -> np.ndarray:  # (..., C) -> (..., C) float32
        return ((x - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return (x * np.asarray(self.std) + np.asarray(self.mean)).astype(np.float32)


@dataclass
class SeriesSplits:
    """Standardised series per split; val/test start ``lead`` rows early so windows cover the split."""

    train: list[np.ndarray]  # each (N, C) float32
    val: list[np.ndarray]
    test: list[np.ndarray]
    scaler: Scaler
    columns: list[str]
    lead: int = 0  # rows of history prepended to val/test
    files: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[np.ndarray]:
        return getattr(self, _check_split(name))


def ett_borders(name: str) -> tuple[int, int, int]:
    """Row counts of the 12/4/4 months of 30 days: (train, val, test), e.g. ETTh1 (8640, 2880, 2880)."""
    if name not in _ETT_ROWS_PER_DAY:
        raise ValueError(f"ETT dataset {name!r} is not one of {', '.join(_ETT_ROWS_PER_DAY)}")
    month = 30 * _ETT_ROWS_PER_DAY[name]
    return 12 * month, 4 * month, 4 * month


def load_ett(name: str = "ETTh1", features: str = "S", seq_len: int = 96, data_dir: str | os.PathLike | None = None) -> SeriesSplits:
    """ETTh1/ETTm1 with the Informer split and a train-only StandardScaler.

    features "S": the OT column only (C=1); "M": all 7 channels. Val/test series start ``seq_len`` rows
    before the split, so the first target of the first window is the split's first row.
    """
    if features not in ("S", "M"):
        raise ValueError(f"features {features!r} is not one of S (OT only), M (all channels)")
    n_train, n_val, n_test = ett_borders(name)
    if not 1 <= seq_len <= n_train:
        raise ValueError(f"seq_len {seq_len} must be in [1, {n_train}]")
    rel = f"ETDataset/{name}.csv"
    with open(data_file(rel, data_dir), encoding="utf-8") as f:
        header = next(csv.reader(f))
        rows = np.loadtxt(f, delimiter=",", usecols=range(1, len(header)), dtype=np.float64)  # (N, 7)
    if tuple(header[1:]) != ETT_COLUMNS:
        raise DataError(f"{rel}: columns {header[1:]} are not {list(ETT_COLUMNS)}")
    columns = list(ETT_COLUMNS) if features == "M" else ["OT"]
    values = rows if features == "M" else rows[:, -1:]
    scaler = Scaler.fit(values[:n_train])
    z = scaler.transform(values)
    a, b, c = n_train, n_train + n_val, n_train + n_val + n_test
    return SeriesSplits(
        train=[z[:a]], val=[z[a - seq_len : b]], test=[z[b - seq_len : c]],
        scaler=scaler, columns=columns, lead=seq_len, files=[rel],
    )


def synthetic_series(
    num_series: int = 32, length: int = 400, channels: int = 1, seed: int = 0, noise: float = 0.1
) -> list[np.ndarray]:
    """Noisy sines with random period, phase, scale and offset: num_series arrays of (length, C) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)[:, None]  # (L, 1)
    out = []
    for _ in range(num_series):
        period = rng.uniform(12, 48, size=channels)
        phase = rng.uniform(0, 2 * np.pi, size=channels)
        scale = rng.uniform(0.5, 5.0, size=channels)
        offset = rng.uniform(-10, 10, size=channels)
        clean = np.sin(2 * np.pi * t / period + phase)  # (L, C)
        out.append((offset + scale * (clean + noise * rng.standard_normal((length, channels)))).astype(np.float32))
    return out


def synthetic_forecast(
    num_series: int = 48, length: int = 400, channels: int = 1, seed: int = 0, noise: float = 0.1
) -> SeriesSplits:
    """Synthetic series split 80/10/10 by series (whole series per split), standardised per series.

    The forecaster normalises each window itself; per-series standardisation here just keeps the
    figures on one scale. The scaler recorded is the identity.
    """
    series = synthetic_series(num_series, length, channels, seed, noise)
    z = [((s - s.mean(0)) / s.std(0)).astype(np.float32) for s in series]
    n_val = max(1, num_series // 10)
    n_train = num_series - 2 * n_val
    if n_train < 1:
        raise ValueError(f"num_series {num_series} is too small for a train/val/test split (need >= 3)")
    return SeriesSplits(
        train=z[:n_train], val=z[n_train : n_train + n_val], test=z[n_train + n_val :],
        scaler=Scaler([0.0] * channels, [1.0] * channels), columns=[f"x{i}" for i in range(channels)],
    )


class WindowDataset(Dataset):
    """Sliding windows over one or more series: item i -> window (T, C) and the next H rows (H, C)."""

    def __init__(self, series: Sequence[np.ndarray], seq_len: int, horizon: int, stride: int = 1) -> None:
        if seq_len < 1 or horizon < 1 or stride < 1:
            raise ValueError(f"seq_len {seq_len}, horizon {horizon}, stride {stride} must all be >= 1")
        self.series = [torch.as_tensor(np.ascontiguousarray(s), dtype=torch.float32) for s in series]
        self.seq_len, self.horizon, self.stride = seq_len, horizon, stride
        self.index: list[tuple[int, int]] = []  # (series, start)
        for k, s in enumerate(self.series):
            n = (len(s) - seq_len - horizon) // stride + 1  # Informer: len - seq_len - pred_len + 1
            self.index.extend((k, i * stride) for i in range(max(0, n)))
        if not self.index:
            raise ValueError(f"no window of seq_len {seq_len} + horizon {horizon} fits the series")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        k, s = self.index[i]
        x = self.series[k]
        return {"window": x[s : s + self.seq_len], "target": x[s + self.seq_len : s + self.seq_len + self.horizon]}


def collate_windows(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack windows: window (B, T, C) float32, target (B, H, C) float32."""
    return {k: torch.stack([it[k] for it in items]) for k in ("window", "target")}


class CropWindows:
    """collate_windows, then with probability ``prob`` keep only the most recent L steps of every
    window of the batch, L uniform in [min_len, T]: the model learns to forecast from any history
    the service accepts (min_history .. window), not only from full windows. Seeded per epoch."""

    def __init__(self, min_len: int, prob: float, seed: int = 0) -> None:
        self.min_len, self.prob, self.seed = min_len, prob, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self._gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def __call__(self, items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        batch = collate_windows(items)
        steps = batch["window"].shape[1]
        if self.prob > 0 and steps > self.min_len and torch.rand((), generator=self._gen) < self.prob:
            keep = int(torch.randint(self.min_len, steps + 1, (), generator=self._gen))
            batch["window"] = batch["window"][:, steps - keep :].contiguous()
        return batch


# ---------------------------------------------------------------- character text


SHAKESPEARE_FILE = "tinyshakespeare/input.txt"


def load_shakespeare(split: str, data_dir: str | os.PathLike | None = None) -> str:
    """tiny Shakespeare: first 90% of characters train, last 10% val (nanoGPT); test = val."""
    _check_split(split)
    text = data_file(SHAKESPEARE_FILE, data_dir).read_text(encoding="utf-8")
    n = int(len(text) * 0.9)
    return text[:n] if split == "train" else text[n:]


_LM_LINES = (
    "the cat sat on the mat. ",
    "a dog ran to the park. ",
    "the bird sang in the tree. ",
    "my cat and my dog are friends. ",
)


def synthetic_text(repeats: int = 60, seed: int = 0) -> str:
    """A small repetitive English text (lines shuffled with ``seed``) for LM smoke runs and presets."""
    rng = random.Random(seed)
    return "".join(rng.choice(_LM_LINES) for _ in range(repeats))


def split_text(text: str, split: str, fractions: tuple[float, float] = (0.9, 0.1)) -> str:
    """First ``fractions[0]`` of the characters for train, the rest for val and test."""
    n = int(len(text) * fractions[0])
    return text[:n] if _check_split(split) == "train" else text[n:]


# ---------------------------------------------------------------- synthetic translation

_TOY_LEXICON = {  # toy source word -> English word; the toy grammar also reverses word order
    "ka": "cat", "lo": "dog", "mi": "bird", "pa": "sees", "ru": "eats", "te": "the",
    "su": "small", "no": "big", "vi": "red", "ze": "fish", "bo": "runs", "da": "home",
}


def synthetic_pairs(n: int, seed: int = 0, min_len: int = 2, max_len: int = 6) -> list[tuple[str, str]]:
    """n (toy source, English) pairs: the target maps each word through a lexicon and reverses the order."""
    rng = random.Random(seed)
    words = sorted(_TOY_LEXICON)
    out = []
    for _ in range(n):
        src = [rng.choice(words) for _ in range(rng.randint(min_len, max_len))]
        tgt = [_TOY_LEXICON[w] for w in reversed(src)]
        out.append((" ".join(src), " ".join(tgt).capitalize() + "."))
    return out


@dataclass(frozen=True)
class CommaJoin:
    """How to splice two sentences into one with a comma, as token ids: the first source sentence's
    ``src_stop`` becomes ``src_comma``, the first target's ``tgt_stop`` becomes ``tgt_comma``, and the
    second target's first token is lowercased through ``lower`` (capitalised id -> lowercase id)."""

    src_stop: int
    src_comma: int
    tgt_stop: int
    tgt_comma: int
    lower: dict[int, int]

    @classmethod
    def from_tokenizers(cls, src_tok: Any, tgt_tok: Any, src_marks: tuple[str, str] = ("。", "，"),
                        tgt_marks: tuple[str, str] = (".", ",")) -> CommaJoin:
        def single(tok: Any, text: str) -> int:
            known = tok.token_to_id(text)  # a mark that follows a word ("." in "now.", no "▁")
            if known is not None:
                return known
            ids = tok.encode(text, add_special_tokens=False).ids
            if len(ids) != 1:
                raise ValueError(f"{text!r} is not one token of the tokenizer (got ids {ids}); comma joining needs it")
            return ids[0]

        vocab = tgt_tok.get_vocab()
        lower = {}
        for token, i in vocab.items():
            low = token.lower()
            if low != token and low in vocab and token.lstrip("\u2581") != "I":  # "I" stays capitalised
                lower[i] = vocab[low]
        return cls(single(src_tok, src_marks[0]), single(src_tok, src_marks[1]),
                   single(tgt_tok, tgt_marks[0]), single(tgt_tok, tgt_marks[1]), lower)

    def __call__(self, s1: list[int], t1: list[int], s2: list[int], t2: list[int]) -> tuple[list[int], list[int]] | None:
        """The spliced pair, or None when the first pair does not end in both full stops."""
        if not (s1 and t1 and t2 and s1[-1] == self.src_stop and t1[-1] == self.tgt_stop):
            return None
        return [*s1[:-1], self.src_comma, *s2], [*t1[:-1], self.tgt_comma, self.lower.get(t2[0], t2[0]), *t2[1:]]


def concat_pairs(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], share: float, max_len: int, seed: int = 0,
    comma: CommaJoin | None = None, comma_share: float = 0.0,
) -> list[tuple[list[int], list[int]]]:
    """Extra training pairs made of two random pairs joined end to end (source after source, target
    after target), ``round(share * len(pairs))`` of them, each side at most ``max_len`` tokens.

    Concatenation augmentation (Nguyen et al., 2021, "Data augmentation by concatenation for
    low-resource translation"): short-sentence corpora such as Tatoeba rarely show a second clause,
    and a model trained on them loses its attention after the first one ("我是中国人，我说中文。").
    With ``comma``, about ``comma_share`` of the joins splice the two sentences with a comma instead
    of a full stop ("我是学生，我说中文。" / "I'm a student, I speak Chinese."), the way Chinese runs
    clauses together. Seeded, so a run is reproducible.
    """
    rng = random.Random(seed)
    want, out = round(share * len(pairs)), []
    for _ in range(20 * want):
        if len(out) >= want:
            break
        (s1, t1), (s2, t2) = rng.choice(pairs), rng.choice(pairs)
        joined = comma(list(s1), list(t1), list(s2), list(t2)) if comma and rng.random() < comma_share else None
        src, tgt = joined or ([*s1, *s2], [*t1, *t2])
        if len(src) <= max_len and len(tgt) <= max_len:
            out.append((src, tgt))
    return out


class PairDataset(Dataset):
    """Token-id pairs: item -> (source ids, target ids without specials)."""

    def __init__(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> None:
        self.pairs = [(list(s), list(t)) for s, t in pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.pairs[i]


def make_collate_pairs(bos: int, eos: int, pad: int = PAD_ID):
    """Collate (src ids, tgt ids) into src (B, S), src_len (B,), tgt (B, T) = [bos .. eos pad ..]."""

    def collate(items: list[tuple[list[int], list[int]]]) -> dict[str, Tensor]:
        S = max(1, max(len(s) for s, _ in items))
        T = max(len(t) for _, t in items) + 2
        src = torch.full((len(items), S), pad, dtype=torch.int64)
        tgt = torch.full((len(items), T), pad, dtype=torch.int64)
        for b, (s, t) in enumerate(items):
            src[b, : len(s)] = torch.tensor(s, dtype=torch.int64)
            tgt[b, : len(t) + 2] = torch.tensor([bos, *t, eos], dtype=torch.int64)
        src_len = torch.tensor([max(1, len(s)) for s, _ in items], dtype=torch.int64)
        return {"src": src, "src_len": src_len, "tgt": tgt}

    return collate


# ---------------------------------------------------------------- TBPTT streams


def batchify(ids: Tensor, num_streams: int) -> Tensor:
    """Cut a 1-D id sequence (N,) into ``num_streams`` contiguous streams: (num_streams, N // num_streams)."""
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    n = ids.numel() // num_streams
    if n < 2:
        raise ValueError(f"{ids.numel()} tokens are too few for {num_streams} streams (need >= 2 each)")
    return ids[: n * num_streams].view(num_streams, n)


class StreamBatches:
    """TBPTT batches over B parallel streams: chunk k is tokens (B, L) and next-token targets (B, L).

    Consecutive chunks continue each stream, so a model carries its recurrent state from one to the
    next. With ``world_size`` > 1 the text is cut into batch_size * world_size streams and rank r takes
    its own batch_size of them; every rank sees the same number of chunks.
    """

    stateful = True  # the loop carries state between consecutive batches

    def __init__(self, ids: Tensor, batch_size: int, bptt_len: int, rank: int = 0, world_size: int = 1) -> None:
        if bptt_len < 1:
            raise ValueError(f"bptt_len must be >= 1, got {bptt_len}")
        data = batchify(torch.as_tensor(ids, dtype=torch.int64), batch_size * world_size)
        self.data = data[rank * batch_size : (rank + 1) * batch_size]  # (B, N)
        self.bptt_len = bptt_len
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil((self.data.shape[1] - 1) / self.bptt_len)

    def batches(self, epoch: int = 0) -> Iterator[dict[str, Tensor]]:
        n = self.data.shape[1]
        for i in range(0, n - 1, self.bptt_len):
            L = min(self.bptt_len, n - 1 - i)
            yield {"tokens": self.data[:, i : i + L], "targets": self.data[:, i + 1 : i + 1 + L]}


class LoaderBatches:
    """Shuffled (per epoch, seeded) mini-batches of a map-style dataset, sharded across ranks.

    Uses DistributedSampler even in one process, so the order depends only on (seed, epoch) and a
    resumed run can skip the batches it has already seen.
    """

    stateful = False

    def __init__(
        self, dataset: Dataset, batch_size: int, collate, *, shuffle: bool = True, seed: int = 0,
        rank: int = 0, world_size: int = 1, drop_last: bool = False,
    ) -> None:
        from torch.utils.data import DataLoader, DistributedSampler

        self.sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        # Own generator: creating an iterator must not draw from the global RNG (dropout, resume).
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, collate_fn=collate, generator=torch.Generator()
        )
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def batches(self, epoch: int = 0) -> Iterator[dict[str, Tensor]]:
        self.sampler.set_epoch(epoch)
        set_epoch = getattr(self.loader.collate_fn, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        return iter(self.loader)


class EvalBatches:
    """Every item of a dataset exactly once, in order; rank r takes items r, r + world, ... (no padding)."""

    stateful = False

    def __init__(self, dataset: Dataset, batch_size: int, collate, rank: int = 0, world_size: int = 1) -> None:
        self.dataset, self.collate, self.batch_size = dataset, collate, batch_size
        self.indices = list(range(rank, len(dataset), world_size))

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def batches(self, epoch: int = 0) -> Iterator[dict[str, Tensor]]:
        for i in range(0, len(self.indices), self.batch_size):
            yield self.collate([self.dataset[j] for j in self.indices[i : i + self.batch_size]])


# ---------------------------------------------------------------- per-task data from a config

TASK_DATASETS: dict[str, tuple[str, ...]] = {
    "translate": ("synthetic", "multi30k", "tatoeba"),
    "forecast": ("synthetic", "ETTh1", "ETTm1"),
    "generate": ("synthetic", "shakespeare"),
}
TOKENIZER_KINDS = ("word", "bpe", "char")


@dataclass
class DataConfig:
    """Which data a run trains on and how it is tokenised / windowed (fields apply per task)."""

    dataset: str = "synthetic"  # translate: synthetic|multi30k|tatoeba; forecast: synthetic|ETTh1|ETTm1; generate: synthetic|shakespeare
    seed: int = 0  # synthetic data and the Tatoeba split
    # translate
    src_lang: str = "de"  # multi30k: de|en; tatoeba: zh|en
    tgt_lang: str = "en"
    src_tokenizer: str = "word"  # word | bpe | char
    tgt_tokenizer: str = "word"
    vocab_size: int = 8000  # bpe: vocabulary size per side
    min_freq: int = 2  # word: keep words seen at least this often
    lowercase: bool = False  # word: lowercase before building the vocabulary
    simplify_chinese: bool = False  # word, zh side: traditional -> simplified characters (OpenCC table)
    max_len: int = 50  # drop training pairs with a side longer than this (tokens)
    concat_pairs: float = 0.0  # translate: add this share of extra training pairs, each two random pairs joined end to end
    concat_comma: float = 0.0  # translate: share of those joins spliced with a comma ("A，B。" / "A, b.") instead of a full stop
    num_examples: int = 2000  # synthetic translate: training pairs (val and test get a tenth each)
    # forecast (window and horizon come from the model config)
    features: str = "S"  # ETT: S = OT only, M = all 7 channels
    stride: int = 1  # step between training windows
    crop_prob: float = 0.5  # share of training batches cut to a random history in [min_history, window]
    num_series: int = 48  # synthetic forecast
    series_length: int = 400
    channels: int = 1  # synthetic forecast
    noise: float = 0.1
    # generate
    repeats: int = 300  # synthetic text: sentences

    def validate(self, task: str) -> "DataConfig":
        if task not in TASK_DATASETS:
            raise ValueError(f"task {task!r} is not one of {', '.join(TASK_DATASETS)}")
        if self.dataset not in TASK_DATASETS[task]:
            raise ValueError(f"data.dataset {self.dataset!r} is not one of {', '.join(TASK_DATASETS[task])} (task {task})")
        for key in ("src_tokenizer", "tgt_tokenizer"):
            if getattr(self, key) not in TOKENIZER_KINDS:
                raise ValueError(f"data.{key} {getattr(self, key)!r} is not one of {', '.join(TOKENIZER_KINDS)}")
        for key in ("vocab_size", "min_freq", "max_len", "num_examples", "stride", "num_series", "series_length", "channels", "repeats"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)!r}")
        if not 0.0 <= self.crop_prob <= 1.0:
            raise ValueError(f"data.crop_prob must be within [0, 1], got {self.crop_prob!r}")
        for key in ("concat_pairs", "concat_comma"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"data.{key} must be within [0, 1], got {getattr(self, key)!r}")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any], task: str) -> "DataConfig":
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown data setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**d).validate(task)

    def files(self) -> list[str]:
        """The verified dataset files this config reads (empty for synthetic data)."""
        if self.dataset == "multi30k":
            return [f for s in SPLITS for f in multi30k_files(s, (self.src_lang, self.tgt_lang))]
        if self.dataset == "tatoeba":
            return [TATOEBA_FILE]
        if self.dataset in _ETT_ROWS_PER_DAY:
            return [f"ETDataset/{self.dataset}.csv"]
        if self.dataset == "shakespeare":
            return [SHAKESPEARE_FILE]
        return []


def translation_pairs(cfg: DataConfig, split: str, data_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(source, target) sentences of ``split``."""
    if cfg.dataset == "multi30k":
        return load_multi30k(split, cfg.src_lang, cfg.tgt_lang, data_dir)
    if cfg.dataset == "tatoeba":
        return load_tatoeba(split, cfg.src_lang, cfg.tgt_lang, data_dir, seed=cfg.seed)
    n = {"train": cfg.num_examples, "val": max(8, cfg.num_examples // 10), "test": max(8, cfg.num_examples // 10)}
    offset = {"train": 0, "val": 1, "test": 2}[_check_split(split)]
    return synthetic_pairs(n[split], seed=cfg.seed * 3 + offset)


def forecast_series(cfg: DataConfig, seq_len: int, data_dir: str | os.PathLike | None = None) -> SeriesSplits:
    """All splits of the forecasting data, standardised with training statistics."""
    if cfg.dataset in _ETT_ROWS_PER_DAY:
        return load_ett(cfg.dataset, cfg.features, seq_len, data_dir)
    return synthetic_forecast(cfg.num_series, cfg.series_length, cfg.channels, cfg.seed, cfg.noise)


def lm_text(cfg: DataConfig, split: str, data_dir: str | os.PathLike | None = None) -> str:
    """Text of ``split`` for the language model."""
    if cfg.dataset == "shakespeare":
        return load_shakespeare(split, data_dir)
    return split_text(synthetic_text(cfg.repeats, cfg.seed), split)


def build_tokenizer(kind: str, texts: Sequence[str], cfg: DataConfig, language: str = ""):
    """A tokenizer of ``kind`` (word | bpe | char) learnt from ``texts`` (training data only)."""
    from training import vocab

    if kind == "char":
        return vocab.build_char_tokenizer("".join(texts))
    if kind == "bpe":
        return vocab.build_bpe_tokenizer(texts, cfg.vocab_size, language=language)
    return vocab.build_word_tokenizer(texts, cfg.min_freq, cfg.lowercase, language=language,
                                      simplify_chinese=cfg.simplify_chinese and language in ("zh", "cmn"))


def encode(tok, text: str) -> list[int]:
    """Token ids of ``text`` without specials (the vocab tokenizers never add BOS/EOS)."""
    return tok.encode(text, add_special_tokens=False).ids
