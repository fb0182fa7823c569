"""Recurrent layer for every cell: torch's fused kernels (or cells.StackedRNN) in training, ONNX's fused ops in export.

``Recurrent`` wraps nn.RNN / nn.LSTM / nn.GRU for "rnn", "lstm", "gru" (fast, packed sequences when
lengths are given) and ``cells.StackedRNN`` for "peephole" and "coupled". Inside ``export_mode()`` the
torch.onnx legacy (TorchScript) exporter sees each stack as ONE autograd Function whose symbolic
writes ONNX's fused LSTM / GRU / RNN operator per layer, with ``sequence_lens`` so padding never changes
results. Weight layouts (torch -> ONNX):

    LSTM   gate blocks i, f, g, o           -> i, o, f, c ; B = [bias_ih; bias_hh]
    peep.  weight_ch rows V^i, V^f, V^o     -> P = [V^i; V^o; V^f]
    coupl. blocks f, g, o, c = f c + (1-f) g -> input_forget=1: onnxruntime computes f = 1 - i, so the
           ONNX input block holds the NEGATED f block (σ(-a) = 1 - σ(a)) and the forget block zeros
    GRU    r, z, n                          -> z, r, h ; linear_before_reset=1
    RNN    as is; activations Tanh or Relu
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from service.contract import CELLS, LSTM_FAMILY
from training.cells import StackedRNN, set_forget_bias

State = Tensor | tuple[Tensor, Tensor]  # h (L*D, B, H), or (h, c) for the LSTM family

_TORCH_LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
ONNX_OP = {"rnn": "RNN", "lstm": "LSTM", "peephole": "LSTM", "coupled": "LSTM", "gru": "GRU"}
_EXPORTING: contextvars.ContextVar[bool] = contextvars.ContextVar("seqserve_onnx_export", default=False)


def check_cell(name: str) -> str:
    """Return ``name`` if it is a known cell; raises ValueError listing the valid names."""
    if name not in CELLS:
        raise ValueError(f"cell {name!r} is not one of {', '.join(CELLS)}")
    return name


@contextlib.contextmanager
def export_mode() -> Iterator[None]:
    """While active, Recurrent layers trace as ONNX fused LSTM/GRU/RNN ops (use with dynamo=False)."""
    token = _EXPORTING.set(True)
    try:
        yield
    finally:
        _EXPORTING.reset(token)


def is_exporting() -> bool:
    return _EXPORTING.get()


class Recurrent(nn.Module):
    """A (multi-layer, optionally bidirectional) recurrent stack of any cell in CELLS, batch-first."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        nonlinearity: str = "tanh",
        forget_bias: float | None = None,
    ) -> None:
        super().__init__()
        check_cell(cell)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity {nonlinearity!r} is not one of tanh, relu")
        if nonlinearity != "tanh" and cell != "rnn":
            raise ValueError(f"nonlinearity {nonlinearity!r} applies only to cell 'rnn', not {cell!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.nonlinearity = nonlinearity
        dropout = dropout if num_layers > 1 else 0.0  # torch warns about inter-layer dropout with 1 layer
        if cell in _TORCH_LAYERS:
            extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
            self.rnn: nn.Module = _TORCH_LAYERS[cell](
                input_size, hidden_size, num_layers, batch_first=True,
                dropout=dropout, bidirectional=bidirectional, **extra,
            )
        else:
            self.rnn = StackedRNN(cell, input_size, hidden_size, num_layers, bidirectional, dropout, nonlinearity)
        if forget_bias is not None and cell != "rnn":
            self.set_forget_bias(forget_bias)

    def set_forget_bias(self, value: float) -> None:
        """Bias every layer's forget gate (GRU: update gate z, the weight on h_{t-1}) to ``value``:
        bias_ih of that block = value, bias_hh = 0, so the gate starts near σ(value) and gradients
        survive long spans at initialisation (see training/cells.py set_forget_bias; torch's own
        init leaves the gate near 0.5). Raises ValueError for the plain RNN."""
        if self.cell == "rnn":
            raise ValueError("cell 'rnn' has no forget/update gate to bias")
        if isinstance(self.rnn, StackedRNN):
            for cell in self.rnn.cells:
                set_forget_bias(cell, value)
            return
        H = self.hidden_size  # torch's gate blocks: LSTM i, f, g, o; GRU r, z, n -> block 1 either way
        with torch.no_grad():
            for name, param in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    param[H : 2 * H].fill_(value)
                elif name.startswith("bias_hh"):
                    param[H : 2 * H].zero_()

    @property
    def has_cell_state(self) -> bool:
        return self.cell in LSTM_FAMILY

    @property
    def output_size(self) -> int:
        return self.num_directions * self.hidden_size

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """Zero state: h (L*D, B, H), or (h, c) for the LSTM family."""
        h = torch.zeros(self.num_layers * self.num_directions, batch_size, self.hidden_size, device=device)
        return (h, torch.zeros_like(h)) if self.has_cell_state else h

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, state: State | None = None
    ) -> tuple[Tensor, State]:
        """x (B, T, I); lengths (B,) int64 true lengths (padding after them never changes results);
        state as torch's (zeros when None). Returns y (B, T, D*H) (zeros at padded steps) and the
        final state (at each sequence's last real step)."""
        y, new_state = self._run(x, lengths, state)
        if is_exporting():
            y, new_state = self._as_onnx(x, lengths, state, y, new_state)
        return y, new_state

    def _run(self, x: Tensor, lengths: Tensor | None, state: State | None) -> tuple[Tensor, State]:
        if isinstance(self.rnn, StackedRNN):
            return self.rnn(x, state, lengths)
        if lengths is None:
            return self.rnn(x, state)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, new_state = self.rnn(packed, state)
        y, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, T, D*H)
        return y, new_state

    # ---- export -------------------------------------------------------------------------------

    def _cell_params(self, layer: int, direction: int) -> dict[str, Tensor | None]:
        """torch-layout parameters of one layer and direction."""
        if isinstance(self.rnn, StackedRNN):
            c = self.rnn.cells[layer * self.num_directions + direction]
            return {"w_ih": c.weight_ih, "w_hh": c.weight_hh, "b_ih": c.bias_ih, "b_hh": c.bias_hh,
                    "w_ch": getattr(c, "weight_ch", None)}
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        r = self.rnn
        return {"w_ih": getattr(r, "weight_ih" + sfx), "w_hh": getattr(r, "weight_hh" + sfx),
                "b_ih": getattr(r, "bias_ih" + sfx), "b_hh": getattr(r, "bias_hh" + sfx), "w_ch": None}

    def onnx_weights(self, layer: int) -> list[Tensor]:
        """ONNX W (D, G*H, I), R (D, G*H, H), B (D, 2*G*H) [, P (D, 3H)] of one layer, from torch ops."""
        H = self.hidden_size
        per_dir = []
        for d in range(self.num_directions):
            p = self._cell_params(layer, d)
            blocks = _reorder(self.cell, H)
            w = blocks(p["w_ih"])
            r = blocks(p["w_hh"])
            b = torch.cat([blocks(p["b_ih"]), blocks(p["b_hh"])])
            out = [w, r, b]
            if self.cell == "peephole":
                out.append(p["w_ch"][[0, 2, 1]].reshape(-1))  # rows V^i, V^f, V^o -> ONNX P order i, o, f
            per_dir.append(out)
        return [torch.stack(ts) for ts in zip(*per_dir)]

    def _as_onnx(self, x, lengths, state, y, new_state):
        if self.has_cell_state:
            h0, c0 = state if state is not None else (None, None)
            h_ref, c_ref = new_state
        else:
            h0, c0, h_ref, c_ref = state, None, new_state, None
        weights = [t for layer in range(self.num_layers) for t in self.onnx_weights(layer)]
        spec = _Spec(
            op=ONNX_OP[self.cell], layers=self.num_layers, directions=self.num_directions,
            hidden=self.hidden_size, peephole=self.cell == "peephole", input_forget=self.cell == "coupled",
            activation="Relu" if self.nonlinearity == "relu" else "Tanh",
        )
        outs = _FusedRecurrent.apply(spec.encode(), x, lengths, h0, c0, y, h_ref, c_ref, *weights)
        if self.has_cell_state:
            return outs[0], (outs[1], outs[2])
        return outs[0], outs[1]


