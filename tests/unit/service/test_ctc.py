"""CTC decoding (service.inference.ctc) against a brute-force enumeration of paths and hand-worked examples."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from service.inference.ctc import Alternative, forced_alignment, greedy, prefix_beam_search, sequence_log_prob

NEG_INF = -math.inf


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def random_log_probs(seed: int, n_frames: int, vocab: int, scale: float = 2.0) -> np.ndarray:
    return log_softmax(np.random.default_rng(seed).normal(size=(n_frames, vocab)) * scale)


def one_hot(path: list[int], vocab: int) -> np.ndarray:
    """(T, V) log-posteriors with all mass on `path`: 0 on it, -inf elsewhere."""
    lp = np.full((len(path), vocab), -np.inf)
    lp[np.arange(len(path)), path] = 0.0
    return lp


def collapse(path: tuple[int, ...], blank: int) -> tuple[int, ...]:
    return tuple(token for token, _ in itertools.groupby(path) if token != blank)


def brute_force(lp: np.ndarray, blank: int) -> dict[tuple[int, ...], tuple[float, float]]:
    """labeling -> (log of the summed probability of its paths, log probability of its best path), by
    enumerating all V**T paths."""
    n_frames, vocab = lp.shape
    per_labeling: dict[tuple[int, ...], list[float]] = {}
    for path in itertools.product(range(vocab), repeat=n_frames):
        score = float(sum(lp[t, token] for t, token in enumerate(path)))
        per_labeling.setdefault(collapse(path, blank), []).append(score)
    return {labels: (float(np.logaddexp.reduce(scores)), max(scores)) for labels, scores in per_labeling.items()}


def path_from_spans(spans: tuple[tuple[int, int], ...], labels: tuple[int, ...], n_frames: int, blank: int) -> list:
    path = [blank] * n_frames
    for label, (first, last) in zip(labels, spans, strict=True):
        path[first : last + 1] = [label] * (last - first + 1)
    return path


def reference_beam_search(lp: np.ndarray, beam_size: int, blank: int, prune: float) -> list[tuple[tuple, float]]:
    """Hannun et al.'s prefix beam search written plainly (tuples, every candidate scored): [(labels, log P)]."""
    beam = {(): (0.0, NEG_INF)}
    for row in lp:
        best = int(np.argmax(row))
        tokens = [c for c in range(len(row)) if (row[c] >= prune and row[c] > NEG_INF) or c == best]
        nxt: dict[tuple, list[float]] = {}
        for prefix, (p_b, p_nb) in beam.items():
            p_total = np.logaddexp(p_b, p_nb)
            for c in tokens:
                if c == blank:
                    entry = nxt.setdefault(prefix, [NEG_INF, NEG_INF])
                    entry[0] = np.logaddexp(entry[0], p_total + row[c])
                elif prefix and c == prefix[-1]:
                    entry = nxt.setdefault(prefix, [NEG_INF, NEG_INF])
                    entry[1] = np.logaddexp(entry[1], p_nb + row[c])
                    entry = nxt.setdefault(prefix + (c,), [NEG_INF, NEG_INF])
                    entry[1] = np.logaddexp(entry[1], p_b + row[c])
                else:
                    entry = nxt.setdefault(prefix + (c,), [NEG_INF, NEG_INF])
                    entry[1] = np.logaddexp(entry[1], p_total + row[c])
        ranked = sorted(nxt.items(), key=lambda item: -np.logaddexp(*item[1]))[:beam_size]
        beam = {prefix: tuple(scores) for prefix, scores in ranked if np.logaddexp(*scores) > NEG_INF}
    return [(prefix, float(np.logaddexp(*scores))) for prefix, scores in beam.items()]


# (seed, T, V, blank): tiny enough to enumerate V**T paths, with blanks other than 0 among them
ORACLE_CASES = [
    (seed, n_frames, vocab, blank)
    for n_frames, vocab, blank in [
        (1, 2, 0),
        (2, 2, 1),
        (3, 2, 0),
        (3, 3, 0),
        (4, 3, 1),
        (5, 2, 0),
        (5, 3, 0),
        (5, 3, 2),
    ]
    for seed in range(3)
]


