"""training.cells against torch's recurrent layers and against per-gate reference implementations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from service.contract import CELLS
from training.cells import (
    GRUCell,
    LSTMCell,
    RNNCell,
    StackedRNN,
    copy_from_torch,
    is_lstm_family,
    make_cell,
    set_forget_bias,
)

# Everything runs in float64: our cells and torch's kernels then agree to rounding (~1e-16 per op),
# so 1e-10 leaves five orders of magnitude for accumulation over a few steps and layers while still
# catching any wrong gate, order or bias (those show up at 1e-2 or more).
TOL = 1e-10
B, T, I, H = 3, 6, 4, 5
LENGTHS = torch.tensor([6, 2, 4])  # unsorted, one full-length, one short

TORCH_LAYER = {"rnn_tanh": nn.RNN, "rnn_relu": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pair(kind: str, num_layers: int, bidirectional: bool) -> tuple[StackedRNN, nn.RNNBase]:
    torch.manual_seed(1234)
    extra = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    cell = kind[:3] if kind.startswith("rnn") else kind
    ref = TORCH_LAYER[kind](I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=True, **extra)
    ours = StackedRNN(cell, I, H, num_layers=num_layers, bidirectional=bidirectional, **extra)
    ref, ours = ref.double(), ours.double()
    copy_from_torch(ours, ref)
    return ours, ref


def _flat(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize(
    "kind,num_layers,bidirectional,use_lengths",
    list(itertools.product(TORCH_LAYER, (1, 2), (False, True), (False, True))),
)
def test_stacked_matches_torch(kind, num_layers, bidirectional, use_lengths):
    ours, ref = _pair(kind, num_layers, bidirectional)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(B, T, I, generator=g, dtype=torch.float64)
    D = 2 if bidirectional else 1
    h0 = torch.randn(num_layers * D, B, H, generator=g, dtype=torch.float64)
    state0 = (h0, torch.randn_like(h0)) if kind == "lstm" else h0

    y_ours, s_ours = ours(x, state0, lengths=LENGTHS if use_lengths else None)
    if use_lengths:
        packed = nn.utils.rnn.pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
        y_packed, s_ref = ref(packed, state0)
        y_ref, _ = nn.utils.rnn.pad_packed_sequence(y_packed, batch_first=True, total_length=T)
    else:
        y_ref, s_ref = ref(x, state0)

    assert y_ours.shape == (B, T, D * H)
    assert type(s_ours) is type(s_ref)
    torch.testing.assert_close(y_ours, y_ref, rtol=0, atol=TOL)
    for a, b in zip(_flat(s_ours), _flat(s_ref), strict=True):
        assert a.shape == (num_layers * D, B, H)
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    if use_lengths:  # padded steps output exact zeros
        for b_, n in enumerate(LENGTHS.tolist()):
            assert torch.all(y_ours[b_, n:] == 0)

    # Gradients of a loss touching every output and final state, w.r.t. every parameter.
    w = torch.randn(y_ours.shape, generator=g, dtype=torch.float64)
    loss_ours = (y_ours * w).sum() + sum((s * s).sum() for s in _flat(s_ours))
    loss_ref = (y_ref * w).sum() + sum((s * s).sum() for s in _flat(s_ref))
    loss_ours.backward()
    loss_ref.backward()
    for layer in range(num_layers):
        for direction in range(D):
            cell = ours.cells[layer * D + direction]
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                torch.testing.assert_close(
                    getattr(cell, name).grad, getattr(ref, name + suffix).grad, rtol=0, atol=TOL,
                    msg=lambda m, n=name + suffix: f"grad of {n}: {m}",
                )


def test_lengths_make_padding_irrelevant():
    """Whatever sits in the padded steps, outputs and final state stay the same."""
    ours, _ = _pair("lstm", 2, True)
    x = torch.randn(B, T, I, dtype=torch.float64)
    noisy = x.clone()
    for b_, n in enumerate(LENGTHS.tolist()):
        noisy[b_, n:] = 1e3
    y1, (h1, c1) = ours(x, lengths=LENGTHS)
    y2, (h2, c2) = ours(noisy, lengths=LENGTHS)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(h1, h2, rtol=0, atol=0)
    torch.testing.assert_close(c1, c2, rtol=0, atol=0)


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    m = StackedRNN("gru", I, H, num_layers=2, dropout=0.5).double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    m.eval()
    y_eval_1, _ = m(x)
    y_eval_2, _ = m(x)
    torch.testing.assert_close(y_eval_1, y_eval_2, rtol=0, atol=0)
    m.train()
    y_train, _ = m(x)
    assert (y_train - y_eval_1).abs().max() > 1e-3
    one = StackedRNN("gru", I, H, num_layers=1, dropout=0.5).double().train()
    torch.testing.assert_close(one(x)[0], one(x)[0], rtol=0, atol=0)  # no layer above: no dropout


# ---------------------------------------------------------------- peephole and coupled, from THEORY


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _numpy_lstm_step(x, h, c, Wi, Wh, bi, bh, peephole=None, coupled=False):
    """THEORY.md's equations, one gate at a time, in numpy (independent of training.cells)."""
    n = h.shape[1]
    U = {k: Wi[j * n : (j + 1) * n] for j, k in enumerate("fgo" if coupled else "ifgo")}
    W = {k: Wh[j * n : (j + 1) * n] for j, k in enumerate("fgo" if coupled else "ifgo")}
    b = {k: bi[j * n : (j + 1) * n] + bh[j * n : (j + 1) * n] for j, k in enumerate("fgo" if coupled else "ifgo")}
    V = {"i": 0.0, "f": 0.0, "o": 0.0} if peephole is None else dict(zip("ifo", peephole))
    f = _sigmoid(x @ U["f"].T + h @ W["f"].T + V["f"] * c + b["f"])
    g = np.tanh(x @ U["g"].T + h @ W["g"].T + b["g"])
    if coupled:
        c_new = f * c + (1.0 - f) * g
    else:
        i = _sigmoid(x @ U["i"].T + h @ W["i"].T + V["i"] * c + b["i"])
        c_new = f * c + i * g
    o = _sigmoid(x @ U["o"].T + h @ W["o"].T + V["o"] * c_new + b["o"])
    return o * np.tanh(c_new), c_new