def _reorder(cell: str, H: int):
    """Function mapping a torch-layout gate-stacked tensor (G*H, ...) to ONNX's gate order."""

    def block(t: Tensor, k: int) -> Tensor:
        return t[k * H : (k + 1) * H]

    if cell in ("lstm", "peephole"):  # i f g o -> i o f c
        return lambda t: torch.cat([block(t, 0), block(t, 3), block(t, 1), block(t, 2)])
    if cell == "coupled":  # f g o -> i=-f, o, f=0 (unused with input_forget), c=g
        return lambda t: torch.cat([-block(t, 0), block(t, 2), torch.zeros_like(block(t, 0)), block(t, 1)])
    if cell == "gru":  # r z n -> z r h
        return lambda t: torch.cat([block(t, 1), block(t, 0), block(t, 2)])
    return lambda t: t


class _Spec:
    """Static attributes of one exported stack, passed through autograd.Function as a string."""

    FIELDS = ("op", "layers", "directions", "hidden", "peephole", "input_forget", "activation")

    def __init__(self, op, layers, directions, hidden, peephole, input_forget, activation):
        self.op, self.layers, self.directions, self.hidden = op, int(layers), int(directions), int(hidden)
        self.peephole, self.input_forget, self.activation = bool(peephole), bool(input_forget), activation

    def encode(self) -> str:
        return ",".join(str(getattr(self, f)) for f in self.FIELDS)

    @classmethod
    def decode(cls, s: str) -> "_Spec":
        op, layers, dirs, hidden, peep, inf, act = s.split(",")
        return cls(op, layers, dirs, hidden, peep == "True", inf == "True", act)