@pytest.mark.parametrize(("seed", "n_frames", "vocab", "blank"), ORACLE_CASES)
def test_sequence_log_prob_sums_every_path(seed, n_frames, vocab, blank):
    lp = random_log_probs(seed, n_frames, vocab)
    oracle = brute_force(lp, blank)
    for labels, (log_sum, _) in oracle.items():
        assert sequence_log_prob(lp, labels, blank) == pytest.approx(log_sum, abs=1e-9), labels
    # the labelings of T frames carry all the probability
    assert np.logaddexp.reduce([log_sum for log_sum, _ in oracle.values()]) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(("seed", "n_frames", "vocab", "blank"), ORACLE_CASES)
def test_prefix_beam_search_with_room_for_every_labeling_is_exact(seed, n_frames, vocab, blank):
    lp = random_log_probs(seed, n_frames, vocab)
    oracle = brute_force(lp, blank)
    size = len(oracle)
    alternatives = prefix_beam_search(lp, beam_size=size, blank=blank, n_best=size, prune=-np.inf)

    ranked = sorted(oracle, key=lambda labels: -oracle[labels][0])
    assert [alt.labels for alt in alternatives] == ranked
    for alt in alternatives:
        assert alt.log_prob == pytest.approx(oracle[alt.labels][0], abs=1e-9)
        # the final beam is every labeling and they sum to 1, so the posterior is the probability itself
        assert alt.confidence == pytest.approx(math.exp(oracle[alt.labels][0]), abs=1e-9)
        assert alt.spans == forced_alignment(lp, alt.labels, blank)
    assert sum(alt.confidence for alt in alternatives) == pytest.approx(1.0, abs=1e-9)

    best = prefix_beam_search(lp, beam_size=size, blank=blank, prune=-np.inf)
    assert [alt.labels for alt in best] == [ranked[0]]


@pytest.mark.parametrize(("seed", "n_frames", "vocab", "blank"), ORACLE_CASES)
def test_forced_alignment_is_the_labelings_best_path(seed, n_frames, vocab, blank):
    lp = random_log_probs(seed, n_frames, vocab)
    for labels, (_, best_path) in brute_force(lp, blank).items():
        spans = forced_alignment(lp, labels, blank)
        assert len(spans) == len(labels)
        assert all(first <= last for first, last in spans)
        assert all(prev[1] < nxt[0] for prev, nxt in itertools.pairwise(spans))
        path = path_from_spans(spans, labels, n_frames, blank)
        assert collapse(tuple(path), blank) == labels
        assert sum(lp[t, token] for t, token in enumerate(path)) == pytest.approx(best_path, abs=1e-9), labels


@pytest.mark.parametrize(("seed", "n_frames", "vocab", "blank"), ORACLE_CASES)
def test_greedy_is_the_best_path(seed, n_frames, vocab, blank):
    lp = random_log_probs(seed, n_frames, vocab)
    oracle = brute_force(lp, blank)
    alt = greedy(lp, blank)
    assert alt.log_prob == pytest.approx(max(best for _, best in oracle.values()), abs=1e-9)
    assert oracle[alt.labels][1] == pytest.approx(alt.log_prob, abs=1e-9)
    assert alt.spans == forced_alignment(lp, alt.labels, blank)


def test_greedy_keeps_repeats_split_by_a_blank_and_merges_adjacent_ones():
    a, b = 1, 2
    alt = greedy(one_hot([a, a, 0, a, b, b], 3))
    assert alt == Alternative(labels=(a, a, b), log_prob=0.0, confidence=1.0, spans=((0, 1), (3, 3), (4, 5)))

    alt = greedy(one_hot([a, a, a], 3))
    assert alt.labels == (a,) and alt.spans == ((0, 2),)

    alt = greedy(one_hot([0, b, b, 0, 0, a, 0], 3))
    assert alt.labels == (b, a) and alt.spans == ((1, 2), (5, 5))


def test_greedy_scores_the_best_path_by_hand():
    probs = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.05, 0.05, 0.9]])
    alt = greedy(np.log(probs))
    assert alt.labels == (1, 2)
    assert alt.spans == ((0, 0), (2, 3))
    assert alt.log_prob == pytest.approx(math.log(0.7 * 0.6 * 0.8 * 0.9))
    assert alt.confidence == pytest.approx((0.7 * 0.6 * 0.8 * 0.9) ** (1 / 4))


def test_greedy_breaks_ties_towards_the_lower_index():
    lp = np.log(np.array([[0.4, 0.4, 0.2], [0.1, 0.45, 0.45]]))
    assert greedy(lp).labels == (1,)


