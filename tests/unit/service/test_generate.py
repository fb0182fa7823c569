"""Generation through the step scheduler: seeded determinism under load, streaming, stop strings,
cancellation, the stream cap, deadlines and draining."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import pytest

from service.core.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from service.core.observe import begin_request
from service.core.types import GenerateRequest
from tests.unit.service.recorded import step_calls

PROMPTS = ["First Citizen:\n", "Speak", "All:", "Before we proceed", "You are all resolved", "F", "hear me", "Resolved."]


def _requests(n: int, **kw) -> list[GenerateRequest]:
    return [GenerateRequest(prompt=PROMPTS[i % len(PROMPTS)], max_tokens=24 + i, seed=1000 + i, temperature=0.9, **kw) for i in range(n)]


@pytest.mark.parametrize("name", ["tiny-generate", "gru-generate"])
async def test_seeded_generation_is_identical_alone_and_under_load(tmp_path, add_bundle, make_engine, name):
    add_bundle(tmp_path, name)
    engine = await make_engine(tmp_path)
    requests = _requests(16, top_k=20, top_p=0.95)
    alone = [await engine.generate(r) for r in requests]
    steps, rows = step_calls(engine, "lm")
    assert rows == steps  # one stream at a time: one row per step
    together = await asyncio.gather(*(engine.generate(r) for r in requests))
    steps, rows = (now - before for now, before in zip(step_calls(engine, "lm"), (steps, rows)))
    assert rows / steps > 4  # the streams really shared decoder calls
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in alone]
    assert len({r.text for r in alone}) > 1  # different seeds and prompts, different texts


async def test_stream_chunks_add_up_to_the_completion(engine):
    req = GenerateRequest(prompt="First", max_tokens=30, seed=5)
    chunks = [c async for c in engine.generate_stream(req)]
    whole = await engine.generate(req)
    assert "".join(c.text for c in chunks) == whole.text
    assert [c.finish_reason for c in chunks[:-1]] == [""] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == whole.finish_reason in ("length", "eos")
    assert chunks[-1].completion_tokens == whole.completion_tokens <= 30
    assert whole.prompt_tokens == 5  # character tokenizer
    if whole.finish_reason == "length":
        assert whole.completion_tokens == 30


async def test_temperature_zero_is_greedy_and_seed_free(engine):
    a = await engine.generate(GenerateRequest(prompt="All:", max_tokens=20, temperature=0, seed=1))
    b = await engine.generate(GenerateRequest(prompt="All:", max_tokens=20, temperature=0, seed=2))
    assert a.text == b.text


async def test_stop_string_ends_the_text_before_it(engine):
    for seed in range(100):  # random weights may sample EOS early: find a seed with a long text
        full = await engine.generate(GenerateRequest(prompt="First", max_tokens=60, seed=seed))
        if len(full.text) > 12:
            break
    stop = full.text[6:9]
    cut = full.text.find(stop)
    req = GenerateRequest(prompt="First", max_tokens=60, seed=seed, stop=["\x00never", stop])
    stopped = await engine.generate(req)
    assert stopped.finish_reason == "stop" and stopped.text == full.text[:cut]
    chunks = [c async for c in engine.generate_stream(req)]
    streamed = ""
    for c in chunks:
        streamed += c.text
        assert stop not in streamed
    assert streamed == full.text[:cut] and chunks[-1].finish_reason == "stop"


async def _first_chunk(stream) -> None:
    await stream.__anext__()


async def test_stream_cap_and_closing_a_stream_frees_its_slot(repo, make_engine):
    engine = await make_engine(repo, max_streams=2)
    req = GenerateRequest(prompt="First", max_tokens=500, seed=3)
    a, b = engine.generate_stream(req), engine.generate_stream(req)
    await _first_chunk(a)
    await _first_chunk(b)
    c = engine.generate_stream(req)
    labels = begin_request()  # what the interceptor reads when the RPC ends
    with pytest.raises(ResourceExhausted, match=r"2 of 2 decoding streams are in use"):
        await _first_chunk(c)
    assert labels.reason == "streams_full"
    await a.aclose()  # the consumer stops: slot freed
    async with aclosing(engine.generate_stream(req)) as d:
        await _first_chunk(d)
    await b.aclose()


async def test_cancelling_the_consumer_task_frees_the_slot(repo, make_engine):
    engine = await make_engine(repo, max_streams=1)
    got_one = asyncio.Event()

    async def consume():
        async for _ in engine.generate_stream(GenerateRequest(prompt="First", max_tokens=1000, seed=4)):
            got_one.set()
            await asyncio.Event().wait()  # a slow client

    task = asyncio.ensure_future(consume())
    await got_one.wait()
    with pytest.raises(ResourceExhausted):
        await engine.generate(GenerateRequest(prompt="x", max_tokens=2))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await engine.generate(GenerateRequest(prompt="First", max_tokens=2, seed=0))
    assert result.completion_tokens >= 1


async def test_translation_counts_against_the_stream_cap(repo, make_engine):
    from service.core.types import TranslateRequest

    engine = await make_engine(repo, max_streams=2)
    with pytest.raises(ResourceExhausted, match=r"request needs 3 decoding streams; the server admits at most 2"):
        await engine.translate(TranslateRequest(texts=["Ein Mann", "Zwei Hunde", "Ein Kind"]))
    assert len((await engine.translate(TranslateRequest(texts=["Ein Mann", "Zwei Hunde"]))).translations) == 2


async def test_expired_deadline_is_refused_before_any_graph_runs(engine):
    before = step_calls(engine, "lm_prefill")
    with pytest.raises(DeadlineExceeded, match="deadline passed before the request was started"):
        await engine.generate(GenerateRequest(prompt="First", max_tokens=5), deadline=time.monotonic() - 0.1)
    assert step_calls(engine, "lm_prefill") == before  # not even the prompt was read


async def test_deadline_passing_mid_stream_ends_it(engine):
    # 1000 greedy tokens take far longer than 20 ms (the tiny model's greedy path never hits EOS)
    req = GenerateRequest(prompt="First", max_tokens=1000, temperature=0)
    received = []
    with pytest.raises(DeadlineExceeded, match="deadline passed while decoding"):
        async with aclosing(engine.generate_stream(req, deadline=time.monotonic() + 0.02)) as stream:
            async for chunk in stream:
                received.append(chunk)
    assert received and not any(c.finish_reason for c in received)


async def test_drain_refuses_new_work_and_lets_streams_finish(repo, make_engine):
    engine = await make_engine(repo)
    changed = asyncio.Event()
    engine.add_listener(changed.set)
    stream = engine.generate_stream(GenerateRequest(prompt="First", max_tokens=40, seed=2))
    first = await stream.__anext__()
    stopping = asyncio.ensure_future(engine.stop(5.0))
    await changed.wait()  # readiness dropped: draining
    assert not engine.task_ready("generate")
    with pytest.raises(Unavailable, match="server is draining"):
        await engine.generate(GenerateRequest(prompt="x", max_tokens=2))
    rest = [c async for c in stream]  # the in-flight stream completes
    assert (rest[-1] if rest else first).finish_reason in ("length", "eos")
    await stopping


async def test_a_slow_reader_gets_the_tokens_that_piled_up_in_one_chunk(engine):
    req = GenerateRequest(prompt="First", max_tokens=40, temperature=0)
    whole = await engine.generate(req)
    assert whole.completion_tokens == 40  # untrained weights: greedy text runs to the limit
    chunks = []
    async with aclosing(engine.generate_stream(req)) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            await asyncio.sleep(0.005)  # a reader slower than the model: tokens queue up meanwhile
    assert "".join(c.text for c in chunks) == whole.text
    assert len(chunks) < 40 / 2  # several tokens per message
    counts = [c.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 40 and chunks[-1].finish_reason == "length"


def test_coalesce_merges_queued_chunks_and_keeps_an_error_behind_them():
    from service.core.errors import Internal
    from service.core.tasks.generate import coalesce
    from service.core.types import GenerateChunk

    queue: asyncio.Queue = asyncio.Queue()
    for i in (2, 3):
        queue.put_nowait(GenerateChunk(f"t{i}", "", 4, i))
    queue.put_nowait(Internal("boom"))
    queue.put_nowait(GenerateChunk("after", "", 4, 9))
    chunk, error = coalesce(GenerateChunk("t1", "", 4, 1), queue)
    assert (chunk.text, chunk.completion_tokens, chunk.prompt_tokens) == ("t1t2t3", 3, 4)
    assert isinstance(error, Internal)
    last, error = coalesce(GenerateChunk("x", "length", 4, 10), queue)  # a final chunk takes nothing more
    assert (last.text, error, queue.qsize()) == ("x", None, 1)


async def _chunks(engine, req: GenerateRequest) -> list[tuple[str, str, int, list]]:
    return [(c.text, c.finish_reason, c.completion_tokens, [(t.token_id, round(t.logprob, 3)) for t in c.logprobs])
            async for c in engine.generate_stream(req)]


@pytest.mark.parametrize("steps", [3, 8])
async def test_several_tokens_per_round_decode_what_one_per_round_does(tmp_path, add_bundle, make_engine, steps):
    """--decode-steps k runs k graph calls and samplings per round on a worker thread. Texts, token
    counts, finish reasons and logprobs are those of one token per round, alone and under load,
    whatever k: max_tokens that are no multiple of k, a stop string met inside a round (the
    tokens sampled after it are dropped), EOS, streams joining and leaving between rounds."""
    add_bundle(tmp_path, "tiny-generate")
    one = await make_engine(tmp_path, decode_steps=1)
    many = await make_engine(tmp_path, decode_steps=steps)
    requests = _requests(12, top_k=20, top_p=0.95)
    requests += [GenerateRequest(prompt=p, max_tokens=40, seed=7 + i, stop=["e", "th"], logprobs=True, top_logprobs=2)
                 for i, p in enumerate(PROMPTS)]
    want = [await _chunks(one, r) for r in requests]
    alone = [await _chunks(many, r) for r in requests]
    calls_before = step_calls(many, "lm")
    together = await asyncio.gather(*(_chunks(many, r) for r in requests))
    steps_run, rows = (now - before for now, before in zip(step_calls(many, "lm"), calls_before))

    def whole(chunks):  # how a stream is coalesced into messages may differ; what it says may not
        return ("".join(c[0] for c in chunks), chunks[-1][1], chunks[-1][2], [t for c in chunks for t in c[3]])

    assert [whole(c) for c in alone] == [whole(c) for c in want]
    assert [whole(c) for c in together] == [whole(c) for c in want]
    finishes = {whole(c)[1] for c in want}
    assert "stop" in finishes and "length" in finishes  # both endings were exercised
    assert any(whole(c)[2] % steps for c in want)  # and counts that are no multiple of k
    assert rows / steps_run > 2  # the streams shared their calls


async def test_rounds_go_on_without_a_hand_off_until_the_batch_changes(tmp_path, add_bundle, make_engine, monkeypatch):
    """While nothing joins or leaves, a worker runs round after round (the loop makes each round's
    text meanwhile); a stream that joins is taken in at the next round, and the texts are those of
    one token per round."""
    from service.core.runtime import GraphRuntime

    add_bundle(tmp_path, "tiny-generate")
    one = await make_engine(tmp_path, decode_steps=1)
    many = await make_engine(tmp_path, decode_steps=4)
    long = GenerateRequest(prompt="First", max_tokens=160, seed=3, temperature=0.8)
    short = GenerateRequest(prompt="Speak", max_tokens=30, seed=4, temperature=0.8)
    want = [(await one.generate(r)).text for r in (long, short)]
    submitted = []
    start = GraphRuntime.start
    monkeypatch.setattr(GraphRuntime, "start", lambda self, feeds, work=None: submitted.append(work) or start(self, feeds, work))
    steps_before = step_calls(many, "lm")[0]
    alone = await many.generate(long)
    rounds = (step_calls(many, "lm")[0] - steps_before) / 4
    assert alone.text == want[0] and alone.finish_reason in ("length", "eos")
    handed = [w for w in submitted if w is not None]
    assert rounds >= 8 and len(handed) <= 2  # prefill aside: one or two hand-offs for all its rounds
    submitted.clear()

    async def joined() -> str:
        first = None
        async with aclosing(many.generate_stream(long)) as stream:
            text = ""
            async for chunk in stream:
                text += chunk.text
                if first is None:  # the long stream is running rounds on a worker: join it
                    first = asyncio.ensure_future(many.generate(short))
        return text, (await first).text

    assert await joined() == tuple(want)
    assert len([w for w in submitted if w is not None]) >= 2  # the join ended the worker's run of rounds


async def test_a_stream_cancelled_mid_round_leaves_at_the_round_and_frees_its_slot(repo, make_engine):
    engine = await make_engine(repo, decode_steps=8, max_streams=2)
    req = GenerateRequest(prompt="First", max_tokens=500, seed=3, temperature=0.9)
    async with aclosing(engine.generate_stream(req)) as stream:
        first = await anext(stream)
        assert first.completion_tokens >= 1
    # The slot is back at once; the loop drops the stream before its next round.
    done = await asyncio.gather(*(engine.generate(GenerateRequest(prompt="F", max_tokens=20, seed=s)) for s in (1, 2)))
    assert all(r.completion_tokens >= 1 for r in done)
