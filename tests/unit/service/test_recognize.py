"""Recognition's host-side pieces: the incremental best path of interim results, final results, chunk framing."""

from __future__ import annotations

import numpy as np
import pytest

from service.contract import SpeechSpec
from service.core.tasks.speech_streams import BestPath, speech_result
from service.inference import ctc
from service.inference.speech import ChunkFramer, pad_batch

SPEC = SpeechSpec(sample_rate=8000, n_fft=256, hop=80, n_mels=40, f_min=20.0, f_max=4000.0, stack=2,
                  labels=["", *(str(d) for d in range(10))])


def posteriorgram(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (frames, 11))
    logits[:, 0] += 2.0  # mostly blank, as CTC is
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


@pytest.mark.parametrize("cuts", [[], [1], [3, 4, 10], list(range(1, 60))])
def test_the_best_path_grown_in_parts_is_the_greedy_path_of_the_whole(cuts):
    lp = posteriorgram(60, len(cuts))
    path = BestPath(blank=0)
    for a, b in zip([0, *cuts], [*cuts, 60]):
        path.extend(lp[a:b])
    whole = ctc.greedy(lp, 0)
    assert tuple(path.labels) == whole.labels
    r = path.result(SPEC, 1.2)
    assert r.alternatives[0].transcript == " ".join(SPEC.labels[i] for i in whole.labels)
    assert r.alternatives[0].confidence == pytest.approx(whole.confidence, rel=1e-9)
    assert not r.is_final and r.stability == pytest.approx(float(np.exp(lp[-10:].max(axis=1).mean())))


def test_final_results_rank_alternatives_and_place_words():
    lp = np.full((12, 11), np.log(1e-4))
    lp[:, 0] = np.log(1 - 10e-4)
    lp[3, :] = np.log(1e-4)
    lp[3, 5], lp[3, 0] = np.log(0.7), np.log(0.3 - 9e-4)  # "4" at frame 3, fairly sure
    lp[8, :] = np.log(1e-4)
    lp[8, 2], lp[8, 3] = np.log(0.5), np.log(0.5 - 9e-4)  # "1" or "2" at frame 8
    r = speech_result(SPEC, lp, 3, True, 0.24)
    texts = [a.transcript for a in r.alternatives]
    assert texts[:2] == ["4 1", "4 2"] and len(texts) == 3
    assert [a.confidence for a in r.alternatives] == sorted((a.confidence for a in r.alternatives), reverse=True)
    assert sum(a.confidence for a in r.alternatives) <= 1.0 + 1e-6
    words = r.alternatives[0].words
    assert [(w.word, w.start, w.end) for w in words] == [("4", 0.06, 0.08), ("1", 0.16, 0.18)]
    assert words[0].confidence == pytest.approx(0.7, rel=1e-6) and r.end_time == 0.24
    assert speech_result(SPEC, lp, 1, False, 0.24).alternatives[0].words == []
    empty = speech_result(SPEC, lp[:0], 1, True, 0.0)
    assert [(a.transcript, a.confidence) for a in empty.alternatives] == [("", 1.0)]


CHARS = SpeechSpec(sample_rate=8000, n_fft=256, hop=80, n_mels=40, f_min=20.0, f_max=4000.0, stack=2,
                   labels=["", " ", "a", "b", "c"], word_separator="")


def test_character_models_join_labels_into_words():
    assert CHARS.transcript([2, 3, 1, 4]) == "ab c"
    assert CHARS.words([1, 2, 3, 1, 1, 4, 1]) == [("ab", [1, 2]), ("c", [5])]  # spaces at the ends and doubled
    assert CHARS.transcript([1, 2, 1, 1, 3, 1]) == "a b" and CHARS.transcript([1]) == "" and CHARS.words([]) == []
    assert SPEC.transcript([5, 2]) == "4 1" and SPEC.words([5, 2]) == [("4", [0]), ("1", [1])]
    # frames: a@2, b@4, space@6, c@9 (each fairly sure); the word "ab" spans a's frame to b's
    lp = np.full((12, 5), np.log(1e-4))
    lp[:, 0] = np.log(1 - 4e-4)
    for frame, label, p in ((2, 2, 0.9), (4, 3, 0.6), (6, 1, 0.9), (9, 4, 0.8)):
        lp[frame, :] = np.log(1e-4)
        lp[frame, label], lp[frame, 0] = np.log(p), np.log(1 - p - 3e-4)
    r = speech_result(CHARS, lp, 1, True, 0.24)
    assert r.alternatives[0].transcript == "ab c"
    words = r.alternatives[0].words
    assert [(w.word, w.start, w.end) for w in words] == [("ab", 0.04, 0.1), ("c", 0.18, 0.2)]
    assert words[0].confidence == pytest.approx(0.6, rel=1e-6)  # its least certain character
    path = BestPath(blank=0)
    path.extend(lp)
    assert path.result(CHARS, 0.24).alternatives[0].transcript == "ab c"