class _FusedRecurrent(torch.autograd.Function):
    """Identity on the reference results (traced torch computation); symbolic = ONNX fused ops."""

    @staticmethod
    def forward(ctx, spec, x, lengths, h0, c0, y_ref, h_ref, c_ref, *weights):  # noqa: ARG004
        outs = [y_ref.clone(), h_ref.clone()]
        if c_ref is not None:
            outs.append(c_ref.clone())
        return tuple(outs)

    @staticmethod
    def symbolic(g, spec, x, lengths, h0, c0, y_ref, h_ref, c_ref, *weights):  # noqa: ARG004
        from torch.onnx.symbolic_opset9 import unused  # legacy exporter's "missing optional input"

        s = _Spec.decode(spec)
        D, per_layer = s.directions, 4 if s.peephole else 3
        lstm = s.op == "LSTM"

        def const(values):
            return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

        def layer_slice(t, layer):  # (L*D, B, H) -> (D, B, H)
            return g.op("Slice", t, const([layer * D]), const([(layer + 1) * D]), const([0]))

        seq_lens = unused(g) if lengths is None else g.op("Cast", lengths, to_i=6)  # int32
        attrs = {"hidden_size_i": s.hidden}
        if D == 2:
            attrs["direction_s"] = "bidirectional"
        if s.op == "GRU":
            attrs["linear_before_reset_i"] = 1
        if s.op == "RNN":
            attrs["activations_s"] = [s.activation] * D
        if s.input_forget:
            attrs["input_forget_i"] = 1

        X = g.op("Transpose", x, perm_i=[1, 0, 2])  # (T, B, I)
        hs, cs = [], []
        Y = None
        for layer in range(s.layers):
            W, R, B = weights[layer * per_layer : layer * per_layer + 3]
            inputs = [X, W, R, B, seq_lens, unused(g) if h0 is None else layer_slice(h0, layer)]
            if lstm:
                inputs.append(unused(g) if c0 is None else layer_slice(c0, layer))
                if s.peephole:
                    inputs.append(weights[layer * per_layer + 3])
            outs = g.op(s.op, *inputs, outputs=3 if lstm else 2, **attrs)
            Y = outs[0]  # (T, D, B, H)
            hs.append(outs[1])  # (D, B, H)
            if lstm:
                cs.append(outs[2])
            if layer + 1 < s.layers:
                X = g.op("Reshape", g.op("Transpose", Y, perm_i=[0, 2, 1, 3]), const([0, 0, -1]))  # (T, B, D*H)
        y = g.op("Reshape", g.op("Transpose", Y, perm_i=[2, 0, 1, 3]), const([0, 0, -1]))  # (B, T, D*H)
        h = hs[0] if len(hs) == 1 else g.op("Concat", *hs, axis_i=0)  # (L*D, B, H)
        if not lstm:
            return y, h
        c = cs[0] if len(cs) == 1 else g.op("Concat", *cs, axis_i=0)
        return y, h, c
