"""Evaluate a checkpoint (PyTorch) or an exported bundle (onnxruntime): MSE/MAE, nats per char, BLEU/chrF, digit accuracy and error rate."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from training.data.corpus_sources import FIRST_SOURCES

log = logging.getLogger(__name__)

Graph = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # contract names in -> contract names out
COVERAGE = (0.1, 0.9)  # the interval whose empirical coverage is reported
HORIZON_MARKS = (1, 6, 12, 24, 48, 96, 168, 336, 720)  # prefix horizons reported besides the full one
# The horizons of the published ETT tables (Informer: 24 48 168 336 720; DLinear: 96 192 336 720).
STANDARD_HORIZONS = (24, 48, 96, 168, 192, 336, 720)


# ---------------------------------------------------------------- graph backends


def ort_graphs(bundle_dir: Path, graphs: dict[str, str], threads: int = 1, int8_weights: bool = False) -> dict[str, Graph]:
    """role -> callable running the bundle's ONNX graph with onnxruntime, in sessions built as the
    service builds them."""
    from service.inference.sessions import RuntimeOptions, load_session

    options = RuntimeOptions(intra_op_threads=threads, int8_weights=int8_weights)
    out: dict[str, Graph] = {}
    for role, file in graphs.items():
        sess = load_session(bundle_dir / file, options)
        names = [o.name for o in sess.get_outputs()]
        out[role] = lambda feed, sess=sess, names=names: dict(zip(names, sess.run(None, feed)))
    return out


def torch_graphs(model) -> dict[str, Graph]:
    """role -> callable running ``model`` through export's contract wrappers (same names as the graphs)."""
    import torch

    from service.contract import graph_spec
    from training import export

    task, cell = model.task, model.config.cell
    if task == "recognize":
        return _torch_speech_graphs(model)
    wrappers = {
        "forecast": {"forecast": export.ForecastGraph},
        "generate": {"lm": export.LMGraph},
        "translate": {"encoder": export.EncoderGraph, "decoder_step": export.DecoderStepGraph},
    }[task]
    out: dict[str, Graph] = {}
    for role, cls in wrappers.items():
        module = cls(model).eval()
        spec = graph_spec(role, cell, bool(getattr(model.config, "seasonal", False)))
        in_names, out_names = spec.input_names, spec.output_names

        def run(feed, module=module, in_names=in_names, out_names=out_names):
            with torch.no_grad():
                res = module(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in in_names))
            res = res if isinstance(res, tuple) else (res,)
            return {n: r.numpy() for n, r in zip(out_names, res)}

        out[role] = run
    return out


def _torch_speech_graphs(model) -> dict[str, Graph]:
    """The speech graphs in PyTorch: the features graph (onnxruntime, as training computes them), then the model."""
    import torch

    from service.contract import state_names
    from training.export_speech import AcousticGraph, AcousticStepGraph
    from training.features import FeatureExtractor, FeatureSpec

    features = FeatureExtractor(FeatureSpec(**model.config.features))
    acoustic = AcousticGraph(model).eval()
    step = AcousticStepGraph(model).eval()
    names = [f"state_{s}" for s in state_names(model.config.cell)]

    def run_acoustic(feed):
        with torch.no_grad():
            lp, frames = acoustic(torch.from_numpy(features(feed["audio"])), torch.from_numpy(feed["audio_len"]))
        return {"log_probs": lp.numpy(), "frames": frames.numpy()}

    def run_step(feed):
        with torch.no_grad():
            res = step(torch.from_numpy(features(feed["audio"], False)), *(torch.from_numpy(feed[n]) for n in names))
        return {"log_probs": res[0].numpy(), **{f"{n}_out": r.numpy() for n, r in zip(names, res[1:])}}

    graphs = {"acoustic": run_acoustic}
    if not model.config.bidirectional:
        graphs["acoustic_step"] = run_step
    return graphs


