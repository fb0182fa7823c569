"""CTC decoding of (frames, vocabulary) log-posteriors: greedy, prefix beam search, forced alignment, scoring."""

from __future__ import annotations

import heapq
import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_NEG_INF = float("-inf")


@dataclass(frozen=True)
class Alternative:
    """One decoded labeling of a posteriorgram."""

    labels: tuple[int, ...]  # the collapsed label sequence (blanks and repeats removed)
    # natural log of P(labels | frames) over the alignments the decoder kept: all those the beam search kept,
    # the single best path for greedy
    log_prob: float
    # in [0, 1]: the beam search's posterior over its final beam, greedy's geometric-mean frame probability
    confidence: float
    # one per label: (first frame, last frame inclusive) where it is emitted in the most probable (Viterbi)
    # alignment of this labeling
    spans: tuple[tuple[int, int], ...]


def greedy(log_probs: np.ndarray, blank: int = 0) -> Alternative:
    """Best path decoding of (T, V) log-posteriors: argmax per frame, repeats collapsed, blanks dropped.

    log_prob is the best *path's* log probability (sum of the per-frame maxima), a lower bound on
    log P(labels | frames). confidence is exp(mean over frames of that maximum), the geometric mean of
    the winning per-frame probability: 1.0 for a one-hot posteriorgram, lower the flatter the frames,
    and independent of T so short and long utterances compare. spans are the runs of the best path, which
    is also the Viterbi alignment of its labeling (it is the best of all paths). Ties within a frame go to
    the lower token index. T == 0 gives Alternative((), 0.0, 1.0, ()).
    """
    lp = _checked_log_probs(log_probs, blank)
    n_frames = lp.shape[0]
    if n_frames == 0:
        return Alternative((), 0.0, 1.0, ())
    path = lp.argmax(axis=1)
    log_prob = float(lp[np.arange(n_frames), path].sum())
    starts = np.flatnonzero(np.r_[True, path[1:] != path[:-1]])
    ends = np.r_[starts[1:] - 1, n_frames - 1]
    emitted = path[starts] != blank
    return Alternative(
        labels=tuple(path[starts][emitted].tolist()),
        log_prob=log_prob,
        # min(): float32 log-softmax can round a certain frame to a hair above 0
        confidence=min(1.0, math.exp(log_prob / n_frames)),
        spans=tuple(zip(starts[emitted].tolist(), ends[emitted].tolist())),
    )


