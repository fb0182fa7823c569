"""The stream cap: RESOURCE_EXHAUSTED past max_streams, and a cancelled stream frees its slot."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import pytest_asyncio

from service.v1 import generate_pb2, translate_pb2
from tests.integration.harness import rpc_error, serving

pytestmark = pytest.mark.asyncio(loop_scope="module")
MAX_STREAMS = 2
# Greedy decoding of the tiny model never samples its end-of-text token (it settles into a loop),
# so this stream runs until the test cancels it.
ENDLESS = generate_pb2.GenerateRequest(prompt="First", max_tokens=100_000, temperature=0.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(module_models):
    async with serving(module_models, max_streams=MAX_STREAMS, max_tokens=100_000) as s:
        yield s


async def _open(served):
    """Start an endless stream and await its first chunk (it holds a slot from then on)."""
    call = served.generator.GenerateStream(ENDLESS)
    first = await call.read()
    assert first.text or first.completion_tokens
    return call


async def test_streams_past_the_cap_are_refused(served):
    calls = [await _open(served) for _ in range(MAX_STREAMS)]
    try:
        err = await rpc_error(served.generator.Generate(generate_pb2.GenerateRequest(prompt="x", max_tokens=2)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details() == f"{MAX_STREAMS} of {MAX_STREAMS} decoding streams are in use; 1 more requested; retry later"
        stream_err = await rpc_error(served.generator.GenerateStream(ENDLESS).read())
        assert stream_err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Beam searches share the cap (one slot per sentence).
        tr = await rpc_error(served.translator.Translate(translate_pb2.TranslateRequest(texts=["Hallo"], beam_size=2)))
        assert tr.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for call in calls:
            call.cancel()


async def test_a_request_wider_than_the_cap_is_refused_outright(served):
    err = await rpc_error(served.translator.Translate(translate_pb2.TranslateRequest(texts=["a", "b", "c"], max_length=3)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == f"request needs 3 decoding streams; the server admits at most {MAX_STREAMS}"


async def test_cancelling_a_stream_frees_its_slot(served):
    calls = [await _open(served) for _ in range(MAX_STREAMS)]
    try:
        err = await rpc_error(served.generator.GenerateStream(ENDLESS).read())
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        calls[0].cancel()
        assert await calls[0].code() == grpc.StatusCode.CANCELLED
        # The server learns of the cancellation asynchronously: retry until the slot is free.
        end = time.monotonic() + 10
        while True:
            call = served.generator.GenerateStream(ENDLESS)
            try:
                await call.read()
                calls[0] = call
                break
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < end, "the cancelled stream's slot was never freed"
                await asyncio.sleep(0.02)
    finally:
        for call in calls:
            call.cancel()


async def test_after_streams_end_the_cap_is_available_again(served):
    # The previous tests' cancelled streams must all be gone; retry briefly while they unwind.
    request = generate_pb2.GenerateRequest(prompt="x", max_tokens=3, seed=1)
    end = time.monotonic() + 10
    while True:
        try:
            replies = await asyncio.gather(*(served.generator.Generate(request) for _ in range(MAX_STREAMS)))
            break
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < end
            await asyncio.sleep(0.02)
    assert [r.completion_tokens for r in replies] == [3] * MAX_STREAMS
