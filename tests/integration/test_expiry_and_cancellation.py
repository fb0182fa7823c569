"""Deadlines and cancellation inside the server, seen through what it computes and frees.

gRPC itself ends a call at its deadline or when the client cancels it; these tests check what the
server does on top: the engine ends the work at the deadline itself (and says so), a cancelled
call waiting in a batcher is never computed, and a translation cancelled mid-beam-search leaves
the step loop and gives its decoding slots back at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from service.front.metrics import Metrics
from service.v1 import forecast_pb2, generate_pb2, generate_pb2_grpc, translate_pb2, translate_pb2_grpc
from tests.bundles import endless_translations, make_bundle
from tests.integration.harness import Served, ServerProcess, metric_value, rpc_error, serving, wait_until
from tests.integration.load import metric

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENDLESS_TRANSLATE = "endless-translate"  # its decoder never picks the end token (tests.bundles)
MAX_STREAMS = 2
# Greedy decoding of the tiny language model never samples its end-of-text token.
ENDLESS_GENERATE = generate_pb2.GenerateRequest(model="tiny-generate", prompt="First", max_tokens=100_000,
                                                temperature=0.0)
TWO_SENTENCES = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Park."]
# gRPC also cuts a call off at its deadline (the client's timer, the server core's): whichever of
# that and the engine's own check comes first ends it. The engine checks before every decoding
# step and so almost always comes first; a call that gRPC ended first is simply tried again.
DEADLINE_TRIES = 5


@pytest.fixture(scope="module")
def expiry_models(module_models) -> Path:
    make_bundle(module_models, "translate", name=ENDLESS_TRANSLATE, edit=endless_translations,
                limits={"max_source_tokens": 64, "max_target_tokens": 100_000})
    return module_models


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(expiry_models):
    metrics = Metrics(CollectorRegistry(), process_metrics=False)
    # Forecasts wait up to 3 s for a second one (batches of 2): long enough to cancel one queued.
    async with serving(expiry_models, metrics=metrics, max_streams=MAX_STREAMS, max_tokens=100_000,
                       max_batch_wait_ms=3000, max_batch_size=2) as s:
        yield s


@pytest.fixture(scope="module")
def server(expiry_models) -> Iterator[ServerProcess]:
    """`seqserve serve`: its log says which component ended a call, and no other test's calls
    share its (throttled) warnings."""
    with ServerProcess(expiry_models, "--max-streams", str(MAX_STREAMS), "--max-tokens", "100000") as process:
        yield process


async def _the_engine_ends_it_at_the_deadline(server: ServerProcess, call, logged: str) -> None:
    """Make ``call(channel)`` (a call with a deadline that the work outlasts) until the server logs
    ``logged``: the engine itself ended the work at the deadline (gRPC's own cut-off logs nothing)."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        for _ in range(DEADLINE_TRIES):
            err = await rpc_error(call(channel))
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
            await wait_until(lambda: metric(server.scrape(), "seqserve_requests_in_flight") == 0,
                             what="the server to finish the expired call")
            if server.count(logged):
                return
    raise AssertionError(f"the server never logged /{logged}/ in {DEADLINE_TRIES} calls: the engine does not "
                         f"enforce their deadline\n{server.log[-3000:]}")


async def test_the_server_ends_a_generation_at_its_deadline(server):
    def call(channel):
        return generate_pb2_grpc.GeneratorStub(channel).Generate(ENDLESS_GENERATE, timeout=0.3)

    await _the_engine_ends_it_at_the_deadline(server, call, "Generate -> DEADLINE_EXCEEDED: deadline passed")


async def test_the_server_ends_a_translation_at_its_deadline_mid_decoding(server):
    request = translate_pb2.TranslateRequest(model=ENDLESS_TRANSLATE, texts=TWO_SENTENCES, beam_size=4,
                                             max_length=100_000)

    def call(channel):
        return translate_pb2_grpc.TranslatorStub(channel).Translate(request, timeout=0.5)

    await _the_engine_ends_it_at_the_deadline(server, call, "Translate -> DEADLINE_EXCEEDED: deadline passed while decoding")
    # Its two decoding slots are back: a translation as wide is admitted.
    async with grpc.aio.insecure_channel(server.address) as channel:
        reply = await translate_pb2_grpc.TranslatorStub(channel).Translate(translate_pb2.TranslateRequest(
            model=ENDLESS_TRANSLATE, texts=TWO_SENTENCES, max_length=3))
    assert [len(t.tokens) for t in reply.translations] == [3, 3]


def _rows(served: Served, graph: str) -> float:
    """Rows the server has run through ``graph`` (its seqserve_batch_size histogram)."""
    return metric_value(served.metrics, "seqserve_batch_size_sum", graph=graph)


async def test_a_cancelled_call_waiting_in_a_batcher_is_never_computed(served):
    history = [float(i % 5) for i in range(12)]
    request = forecast_pb2.ForecastRequest(model="tiny-forecast", history=history)
    rows = _rows(served, "forecast")
    cancelled = metric_value(served.metrics, "seqserve_requests_cancelled_total", method="Forecast")

    def queued() -> float:
        return metric_value(served.metrics, "seqserve_queue_depth", model="tiny-forecast", graph="forecast")

    gives_up = served.forecaster.Forecast(request)
    await wait_until(lambda: queued() == 1, what="the forecast to wait in the batcher for company")
    assert gives_up.cancel()
    await wait_until(lambda: metric_value(served.metrics, "seqserve_requests_cancelled_total", method="Forecast")
                     > cancelled, what="the server to see the cancellation")
    # A second forecast fills the batch of two (same length, same group): only it is computed.
    reply = await served.forecaster.Forecast(request, timeout=30)
    assert len(reply.forecast) == 6
    assert _rows(served, "forecast") - rows == 1, "the cancelled forecast was computed too"


async def test_a_translation_cancelled_mid_beam_search_leaves_the_step_loop_and_frees_its_slots(served):
    def decoding() -> float:
        return metric_value(served.metrics, "seqserve_active_streams", model=ENDLESS_TRANSLATE)

    endless = served.translator.Translate(translate_pb2.TranslateRequest(
        model=ENDLESS_TRANSLATE, texts=TWO_SENTENCES, beam_size=4, max_length=100_000))
    await wait_until(lambda: decoding() == 2, what="both sentences to be decoding")
    full = await rpc_error(served.translator.Translate(translate_pb2.TranslateRequest(
        model=ENDLESS_TRANSLATE, texts=["Hallo"], max_length=3)))
    assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # it holds both slots

    assert endless.cancel()
    # Its beam searches leave the step loop (no decoding step is spent on them any more) ...
    await wait_until(lambda: decoding() == 0, timeout=10, what="the cancelled beam searches to leave the step loop")
    steps = metric_value(served.metrics, "seqserve_batch_size_count", model=ENDLESS_TRANSLATE, graph="decoder_step")
    # ... and both slots are free: a translation as wide is admitted, and its 3 steps are all
    # the decoder runs from now on.
    reply = await served.translator.Translate(translate_pb2.TranslateRequest(
        model=ENDLESS_TRANSLATE, texts=TWO_SENTENCES, max_length=3))
    assert [len(t.tokens) for t in reply.translations] == [3, 3]
    assert metric_value(served.metrics, "seqserve_batch_size_count", model=ENDLESS_TRANSLATE,
                        graph="decoder_step") - steps == 3
    with pytest.raises(asyncio.CancelledError):
        await endless