def prefix_beam_search(
    log_probs: np.ndarray, beam_size: int = 8, blank: int = 0, n_best: int = 1, prune: float = -12.0
) -> list[Alternative]:
    """CTC prefix beam search without a language model (Hannun et al. 2014, 'First-Pass Large Vocabulary
    Continuous Speech Recognition using Bi-Directional Recurrent DNNs').

    log_probs: (T, V) float32/float64 log-softmax outputs. Each prefix keeps its probability split into
    alignments ending in blank and ending in its last label, so that a repeated label extends the prefix
    only after a blank. Per frame, tokens with log-prob below `prune` (natural log) are not tried, except
    the frame's best token; -inf tries every token. `beam_size` prefixes survive each frame.

    Returns the `n_best` (<= beam_size) most probable labelings, best first, fewer if the final beam holds
    fewer: log_prob sums every alignment the search kept (a lower bound on the exact sequence_log_prob,
    equal to it when nothing was pruned); confidence is that probability normalised over every prefix in
    the final beam, not only the n_best; spans come from forced_alignment. Equal scores keep the order in
    which the search met them. T == 0 returns [Alternative((), 0.0, 1.0, ())].
    """
    lp = _checked_log_probs(log_probs, blank)
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
    if math.isnan(prune):
        raise ValueError("prune must be a number (-inf to try every token), got nan")
    n_frames = lp.shape[0]
    if n_frames == 0:
        return [Alternative((), 0.0, 1.0, ())]

    # Which tokens to try per frame, decided for all frames at once; -inf tokens add nothing, and the
    # frame's best is always tried so that the beam never empties.
    tried = (lp >= prune) & (lp > _NEG_INF)
    tried[np.arange(n_frames), lp.argmax(axis=1)] = True
    try_blank = tried[:, blank].tolist()
    tried[:, blank] = False
    # Labels to try, most probable first, so that the scan of a prefix's extensions can stop at the
    # first one that cannot enter the beam.
    order = np.argsort(-lp, axis=1, kind="stable")
    label_rows = [row_order[row_tried[row_order]].tolist() for row_order, row_tried in zip(order, tried)]
    tried_rows = tried.tolist()
    rows = lp.tolist()  # Python floats: the per-prefix arithmetic below is scalar, and numpy scalars are slow

    # Prefixes are nodes of a trie, so that extending one and hashing it cost O(1) instead of O(length):
    # node 0 is the empty prefix; node n > 0 is prefix parent[n] followed by label_of[n].
    parent = [-1]
    label_of = [-1]  # -1 matches no label, so the empty prefix has no "last label" to repeat
    child: dict[int, int] = {}  # node * V + label -> node
    n_vocab = lp.shape[1]
    # (node, log P(alignment ends in blank), log P(alignment ends in the node's label), their logaddexp),
    # best first
    beam: list[tuple[int, float, float, float]] = [(0, 0.0, _NEG_INF, 0.0)]
    for t in range(n_frames):
        row = rows[t]
        tried_here = tried_rows[t]
        blank_lp = row[blank] if try_blank[t] else None
        in_beam = {entry[0]: entry for entry in beam}
        nxt: dict[int, list[float]] = {}  # node -> [log P ends in blank, log P ends in label]

        # First every prefix already in the beam, with all its sources: staying on a blank, repeating its
        # last label, and being extended from its parent when that is in the beam too.
        for node, p_b, p_nb, p_total in beam:
            new_b = p_total + blank_lp if blank_lp is not None else _NEG_INF
            last = label_of[node]
            # A repeated label without a blank between continues the last emission.
            new_nb = p_nb + row[last] if last >= 0 and tried_here[last] else _NEG_INF
            source = in_beam.get(parent[node])
            if source is not None and tried_here[last]:
                # Appending the parent's last label again is a new emission only after a blank.
                from_parent = (source[1] if last == label_of[source[0]] else source[3]) + row[last]
                new_nb = _logaddexp(new_nb, from_parent)
            if new_b != _NEG_INF or new_nb != _NEG_INF:
                nxt[node] = [new_b, new_nb]

        # Then new prefixes, which have one source each (their parent), so their score is final when made.
        # `top` holds the best beam_size scores so far: a candidate below its least cannot survive the frame,
        # which prunes exactly, leaving the result the same as scoring every candidate.
        top = [_logaddexp(p_b, p_nb) for p_b, p_nb in nxt.values()]
        heapq.heapify(top)
        while len(top) > beam_size:
            heapq.heappop(top)
        floor = top[0] if len(top) == beam_size else _NEG_INF
        labels_here = label_rows[t]
        best_label_lp = row[labels_here[0]] if labels_here else _NEG_INF
        for node, p_b, _, p_total in beam:
            if p_total + best_label_lp < floor:
                break  # the beam is best first: no later prefix can do better
            last = label_of[node]
            for c in labels_here:
                c_lp = row[c]
                if p_total + c_lp < floor:
                    break  # labels are most probable first
                ext_lp = (p_b if c == last else p_total) + c_lp
                if ext_lp < floor or ext_lp == _NEG_INF:
                    continue
                key = node * n_vocab + c
                extended = child.get(key)
                if extended is None:
                    extended = child[key] = len(parent)
                    parent.append(node)
                    label_of.append(c)
                elif extended in in_beam:
                    continue  # scored above
                nxt[extended] = [_NEG_INF, ext_lp]
                if len(top) < beam_size:
                    heapq.heappush(top, ext_lp)
                    if len(top) == beam_size:
                        floor = top[0]
                elif ext_lp > floor:
                    heapq.heapreplace(top, ext_lp)
                    floor = top[0]
        # nlargest is sorted()[:n], stable: equal scores keep insertion order, so the result is deterministic.
        beam = heapq.nlargest(
            beam_size,
            ((node, p_b, p_nb, _logaddexp(p_b, p_nb)) for node, (p_b, p_nb) in nxt.items()),
            key=_score,
        )

    log_norm = _logsumexp([p_total for _, _, _, p_total in beam])
    alternatives = []
    for node, _, _, p_total in beam[:n_best]:
        labels = []
        while node:
            labels.append(label_of[node])
            node = parent[node]
        labels.reverse()
        alternatives.append(
            Alternative(
                labels=tuple(labels),
                log_prob=p_total,
                confidence=min(1.0, math.exp(p_total - log_norm)),
                spans=_spans(_viterbi(lp, tuple(labels), blank)),
            )
        )
    return alternatives


