"""Recurrent cells written from THEORY.md (RNN, LSTM, peephole, coupled, GRU) and a stacked/bidirectional runner.

Parameter names, shapes and gate order follow torch.nn.RNNCell/LSTMCell/GRUCell, so weights copy
one-to-one from (and compare against) torch's layers, and the ONNX exporter can rely on the layout:

    RNNCell   weight_ih (H, I)   weight_hh (H, H)   bias_ih (H)   bias_hh (H)
    LSTMCell  weight_ih (4H, I)  weight_hh (4H, H)  bias_ih (4H)  bias_hh (4H)   row blocks i, f, g, o
              peephole: + weight_ch (3, H), rows V^i, V^f, V^o
              coupled:  weight_ih (3H, I) ... row blocks f, g, o (no input gate: i = 1 - f)
    GRUCell   weight_ih (3H, I)  weight_hh (3H, H)  bias_ih (3H)  bias_hh (3H)   row blocks r, z, n

THEORY writes U for the input weights and W for the recurrent ones, with one bias b per gate;
here U = weight_ih, W = weight_hh and b = bias_ih + bias_hh (torch keeps two biases per gate).
Every cell splits its step in two: ``project_input`` (U x_t + bias_ih, which StackedRNN computes for
all time steps in one matrix product) and ``step`` (the recurrence proper).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.contract import CELLS, LSTM_FAMILY

State = Tensor | tuple[Tensor, Tensor]  # h (B, H), or (h, c) for the LSTM family
NONLINEARITIES = ("tanh", "relu")


def is_lstm_family(name: str) -> bool:
    """True for cells whose state is (h, c): lstm, peephole, coupled."""
    return name in LSTM_FAMILY


class _Cell(nn.Module):
    """Shared parameter set-up: weight_ih (G*H, I), weight_hh (G*H, H), biases (G*H) for G gate blocks."""

    def __init__(self, input_size: int, hidden_size: int, gates: int, bias: bool) -> None:
        super().__init__()
        for key, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{key} must be a positive integer, got {v!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden_size, input_size))  # U, gate blocks stacked
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden_size, hidden_size))  # W, gate blocks stacked
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)

    def reset_parameters(self) -> None:
        # torch's initialisation for every recurrent parameter: uniform(-1/sqrt(H), 1/sqrt(H)).
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -k, k)

    def project_input(self, x: Tensor) -> Tensor:
        """U x + bias_ih for every gate block: (..., I) -> (..., G*H)."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def recurrent(self, h: Tensor) -> Tensor:
        """W h + bias_hh for every gate block: (B, H) -> (B, G*H)."""
        return F.linear(h, self.weight_hh, self.bias_hh)

    def forward(self, x: Tensor, state: State) -> State:
        """One time step: x (B, I) and the previous state -> the new state."""
        return self.step(self.project_input(x), state)

    def step(self, ux: Tensor, state: State) -> State:  # pragma: no cover - overridden
        raise NotImplementedError


class RNNCell(_Cell):
    """Vanilla RNN: h_t = f(U x_t + W h_{t-1} + b), f = tanh or relu."""

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bias: bool = True) -> None:
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity {nonlinearity!r} is not one of {', '.join(NONLINEARITIES)}")
        super().__init__(input_size, hidden_size, 1, bias)
        self.nonlinearity = nonlinearity
        self.reset_parameters()

    def step(self, ux: Tensor, h: Tensor) -> Tensor:
        """ux = U x_t + bias_ih (B, H); h = h_{t-1} (B, H) -> h_t (B, H)."""
        a = ux + self.recurrent(h)  # U x_t + W h_{t-1} + b
        return torch.tanh(a) if self.nonlinearity == "tanh" else torch.relu(a)  # h_t = f(a)