@pytest.mark.parametrize("variant", ["peephole", "coupled", "lstm"])
def test_lstm_variants_match_per_gate_numpy(variant):
    torch.manual_seed(3)
    cell = make_cell(variant, I, H).double()
    with torch.no_grad():
        if cell.weight_ch is not None:
            cell.weight_ch.normal_(0.0, 1.0)  # large enough that a wrong peephole would show
    rng = np.random.default_rng(0)
    h, c = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    th, tc = torch.from_numpy(h), torch.from_numpy(c)
    for _ in range(4):
        x = rng.normal(size=(B, I))
        p = {k: v.detach().numpy() for k, v in cell.named_parameters()}
        h, c = _numpy_lstm_step(
            x, h, c, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"],
            peephole=p.get("weight_ch"), coupled=variant == "coupled",
        )
        th, tc = cell(torch.from_numpy(x), (th, tc))
        np.testing.assert_allclose(th.detach().numpy(), h, rtol=0, atol=TOL)
        np.testing.assert_allclose(tc.detach().numpy(), c, rtol=0, atol=TOL)


def test_peephole_with_zero_v_is_plain_lstm():
    torch.manual_seed(4)
    ref = nn.LSTM(I, H, num_layers=2, batch_first=True).double()
    peep = copy_from_torch(StackedRNN("peephole", I, H, num_layers=2).double(), ref)  # V = 0
    assert all(torch.all(c.weight_ch == 0) for c in peep.cells)
    x = torch.randn(B, T, I, dtype=torch.float64)
    y_ref, (h_ref, c_ref) = ref(x)
    y, (h, c) = peep(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=TOL)
    torch.testing.assert_close(c, c_ref, rtol=0, atol=TOL)
    with torch.no_grad():
        peep.cells[0].weight_ch.fill_(0.5)
    assert (peep(x)[0] - y_ref).abs().max() > 1e-3  # and the peepholes do act when V != 0


def test_coupled_is_lstm_with_input_gate_one_minus_forget():
    """A plain LSTM whose input-gate pre-activation is −(forget pre-activation) has i = 1 − f."""
    torch.manual_seed(5)
    coupled = LSTMCell(I, H, coupled=True).double()
    plain = LSTMCell(I, H).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            f, g, o = getattr(coupled, name).chunk(3, dim=0)
            getattr(plain, name).copy_(torch.cat([-f, f, g, o]))  # σ(−a) = 1 − σ(a)
    x = torch.randn(T, B, I, dtype=torch.float64)
    s1 = s2 = (torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64))
    for t in range(T):
        s1, s2 = coupled(x[t], s1), plain(x[t], s2)
        torch.testing.assert_close(s1[0], s2[0], rtol=0, atol=TOL)
        torch.testing.assert_close(s1[1], s2[1], rtol=0, atol=TOL)


