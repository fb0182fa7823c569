"""Recurrent layer: cell names, torch vs StackedRNN paths, ONNX export as fused ops with parity and padding invariance."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from service.contract import CELLS
from training.cells import StackedRNN, copy_from_torch
from training.export import check_op_types
from training.layers import ONNX_OP, Recurrent, export_mode, is_exporting

I, H = 3, 5


class _Wrap(nn.Module):
    """Flat tensor I/O around a Recurrent layer, for export."""

    def __init__(self, layer: Recurrent) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x, lengths, *state):
        st = None if not state else (state if self.layer.has_cell_state else state[0])
        y, st = self.layer(x, lengths, st)
        return (y, *st) if isinstance(st, tuple) else (y, st)


def _export(layer: Recurrent, path: Path, with_state: bool) -> ort.InferenceSession:
    layer.eval()
    wrap = _Wrap(layer).eval()
    n_states = 2 if layer.has_cell_state else 1
    LD = layer.num_layers * layer.num_directions
    names = ["x", "lengths"] + ([f"s{i}" for i in range(n_states)] if with_state else [])
    outs = ["y"] + [f"o{i}" for i in range(n_states)]
    args = (torch.randn(2, 4, I), torch.tensor([4, 2]), *(torch.randn(LD, 2, H) for _ in range(n_states if with_state else 0)))
    dyn = {"x": {0: "B", 1: "T"}, "lengths": {0: "B"}, "y": {0: "B", 1: "T"}}
    dyn.update({n: {1: "B"} for n in names[2:] + outs[1:]})
    with warnings.catch_warnings(), export_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrap, args, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=outs, dynamic_axes=dyn)
    assert not is_exporting()
    check_op_types(path, ONNX_OP[layer.cell])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_bad_cell_name_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        Recurrent("lsmt", I, H)
    for name in CELLS:
        assert name in str(err.value)
    assert "lsmt" in str(err.value)


def test_relu_only_for_rnn():
    Recurrent("rnn", I, H, nonlinearity="relu")
    with pytest.raises(ValueError, match="relu"):
        Recurrent("gru", I, H, nonlinearity="relu")


def test_peephole_and_coupled_run_on_stacked_rnn():
    for cell in ("peephole", "coupled"):
        assert isinstance(Recurrent(cell, I, H).rnn, StackedRNN)
    for cell in ("rnn", "lstm", "gru"):
        assert not isinstance(Recurrent(cell, I, H).rnn, StackedRNN)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_packed_torch_path_matches_stacked_rnn_with_lengths(cell):
    torch.manual_seed(0)
    layer = Recurrent(cell, I, H, num_layers=2, bidirectional=True).eval()
    ref = copy_from_torch(StackedRNN(cell, I, H, 2, True), layer.rnn).eval()
    x, lengths = torch.randn(3, 6, I), torch.tensor([6, 2, 4])
    with torch.no_grad():
        y, s = layer(x, lengths)
        y_ref, s_ref = ref(x, None, lengths)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=0)
    for a, b in zip(s if isinstance(s, tuple) else (s,), s_ref if isinstance(s_ref, tuple) else (s_ref,)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert torch.all(y[1, 2:] == 0) and torch.all(y[2, 4:] == 0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_export_is_fused_and_matches_torch(tmp_path, cell, bidirectional):
    """onnxruntime vs PyTorch (StackedRNN for peephole/coupled: P input and input_forget=1)."""
    torch.manual_seed(1)
    layer = Recurrent(cell, I, H, num_layers=2, bidirectional=bidirectional)
    sess = _export(layer, tmp_path / "r.onnx", with_state=True)
    LD, n = layer.num_layers * layer.num_directions, (2 if layer.has_cell_state else 1)
    worst = 0.0
    for lengths, T in (([7, 3, 1], 7), ([1], 1), ([5, 5], 9)):
        B = len(lengths)
        x, lens = torch.randn(B, T, I), torch.tensor(lengths)
        states = [torch.randn(LD, B, H) for _ in range(n)]
        got = sess.run(None, {"x": x.numpy(), "lengths": lens.numpy(), **{f"s{i}": s.numpy() for i, s in enumerate(states)}})
        with torch.no_grad():
            want = _Wrap(layer)(x, lens, *states)
        for g, w in zip(got, want):
            assert g.shape == tuple(w.shape)
            worst = max(worst, float(np.abs(g - w.numpy()).max()))
    assert worst < 1e-5, f"{cell}: max abs diff {worst}"


@pytest.mark.parametrize("cell", ["lstm", "peephole", "coupled", "gru"])
def test_padding_never_changes_results(tmp_path, cell):
    torch.manual_seed(2)
    layer = Recurrent(cell, I, H, bidirectional=True).eval()
    sess = _export(layer, tmp_path / "r.onnx", with_state=False)
    alone = torch.randn(1, 4, I)
    batch = torch.randn(3, 9, I)
    batch[1, :4] = alone[0]
    batch[1, 4:] = 100.0  # garbage padding must not leak in
    lengths = torch.tensor([9, 4, 6])
    with torch.no_grad():
        y_alone, s_alone = layer(alone, torch.tensor([4]))
        y_batch, s_batch = layer(batch, lengths)
    torch.testing.assert_close(y_batch[1, :4], y_alone[0], atol=1e-5, rtol=0)
    h_alone = s_alone[0] if isinstance(s_alone, tuple) else s_alone
    h_batch = s_batch[0] if isinstance(s_batch, tuple) else s_batch
    torch.testing.assert_close(h_batch[:, 1], h_alone[:, 0], atol=1e-5, rtol=0)
    ort_alone = sess.run(None, {"x": alone.numpy(), "lengths": np.array([4])})
    ort_batch = sess.run(None, {"x": batch.numpy(), "lengths": lengths.numpy()})
    np.testing.assert_allclose(ort_batch[0][1, :4], ort_alone[0][0], atol=1e-5)
    np.testing.assert_allclose(ort_batch[1][:, 1], ort_alone[1][:, 0], atol=1e-5)
    assert np.all(ort_batch[0][1, 4:] == 0)


def test_export_mode_is_scoped():
    assert not is_exporting()
    with export_mode():
        assert is_exporting()
    assert not is_exporting()


@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole", "coupled"])
def test_forget_bias_keeps_gradients_alive_through_time(cell):
    # A gate biased towards remembering (Jozefowicz et al. 2015) passes far more gradient from the
    # last output back to the first input than torch's default init, at the same weights otherwise.
    def first_input_grad(forget_bias):
        torch.manual_seed(0)
        rec = Recurrent(cell, 4, 32, forget_bias=forget_bias)
        x = torch.randn(2, 60, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y, _ = rec(x)
        y[:, -1].sum().backward()
        return x.grad[:, 0].norm().item()

    assert first_input_grad(1.0) > 10 * first_input_grad(None)


def test_forget_bias_is_refused_for_the_plain_rnn_and_stored_in_model_configs():
    with pytest.raises(ValueError, match="no forget/update gate"):
        Recurrent("rnn", 4, 8).set_forget_bias(1.0)
    Recurrent("rnn", 4, 8, forget_bias=1.0)  # the task models pass it for every cell: ignored here
    rec = Recurrent("lstm", 4, 8, num_layers=2, bidirectional=True, forget_bias=2.0)
    for name, p in rec.rnn.named_parameters():
        if name.startswith("bias_ih"):
            assert torch.all(p[8:16] == 2.0)
        if name.startswith("bias_hh"):
            assert torch.all(p[8:16] == 0.0)
