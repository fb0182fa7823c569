"""Evaluation metrics on inputs whose right answer is known, and the greedy decoder's batching."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import data, evaluate


def _series():
    return data.synthetic_series(num_series=2, length=40, channels=2, seed=0)


def test_forecast_metrics_of_an_oracle_and_of_zero():
    series, window, horizon = _series(), 8, 4
    ds = data.WindowDataset(series, window, horizon)
    truth = {tuple(ds[i]["window"].numpy().ravel()): ds[i]["target"].numpy() for i in range(len(ds))}

    def oracle(feed):  # quantiles = truth - 1, truth, truth + 1
        y = np.stack([truth[tuple(w.ravel())] for w in feed["window"]])
        return {"quantiles": np.stack([y - 1, y, y + 1], axis=-1)}

    perfect = evaluate.forecast_metrics(oracle, series, window, horizon, [0.1, 0.5, 0.9], batch_size=7)
    assert perfect["mse"] == 0 and perfect["mae"] == 0 and perfect["coverage_10_90"] == 1.0
    assert perfect["windows"] == len(ds) and perfect["mse@1"] == 0

    def zero(feed):
        B = feed["window"].shape[0]
        return {"quantiles": np.zeros((B, horizon, 2, 3), np.float32)}

    z = evaluate.forecast_metrics(zero, series, window, horizon, [0.1, 0.5, 0.9])
    ys = np.stack([ds[i]["target"].numpy() for i in range(len(ds))])  # (N, H, C)
    assert z["mse"] == pytest.approx(float((ys**2).mean()), rel=1e-6)
    assert z["mae"] == pytest.approx(float(np.abs(ys).mean()), rel=1e-6)
    assert z["mse@1"] == pytest.approx(float((ys[:, :1] ** 2).mean()), rel=1e-6)
    assert z["coverage_10_90"] == pytest.approx(float((ys == 0).mean()))


def test_lm_metrics_uniform_logits_give_log_vocab():
    V = 7

    def uniform(feed):
        B, T = feed["tokens"].shape
        assert feed["state_h"].shape == (1, B, 5)
        return {"logits": np.zeros((B, T, V), np.float32), "state_h_out": feed["state_h"] + 1}

    ids = np.arange(100) % V
    m = evaluate.lm_metrics(uniform, ids, chars=100, state_shape=(1, 5), state_names=("h",), streams=4, chunk=6)
    assert m["tokens"] == 4 * 24 and m["nats_per_token"] == pytest.approx(math.log(V))
    assert m["perplexity"] == pytest.approx(V) and m["bits_per_char"] == pytest.approx(math.log2(V))
    half = evaluate.lm_metrics(uniform, ids, chars=200, state_shape=(1, 5), state_names=("h",))
    assert half["nats_per_char"] == pytest.approx(math.log(V) / 2)  # two characters per token


def test_lm_metrics_carry_state_between_chunks():
    seen = []

    def counting(feed):
        seen.append(float(feed["state_h"][0, 0, 0]))
        B, T = feed["tokens"].shape
        return {"logits": np.zeros((B, T, 3), np.float32), "state_h_out": feed["state_h"] + T}

    evaluate.lm_metrics(counting, np.zeros(41, np.int64), chars=41, state_shape=(1, 1), state_names=("h",), streams=2, chunk=8)
    assert seen == [0.0, 8.0, 16.0]  # streams of 20: chunks of 8, 8, 3 each continuing the state


def test_translation_metrics_case_and_identity():
    refs = ["A man rides a red bike.", "Two dogs play in the snow."]
    same = evaluate.translation_metrics(refs, refs)
    assert same["bleu"] == pytest.approx(100) and same["chrf"] == pytest.approx(100)
    lower = evaluate.translation_metrics([r.lower() for r in refs], refs)
    assert lower["bleu"] < 100 and lower["bleu_lc"] == pytest.approx(100)
    wrong = evaluate.translation_metrics(["x y z", "q"], refs)
    assert wrong["bleu"] < 5 and wrong["chrf"] < 20


def test_format_table_lists_every_figure():
    text = evaluate.format_table({"task": "forecast", "mse": 0.25, "examples": [{"source": "a", "output": "b"}]})
    assert "mse" in text and "0.2500" in text and "source: a" in text


def test_speech_confusions_are_counted_printed_and_kept_out_of_manifests():
    from training.evaluate_speech import confusions

    said = [9, 9, 9, 4, 4, 1, 2]
    heard = [[4], [4], [10], [8], [], [2], [3, 3]]  # labels: digit + 1; [10] is "9" (right)
    got = confusions(heard, said)
    assert got == [{"said": "9", "heard": "3", "count": 2}, {"said": "2", "heard": "2 2", "count": 1},
                   {"said": "4", "heard": "", "count": 1}, {"said": "4", "heard": "7", "count": 1}]
    assert confusions(heard, said, top=1) == got[:1]
    text = evaluate.format_table({"task": "recognize", "accuracy": 0.5, "confusions": got})
    assert "9 -> 3: 2" in text and "4 -> (nothing): 1" in text and "confusions " not in text
    assert evaluate.stored_figures({"accuracy": 0.5, "confusions": got, "examples": []}) == {"accuracy": 0.5}


def test_forecast_metrics_report_the_repeat_last_value_baseline():
    series, window, horizon = _series(), 8, 4
    ds = data.WindowDataset(series, window, horizon)
    xs = np.stack([ds[i]["window"].numpy() for i in range(len(ds))])  # (N, T, C)
    ys = np.stack([ds[i]["target"].numpy() for i in range(len(ds))])  # (N, H, C)

    def repeat_last(feed):  # a model that is the baseline: its figures must equal naive_*
        last = np.repeat(feed["window"][:, -1:, :], horizon, axis=1)
        return {"quantiles": np.stack([last - 1, last, last + 1], axis=-1)}

    f = evaluate.forecast_metrics(repeat_last, series, window, horizon, [0.1, 0.5, 0.9], batch_size=5)
    want = float(((xs[:, -1:, :] - ys) ** 2).mean())
    assert f["naive_mse"] == pytest.approx(want, rel=1e-6) and f["mse"] == pytest.approx(want, rel=1e-6)
    assert f["naive_mae"] == pytest.approx(f["mae"], rel=1e-6)
    assert f["naive_mse@1"] == pytest.approx(float(((xs[:, -1, :] - ys[:, 0, :]) ** 2).mean()), rel=1e-6)


def test_forecast_metrics_report_seasonal_naive_and_the_ratio_to_it():
    series, window, horizon, m = _series(), 8, 5, 3
    ds = data.WindowDataset(series, window, horizon)
    xs = np.stack([ds[i]["window"].numpy() for i in range(len(ds))])
    ys = np.stack([ds[i]["target"].numpy() for i in range(len(ds))])

    def seasonal(feed):  # step h repeats the value m steps before it (h >= m: 2m before...)
        x = feed["window"]
        steps = [x[:, window - m + (h % m)] for h in range(horizon)]
        y = np.stack(steps, axis=1)
        return {"quantiles": np.stack([y - 1, y, y + 1], axis=-1)}

    f = evaluate.forecast_metrics(seasonal, series, window, horizon, [0.1, 0.5, 0.9], batch_size=4, season=m)
    by_hand = np.stack([xs[:, window - m + (h % m)] for h in range(horizon)], axis=1)
    assert f["season"] == m and f["snaive_mae"] == pytest.approx(float(np.abs(by_hand - ys).mean()), rel=1e-6)
    assert f["snaive_mse"] == pytest.approx(float(((by_hand - ys) ** 2).mean()), rel=1e-6)
    assert f["relative_mae"] == pytest.approx(1.0, rel=1e-6)  # the model is seasonal naive
    assert "snaive_mae" not in evaluate.forecast_metrics(seasonal, series, window, horizon, [0.1, 0.5, 0.9])
    assert "snaive_mae" not in evaluate.forecast_metrics(seasonal, series, window, horizon, [0.1, 0.5, 0.9],
                                                         season=window + 1)  # a season longer than the window


def test_text_baselines():
    assert evaluate.unigram_bits_per_char("abab", "ab") == pytest.approx(-math.log2(3 / 6))
    assert evaluate.unigram_bits_per_char("aaab", "c") == pytest.approx(-math.log2(1 / 7))  # unseen: add-one
    assert evaluate.copy_bleu([("all of these words are the same", "all of these words are the same")]) == pytest.approx(100.0)
    assert evaluate.copy_bleu([("ganz andere Wörter hier", "completely different words there")]) == 0.0


def test_horizon_metrics_use_each_horizons_own_windows():
    series, window = _series(), 8
    ds = {h: data.WindowDataset(series, window, h) for h in (2, 4)}

    def zero(feed):
        return {"quantiles": np.zeros((feed["window"].shape[0], 4, 2, 3), np.float32)}

    by = evaluate.horizon_metrics(zero, series, window, 4, [0.1, 0.5, 0.9], horizons=(2, 4, 8))
    assert list(by) == ["2", "4"]  # 8 is beyond the model's horizon
    for h, f in by.items():
        ys = np.stack([ds[int(h)][i]["target"].numpy() for i in range(len(ds[int(h)]))])
        assert f["windows"] == len(ds[int(h)])
        assert f["mse"] == pytest.approx(float((ys**2).mean()), rel=1e-6)
    assert by["2"]["windows"] > by["4"]["windows"]
    assert "by_horizon" not in evaluate.format_table({"task": "forecast", "by_horizon": by}).split("\n")[0]