def forced_alignment(log_probs: np.ndarray, labels: Sequence[int], blank: int = 0) -> tuple[tuple[int, int], ...]:
    """Viterbi alignment of `labels` to the frames of (T, V) log-posteriors under CTC's topology
    (labels interleaved with optional blanks; a repeated label needs a blank between its emissions).

    Returns per label the (first, last) frame, inclusive, where it is emitted on the most probable path.
    Among equally probable paths it takes the one that moves on from each state earliest. Raises ValueError
    if the labels cannot fit in T frames (T < len(labels) + number of adjacent repeats) or if every
    alignment has probability 0 (a -inf log-prob on each).
    """
    lp = _checked_log_probs(log_probs, blank)
    labs = _checked_labels(labels, lp.shape[1], blank)
    needed = _min_frames(labs)
    if lp.shape[0] < needed:
        raise ValueError(
            f"{len(labs)} labels need at least {needed} frames (a blank between adjacent repeats), got {lp.shape[0]}"
        )
    if lp.shape[0] == 0:
        return ()
    return _spans(_viterbi(lp, labs, blank))


def sequence_log_prob(log_probs: np.ndarray, labels: Sequence[int], blank: int = 0) -> float:
    """Exact natural-log P(labels | frames) of (T, V) log-posteriors: the CTC forward algorithm in log space,
    summing every alignment. -inf when the labels cannot fit in T frames."""
    lp = _checked_log_probs(log_probs, blank)
    labs = _checked_labels(labels, lp.shape[1], blank)
    n_frames = lp.shape[0]
    if n_frames < _min_frames(labs):
        return _NEG_INF
    if n_frames == 0:
        return 0.0
    ext, skip_to, skip_from = _extended(labs, blank)
    emit = lp[:, ext]  # (T, S): the log-prob of each extended state's token per frame
    n_states = ext.size
    alpha = np.full(n_states, _NEG_INF)
    alpha[: min(2, n_states)] = emit[0, :2]  # a path starts in the leading blank or the first label
    from_prev = np.full(n_states, _NEG_INF)
    from_skip = np.full(n_states, _NEG_INF)  # stays -inf where a label may not be skipped over
    for t in range(1, n_frames):
        from_prev[1:] = alpha[:-1]
        from_skip[skip_to] = alpha[skip_from]
        alpha = np.logaddexp(np.logaddexp(alpha, from_prev), from_skip) + emit[t]
    # a path ends in the last label or the trailing blank
    return float(alpha[-1] if n_states == 1 else np.logaddexp(alpha[-1], alpha[-2]))


