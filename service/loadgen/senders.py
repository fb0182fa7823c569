"""Sending one prepared request over gRPC and timing it: unary calls and GenerateStream's tokens."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
from google.protobuf.message import Message

from service.loadgen.results import Outcome
from service.v1 import forecast_pb2_grpc, generate_pb2_grpc, open_inference_grpc_pb2_grpc, translate_pb2_grpc

Sender = Callable[[int], Awaitable[Outcome]]


def _failed(start: float, err: grpc.aio.AioRpcError) -> Outcome:
    return Outcome(latency=time.perf_counter() - start, code=err.code().name)


def unary_sender(endpoint: str, channels: Sequence[grpc.aio.Channel], requests: Sequence[Message],
                 timeout_s: float) -> Sender:
    """A coroutine function that sends prepared request ``i`` (round-robin over pool and channels)."""
    stubs = {
        "forecast": lambda ch: forecast_pb2_grpc.ForecasterStub(ch).Forecast,
        "translate": lambda ch: translate_pb2_grpc.TranslatorStub(ch).Translate,
        "generate": lambda ch: generate_pb2_grpc.GeneratorStub(ch).Generate,
        "score": lambda ch: generate_pb2_grpc.GeneratorStub(ch).Score,
        "infer": lambda ch: open_inference_grpc_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer,
    }
    methods = [stubs[endpoint](ch) for ch in channels]

    async def send(i: int) -> Outcome:
        method = methods[i % len(methods)]
        start = time.perf_counter()
        try:
            reply = await method(requests[i % len(requests)], timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return _failed(start, err)
        latency = time.perf_counter() - start
        model = getattr(reply, "model", None) or getattr(reply, "model_name", "")
        version = getattr(reply, "version", None) or getattr(reply, "model_version", "")
        return Outcome(latency=latency, model=model, version=version, tokens=getattr(reply, "completion_tokens", 0))

    return send


def stream_sender(channels: Sequence[grpc.aio.Channel], requests: Sequence[Message], timeout_s: float) -> Sender:
    """Like unary_sender for GenerateStream, also timing the first token and each later token."""
    methods = [generate_pb2_grpc.GeneratorStub(ch).GenerateStream for ch in channels]

    async def send(i: int) -> Outcome:
        method = methods[i % len(methods)]
        start = time.perf_counter()
        arrivals: list[tuple[float, int]] = []  # (arrival time, cumulative completion tokens)
        try:
            async for chunk in method(requests[i % len(requests)], timeout=timeout_s):
                arrivals.append((time.perf_counter(), chunk.completion_tokens))
        except grpc.aio.AioRpcError as err:
            return _failed(start, err)
        latency = time.perf_counter() - start
        ttft, itl = token_timings(start, arrivals)
        model = requests[i % len(requests)].model  # chunks do not name the model
        return Outcome(latency=latency, model=model, tokens=arrivals[-1][1] if arrivals else 0, ttft=ttft, itl=itl)

    return send


def token_timings(start: float, arrivals: Sequence[tuple[float, int]]) -> tuple[float | None, list[float]]:
    """Time to first token and inter-token latencies from chunk (arrival time, cumulative tokens).

    The first chunk that carries tokens gives the time to first token; every later chunk that
    carries n new tokens contributes n gaps of (time since the previous token-carrying chunk) / n,
    as the server's ``seqserve_time_between_tokens_seconds`` counts them."""
    ttft: float | None = None
    itl: list[float] = []
    last_time, last_tokens = start, 0
    for arrived, tokens in arrivals:
        new = tokens - last_tokens
        if new <= 0:
            continue
        if ttft is None:
            ttft = arrived - start
        else:
            itl.extend([(arrived - last_time) / new] * new)
        last_time, last_tokens = arrived, tokens
    return ttft, itl
