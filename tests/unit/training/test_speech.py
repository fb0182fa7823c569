"""Speech training: the features graph, FSDD's splits and digit strings, the CTC model, export with the
features in front, evaluation and the leave-one-speaker-out runner (synthetic tones: no data needed)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.contract import graph_spec, read_manifest
from service.inference.speech import ChunkFramer
from training.data import speech as S
from training.features import FeatureExtractor, FeatureSpec, feature_graph
from training.models import SpeechConfig, SpeechRecognizer

SPEC = FeatureSpec()


def test_features_of_a_stream_cut_anywhere_equal_the_offline_features():
    rng = np.random.default_rng(0)
    audio = (0.2 * rng.standard_normal(4321)).astype(np.float32)
    offline = FeatureExtractor(SPEC)(audio[None])[0]
    assert offline.shape == (4321 // SPEC.hop, SPEC.n_mels)
    step = ort.InferenceSession(feature_graph(SPEC, pad_front=False).SerializeToString())
    framer, parts = ChunkFramer(SPEC.context, 2 * SPEC.hop), []
    for a, b in ((0, 7), (7, 1000), (1000, 1001), (1001, 4321)):
        framer.push(audio[a:b])
        chunk = framer.take()
        if chunk is not None:
            parts.append(step.run(None, {"audio": chunk[None]})[0][0])
    streamed = np.concatenate(parts)
    assert framer.pending < 2 * SPEC.hop and len(streamed) == (4321 // 160) * 2  # a tail under one frame waits
    np.testing.assert_array_equal(streamed, offline[: len(streamed)])


def test_log_mel_matches_a_numpy_reference():
    t = np.arange(8000) / 8000
    audio = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    feats = FeatureExtractor(SPEC)(audio[None])[0]  # (100, 40)
    # the 1 kHz tone: the loudest band is the one whose centre is nearest 1 kHz, in every full frame
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731 - HTK mel scale, as ONNX MelWeightMatrix
    centres = 700 * (10 ** (np.linspace(mel(SPEC.f_min), mel(SPEC.f_max), SPEC.n_mels + 2)[1:-1] / 2595) - 1)
    assert set(feats[5:].argmax(axis=1)) <= {int(np.argmin(np.abs(centres - 1000))) + d for d in (-1, 0, 1)}
    silence = FeatureExtractor(SPEC)(np.zeros((1, 800), np.float32))[0]
    np.testing.assert_allclose(silence, np.log(1e-6), rtol=1e-5)


def test_splits_by_take_and_by_held_out_speaker():
    recs = S.synthetic_recordings(0, takes=50)
    assert [len(S.fsdd_split(recs, s)) for s in ("train", "val", "test")] == [2400, 300, 300]
    test = S.fsdd_split(recs, "test", holdout="theo")
    assert len(test) == 500 and {r.speaker for r in test} == {"theo"}
    for split in ("train", "val"):
        assert "theo" not in {r.speaker for r in S.fsdd_split(recs, split, holdout="theo")}
    with pytest.raises(ValueError, match="holdout speaker 'bob'"):
        S.fsdd_split(recs, "test", holdout="bob")


def test_digit_strings_are_seeded_and_scored_by_edit_distance():
    recs = S.fsdd_split(S.synthetic_recordings(0, takes=10), "test")
    a, b = S.eval_strings(recs, 5, seed=3), S.eval_strings(recs, 5, seed=3)
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert all(2 <= len(d) <= 10 for _, d in a)
    assert S.digit_error_rate([[1, 2, 3], [4]], [[1, 3], [4, 5]]) == (0.5, 2, 4)


def _band_db(audio: np.ndarray, lo: float, hi: float, rate: int = 8000) -> float:
    spec = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(audio), 1.0 / rate)
    return 10 * np.log10(spec[(f >= lo) & (f < hi)].sum())


def test_channel_colours_a_recording_and_keeps_its_level():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.1, 8000).astype(np.float32)  # one second of white noise: every band present
    outs = [S.channel(noise, np.random.default_rng(seed), 12.0) for seed in range(200)]
    assert all(len(o) == len(noise) and o.dtype == np.float32 for o in outs)
    rms = lambda a: float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))  # noqa: E731
    assert all(abs(rms(o) / rms(noise) - 1) < 1e-4 for o in outs)
    assert np.array_equal(S.channel(noise, np.random.default_rng(5), 12.0), outs[5])
    # the response differs from draw to draw: low band against high band, relative to the input's
    tilt = np.array([(_band_db(o, 100, 300) - _band_db(o, 2500, 3500)) - (_band_db(noise, 100, 300) -
                     _band_db(noise, 2500, 3500)) for o in outs])
    assert tilt.min() < -15 and tilt.max() > 6 and np.std(tilt) > 4
    # ... and the spectrum stays smooth: neighbouring 100 Hz bands of one draw differ by little
    bands = np.array([[_band_db(o, a, a + 100) - _band_db(noise, a, a + 100) for a in range(500, 2400, 100)]
                      for o in outs[:20]])
    assert np.abs(np.diff(bands, axis=1)).max() < 3.0
    gentle = [S.channel(noise, np.random.default_rng(seed), 2.0) for seed in range(50)]
    assert np.std([_band_db(o, 500, 1000) - _band_db(o, 2000, 3000) for o in gentle]) < np.std(tilt)


def test_channel_augmentation_draws_only_when_asked():
    recs = S.fsdd_split(S.synthetic_recordings(0, takes=12), "train")
    plain, coloured = S.Mix(single_share=0.5), S.Mix(single_share=0.5, channel_db=10.0)
    a = [S.make_utterance(recs, np.random.default_rng([1, k]), plain) for k in range(20)]
    b = [S.make_utterance(recs, np.random.default_rng([1, k]), coloured) for k in range(20)]
    assert [d for _, d in a] == [d for _, d in b]  # the same digits, drawn before the channel
    assert not any(np.array_equal(x, y) for (x, _), (y, _) in zip(a, b))
    from training.data.config import DataConfig

    assert DataConfig.from_dict({"dataset": "fsdd", "channel_db": 12}, "recognize").channel_db == 12.0
    with pytest.raises(ValueError, match=r"data.channel_db must be within \[0, 40\] dB, got -1"):
        DataConfig.from_dict({"dataset": "fsdd", "channel_db": -1}, "recognize")


def test_fsdd_is_verified_before_use(tmp_path):
    (tmp_path / "fsdd" / "recordings").mkdir(parents=True)
    (tmp_path / "fsdd" / "recordings" / "0_x_0.wav").write_bytes(b"RIFF")
    with pytest.raises(S.DataError, match="recordings hash"):
        S.load_fsdd(tmp_path)


def test_the_model_learns_tone_strings():
    torch.manual_seed(0)
    recs = S.fsdd_split(S.synthetic_recordings(0, takes=20), "train")
    features = FeatureExtractor(SPEC)
    mean, std = S.feature_stats(recs, features, count=40)
    model = SpeechRecognizer(SpeechConfig(hidden_size=32, num_layers=1, bidirectional=True, feature_mean=mean,
                                          feature_std=std, dropout=0.0))
    batches = S.SpeechBatches(recs, features, 16, 40, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for batch in batches.batches(0):
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_export_puts_the_features_in_front_and_keeps_parity(tmp_path):
    from training.export import export_bundle

    torch.manual_seed(1)
    for bidirectional, norm in ((True, False), (False, False), (True, True)):
        model = SpeechRecognizer(SpeechConfig(hidden_size=8, num_layers=1, bidirectional=bidirectional,
                                              utterance_norm=norm))
        out = tmp_path / f"{bidirectional}-{norm}"
        m = export_bundle(model, out, name="s", version="1")
        assert set(m.graphs) == ({"acoustic"} if bidirectional else {"acoustic", "acoustic_step"})
        assert m.speech.labels == S.LABELS and m.speech.frame_samples == 160
        assert max(m.extra["export_parity"].values()) < 1e-4
        for role, file in m.graphs.items():
            sess = ort.InferenceSession(str(out / file))
            assert [i.name for i in sess.get_inputs()] == graph_spec(role, "lstm").input_names
        assert read_manifest(out).speech == m.speech


def test_utterance_norm_cancels_a_fixed_band_offset_and_ignores_padding():
    torch.manual_seed(3)
    features = FeatureExtractor(SPEC)
    audio = S.eval_strings(S.fsdd_split(S.synthetic_recordings(0, takes=20), "train"), 1, seed=4)[0][0]
    feats = torch.from_numpy(features(audio[None, :]))
    n = torch.tensor([feats.shape[1]])
    for norm in (True, False):
        model = SpeechRecognizer(SpeechConfig(hidden_size=8, num_layers=1, utterance_norm=norm)).eval()
        # another microphone: every log-mel band shifted by its own constant (a level and a response)
        coloured = feats + torch.linspace(-3.0, 2.0, feats.shape[2])
        with torch.no_grad():
            got, frames = model(feats, n)
            other, _ = model(coloured, n)
            padded, _ = model(torch.cat([feats, torch.full((1, 37, feats.shape[2]), -13.8)], 1), n)
        assert torch.allclose(padded[:, : int(frames)], got, atol=1e-5)  # padding never changes a result
        assert torch.allclose(other, got, atol=1e-4) == norm
    from training.speech_models import loud_mean

    x = torch.tensor([[[1.0], [5.0], [6.0], [9.0]]])
    energy = torch.tensor([[[0.0], [0.0], [-9.0], [0.0]]])
    # frame 2 is 39 dB below the loudest (left out at 20 dB), frame 3 lies past the recording's end
    assert loud_mean(x, energy, torch.tensor([3]), 20.0).item() == 3.0
    assert loud_mean(x, energy, torch.tensor([3]), 60.0).item() == 4.0
    assert loud_mean(x, energy, torch.tensor([0]), 20.0).item() == 0.0
    with pytest.raises(ValueError, match="utterance_norm needs the whole recording"):
        SpeechConfig(utterance_norm=True, bidirectional=False).validate()


def test_evaluation_and_leave_one_speaker_out(tmp_path):
    from training.cli import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps({
        "task": "recognize", "data": {"dataset": "synthetic", "steps_per_epoch": 3, "val_utterances": 4},
        "model": {"hidden_size": 8, "num_layers": 1, "bidirectional": False, "dropout": 0.0},
        "train": {"max_epochs": 1, "batch_size": 4, "progress": False},
    }))
    out = tmp_path / "loso"
    assert main(["speakers", "--config", str(cfg), "--out", str(out), "--speakers", "george,theo", "--max-items", "6"]) == 0
    rows = (out / "speakers.csv").read_text().splitlines()
    assert rows[0].startswith("speaker,accuracy,der,string_accuracy,stream_accuracy,stream_der")
    assert [r.split(",")[0] for r in rows[1:]] == ["george", "theo", "mean", "worst"]
    figures = json.loads((out / "theo" / "figures.json").read_text())
    assert figures["holdout"] == "theo" and figures["recordings"] == 6 and 0.0 <= figures["der"]
    stamp = (out / "theo" / "figures.json").stat().st_mtime_ns
    assert main(["speakers", "--config", str(cfg), "--out", str(out), "--speakers", "theo"]) == 0
    assert (out / "theo" / "figures.json").stat().st_mtime_ns == stamp  # a scored fold is not trained again


def test_distillation_targets_are_the_teachers_posteriors_later():
    torch.manual_seed(2)
    teacher = SpeechRecognizer(SpeechConfig(hidden_size=8, num_layers=1, bidirectional=True)).eval()
    batch = S.collate_audio(S.eval_strings(S.fsdd_split(S.synthetic_recordings(0, takes=10), "test"), 3, seed=1),
                            FeatureExtractor(SPEC))
    with torch.no_grad():
        direct, frames = teacher(batch["features"], batch["feat_len"])
    shifted = S.Teacher(teacher, delay=4)(batch)
    assert shifted.shape == direct.shape
    torch.testing.assert_close(shifted[:, 4:], direct[:, :-4])
    assert torch.all(shifted[:, :4].argmax(-1) == 0) and torch.allclose(shifted[:, :4].exp().sum(-1), torch.ones(3, 4))
    student = SpeechRecognizer(SpeechConfig(hidden_size=8, num_layers=1, bidirectional=False, distill_delay=4))
    student.eval()
    plain = student.loss(batch)
    with_teacher = student.loss({**batch, "teacher": shifted})
    assert with_teacher > plain  # + KL(teacher || student) over the frames the teacher covers
    itself = {**batch, "teacher": student(batch["features"], batch["feat_len"])[0].detach()}
    torch.testing.assert_close(student.loss(itself), plain)  # KL to itself is 0
