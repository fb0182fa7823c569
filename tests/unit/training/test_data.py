"""Dataset files, standard splits, synthetic sets and batchers."""

from __future__ import annotations

import gzip
import shutil
import socket

import numpy as np
import pytest
import torch

from training import data
from training.data.translation import _TOY_LEXICON


def test_multi30k_split_sizes_and_alignment(data_dir):
    sizes = {s: len(data.load_multi30k(s, "de", "en", data_dir)) for s in data.SPLITS}
    assert sizes == {"train": 29000, "val": 1014, "test": 1000}
    de_en = data.load_multi30k("val", "de", "en", data_dir)
    en_de = data.load_multi30k("val", "en", "de", data_dir)
    assert [(b, a) for a, b in de_en] == en_de
    assert de_en[0][1] == "A group of men are loading cotton onto a truck"


def test_tatoeba_split_groups_english_sentences(data_dir):
    splits = {s: data.load_tatoeba(s, "zh", "en", data_dir, seed=0) for s in data.SPLITS}
    assert sum(len(p) for p in splits.values()) == 28447
    english = {s: {en for _, en in p} for s, p in splits.items()}
    assert sum(len(e) for e in english.values()) == 27056
    assert not english["train"] & english["val"]
    assert not english["train"] & english["test"]
    assert not english["val"] & english["test"]
    assert abs(len(english["train"]) / 27056 - 0.9) < 0.001
    # Fixed seed -> same split; another seed -> another one; direction only swaps the sides.
    assert data.load_tatoeba("val", "zh", "en", data_dir, seed=0) == splits["val"]
    assert data.load_tatoeba("val", "zh", "en", data_dir, seed=1) != splits["val"]
    assert data.load_tatoeba("val", "en", "zh", data_dir, seed=0) == [(b, a) for a, b in splits["val"]]


@pytest.mark.parametrize("name,rows", [("ETTh1", (8640, 2880, 2880)), ("ETTm1", (34560, 11520, 11520))])
def test_ett_split_and_train_only_scaler(data_dir, name, rows):
    seq_len = 24
    assert data.ett_borders(name) == rows
    s = data.load_ett(name, "M", seq_len, data_dir)
    assert s.train[0].shape == (rows[0], 7)
    assert s.val[0].shape == (rows[1] + seq_len, 7)
    assert s.test[0].shape == (rows[2] + seq_len, 7)
    # Standardised with train statistics: train has mean 0 / std 1, val and test do not.
    assert np.allclose(s.train[0].mean(0), 0, atol=1e-4) and np.allclose(s.train[0].std(0), 1, atol=1e-4)
    assert not np.allclose(s.test[0].mean(0), 0, atol=1e-2)
    raw = np.loadtxt(data_dir / f"ETDataset/{name}.csv", delimiter=",", skiprows=1, usecols=range(1, 8))
    assert np.allclose(s.scaler.mean, raw[: rows[0]].mean(0)) and np.allclose(s.scaler.std, raw[: rows[0]].std(0))
    # Val starts seq_len rows early: its first window's first target is the split's first row.
    val = data.WindowDataset(s.val, seq_len, horizon=12)
    assert len(val) == rows[1] - 12 + 1
    first_val_row = s.scaler.transform(raw[rows[0] : rows[0] + 1])
    assert np.allclose(val[0]["target"][0].numpy(), first_val_row[0], atol=1e-5)
    uni = data.load_ett(name, "S", seq_len, data_dir)
    assert uni.columns == ["OT"] and uni.train[0].shape == (rows[0], 1)
    assert np.allclose(uni.train[0][:, 0], s.train[0][:, 6], atol=1e-6)


def test_shakespeare_90_10_by_characters(data_dir):
    train = data.load_shakespeare("train", data_dir)
    val = data.load_shakespeare("val", data_dir)
    assert (len(train), len(val)) == (1003854, 111540)
    assert (data_dir / data.SHAKESPEARE_FILE).read_text(encoding="utf-8") == train + val


def test_sha256_mismatch_is_a_clear_error(tmp_path, data_dir):
    rel = "multi30k/val.en.gz"
    (tmp_path / "multi30k").mkdir()
    shutil.copy(data_dir / rel, tmp_path / rel)
    assert data.data_file(rel, tmp_path) == tmp_path / rel
    with gzip.open(tmp_path / rel, "wt") as f:
        f.write("tampered\n")
    with pytest.raises(data.DataError, match=r"sha256 [0-9a-f]{64}, expected 14f7d25d"):
        data.load_multi30k("val", "en", "de", tmp_path)  # checks val.en first


