"""The floor of model compute: the bundles' ONNX graphs called in-process with onnxruntime, no server.

Sessions are built as ``seqserve serve`` builds them (service.inference.sessions.load_session with the default
RuntimeOptions: one intra-op and one inter-op thread, graph optimisation "all", no spinning, from the
graph's bytes), and fed exactly what the server feeds:

* ``forecast_latency``: one ``forecast.onnx`` call on a single window (or ``batch`` of them stacked),
  the history cut to the model's last ``window`` steps as float32 (B, T, C), as
  service/core/tasks/forecast.py prepares it; the history is the synthetic hourly series ``seqserve
  bench`` sends, ``history_len`` steps (default: the window);
* ``decode_step_latency``: one ``lm.onnx`` decode step, (B, 1) tokens in with the recurrent state from
  the previous step, logits and state out, as service/core/tasks/generate.py steps it; at batch 1 (one
  stream) and at batch B (B streams the server's step scheduler stacks into one call). The state starts
  from a prefill of one of ``seqserve bench``'s prompts, and each step feeds the previous step's state
  and argmax token;
* ``translate_step_latency``: one translation ``decoder_step.onnx`` call for 4 rows (one sentence's
  beam of 4) and for more (sentences sharing the call), after encoding one of ``seqserve bench``'s
  German sentences.

Comparing a call for B rows with B single ones gives the most batching can gain on the graph
itself, the ceiling of the batching targets in bench/targets.py.

Only the ``session.run`` calls are timed (``time.perf_counter``), after ``warmup`` untimed calls.
``python -m bench.inprocess --models DIR`` prints one JSON object with the figures of every bundle
under DIR (DIR/NAME/VERSION/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from service.contract import BundleError, Manifest, read_manifest
from service.core.tokenizing import TextCodec
from service.inference.sessions import RuntimeOptions, load_session
from service.loadgen.corpus import PROMPTS, SENTENCES
from service.loadgen.series import synthetic_series

DEFAULT_CALLS = 200
DEFAULT_WARMUP = 20
DEFAULT_BATCH = 8
R = TypeVar("R")


@dataclass(frozen=True)
class Latency:
    """Wall time of ``calls`` timed calls, in ms."""

    p50_ms: float
    p99_ms: float
    mean_ms: float
    calls: int


def session(bundle_dir: Path, manifest: Manifest, role: str) -> ort.InferenceSession:
    """The graph ``role`` of a bundle in a session configured like the server's."""
    model = (bundle_dir / manifest.graphs[role]).read_bytes()
    return load_session(model, RuntimeOptions(int8_weights=manifest.weights == "int8"))


def measure(call: Callable[[], R], n: int, warmup: int, then: Callable[[R], None] | None = None) -> Latency:
    """Run ``call`` ``warmup`` times untimed, then ``n`` times timed; ``then`` gets each result,
    untimed (to feed the next call)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    times = np.empty(n, dtype=np.float64)
    for i in range(-warmup, n):
        start = time.perf_counter()
        result = call()
        elapsed = time.perf_counter() - start
        if i >= 0:
            times[i] = elapsed
        if then is not None:
            then(result)
    ms = times * 1000.0
    return Latency(p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)),
                   mean_ms=float(ms.mean()), calls=n)


def forecast_latency(bundle_dir: str | Path, n: int = DEFAULT_CALLS, history_len: int | None = None,
                     warmup: int = DEFAULT_WARMUP, seed: int = 0, batch: int = 1) -> Latency:
    """One forecast call on ``batch`` histories of ``history_len`` steps (default: the model's
    window) stacked as the server's batcher stacks them. Raises ValueError when the bundle is not
    a forecast one, the history is shorter than min_history or ``batch`` < 1."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    spec = manifest.forecast
    if manifest.task != "forecast" or spec is None:
        raise ValueError(f"{bundle_dir} is a {manifest.task} bundle, not a forecast one")
    length = spec.window if history_len is None else history_len
    if length < spec.min_history:
        raise ValueError(f"history_len {length} is below the model's min_history {spec.min_history}")
    history = synthetic_series(np.random.default_rng(seed), length, spec.channels)
    window = np.ascontiguousarray(history[-spec.window:], dtype=np.float32)[None]  # (1, T, C)
    feeds = {"window": np.repeat(window, batch, axis=0)}  # (B, T, C)
    sess = session(bundle_dir, manifest, "forecast")
    outputs = [o.name for o in sess.get_outputs()]
    return measure(lambda: sess.run(outputs, feeds), n, warmup)