# ---------------------------------------------------------------- metrics per task

def forecast_metrics(
    run: Graph, series: list[np.ndarray], window: int, horizon: int, quantiles: list[float], batch_size: int = 256,
    season: int = 0,
) -> dict[str, Any]:
    """MSE/MAE of the median (on the given, train-standardised scale), per prefix horizon, interval
    coverage, and the same errors of the repeat-last-value baseline on the same windows (``naive_*``).
    With ``season`` m (<= window): seasonal naive's (each step repeats the value one season earlier)
    MAE and MSE (``snaive_*``) and ``relative_mae`` = MAE / seasonal naive's MAE (< 1: better)."""
    from training.data import WindowDataset

    ds = WindowDataset(series, window, horizon)
    q = list(quantiles)
    med = min(range(len(q)), key=lambda i: abs(q[i] - 0.5))
    lo = min(range(len(q)), key=lambda i: abs(q[i] - COVERAGE[0]))
    hi = min(range(len(q)), key=lambda i: abs(q[i] - COVERAGE[1]))
    sq = np.zeros(horizon)  # summed squared error per step
    ab = np.zeros(horizon)
    naive_sq = np.zeros(horizon)  # the same for "tomorrow equals today": the window's last value
    naive_ab = np.zeros(horizon)
    snaive_sq = snaive_ab = 0.0
    season = season if 0 < season <= window else 0
    if season:
        repeat = window - season + np.arange(horizon) % season  # the window's index each step repeats
    inside, count = 0, 0
    for i in range(0, len(ds), batch_size):
        items = [ds[j] for j in range(i, min(i + batch_size, len(ds)))]
        x = np.stack([it["window"].numpy() for it in items])  # (B, T, C)
        y = np.stack([it["target"].numpy() for it in items])  # (B, H, C)
        pred = run({"window": x})["quantiles"]  # (B, H, C, Q)
        err = pred[..., med] - y
        sq += (err**2).sum(axis=(0, 2))
        ab += np.abs(err).sum(axis=(0, 2))
        naive = x[:, -1:, :] - y
        naive_sq += (naive**2).sum(axis=(0, 2))
        naive_ab += np.abs(naive).sum(axis=(0, 2))
        if season:
            snaive = x[:, repeat, :] - y
            snaive_sq += float((snaive**2).sum())
            snaive_ab += float(np.abs(snaive).sum())
        inside += int(((pred[..., lo] <= y) & (y <= pred[..., hi])).sum())
        count += y.size
    per_step = count / horizon
    out: dict[str, Any] = {"windows": len(ds), "horizon": horizon, "mse": float(sq.sum() / count), "mae": float(ab.sum() / count)}
    for h in HORIZON_MARKS:
        if h < horizon:
            out[f"mse@{h}"] = float(sq[:h].sum() / (per_step * h))
            out[f"mae@{h}"] = float(ab[:h].sum() / (per_step * h))
    out[f"coverage_{round(q[lo] * 100)}_{round(q[hi] * 100)}"] = inside / count
    out["naive_mse"] = float(naive_sq.sum() / count)
    out["naive_mae"] = float(naive_ab.sum() / count)
    for h in HORIZON_MARKS:
        if h < horizon:
            out[f"naive_mse@{h}"] = float(naive_sq[:h].sum() / (per_step * h))
            out[f"naive_mae@{h}"] = float(naive_ab[:h].sum() / (per_step * h))
    if season:
        out.update(season=season, snaive_mse=snaive_sq / count, snaive_mae=snaive_ab / count,
                   relative_mae=float(ab.sum() / snaive_ab) if snaive_ab else float("nan"))
    return out