def _checked_log_probs(log_probs: np.ndarray, blank: int) -> np.ndarray:
    """(T, V) float64 copy-or-view of `log_probs`, or ValueError saying what is wrong with it or `blank`."""
    arr = np.asarray(log_probs)
    if arr.ndim != 2:
        raise ValueError(f"log_probs must be 2-D (frames, vocabulary), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"log_probs must be a float array of log-probabilities, got dtype {arr.dtype}")
    vocab = arr.shape[1]
    try:
        blank = operator.index(blank)
    except TypeError:
        raise ValueError(f"blank must be an integer token index, got {blank!r}") from None
    if not 0 <= blank < vocab:
        raise ValueError(f"blank index {blank} is outside the vocabulary of size {vocab} (log_probs shape {arr.shape})")
    if not np.isfinite(arr).all():
        # -inf is a legitimate log(0); anything else non-finite is a broken model output.
        if np.isnan(arr).any():
            raise ValueError(f"log_probs contains NaN (first at frame {int(np.flatnonzero(np.isnan(arr).any(1))[0])})")
        if np.isposinf(arr).any():
            raise ValueError("log_probs contains +inf; expected log-probabilities (<= 0)")
        dead = np.isneginf(arr).all(axis=1)
        if dead.any():
            raise ValueError(f"log_probs frame {int(np.flatnonzero(dead)[0])} is -inf for every token")
    return arr.astype(np.float64, copy=False)


def _checked_labels(labels: Sequence[int], vocab: int, blank: int) -> tuple[int, ...]:
    """`labels` as a tuple of ints, or ValueError if one is not a non-blank token of the vocabulary."""
    try:
        labs = tuple(operator.index(label) for label in labels)
    except TypeError:
        raise ValueError(f"labels must be integer token indices, got {labels!r}") from None
    for i, label in enumerate(labs):
        if label == blank or not 0 <= label < vocab:
            raise ValueError(
                f"labels[{i}] = {label} is not a label: it must be in [0, {vocab}) and not the blank ({blank})"
            )
    return labs


def _min_frames(labels: tuple[int, ...]) -> int:
    """Fewest frames that can emit `labels`: one per label plus a blank between adjacent repeats."""
    return len(labels) + sum(a == b for a, b in itertools.pairwise(labels))


def _extended(labels: tuple[int, ...], blank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CTC's extended sequence (blank, l1, blank, l2, ..., blank) as (S,) token indices, S = 2L + 1, and
    the states a path may enter by skipping the blank before them (skip_to), with their sources (skip_from =
    skip_to - 2): a label state whose label differs from the previous one."""
    ext = np.full(2 * len(labels) + 1, blank, dtype=np.intp)
    ext[1::2] = labels
    skip_to = np.array([2 * i + 1 for i in range(1, len(labels)) if labels[i] != labels[i - 1]], dtype=np.intp)
    return ext, skip_to, skip_to - 2


def _viterbi(lp: np.ndarray, labels: tuple[int, ...], blank: int) -> np.ndarray:
    """(T,) extended-sequence state per frame on the most probable path of checked, fitting `labels`
    (T >= 1). Raises ValueError if that path has probability 0."""
    n_frames = lp.shape[0]
    ext, skip_to, skip_from = _extended(labels, blank)
    emit = lp[:, ext]
    n_states = ext.size
    # Only the scores are kept per frame; the back pointers are recomputed for the one path traced back,
    # which is cheaper than an argmax over every state of every frame.
    delta = np.full((n_frames, n_states), _NEG_INF)
    delta[0, :2] = emit[0, :2]
    from_prev = np.full(n_states, _NEG_INF)
    from_skip = np.full(n_states, _NEG_INF)
    for t in range(1, n_frames):
        prev = delta[t - 1]
        from_prev[1:] = prev[:-1]
        from_skip[skip_to] = prev[skip_from]
        best = np.maximum(prev, from_prev, out=delta[t])
        np.maximum(best, from_skip, out=best)
        best += emit[t]
    last = delta[-1]
    state = n_states - 1 if n_states == 1 or last[-1] >= last[-2] else n_states - 2
    if last[state] == _NEG_INF:
        raise ValueError(f"labels {labels} have probability 0 under log_probs (every alignment has a -inf token)")
    can_skip = np.zeros(n_states, dtype=bool)
    can_skip[skip_to] = True
    states = np.empty(n_frames, dtype=np.intp)
    states[-1] = state
    for t in range(n_frames - 1, 0, -1):
        prev = delta[t - 1]
        # Tracing back, ties keep the later state, which makes the path advance as early as it can.
        best_from = state
        if state >= 1 and prev[state - 1] > prev[best_from]:
            best_from = state - 1
        if can_skip[state] and prev[state - 2] > prev[best_from]:
            best_from = state - 2
        state = best_from
        states[t - 1] = state
    return states


def _spans(states: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Per label, (first, last) frame of its state's run on a Viterbi path (label i is state 2i + 1; a
    valid path visits each label state in one run, in order)."""
    frames = np.flatnonzero(states % 2 == 1)
    if frames.size == 0:
        return ()
    label_index = states[frames] // 2
    new = np.r_[True, label_index[1:] != label_index[:-1]]
    firsts = frames[new]
    lasts = frames[np.r_[new[1:], True]]
    return tuple(zip(firsts.tolist(), lasts.tolist()))


def _logaddexp(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) for Python floats, exact for -inf; math here is ~10x faster than np.logaddexp."""
    if a < b:
        a, b = b, a
    if b == _NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


def _logsumexp(values: list[float]) -> float:
    """log(sum(exp(values))) of a non-empty list of Python floats, without underflow."""
    top = max(values)
    if top == _NEG_INF:
        return top
    return top + math.log(math.fsum(math.exp(v - top) for v in values))


def _score(item: tuple[int, float, float, float]) -> float:
    return item[3]
