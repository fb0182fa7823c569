"""Synthetic voices for speech training (training.data.tts): real flite and espeak-ng runs, the cache, and how
their takes join the training mix."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from training.data import DataConfig
from training.data import speech as S
from training.data import tts
from training.data.files import DataError
from tests.conftest import REPO

VOICES = [("flite", "kal"), ("espeak-ng", "en-gb+f2")]
needs_tools = pytest.mark.skipif(shutil.which("flite") is None or shutil.which("espeak-ng") is None,
                                 reason="flite and espeak-ng are not installed (apt-get install flite espeak-ng)")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQSERVE_CACHE_DIR", str(tmp_path))
    return tmp_path


@needs_tools
def test_each_voice_says_each_digit_in_takes_that_differ_and_come_back_from_the_cache(cache):
    recs = tts.tts_recordings(takes=2, seed=0, voice_list=VOICES, workers=2)
    assert len(recs) == 2 * 10 * 2
    assert {r.speaker for r in recs} == {"tts:flite:kal", "tts:espeak-ng:en-gb+f2"}
    assert sorted({r.take for r in recs}) == [10, 11]  # training takes
    for r in recs:
        assert r.audio.dtype == np.float32 and 0.15 * S.FSDD_RATE < len(r.audio) < 1.5 * S.FSDD_RATE
        assert np.abs(r.audio).max() == pytest.approx(0.27, rel=1e-5)
    by_key = {(r.speaker, r.digit, r.take): r.audio for r in recs}
    # a second take is drawn at another pitch and rate: other audio
    assert not np.array_equal(by_key[("tts:espeak-ng:en-gb+f2", 7, 10)], by_key[("tts:espeak-ng:en-gb+f2", 7, 11)])
    assert len(list(cache.glob("tts-digits-*.npz"))) == 1
    again = tts.tts_recordings(takes=2, seed=0, voice_list=VOICES)
    assert [(r.digit, r.speaker, r.take) for r in again] == [(r.digit, r.speaker, r.take) for r in recs]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(again, recs))
    other = tts.tts_recordings(takes=2, seed=1, voice_list=VOICES)  # another seed: another cache entry
    assert len(list(cache.glob("tts-digits-*.npz"))) == 2
    assert not np.array_equal(other[-1].audio, recs[-1].audio)


@needs_tools
def test_the_fsdd_trained_bundle_hears_the_synthetic_digits(cache):
    """The takes are speech of the right word: the bundled recognizer, which never heard these voices, names most."""
    from service.inference.ctc import greedy
    from service.inference.speech import blank_first_frame, pad_batch
    from training.evaluate import ort_graphs

    bundle = REPO / "models" / "speech-digits" / "1"
    recs = tts.tts_recordings(takes=1, seed=0, voice_list=[("flite", "kal16"), ("flite", "rms")], workers=2)
    acoustic = ort_graphs(bundle, {"acoustic": "acoustic.onnx"}, int8_weights=True)["acoustic"]
    audio, lens = pad_batch([r.audio for r in recs])
    out = acoustic({"audio": audio, "audio_len": lens})
    said = [list(greedy(blank_first_frame(out["log_probs"][i, : out["frames"][i]], 0), 0).labels) for i in range(len(recs))]
    right = sum(s == [r.digit + 1] for s, r in zip(said, recs))
    assert right >= 14, (right, said)  # of 20 (measured: 19); chance would be 2


def test_a_missing_synthesiser_is_named_with_how_to_install_it(monkeypatch):
    monkeypatch.setattr(tts.shutil, "which", lambda name: None if name == "espeak-ng" else "/usr/bin/" + name)
    with pytest.raises(DataError, match=r"espeak-ng \(Debian/Ubuntu: apt-get install flite espeak-ng\)"):
        tts.tools()


def _pool(speaker: str, n: int = 40) -> list[S.Recording]:
    return [S.Recording(i % 10, speaker, 10 + i, np.full(400 + i, 0.1, np.float32)) for i in range(n)]


def test_synthetic_takes_join_the_mix_at_their_share_and_leave_it_unchanged_at_zero(monkeypatch):
    fsdd, synth = _pool("jackson"), _pool("tts:flite:kal")
    mix = S.Mix(snr_db=(30.0, 30.0))

    def utterances(extra, share):
        rng = np.random.default_rng(3)
        return [S.make_utterance(fsdd, rng, mix, extra, share) for _ in range(200)]

    plain = utterances((), 0.0)
    assert all(np.array_equal(a, b) and d == e for (a, d), (b, e) in zip(plain, utterances(synth, 0.0)))
    picked = []  # every recording a mix speeds up passes through S._speed
    monkeypatch.setattr(S, "_speed", lambda audio, factor: (picked.append(audio), audio)[1])
    synthetic = {id(r.audio) for r in synth}
    rng = np.random.default_rng(0)
    for share, low, high in ((1.0, 1.0, 1.0), (0.3, 0.25, 0.35), (0.0, 0.0, 0.0)):
        picked.clear()
        for _ in range(300):
            S.make_utterance(fsdd, rng, mix, synth, share)
        assert low <= sum(id(a) in synthetic for a in picked) / len(picked) <= high


def test_the_share_is_validated():
    with pytest.raises(ValueError, match=r"data.tts_share must be within \[0, 1\], got 1.5"):
        DataConfig.from_dict({"dataset": "fsdd", "tts_share": 1.5}, "recognize")
    with pytest.raises(ValueError, match="data.tts_takes must be >= 1, got 0"):
        DataConfig.from_dict({"dataset": "fsdd", "tts_takes": 0}, "recognize")