def test_a_repeat_needs_a_blank_between_to_fit():
    lp = random_log_probs(7, 2, 3)
    with pytest.raises(ValueError, match="at least 3 frames"):
        forced_alignment(lp, [1, 1])
    assert sequence_log_prob(lp, [1, 1]) == -math.inf
    assert sequence_log_prob(lp, [1, 2, 1]) == -math.inf
    with pytest.raises(ValueError, match="at least 3 frames"):
        forced_alignment(lp, [1, 2, 1])

    # in 3 frames the only path is 1, blank, 1
    lp = random_log_probs(8, 3, 3)
    assert sequence_log_prob(lp, [1, 1]) == pytest.approx(lp[0, 1] + lp[1, 0] + lp[2, 1])
    assert forced_alignment(lp, [1, 1]) == ((0, 0), (2, 2))


def test_forced_alignment_by_hand():
    probs = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    assert forced_alignment(np.log(probs), [1, 2]) == ((0, 1), (3, 3))
    # 1 1 _ 2 (0.8*0.7*0.6*0.8 = 0.2688) beats 1 1 1 2 and 1 1 2 2 (0.0896 each) and 1 _ _ 2 (0.0768).
    # Forcing (2, 1) against the evidence: 2 1 _ _ (0.1*0.7*0.6*0.1 = 0.0042) beats 2 1 1 _ and 2 1 1 1
    # (0.0014 each), 2 _ 1 _ (0.0004) and the rest.
    assert forced_alignment(np.log(probs), [2, 1]) == ((0, 0), (1, 1))


def test_forced_alignment_ties_move_on_earliest():
    # uniform frames make every path of a labeling equally probable; the documented choice is the earliest
    uniform = np.full((5, 3), math.log(1 / 3))
    assert forced_alignment(uniform, [1, 2]) == ((0, 0), (1, 1))
    assert forced_alignment(uniform, [1, 1]) == ((0, 0), (2, 2))
    assert forced_alignment(uniform, [2, 1, 2]) == ((0, 0), (1, 1), (2, 2))


def test_empty_input():
    empty = np.zeros((0, 11), dtype=np.float32)
    nothing = Alternative((), 0.0, 1.0, ())
    assert greedy(empty) == nothing
    assert prefix_beam_search(empty) == [nothing]
    assert prefix_beam_search(empty, n_best=3) == [nothing]
    assert forced_alignment(empty, []) == ()
    assert sequence_log_prob(empty, []) == 0.0
    assert sequence_log_prob(empty, [3]) == -math.inf
    with pytest.raises(ValueError, match="at least 1 frames"):
        forced_alignment(empty, [3])


def test_all_blank():
    lp = one_hot([0] * 6, 11)
    assert greedy(lp) == Alternative((), 0.0, 1.0, ())
    assert prefix_beam_search(lp, n_best=4) == [Alternative((), 0.0, 1.0, ())]
    assert forced_alignment(lp, []) == ()
    assert sequence_log_prob(lp, []) == 0.0
    assert sequence_log_prob(lp, [5]) == -math.inf
    with pytest.raises(ValueError, match="probability 0"):
        forced_alignment(lp, [5])

    # mostly blank but soft: the empty labeling wins and is scored exactly as the all-blank path
    lp = log_softmax(np.random.default_rng(3).normal(size=(20, 11)) + 6.0 * np.eye(11)[0])
    alt = prefix_beam_search(lp)[0]
    assert alt.labels == () and alt.spans == ()
    assert alt.log_prob == pytest.approx(lp[:, 0].sum())


