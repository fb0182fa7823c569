"""The requests a benchmark sends: per endpoint a pool of POOL_SIZE prepared requests, sent round-robin."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf.message import Message

from service.loadgen.config import BenchConfig
from service.loadgen.corpus import PROMPTS
from service.loadgen.series import synthetic_series
from service.loadgen.speech import FSDD_RATE, Utterance
from service.v1 import (
    forecast_pb2,
    generate_pb2,
    models_pb2,
    models_pb2_grpc,
    open_inference_grpc_pb2,
    recognize_pb2,
    translate_pb2,
)

log = logging.getLogger(__name__)

POOL_SIZE = 256  # distinct prepared requests per endpoint, sent round-robin


@dataclass(frozen=True)
class ForecastShape:
    """What a forecast request needs from the model's ForecastSpec."""

    window: int = 48
    min_history: int = 8
    channels: int = 1
    name: str = ""  # the model's name ("" when it could not be read)


def forecast_requests(config: BenchConfig, shape: ForecastShape, rng: np.random.Generator) -> list[Message]:
    """POOL_SIZE forecast requests, histories of random length in [min_history, window] or in
    ``config.history_len`` (one length, or a low-high range)."""
    if config.history_len:
        low, high = config.history_len[0], config.history_len[-1]
    else:
        low = max(1, shape.min_history)
        high = max(low, shape.window)
    out = []
    for _ in range(POOL_SIZE):
        values = synthetic_series(rng, int(rng.integers(low, high + 1)), shape.channels)
        request = forecast_pb2.ForecastRequest(model=config.model, version=config.version, frequency=config.frequency)
        if shape.channels == 1:
            request.history.extend(values[:, 0].tolist())
        else:
            request.channels.extend(forecast_pb2.Series(values=col.tolist()) for col in values.T)
        out.append(request)
    return out


def infer_requests(config: BenchConfig, shape: ForecastShape, rng: np.random.Generator) -> list[Message]:
    """The forecast workload as Open Inference Protocol ModelInfer requests: one row each, the
    history as raw FP32 ``[1, steps]`` (``[1, steps, C]`` for a multichannel model), as Triton's
    clients send it."""
    out = []
    for request in forecast_requests(config, shape, rng):
        if shape.channels == 1:
            values = np.asarray(request.history, dtype=np.float32)[None]
        else:
            values = np.stack([np.asarray(s.values, dtype=np.float32) for s in request.channels], axis=1)[None]
        infer = open_inference_grpc_pb2.ModelInferRequest(model_name=config.model or shape.name,
                                                          model_version=config.version)
        infer.inputs.add(name="history", datatype="FP32", shape=list(values.shape))
        infer.raw_input_contents.append(values.tobytes())
        if config.frequency:
            infer.parameters["frequency"].string_param = config.frequency
        out.append(infer)
    return out


def translate_requests(config: BenchConfig, rng: np.random.Generator) -> list[Message]:
    """POOL_SIZE one-sentence translate requests, sentences drawn from ``config.texts``."""
    picks = rng.integers(0, len(config.texts), POOL_SIZE)
    return [translate_pb2.TranslateRequest(model=config.model, version=config.version, texts=[config.texts[i]],
                                           beam_size=config.beam) for i in picks]


def generate_requests(config: BenchConfig, rng: np.random.Generator) -> list[Message]:
    """POOL_SIZE generate requests: built-in prompts, ``max_tokens`` each, seeds seed*POOL_SIZE + i."""
    picks = rng.integers(0, len(PROMPTS), POOL_SIZE)
    return [generate_pb2.GenerateRequest(model=config.model, version=config.version, prompt=PROMPTS[p],
                                         max_tokens=config.max_tokens, seed=config.seed * POOL_SIZE + i)
            for i, p in enumerate(picks)]


def score_requests(config: BenchConfig, rng: np.random.Generator) -> list[Message]:
    """POOL_SIZE score requests: a built-in prompt, four continuations of 4 to 16 characters cut
    from the other prompts."""
    out = []
    for p in rng.integers(0, len(PROMPTS), POOL_SIZE):
        continuations = []
        for q in rng.integers(0, len(PROMPTS), 4):
            start = int(rng.integers(0, len(PROMPTS[q]) - 4))
            continuations.append(PROMPTS[q][start : start + int(rng.integers(4, 17))])
        out.append(generate_pb2.ScoreRequest(model=config.model, version=config.version, prompt=PROMPTS[p],
                                             continuations=continuations))
    return out


