"""Generate task: one prefill call for the prompt, then one shared step per token, sampled with
each request's own RNG; text streams out as it becomes final."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import cast

import numpy as np

from service.contract import BundleError
from service.inference.decoding import Sampler, StopChecker, sample_rows
from service.inference.steps import StepLayout

from ..config import effective_limit
from ..errors import InvalidArgument, ServiceError
from ..repository import Bundle
from ..scheduler import StepItem
from ..tokenizing import StreamDecoder
from ..types import GenerateChunk, GenerateRequest, ScoreRequest, ScoreResult, TokenLogprob
from .context import TaskContext
from .scoring import ContinuationRows, Logprobs, continuation_scores

DEFAULT_PROMPT_TOKENS = 1024
CHOSEN = "chosen tokens"  # run_steps' sampled tokens among a step's outputs (no graph output is named so)


class GenerationStream(StepItem):
    """One request in the LM's step loop: its state (L, 1, H), sampler, RNG and decoder."""

    rows = 1
    multi_step = True

    def __init__(
        self,
        sampler: Sampler,
        decoder: StreamDecoder,
        eos: int | None,
        max_tokens: int,
        prompt_tokens: int,
        state_names: tuple[str, ...],
        deadline: float | None,
        logprobs: Logprobs | None = None,
    ) -> None:
        self.deadline = deadline
        self._logprobs = logprobs
        self._reported: list[TokenLogprob] = []  # logprobs of tokens not yet sent in a chunk
        self.queue: asyncio.Queue[GenerateChunk | ServiceError] = asyncio.Queue()
        self._sampler = sampler
        self._decoder = decoder
        self._eos = eos
        self._max_tokens = max_tokens
        self._prompt_tokens = prompt_tokens
        self._names = state_names
        self._states: dict[str, np.ndarray] = {}
        self._next = 0
        self._chosen: deque[tuple[int, np.ndarray]] = deque()  # tokens (and their logits) to settle
        self.completion_tokens = 0
        self._finished = False

    def accept(self, logits: np.ndarray, states: dict[str, np.ndarray]) -> bool:
        """Sample the next token from (V,) logits; queue the text it makes final. True when done."""
        return self.choose(self._sampler.sample(logits), logits, states) | self.settle()

    def choose(self, token: int, logits: np.ndarray, states: dict[str, np.ndarray]) -> bool:
        """``token``, sampled from (V,) ``logits``, is the next one; the next step feeds it with
        ``states``. True when it ends the stream (EOS, max_tokens); ``settle`` makes its text."""
        self._next = token
        self._states = states
        return self._take(token, logits)

    def _take(self, token: int, logits: np.ndarray) -> bool:
        """Count ``token`` and keep it for ``settle``; True when it ends the stream (EOS, max_tokens)."""
        self.completion_tokens += 1
        self._chosen.append((token, logits))
        return (self._eos is not None and token == self._eos) or self.completion_tokens >= self._max_tokens

    def settle(self) -> bool:
        """Queue, as one chunk, the text that the chosen tokens not yet settled make final (one per
        step, or a round's). True when the stream is done."""
        text, finish, count = "", "", 0
        while self._chosen and not self._finished:
            token, logits = self._chosen.popleft()
            count = self.completion_tokens - len(self._chosen)  # this token's place in the completion
            if self._logprobs is not None:
                self._reported.append(self._logprobs.of(logits, token))
            if self._eos is not None and token == self._eos:
                text, finish = text + self._decoder.finish(), "eos"
            else:
                text += self._decoder.push(token)
                if self._decoder.stopped:
                    finish = "stop"
                elif count >= self._max_tokens:
                    text, finish = text + self._decoder.finish(), "length"
            self._finished = bool(finish)
        self._chosen.clear()  # after a stop string: tokens chosen past it are dropped
        if text or finish:
            self.queue.put_nowait(GenerateChunk(text, finish, self._prompt_tokens, count, self._reported))
            self._reported = []
        return self._finished

    def step_feeds(self) -> dict[str, np.ndarray]:
        return {"tokens": np.array([[self._next]], dtype=np.int64), **self._states}

    @classmethod
    def advance_many(cls, items: list[StepItem], bounds: list[tuple[int, int]], outputs: dict[str, np.ndarray],
                     layout: StepLayout) -> list[bool | Exception]:
        """Every stream's next token in one vectorised sampling pass (each row with its own
        sampler and RNG: the same tokens as alone); their text waits for ``settle_many``."""
        streams = cast(list[GenerationStream], items)
        rows = [lo for lo, _ in bounds]  # one row per stream
        logits = outputs["logits"][rows, -1]
        chosen = outputs.get(CHOSEN)  # run_steps sampled them already
        tokens = (sample_rows(logits, [st._sampler for st in streams]) if chosen is None else chosen[rows]).tolist()
        states = [outputs[n] for n in layout.state_outputs]
        return [st.choose(token, row_logits, {n: s[:, row : row + 1] for n, s in zip(st._names, states)})
                for st, row, token, row_logits in zip(streams, rows, tokens, logits)]

    @classmethod
    def advance_steps(cls, items: list[StepItem], bounds: list[tuple[int, int]], steps: list[dict[str, np.ndarray]],
                      layout: StepLayout) -> list[bool | Exception]:
        """A round's tokens (``run_steps`` sampled them) for every stream at once: each takes them
        in order up to the one that ends it; the state after its last is the next round's input."""
        streams = cast(list[GenerationStream], items)
        rows = [lo for lo, _ in bounds]
        tokens = np.stack([out[CHOSEN][rows] for out in steps], axis=1).tolist()  # (streams, steps)
        logits = [out["logits"] for out in steps]
        results: list[bool | Exception] = []
        for st, row, chosen in zip(streams, rows, tokens):
            done = False
            for k, token in enumerate(chosen):
                if done := st._take(token, logits[k][row, -1]):
                    break
            st._next = chosen[k]
            st._states = {n: steps[k][o][:, row : row + 1] for n, o in zip(st._names, layout.state_outputs)}
            results.append(done)
        return results

    @classmethod
    def run_steps(cls, items: list[StepItem], feeds: dict[str, np.ndarray], steps: int,
                  run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                  layout: StepLayout, more: Callable[[list[dict[str, np.ndarray]]], bool] | None = None,
                  ) -> list[dict[str, np.ndarray]]:
        """``steps`` tokens of every stream: graph, sampling (each row's own sampler, as
        ``advance_many`` would), graph, ... Each step's outputs carry its tokens under CHOSEN. A
        stream that ends on the way (EOS, max_tokens, a stop string) ignores the tokens after.
        With ``more``: further rounds on this thread, fed from the last step, while no stream can
        have ended (no EOS, max_tokens not reached) and ``more(round)`` takes the finished round
        (the loop makes its text while the next runs); returns the last round."""
        streams = cast(list[GenerationStream], items)
        samplers = [st._sampler for st in streams]
        pairs = list(zip(layout.state_inputs, layout.state_outputs))
        # Tokens each stream may still take: read before any round of this call reached the loop.
        left = min(st._max_tokens - st.completion_tokens for st in streams)
        eos = np.array(sorted({st._eos for st in streams} - {None}), dtype=np.int64)
        while True:
            outputs = []
            for _ in range(steps):
                out = run(feeds)
                out[CHOSEN] = sample_rows(out["logits"][:, -1], samplers)
                outputs.append(out)
                feeds = {"tokens": out[CHOSEN][:, None], **{i: out[o] for i, o in pairs}}
            left -= steps
            if more is None or left <= 0:
                return outputs
            if eos.size and np.isin(np.concatenate([out[CHOSEN] for out in outputs]), eos).any():
                return outputs  # a stream may have ended at EOS: the loop takes the round back
            if not more(outputs):
                return outputs

    @classmethod
    def settle_many(cls, items: list[StepItem]) -> list[bool | Exception]:
        results: list[bool | Exception] = []
        for st in cast(list[GenerationStream], items):
            try:
                results.append(st.settle())
            except Exception as err:  # noqa: BLE001 - one broken stream must not stop the others
                results.append(err)
        return results

    def fail(self, error: ServiceError) -> None:
        self.queue.put_nowait(error)


