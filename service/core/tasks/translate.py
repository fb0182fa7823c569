"""Translate task: split each text into sentences and tokenise them, batch encoder calls, decode every
sentence (greedy or beam search) through the shared step scheduler, pass unknown words through,
detokenise and join each text's sentences."""

from __future__ import annotations

import asyncio

import numpy as np

from service.contract import BundleError
from service.inference.decoding import Hypothesis, length_penalty
from service.inference.seq2seq import (
    DEFAULT_TOKEN_LIMIT,
    Encoded,
    SentenceDecoder,
    make_search,
    pad_sources,
    restore_unknown,
    split_encoded,
    step_layout,
    target_limit,
)

from ..batching import DynamicBatcher
from ..config import effective_limit
from ..errors import InvalidArgument, ServiceError
from ..repository import Bundle
from ..observe import LaneMeter
from ..scheduler import StepItem, StepScheduler
from ..sentences import SentenceSplitter
from ..types import TranslateRequest, TranslateResult, Translation
from .context import TaskContext


class SentenceDecode(StepItem):
    """One sentence in the decoder's step loop: the shared SentenceDecoder, plus the request's
    deadline and the future its caller awaits."""

    def __init__(self, decoder: SentenceDecoder, deadline: float | None) -> None:
        self.decoder = decoder
        self.deadline = deadline
        self.future: asyncio.Future[Hypothesis] = asyncio.get_running_loop().create_future()

    @property
    def rows(self) -> int:  # type: ignore[override]
        return self.decoder.rows

    def step_feeds(self) -> dict[str, np.ndarray]:
        return self.decoder.step_feeds()

    def static_feeds(self) -> dict[str, np.ndarray]:
        return self.decoder.static_feeds()

    def advance(self, outputs: dict[str, np.ndarray]) -> bool:
        if not self.decoder.advance(outputs):
            return False
        if not self.future.done():
            self.future.set_result(self.decoder.best())
        return True

    def fail(self, error: ServiceError) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class TranslateModel:
    """One loaded translation version: batched encoder, step-scheduled decoder."""

    task = "translate"

    def __init__(self, bundle: Bundle, ctx: TaskContext) -> None:
        m = bundle.manifest
        self.name, self.version = m.name, m.version
        self._ctx = ctx
        cfg = ctx.config
        self._src = bundle.codecs["source"]
        self._tgt = bundle.codecs["target"]
        self._pad, self._bos, self._eos = (m.special_tokens[k] for k in ("pad", "bos", "eos"))
        self._unk = m.special_tokens["unk"]
        self._languages = dict(m.languages)
        self._splitter = SentenceSplitter(self._languages.get("source", ""))
        self._joiner = "" if self._languages.get("target") in _UNSPACED else " "
        self._states = tuple(f"state_{s}" for s in m.state_names)
        self._encoder_graph = bundle.graphs["encoder"]
        self._decoder_graph = bundle.graphs["decoder_step"]
        self.max_source_tokens = effective_limit(cfg.max_source_tokens, m.limits, "max_source_tokens", DEFAULT_TOKEN_LIMIT)
        self.max_target_tokens = effective_limit(cfg.max_target_tokens, m.limits, "max_target_tokens", DEFAULT_TOKEN_LIMIT)
        self._encoder: DynamicBatcher[list[int], Encoded] = ctx.batcher(m.name, m.version, "encoder", self._encode_batch)
        meter = LaneMeter(ctx.meter(m.name, m.version, "decoder_step"), cfg.decoder_lanes)
        self._lanes = [
            ctx.step_scheduler(m.name, m.version, "decoder_step", self._decoder_graph, step_layout(self._states),
                               meter=meter.lane(k))
            for k in range(cfg.decoder_lanes)
        ]

    def limits(self) -> dict[str, int]:
        cfg = self._ctx.config
        return {
            "max_texts": cfg.max_texts,
            "max_text_chars": cfg.max_text_chars,
            "max_source_tokens": self.max_source_tokens,
            "max_target_tokens": self.max_target_tokens,
            "max_beam": cfg.max_beam,
        }

    def start(self) -> None:
        self._encoder.start()
        for lane in self._lanes:
            lane.start()

    async def close(self) -> None:
        await self._encoder.close()
        await asyncio.gather(*(lane.close() for lane in self._lanes))

    async def warmup(self) -> None:
        """Encode two sentences of different lengths in one call, run one decoder step on both."""
        src = np.array([[self._unk, self._unk, self._unk], [self._unk, self._unk, self._pad]], dtype=np.int64)
        enc = await self._encoder_graph.run({"src": src, "src_len": np.array([3, 2], dtype=np.int64)})
        if enc["memory"].shape[:2] != (2, 3):
            raise BundleError(f"{self._encoder_graph.name}: memory has shape {enc['memory'].shape}, expected (2, 3, M)")
        mask = (src != self._pad).astype(np.float32)
        feeds = {"prev_token": np.array([self._bos, self._bos], dtype=np.int64), "memory": enc["memory"],
                 "memory_keys": enc["memory_keys"], "src_mask": mask, **{s: enc[s] for s in self._states}}
        out = await self._decoder_graph.run(feeds)
        lp = out["log_probs"]
        if lp.ndim != 2 or lp.shape[0] != 2 or lp.shape[1] < self._tgt.vocab_size:
            raise BundleError(
                f"{self._decoder_graph.name}: log_probs have shape {lp.shape}; expected (2, V >= {self._tgt.vocab_size})"
            )
        if not np.all(np.isfinite(lp[:, self._eos])):
            raise BundleError(f"{self._decoder_graph.name}: warm-up log-probs are not finite")

    def prepare(self, req: TranslateRequest) -> tuple[list[list[Sentence]], int]:
        """Validate, split each text into sentences and tokenise them; returns each text's sentences
        and the beam size."""
        cfg = self._ctx.config
        texts = list(req.texts)
        if not texts:
            raise InvalidArgument("texts is empty; send at least one text", field="texts")
        if len(texts) > cfg.max_texts:
            raise InvalidArgument(f"texts has {len(texts)} entries; the limit is {cfg.max_texts}", field="texts")
        beam = req.beam_size
        if not 0 <= beam <= cfg.max_beam:
            raise InvalidArgument(f"beam_size {beam} must be within 0..{cfg.max_beam} (0 or 1 = greedy)", field="beam_size")
        if not 0 <= req.max_length <= self.max_target_tokens:
            raise InvalidArgument(
                f"max_length {req.max_length} must be within 0..{self.max_target_tokens} (0 = automatic)", field="max_length"
            )
        out = []
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidArgument(f"texts[{i}] is empty", field="texts")
            if len(text) > cfg.max_text_chars:
                raise InvalidArgument(f"texts[{i}] has {len(text)} characters; the limit is {cfg.max_text_chars}", field="texts")
            parts = self._splitter.split(text)
            sentences = [Sentence(*self._src.encode_words(part)) for part in parts]
            sentences = [s for s in sentences if s.ids]
            if not sentences:
                raise InvalidArgument(f"texts[{i}] has no tokens", field="texts")
            for k, s in enumerate(sentences):
                if len(s.ids) > self.max_source_tokens:
                    where = f"texts[{i}]" if len(sentences) == 1 else f"texts[{i}], sentence {k + 1} of {len(sentences)},"
                    raise InvalidArgument(
                        f"{where} has {len(s.ids)} tokens; model {self.name!r} accepts at most {self.max_source_tokens}"
                        " per sentence", field="texts",
                    )
            total = sum(len(s.ids) for s in sentences)
            if req.return_attention and total > self.max_source_tokens:  # the matrix spans the whole text
                raise InvalidArgument(
                    f"texts[{i}] has {total} tokens in {len(sentences)} sentences; with return_attention a text "
                    f"may have at most {self.max_source_tokens}", field="texts",
                )
            out.append(sentences)
        return out, max(beam, 1)

    async def translate(self, req: TranslateRequest, deadline: float | None) -> TranslateResult:
        texts, beam = self.prepare(req)
        sentences = [s for text in texts for s in text]
        alpha = self._ctx.config.length_penalty
        # One decoding stream per sentence, at most max_texts at once (as many as a request of
        # one-sentence texts claims): a text of many sentences goes through in waves.
        width = min(len(sentences), self._ctx.config.max_texts)
        hyps: list[Hypothesis] = []
        with self._ctx.slots.hold(width):
            for k in range(0, len(sentences), width):
                hyps += await self._decode(sentences[k : k + width], beam, alpha, req, deadline)
        self._ctx.count_tokens(self.name, self.version, sum(len(h.tokens) for h in hyps))
        out, k = [], 0
        for text in texts:
            out.append(self._assemble(text, hyps[k : k + len(text)], alpha, req.return_attention))
            k += len(text)
        self._ctx.count_source_tokens(self.name, self.version, sum(len(t.source_tokens) for t in out),
                                      sum(t.unknown_source_tokens for t in out))
        return TranslateResult(self.name, self.version, out)

    async def _decode(self, sentences: list[Sentence], beam: int, alpha: float, req: TranslateRequest,
                      deadline: float | None) -> list[Hypothesis]:
        """Encode ``sentences`` in the batcher, then decode them all in the shared step loop."""
        encoded = await _all(self._encoder.submit(s.ids, deadline) for s in sentences)
        items = []
        for s, enc in zip(sentences, encoded):
            limit = target_limit(len(s.ids), self.max_target_tokens, req.max_length)
            search = make_search(beam, self._eos, limit, alpha, req.return_attention)
            items.append(SentenceDecode(SentenceDecoder(search, enc, self._bos, self._states), deadline))
        lanes: list[StepScheduler] = []
        try:
            for item in items:
                # Beam searches join the least busy lane (the first on ties). Greedy ones all share the
                # first: their host work per step is small, so splitting them only makes calls smaller.
                lanes.append(self._lanes[0] if beam == 1 else min(self._lanes, key=lambda lane: lane.active))
                lanes[-1].add(item)
            return await _all(item.future for item in items)
        finally:
            for lane, item in zip(lanes, items):
                lane.remove(item)

    def _assemble(self, sentences: list[Sentence], hyps: list[Hypothesis], alpha: float, attention: bool) -> Translation:
        """One text's translation from its sentences': texts and tokens joined, attention as a
        block-diagonal matrix, the score of all tokens together."""
        pieces, kept, copied = [], [], 0  # per sentence: its pieces, and which of its tokens they are
        for s, h in zip(sentences, hyps):
            p, c = restore_unknown(h, self._unk, s.ids, s.words, self._tgt.token, self._tgt.word_marker)
            kept.append([i for i, x in enumerate(p) if x is not None])
            pieces.append([x for x in p if x is not None])
            copied += c
        matrix = None
        if attention:
            matrix = np.zeros((sum(map(len, pieces)), sum(len(s.ids) for s in sentences)), np.float32)
            r = c = 0
            for s, h, rows in zip(sentences, hyps, kept):
                if h.attention and rows:
                    matrix[r : r + len(rows), c : c + len(s.ids)] = np.stack(h.attention)[rows]
                r, c = r + len(rows), c + len(s.ids)
        logp = sum(h.logp for h in hyps)
        length = sum(len(h.tokens) + int(h.ended) for h in hyps)
        unknown_words = list(dict.fromkeys(w for s in sentences for w in s.unknown_words(self._unk)))
        return Translation(
            text=self._joiner.join(t for t in (self._tgt.join(p) for p in pieces) if t),
            tokens=[t for p in pieces for t in p],
            source_tokens=[t for s in sentences for t in s.tokens],
            score=logp / length_penalty(length, alpha),
            attention=matrix,
            unknown_source_tokens=sum(s.unknown(self._unk) for s in sentences),
            unknown_words=unknown_words,
            copied_words=copied,
            sentences=len(sentences),
            warning=self._warning(sentences),
        )

    def _warning(self, sentences: list[Sentence]) -> str:
        """Said when most words of the source are unknown to the model: it is probably in another
        language, or far outside the model's domain."""
        words = [i for s in sentences for i, w in zip(s.ids, s.words) if any(ch.isalnum() for ch in w)]
        unknown = sum(i == self._unk for i in words)
        if not words or 2 * unknown <= len(words):
            return ""
        src, tgt = (language_name(self._languages.get(r, "")) for r in ("source", "target"))
        said = f", which translates {src} to {tgt}" if src and tgt else ""
        guess = f": is the text in {src}?" if src else ""
        return (f"{unknown} of {len(words)} source words are unknown to model {self.name!r}{said}{guess} "
                "The translation is unreliable.")

    async def _encode_batch(self, sentences: list[list[int]]) -> list[Encoded]:
        src, lengths = pad_sources(sentences, self._pad)
        out = await self._encoder_graph.run({"src": src, "src_len": lengths})
        return split_encoded(out, lengths.tolist(), self._states)


class Sentence:
    """One sentence of a text: its token ids, token strings and the words they came from."""

    __slots__ = ("ids", "tokens", "words")

    def __init__(self, ids: list[int], tokens: list[str], words: list[str]) -> None:
        self.ids, self.tokens, self.words = ids, tokens, words

    def unknown(self, unk: int) -> int:
        return sum(i == unk for i in self.ids)

    def unknown_words(self, unk: int) -> list[str]:
        return [w for i, w in zip(self.ids, self.words) if i == unk]


_LANGUAGES = {"de": "German", "en": "English", "zh": "Chinese", "fr": "French", "es": "Spanish", "it": "Italian",
              "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "pt": "Portuguese", "ru": "Russian", "cs": "Czech"}
_UNSPACED = {"zh", "ja", "th", "lo", "km", "my"}  # languages written without spaces between words


def language_name(code: str) -> str:
    """English name of an ISO 639-1 code (the code itself when not in the table; "" for "")."""
    return _LANGUAGES.get(code, code)


async def _all(awaitables) -> list:
    """Await all; raise the first error only after every one has finished (no orphaned errors)."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results
