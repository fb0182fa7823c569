"""Speech figures of a bundle's graphs: digit accuracy and connected-digit error rate (FSDD), character and
word error rates (a user's recordings), offline and streaming."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Graph = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # as training.evaluate.Graph

STRINGS_SEED = 2026  # the connected-digit strings of an evaluation split
STRINGS = 300
STREAM_CHUNK_MS = 100  # streaming evaluation: the audio arrives in chunks of this length
CONFUSIONS = 10  # the commonest errors on single recordings listed with the figures


def _recognize_offline(acoustic: Graph, audios: list[np.ndarray], blank: int, batch: int = 16) -> list[list[int]]:
    """Greedy CTC labels of each signal through the offline graph, batched by length."""
    from service.inference.ctc import greedy
    from service.inference.speech import blank_first_frame, pad_batch

    out: list[list[int]] = [[] for _ in audios]
    order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
    for k in range(0, len(order), batch):
        idx = order[k : k + batch]
        audio, lens = pad_batch([audios[i] for i in idx])
        res = acoustic({"audio": audio, "audio_len": lens})
        for j, i in enumerate(idx):
            out[i] = list(greedy(blank_first_frame(res["log_probs"][j, : res["frames"][j]], blank), blank).labels)
    return out


def _recognize_streaming(step: Graph, audios: list[np.ndarray], spec: dict[str, Any], layers: int, hidden: int,
                         states: tuple[str, ...], chunk: int, tail: int = 0) -> list[list[int]]:
    """Greedy CTC labels of each signal sent to the step graph in chunks of ``chunk`` samples, its state
    carried from chunk to chunk as the server carries it."""
    from service.inference.ctc import greedy
    from service.inference.speech import ChunkFramer, blank_first_frame

    out = []
    frame = spec["hop"] * spec["stack"]
    for audio in audios:
        framer = ChunkFramer(spec["n_fft"] - spec["hop"], frame)
        state = {f"state_{s}": np.zeros((layers, 1, hidden), np.float32) for s in states}
        parts = []
        pieces = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
        for piece in pieces + ([np.zeros(tail, np.float32)] if tail else []):  # the half-close appends the tail
            framer.push(piece)
            inp = framer.take()
            if inp is None:
                continue
            res = step({"audio": inp[None, :], **state})
            state = {f"state_{s}": res[f"state_{s}_out"] for s in states}
            parts.append(res["log_probs"][0])
        lp = np.concatenate(parts) if parts else np.zeros((0, len(spec["labels"])), np.float32)
        out.append(list(greedy(blank_first_frame(lp, spec["blank"]), spec["blank"]).labels))
    return out


def speech_metrics(graphs: dict[str, Graph], singles: list[tuple[np.ndarray, int]],
                   strings: list[tuple[np.ndarray, list[int]]], spec: dict[str, Any], layers: int, hidden: int,
                   states: tuple[str, ...]) -> dict[str, Any]:
    """Single-recording accuracy and connected-digit error rate, offline and (with a step graph) streaming.
    Labels are digit + 1 (0 is the blank)."""
    from training.data.speech import digit_error_rate

    figures: dict[str, Any] = {"recordings": len(singles), "strings": len(strings),
                               "string_digits": sum(len(d) for _, d in strings)}
    from service.contract import SpeechSpec
    from service.inference.speech import with_tail

    tail = SpeechSpec(**spec).tail_samples  # the end-of-recording silence the server appends
    modes = {"": lambda audios: _recognize_offline(graphs["acoustic"], [with_tail(a, tail) for a in audios],
                                                   spec["blank"])}
    if "acoustic_step" in graphs:
        chunk = spec["sample_rate"] * STREAM_CHUNK_MS // 1000
        modes["stream_"] = lambda audios: _recognize_streaming(graphs["acoustic_step"], audios, spec, layers, hidden,
                                                               states, chunk, tail)
    for prefix, run in modes.items():
        got = run([a for a, _ in singles])
        figures[f"{prefix}accuracy"] = float(np.mean([g == [d + 1] for g, (_, d) in zip(got, singles)])) if singles else 0.0
        if not prefix:
            figures["confusions"] = confusions(got, [d for _, d in singles])
        hyps = run([a for a, _ in strings])
        der, edits, _ = digit_error_rate(hyps, [[d + 1 for d in digits] for _, digits in strings])
        figures[f"{prefix}der"] = der
        figures[f"{prefix}string_accuracy"] = float(np.mean([h == [d + 1 for d in r] for h, (_, r) in zip(hyps, strings)]))
        figures[f"{prefix}digit_edits"] = edits
    return figures


def confusions(got: list[list[int]], digits: list[int], top: int = CONFUSIONS) -> list[dict[str, Any]]:
    """The commonest errors on single recordings, most frequent first: the digit said, what was heard
    (digits separated by spaces, "" for nothing) and how often."""
    from collections import Counter

    counts = Counter((str(d), " ".join(str(x - 1) for x in g)) for g, d in zip(got, digits) if g != [d + 1])
    return [{"said": said, "heard": heard, "count": n}
            for (said, heard), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def user_speech_metrics(graphs: dict[str, Graph], cfg, split: str, spec: dict[str, Any], layers: int, hidden: int,
                        states: tuple[str, ...], max_items: int = 0) -> dict[str, Any]:
    """Character and word error rates of a user's recordings (greedy CTC), offline and (with a step
    graph) streaming."""
    from service.contract import SpeechSpec
    from service.inference.speech import with_tail
    from training.data import user_speech as U

    s = SpeechSpec(**spec)
    items = U.split_utterances(U.read_utterances(cfg.paths, s.sample_rate, cfg.file_column, cfg.text_column,
                                                 cfg.lowercase), split, cfg.seed, cfg.val_share, cfg.test_share)
    items = items[:max_items] if max_items else items
    refs = [u.text for u in items]
    figures: dict[str, Any] = {"recordings": len(items), "seconds_of_audio": round(sum(len(u.audio) for u in items)
                                                                                   / s.sample_rate, 1)}
    figures.update(U.error_rates([s.transcript(ids) for ids in _recognize_offline(
        graphs["acoustic"], [with_tail(u.audio, s.tail_samples) for u in items], s.blank)], refs))
    if "acoustic_step" in graphs:
        hyps = _recognize_streaming(graphs["acoustic_step"], [u.audio for u in items], spec, layers, hidden, states,
                                    s.sample_rate * STREAM_CHUNK_MS // 1000, s.tail_samples)
        figures.update({f"stream_{k}": v for k, v in U.error_rates([s.transcript(h) for h in hyps], refs).items()})
    return figures