class LSTMCell(_Cell):
    """LSTM, optionally with diagonal peephole connections or coupled input and forget gates."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        peephole: bool = False,
        coupled: bool = False,
        bias: bool = True,
    ) -> None:
        if peephole and coupled:
            raise ValueError(
                "LSTMCell: peephole=True with coupled=True is not supported; choose one variant "
                "(cells 'peephole' and 'coupled' are separate)"
            )
        super().__init__(input_size, hidden_size, 3 if coupled else 4, bias)
        self.peephole = peephole
        self.coupled = coupled
        if peephole:
            self.weight_ch = nn.Parameter(torch.empty(3, hidden_size))  # rows V^i, V^f, V^o (diagonal)
        else:
            self.register_parameter("weight_ch", None)
        self.reset_parameters()

    def step(self, ux: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """ux = U x_t + bias_ih (B, G*H); state = (h_{t-1}, c_{t-1}), each (B, H) -> (h_t, c_t)."""
        h_prev, c_prev = state
        a = ux + self.recurrent(h_prev)  # U x_t + W h_{t-1} + b, every gate block at once
        if self.coupled:
            a_f, a_g, a_o = a.chunk(3, dim=1)
            f = torch.sigmoid(a_f)  # f_t = σ(U^f x_t + W^f h_{t-1} + b^f)
            g = torch.tanh(a_g)  # g_t = tanh(U^g x_t + W^g h_{t-1} + b^g)
            c = f * c_prev + (1.0 - f) * g  # c_t = f_t ∘ c_{t-1} + (1 − f_t) ∘ g_t
            o = torch.sigmoid(a_o)  # o_t = σ(U^o x_t + W^o h_{t-1} + b^o)
            return o * torch.tanh(c), c  # h_t = o_t ∘ tanh(c_t)
        a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
        if self.peephole:
            v_i, v_f, v_o = self.weight_ch  # V^i, V^f, V^o, each (H,)
            a_i = a_i + v_i * c_prev  # ... + V^i c_{t-1}
            a_f = a_f + v_f * c_prev  # ... + V^f c_{t-1}
        i = torch.sigmoid(a_i)  # i_t = σ(U^i x_t + W^i h_{t-1} [+ V^i c_{t-1}] + b^i)
        f = torch.sigmoid(a_f)  # f_t = σ(U^f x_t + W^f h_{t-1} [+ V^f c_{t-1}] + b^f)
        g = torch.tanh(a_g)  # g_t = tanh(U^g x_t + W^g h_{t-1} + b^g)
        c = f * c_prev + i * g  # c_t = f_t ∘ c_{t-1} + i_t ∘ g_t
        if self.peephole:
            a_o = a_o + v_o * c  # ... + V^o c_t (the output gate looks at the NEW cell state)
        o = torch.sigmoid(a_o)  # o_t = σ(U^o x_t + W^o h_{t-1} [+ V^o c_t] + b^o)
        return o * torch.tanh(c), c  # h_t = o_t ∘ tanh(c_t)


class GRUCell(_Cell):
    """GRU in torch's (and ONNX linear_before_reset=1) form.

    Mapping to THEORY's form: torch's update gate z is THEORY's 1 − z (σ(−a) = 1 − σ(a), so it is
    the same family with the gate's weights negated), which is why the last line reads
    h' = (1 − z) ∘ n + z ∘ h here and h_t = (1 − z_t) ∘ h_{t-1} + z_t ∘ g_t there; n is THEORY's
    candidate g. The reset gate is applied AFTER the recurrent product, r ∘ (W^n h + b_hn), where
    THEORY writes W^g (r ∘ h): a (slightly) different function, the one torch and ONNX
    (linear_before_reset=1) compute.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__(input_size, hidden_size, 3, bias)
        self.reset_parameters()

    def step(self, ux: Tensor, h: Tensor) -> Tensor:
        """ux = U x_t + bias_ih (B, 3H); h = h_{t-1} (B, H) -> h_t (B, H)."""
        ux_r, ux_z, ux_n = ux.chunk(3, dim=1)  # U^r x + b_ir, U^z x + b_iz, U^n x + b_in
        wh_r, wh_z, wh_n = self.recurrent(h).chunk(3, dim=1)  # W^r h + b_hr, W^z h + b_hz, W^n h + b_hn
        r = torch.sigmoid(ux_r + wh_r)  # r_t = σ(W^r h_{t-1} + U^r x_t + b^r)
        z = torch.sigmoid(ux_z + wh_z)  # z_t = σ(W^z h_{t-1} + U^z x_t + b^z)   (torch's z = THEORY's 1 − z)
        n = torch.tanh(ux_n + r * wh_n)  # n_t = tanh(U^n x_t + b_in + r_t ∘ (W^n h_{t-1} + b_hn))
        return (1.0 - z) * n + z * h  # h_t = (1 − z_t) ∘ n_t + z_t ∘ h_{t-1}


