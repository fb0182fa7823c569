"""The cell comparison trains one configuration per cell and writes its table and plots."""

from __future__ import annotations

import csv

import pytest

from training.cli import main as train_cli
from training.compare import compare_cells


def test_compare_cells_writes_a_row_per_cell_with_figures_and_gradient_flow(tmp_path, capsys):
    code = train_cli(["compare", "forecast", "--preset", "tiny-forecast", "--cells", "rnn,gru",
                      "--out", str(tmp_path), "--set", "train.max_steps=8", "--set", "train.max_epochs=1"])
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "cells.csv").open()))
    assert [r["cell"] for r in rows] == ["rnn", "gru"]
    for r in rows:
        assert int(r["steps"]) == 8 and float(r["test_mse"]) > 0 and float(r["grad_ratio@50"]) > 0
    # Same budget, same data: the gated cell keeps more gradient at distance 50 than the plain RNN.
    assert float(rows[1]["grad_ratio@50"]) > 100 * float(rows[0]["grad_ratio@50"])
    for name in ("cells.md", "val_loss.png", "gradient_flow.csv", "gradient_flow.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "val_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "rnn" / "best.pt").exists() and (tmp_path / "gru" / "best.pt").exists()
    assert "| rnn |" in capsys.readouterr().out


def test_compare_cells_rejects_an_unknown_cell(tmp_path):
    with pytest.raises(ValueError, match="unknown cell.*lstmm.*valid: rnn"):
        compare_cells({"task": "forecast"}, ["lstmm"], tmp_path)