def test_another_blank_index_is_a_relabelling():
    """Moving the blank column to the end and renaming labels must not change any result."""
    vocab = 5
    lp = random_log_probs(11, 12, vocab, scale=1.5)
    moved = np.concatenate([lp[:, 1:], lp[:, :1]], axis=1)  # blank now at vocab - 1, label k now k - 1
    blank = vocab - 1

    def rename(labels: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(label - 1 for label in labels)

    g, g_moved = greedy(lp), greedy(moved, blank=blank)
    assert g_moved == Alternative(rename(g.labels), g.log_prob, g.confidence, g.spans)

    beam, beam_moved = prefix_beam_search(lp, n_best=4), prefix_beam_search(moved, blank=blank, n_best=4)
    assert [rename(alt.labels) for alt in beam] == [alt.labels for alt in beam_moved]
    for alt, alt_moved in zip(beam, beam_moved, strict=True):
        assert alt_moved.log_prob == pytest.approx(alt.log_prob, abs=1e-12)
        assert alt_moved.confidence == pytest.approx(alt.confidence, abs=1e-12)
        assert alt_moved.spans == alt.spans
        assert sequence_log_prob(moved, rename(alt.labels), blank) == pytest.approx(
            sequence_log_prob(lp, alt.labels), abs=1e-12
        )
    # with the blank elsewhere, index 0 is an ordinary label
    assert 0 in prefix_beam_search(one_hot([4, 0, 0, 4, 0], vocab), blank=4)[0].labels


def test_blank_in_the_middle_by_hand():
    # runs: blank | 0 0 | blank | 1 | blank | 1 1
    alt = greedy(one_hot([2, 0, 0, 2, 1, 2, 1, 1], 3), blank=2)
    assert alt.labels == (0, 1, 1) and alt.spans == ((1, 2), (4, 4), (6, 7))
    assert prefix_beam_search(one_hot([2, 0, 0, 2, 1, 2, 1, 1], 3), blank=2)[0] == alt


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros(11),), "2-D"),
        ((np.zeros((2, 3, 11)),), "2-D"),
        ((np.zeros((4, 11), dtype=np.int64),), "float"),
        ((np.zeros((4, 3)), 3), "blank index 3 is outside the vocabulary of size 3"),
        ((np.zeros((4, 3)), -1), "blank index -1"),
        ((np.zeros((0, 0)),), "outside the vocabulary of size 0"),
        ((np.array([[0.0, np.nan]]),), "NaN"),
        ((np.array([[0.0, np.inf]]),), r"\+inf"),
        ((np.array([[0.0, -1.0], [-np.inf, -np.inf]]),), "frame 1 is -inf for every token"),
    ],
)
def test_bad_log_probs_raise_value_error(args, message):
    log_probs, blank = args[0], (args[1] if len(args) > 1 else 0)
    for call in (
        lambda: greedy(log_probs, blank=blank),
        lambda: prefix_beam_search(log_probs, blank=blank),
        lambda: forced_alignment(log_probs, [], blank=blank),
        lambda: sequence_log_prob(log_probs, [], blank=blank),
    ):
        with pytest.raises(ValueError, match=message):
            call()


def test_bad_labels_and_search_settings_raise_value_error():
    lp = random_log_probs(0, 6, 4)
    for bad, message in [([0], r"labels\[0\] = 0"), ([1, 4], r"labels\[1\] = 4"), ([1, -2], "-2"), ([1.5], "integer")]:
        with pytest.raises(ValueError, match=message):
            forced_alignment(lp, bad)
        with pytest.raises(ValueError, match=message):
            sequence_log_prob(lp, bad)
    assert sequence_log_prob(lp, [np.int64(1)]) == pytest.approx(sequence_log_prob(lp, [1]))
    with pytest.raises(ValueError, match="beam_size"):
        prefix_beam_search(lp, beam_size=0)
    with pytest.raises(ValueError, match="n_best"):
        prefix_beam_search(lp, beam_size=4, n_best=5)
    with pytest.raises(ValueError, match="n_best"):
        prefix_beam_search(lp, n_best=0)
    with pytest.raises(ValueError, match="prune"):
        prefix_beam_search(lp, prune=float("nan"))


def test_one_hot_input_is_certain():
    lp = one_hot([0, 3, 3, 0, 3, 0, 0, 7, 1, 1], 11)
    for alt in (greedy(lp), *prefix_beam_search(lp, n_best=8)):
        assert alt.labels == (3, 3, 7, 1)
        assert alt.confidence == pytest.approx(1.0, abs=1e-6)
        assert alt.log_prob == pytest.approx(0.0, abs=1e-9)
        assert alt.spans == ((1, 2), (4, 4), (7, 7), (8, 9))

    # nearly one-hot with every token finite and tried: the rivals share ~T * e^-40 of the mass
    soft = log_softmax(np.where(np.isneginf(lp), 0.0, 40.0) + np.random.default_rng(0).normal(size=lp.shape))
    alternatives = prefix_beam_search(soft, n_best=3, prune=-np.inf)
    assert alternatives[0].labels == (3, 3, 7, 1)
    assert alternatives[0].confidence == pytest.approx(1.0, abs=1e-6)
    assert greedy(soft).confidence == pytest.approx(1.0, abs=1e-6)