def set_forget_bias(cell: nn.Module, value: float) -> None:
    """Bias the gate that keeps the old state towards remembering: total bias ``value`` on it.

    LSTM family: the forget gate f (so f ≈ σ(value) at the start); GRU: torch's update gate z, the
    weight on h_{t-1}. bias_ih of that block is set to ``value`` and bias_hh to 0. A positive value
    (1.0: Gers et al. 2000, Jozefowicz et al. 2015, Keras' unit_forget_bias) keeps gradients alive
    over long spans at initialisation; torch's own init leaves f ≈ 0.5. Raises ValueError for a cell
    without such a gate (RNNCell) or without biases.
    """
    if isinstance(cell, LSTMCell):
        block = 0 if cell.coupled else 1  # coupled order f, g, o; otherwise i, f, g, o
    elif isinstance(cell, GRUCell):
        block = 1  # r, z, n
    else:
        raise ValueError(f"{type(cell).__name__} has no forget/update gate to bias")
    if cell.bias_ih is None:
        raise ValueError(f"{type(cell).__name__} was built with bias=False; there is no bias to set")
    H = cell.hidden_size
    with torch.no_grad():
        cell.bias_ih[block * H : (block + 1) * H].fill_(value)
        cell.bias_hh[block * H : (block + 1) * H].zero_()


def make_cell(name: str, input_size: int, hidden_size: int, **kw) -> _Cell:
    """Build the cell called ``name`` (one of service.contract.CELLS); "rnn" accepts nonlinearity=.

    Raises ValueError for an unknown name, listing the valid ones.
    """
    if name == "rnn":
        return RNNCell(input_size, hidden_size, **kw)
    if name == "lstm":
        return LSTMCell(input_size, hidden_size, **kw)
    if name == "peephole":
        return LSTMCell(input_size, hidden_size, peephole=True, **kw)
    if name == "coupled":
        return LSTMCell(input_size, hidden_size, coupled=True, **kw)
    if name == "gru":
        return GRUCell(input_size, hidden_size, **kw)
    raise ValueError(f"cell {name!r} is not one of {', '.join(CELLS)}")


