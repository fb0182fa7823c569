"""Character text for the language model: tiny Shakespeare, a synthetic text, and their splits."""

from __future__ import annotations

import os
import random

from training.data.files import check_split, data_file

SHAKESPEARE_FILE = "tinyshakespeare/input.txt"


def load_shakespeare(split: str, data_dir: str | os.PathLike | None = None) -> str:
    """tiny Shakespeare: first 90% of characters train, last 10% val (nanoGPT); test = val."""
    check_split(split)
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
    return text[:n] if check_split(split) == "train" else text[n:]