def test_decompressed_multi30k_matches_readme_hash(data_dir):
    import hashlib

    raw = gzip.decompress((data_dir / "multi30k/val.en.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227"
    assert data.data_hashes(["multi30k/val.en.gz"], data_dir) == {"multi30k/val.en.gz": data.file_sha256(data_dir / "multi30k/val.en.gz")}


def test_missing_file_and_failed_download_are_clear(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.data_file("tinyshakespeare/input.txt", tmp_path, download=False)
    with socket.socket() as s:  # a port nobody listens on: the download fails at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "x.txt"
    with pytest.raises(data.DataError, match="could not download"):
        data.fetch(f"http://127.0.0.1:{port}/x.txt", dest, "0" * 64, timeout=5)
    assert not dest.exists() and not list(tmp_path.iterdir())


def test_window_dataset_shapes_and_contents():
    series = data.synthetic_series(num_series=3, length=50, channels=2, seed=1)
    ds = data.WindowDataset(series, seq_len=10, horizon=4)
    assert len(ds) == 3 * (50 - 10 - 4 + 1)
    batch = data.collate_windows([ds[0], ds[len(ds) - 1]])
    assert batch["window"].shape == (2, 10, 2) and batch["target"].shape == (2, 4, 2)
    assert torch.equal(batch["target"][1], torch.from_numpy(series[2][-4:]))
    with pytest.raises(ValueError, match="no window"):
        data.WindowDataset(series, seq_len=48, horizon=4)


def test_synthetic_forecast_is_seeded_and_split_by_series():
    a, b = data.synthetic_forecast(num_series=20, seed=3), data.synthetic_forecast(num_series=20, seed=3)
    assert len(a.train) == 16 and len(a.val) == 2 and len(a.test) == 2
    assert all(np.array_equal(x, y) for x, y in zip(a.train, b.train))
    assert not np.array_equal(a.train[0], data.synthetic_forecast(num_series=20, seed=4).train[0])


def test_synthetic_pairs_follow_the_toy_grammar():
    pairs = data.synthetic_pairs(50, seed=0)
    assert pairs == data.synthetic_pairs(50, seed=0)
    for src, tgt in pairs:
        words = tgt.rstrip(".").lower().split()
        assert words == [_TOY_LEXICON[w] for w in reversed(src.split())]


def test_collate_pairs_pads_and_wraps_target():
    collate = data.make_collate_pairs(bos=2, eos=3)
    b = collate([([5, 6, 7], [8]), ([9], [10, 11, 12])])
    assert b["src"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert b["src_len"].tolist() == [3, 1]
    assert b["tgt"].tolist() == [[2, 8, 3, 0, 0], [2, 10, 11, 12, 3]]


def test_stream_batches_continue_streams_and_shard_ranks():
    ids = torch.arange(101)
    sb = data.StreamBatches(ids, batch_size=2, bptt_len=7)
    chunks = list(sb.batches())
    assert len(chunks) == len(sb) == 7  # streams of 50: 49 targets in chunks of 7
    assert torch.equal(torch.cat([c["tokens"] for c in chunks], 1), sb.data[:, :-1])
    assert torch.equal(torch.cat([c["targets"] for c in chunks], 1), sb.data[:, 1:])
    assert sb.data[1, 0] == 50  # stream 1 continues where stream 0's text ends
    r0 = data.StreamBatches(ids, batch_size=2, bptt_len=7, rank=0, world_size=2)
    r1 = data.StreamBatches(ids, batch_size=2, bptt_len=7, rank=1, world_size=2)
    assert len(r0) == len(r1)
    assert not set(r0.data.flatten().tolist()) & set(r1.data.flatten().tolist())


def test_loader_batches_order_depends_on_seed_and_epoch_only():
    ds = data.WindowDataset(data.synthetic_series(2, 40, 1, seed=0), seq_len=5, horizon=2)
    a = data.LoaderBatches(ds, 8, data.collate_windows, seed=0)
    b = data.LoaderBatches(ds, 8, data.collate_windows, seed=0)
    torch.manual_seed(123)  # global RNG must not matter
    first = [x["window"] for x in a.batches(0)]
    torch.manual_seed(456)
    assert all(torch.equal(x, y["window"]) for x, y in zip(first, b.batches(0)))
    assert not torch.equal(first[0], next(iter(a.batches(1)))["window"])
    r = [data.LoaderBatches(ds, 8, data.collate_windows, seed=0, rank=k, world_size=2) for k in (0, 1)]
    assert len(r[0]) == len(r[1])
    ev = [data.EvalBatches(ds, 8, data.collate_windows, rank=k, world_size=2) for k in (0, 1)]
    assert sum(x["window"].shape[0] for e in ev for x in e.batches()) == len(ds)


def test_crop_windows_cuts_batches_to_histories_the_service_accepts():
    items = [{"window": torch.arange(48, dtype=torch.float32).reshape(48, 1) + i, "target": torch.zeros(6, 1)}
             for i in range(4)]
    crop = data.CropWindows(min_len=12, prob=0.5, seed=3)
    lengths = [crop(items)["window"].shape[1] for _ in range(200)]
    assert set(lengths) - set(range(12, 49)) == set()
    assert 60 < lengths.count(48) < 140  # about half the batches stay whole
    assert len(set(lengths)) > 20  # the rest spread over the range
    cut = next(b for b in (crop(items) for _ in range(50)) if b["window"].shape[1] < 48)
    keep = cut["window"].shape[1]
    assert torch.equal(cut["window"][2, :, 0], torch.arange(48 - keep, 48, dtype=torch.float32) + 2)  # most recent steps
    # Seeded per epoch: the same epoch gives the same lengths again.
    crop.set_epoch(5)
    first = [crop(items)["window"].shape[1] for _ in range(20)]
    crop.set_epoch(5)
    assert [crop(items)["window"].shape[1] for _ in range(20)] == first
    assert data.CropWindows(12, 0.0)(items)["window"].shape[1] == 48


def test_concat_pairs_joins_two_training_pairs_within_the_length_limit():
    pairs = [([i, i + 1], [100 + i]) for i in range(0, 40, 2)] + [([7] * 9, [8] * 9)]
    joined = data.concat_pairs(pairs, 0.5, max_len=10, seed=3)
    assert len(joined) == round(0.5 * len(pairs))
    originals = {(tuple(s), tuple(t)) for s, t in pairs}
    for src, tgt in joined:
        assert len(src) <= 10 and len(tgt) <= 10
        # some split point makes both halves original pairs, sources and targets cut alike
        assert any(
            (tuple(src[:a]), tuple(tgt[:b])) in originals and (tuple(src[a:]), tuple(tgt[b:])) in originals
            for a in range(1, len(src)) for b in range(1, len(tgt))
        )
    assert joined == data.concat_pairs(pairs, 0.5, max_len=10, seed=3)  # seeded
    assert joined != data.concat_pairs(pairs, 0.5, max_len=10, seed=4)
    assert data.concat_pairs(pairs, 0.0, max_len=10) == []


def test_comma_join_splices_two_sentences_the_way_chinese_runs_clauses_together():
    from training.vocab import build_word_tokenizer

    zh = ["我是学生。", "他说中文。", "我说中文。", "你好吗？"]
    en = ["I'm a student.", "He speaks Chinese.", "I speak Chinese.", "How are you? he said, he"]
    src_tok = build_word_tokenizer([*zh, "我，你"], min_freq=1, language="zh", simplify_chinese=True)
    tgt_tok = build_word_tokenizer(en, min_freq=1, language="en")
    join = data.CommaJoin.from_tokenizers(src_tok, tgt_tok)
    ids = [(data.encode(src_tok, s), data.encode(tgt_tok, t)) for s, t in zip(zh, en)]

    src, tgt = join(*ids[0], *ids[1])
    assert src_tok.decode(src).replace(" ", "") in ("我是学生，他说中文。", "我是学生,他说中文。")
    assert tgt_tok.decode(tgt) == "I'm a student, he speaks Chinese."  # "He" lowercased after the comma
    assert tgt_tok.decode(join(*ids[0], *ids[2])[1]) == "I'm a student, I speak Chinese."  # "I" stays
    assert join(*ids[3], *ids[2]) is None  # a question does not end in a full stop

    pairs = ids[:3] * 10
    joined = data.concat_pairs(pairs, 1.0, max_len=30, seed=0, comma=join, comma_share=0.5)
    commas = sum(join.src_comma in s for s, _ in joined)
    assert 0 < commas < len(joined)  # about half spliced with a comma, the rest with a full stop
    assert all((join.src_comma in s) == (join.tgt_comma in t) for s, t in joined)
    plain = data.concat_pairs(pairs, 1.0, max_len=30, seed=0)
    assert all(join.src_comma not in s for s, _ in plain)


def test_concat_pairs_setting_is_checked():
    with pytest.raises(ValueError, match="concat_pairs"):
        data.DataConfig(dataset="tatoeba", concat_pairs=1.5).validate("translate")
    with pytest.raises(ValueError, match="concat_comma"):
        data.DataConfig(dataset="tatoeba", concat_comma=-0.1).validate("translate")
