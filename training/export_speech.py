"""Export of speech models: the features graph in front of each acoustic graph, and their parity with PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from service.contract import GRAPHS, OPTIONAL_GRAPHS, SpeechSpec, graph_spec, state_names
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
from training.models import SpeechRecognizer


class AcousticGraph(nn.Module):
    """features (B, F, M) (the features graph's output), audio_len (B,) -> log_probs (B, T, V), frames (B,)."""

    def __init__(self, model: SpeechRecognizer) -> None:
        super().__init__()
        self.model = model
        self.hop = int(model.config.features["hop"])

    def forward(self, features: Tensor, audio_len: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(features, torch.div(audio_len, self.hop, rounding_mode="floor"))


class AcousticStepGraph(nn.Module):
    """features (B, k * stack, M) of one chunk, states -> log_probs (B, k, V), states."""

    def __init__(self, model: SpeechRecognizer) -> None:
        super().__init__()
        self.model = model
        self.has_c = model.encoder.has_cell_state

    def forward(self, features: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        log_probs, state = self.model.step(features, split_state(self.has_c, states))
        return (log_probs, *flat_state(state))



def _export_with_features(module: nn.Module, args: tuple[Tensor, ...], path: Path, role: str, cell: str,
                           spec: Any, pad_front: bool) -> None:
    """Export ``module`` (features in) with the legacy exporter, then put the features graph in front
    of it: the file takes audio, as the contract says."""
    from training.features import feature_graph

    contract = graph_spec(role, cell)
    in_names = ["features", *contract.input_names[1:]]
    dynamic = {t.name: t.dynamic_axes() for t in (*contract.inputs[1:], *contract.outputs)}
    dynamic["features"] = {0: "batch", 1: "frames"}
    part = path.with_suffix(".part.onnx")
    try:
        with warnings.catch_warnings(), export_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(part), dynamo=False, opset_version=OPSET, input_names=in_names,
                              output_names=contract.output_names, dynamic_axes=dynamic, do_constant_folding=True)
        body = onnx.load(str(part))
    finally:
        part.unlink(missing_ok=True)
    front = feature_graph(spec, pad_front=pad_front)
    front.ir_version = body.ir_version
    merged = onnx.compose.merge_models(front, body, io_map=[("features", "features")], doc_string=f"seqserve {role}")
    onnx.save(merged, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{path.name}: onnx.checker failed: {err}") from None
    check_graph_file(path, role, cell)
    check_op_types(path, ONNX_OP[cell])


def _speech_audio(rng: torch.Generator, lengths: list[int], width: int) -> Tensor:
    """A batch of noisy tone bursts (right-padded with zeros after each length)."""
    t = torch.arange(width, dtype=torch.float32)
    audio = torch.stack([0.3 * torch.sin(t * (0.05 + 0.3 * torch.rand(1, generator=rng))) for _ in lengths])
    audio = audio + 0.05 * torch.randn(len(lengths), width, generator=rng)
    return audio.masked_fill(t[None, :] >= torch.tensor(lengths)[:, None], 0.0)


def _compare_audio(path: Path, module: nn.Module, features, inputs: dict[str, Tensor], pad_front: bool) -> float:
    """Parity of an audio-in graph: onnxruntime on the file vs PyTorch on the features graph's output."""
    feats = torch.from_numpy(features(inputs["audio"].numpy(), pad_front))
    return compare(path, module, {"audio": feats, **{k: v for k, v in inputs.items() if k != "audio"}},
                   feed={k: v.numpy() for k, v in inputs.items()})


def export_speech(model: SpeechRecognizer, out: Path, rng: torch.Generator) -> dict[str, float]:
    from training.features import FeatureExtractor, FeatureSpec

    c = model.config
    spec = FeatureSpec(**c.features)
    features = FeatureExtractor(spec)
    worst: dict[str, float] = {}
    path = out / GRAPHS["recognize"]["acoustic"]
    graph = AcousticGraph(model).eval()
    frame = spec.hop * c.stack
    example = _speech_audio(rng, [12 * frame, 9 * frame + 7], 12 * frame)
    lens = torch.tensor([12 * frame, 9 * frame + 7])
    _export_with_features(graph, (torch.from_numpy(features(example.numpy())), lens), path, "acoustic", c.cell, spec, True)
    worst["acoustic"] = 0.0
    for lengths in ([5 * frame], [40 * frame + 3, 7 * frame, frame], [30 * frame, 31 * frame - 1]):
        audio = _speech_audio(rng, lengths, max(lengths))
        lens = torch.tensor(lengths)
        worst["acoustic"] = max(worst["acoustic"], _compare_audio(path, graph, features, {"audio": audio, "audio_len": lens}, True))
    if c.bidirectional:
        return worst
    step_path = out / OPTIONAL_GRAPHS["recognize"]["acoustic_step"]
    step = AcousticStepGraph(model).eval()
    n_states = len(state_names(c.cell))

    def step_inputs(batch: int, frames: int) -> dict[str, Tensor]:
        audio = _speech_audio(rng, [spec.context + frames * frame] * batch, spec.context + frames * frame)
        return dict(zip(graph_io("acoustic_step", c.cell)[0],
                        [audio, *random_state(rng, c.num_layers, batch, c.hidden_size, n_states)]))

    ex = step_inputs(2, 3)
    _export_with_features(step, (torch.from_numpy(features(ex["audio"].numpy(), False)), *list(ex.values())[1:]),
                          step_path, "acoustic_step", c.cell, spec, False)
    worst["acoustic_step"] = max(_compare_audio(step_path, step, features, step_inputs(b, k), False)
                                 for b, k in ((1, 1), (3, 5), (2, 17)))
    return worst


def speech_spec(cfg: Any) -> SpeechSpec:
    from training.data.speech import LABELS

    f = cfg.features
    return SpeechSpec(sample_rate=int(f["sample_rate"]), n_fft=int(f["n_fft"]), hop=int(f["hop"]), n_mels=int(f["n_mels"]),
                      f_min=float(f["f_min"]), f_max=float(f["f_max"]), stack=cfg.stack, labels=list(cfg.labels or LABELS),
                      blank=0, word_separator=cfg.word_separator, tail_ms=int(cfg.tail_ms))
