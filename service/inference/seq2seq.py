"""Translation decoding, shared by the server and training's evaluation: one sentence's decoding state
(greedy or beam search over the contract's ``decoder_step`` graph), the target-length rule, and a
synchronous driver that decodes many sentences through one stacked step call each step.

The server runs ``SentenceDecoder`` inside its step scheduler (sentences of many requests share each
call); evaluation runs the same objects through ``translate_ids``, so the figures it reports are
what the server answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .decoding import BeamSearch, GreedySearch, Hypothesis
from .steps import StepLayout

Graph = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # feeds -> outputs by name
DEFAULT_LENGTH_PENALTY = 0.6  # GNMT alpha for beam search: score / ((5 + len) / 6) ** alpha
DEFAULT_TOKEN_LIMIT = 256  # max source / target tokens when neither the server nor the bundle sets one
PADDED_INPUTS = ("memory", "memory_keys", "src_mask")


def target_limit(source_len: int, max_target_tokens: int, max_length: int = 0) -> int:
    """How many target tokens a sentence of ``source_len`` tokens may get: ``max_length`` when
    given, else twice the source plus 10, capped by ``max_target_tokens``."""
    return max_length or min(max_target_tokens, 2 * source_len + 10)


def source_words(text: str, offsets: Sequence[tuple[int, int]]) -> list[str]:
    """Per token (its character ``offsets`` in ``text``), the piece of text it came from, spaces
    stripped: an unknown token's piece is the word the model did not know."""
    return [text[a:b].strip() for a, b in offsets]


def word_marker(tokenizer) -> str:
    """The word-start mark of an HF tokenizer's decoder ("▁" for Metaspace, else "")."""
    return getattr(tokenizer.decoder, "replacement", "")


def join_pieces(tokenizer, pieces: Sequence[str | None]) -> str:
    """Text of token pieces through an HF tokenizer's decoder (None: a piece left out)."""
    kept = [p for p in pieces if p is not None]
    return tokenizer.decoder.decode(kept) if tokenizer.decoder is not None else "".join(kept)


def restore_unknown(hyp: Hypothesis, unk: int, source_ids: Sequence[int], source_words: Sequence[str],
                    piece: Callable[[int], str], marker: str = "") -> tuple[list[str | None], int]:
    """The target pieces of ``hyp`` with unknown words passed through: an unknown-word token whose
    attention peaked on a source token the model did not know becomes that source word as written
    (the copy replacement of Luong et al. 2015 and Jean et al. 2015; what a vocabulary lacks is mostly
    names, numbers and rare words). An unknown token aligned to a known source token (a rare target
    word) is left out: pasting the known source word untranslated scored lower on the validation sets.
    ``piece`` gives a token id's string; ``marker`` is the target tokenizer's word-start mark ("▁" for
    Metaspace), put before copied words so they stay words of their own. Unknown tokens in a row
    attending to the same word copy it once (a model stuck on a word it cannot say repeats the token).
    Returns one piece per token of ``hyp`` (None where a token is left out) and how many source words
    were copied."""
    pieces, copied, last = [], 0, -1  # last: the source position copied by the previous token
    for i, token in enumerate(hyp.tokens):
        if token != unk:
            pieces.append(piece(token))
            last = -1
            continue
        j = hyp.aligned[i] if i < len(hyp.aligned) else -1
        if 0 <= j < len(source_ids) and source_ids[j] == unk and j != last:
            word = source_words[j]
            pieces.append(marker + word if marker and any(c.isalnum() for c in word) else word)
            copied += 1
        else:
            pieces.append(None)
        last = j
    return pieces, copied


def make_search(beam: int, eos: int, limit: int, alpha: float, keep_attention: bool = False) -> GreedySearch | BeamSearch:
    """Greedy search for ``beam`` <= 1, else beam search of that width."""
    if beam <= 1:
        return GreedySearch(eos, limit, alpha, keep_attention)
    return BeamSearch(beam, eos, limit, alpha, keep_attention)


def step_layout(state_names: Sequence[str]) -> StepLayout:
    """How ``decoder_step`` feeds of several sentences stack (``state_names``: e.g. state_h, state_c)."""
    return StepLayout(tuple(state_names), tuple(s + "_out" for s in state_names), PADDED_INPUTS)


class Encoded:
    """One sentence's encoder outputs, batch axis of size 1."""

    def __init__(self, memory: np.ndarray, keys: np.ndarray, states: dict[str, np.ndarray]) -> None:
        self.memory = memory  # (1, S, M)
        self.keys = keys  # (1, S, A)
        self.states = states  # state_h / state_c -> (L, 1, H)