def test_framing_hands_out_whole_frames_with_their_context():
    f = ChunkFramer(context=176, frame_samples=160)
    f.push(np.arange(100, dtype=np.float32))
    assert f.take() is None and f.pending == 100
    f.push(np.arange(100, 500, dtype=np.float32))
    chunk = f.take(1)
    assert len(chunk) == 176 + 160 and not chunk[:176].any() and chunk[176] == 0.0 and chunk[-1] == 159.0
    rest = f.take()
    # frame 1 starts at sample 160; its context is samples -16..159 (16 zeros from before the stream)
    assert len(rest) == 176 + 320 and not rest[:16].any()
    np.testing.assert_array_equal(rest[16:], np.arange(0, 480, dtype=np.float32))
    assert f.frames == 3 and f.pending == 20 and f.samples == 500
    audio, lengths = pad_batch([np.ones(3, np.float32), np.ones(5, np.float32)], least=8)
    assert audio.shape == (2, 8) and list(lengths) == [3, 5] and audio[0, 3:].sum() == 0


def test_frame_zero_never_carries_a_word():
    from service.inference.speech import blank_first_frame

    lp = posteriorgram(5, 3)
    lp[0] = np.log(np.full(11, 1e-6))
    lp[0, 7] = 0.0  # a confident guess at frame 0
    masked = blank_first_frame(lp, 0)
    assert masked[0].argmax() == 0 and np.array_equal(masked[1:], lp[1:].astype(np.float32))
    assert ctc.greedy(masked, 0).labels == ctc.greedy(lp[1:], 0).labels
    assert len(blank_first_frame(lp[:0], 0)) == 0


def _labelled(labels: list[int]) -> np.ndarray:
    """Log-probs (T, 11) whose best label at frame t is labels[t]."""
    lp = np.full((len(labels), 11), -20.0, np.float32)
    lp[np.arange(len(labels)), labels] = -0.01
    return lp


def _end_frame(audio: np.ndarray, labels: list[int], end_silence: float, sample_cuts=(), frame_cuts=()) -> int | None:
    from service.core.tasks.speech_streams import Endpointer

    ep = Endpointer(SPEC.frame_samples, SPEC.frame_seconds, end_silence, blank=0)
    for a, b in zip([0, *sample_cuts], [*sample_cuts, len(audio)]):
        ep.push(audio[a:b])
    lp = _labelled(labels)
    for a, b in zip([0, *frame_cuts], [*frame_cuts, len(labels)]):
        if ep.check(lp[a:b]):
            assert ep.end_frame <= b
    return ep.end_frame


def test_the_utterance_ends_after_the_silence_that_follows_a_word():
    fs, frame_s = SPEC.frame_samples, SPEC.frame_seconds  # 160 samples, 20 ms
    rng = np.random.default_rng(0)
    noise = lambda frames: (0.001 * rng.standard_normal(frames * fs)).astype(np.float32)  # noqa: E731
    tone = lambda frames: (0.3 * np.sin(np.arange(frames * fs) * 0.3)).astype(np.float32)  # noqa: E731
    # 10 frames of noise, 30 of speech (a word at frame 20), 60 of noise
    audio = np.concatenate([noise(10), tone(30), noise(60)])
    labels = [0] * 100
    labels[20] = 5
    needed = round(0.4 / frame_s)  # 20 frames
    assert _end_frame(audio, labels, 0.4) == 40 + needed  # the silence counts from the end of the speech
    # the same whatever the chunks of samples and of frames
    for cuts in ([7, 161, 3000], list(range(100, len(audio), 333))):
        assert _end_frame(audio, labels, 0.4, sample_cuts=cuts, frame_cuts=[1, 2, 41, 59, 60]) == 40 + needed
    assert _end_frame(audio, labels, 1.3) is None  # 60 frames of silence: not enough for 1.3 s
    # no word, no end: silence around speech the model did not recognise
    assert _end_frame(audio, [0] * 100, 0.4) is None
    # a word recognised inside the silence (a model names a word a little after it) restarts the count
    late = list(labels)
    late[45] = 7
    assert _end_frame(audio, late, 0.4) == 46 + needed
    # steady noise as loud as the speech is never silence; nor is a pause that is not 20 dB below the speech
    assert _end_frame(np.concatenate([tone(40), 0.5 * tone(60)]), labels, 0.4) is None
    # frames past the audio (the tail appended at half-close) are silent
    assert _end_frame(np.concatenate([noise(10), tone(30)]), labels + [0] * 30, 0.4) == 40 + needed
