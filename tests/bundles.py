"""The one source of model bundles for the whole test suite.

``make_bundle`` gives a tiny random-weight bundle: real exported ONNX graphs, tokenizers and
manifest. Each distinct build (task, cell, seed, limits, config) is exported once per test process
(~1 s) into a cache and then copied, under any name and version, wherever a test asks for it.
``endless_translations`` and ``length_checked_forecaster`` derive bundles the service loads and
serves but that behave in one chosen way at run time (a translation that never meets its end
token; a graph that fails for some inputs).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.contract import TASKS

DEFAULT_NAMES = {"translate": "tiny-translate", "forecast": "tiny-forecast", "generate": "tiny-generate",
                 "recognize": "tiny-recognize"}

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
    "recognize": dict(hidden_size=16, num_layers=1, bidirectional=False, dropout=0.0, tail_ms=100),  # streams
}
LIMITS: dict[str, dict[str, int]] = {
    "translate": {"max_source_tokens": 64, "max_target_tokens": 48},
    "forecast": {},
    "generate": {"max_prompt_tokens": 512},
    "recognize": {},
}


_CACHE: dict[str, Path] = {}  # build key -> an exported bundle folder in _cache_root()
_cache_dir: Path | None = None


def _cache_root() -> Path:
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = Path(tempfile.mkdtemp(prefix="seqserve-test-bundles-"))
        atexit.register(shutil.rmtree, _cache_dir, True)
    return _cache_dir


def make_bundle(
    root: Path,
    task: str,
    *,
    name: str | None = None,
    version: str = "1",
    cell: str = "lstm",
    seed: int = 0,
    limits: dict[str, int] | None = None,
    edit: Callable[[Path], None] | None = None,
    **config_overrides: Any,
) -> Path:
    """A tiny random-weight ``task`` model with ``cell`` in root/<name>/<version>/; returns that folder.

    ``config_overrides`` replace fields of the task's config (e.g. bidirectional=False,
    num_layers=2, horizon=12); ``limits`` replaces the manifest limits; ``edit(folder)`` may change
    the files before the folder appears. The folder is filled under a hidden name and renamed into
    place, so a server polling ``root`` never sees half a bundle. Equal builds share one export."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    key = json.dumps([task, cell, seed, limits, config_overrides], sort_keys=True, default=str)
    if key not in _CACHE:
        _CACHE[key] = _export(_cache_root() / f"build-{len(_CACHE)}", task, cell, seed, limits, config_overrides)
    return install(_CACHE[key], Path(root) / (name or DEFAULT_NAMES[task]) / str(version), edit=edit)


