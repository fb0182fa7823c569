"""Log-mel features as an ONNX graph: the one definition training runs (onnxruntime) and every speech bundle embeds.

audio (B, N) float32 -> [Pad] -> HannWindow · STFT -> |.|^2 -> MelWeightMatrix -> Log -> features (B, F, M)

Training computes its features by running this very graph, and export prepends it to the acoustic
model, so the filters, window and framing of serving cannot drift from training's. Framing is
causal and without centring: feature frame f covers samples [f*hop - (n_fft - hop), f*hop + hop).
The offline graph pads ``n_fft - hop`` zeros in front, so N samples give floor(N / hop) frames; the
streaming graph gets those samples from the server instead (the end of the previous chunk, zeros at
the start), so a stream cut into chunks gives the frames of the whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 17  # STFT, HannWindow and MelWeightMatrix need 17
LOG_FLOOR = 1e-6  # added to the mel energies before the log: silence at -13.8, not -inf


@dataclass(frozen=True)
class FeatureSpec:
    """How audio becomes features; stored in each speech manifest."""

    sample_rate: int = 8000  # Hz the model hears; requests are resampled to it
    n_fft: int = 256  # window and DFT length (samples): 32 ms at 8 kHz
    hop: int = 80  # samples between feature frames: 10 ms
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 4000.0

    @property
    def context(self) -> int:
        """Samples before a chunk that its first frame also reads."""
        return self.n_fft - self.hop

    def frames(self, samples: int) -> int:
        """Feature frames of ``samples`` samples (offline graph)."""
        return samples // self.hop

    def to_dict(self) -> dict:
        return asdict(self)


def feature_graph(spec: FeatureSpec, pad_front: bool = True, output: str = "features") -> onnx.ModelProto:
    """The features graph: input ``audio`` float32 (B, N) -> ``output`` float32 (B, F, n_mels).

    pad_front: prepend spec.context zeros (offline); False: the caller supplies them (streaming
    chunks carry the previous chunk's last spec.context samples)."""
    s = spec
    nodes, inits = [], []

    def const(name: str, value, dtype=np.int64) -> str:
        inits.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    signal = "audio"  # internal names carry "mel/": the graph is merged into exported models
    if pad_front:
        nodes.append(helper.make_node("Pad", ["audio", const("mel/pads", [0, s.context, 0, 0])], ["mel/padded"]))
        signal = "mel/padded"
    nodes += [
        helper.make_node("Unsqueeze", [signal, const("mel/last_axis", [2])], ["mel/signal"]),  # (B, N, 1): real
        helper.make_node("HannWindow", [const("mel/n_fft", s.n_fft)], ["mel/window"], periodic=1),
        helper.make_node("STFT", ["mel/signal", const("mel/hop", s.hop), "mel/window", "mel/n_fft"], ["mel/spectrum"], onesided=1),
        helper.make_node("ReduceSumSquare", ["mel/spectrum"], ["mel/power"], axes=[3], keepdims=0),  # axes: an attribute before opset 18
        helper.make_node("MelWeightMatrix", [const("mel/n_mels", s.n_mels), "mel/n_fft", const("mel/rate", s.sample_rate),
                                             const("mel/f_min", s.f_min, np.float32), const("mel/f_max", s.f_max, np.float32)],
                         ["mel/mel_weights"]),
        helper.make_node("MatMul", ["mel/power", "mel/mel_weights"], ["mel/mel"]),
        helper.make_node("Add", ["mel/mel", const("mel/floor", LOG_FLOOR, np.float32)], ["mel/floored"]),
        helper.make_node("Log", ["mel/floored"], [output]),
    ]
    graph = helper.make_graph(
        nodes, "log_mel",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", "frames", s.n_mels])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


class FeatureExtractor:
    """Runs the offline features graph on onnxruntime (one thread): what training and evaluation see."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec

    @cached_property
    def _sessions(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        return {pad: ort.InferenceSession(feature_graph(self.spec, pad).SerializeToString(), opts,
                                          providers=["CPUExecutionProvider"]) for pad in (True, False)}

    def __call__(self, audio: np.ndarray, pad_front: bool = True) -> np.ndarray:
        """audio float32 (B, N) -> features float32 (B, F, n_mels): F = N // hop (pad_front), or
        (N - context) // hop when the audio starts with its context samples (a streaming chunk)."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        least = self.spec.hop if pad_front else self.spec.n_fft
        if audio.ndim != 2 or audio.shape[1] < least:
            raise ValueError(f"audio must be (B, N) with N >= {least}, got {audio.shape}")
        return self._sessions[pad_front].run(None, {"audio": audio})[0]

    def __getstate__(self):  # the session is rebuilt where needed (data loader workers)
        return {"spec": self.spec}

    def __setstate__(self, state) -> None:
        self.spec = state["spec"]
