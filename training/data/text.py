"""Character text for the language model: tiny Shakespeare, Tatoeba's Chinese side, a synthetic text, and their splits."""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

from training.data.files import check_split, data_file
from training.data.translation import load_tatoeba

if TYPE_CHECKING:
    from tokenizers.normalizers import Normalizer

SHAKESPEARE_FILE = "tinyshakespeare/input.txt"


def load_shakespeare(split: str, data_dir: str | os.PathLike | None = None) -> str:
    """tiny Shakespeare: first 90% of characters train, last 10% val (nanoGPT); test = val."""
    check_split(split)
    text = data_file(SHAKESPEARE_FILE, data_dir).read_text(encoding="utf-8")
    n = int(len(text) * 0.9)
    return text[:n] if split == "train" else text[n:]


def chinese_normalizer(texts: list[str]) -> Normalizer:
    """The zh-en translator's normalisation of Chinese (its word tokenizer with ``simplify_chinese``):
    NFKC, then traditional -> simplified characters by OpenCC's table for the characters whose
    simplified form occurs in ``texts`` once mapped (see training.vocab.simplified_chinese)."""
    from tokenizers import normalizers

    from training.vocab import simplified_chinese

    return normalizers.Sequence([normalizers.NFKC(), *simplified_chinese(texts)])


def load_tatoeba_zh(split: str, data_dir: str | os.PathLike | None = None, seed: int = 0) -> list[str]:
    """The Chinese sentences of the zh-en translator's Tatoeba part ``split`` (load_tatoeba, same seed),
    normalised as that translator normalises them (table from its training sentences); val and test
    in the file's order, one string per sentence.

    So the language model is scored on exactly the translator's test sentences and never trains on
    its val or test ones: train also drops every sentence that occurs in val or test (one Chinese
    sentence can translate English sentences of different parts). Train is shuffled (seeded): the
    file groups alternative translations of one English sentence and sorts by length, and the model
    should learn each sentence from its own start, not copy the previous line.
    """
    check_split(split)
    parts = {s: [zh for zh, _ in load_tatoeba(s, "zh", "en", data_dir, seed=seed)] for s in ("train", "val", "test")}
    norm = chinese_normalizer(parts["train"])
    if split != "train":
        return [norm.normalize_str(zh) for zh in parts[split]]
    held_out = {norm.normalize_str(zh) for zh in parts["val"] + parts["test"]}
    train = [line for line in map(norm.normalize_str, parts["train"]) if line not in held_out]
    random.Random(seed).shuffle(train)
    return train


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
    return text[:n] if check_split(split) == "train" else text[n:]