def decode_step_latency(lm_bundle_dir: str | Path, n: int = DEFAULT_CALLS, batch: int = DEFAULT_BATCH,
                        warmup: int = DEFAULT_WARMUP) -> dict[int, Latency]:
    """One LM decode step at batch 1 and at batch ``batch``: {rows: Latency}. Raises ValueError when
    the bundle is not a generate one or ``batch`` < 1."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    lm_bundle_dir = Path(lm_bundle_dir)
    manifest = read_manifest(lm_bundle_dir)
    if manifest.task != "generate":
        raise ValueError(f"{lm_bundle_dir} is a {manifest.task} bundle, not a generate one")
    codec = TextCodec.from_json((lm_bundle_dir / manifest.tokenizers["text"]).read_text(encoding="utf-8"))
    prompt, _ = codec.encode(PROMPTS[0])
    sess = session(lm_bundle_dir, manifest, "lm")
    return {rows: _steps(sess, manifest, prompt, rows, n, warmup) for rows in dict.fromkeys((1, batch))}


def _steps(sess: ort.InferenceSession, manifest: Manifest, prompt: list[int], rows: int, n: int,
           warmup: int) -> Latency:
    """Prefill ``rows`` copies of ``prompt`` from zero states, then time single-token steps, each fed
    the previous step's state and argmax token."""
    outputs = [o.name for o in sess.get_outputs()]
    states = [f"state_{s}" for s in manifest.state_names]
    zeros = np.zeros((manifest.num_layers, rows, manifest.hidden_size), dtype=np.float32)
    feeds = {"tokens": np.array([prompt] * rows, dtype=np.int64), **{s: zeros for s in states}}

    def advance(out: list[np.ndarray]) -> None:
        named = dict(zip(outputs, out, strict=True))
        feeds["tokens"] = named["logits"][:, -1].argmax(axis=-1)[:, None].astype(np.int64)  # (B, 1)
        feeds.update({s: named[s + "_out"] for s in states})

    advance(sess.run(outputs, feeds))  # the prompt's prefill
    return measure(lambda: sess.run(outputs, feeds), n, warmup, then=advance)


