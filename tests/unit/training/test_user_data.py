"""A user's own files (data.dataset: files): reading, checking, splitting, and the errors that name the problem."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import DataConfig, DataError, forecast_series, lm_text, translation_pairs, user


def monthly_long(path: Path, series: int = 3, rows: int = 60, schema=("unique_id", "ds", "y")) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        w.writerow(schema)
        for k in range(series):
            for i in range(rows):
                w.writerow([f"s{k}", f"{2000 + i // 12}-{i % 12 + 1:02d}-01", f"{10 * k + rng.normal():.4f}"])
    return path


def edited(src: Path, dest: Path, line: int, new: str | None) -> Path:
    """``src`` with its 1-based ``line`` replaced by ``new`` (None: removed)."""
    lines = src.read_text(encoding="utf-8").splitlines()
    if new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def test_long_tables_in_both_schemas_and_parquet_give_the_same_series(tmp_path):
    nixtla = user.load_series_files([str(monthly_long(tmp_path / "a.csv"))])
    assert nixtla.names == ["s0", "s1", "s2"] and nixtla.freq == "MS"
    assert [len(v) for v in nixtla.values] == [60, 60, 60] and nixtla.starts[0].startswith("2000-01-01")
    gluon = user.load_series_files([str(monthly_long(tmp_path / "b.tsv", schema=("item_id", "timestamp", "target")))])
    assert gluon.names == nixtla.names and all(np.allclose(a, b) for a, b in zip(gluon.values, nixtla.values))
    import pandas as pd

    frame = pd.read_csv(tmp_path / "a.csv")
    frame["ds"] = pd.to_datetime(frame["ds"])
    frame.to_parquet(tmp_path / "c.parquet")
    parquet = user.load_series_files([str(tmp_path / "c.parquet")])
    assert parquet.names == nixtla.names and parquet.freq == "MS"
    assert all(np.allclose(a, b) for a, b in zip(parquet.values, nixtla.values))


def test_named_columns_and_a_wide_table(tmp_path):
    path = tmp_path / "named.csv"
    monthly_long(path, schema=("store", "month", "sales"))
    with pytest.raises(DataError, match="needs data.id_column"):
        user.load_series_files([str(path)], layout="long")
    got = user.load_series_files([str(path)], id_column="store", time_column="month", value_column="sales")
    assert got.names == ["s0", "s1", "s2"]
    wide = tmp_path / "wide.csv"
    wide.write_text("time,north,south\n" + "".join(f"2024-01-01 {h:02d}:00,{h},{2 * h}\n" for h in range(24)))
    got = user.load_series_files([str(wide)])
    assert got.names == ["north", "south"] and got.freq == "h"
    assert np.array_equal(got.values[1], 2.0 * np.arange(24))


@pytest.mark.parametrize("line, new, expected", [
    (6, "s0,2000-05-01,abc", ["line 6", "column 'y'", "'abc' is not a number"]),
    (8, "s0,2000-07-01,", ["line 8", "column 'y'", "missing"]),
    (10, "s0,2000-08-01,1.0", ["line 10", "repeats", "line 9", "'s0'"]),
    (12, "s0,2000-01-01,1.0", ["line 12", "comes before", "line 11", "sort the file"]),
    (13, "s0,20x0-12-01,1.0", ["line 13", "column 'ds'", "'20x0-12-01' is not a timestamp"]),
    (21, None, ["line 21", "breaks the series' spacing", "frequency MS", "expected 2001-08-01"]),
])
def test_a_bad_cell_is_named_by_line_column_and_value(tmp_path, line, new, expected):
    bad = edited(monthly_long(tmp_path / "good.csv"), tmp_path / "bad.csv", line, new)
    with pytest.raises(DataError) as err:
        user.load_series_files([str(bad)])
    message = str(err.value)
    assert "bad.csv" in message and all(part in message for part in expected), message


def test_frequency_given_mixed_or_missing_columns(tmp_path):
    good = monthly_long(tmp_path / "good.csv")
    with pytest.raises(DataError, match="frequency D: expected 2000-01-02"):
        user.load_series_files([str(good)], freq="D")
    hourly = tmp_path / "hourly.csv"
    hourly.write_text("unique_id,ds,y\n" + "".join(f"h,2024-01-01 {h:02d}:00,1\n" for h in range(10)))
    with pytest.raises(DataError, match="different frequencies: MS .*, h"):
        user.load_series_files([str(good), str(hourly)])
    with pytest.raises(DataError, match="no column 'price'"):
        user.load_series_files([str(good)], value_column="price")
    with pytest.raises(DataError, match="no such file"):
        user.load_series_files([str(tmp_path / "absent.csv")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="expected a table"):
        user.load_series_files([str(tmp_path / "notes.txt")])


@pytest.mark.parametrize("freq, season", [("h", 24), ("2h", 12), ("7h", 1), ("30min", 48), ("15min", 96), ("D", 1),
                                          ("B", 5), ("W-SUN", 1), ("MS", 12), ("ME", 12), ("QS-OCT", 4), ("YE-DEC", 1)])
def test_seasonality_is_gluonts(freq, season):
    assert user.seasonality(freq) == season


def test_forecast_splits_are_the_last_parts_of_each_series(tmp_path):
    path = monthly_long(tmp_path / "a.csv", series=2, rows=100)
    cfg = DataConfig.from_dict({"dataset": "files", "paths": str(path), "val_share": 0.1, "test_share": 0.2}, "forecast")
    splits = forecast_series(cfg, 24, horizon=12, min_history=12)
    assert [len(s) for s in splits.train] == [68, 68]  # 100 - val 12 (a horizon, > 10%) - test 20
    assert [len(s) for s in splits.val] == [24 + 12] * 2 and [len(s) for s in splits.test] == [24 + 20] * 2
    raw = user.load_series_files([str(path)]).values[0]
    z = splits.train[0][:, 0]
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4  # standardised by its training part
    scale = raw[:68].std()
    assert np.allclose(splits.test[0][-1, 0], (raw[-1] - raw[:68].mean()) / scale, atol=1e-5)
    with pytest.raises(DataError, match="has 100 rows; a model with min_history 60 and horizon 12 needs at least 104"):
        forecast_series(cfg, 96, horizon=12, min_history=60)


def test_parallel_text_files_tables_and_grouped_split(tmp_path):
    (tmp_path / "src.txt").write_text("".join(f"quelle {i % 40}\n" for i in range(200)))
    (tmp_path / "tgt.txt").write_text("".join(f"target {i % 40}\n" for i in range(200)))
    cfg = DataConfig.from_dict({"dataset": "files", "paths": [str(tmp_path / "src.txt"), str(tmp_path / "tgt.txt")]},
                               "translate")
    splits = {s: translation_pairs(cfg, s) for s in ("train", "val", "test")}
    assert sum(len(p) for p in splits.values()) == 200
    targets = {s: {t for _, t in p} for s, p in splits.items()}
    assert len(targets["val"]) == len(targets["test"]) == 4  # 10% of the 40 distinct targets each
    assert not (targets["train"] & targets["val"]) and not (targets["train"] & targets["test"])
    assert translation_pairs(cfg, "test") == splits["test"]  # seeded
    table = tmp_path / "pairs.tsv"
    table.write_text("de\ten\nHallo\tHello\n\tEmpty\n")
    with pytest.raises(DataError, match=r"pairs.tsv line 3, column 'de': '' is empty"):
        user.read_pairs([str(table)])
    table.write_text("de\ten\nHallo\tHello\nTschüss\tBye\n")
    assert user.read_pairs([str(table)], src_column="en", tgt_column="de") == [("Hello", "Hallo"), ("Bye", "Tschüss")]


def test_parallel_text_errors(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "b.txt").write_text("eins\nzwei\n")
    (tmp_path / "c.txt").write_text("eins\n\ndrei\n")
    with pytest.raises(DataError, match=r"a.txt has 3 lines but \S*b.txt has 2"):
        user.read_pairs([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")])
    with pytest.raises(DataError, match="c.txt line 2: the line is empty"):
        user.read_pairs([str(tmp_path / "a.txt"), str(tmp_path / "c.txt")])
    with pytest.raises(DataError, match="too few to split"):
        user.split_pairs([("a", "b"), ("c", "d")], "train", 0, 0.1, 0.1)


def test_text_files_encoding_and_split(tmp_path):
    (tmp_path / "latin.txt").write_bytes("hello\nwörld\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt line 2: byte 0xf6 at offset 7 is not UTF-8"):
        user.read_corpus([str(tmp_path / "latin.txt")])
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="empty.txt: the file is empty"):
        user.read_corpus([str(tmp_path / "empty.txt")])
    (tmp_path / "a.txt").write_text("".join(f"line {i}\n" for i in range(100)))
    (tmp_path / "b.txt").write_text("last line without newline")
    cfg = DataConfig.from_dict({"dataset": "files", "paths": [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")],
                                "val_share": 0.1, "test_share": 0.1}, "generate")
    parts = [lm_text(cfg, s) for s in ("train", "val", "test")]
    assert "".join(parts) == (tmp_path / "a.txt").read_text() + "last line without newline\n"
    assert all(p.endswith("\n") for p in parts) and parts[2].endswith("last line without newline\n")
    assert 0.7 < len(parts[0]) / sum(map(len, parts)) < 0.85


def test_files_config_needs_paths_and_sane_shares():
    with pytest.raises(ValueError, match="needs data.paths"):
        DataConfig.from_dict({"dataset": "files"}, "forecast")
    with pytest.raises(ValueError, match="leave a training part"):
        DataConfig.from_dict({"dataset": "files", "paths": ["x"], "val_share": 0.5, "test_share": 0.5}, "generate")
    assert DataConfig.from_dict({"dataset": "files", "paths": "x.csv"}, "recognize").paths == ["x.csv"]
    with pytest.raises(ValueError, match="not one of synthetic, fsdd, files"):
        DataConfig.from_dict({"dataset": "mine", "paths": ["x"]}, "recognize")


def wav(path: Path, samples: np.ndarray, rate: int = 8000, channels: int = 1) -> Path:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_recordings_and_transcripts_are_read_checked_and_split(tmp_path):
    from training.data import user_speech as U

    tone = np.sin(np.arange(1600) * 0.3).astype(np.float32) * 0.5
    for i in range(10):
        wav(tmp_path / f"r{i}.wav", tone, rate=16000 if i % 2 else 8000)
    rows = "".join(f"r{i}.wav,Hello  world {i % 3}\n" for i in range(10))
    (tmp_path / "t.csv").write_text("path,text\n" + rows, encoding="utf-8")
    items = U.read_utterances([str(tmp_path / "t.csv")], 8000)
    assert [u.text for u in items[:2]] == ["Hello world 0", "Hello world 1"]  # spaces collapsed
    assert len(items[0].audio) == 1600 and abs(len(items[1].audio) - 800) <= 1  # 16 kHz resampled to 8
    parts = {s: U.split_utterances(items, s, 0, 0.2, 0.2) for s in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [6, 2, 2] and U.split_utterances(items, "test", 0, 0.2, 0.2) == parts["test"]
    labels = U.char_labels(parts["train"])
    assert labels[0] == "" and " " in labels and U.encode("He", labels) == [labels.index("H"), labels.index("e")]
    assert U.error_rates(["hello word", "a b"], ["hello world", "a b"]) == {
        "cer": pytest.approx(1 / 14), "wer": pytest.approx(1 / 4), "sentence_accuracy": 0.5}


@pytest.mark.parametrize("rows, expected", [
    ("file,transcript\nr0.wav,one\nr0.wav,two\n", "t.csv line 3, column 'file': 'r0.wav' is listed twice (first at"),
    ("file,transcript\nr0.wav,\n", "t.csv line 2, column 'transcript': the transcript of 'r0.wav' is empty"),
    ("file,transcript\nmissing.wav,one\n", "t.csv line 2, column 'file': 'missing.wav' is not a file in"),
    ("file,transcript\nstereo.wav,one\n", "t.csv line 2: " + "{dir}/stereo.wav: the WAV file has 2 channels; only mono"),
    ("file,transcript\nnot.wav,one\n", "t.csv line 2: {dir}/not.wav: not a PCM WAV file"),
    ("name,words\nr0.wav,one\n", "no audio file column (looked for file, path"),
])
def test_bad_recordings_and_transcripts_are_named(tmp_path, rows, expected):
    from training.data import user_speech as U

    wav(tmp_path / "r0.wav", np.zeros(800))
    wav(tmp_path / "stereo.wav", np.zeros(1600), channels=2)
    (tmp_path / "not.wav").write_bytes(b"RIFF....WAVEjunk")
    (tmp_path / "t.csv").write_text(rows)
    with pytest.raises(DataError) as err:
        U.read_utterances([str(tmp_path / "t.csv")], 8000)
    assert expected.format(dir=tmp_path) in str(err.value), str(err.value)


def test_a_character_only_the_test_part_has_is_named():
    from training.data import user_speech as U

    items = [U.Utterance(np.zeros(10, np.float32), "café", "t.csv line 9")]
    with pytest.raises(DataError, match="t.csv line 9: the test transcript 'café' has 'é', which no training"):
        U.check_labels(items, ["", "a", "c", "f"], "test")


def test_another_microphone_on_a_users_recordings_only_when_asked():
    from training.data import user_speech as U
    from training.features import FeatureExtractor, FeatureSpec

    items = [U.Utterance((0.3 * np.sin(np.arange(2400) * (0.1 + 0.05 * i))).astype(np.float32), f"a{i % 2}", f"line {i}")
             for i in range(6)]
    labels = U.char_labels(items)
    features = FeatureExtractor(FeatureSpec())
    plain, coloured = (U.UtteranceBatches(items, labels, features, 4, 3, seed=5, channel_db=db) for db in (0.0, 12.0))
    again = U.UtteranceBatches(items, labels, features, 4, 3, seed=5)
    for a, b, c in zip(plain.batches(0), coloured.batches(0), again.batches(0)):
        assert torch.equal(a["labels"], b["labels"])  # the same recordings, drawn before the channel
        assert torch.equal(a["features"], c["features"])  # without it, the draws are as they were
        assert not torch.equal(a["features"], b["features"])
