"""Token log-probabilities from generation and the Score RPC's continuations (issue 21), checked
against the LM graph run independently over the whole text with onnxruntime."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from service.core.errors import InvalidArgument
from service.core.types import GenerateRequest, ScoreRequest
from service.inference.decoding import log_softmax
from service.inference.sessions import load_session


class Reference:
    """The bundle's LM read over prompt + continuation in one call from zero state: the log-probability
    of every next token, computed without the server's step loop."""

    def __init__(self, bundle) -> None:
        m = json.loads((bundle / "manifest.json").read_text())
        self.session = load_session((bundle / m["graphs"]["lm"]).read_bytes())
        self.tok = Tokenizer.from_file(str(bundle / m["tokenizers"]["text"]))
        self.states = [i.name for i in self.session.get_inputs() if i.name.startswith("state_")]
        self.shape = (m["num_layers"], 1, m["hidden_size"])

    def ids(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def logprobs(self, prompt: str, continuation: str) -> list[float]:
        p, c = self.ids(prompt), self.ids(continuation)
        feeds = {"tokens": np.array([p + c], np.int64), **{s: np.zeros(self.shape, np.float32) for s in self.states}}
        logits = self.session.run(["logits"], feeds)[0][0]  # (T, V)
        lp = log_softmax(logits)
        return [float(lp[len(p) - 1 + i, t]) for i, t in enumerate(c)]


@pytest.fixture
def reference(repo):
    return Reference(repo / "tiny-generate" / "1")


async def test_score_is_the_probability_of_each_continuation_after_the_prompt(engine, reference):
    conts = ["zen:", "Citizen", "a", "All: we are resolved", "t"]
    result = await engine.score(ScoreRequest(prompt="First Citi", continuations=conts))
    assert (result.model, result.prompt_tokens) == ("tiny-generate", 10)
    for cont, s in zip(conts, result.scores, strict=True):
        want = reference.logprobs("First Citi", cont)
        assert s.text == cont and [t.token for t in s.tokens] == list(cont)  # a character model
        np.testing.assert_allclose([t.logprob for t in s.tokens], want, atol=2e-4)
        assert s.logprob == pytest.approx(sum(want), abs=1e-3)


async def test_continuations_share_the_step_loop_with_generation(engine, reference):
    """Scored while streams generate: the same numbers, and the continuations rode shared steps."""
    from tests.unit.service.recorded import step_calls

    conts = ["zen:\nWe are", "zens", "ze"]
    alone = await engine.score(ScoreRequest(prompt="First Citi", continuations=conts))
    before = step_calls(engine, "lm")
    streams = [engine.generate(GenerateRequest(prompt="All:", max_tokens=40, seed=i)) for i in range(6)]
    together, *_ = await asyncio.gather(engine.score(ScoreRequest(prompt="First Citi", continuations=conts)), *streams)
    steps, rows = (now - then for now, then in zip(step_calls(engine, "lm"), before))
    assert rows / steps > 3  # six streams and the continuations' rows shared calls
    for a, b in zip(alone.scores, together.scores, strict=True):
        np.testing.assert_allclose([t.logprob for t in a.tokens], [t.logprob for t in b.tokens], atol=1e-5)
    assert together.scores[2].logprob == pytest.approx(sum(reference.logprobs("First Citi", "ze")), abs=1e-3)


async def test_the_greedy_continuation_is_marked_greedy(engine):
    greedy = await engine.generate(GenerateRequest(prompt="All:", max_tokens=12, temperature=0))
    other = "".join("a" if ch != "a" else "b" for ch in greedy.text)
    result = await engine.score(ScoreRequest(prompt="All:", continuations=[greedy.text, other]))
    assert [s.greedy for s in result.scores] == [True, False]
    assert result.scores[0].logprob > result.scores[1].logprob


async def test_generated_tokens_carry_their_logprobs_and_alternatives(engine, reference):
    req = GenerateRequest(prompt="First", max_tokens=25, seed=3, temperature=0.8, top_k=10, logprobs=True, top_logprobs=4)
    result = await engine.generate(req)
    entries = result.logprobs
    assert len(entries) == result.completion_tokens
    generated = "".join(t.token for t in entries)
    if result.finish_reason == "length":
        assert generated == result.text
    # the model's own distribution (before temperature and top-k), as an independent reading gives it
    np.testing.assert_allclose([t.logprob for t in entries], reference.logprobs("First", generated), atol=2e-4)
    for t in entries:
        alt = [a.logprob for a in t.top_logprobs]
        assert len(alt) == 4 and alt == sorted(alt, reverse=True) and t.logprob <= alt[0] + 1e-12
        assert all(not a.top_logprobs for a in t.top_logprobs)
    plain = await engine.generate(GenerateRequest(prompt="First", max_tokens=25, seed=3, temperature=0.8, top_k=10))
    assert plain.text == result.text and plain.logprobs == []  # asking changes nothing else


async def test_streamed_logprobs_add_up_to_the_whole(engine):
    req = GenerateRequest(prompt="All:", max_tokens=30, seed=9, top_logprobs=2)  # top_logprobs implies logprobs
    chunks = [c async for c in engine.generate_stream(req)]
    whole = await engine.generate(req)
    streamed = [t for c in chunks for t in c.logprobs]
    assert [(t.token_id, t.logprob) for t in streamed] == [(t.token_id, t.logprob) for t in whole.logprobs]
    counted = 0
    for c in chunks:  # each chunk carries the tokens it counts
        assert len(c.logprobs) == c.completion_tokens - counted
        counted = c.completion_tokens


@pytest.mark.parametrize("request_fields, field, message", [
    (dict(continuations=[]), "continuations", "continuations is empty; send at least one"),
    (dict(continuations=["a"] * 17), "continuations", "continuations has 17 entries; the limit is 16"),
    (dict(continuations=["a", ""]), "continuations", "continuations[1] is empty (no tokens)"),
    (dict(continuations=["a" * 1001]), "continuations", "continuations[0] has 1001 characters; the limit is 1000"),
    (dict(prompt="p" * 1001, continuations=["a"]), "prompt", "prompt has 1001 characters; the limit is 1000"),
])
async def test_score_refuses_bad_input_naming_the_field(engine, request_fields, field, message):
    with pytest.raises(InvalidArgument) as info:
        await engine.score(ScoreRequest(**request_fields))
    assert (info.value.field, info.value.message) == (field, message)


async def test_a_continuation_longer_than_max_tokens_is_refused(repo, make_engine):
    engine = await make_engine(repo, max_tokens=100, default_max_tokens=50)
    with pytest.raises(InvalidArgument) as info:
        await engine.score(ScoreRequest(prompt="a", continuations=["a", "b" * 150]))
    assert info.value.message == "continuations[1] has 150 tokens; model 'tiny-generate' scores at most 100"


@pytest.mark.parametrize("top", [-1, 21])
async def test_top_logprobs_is_bounded_by_the_server(engine, top):
    with pytest.raises(InvalidArgument) as info:
        await engine.generate(GenerateRequest(prompt="a", top_logprobs=top))
    assert info.value.message == f"top_logprobs {top} must be within 0..20" and info.value.field == "top_logprobs"


async def test_unknown_tokens_are_counted_not_hidden(engine):
    result = await engine.score(ScoreRequest(prompt="First 龘", continuations=["Ci", "龘Æ"]))
    assert result.unknown_prompt_tokens == 1
    assert [s.unknown_tokens for s in result.scores] == [0, 2]