class StackedRNN(nn.Module):
    """Layers of any cell, optionally bidirectional, batch-first, with torch's state layout.

    ``self.cells[layer * num_directions + direction]`` (direction 1 runs in reverse). Layer k > 0 reads
    the concatenated outputs of layer k − 1; dropout (training only) sits between layers, as in torch.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        nonlinearity: str = "tanh",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout {dropout!r} must be in [0, 1)")
        if nonlinearity != "tanh" and cell != "rnn":
            raise ValueError(f"nonlinearity {nonlinearity!r} applies only to cell 'rnn', not {cell!r}")
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.dropout = dropout
        self.nonlinearity = nonlinearity
        extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.cells = nn.ModuleList(
            make_cell(cell, input_size if layer == 0 else hidden_size * self.num_directions, hidden_size, bias=bias, **extra)
            for layer in range(num_layers)
            for _ in range(self.num_directions)
        )

    @property
    def has_cell_state(self) -> bool:
        return is_lstm_family(self.cell)

    def forward(
        self, x: Tensor, state: State | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """Run the stack over x (B, T, I).

        state: h (L*D, B, H), or (h, c) for the LSTM family; zeros when None.
        lengths: (B,) int64 true lengths, each in [0, T]; steps t >= length leave the state as it is
        and output zeros, the reverse direction starts at each sequence's last real step, and the
        returned state is the one at the last real step (torch's pack_padded_sequence, ONNX's
        sequence_lens).
        Returns y (B, T, D*H) and the final state in the layout of ``state``.
        """
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"x must have shape (B, T, {self.input_size}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        if state is None:
            zeros = x.new_zeros(LD, B, H)
            h0, c0 = zeros, (zeros if self.has_cell_state else None)
        elif self.has_cell_state:
            h0, c0 = state
        else:
            h0, c0 = state, None
        for name, s in (("state h", h0), ("state c", c0)):
            if s is not None and tuple(s.shape) != (LD, B, H):
                raise ValueError(f"{name} must have shape {(LD, B, H)}, got {tuple(s.shape)}")
        mask = None  # (T, B, 1) bool: step t is real for sequence b
        if lengths is not None:
            if tuple(lengths.shape) != (B,):
                raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
            if bool((lengths < 0).any()) or bool((lengths > T).any()):
                raise ValueError(f"lengths must be in [0, {T}], got {lengths.tolist()}")
            steps = torch.arange(T, device=x.device)
            mask = (steps[:, None] < lengths.to(x.device)[None, :]).unsqueeze(-1)

        layer_input = x  # (B, T, I) for layer 0, (B, T, D*H) above
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0.0:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
            outputs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                cell = self.cells[k]
                s: State = (h0[k], c0[k]) if self.has_cell_state else h0[k]
                ux = cell.project_input(layer_input)  # (B, T, G*H): U x_t + bias_ih for every t at once
                ys: list[Tensor] = [None] * T  # type: ignore[list-item]
                order = range(T - 1, -1, -1) if direction == 1 else range(T)
                for t in order:
                    new = cell.step(ux[:, t], s)
                    if mask is not None:  # padded step: keep the old state, output zeros
                        m = mask[t]  # (B, 1)
                        if self.has_cell_state:
                            new = (torch.where(m, new[0], s[0]), torch.where(m, new[1], s[1]))
                        else:
                            new = torch.where(m, new, s)
                    s = new
                    h = s[0] if self.has_cell_state else s  # (B, H)
                    ys[t] = h if mask is None else h * mask[t]
                outputs.append(torch.stack(ys, dim=1))  # (B, T, H)
                if self.has_cell_state:
                    h_n.append(s[0])
                    c_n.append(s[1])
                else:
                    h_n.append(s)
            layer_input = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]  # (B, T, D*H)
        h_out = torch.stack(h_n)  # (L*D, B, H)
        if self.has_cell_state:
            return layer_input, (h_out, torch.stack(c_n))
        return layer_input, h_out


_TORCH_CLASS = {"rnn": nn.RNN, "lstm": nn.LSTM, "peephole": nn.LSTM, "gru": nn.GRU}


@torch.no_grad()
def copy_from_torch(stacked: StackedRNN, module: nn.RNNBase) -> StackedRNN:
    """Copy torch's weight_ih_l{k}[_reverse] etc. into ``stacked``'s cells; returns ``stacked``.

    nn.RNN -> "rnn" (same nonlinearity), nn.LSTM -> "lstm" (or "peephole", with V set to zero),
    nn.GRU -> "gru". Raises ValueError when the kinds or sizes do not match; "coupled" has no torch twin.
    """
    want = _TORCH_CLASS.get(stacked.cell)
    if want is None or type(module) is not want:
        raise ValueError(f"cannot copy a torch {type(module).__name__} into a StackedRNN of cell {stacked.cell!r}")
    if isinstance(module, nn.LSTM) and module.proj_size:
        raise ValueError(f"torch LSTM proj_size {module.proj_size} is not supported (must be 0)")
    if isinstance(module, nn.RNN) and module.nonlinearity != stacked.nonlinearity:
        raise ValueError(f"torch RNN nonlinearity {module.nonlinearity!r} != {stacked.nonlinearity!r}")
    for key in ("input_size", "hidden_size", "num_layers", "bidirectional", "bias"):
        theirs = getattr(module, key)
        ours = stacked.cells[0].bias if key == "bias" else getattr(stacked, key)
        if theirs != ours:
            raise ValueError(f"{key} differs: torch module has {theirs!r}, StackedRNN has {ours!r}")
    for layer in range(stacked.num_layers):
        for direction in range(stacked.num_directions):
            cell = stacked.cells[layer * stacked.num_directions + direction]
            suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                if getattr(cell, name) is not None:
                    getattr(cell, name).copy_(getattr(module, name + suffix))
            if getattr(cell, "weight_ch", None) is not None:
                cell.weight_ch.zero_()
    return stacked
