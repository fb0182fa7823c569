"""Translate task: tokenise, batch encoder calls, decode every sentence (greedy or beam search)
through the shared step scheduler, detokenise."""

from __future__ import annotations

import asyncio

import numpy as np

from service.contract import BundleError
from service.inference.decoding import Hypothesis
from service.inference.seq2seq import (
    DEFAULT_TOKEN_LIMIT,
    Encoded,
    SentenceDecoder,
    make_search,
    pad_sources,
    split_encoded,
    step_layout,
    target_limit,
)

from ..batching import DynamicBatcher
from ..config import effective_limit
from ..errors import InvalidArgument, ServiceError
from ..repository import Bundle
from ..scheduler import StepItem
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
        self._states = tuple(f"state_{s}" for s in m.state_names)
        self._encoder_graph = bundle.graphs["encoder"]
        self._decoder_graph = bundle.graphs["decoder_step"]
        self.max_source_tokens = effective_limit(cfg.max_source_tokens, m.limits, "max_source_tokens", DEFAULT_TOKEN_LIMIT)
        self.max_target_tokens = effective_limit(cfg.max_target_tokens, m.limits, "max_target_tokens", DEFAULT_TOKEN_LIMIT)
        self._encoder: DynamicBatcher[list[int], Encoded] = ctx.batcher(m.name, m.version, "encoder", self._encode_batch)
        self._decoder = ctx.step_scheduler(m.name, m.version, "decoder_step", self._decoder_graph,
                                           step_layout(self._states))

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
        self._decoder.start()

    async def close(self) -> None:
        await self._encoder.close()
        await self._decoder.close()

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

    def prepare(self, req: TranslateRequest) -> tuple[list[tuple[list[int], list[str]]], int]:
        """Validate and tokenise; returns (ids, tokens) per text and the beam size."""
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
        encoded = []
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidArgument(f"texts[{i}] is empty", field="texts")
            if len(text) > cfg.max_text_chars:
                raise InvalidArgument(f"texts[{i}] has {len(text)} characters; the limit is {cfg.max_text_chars}", field="texts")
            ids, tokens = self._src.encode(text)
            if not ids:
                raise InvalidArgument(f"texts[{i}] has no tokens", field="texts")
            if len(ids) > self.max_source_tokens:
                raise InvalidArgument(
                    f"texts[{i}] has {len(ids)} tokens; model {self.name!r} accepts at most {self.max_source_tokens}",
                    field="texts",
                )
            encoded.append((ids, tokens))
        return encoded, max(beam, 1)

    async def translate(self, req: TranslateRequest, deadline: float | None) -> TranslateResult:
        sources, beam = self.prepare(req)
        with self._ctx.slots.hold(len(sources)):
            encoded = await _all(self._encoder.submit(ids, deadline) for ids, _ in sources)
            alpha = self._ctx.config.length_penalty
            items = []
            for (ids, _), enc in zip(sources, encoded):
                limit = target_limit(len(ids), self.max_target_tokens, req.max_length)
                search = make_search(beam, self._eos, limit, alpha, req.return_attention)
                items.append(SentenceDecode(SentenceDecoder(search, enc, self._bos, self._states), deadline))
            try:
                for item in items:
                    self._decoder.add(item)
                hyps = await _all(item.future for item in items)
            finally:
                for item in items:
                    self._decoder.remove(item)
        self._ctx.count_tokens(self.name, self.version, sum(len(h.tokens) for h in hyps))
        out = []
        for (ids, src_tokens), hyp in zip(sources, hyps):
            attention = None
            if req.return_attention:
                attention = np.stack(hyp.attention) if hyp.attention else np.zeros((0, len(ids)), dtype=np.float32)
            out.append(
                Translation(
                    text=self._tgt.decode(hyp.tokens),
                    tokens=[self._tgt.token(t) for t in hyp.tokens],
                    source_tokens=src_tokens,
                    score=hyp.score(alpha),
                    attention=attention,
                )
            )
        return TranslateResult(self.name, self.version, out)

    async def _encode_batch(self, sentences: list[list[int]]) -> list[Encoded]:
        src, lengths = pad_sources(sentences, self._pad)
        out = await self._encoder_graph.run({"src": src, "src_len": lengths})
        return split_encoded(out, lengths.tolist(), self._states)


async def _all(awaitables) -> list:
    """Await all; raise the first error only after every one has finished (no orphaned errors)."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results