def translate_step_latency(bundle_dir: str | Path, rows: Sequence[int] = (4, 64), n: int = DEFAULT_CALLS,
                           warmup: int = DEFAULT_WARMUP, text: str = SENTENCES[0]) -> dict[int, Latency]:
    """One ``decoder_step.onnx`` call per entry of ``rows`` ({rows: Latency}): ``text`` encoded once,
    its encoder outputs repeated to ``rows`` rows (a beam of 4 is 4 rows; 16 sentences at beam 4
    share a 64-row call), then steps fed the previous step's state and argmax tokens, as
    service/core/tasks/translate.py steps them. Raises ValueError when the bundle is not a translate one."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    if manifest.task != "translate":
        raise ValueError(f"{bundle_dir} is a {manifest.task} bundle, not a translate one")
    codec = TextCodec.from_json((bundle_dir / manifest.tokenizers["source"]).read_text(encoding="utf-8"))
    ids, _ = codec.encode(text)
    encoder, decoder = session(bundle_dir, manifest, "encoder"), session(bundle_dir, manifest, "decoder_step")
    states = [f"state_{s}" for s in manifest.state_names]
    enc = dict(zip([o.name for o in encoder.get_outputs()], encoder.run(
        None, {"src": np.array([ids], dtype=np.int64), "src_len": np.array([len(ids)], dtype=np.int64)})))
    outputs = [o.name for o in decoder.get_outputs()]
    result: dict[int, Latency] = {}
    for b in dict.fromkeys(rows):
        feeds = {"prev_token": np.full(b, manifest.special_tokens["bos"], dtype=np.int64),
                 "memory": np.repeat(enc["memory"], b, axis=0), "memory_keys": np.repeat(enc["memory_keys"], b, axis=0),
                 "src_mask": np.ones((b, len(ids)), dtype=np.float32), **{s: np.repeat(enc[s], b, axis=1) for s in states}}

        def advance(out: list[np.ndarray], feeds: dict[str, np.ndarray] = feeds) -> None:
            named = dict(zip(outputs, out, strict=True))
            feeds["prev_token"] = named["log_probs"].argmax(axis=-1).astype(np.int64)
            feeds.update({s: named[s + "_out"] for s in states})

        result[b] = measure(lambda feeds=feeds: decoder.run(outputs, feeds), n, warmup, then=advance)
    return result


def translation_ceiling(bundle_dir: str | Path, beam: int = 4, batch: int = 16, rounds: int = 3,
                        texts: Sequence[str] = SENTENCES) -> float:
    """The graph-only ceiling of translation: sentences per second of graph time when ``batch``
    sentences share every call, as the server shares them (one encoder call, then one stacked
    ``decoder_step`` call per step for every sentence still decoding: the server's own decoding,
    service.inference.seq2seq.translate_ids). Only the ``session.run`` calls are timed; the beam
    search between them is not. ``texts`` (``seqserve bench``'s German sentences) are repeated to
    fill ``rounds`` batches; the fastest round counts."""
    from service.inference.seq2seq import translate_ids

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    if manifest.task != "translate":
        raise ValueError(f"{bundle_dir} is a {manifest.task} bundle, not a translate one")
    codec = TextCodec.from_json((bundle_dir / manifest.tokenizers["source"]).read_text(encoding="utf-8"))
    sessions = {role: session(bundle_dir, manifest, role) for role in ("encoder", "decoder_step")}
    spent = [0.0]

    def timed(role: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        sess = sessions[role]
        names = [o.name for o in sess.get_outputs()]

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            start = time.perf_counter()
            out = sess.run(names, feeds)
            spent[0] += time.perf_counter() - start
            return dict(zip(names, out))
        return run

    sources = [codec.encode(texts[i % len(texts)])[0] for i in range(batch)]
    specials = manifest.special_tokens
    best = 0.0
    for _ in range(rounds + 1):  # the first warms up
        spent[0] = 0.0
        translate_ids(timed("encoder"), timed("decoder_step"), sources, pad=specials["pad"], bos=specials["bos"],
                      eos=specials["eos"], state_names=[f"state_{s}" for s in manifest.state_names], beam=beam,
                      batch_size=batch)
        best = max(best, batch / spent[0])
    return best


def bundles(models: Path) -> list[Path]:
    """The bundle folders models/NAME/VERSION/, by name then version number."""
    found = [p for p in models.glob("*/*/") if (p / "manifest.json").is_file() and p.name.isdigit()]
    return sorted(found, key=lambda p: (p.parent.name, int(p.name)))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.inprocess``: print the figures of every bundle as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="seqserve bundle directory")
    parser.add_argument("-n", type=int, default=DEFAULT_CALLS, help=f"timed calls per figure (default {DEFAULT_CALLS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"untimed calls first (default {DEFAULT_WARMUP})")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                        help=f"LM decode step: the batch measured besides 1; translation: 4 x this many rows besides 4 "
                        f"(default {DEFAULT_BATCH})")
    parser.add_argument("--history-len", type=int, help="forecast: history steps (default: the model's window)")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"onnxruntime": ort.__version__, "session": asdict(RuntimeOptions()), "bundles": {}}
    for path in bundles(args.models):
        key = f"{path.parent.name}/{path.name}"
        try:
            task = read_manifest(path).task
            if task == "forecast":
                report["bundles"][key] = {"task": task, "forecast": asdict(
                    forecast_latency(path, args.n, args.history_len, args.warmup))}
            elif task == "translate":
                steps = translate_step_latency(path, (4, 4 * args.batch), args.n, args.warmup)
                report["bundles"][key] = {"task": task,
                                          "decoder_step": {f"rows_{rows}": asdict(v) for rows, v in steps.items()}}
            elif task == "generate":
                steps = decode_step_latency(path, args.n, args.batch, args.warmup)
                report["bundles"][key] = {"task": task,
                                          "decode_step": {f"batch_{rows}": asdict(v) for rows, v in steps.items()}}
        except (BundleError, ValueError) as err:
            print(f"error: {key}: {err}", file=sys.stderr)
            return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