def coalesce(chunk: GenerateChunk, queue: asyncio.Queue) -> tuple[GenerateChunk, ServiceError | None]:
    """``chunk`` merged with the chunks already waiting behind it, and an error found behind them
    (to raise after sending what came before it). While the consumer writes one message the step
    loop keeps sampling; sending what piled up as one message keeps a stream at the model's pace
    instead of one gRPC message per token. ``completion_tokens`` is cumulative, so clients still
    count every token."""
    chunks = [chunk]
    while not chunk.finish_reason and not queue.empty():
        nxt = queue.get_nowait()
        if isinstance(nxt, ServiceError):
            return _joined(chunks), nxt
        chunk = nxt
        chunks.append(nxt)
    return _joined(chunks), None


def _joined(chunks: list[GenerateChunk]) -> GenerateChunk:
    last = chunks[-1]
    if len(chunks) == 1:
        return last
    return GenerateChunk("".join(c.text for c in chunks), last.finish_reason, last.prompt_tokens,
                         last.completion_tokens, [t for c in chunks for t in c.logprobs])


class GenerateModel:
    """One loaded language-model version."""

    task = "generate"

    def __init__(self, bundle: Bundle, ctx: TaskContext) -> None:
        m = bundle.manifest
        self.name, self.version = m.name, m.version
        self._ctx = ctx
        cfg = ctx.config
        self._codec = bundle.codecs["text"]
        self._bos = m.special_tokens.get("bos")
        self._eos = m.special_tokens.get("eos")
        self._unk = m.special_tokens.get("unk")
        self._states = tuple(f"state_{s}" for s in m.state_names)
        self._layers, self._hidden = m.num_layers, m.hidden_size
        self._lm = bundle.graphs["lm"]
        self.max_prompt_tokens = effective_limit(cfg.max_prompt_tokens, m.limits, "max_prompt_tokens", DEFAULT_PROMPT_TOKENS)
        self.max_tokens = effective_limit(cfg.max_tokens, m.limits, "max_tokens", cfg.max_tokens)
        self._scheduler = ctx.step_scheduler(
            m.name, m.version, "lm", self._lm,
            StepLayout(state_inputs=self._states, state_outputs=tuple(s + "_out" for s in self._states)))
        self._prefill_meter = ctx.meter(m.name, m.version, "lm_prefill")

    def limits(self) -> dict[str, int]:
        cfg = self._ctx.config
        return {
            "max_prompt_chars": cfg.max_text_chars,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_tokens": self.max_tokens,
            "max_stop": cfg.max_stop,
            "max_stop_chars": cfg.max_stop_chars,
        }

    def start(self) -> None:
        self._scheduler.start()

    async def close(self) -> None:
        await self._scheduler.close()

    def _zeros(self, batch: int) -> dict[str, np.ndarray]:
        return {s: np.zeros((self._layers, batch, self._hidden), dtype=np.float32) for s in self._states}

    async def warmup(self) -> None:
        """A two-row prefill of 3 tokens, then one single-token step; check shapes."""
        tokens = np.zeros((2, 3), dtype=np.int64)
        out = await self._lm.run({"tokens": tokens, **self._zeros(2)})
        logits = out["logits"]
        if logits.ndim != 3 or logits.shape[:2] != (2, 3) or logits.shape[2] < self._codec.vocab_size:
            raise BundleError(f"{self._lm.name}: logits have shape {logits.shape}; expected (2, 3, V >= {self._codec.vocab_size})")
        step = await self._lm.run({"tokens": tokens[:, :1], **{s: out[s + "_out"] for s in self._states}})
        if not np.all(np.isfinite(step["logits"])):
            raise BundleError(f"{self._lm.name}: warm-up logits are not finite")

    def prepare(self, req: GenerateRequest) -> tuple[list[int], Sampler, StopChecker, int]:
        """Validate; returns prompt ids, the sampler (with its RNG), the stop checker, max_tokens."""
        cfg = self._ctx.config
        top = req.top_logprobs or 0
        if not 0 <= top <= cfg.max_top_logprobs:
            raise InvalidArgument(f"top_logprobs {top} must be within 0..{cfg.max_top_logprobs}", field="top_logprobs")
        max_tokens = min(cfg.default_max_tokens, self.max_tokens) if req.max_tokens is None else req.max_tokens
        if max_tokens < 1:
            raise InvalidArgument(f"max_tokens {max_tokens} must be at least 1", field="max_tokens")
        if max_tokens > self.max_tokens:
            raise InvalidArgument(f"max_tokens {max_tokens} exceeds the limit {self.max_tokens}", field="max_tokens")
        temperature = 1.0 if req.temperature is None else float(req.temperature)
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise InvalidArgument(f"temperature {temperature} must be 0 (greedy) or more", field="temperature")
        top_k = req.top_k or 0
        if top_k < 0:
            raise InvalidArgument(f"top_k {top_k} must be 0 (off) or more", field="top_k")
        top_p = 1.0 if req.top_p is None else float(req.top_p)
        if not 0.0 < top_p <= 1.0:
            raise InvalidArgument(f"top_p {top_p} must be within (0, 1]", field="top_p")
        if req.seed is not None and req.seed < 0:
            raise InvalidArgument(f"seed {req.seed} must be 0 or more", field="seed")
        stops = list(req.stop)
        if len(stops) > cfg.max_stop:
            raise InvalidArgument(f"stop has {len(stops)} strings; the limit is {cfg.max_stop}", field="stop")
        for i, s in enumerate(stops):
            if not s:
                raise InvalidArgument(f"stop[{i}] is empty", field="stop")
            if len(s) > cfg.max_stop_chars:
                raise InvalidArgument(f"stop[{i}] has {len(s)} characters; the limit is {cfg.max_stop_chars}", field="stop")
        sampler = Sampler(temperature, top_k, top_p, np.random.default_rng(req.seed))
        return self.prompt_ids(req.prompt), sampler, StopChecker(stops), max_tokens

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt's token ids (BOS alone for an empty prompt), within the limits."""
        prompt = prompt or ""
        limit = self._ctx.config.max_text_chars
        if len(prompt) > limit:
            raise InvalidArgument(f"prompt has {len(prompt)} characters; the limit is {limit}", field="prompt")
        ids, _ = self._codec.encode(prompt)
        if not ids:
            if self._bos is None:
                raise InvalidArgument(f"prompt is empty and model {self.name!r} has no BOS token to start from", field="prompt")
            ids = [self._bos]
        if len(ids) > self.max_prompt_tokens:
            raise InvalidArgument(
                f"prompt has {len(ids)} tokens; model {self.name!r} accepts at most {self.max_prompt_tokens}", field="prompt"
            )
        return ids

    async def _prefill(self, ids: list[int]) -> dict[str, np.ndarray]:
        """One LM call over the whole prompt from zero state: logits (1, T, V) and the states after it."""
        started = time.monotonic()
        out = await self._lm.run({"tokens": np.asarray([ids], dtype=np.int64), **self._zeros(1)})
        self._prefill_meter.batch(1, time.monotonic() - started)
        return out

    async def score(self, req: ScoreRequest, deadline: float | None) -> ScoreResult:
        """log P(continuation | prompt) of each continuation: the prompt is read once, then every
        continuation's tokens go through the step loop as rows of one item, from the prompt's state."""
        cfg = self._ctx.config
        texts = list(req.continuations)
        if not texts:
            raise InvalidArgument("continuations is empty; send at least one", field="continuations")
        if len(texts) > cfg.max_continuations:
            raise InvalidArgument(f"continuations has {len(texts)} entries; the limit is {cfg.max_continuations}",
                                  field="continuations")
        ids = self.prompt_ids(req.prompt)
        continuations = []
        for i, text in enumerate(texts):
            if len(text) > cfg.max_text_chars:
                raise InvalidArgument(f"continuations[{i}] has {len(text)} characters; the limit is {cfg.max_text_chars}",
                                      field="continuations")
            cont, _ = self._codec.encode(text)
            if not cont:
                raise InvalidArgument(f"continuations[{i}] is empty (no tokens)", field="continuations")
            if len(cont) > self.max_tokens:
                raise InvalidArgument(f"continuations[{i}] has {len(cont)} tokens; model {self.name!r} scores at most "
                                      f"{self.max_tokens}", field="continuations")
            continuations.append(cont)
        with self._ctx.slots.hold(len(continuations)):
            out = await self._prefill(ids)
            item = ContinuationRows(continuations, out["logits"][0, -1], {s: out[s + "_out"] for s in self._states},
                                    Logprobs(self._codec), deadline)
            if item.rows:
                try:
                    self._scheduler.add(item)
                    await item.future
                finally:
                    self._scheduler.remove(item)
        unk = self._unk
        scores = continuation_scores(texts, item.future.result(), item.greedy, unk)
        return ScoreResult(self.name, self.version, len(ids), scores, sum(i == unk for i in ids))

    async def stream(self, req: GenerateRequest, deadline: float | None) -> AsyncIterator[GenerateChunk]:
        """Chunks of new text; the last one carries finish_reason. Leaving the iteration (or
        cancelling the task) removes the stream from the step loop before its next step."""
        ids, sampler, stops, max_tokens = self.prepare(req)
        timer = self._ctx.token_timer(self.name, self.version)
        lease = self._ctx.slots.acquire(1)
        wants = req.logprobs or (req.top_logprobs or 0) > 0
        item = GenerationStream(
            sampler, StreamDecoder(self._codec, stops), self._eos, max_tokens, len(ids), self._states, deadline,
            Logprobs(self._codec, req.top_logprobs or 0) if wants else None,
        )

        def leave(_task: object = None) -> None:
            self._scheduler.remove(item)
            lease.release()

        # The consumer may be cancelled while this generator is suspended at a yield (then no
        # exception reaches it until it is garbage-collected): free the slot when its task ends.
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(leave)
        emitted = 0
        try:
            out = await self._prefill(ids)
            if not item.accept(out["logits"][0, -1], {s: out[s + "_out"] for s in self._states}):
                self._scheduler.add(item)
            error: ServiceError | None = None
            while error is None:
                chunk = await item.queue.get()
                if isinstance(chunk, ServiceError):
                    raise chunk
                chunk, error = coalesce(chunk, item.queue)
                timer.emitted(chunk.completion_tokens - emitted)
                emitted = chunk.completion_tokens
                yield chunk
                if chunk.finish_reason:
                    return
            raise error
        finally:
            leave()
            if task is not None:
                task.remove_done_callback(leave)