# ---------------------------------------------------------------- cells one step vs torch's cells


@pytest.mark.parametrize("ours_cls,ref_cls,kw", [
    (RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
    (RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
    (LSTMCell, nn.LSTMCell, {}),
    (GRUCell, nn.GRUCell, {}),
])
def test_cell_layout_and_step_match_torch_cell(ours_cls, ref_cls, kw):
    torch.manual_seed(6)
    ref = ref_cls(I, H, **kw).double()
    ours = ours_cls(I, H, **kw).double()
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    ours.load_state_dict(ref.state_dict())
    x, h = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    if ours_cls is LSTMCell:
        c = torch.randn(B, H, dtype=torch.float64)
        for a, b in zip(ours(x, (h, c)), ref(x, (h, c)), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    else:
        torch.testing.assert_close(ours(x, h), ref(x, h), rtol=0, atol=TOL)


def test_layouts_and_init_range():
    assert make_cell("peephole", I, H).weight_ch.shape == (3, H)
    coupled = make_cell("coupled", I, H)
    assert coupled.weight_ih.shape == (3 * H, I) and coupled.weight_hh.shape == (3 * H, H)
    assert coupled.bias_ih.shape == (3 * H,)
    big = make_cell("lstm", 8, 400)
    k = 1 / 400**0.5
    for p in big.parameters():
        assert p.abs().max() <= k and p.abs().max() > 0.9 * k  # uniform(−1/√H, 1/√H), like torch


def test_state_layout_per_cell():
    for name in CELLS:
        m = StackedRNN(name, I, H, num_layers=2, bidirectional=True)
        assert len(m.cells) == 4
        y, state = m(torch.randn(B, T, I))
        assert y.shape == (B, T, 2 * H)
        assert isinstance(state, tuple) == is_lstm_family(name)
        for s in _flat(state):
            assert s.shape == (4, B, H)


def test_set_forget_bias():
    lstm, coupled, gru = LSTMCell(I, H), LSTMCell(I, H, coupled=True), GRUCell(I, H)
    for cell, block in ((lstm, 1), (coupled, 0), (gru, 1)):
        set_forget_bias(cell, 1.0)
        total = (cell.bias_ih + cell.bias_hh)[block * H : (block + 1) * H]
        torch.testing.assert_close(total, torch.ones(H))
    with pytest.raises(ValueError, match="RNNCell has no forget"):
        set_forget_bias(RNNCell(I, H), 1.0)


# ---------------------------------------------------------------- errors


def test_bad_cell_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        make_cell("lsmt", I, H)
    assert str(err.value) == "cell 'lsmt' is not one of rnn, lstm, gru, peephole, coupled"
    with pytest.raises(ValueError, match="cell 'lsmt' is not one of"):
        StackedRNN("lsmt", I, H)


def test_peephole_and_coupled_together_rejected():
    with pytest.raises(ValueError, match="peephole=True with coupled=True"):
        LSTMCell(I, H, peephole=True, coupled=True)


def test_input_errors_name_the_value():
    m = StackedRNN("gru", I, H)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, 4\), got \(3, 6, 5\)"):
        m(torch.randn(B, T, I + 1))
    with pytest.raises(ValueError, match=r"lengths must be in \[0, 6\]"):
        m(torch.randn(B, T, I), lengths=torch.tensor([7, 1, 1]))
    with pytest.raises(ValueError, match=r"state h must have shape \(1, 3, 5\)"):
        m(torch.randn(B, T, I), torch.zeros(2, B, H))
    with pytest.raises(ValueError, match="nonlinearity 'relu' applies only to cell 'rnn'"):
        StackedRNN("lstm", I, H, nonlinearity="relu")
    with pytest.raises(ValueError, match="cannot copy a torch GRU"):
        copy_from_torch(StackedRNN("lstm", I, H), nn.GRU(I, H))
    with pytest.raises(ValueError, match="hidden_size differs"):
        copy_from_torch(StackedRNN("lstm", I, H), nn.LSTM(I, H + 1))