def install(source: Path, dest: Path, *, edit: Callable[[Path], None] | None = None) -> Path:
    """Copy the bundle folder ``source`` to ``dest`` (<repository>/<name>/<version>), rewriting the
    manifest's name and version to match, ``edit`` the copy, then rename it into place (atomic, as
    a deploy does). Returns ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".staging-{dest.name}-{os.getpid()}"  # a name the repository scan skips
    shutil.copytree(source, staging)
    manifest = staging / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["name"], data["version"] = dest.parent.name, dest.name
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if edit is not None:
        edit(staging)
    os.rename(staging, dest)
    return dest


def _export(out: Path, task: str, cell: str, seed: int, limits: dict[str, int] | None, overrides: dict[str, Any]) -> Path:
    import torch

    from training.export import export_bundle
    from training.models import ForecastConfig, LMConfig, SpeechConfig, TranslationConfig, build_model
    from training.vocab import build_bpe_tokenizer, build_char_tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    name = DEFAULT_NAMES[task]
    tokenizers: dict[str, Any] = {}
    fields = {**TINY[task], "cell": cell, **overrides}
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
    elif task == "recognize":
        config = SpeechConfig(**fields)
    else:
        config = ForecastConfig(**fields)
    model = build_model(task, config)
    folder = out / name / "1"
    export_bundle(
        model,
        folder,
        name=name,
        version="1",
        tokenizers=tokenizers,
        limits=LIMITS[task] if limits is None else limits,
        training={"seed": seed, "note": "random weights (tests/bundles.py)"},
        description=f"tiny random-weight {task} model for tests",
        channel_names=[f"x{i}" for i in range(config.channels)] if task == "forecast" else None,
        frequency="1h" if task == "forecast" else "",
        seed=seed,
    )
    return folder


def global_forecaster(folder: Path) -> None:
    """Edit a ``seasonal=True`` forecast bundle (an ``edit`` for make_bundle) into a global model's
    manifest: no frequency of its own, trained for hourly, daily and monthly series."""
    manifest = folder / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["forecast"].update(frequency="", frequencies=["h", "D", "M"])
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- bundles that behave one chosen way at run time ---------------------------------------------


def endless_translations(folder: Path) -> None:
    """Edit a translation bundle (an ``edit`` for make_bundle) so that its decoder never chooses
    the end token: every translation runs to its length limit, whatever the weights. The decoder
    graph keeps its inputs and outputs; ``log_probs`` of EOS becomes -1e9 (finite, so warm-up
    passes)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    path = folder / manifest["graphs"]["decoder_step"]
    model = onnx.load(str(path))
    graph = model.graph
    vocab = manifest["vocab_size"]["target"]
    for out in graph.output:
        if out.name == "log_probs":
            dim = out.type.tensor_type.shape.dim[1]
            vocab = dim.dim_value or vocab
    bias = np.zeros(vocab, dtype=np.float32)
    bias[manifest["special_tokens"]["eos"]] = -1e9
    for node in graph.node:
        node.output[:] = ["log_probs_free" if o == "log_probs" else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(bias, "eos_forbidden"))
    graph.node.append(helper.make_node("Add", ["log_probs_free", "eos_forbidden"], ["log_probs"], name="forbid_eos"))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def length_checked_forecaster(root: Path, *, name: str = "odd-forecast", version: str = "1", window: int = 24,
                              min_history: int = 8, horizon: int = 4, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> Path:
    """A forecast bundle (no torch: a graph built with onnx.helper) whose graph runs for histories of
    an even length and fails inside onnxruntime for an odd one: it reshapes the window into pairs of
    steps (Reshape to (B, -1, 2)). It loads, and passes warm-up (lengths ``window`` and
    ``min_history``, both even); its forecast is the window's mean plus one offset per quantile."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from service.contract import ForecastSpec, Manifest, write_manifest

    assert window % 2 == 0 and min_history % 2 == 0, "warm-up must run on even lengths"
    levels = list(quantiles)
    offsets = np.array([q - 0.5 for q in levels], dtype=np.float32).reshape(1, 1, 1, -1)  # (1, 1, 1, Q)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["window", "pairs_shape"], ["pairs"], name="pairs_of_steps"),
            helper.make_node("ReduceMean", ["pairs"], ["mean"], axes=[1, 2], keepdims=1),  # (B, 1, 1)
            helper.make_node("Unsqueeze", ["mean", "last_axis"], ["mean4"]),  # (B, 1, 1, 1)
            helper.make_node("Add", ["mean4", "offsets"], ["levels"]),  # (B, 1, 1, Q)
            helper.make_node("Expand", ["levels", "out_shape"], ["expanded"]),  # (B, H, 1, Q)
            helper.make_node("Identity", ["expanded"], ["quantiles"]),
        ],
        "length_checked_forecaster",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", "time", 1])],
        [helper.make_tensor_value_info("quantiles", TensorProto.FLOAT, ["batch", horizon, 1, len(levels)])],
        [
            numpy_helper.from_array(np.array([0, -1, 2], dtype=np.int64), "pairs_shape"),
            numpy_helper.from_array(np.array([3], dtype=np.int64), "last_axis"),
            numpy_helper.from_array(offsets, "offsets"),
            numpy_helper.from_array(np.array([1, horizon, 1, len(levels)], dtype=np.int64), "out_shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests/bundles.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    folder = Path(root) / name / str(version)
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "forecast.onnx"))
    write_manifest(folder, Manifest(
        name=name, version=str(version), task="forecast", cell="lstm", num_layers=1, hidden_size=1,
        graphs={"forecast": "forecast.onnx"},
        forecast=ForecastSpec(window=window, min_history=min_history, horizon=horizon, channels=1, quantiles=levels),
        description="fails inside onnxruntime for histories of odd length (tests/bundles.py)",
    ))
    return folder