async def _model_info(channel: grpc.aio.Channel, config: BenchConfig, task: str):
    """(the named model's ModelInfo, [it]) with ``--model``; else (the task's default model or None,
    every model of the task). Raises grpc.aio.AioRpcError."""
    stub = models_pb2_grpc.ModelsStub(channel)
    if config.model:
        reply = await stub.GetModel(models_pb2.GetModelRequest(name=config.model, version=config.version),
                                    timeout=config.timeout_s)
        return reply.model, [reply.model]
    listed = await stub.ListModels(models_pb2.ListModelsRequest(task=task), timeout=config.timeout_s)
    return next((m for m in listed.models if m.is_default), None), list(listed.models)


async def forecast_shape(channel: grpc.aio.Channel, config: BenchConfig) -> ForecastShape:
    """The ForecastSpec of the model to load-test (the default forecast model when none is named).

    When it cannot be read (unknown model, ...) a warning is logged and a generic shape is used, so
    the requests themselves fail and are counted by code."""
    try:
        info, _ = await _model_info(channel, config, "forecast")
        if info is None:
            log.warning("the server has no default forecast model; using a generic history shape")
            return ForecastShape()
    except grpc.aio.AioRpcError as err:
        log.warning("cannot read the forecast spec (%s: %s); using a generic history shape",
                    err.code().name, err.details())
        return ForecastShape()
    spec = info.forecast
    return ForecastShape(window=spec.window or 48, min_history=spec.min_history or 1, channels=spec.channels or 1,
                         name=info.name)


@dataclass(frozen=True)
class SpeechShape:
    """What the recognize workload needs from the model's SpeechSpec."""

    sample_rate: int = FSDD_RATE
    frame_seconds: float = 0.03  # the bundled models: hop 80 x stack 3 at 8 kHz
    streaming: bool = True
    name: str = ""  # the model's name ("" when it could not be read)

    @property
    def frame_samples(self) -> int:
        """Samples per model frame: the streaming graph only takes whole frames."""
        return max(1, round(self.frame_seconds * self.sample_rate))


def recognize_requests(config: BenchConfig, utterances: list[Utterance]) -> list[Message]:
    """One LINEAR16 Recognize request per utterance, at the utterance's (the model's) rate."""
    return [recognize_pb2.RecognizeRequest(
        config=recognize_pb2.RecognitionConfig(encoding=recognize_pb2.RecognitionConfig.LINEAR16,
                                               sample_rate_hertz=u.rate, model=config.model, version=config.version),
        audio=u.pcm) for u in utterances]


async def speech_shape(channel: grpc.aio.Channel, config: BenchConfig, streaming: bool) -> SpeechShape:
    """The SpeechSpec of the model to load-test: ``--model``, else the model the server picks for an
    empty name (the default recognition model; for streams, the default when it can stream, else the
    first READY one by name that can, as the engine's ``_streaming_default``). When it cannot be read
    a warning is logged and 8 kHz with 30 ms frames is assumed."""
    try:
        info, models = await _model_info(channel, config, "recognize")
        if not config.model:
            if streaming and (info is None or not info.speech.streaming):
                ready = sorted((m for m in models if m.speech.streaming and m.state == "READY"),
                               key=lambda m: (m.name, -int(m.version or 0)))
                info = ready[0] if ready else info
            if info is None:
                log.warning("the server has no default recognition model; assuming 8 kHz audio and 30 ms frames")
                return SpeechShape()
    except grpc.aio.AioRpcError as err:
        log.warning("cannot read the speech spec (%s: %s); assuming 8 kHz audio and 30 ms frames",
                    err.code().name, err.details())
        return SpeechShape()
    spec = info.speech
    if not spec.sample_rate or not spec.frame_seconds:
        log.warning("model %s has no speech spec; assuming 8 kHz audio and 30 ms frames", info.name)
        return SpeechShape(name=info.name)
    return SpeechShape(sample_rate=spec.sample_rate, frame_seconds=spec.frame_seconds, streaming=spec.streaming,
                       name=info.name)