def pad_sources(sentences: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """``src`` (B, S) right-padded with ``pad`` and ``src_len`` (B,), as the encoder takes them."""
    lengths = [len(s) for s in sentences]
    src = np.full((len(sentences), max(lengths)), pad, dtype=np.int64)
    for b, ids in enumerate(sentences):
        src[b, : len(ids)] = ids
    return src, np.asarray(lengths, dtype=np.int64)


def split_encoded(outputs: dict[str, np.ndarray], lengths: Sequence[int], state_names: Sequence[str]) -> list[Encoded]:
    """One encoder call's outputs, cut into each sentence's (padding dropped)."""
    return [
        Encoded(
            np.ascontiguousarray(outputs["memory"][b : b + 1, :n]),
            np.ascontiguousarray(outputs["memory_keys"][b : b + 1, :n]),
            {s: np.ascontiguousarray(outputs[s][:, b : b + 1]) for s in state_names},
        )
        for b, n in enumerate(lengths)
    ]


class SentenceDecoder:
    """One sentence being decoded: one row per live hypothesis of its search."""

    def __init__(self, search: GreedySearch | BeamSearch, enc: Encoded, bos: int, state_names: Sequence[str]) -> None:
        self.search = search
        self._enc = enc
        self._bos = bos
        self._names = tuple(state_names)  # graph input names; outputs add "_out"
        self._states = dict(enc.states)
        self._src_len = enc.memory.shape[1]
        self._static: tuple[int, dict[str, np.ndarray]] | None = None

    @property
    def rows(self) -> int:
        return self.search.rows

    def step_feeds(self) -> dict[str, np.ndarray]:
        """The previous token and state of every live hypothesis."""
        return {"prev_token": self.search.prev_tokens(self._bos), **self._states}

    def static_feeds(self) -> dict[str, np.ndarray]:
        """The encoder outputs and mask repeated per row; cached while the row count holds."""
        rows = self.rows
        if self._static is None or self._static[0] != rows:
            self._static = (
                rows,
                {
                    "memory": np.repeat(self._enc.memory, rows, axis=0),  # (rows, S, M)
                    "memory_keys": np.repeat(self._enc.keys, rows, axis=0),  # (rows, S, A)
                    "src_mask": np.ones((rows, self._src_len), dtype=np.float32),  # (rows, S)
                },
            )
        return self._static[1]

    def advance(self, outputs: dict[str, np.ndarray]) -> bool:
        """Consume this sentence's rows of one step's outputs; True when the search is done."""
        attention = outputs.get("attention")
        if attention is not None:
            attention = attention[:, : self._src_len]  # drop the step's padding
        parents = self.search.step(outputs["log_probs"], attention)
        if self.search.done:
            return True
        self._states = {n: np.ascontiguousarray(outputs[n + "_out"][:, parents]) for n in self._names}
        return False

    def best(self) -> Hypothesis:
        return self.search.best()


def translate_ids(
    encoder: Graph, decoder: Graph, sources: Sequence[Sequence[int]], *, pad: int, bos: int, eos: int,
    state_names: Sequence[str], beam: int = 1, max_target_tokens: int = DEFAULT_TOKEN_LIMIT,
    alpha: float = DEFAULT_LENGTH_PENALTY, batch_size: int = 64,
) -> list[Hypothesis]:
    """Decode token-id ``sources`` (each non-empty) as the server does, ``batch_size`` sentences at a
    time (sorted by length): one encoder call, then one stacked ``decoder_step`` call per step for
    every sentence still decoding. Returns each source's best hypothesis, in input order."""
    layout = step_layout(state_names)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    best: list[Hypothesis | None] = [None] * len(sources)
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        src, lengths = pad_sources([sources[i] for i in idx], pad)
        encoded = split_encoded(encoder({"src": src, "src_len": lengths}), lengths.tolist(), state_names)
        live = {
            i: SentenceDecoder(make_search(beam, eos, target_limit(len(sources[i]), max_target_tokens), alpha),
                               enc, bos, state_names)
            for i, enc in zip(idx, encoded)
        }
        while live:
            items = list(live.items())
            feeds = layout.stack([d.step_feeds() for _, d in items])
            feeds.update(layout.pad([d.static_feeds() for _, d in items]))
            outputs = decoder(feeds)
            start = 0
            for i, d in items:
                rows = d.rows
                if d.advance(layout.split(outputs, start, start + rows)):
                    best[i] = d.best()
                    del live[i]
                start += rows
    return best  # type: ignore[return-value]  # every entry set: each search ends within its limit