def test_two_equally_likely_labelings_share_the_confidence():
    # frame 0 is surely label 1; frame 1 is label 1 or 2 at 0.5 each: (1,) and (1, 2) at 0.5 each
    lp = np.array([[-np.inf, 0.0, -np.inf], [-np.inf, math.log(0.5), math.log(0.5)]])
    pair = prefix_beam_search(lp, n_best=2)
    assert {alt.labels for alt in pair} == {(1,), (1, 2)}
    for alt in pair:
        assert alt.confidence == pytest.approx(0.5, abs=1e-9)
        assert alt.log_prob == pytest.approx(math.log(0.5), abs=1e-9)
    # the posterior is over the whole final beam, not only the alternatives returned
    (only,) = prefix_beam_search(lp, n_best=1)
    assert only.confidence == pytest.approx(0.5, abs=1e-9)

    # one frame, every token possible: (1,) and (2,) at 0.4 each, the empty labeling at 0.2
    lp = np.log(np.array([[0.2, 0.4, 0.4]]))
    ranked = prefix_beam_search(lp, n_best=3)
    assert [alt.confidence for alt in ranked] == pytest.approx([0.4, 0.4, 0.2], abs=1e-9)
    assert {alt.labels for alt in ranked[:2]} == {(1,), (2,)} and ranked[2].labels == ()


def test_prefix_beam_search_with_small_beams_matches_the_plain_algorithm():
    """The implementation skips candidates that cannot enter the beam; that must not change the result."""
    rng = np.random.default_rng(5)
    for case in range(40):
        n_frames, vocab = int(rng.integers(1, 25)), int(rng.integers(2, 7))
        blank, beam_size = int(rng.integers(0, vocab)), int(rng.integers(1, 6))
        prune = [-np.inf, -12.0, -2.0][case % 3]
        lp = random_log_probs(100 + case, n_frames, vocab, scale=float(rng.choice([0.5, 2.0, 5.0])))
        expected = reference_beam_search(lp, beam_size, blank, prune)
        got = prefix_beam_search(lp, beam_size, blank, n_best=beam_size, prune=prune)
        assert [alt.labels for alt in got] == [labels for labels, _ in expected], case
        assert [alt.log_prob for alt in got] == pytest.approx([score for _, score in expected], abs=1e-9)


def test_prefix_beam_search_on_a_digit_posteriorgram():
    # Frames spell the digits 4 2 2 7 (labels 5 3 3 8) in soft noise; a narrow beam must still find them.
    rng = np.random.default_rng(9)
    path = [0, 5, 5, 5, 0, 0, 3, 3, 0, 0, 3, 8, 8, 0, 0]
    lp = log_softmax(rng.normal(size=(len(path), 11)) + 4.0 * np.eye(11)[path]).astype(np.float32)
    alternatives = prefix_beam_search(lp, beam_size=4, n_best=4)
    assert alternatives[0].labels == (5, 3, 3, 8)
    assert 1 <= len(alternatives) <= 4
    assert [alt.log_prob for alt in alternatives] == sorted((alt.log_prob for alt in alternatives), reverse=True)
    assert sum(alt.confidence for alt in alternatives) <= 1.0 + 1e-9
    for alt in alternatives:
        # what the beam kept is a lower bound on the exact forward probability
        assert alt.log_prob <= sequence_log_prob(lp, alt.labels) + 1e-9
        assert alt.spans == forced_alignment(lp, alt.labels)
    # float32 and float64 input agree
    wide = prefix_beam_search(lp.astype(np.float64), beam_size=4, n_best=4)
    assert [alt.labels for alt in wide] == [alt.labels for alt in alternatives]


def test_pruning_every_token_but_the_best_is_greedy():
    lp = random_log_probs(21, 40, 11, scale=1.0)
    (alt,) = prefix_beam_search(lp, beam_size=8, n_best=8, prune=np.inf)
    g = greedy(lp)
    assert alt.labels == g.labels
    assert alt.log_prob == pytest.approx(g.log_prob, abs=1e-9)
    assert alt.confidence == 1.0  # a single path, so a single prefix