def horizon_metrics(
    run: Graph, series: list[np.ndarray], window: int, horizon: int, quantiles: list[float],
    horizons: tuple[int, ...] = STANDARD_HORIZONS,
) -> dict[str, dict[str, Any]]:
    """For each standard horizon h up to the model's, the figures of forecasting h steps on the
    test windows of horizon h -- what a client asking for ``horizon=h`` gets, on the windows the
    published per-horizon tables use -- keyed by str(h)."""

    def first(h: int) -> Graph:
        return lambda feed: {"quantiles": run(feed)["quantiles"][:, :h]}

    out: dict[str, dict[str, Any]] = {}
    for h in horizons:
        if h > horizon:
            continue
        f = forecast_metrics(first(h), series, window, h, quantiles)
        out[str(h)] = {k: v for k, v in f.items() if "@" not in k}
    return out


def lm_metrics(
    run: Graph, ids: np.ndarray, chars: int, state_shape: tuple[int, int], state_names: tuple[str, ...],
    streams: int = 16, chunk: int = 256,
) -> dict[str, Any]:
    """Mean next-token cross-entropy over ``ids`` read as ``streams`` parallel streams, state carried
    between chunks; nats per character scales it by tokens/characters of the text (1 for char models)."""
    streams = max(1, min(streams, len(ids) // 2))
    n = len(ids) // streams
    data = ids[: n * streams].reshape(streams, n)  # (B, N)
    L, H = state_shape
    state = {f"state_{s}": np.zeros((L, streams, H), np.float32) for s in state_names}
    nats, count = 0.0, 0
    for i in range(0, n - 1, chunk):
        tokens = data[:, i : min(i + chunk, n - 1)]
        targets = data[:, i + 1 : i + 1 + tokens.shape[1]]
        out = run({"tokens": tokens.astype(np.int64), **state})
        logits = out["logits"].astype(np.float64)  # (B, T, V)
        m = logits.max(-1, keepdims=True)
        logz = (m[..., 0] + np.log(np.exp(logits - m).sum(-1)))  # (B, T)
        picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
        nats += float((logz - picked).sum())
        count += targets.size
        state = {k: out[f"{k}_out"] for k in state}
    per_token = nats / count
    per_char = per_token * len(ids) / chars
    return {
        "tokens": count, "nats_per_token": per_token, "nats_per_char": per_char,
        "bits_per_char": per_char / math.log(2), "perplexity": math.exp(per_token),
    }


def translation_metrics(hyps: list[str], refs: list[str], tgt_lang: str = "en") -> dict[str, Any]:
    """sacreBLEU BLEU and chrF on detokenised cased text, and BLEU on lowercased 13a tokens."""
    import sacrebleu

    tokenize = "zh" if tgt_lang == "zh" else "13a"
    return {
        "sentences": len(hyps),
        "bleu": sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score,
        "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
        "bleu_lc": sacrebleu.corpus_bleu(hyps, [refs], lowercase=True, tokenize="zh" if tgt_lang == "zh" else "13a").score,
    }


def unigram_bits_per_char(train: str, text: str) -> float:
    """The baseline a language model must beat: bits per character of ``text`` under the training text's
    character frequencies (add-one smoothed over the characters of both)."""
    from collections import Counter

    counts = Counter(train)
    vocab = set(counts) | set(text)
    total = len(train) + len(vocab)
    return float(-sum(math.log2((counts[c] + 1) / total) for c in text) / max(1, len(text)))


def copy_bleu(pairs: list[tuple[str, str]], tgt_lang: str = "") -> float:
    """BLEU of the sources taken as their own translations: what names, numbers and shared words give."""
    import sacrebleu

    return sacrebleu.corpus_bleu([s for s, _ in pairs], [[t for _, t in pairs]],
                                 tokenize="zh" if tgt_lang == "zh" else "13a").score


# ---------------------------------------------------------------- entry points


def _evaluate(
    task: str, graphs: dict[str, Graph], *, run_config: dict[str, Any], tokenizers: dict[str, Any], cell: str,
    num_layers: int, hidden_size: int, specials: dict[str, int], limits: dict[str, int], forecast: dict[str, Any] | None,
    split: str, data_dir, max_items: int, beam: int = 0, speech: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Figures of one split; translation decodes with the server's shared decoding (greedy, or beam
    search of width ``beam`` with its default length penalty)."""
    from service.contract import state_names
    from service.inference.seq2seq import (
        DEFAULT_TOKEN_LIMIT,
        join_pieces,
        restore_unknown,
        source_words,
        translate_ids,
        word_marker,
    )
    from training import data as D

    cfg = D.DataConfig.from_dict(run_config["data"], task)
    states = state_names(cell)
    t0 = time.perf_counter()
    figures: dict[str, Any] = {"task": task, "dataset": cfg.dataset, "split": split}
    if task == "forecast":
        splits = D.forecast_series(cfg, forecast["window"], data_dir, forecast["horizon"], forecast["min_history"])
        series = splits.split(split)
        if max_items:
            series = [s[: forecast["window"] + forecast["horizon"] + max_items - 1] for s in series]
        season = D.season_length(cfg, splits.freq)
        graph = graphs["forecast"]
        if forecast.get("season_input"):  # every window gets the data's season (1 when it has none)
            graph = lambda feed, run=graph: run({**feed, "season": np.full(len(feed["window"]), max(season, 1), np.int64)})  # noqa: E731
        figures.update(forecast_metrics(graph, series, forecast["window"], forecast["horizon"], forecast["quantiles"],
                                        season=season))
        figures["by_horizon"] = horizon_metrics(graph, series, forecast["window"], forecast["horizon"], forecast["quantiles"])
    elif task == "recognize" and cfg.dataset == "files":
        from training.evaluate_speech import user_speech_metrics

        figures.update(user_speech_metrics(graphs, cfg, split, speech, num_layers, hidden_size, states, max_items))
    elif task == "recognize":
        from training.data.speech import eval_strings
        from training.evaluate_speech import STRINGS, STRINGS_SEED, speech_metrics

        pool = D.speech_recordings(cfg, split, data_dir)
        singles = [(r.audio, r.digit) for r in pool]
        strings = eval_strings(pool, STRINGS, STRINGS_SEED)
        if max_items:
            singles, strings = singles[:max_items], strings[:max_items]
        figures["holdout"] = cfg.holdout
        figures.update(speech_metrics(graphs, singles, strings, speech, num_layers, hidden_size, states))
    elif task == "generate":
        text = D.lm_text(cfg, split, data_dir)
        if max_items:
            text = text[:max_items]
        ids = np.array(D.encode(tokenizers["text"], text), np.int64)
        figures.update(lm_metrics(graphs["lm"], ids, len(text), (num_layers, hidden_size), states))
        figures["unigram_bits_per_char"] = unigram_bits_per_char(D.lm_text(cfg, "train", data_dir), text)
    else:
        pairs = D.translation_pairs(cfg, split, data_dir)
        if max_items:
            pairs = pairs[:max_items]
        src_tok, tgt_tok = tokenizers["source"], tokenizers["target"]
        encodings = [src_tok.encode(s, add_special_tokens=False) for s, _ in pairs]
        sources = [list(e.ids) or [specials["pad"]] for e in encodings]  # never empty
        best = translate_ids(graphs["encoder"], graphs["decoder_step"], sources, pad=specials["pad"],
                             bos=specials["bos"], eos=specials["eos"], state_names=[f"state_{s}" for s in states],
                             beam=max(beam, 1), max_target_tokens=limits.get("max_target_tokens", DEFAULT_TOKEN_LIMIT))
        hyps, copied = [], 0
        marker = word_marker(tgt_tok)
        for (source, _), e, ids, h in zip(pairs, encodings, sources, best):  # unknown words as the server passes them
            pieces, n = restore_unknown(h, specials["unk"], ids, source_words(source, e.offsets),
                                        lambda t: tgt_tok.id_to_token(t) or "", marker)
            hyps.append(join_pieces(tgt_tok, pieces))
            copied += n
        if beam:
            figures["beam"] = beam
        figures["unknown_source_tokens"] = sum(i == specials["unk"] for ids in sources for i in ids)
        figures["copied_words"] = copied
        figures.update(translation_metrics(hyps, [t for _, t in pairs], cfg.tgt_lang))
        figures["copy_bleu"] = copy_bleu(pairs, cfg.tgt_lang)
        figures["examples"] = [{"source": s, "reference": t, "output": h} for (s, t), h in list(zip(pairs, hyps))[:3]]
    figures["seconds"] = round(time.perf_counter() - t0, 3)
    return figures


def evaluate_bundle(bundle_dir: str | Path, split: str = "test", data_dir=None, max_items: int = 0, threads: int = 1,
                    beam: int = 0) -> dict[str, Any]:
    """Figures for an exported bundle, computed with onnxruntime on its graphs (what the service serves).

    ``beam`` > 0 (translation only) decodes with beam search of that width, through the same decoding
    code as the server (service.inference.seq2seq); the figures then carry ``beam`` and are stored as
    evaluation[f"{split}_beam{beam}"].
    The data and split come from manifest.training["run_config"]; raises BundleError / ValueError."""
    from tokenizers import Tokenizer

    from service.contract import read_manifest

    bundle_dir = Path(bundle_dir)
    m = read_manifest(bundle_dir)
    run_config = m.training.get("run_config")
    if not run_config:
        raise ValueError(f"{bundle_dir}: manifest.training has no run_config; cannot tell which data to evaluate on")
    if beam and m.task != "translate":
        raise ValueError(f"--beam applies to translation bundles; {bundle_dir} is a {m.task} bundle")
    figures = _evaluate(
        m.task, ort_graphs(bundle_dir, m.graphs, threads, m.weights == "int8"), run_config=run_config,
        tokenizers={r: Tokenizer.from_file(str(bundle_dir / f)) for r, f in m.tokenizers.items()},
        cell=m.cell, num_layers=m.num_layers, hidden_size=m.hidden_size, specials=m.special_tokens, limits=m.limits,
        forecast=None if m.forecast is None else {"window": m.forecast.window, "horizon": m.forecast.horizon,
                                                  "min_history": m.forecast.min_history, "quantiles": m.forecast.quantiles,
                                                  "season_input": m.forecast.season_input},
        split=split, data_dir=data_dir, max_items=max_items, beam=beam, speech=m.speech.info() if m.speech else None,
    )
    figures["source"] = "onnxruntime"
    return figures


def evaluate_checkpoint(path: str | Path, split: str = "test", data_dir=None, max_items: int = 0) -> dict[str, Any]:
    """Figures for a training checkpoint, computed with PyTorch (same metrics as evaluate_bundle)."""
    from training.train import load_checkpoint, model_from_checkpoint
    from training.vocab import SPECIAL_IDS

    ckpt = load_checkpoint(path)
    model, tokenizers = model_from_checkpoint(ckpt)
    c = model.config
    figures = _evaluate(
        model.task, torch_graphs(model), run_config=ckpt["run_config"], tokenizers=tokenizers, cell=c.cell,
        num_layers=c.num_layers, hidden_size=c.hidden_size, specials=dict(SPECIAL_IDS), limits={},
        forecast={"window": c.window, "horizon": c.horizon, "min_history": c.min_history, "quantiles": list(c.quantiles),
                  "season_input": c.seasonal} if model.task == "forecast" else None,
        split=split, data_dir=data_dir, max_items=max_items,
        speech=_speech_info(c) if model.task == "recognize" else None,
    )
    figures["source"] = "pytorch"
    figures["step"] = ckpt["step"]
    return figures


def corpus_validation_loss(checkpoint, sources: str | Sequence[str] = FIRST_SOURCES, data_dir=None,
                           windows: int = 1) -> tuple[float, int]:
    """A forecast-global checkpoint's validation loss (mean pinball loss on the normalised scale, as training
    logs it) on the last horizons (``windows``, as ``data.val_windows`` holds them out) of the real series of
    ``sources`` (``data.corpus_sources``), and how many windows that is. With the defaults, the 70 windows that
    chose the former forecast-global/1 (``windows=4``: the 141 that chose the bundle), whatever corpus a run
    trained on:
    ``python -c "from training.evaluate import corpus_validation_loss as v; print(v('runs/X/best.pt'))"``.
    Compare checkpoints on windows none of them trained on: ``windows`` at most each run's ``data.val_windows``."""
    from training.data import corpus as C
    from training.data.config import DataConfig
    from training.loop import LossModule, evaluate_loss
    from training.train import load_checkpoint, model_from_checkpoint

    model, _ = model_from_checkpoint(load_checkpoint(checkpoint))
    c = model.config
    names = ",".join(C.parse_sources(sources))
    splits = C.corpus_splits(DataConfig(dataset="corpus", corpus_sources=names, val_windows=windows), c.window, c.horizon,
                             data_dir)  # the windows training validates on
    batches = C.fixed_windows([s[:, 0] for s in splits.val], c.window, c.horizon, 64,
                              splits.val_seasons if c.seasonal else None)
    total, weight = evaluate_loss(LossModule(model, stateful=False), C.FixedBatches(batches))
    return total / weight, len(splits.val)


def _speech_info(config) -> dict[str, Any]:
    from training.export_speech import speech_spec

    return speech_spec(config).info()


def stored_figures(figures: dict[str, Any]) -> dict[str, Any]:
    """What a manifest keeps of ``figures``: not the examples, nor the confusions (printed, in figures.json)."""
    return {k: v for k, v in figures.items() if k not in ("examples", "confusions")}


def write_evaluation(bundle_dir: str | Path, figures: dict[str, Any]) -> Path:
    """Store ``figures`` (examples and confusions dropped) in the bundle's manifest under evaluation[split] (or
    evaluation[f"{split}_beam{N}"] for beam-search figures)."""
    from service.contract import read_manifest, write_manifest

    m = read_manifest(bundle_dir)
    key = figures["split"] + (f"_beam{figures['beam']}" if figures.get("beam") else "")
    m.evaluation[key] = stored_figures(figures)
    return write_manifest(bundle_dir, m)


def format_table(figures: dict[str, Any]) -> str:
    """Two-column text table of the figures (examples listed after it)."""
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in figures.items()
            if k not in ("examples", "by_horizon", "confusions")]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    by_horizon = figures.get("by_horizon") or {}
    if by_horizon:
        lines += ["", f"{'horizon':>7}  {'windows':>7}  {'mse':>7}  {'mae':>7}  {'naive mse':>9}  {'naive mae':>9}  coverage"]
        for h, f in by_horizon.items():
            cov = next((v for k, v in f.items() if k.startswith("coverage")), float("nan"))
            lines.append(f"{h:>7}  {f['windows']:>7}  {f['mse']:>7.4f}  {f['mae']:>7.4f}  {f['naive_mse']:>9.4f}  "
                         f"{f['naive_mae']:>9.4f}  {cov:.3f}")
    if figures.get("confusions"):
        lines += ["", "commonest errors on single recordings (said -> heard: times)"]
        lines += [f"  {c['said']} -> {c['heard'] or '(nothing)'}: {c['count']}" for c in figures["confusions"]]
    for ex in figures.get("examples", []):
        lines.append("")
        lines.extend(f"{k:>9}: {v}" for k, v in ex.items())
    return "\n".join(lines)


def to_json(figures: dict[str, Any]) -> str:
    return json.dumps(figures, indent=2, ensure_ascii=False)
