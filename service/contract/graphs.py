"""Each task's graphs: roles, input and output names, dtypes and dynamic axes, and one check of a graph against them.

forecast  ``forecast.onnx``
    in  ``window``     float32 (B, T, C)   raw values, any scale; T may be anything from
                                           ``forecast.min_history`` to ``forecast.window``
    out ``quantiles``  float32 (B, H, C, Q) in the input's scale, H = ``forecast.horizon``,
                                           Q = len(``forecast.quantiles``) (sorted, contains 0.5)
        ``season``     int64   (B,)         only when ``forecast.season_input``: each row's season
                                           length in steps (1 = none known)
    Per-window normalisation happens inside the graph, so one model serves any scale.

generate  ``lm.onnx``
    in  ``tokens``       int64   (B, T)     any T >= 1 (a whole prompt, or one new token)
        ``state_h``      float32 (L, B, H)  zeros to start
        ``state_c``      float32 (L, B, H)  only for LSTM-family cells (``state_names`` has "c")
    out ``logits``       float32 (B, T, V)
        ``state_h_out``  float32 (L, B, H)
        ``state_c_out``  float32 (L, B, H)  LSTM-family only

translate ``encoder.onnx``
    in  ``src``          int64   (B, S)     source ids, right-padded with ``special_tokens.pad``
        ``src_len``      int64   (B,)       true lengths; padding never changes results
    out ``memory``       float32 (B, S, M)  encoder outputs (M = 2 x encoder hidden when bidirectional)
        ``memory_keys``  float32 (B, S, A)  attention keys, precomputed once per sentence
        ``state_h``      float32 (L, B, H)  initial decoder state
        ``state_c``      float32 (L, B, H)  LSTM-family only
          ``decoder_step.onnx``
    in  ``prev_token``   int64   (B,)       ``special_tokens.bos`` at the first step
        ``state_h`` [, ``state_c``]        as returned by the encoder or the previous step
        ``memory``, ``memory_keys``        as returned by the encoder
        ``src_mask``     float32 (B, S)     1.0 for real source tokens, 0.0 for padding
    out ``log_probs``    float32 (B, V)     log-softmax over the target vocabulary
        ``state_h_out`` [, ``state_c_out``]
        ``attention``    float32 (B, S)     attention weights of this step (sum to 1 over real tokens)

recognize ``acoustic.onnx``
    in  ``audio``        float32 (B, N)     samples at ``speech.sample_rate`` in [-1, 1], right-padded with zeros
        ``audio_len``    int64   (B,)       true sample counts; padding never changes results
    out ``log_probs``    float32 (B, T, V)  CTC log-probabilities per model frame (``speech.labels``)
        ``frames``       int64   (B,)       valid frames: audio_len // (hop * stack)
          ``acoustic_step.onnx`` (optional: the bundle can stream; unidirectional models only)
    in  ``audio``        float32 (B, N)     ``speech.context`` samples before the chunk (zeros at the
                                           start of a stream), then k * hop * stack new samples
        ``state_h`` [, ``state_c``]        zeros to start, then as returned
    out ``log_probs``    float32 (B, k, V)
        ``state_h_out`` [, ``state_c_out``]
    Log-mel features are computed inside both graphs (ONNX STFT and MelWeightMatrix), the same way.

Batch (B) and length (T, S) axes are dynamic (symbolic) in every graph; training's export writes
graphs by these specs and checks them, the service checks every graph it loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .manifest import BundleError, state_names

FLOAT32, INT64 = "float32", "int64"
# dtype names as ONNX (TensorProto element types) and onnxruntime (NodeArg.type) spell them
ONNX_DTYPES = {1: FLOAT32, 7: INT64}
ORT_DTYPES = {"tensor(float)": FLOAT32, "tensor(int64)": INT64}
Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and axes; axes named in ``dynamic`` must be symbolic."""

    name: str
    dtype: str
    axes: tuple[str, ...]  # one label per axis, e.g. ("batch", "time", "channels")
    dynamic: tuple[int, ...]  # indices of the axes that vary between calls

    @property
    def rank(self) -> int:
        return len(self.axes)

    def dynamic_axes(self) -> dict[int, str]:
        """{axis: label} of the dynamic axes, as torch.onnx.export's ``dynamic_axes`` takes them."""
        return {a: self.axes[a] for a in self.dynamic}


