"""Translation data: Multi30k, Tatoeba and synthetic pairs, concatenation augmentation, pair batches."""

from __future__ import annotations

import gzip
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from training.data.files import DataError, check_split, data_file

PAD_ID = 0  # the vocab modules' [PAD]; batches are right-padded with it
_MULTI30K_SPLIT = {"train": "train", "val": "val", "test": "test_2016_flickr"}


# ---------------------------------------------------------------- translation corpora


def multi30k_files(split: str, langs: Sequence[str] = ("de", "en")) -> list[str]:
    check_split(split)
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
    check_split(split)
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
