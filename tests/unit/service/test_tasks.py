"""Task behaviour and validation: every refused request's error class and message."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.core.errors import InvalidArgument, ResourceExhausted
from service.core.types import ForecastRequest, GenerateRequest, TranslateRequest

HISTORY = np.sin(np.arange(40.0) / 3.0)[:, None] * 10 + 50  # (40, 1)


async def test_forecast_shapes_levels_and_window(engine):
    r = await engine.forecast(ForecastRequest(history=HISTORY))
    assert (r.model, r.version, r.quantiles) == ("tiny-forecast", "1", [0.1, 0.5, 0.9])
    assert r.forecast.shape == (6, 1) and r.quantile_paths.shape == (3, 6, 1)
    np.testing.assert_array_equal(r.forecast, r.quantile_paths[1])
    # only the most recent `window` (24) steps matter; a 1-D history is one channel
    recent = await engine.forecast(ForecastRequest(history=HISTORY[-24:, 0]))
    np.testing.assert_allclose(recent.quantile_paths, r.quantile_paths, rtol=1e-6)
    short = await engine.forecast(ForecastRequest(history=HISTORY, horizon=2, quantiles=[0.9, 0.3, 0.5]))
    assert short.quantile_paths.shape == (3, 2, 1) and short.quantiles == [0.9, 0.3, 0.5]
    np.testing.assert_allclose(short.quantile_paths[0], r.quantile_paths[2, :2])
    lo, mid = r.quantile_paths[0, :2], r.quantile_paths[1, :2]
    np.testing.assert_allclose(short.quantile_paths[1], 0.5 * lo + 0.5 * mid)  # 0.3 is halfway 0.1..0.5


async def test_translate_outputs(engine):
    r = await engine.translate(TranslateRequest(texts=["Ein Mann trinkt Kaffee.", "Ein Kind"], return_attention=True, max_length=7))
    assert (r.model, r.version) == ("tiny-translate", "1") and len(r.translations) == 2
    for t in r.translations:
        assert 0 < len(t.tokens) <= 7 and np.isfinite(t.score)
        assert t.attention.shape == (len(t.tokens), len(t.source_tokens))
        np.testing.assert_allclose(t.attention.sum(axis=1), 1.0, atol=1e-4)
    assert "".join(r.translations[1].source_tokens).replace("▁", " ").strip() == "Ein Kind"
    assert (await engine.translate(TranslateRequest(texts=["Ein Kind"]))).translations[0].attention is None


async def test_translate_beam_zero_and_one_are_greedy(engine):
    texts = ["Die Katze schläft auf dem Sofa.", "Zwei Hunde spielen im Park."]
    greedy = await engine.translate(TranslateRequest(texts=texts, beam_size=0))
    one = await engine.translate(TranslateRequest(texts=texts, beam_size=1))
    assert [t.tokens for t in greedy.translations] == [t.tokens for t in one.translations]
    beam = await engine.translate(TranslateRequest(texts=texts, beam_size=4))
    assert all(np.isfinite(t.score) for t in beam.translations)


FORECAST_ERRORS = [
    (dict(history=np.array([[1.0, 2.0]] * 30)), "history has 2 channels; model 'tiny-forecast' expects 1"),
    (dict(history=np.ones(3)), "history has 3 steps; model 'tiny-forecast' needs at least 8"),
    (dict(history=np.ones((2, 3, 1))), "history has 3 dimensions; it must be (steps, channels)"),
    (dict(history=np.r_[np.ones(12), np.nan, np.ones(5)]), "history[12, 0] is nan; every value must be finite"),
    (dict(history=np.r_[np.ones(10), np.inf]), "history[10, 0] is inf; every value must be finite"),
    (dict(history=HISTORY, horizon=900), "horizon 900 exceeds the model's maximum 6"),
    (dict(history=HISTORY, horizon=-1), "horizon -1 must be positive (0 = the model's 6)"),
    (dict(history=HISTORY, quantiles=[0.5, 1.0]), "quantiles[1] 1.0 must be within (0, 1)"),
    (dict(history=HISTORY, quantiles=[0.05]), "quantiles[0] 0.05 is outside model 'tiny-forecast''s range [0.1, 0.9]"),
    (dict(history=HISTORY, quantiles=[0.5] * 33), "quantiles has 33 levels; the limit is 32"),
    (dict(history=np.ones(100_001)), "history has 100001 steps; the limit is 100000"),
]


@pytest.mark.parametrize("fields, message", FORECAST_ERRORS)
async def test_forecast_validation(engine, fields, message):
    with pytest.raises(InvalidArgument) as info:
        await engine.forecast(ForecastRequest(**fields))
    assert info.value.message == message and info.value.code == "INVALID_ARGUMENT"
    assert info.value.field in ("history", "horizon", "quantiles")


TRANSLATE_ERRORS = [
    (dict(texts=[]), "texts is empty; send at least one text"),
    (dict(texts=["a"] * 33), "texts has 33 entries; the limit is 32"),
    (dict(texts=["Ein Mann", "  "]), "texts[1] is empty"),
    (dict(texts=["x" * 1001]), "texts[0] has 1001 characters; the limit is 1000"),
    (dict(texts=[" ".join(["Ein"] * 70)]), "texts[0] has 70 tokens; model 'tiny-translate' accepts at most 64 per sentence"),
    (dict(texts=["Ein Hund.", "Ein Mann. " + " ".join(["Ein"] * 70) + "."]),
     "texts[1], sentence 2 of 2, has 71 tokens; model 'tiny-translate' accepts at most 64 per sentence"),
    (dict(texts=["Ein Mann fährt Fahrrad. " * 9], return_attention=True),
     "texts[0] has 99 tokens in 9 sentences; with return_attention a text may have at most 64"),
    (dict(texts=["Ein Mann"], beam_size=9), "beam_size 9 must be within 0..8 (0 or 1 = greedy)"),
    (dict(texts=["Ein Mann"], beam_size=-1), "beam_size -1 must be within 0..8 (0 or 1 = greedy)"),
    (dict(texts=["Ein Mann"], max_length=49), "max_length 49 must be within 0..48 (0 = automatic)"),
]


@pytest.mark.parametrize("fields, message", TRANSLATE_ERRORS)
async def test_translate_validation(engine, fields, message):
    with pytest.raises(InvalidArgument) as info:
        await engine.translate(TranslateRequest(**fields))
    assert info.value.message == message


async def test_a_text_of_more_sentences_than_streams_goes_through_in_waves(repo, make_engine):
    """Each sentence is decoded on its own; a request claims at most max_texts streams at once."""
    engine = await make_engine(repo, max_texts=3, max_streams=3)
    sentences = [f"{s}." for s in ("Ein Mann", "Zwei Hunde", "Ein Kind", "Eine Frau", "Ein Hund", "Zwei Männer", "Ein Mann")]
    whole = (await engine.translate(TranslateRequest(texts=[" ".join(sentences)]))).translations[0]
    alone = [(await engine.translate(TranslateRequest(texts=[s]))).translations[0] for s in sentences]
    assert whole.sentences == 7 and whole.text == " ".join(t.text for t in alone if t.text)
    assert whole.tokens == [tok for t in alone for tok in t.tokens]


GENERATE_ERRORS = [
    (dict(temperature=-0.5), "temperature -0.5 must be 0 (greedy) or more"),
    (dict(top_p=0.0), "top_p 0.0 must be within (0, 1]"),
    (dict(top_p=1.5), "top_p 1.5 must be within (0, 1]"),
    (dict(top_k=-1), "top_k -1 must be 0 (off) or more"),
    (dict(max_tokens=0), "max_tokens 0 must be at least 1"),
    (dict(max_tokens=1025), "max_tokens 1025 exceeds the limit 1024"),
    (dict(seed=-3), "seed -3 must be 0 or more"),
    (dict(stop=["a"] * 9), "stop has 9 strings; the limit is 8"),
    (dict(stop=["ok", ""]), "stop[1] is empty"),
    (dict(stop=["s" * 65]), "stop[0] has 65 characters; the limit is 64"),
    (dict(prompt="F" * 1001), "prompt has 1001 characters; the limit is 1000"),
]


@pytest.mark.parametrize("fields, message", GENERATE_ERRORS)
async def test_generate_validation(engine, fields, message):
    with pytest.raises(InvalidArgument) as info:
        await engine.generate(GenerateRequest(**{"prompt": "First", **fields}))
    assert info.value.message == message
    with pytest.raises(InvalidArgument):  # the stream refuses it the same way
        async for _ in engine.generate_stream(GenerateRequest(**{"prompt": "First", **fields})):
            pass


async def test_prompt_token_limit_comes_from_the_manifest(repo, make_engine):
    engine = await make_engine(repo, max_text_chars=2000)
    with pytest.raises(InvalidArgument, match="prompt has 600 tokens; model 'tiny-generate' accepts at most 512"):
        await engine.generate(GenerateRequest(prompt="F" * 600))
    tight = await make_engine(repo, max_prompt_tokens=4)  # the config can only tighten it
    with pytest.raises(InvalidArgument, match="prompt has 5 tokens; model 'tiny-generate' accepts at most 4"):
        await tight.generate(GenerateRequest(prompt="First"))


async def test_empty_prompt_starts_from_bos(engine):
    r = await engine.generate(GenerateRequest(prompt="", max_tokens=3, seed=0))
    assert r.prompt_tokens == 1 and r.completion_tokens >= 1


async def test_queue_full_through_the_engine(repo, make_engine):
    import asyncio

    engine = await make_engine(repo, max_queue=1, max_batch_size=1, max_batch_wait_ms=0.0)
    results = await asyncio.gather(*(engine.forecast(ForecastRequest(history=HISTORY)) for _ in range(6)), return_exceptions=True)
    rejected = [r for r in results if isinstance(r, ResourceExhausted)]
    assert rejected and all("is full (1 requests waiting)" in r.message for r in rejected)
    assert any(not isinstance(r, Exception) for r in results)


async def test_engine_counts_requests_for_the_graph_runtime(engine):
    """The engine counts admitted requests (Engine.admission); its WorkerPool reads them: graph calls
    run on the event loop only while requests come one at a time (service.core.runtime.WorkerPool.alone)."""
    pool = engine.admission
    assert pool.requests == 0
    first = asyncio.ensure_future(engine.forecast(ForecastRequest(history=HISTORY)))
    second = asyncio.ensure_future(engine.forecast(ForecastRequest(history=HISTORY)))
    await asyncio.sleep(0)  # both admitted, neither finished
    assert pool.requests == 2 and not pool.one_at_a_time()
    await asyncio.gather(first, second)
    assert pool.requests == 0
    assert not pool.one_at_a_time()  # they overlapped just now
    with pytest.raises(InvalidArgument):  # refused requests are counted back too
        await engine.forecast(ForecastRequest(history=[]))
    assert pool.requests == 0


@pytest.mark.parametrize("offset", [1e6, 1e9, 1e12, -1e12])
async def test_a_forecast_is_the_same_at_any_offset(engine, offset):
    """The window is standardised in float64 before the float32 graph: 10 sin(2 pi t / 24) around
    1e9 used to come back in multiples of 64 (float32's spacing there)."""
    wave = 10.0 * np.sin(2 * np.pi * np.arange(200) / 24.0)
    base = await engine.forecast(ForecastRequest(history=wave, horizon=4))
    shifted = await engine.forecast(ForecastRequest(history=wave + offset, horizon=4))
    # float64 keeps ~16 digits: at 1e12 a movement of 10 still has ~4 of them; float32 noise of the
    # graph is ~1e-6 of the movement.
    np.testing.assert_allclose(shifted.forecast - offset, base.forecast, atol=1e-5 * max(1.0, abs(offset) / 1e9) + 1e-4)
    for q in range(len(base.quantiles)):
        np.testing.assert_allclose(shifted.quantile_paths[q] - offset, base.quantile_paths[q], atol=1e-3)


@pytest.mark.parametrize("scale", [1e-9, 1e-6, 1e6])
async def test_a_forecast_scales_with_its_series_however_small(engine, scale):
    """Tiny series are not flattened by the graph's own scale floor (1e-5)."""
    wave = 10.0 * np.sin(2 * np.pi * np.arange(200) / 24.0) + 3.0
    base = await engine.forecast(ForecastRequest(history=wave, horizon=4))
    scaled = await engine.forecast(ForecastRequest(history=wave * scale, horizon=4))
    np.testing.assert_allclose(scaled.forecast / scale, base.forecast, rtol=1e-5, atol=1e-5)
    assert np.std(scaled.forecast) > 0  # it moves


async def test_a_flat_history_forecasts_its_level(engine):
    flat = await engine.forecast(ForecastRequest(history=np.full(40, 1e9 + 0.5), horizon=3))
    np.testing.assert_allclose(flat.forecast, 1e9 + 0.5, rtol=0, atol=1e-3)