@dataclass(frozen=True)
class GraphSpec:
    """What the graph of one role must take and return."""

    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def _t(name: str, dtype: str, axes: str, dynamic: tuple[int, ...]) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(axes.split()), dynamic)


def _states(cell: str, suffix: str = "") -> tuple[TensorSpec, ...]:
    return tuple(_t(f"state_{s}{suffix}", FLOAT32, "layers batch hidden", (1,)) for s in state_names(cell))


def graph_spec(role: str, cell: str, seasonal: bool = False) -> GraphSpec:
    """The contract of graph ``role`` (forecast, lm, encoder, decoder_step, acoustic, acoustic_step) for
    ``cell`` (a ``seasonal`` forecast graph also takes ``season``); raises BundleError."""
    if role == "forecast":
        season = (_t("season", INT64, "batch", (0,)),) if seasonal else ()
        return GraphSpec(role, (_t("window", FLOAT32, "batch time channels", (0, 1)), *season),
                         (_t("quantiles", FLOAT32, "batch horizon channels levels", (0,)),))
    if role == "lm":
        return GraphSpec(role, (_t("tokens", INT64, "batch time", (0, 1)), *_states(cell)),
                         (_t("logits", FLOAT32, "batch time vocab", (0, 1)), *_states(cell, "_out")))
    memory = (_t("memory", FLOAT32, "batch src_time memory", (0, 1)),
              _t("memory_keys", FLOAT32, "batch src_time attention", (0, 1)))
    if role == "encoder":
        return GraphSpec(role, (_t("src", INT64, "batch src_time", (0, 1)), _t("src_len", INT64, "batch", (0,))),
                         (*memory, *_states(cell)))
    if role == "decoder_step":
        return GraphSpec(
            role,
            (_t("prev_token", INT64, "batch", (0,)), *_states(cell), *memory,
             _t("src_mask", FLOAT32, "batch src_time", (0, 1))),
            (_t("log_probs", FLOAT32, "batch vocab", (0,)), *_states(cell, "_out"),
             _t("attention", FLOAT32, "batch src_time", (0, 1))),
        )
    if role == "acoustic":
        return GraphSpec(role, (_t("audio", FLOAT32, "batch samples", (0, 1)), _t("audio_len", INT64, "batch", (0,))),
                         (_t("log_probs", FLOAT32, "batch time labels", (0, 1)), _t("frames", INT64, "batch", (0,))))
    if role == "acoustic_step":
        return GraphSpec(role, (_t("audio", FLOAT32, "batch samples", (0, 1)), *_states(cell)),
                         (_t("log_probs", FLOAT32, "batch time labels", (0, 1)), *_states(cell, "_out")))
    raise BundleError(f"graph role {role!r} is not one of forecast, lm, encoder, decoder_step, acoustic, acoustic_step")


@dataclass(frozen=True)
class Found:
    """A tensor as a graph file declares it: name, dtype name (or the library's own spelling), dims."""

    name: str
    dtype: str
    dims: tuple[Dim, ...]


def check_graph(file: str, spec: GraphSpec, inputs: Sequence[Found], outputs: Sequence[Found],
                ordered: bool = False) -> None:
    """Raise BundleError unless the graph in ``file`` has exactly the spec's inputs and outputs with
    their dtypes, ranks and symbolic dynamic axes (``ordered``: also in the spec's order, as export
    writes them). One message shape for every caller: "<file> (<role> graph): <what>; the contract
    says <what>"."""
    where = f"{file} ({spec.role} graph)"
    for kind, want, got in (("inputs", spec.inputs, inputs), ("outputs", spec.outputs, outputs)):
        names = [t.name for t in got]
        want_names = [t.name for t in want]
        if (names if ordered else sorted(names)) != (want_names if ordered else sorted(want_names)):
            raise BundleError(f"{where}: {kind} are {names}; the contract says {want_names}")
        by_name = {t.name: t for t in got}
        for t in want:
            f = by_name[t.name]
            if f.dtype != t.dtype:
                raise BundleError(f"{where}: {t.name} has dtype {f.dtype}; the contract says {t.dtype}")
            if len(f.dims) != t.rank:
                raise BundleError(f"{where}: {t.name} has rank {len(f.dims)}; the contract says {t.rank} {t.axes}")
            for a in t.dynamic:
                if isinstance(f.dims[a], int):
                    raise BundleError(
                        f"{where}: {t.name} axis {a} ({t.axes[a]}) is fixed to {f.dims[a]}; the contract says dynamic")
