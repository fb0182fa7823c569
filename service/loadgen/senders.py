"""Sending one prepared request over gRPC and timing it: unary calls, GenerateStream's tokens and
StreamingRecognize's audio at real-time pace."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import grpc
import numpy as np
from google.protobuf.message import Message

from service.loadgen.pools import SpeechShape
from service.loadgen.results import Outcome
from service.loadgen.speech import Utterance
from service.v1 import (
    forecast_pb2_grpc,
    generate_pb2_grpc,
    open_inference_grpc_pb2_grpc,
    recognize_pb2,
    recognize_pb2_grpc,
    translate_pb2_grpc,
)

Sender = Callable[[int], Awaitable[Outcome]]


def _failed(start: float, err: grpc.aio.AioRpcError) -> Outcome:
    return Outcome(latency=time.perf_counter() - start, code=err.code().name)


def unary_sender(endpoint: str, channels: Sequence[grpc.aio.Channel], requests: Sequence[Message],
                 timeout_s: float, audio_seconds: Sequence[float] = ()) -> Sender:
    """A coroutine function that sends prepared request ``i`` (round-robin over pool and channels);
    ``audio_seconds`` (recognize): the seconds of audio in each request."""
    stubs = {
        "forecast": lambda ch: forecast_pb2_grpc.ForecasterStub(ch).Forecast,
        "translate": lambda ch: translate_pb2_grpc.TranslatorStub(ch).Translate,
        "generate": lambda ch: generate_pb2_grpc.GeneratorStub(ch).Generate,
        "score": lambda ch: generate_pb2_grpc.GeneratorStub(ch).Score,
        "infer": lambda ch: open_inference_grpc_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer,
        "recognize": lambda ch: recognize_pb2_grpc.RecognizerStub(ch).Recognize,
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
        return Outcome(latency=latency, model=model, version=version, tokens=getattr(reply, "completion_tokens", 0),
                       audio_s=audio_seconds[i % len(audio_seconds)] if audio_seconds else 0.0)

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


def _seconds(duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def recognize_stream_sender(channels: Sequence[grpc.aio.Channel], utterances: Sequence[Utterance], shape: SpeechShape,
                            model: str, version: str, chunk_ms: float, timeout_s: float,
                            rng: np.random.Generator) -> Sender:
    """A coroutine function that streams utterance ``i`` to StreamingRecognize as a live source would.

    The stream starts after a random offset within one chunk (streams opened together do not send
    in step), sends ``streaming_config`` (LINEAR16 at the utterance's rate, interim results on), then
    chunk k of ``chunk_ms`` at start + k x chunk_ms (real time: a chunk goes out once its audio has
    been heard; a client that fell behind sends at once and records how late), and half-closes after
    the last one. A chunk's latency runs from its send to the first interim result whose
    result_end_time covers every whole model frame of the audio sent so far (the server keeps the
    tail shorter than a frame for the next chunk); chunks that add no whole frame are not timed, and
    those no interim result covered (usually the last: the server folds its frames into the final
    result) are counted as ``chunks_at_final``. ``final`` runs from the half-close to the final result."""
    methods = [recognize_pb2_grpc.RecognizerStub(ch).StreamingRecognize for ch in channels]
    rate = shape.sample_rate
    chunk = max(1, round(chunk_ms / 1000.0 * rate))  # samples per message
    period = chunk / rate
    frame = shape.frame_samples
    frame_s = frame / rate
    offsets = rng.uniform(0.0, period, len(utterances))
    first = recognize_pb2.StreamingRecognizeRequest(streaming_config=recognize_pb2.StreamingRecognitionConfig(
        config=recognize_pb2.RecognitionConfig(encoding=recognize_pb2.RecognitionConfig.LINEAR16,
                                               sample_rate_hertz=rate, model=model, version=version),
        interim_results=True))

    async def send(i: int) -> Outcome:
        utterance = utterances[i % len(utterances)]
        messages = [recognize_pb2.StreamingRecognizeRequest(audio_content=utterance.pcm[2 * s : 2 * (s + chunk)])
                    for s in range(0, utterance.samples, chunk)]
        await asyncio.sleep(float(offsets[i % len(offsets)]))
        call = methods[i % len(methods)](timeout=timeout_s)
        pending: deque[tuple[int, float]] = deque()  # (whole frames the chunk completes, perf_counter when sent)
        timed: list[tuple[float, float]] = []
        lags: list[float] = []
        half_closed: float | None = None
        start = time.perf_counter()

        async def write() -> None:
            nonlocal half_closed
            await call.write(first)
            frames = 0
            for k, message in enumerate(messages):
                due = start + k * period
                if (delay := due - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                sent = time.perf_counter()
                lags.append(max(0.0, sent - due))
                covers = min(utterance.samples, (k + 1) * chunk) // frame
                if covers > frames:
                    pending.append((covers, sent))
                    frames = covers
                await call.write(message)
            half_closed = time.perf_counter()
            await call.done_writing()

        writer = asyncio.create_task(write())
        final_at: float | None = None
        name = ver = ""
        try:
            async for reply in call:
                now = time.perf_counter()
                name, ver = reply.model or name, reply.version or ver
                for result in reply.results:
                    if result.is_final:
                        final_at = now
                        continue
                    covered = round(_seconds(result.result_end_time) / frame_s)
                    while pending and pending[0][0] <= covered:
                        _, sent = pending.popleft()
                        timed.append((sent, now - sent))
            await writer
        except grpc.aio.AioRpcError as err:
            return _failed(start, err)
        finally:
            if not writer.done():
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        latency = time.perf_counter() - start
        if final_at is None or half_closed is None:
            return Outcome(latency=latency, code="NO_FINAL_RESULT")  # the stream ended OK without is_final
        return Outcome(latency=latency, model=name, version=ver, audio_s=utterance.seconds, chunks=timed,
                       chunks_at_final=len(pending), final=final_at - half_closed, send_lags=lags)

    return send
