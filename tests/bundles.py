"""Tiny random-weight bundles for tests: real exported ONNX graphs, tokenizers and manifest, built in ~1 s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from service.contract import TASKS
from training.export import export_bundle
from training.models import ForecastConfig, LMConfig, TranslationConfig, build_model
from training.vocab import build_bpe_tokenizer, build_char_tokenizer

DEFAULT_NAMES = {"translate": "tiny-translate", "forecast": "tiny-forecast", "generate": "tiny-generate"}

PAIRS_DE_EN: list[tuple[str, str]] = [
    ("Ein Mann fährt Fahrrad.", "A man rides a bike."),
    ("Eine Frau singt ein Lied.", "A woman sings a song."),
    ("Zwei Hunde spielen im Park.", "Two dogs play in the park."),
    ("Ein Kind liest ein Buch.", "A child reads a book."),
    ("Die Katze schläft auf dem Sofa.", "The cat sleeps on the sofa."),
    ("Ein Mann trinkt Kaffee.", "A man drinks coffee."),
    ("Die Frau läuft am Strand.", "The woman runs on the beach."),
    ("Ein Junge spielt Fußball.", "A boy plays soccer."),
    ("Zwei Männer arbeiten zusammen.", "Two men work together."),
    ("Ein Mädchen lacht.", "A girl laughs."),
    ("Der Hund läuft schnell.", "The dog runs fast."),
    ("Eine Gruppe von Menschen steht auf der Straße.", "A group of people stands on the street."),
]

TEXT = (
    "First Citizen:\n"
    "Before we proceed any further, hear me speak.\n\n"
    "All:\n"
    "Speak, speak.\n\n"
    "First Citizen:\n"
    "You are all resolved rather to die than to famish?\n\n"
    "All:\n"
    "Resolved. resolved.\n\n"
    "First Citizen:\n"
    "First, you know Caius Marcius is chief enemy to the people.\n"
)

TINY: dict[str, dict[str, Any]] = {
    "translate": dict(embed_size=16, hidden_size=16, attention_size=16, num_layers=1, dropout=0.0),
    "forecast": dict(channels=1, window=24, min_history=8, horizon=6, hidden_size=16, num_layers=1),
    "generate": dict(embed_size=16, hidden_size=24, num_layers=2, dropout=0.0),
}
LIMITS: dict[str, dict[str, int]] = {
    "translate": {"max_source_tokens": 64, "max_target_tokens": 48},
    "forecast": {},
    "generate": {"max_prompt_tokens": 512},
}


def make_bundle(
    root: Path,
    task: str,
    *,
    name: str | None = None,
    version: str = "1",
    cell: str = "lstm",
    seed: int = 0,
    limits: dict[str, int] | None = None,
    **config_overrides: Any,
) -> Path:
    """Build a tiny random-weight ``task`` model with ``cell``, export it into root/<name>/<version>/
    and return that folder. ``config_overrides`` replace fields of the task's config (e.g.
    bidirectional=False, num_layers=2, horizon=12); ``limits`` replaces the manifest limits."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    name = name or DEFAULT_NAMES[task]
    torch.manual_seed(seed)
    tokenizers: dict[str, Any] = {}
    fields = {**TINY[task], "cell": cell, **config_overrides}
    if task == "translate":
        tokenizers = {
            "source": build_bpe_tokenizer([de for de, _ in PAIRS_DE_EN], vocab_size=120, min_freq=1),
            "target": build_bpe_tokenizer([en for _, en in PAIRS_DE_EN], vocab_size=120, min_freq=1),
        }
        fields.setdefault("src_vocab_size", tokenizers["source"].get_vocab_size())
        fields.setdefault("tgt_vocab_size", tokenizers["target"].get_vocab_size())
        config: Any = TranslationConfig(**fields)
    elif task == "generate":
        tokenizers = {"text": build_char_tokenizer(TEXT)}
        fields.setdefault("vocab_size", tokenizers["text"].get_vocab_size())
        config = LMConfig(**fields)
    else:
        config = ForecastConfig(**fields)
    model = build_model(task, config)
    out = Path(root) / name / str(version)
    export_bundle(
        model,
        out,
        name=name,
        version=str(version),
        tokenizers=tokenizers,
        limits=LIMITS[task] if limits is None else limits,
        training={"seed": seed, "note": "random weights (tests/bundles.py)"},
        description=f"tiny random-weight {task} model for tests",
        channel_names=[f"x{i}" for i in range(config.channels)] if task == "forecast" else None,
        frequency="1h" if task == "forecast" else "",
        seed=seed,
    )
    return out
