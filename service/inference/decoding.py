"""Token choice: temperature / top-k / top-p sampling, stop strings, greedy and beam search."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of (V,) logits in float64 (-inf entries get 0)."""
    z = logits.astype(np.float64)
    z -= np.max(z)
    np.exp(z, out=z)
    z /= z.sum()
    return z


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Natural-log probabilities of logits along the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """(V,) bool: the logits at least as large as the k-th largest (all when k <= 0 or k >= V)."""
    return _top_k_rows(np.asarray(logits)[None], np.array([k]))[0]


def _top_k_rows(logits: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """(B, V) bool: per row, the logits at least as large as its k-th largest (ties at the k-th all
    kept, as in Hugging Face's top-k); every entry of a row whose k is <= 0 or >= V."""
    v = logits.shape[-1]
    ks = np.where((ks > 0) & (ks < v), ks, v)  # v: keep the whole row
    if ks.min() == ks.max():  # the usual case: one k for the step
        k = int(ks[0])
        return logits >= -np.partition(-logits, k - 1, axis=1)[:, k - 1 : k]
    kth = -np.sort(-logits, axis=1)[np.arange(len(ks)), ks - 1]
    return logits >= kth[:, None]


def top_p_mask(probs: np.ndarray, p: float) -> np.ndarray:
    """(V,) bool: the smallest set of most probable tokens whose total probability reaches p
    (nucleus; always at least the most probable token)."""
    if p >= 1.0:
        return probs > 0
    return _top_p_rows(np.asarray(probs, dtype=np.float64)[None], np.array([p]))[0]


def _top_p_rows(probs: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """(B, V) bool: ``top_p_mask`` of every row with its own p (< 1): the most probable tokens up to
    the first whose cumulative probability reaches p (ties with that one kept too)."""
    ranked = -np.sort(-probs, axis=1)
    cum = np.cumsum(ranked, axis=1)
    n = (cum < (ps * cum[:, -1])[:, None]).sum(axis=1)  # index of the first where cum >= p
    return probs >= ranked[np.arange(len(ps)), np.minimum(n, probs.shape[1] - 1)][:, None]


def top_indices(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest of 1-D ``values``, best first; ties -> lower index.

    Exact, and about ten times faster than an argpartition of the whole array for a beam's
    candidates (beam x vocabulary): the n-th largest of a strided sample is a value that at least
    n entries reach, so one vectorised comparison leaves a few hundred candidates to sort.
    """
    n = min(n, values.size)
    if values.size > 64 * n:
        sample = values[:: values.size // (16 * n)]
        threshold = np.partition(sample, sample.size - n)[sample.size - n]
        idx = np.flatnonzero(values >= threshold)
    else:
        idx = np.arange(values.size)
    if idx.size > 8 * n:  # narrow further before the full sort
        sub = values[idx]
        cut = np.partition(sub, sub.size - n)[sub.size - n]
        idx = idx[sub >= cut]
    return idx[np.lexsort((idx, -values[idx]))[:n]]


def best_candidates(scores: np.ndarray, log_probs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best (parent, token) candidates of a beam step, as flat indices into (rows, V), best first
    (ties -> lower index), and their float64 scores ``scores[parent] + log_probs[parent, token]``.

    The same as ranking every candidate in float64 (``top_indices`` of the float64 sums), at a fraction
    of the memory traffic: the first pass ranks the float32 sums, which differ from the float64 ones by
    less than ``margin``; every candidate within twice that of the n-th is re-scored in float64 and
    ranked again. When float32 cannot separate them (near-ties past ``n + extra``), all are ranked in
    float64."""
    vocab = log_probs.shape[1]
    flat = log_probs.reshape(-1)
    if log_probs.dtype == np.float32:
        extra = max(n, 8)
        cand = (scores.astype(np.float32)[:, None] + log_probs).reshape(-1)
        top = top_indices(cand, n + extra)
        nth = float(cand[top[min(n, top.size) - 1]])
        # float32 rounding of a score, of a log-prob and of their sum: each under 2**-24 of its size
        margin = 2.0**-22 * (1.0 + float(np.abs(scores).max()) + abs(nth))
        if np.isfinite(nth) and (top.size == cand.size or float(cand[top[-1]]) < nth - 2 * margin):
            exact = scores[top // vocab] + flat[top].astype(np.float64)
            order = np.lexsort((top, -exact))[:n]
            return top[order], exact[order]
    cand = (scores[:, None] + log_probs.astype(np.float64)).reshape(-1)
    top = top_indices(cand, n)
    return top, cand[top]


class Sampler:
    """Chooses the next token from (V,) logits: greedy at temperature 0, otherwise temperature,
    then top-k, then top-p, then one draw from the request's own RNG (inverse CDF, so the same
    seed and logits always give the same token). ``sample_rows`` does it for a whole step's rows
    at once, each with its own sampler, and gives every row what it would get alone."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, rng: np.random.Generator | None = None) -> None:
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.rng = rng if rng is not None else np.random.default_rng()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(V,) the distribution sample() draws from (one-hot at temperature 0)."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.temperature == 0:
            p = np.zeros_like(logits)
            p[int(np.argmax(logits))] = 1.0
            return p
        return _probabilities(logits[None], [self])[0]

    def sample(self, logits: np.ndarray) -> int:
        return int(sample_rows(np.asarray(logits)[None], [self])[0])


def _probabilities(logits: np.ndarray, samplers: list[Sampler]) -> np.ndarray:
    """(B, V) float64 distributions of (B, V) logits, row i shaped by samplers[i] (temperature > 0).
    Every operation works along rows, so a row's result does not depend on the others."""
    z = logits.astype(np.float64)
    temperatures = [s.temperature for s in samplers]
    if min(temperatures) == max(temperatures):  # x / t is the same number either way
        if temperatures[0] != 1.0:
            z /= temperatures[0]
    else:
        z /= np.array(temperatures)[:, None]
    ks = [s.top_k for s in samplers]
    if any(ks):
        np.copyto(z, -np.inf, where=~_top_k_rows(z, np.array(ks)))
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    ps = [s.top_p for s in samplers]
    if min(ps) < 1.0:
        nucleus = [i for i, p in enumerate(ps) if p < 1.0]
        if len(nucleus) == len(ps):  # every row (and the one of a single stream)
            np.copyto(z, 0.0, where=~_top_p_rows(z, np.array(ps)))
            z /= z.sum(axis=1, keepdims=True)
        else:
            part = z[nucleus]
            np.copyto(part, 0.0, where=~_top_p_rows(part, np.array([ps[i] for i in nucleus])))
            part /= part.sum(axis=1, keepdims=True)
            z[nucleus] = part
    return z


def sample_rows(logits: np.ndarray, samplers: list[Sampler]) -> np.ndarray:
    """(B,) int64: the next token of every row of (B, V) logits, row i drawn with samplers[i] (and
    one number from its RNG unless greedy): one vectorised pass for a decoding step's rows, the
    same tokens as each sampler alone."""
    if len(samplers) == 1 and not samplers[0].top_k and samplers[0].top_p >= 1.0:
        return np.array([_sample_one(logits[0], samplers[0])], dtype=np.int64)
    hot = [i for i, s in enumerate(samplers) if s.temperature != 0]
    if len(hot) < len(samplers):
        tokens = np.argmax(logits, axis=1)
    else:
        tokens = np.empty(len(samplers), dtype=np.int64)
    if hot:
        every = len(hot) == len(samplers)
        chosen = samplers if every else [samplers[i] for i in hot]
        cum = np.cumsum(_probabilities(logits if every else logits[hot], chosen), axis=1)
        u = np.array([s.rng.random() for s in chosen])
        u *= cum[:, -1]
        drawn = (cum <= u[:, None]).sum(axis=1)  # searchsorted(side="right") per row
        np.minimum(drawn, logits.shape[1] - 1, out=drawn)
        if every:
            return drawn
        tokens[hot] = drawn
    return tokens


def _sample_one(logits: np.ndarray, sampler: Sampler) -> int:
    """One stream's step (no top-k, no top-p): the arithmetic of ``_probabilities`` and ``sample_rows``
    on a (1, V) block, in fewer numpy calls (the same reductions along the row, so the same token)."""
    if sampler.temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64)
    if sampler.temperature != 1.0:
        z /= sampler.temperature
    z -= z.max()
    np.exp(z, out=z)
    z /= z.sum()
    cum = np.cumsum(z)
    drawn = int(np.count_nonzero(cum <= sampler.rng.random() * cum[-1]))
    return min(drawn, len(z) - 1)


class StopChecker:
    """Finds stop strings in generated text and says how much of a text's end could still grow
    into one (streaming must hold that part back)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)

    def find(self, text: str, start: int = 0) -> int:
        """Index of the earliest stop string in ``text[start:]`` (as an index into text), or -1."""
        hits = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        return min(hits, default=-1)

    def holdback(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length normalisation (Wu et al. 2016): ((5 + length) / 6) ** alpha; alpha 0 = raw sum."""
    return ((5.0 + length) / 6.0) ** alpha


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids, BOS/EOS excluded
    logp: float  # sum of log-probs of tokens (and of EOS when ended)
    attention: list[np.ndarray] = field(default_factory=list)  # one (S,) row per token
    ended: bool = False  # produced EOS
    aligned: list[int] = field(default_factory=list)  # per token: the source position its attention peaked on

    def score(self, alpha: float) -> float:
        """Length-normalised log-prob; EOS counts as a token."""
        return self.logp / length_penalty(len(self.tokens) + int(self.ended), alpha)


class GreedySearch:
    """beam_size 1: the most probable token at every step."""

    def __init__(self, eos: int, max_length: int, alpha: float, keep_attention: bool = False) -> None:
        self.eos = eos
        self.max_length = max_length
        self.alpha = alpha
        self.keep_attention = keep_attention
        self.hyp = Hypothesis([], 0.0)
        self.done = max_length <= 0

    @property
    def rows(self) -> int:
        return 1

    def prev_tokens(self, bos: int) -> np.ndarray:
        """(1,) the token to feed next."""
        return np.array([self.hyp.tokens[-1] if self.hyp.tokens else bos], dtype=np.int64)

    def step(self, log_probs: np.ndarray, attention: np.ndarray | None = None) -> np.ndarray:
        """Consume (1, V) log-probs (and (1, S) attention); returns the parent rows (1,)."""
        tok = int(np.argmax(log_probs[0]))
        self.hyp.logp += float(log_probs[0, tok])
        if tok == self.eos:
            self.hyp.ended = True
            self.done = True
        else:
            self.hyp.tokens.append(tok)
            if attention is not None:
                self.hyp.aligned.append(int(np.argmax(attention[0])))
                if self.keep_attention:
                    self.hyp.attention.append(attention[0].copy())
            self.done = len(self.hyp.tokens) >= self.max_length
        return np.zeros(1, dtype=np.int64)

    def best(self) -> Hypothesis:
        return self.hyp


class BeamSearch:
    """Beam search over k live hypotheses. Each step scores the 2k best (parent, token) pairs; an
    EOS among the first k ranks finishes a hypothesis, the others continue until k are live. Stops
    when k hypotheses have finished or max_length tokens were produced; the best finished one by
    GNMT-normalised score wins."""

    def __init__(self, beam_size: int, eos: int, max_length: int, alpha: float, keep_attention: bool = False) -> None:
        self.k = beam_size
        self.eos = eos
        self.max_length = max_length
        self.alpha = alpha
        self.keep_attention = keep_attention
        self.live = [Hypothesis([], 0.0)]
        self.finished: list[Hypothesis] = []
        self.steps = 0
        self.done = max_length <= 0

    @property
    def rows(self) -> int:
        return len(self.live)

    def prev_tokens(self, bos: int) -> np.ndarray:
        """(rows,) the token each live hypothesis feeds next."""
        return np.array([h.tokens[-1] if h.tokens else bos for h in self.live], dtype=np.int64)

    def step(self, log_probs: np.ndarray, attention: np.ndarray | None = None) -> np.ndarray:
        """Consume (rows, V) log-probs (and (rows, S) attention); returns each new live
        hypothesis's parent row (rows',), to reorder the decoder states with."""
        vocab = log_probs.shape[1]
        top, values = best_candidates(np.array([h.logp for h in self.live]), log_probs, 2 * self.k)
        peaks = attention.argmax(axis=1).tolist() if attention is not None else None
        live: list[Hypothesis] = []
        parents: list[int] = []
        for rank, idx in enumerate(top):
            parent, tok = divmod(int(idx), vocab)
            h = self.live[parent]
            if tok == self.eos:
                if rank < self.k:
                    self.finished.append(Hypothesis(h.tokens, float(values[rank]), h.attention, True, h.aligned))
                continue
            att = h.attention + [attention[parent].copy()] if self.keep_attention and attention is not None else h.attention
            aligned = h.aligned + [peaks[parent]] if peaks is not None else h.aligned
            live.append(Hypothesis(h.tokens + [tok], float(values[rank]), att, aligned=aligned))
            parents.append(parent)
            if len(live) == self.k:
                break
        self.steps += 1
        self.live = live
        if len(self.finished) >= self.k or not live:
            self.done = True
        elif self.steps >= self.max_length:
            self.finished.extend(live)
            self.done = True
        return np.asarray(parents, dtype=np.int64)

    def best(self) -> Hypothesis:
        pool = self.finished or self.live
        return max(pool, key=lambda h: h.score(self.alpha))
