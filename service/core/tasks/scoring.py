"""Token log-probabilities for the generate task: per generated token (with the most probable
alternatives), and the Score RPC's continuations after a prompt, read through the LM's step loop."""

from __future__ import annotations

import asyncio

import numpy as np

from service.inference.decoding import log_softmax, top_indices

from ..errors import ServiceError
from ..scheduler import StepItem
from ..tokenizing import TextCodec
from ..types import ContinuationScore, TokenLogprob


class Logprobs:
    """Reports a chosen token's log-probability (and ``top`` alternatives) from (V,) logits, under
    the model's own distribution: temperature, top-k and top-p shape sampling, not what is reported."""

    def __init__(self, codec: TextCodec, top: int = 0) -> None:
        self._codec = codec
        self.top = top

    def entry(self, token: int, logp: float, alternatives: list[TokenLogprob] | None = None) -> TokenLogprob:
        return TokenLogprob(self._codec.token(token), int(token), float(logp), alternatives or [])

    def of(self, logits: np.ndarray, token: int) -> TokenLogprob:
        logp = log_softmax(logits)
        alternatives = [self.entry(int(t), logp[t]) for t in top_indices(logp, self.top)] if self.top else []
        return self.entry(token, logp[token], alternatives)


class ContinuationRows(StepItem):
    """The continuations of one Score request in the LM's step loop. Every continuation starts from
    the prompt's state; each step feeds one token of every continuation still being read (one row
    each) and scores the next. The first tokens are scored from the prompt's last logits, so a
    continuation of n tokens takes n - 1 steps."""

    def __init__(self, continuations: list[list[int]], first_logits: np.ndarray, states: dict[str, np.ndarray],
                 logprobs: Logprobs, deadline: float | None) -> None:
        self.deadline = deadline
        self.future: asyncio.Future[list[list[TokenLogprob]]] = asyncio.get_running_loop().create_future()
        self._conts = continuations
        self._report = logprobs
        self._tokens: list[list[TokenLogprob]] = [[] for _ in continuations]
        self._greedy = [True] * len(continuations)
        self._record(range(len(continuations)), 0, np.asarray(first_logits)[None].repeat(len(continuations), 0))
        self._live = [k for k, ids in enumerate(continuations) if len(ids) > 1]
        self._pos = 0  # index of the token each live row feeds next
        self._names = tuple(states)
        self._states = {n: np.repeat(s, len(self._live), axis=1) for n, s in states.items()}  # (L, rows, H)
        if not self._live:
            self.future.set_result(self._tokens)

    @property
    def rows(self) -> int:  # type: ignore[override]
        return len(self._live)

    @property
    def greedy(self) -> list[bool]:
        return self._greedy

    def _record(self, rows, pos: int, logits: np.ndarray) -> None:
        """Score token ``pos`` of each continuation in ``rows`` from its row of (rows, V) logits."""
        logp = log_softmax(logits)
        best = logp.argmax(axis=1)
        for i, k in enumerate(rows):
            token = self._conts[k][pos]
            self._tokens[k].append(self._report.entry(token, logp[i, token]))
            self._greedy[k] = self._greedy[k] and bool(logp[i, token] >= logp[i, best[i]])

    def step_feeds(self) -> dict[str, np.ndarray]:
        tokens = np.array([[self._conts[k][self._pos]] for k in self._live], dtype=np.int64)
        return {"tokens": tokens, **self._states}

    def advance(self, outputs: dict[str, np.ndarray]) -> bool:
        self._pos += 1
        self._record(self._live, self._pos, outputs["logits"][:, -1])
        keep = [i for i, k in enumerate(self._live) if len(self._conts[k]) > self._pos + 1]
        self._live = [self._live[i] for i in keep]
        if not self._live:
            if not self.future.done():
                self.future.set_result(self._tokens)
            return True
        self._states = {n: np.ascontiguousarray(outputs[n + "_out"][:, keep]) for n in self._names}
        return False

    def fail(self, error: ServiceError) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def continuation_scores(texts: list[str], tokens: list[list[TokenLogprob]], greedy: list[bool],
                        unknown: int | None) -> list[ContinuationScore]:
    return [ContinuationScore(text, float(sum(t.logprob for t in toks)), toks, g,
                              sum(t.token_id == unknown for t in toks))
            for text, toks, g in zip(texts, tokens, greedy, strict=True)]
