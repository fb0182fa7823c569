"""gRPC servicers: convert protos to engine requests and engine results to protos, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
from typing import Any

import grpc
import numpy as np
from google.protobuf import duration_pb2, message_factory, struct_pb2, timestamp_pb2

from service.contract import TASKS
from service.core import types
from service.core.errors import DeadlineExceeded, InvalidArgument, ServiceError, Unavailable
from service.core.observe import label_request
from service.core.tasks.speech_streams import deadline_margin
from service.front.protowire import extend_packed
from service.front.status import UndecodableRequest, handle_errors, request_decoder
from service.v1 import (
    forecast_pb2,
    forecast_pb2_grpc,
    generate_pb2,
    generate_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    recognize_pb2,
    recognize_pb2_grpc,
    translate_pb2,
    translate_pb2_grpc,
)

log = logging.getLogger(__name__)


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline as an absolute ``time.monotonic()`` time, or None without one."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic() + remaining


# --- conversions --------------------------------------------------------------------------


def matrix(values: np.ndarray) -> translate_pb2.Matrix:
    """A 2-D array as a row-major Matrix."""
    values = np.asarray(values, dtype=np.float32)  # (rows, cols)
    rows, cols = values.shape
    return extend_packed(translate_pb2.Matrix(rows=rows, cols=cols), "values", values)


def history_of(request: forecast_pb2.ForecastRequest) -> np.ndarray:
    """The request's history as a (T, C) float64 array; raises InvalidArgument on a bad shape."""
    if request.history and request.channels:
        raise InvalidArgument("set either history or channels, not both", field="channels")
    if request.channels:
        lengths = {len(s.values) for s in request.channels}
        if len(lengths) > 1:
            raise InvalidArgument(
                f"channels must all have the same length, got lengths {sorted(lengths)}", field="channels"
            )
        # numpy reads the repeated fields directly (4x faster than through list()).
        return np.array([s.values for s in request.channels], dtype=np.float64).T  # (T, C)
    return np.array(request.history, dtype=np.float64).reshape(-1, 1)  # (T, 1)


def struct_of(data: dict[str, Any]) -> struct_pb2.Struct:
    """A JSON-like dict as a Struct; values that are not JSON-like become their str()."""
    out = struct_pb2.Struct()
    out.update({str(k): _jsonable(v) for k, v in (data or {}).items()})
    return out


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _timestamp(value: Any) -> timestamp_pb2.Timestamp | None:
    if value is None or value == 0 or value == "":
        return None
    ts = timestamp_pb2.Timestamp()
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        ts.FromDatetime(value)
    elif isinstance(value, (int, float)):
        ts.FromNanoseconds(int(value * 1e9))  # seconds since the epoch
    elif isinstance(value, str):
        ts.FromJsonString(value)
    else:
        return None
    return ts


def model_info(info: types.ModelInfo) -> models_pb2.ModelInfo:
    """An engine ModelInfo as a proto."""
    state = info.state.value if hasattr(info.state, "value") else info.state
    out = models_pb2.ModelInfo(
        name=info.name,
        version=str(info.version),
        task=info.task,
        cell=info.cell,
        num_layers=int(info.num_layers or 0),
        hidden_size=int(info.hidden_size or 0),
        bidirectional=bool(info.bidirectional),
        num_parameters=int(info.num_parameters or 0),
        state=str(state or ""),
        is_default=bool(info.is_default),
        description=info.description or "",
        evaluation=struct_of(info.evaluation or {}),
        limits={str(k): int(v) for k, v in (info.limits or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        error=info.error or "",
        weights=info.weights or "",
        languages=dict(info.languages or {}),
        manifest_name=info.manifest_name or "",
        manifest_version=info.manifest_version or "",
    )
    if info.speech:
        sp = info.speech
        out.speech.CopyFrom(models_pb2.SpeechSpec(
            sample_rate=int(sp["sample_rate"]), labels=[x for x in sp["labels"] if x], frame_seconds=float(sp["frame_seconds"]),
            streaming=bool(sp["streaming"]), n_fft=int(sp["n_fft"]), hop=int(sp["hop"]), n_mels=int(sp["n_mels"]),
            word_separator=str(sp.get("word_separator", " "))))
    if info.forecast:
        spec = info.forecast
        channels = int(spec.get("channels", 1))
        out.forecast.CopyFrom(
            models_pb2.ForecastSpec(
                window=int(spec.get("window", 0)),
                min_history=int(spec.get("min_history", 0)),
                horizon=int(spec.get("horizon", 0)),
                channels=channels,
                quantiles=[float(q) for q in spec.get("quantiles", [])],
                target_channel=int(spec.get("target_channel", 0)),  # an index: ForecastSpec.info()
                channel_names=[str(n) for n in spec.get("channel_names", [])],
                frequency=str(spec.get("frequency", "")),
                frequencies=[str(f) for f in spec.get("frequencies", [])],
                season_input=bool(spec.get("season_input", False)),
                season_length=int(spec.get("season_length", 0)),
            )
        )
    loaded = _timestamp(info.loaded_at)
    if loaded is not None:
        out.loaded_at.CopyFrom(loaded)
    return out


def generate_request(request: generate_pb2.GenerateRequest) -> types.GenerateRequest:
    """A GenerateRequest proto as the engine's request (0 / unset -> None = server default)."""
    return types.GenerateRequest(
        model=request.model,
        version=request.version,
        prompt=request.prompt,
        max_tokens=request.max_tokens or None,
        temperature=request.temperature if request.HasField("temperature") else None,
        top_k=request.top_k or None,
        top_p=request.top_p if request.HasField("top_p") else None,
        seed=request.seed if request.HasField("seed") else None,
        stop=list(request.stop),
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs,
    )


def token_logprobs(entries: list[types.TokenLogprob]) -> list[generate_pb2.TokenLogprob]:
    """Engine TokenLogprobs as protos (alternatives included)."""
    return [generate_pb2.TokenLogprob(token=e.token, token_id=e.token_id, logprob=e.logprob,
                                      top_logprobs=token_logprobs(e.top_logprobs)) for e in entries]


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


_ENCODINGS = {recognize_pb2.RecognitionConfig.LINEAR16: "LINEAR16", recognize_pb2.RecognitionConfig.WAV: "WAV",
              recognize_pb2.RecognitionConfig.ENCODING_UNSPECIFIED: ""}


def recognition_config(config: recognize_pb2.RecognitionConfig, where: str = "config") -> types.RecognitionConfig:
    """A RecognitionConfig proto as the engine's; an encoding number this server does not know is INVALID_ARGUMENT."""
    if config.encoding not in _ENCODINGS:
        raise InvalidArgument(f"{where}.encoding {config.encoding} is not one of LINEAR16 (1), WAV (2)",
                              field=f"{where}.encoding")
    return types.RecognitionConfig(
        encoding=_ENCODINGS[config.encoding], sample_rate_hertz=config.sample_rate_hertz,
        max_alternatives=config.max_alternatives, word_time_offsets=config.enable_word_time_offsets,
        model=config.model, version=config.version,
    )


def speech_alternatives(result: types.SpeechResult) -> list[recognize_pb2.SpeechRecognitionAlternative]:
    return [
        recognize_pb2.SpeechRecognitionAlternative(
            transcript=a.transcript, confidence=a.confidence,
            words=[recognize_pb2.WordInfo(word=w.word, start_time=duration(w.start), end_time=duration(w.end),
                                          confidence=w.confidence) for w in a.words],
        )
        for a in result.alternatives
    ]


# --- servicers ----------------------------------------------------------------------------


class TranslatorServicer(translate_pb2_grpc.TranslatorServicer):
    """seqserve.v1.Translator on an Engine."""

    def __init__(self, engine) -> None:
        self.engine = engine

    @handle_errors
    async def Translate(self, request, context):
        req = types.TranslateRequest(
            model=request.model,
            version=request.version,
            texts=list(request.texts),
            beam_size=request.beam_size,
            max_length=request.max_length,
            return_attention=request.return_attention,
        )
        result = await self.engine.translate(req, deadline_of(context))
        out = translate_pb2.TranslateResponse(model=result.model, version=str(result.version))
        for t in result.translations:
            item = out.translations.add(
                text=t.text, tokens=list(t.tokens), source_tokens=list(t.source_tokens), score=float(t.score),
                unknown_source_tokens=t.unknown_source_tokens, unknown_words=list(t.unknown_words),
                copied_words=t.copied_words, sentences=t.sentences, warning=t.warning,
            )
            if t.attention is not None:
                item.attention.CopyFrom(matrix(t.attention))
        return out


class ForecasterServicer(forecast_pb2_grpc.ForecasterServicer):
    """seqserve.v1.Forecaster on an Engine."""

    def __init__(self, engine) -> None:
        self.engine = engine

    @handle_errors
    async def Forecast(self, request, context):
        req = types.ForecastRequest(
            model=request.model,
            version=request.version,
            history=history_of(request),
            horizon=request.horizon,
            quantiles=list(request.quantiles),
            history_field="channels" if request.channels else "history",
            frequency=request.frequency,
            season_length=request.season_length,
        )
        result = await self.engine.forecast(req, deadline_of(context))
        point = np.asarray(result.forecast, dtype=np.float64)  # (H, C)
        paths = np.asarray(result.quantile_paths, dtype=np.float64)  # (Q, H, C)
        channels, target = point.shape[1], result.target_channel
        # Arrays go in through their wire form (service.front.protowire): ~10x faster than lists.
        out = forecast_pb2.ForecastResponse(model=result.model, version=str(result.version), target_channel=target,
                                            season_length=result.season_length)
        extend_packed(out, "forecast", point[:, target])
        if channels > 1:
            for c in range(channels):
                extend_packed(out.channels.add(), "values", point[:, c])
        for q, path in zip(result.quantiles, paths, strict=True):  # path (H, C)
            qp = extend_packed(out.quantiles.add(quantile=float(q)), "values", path[:, target])
            if channels > 1:
                for c in range(channels):
                    extend_packed(qp.channels.add(), "values", path[:, c])
        return out


class GeneratorServicer(generate_pb2_grpc.GeneratorServicer):
    """seqserve.v1.Generator on an Engine."""

    def __init__(self, engine) -> None:
        self.engine = engine

    @handle_errors
    async def Generate(self, request, context):
        result = await self.engine.generate(generate_request(request), deadline_of(context))
        return generate_pb2.GenerateResponse(
            model=result.model,
            version=str(result.version),
            text=result.text,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            logprobs=token_logprobs(result.logprobs),
        )

    @handle_errors
    async def Score(self, request, context):
        req = types.ScoreRequest(model=request.model, version=request.version, prompt=request.prompt,
                                 continuations=list(request.continuations))
        result = await self.engine.score(req, deadline_of(context))
        return generate_pb2.ScoreResponse(
            model=result.model, version=str(result.version), prompt_tokens=result.prompt_tokens,
            scores=[generate_pb2.ContinuationScore(text=s.text, logprob=s.logprob, tokens=token_logprobs(s.tokens),
                                                   greedy=s.greedy, unknown_tokens=s.unknown_tokens)
                    for s in result.scores],
            unknown_prompt_tokens=result.unknown_prompt_tokens,
        )

    @handle_errors
    async def GenerateStream(self, request, context):
        # Written with context.write (not as a generator) so that a cancelled call raises
        # CancelledError right here and `aclosing` closes the engine's stream at once.
        stream = self.engine.generate_stream(generate_request(request), deadline_of(context))
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                await context.write(
                    generate_pb2.GenerateChunk(
                        text=chunk.text,
                        finish_reason=chunk.finish_reason,
                        prompt_tokens=chunk.prompt_tokens,
                        completion_tokens=chunk.completion_tokens,
                        logprobs=token_logprobs(chunk.logprobs),
                    )
                )


class RecognizerServicer(recognize_pb2_grpc.RecognizerServicer):
    """seqserve.v1.Recognizer on an Engine."""

    def __init__(self, engine) -> None:
        self.engine = engine

    @handle_errors
    async def Recognize(self, request, context):
        config = recognition_config(request.config)
        label_request(model=config.model, version=config.version, for_model=True)
        result = await self.engine.recognize(types.RecognizeRequest(config, request.audio), deadline_of(context))
        return recognize_pb2.RecognizeResponse(
            model=result.model, version=str(result.version),
            results=[recognize_pb2.SpeechRecognitionResult(alternatives=speech_alternatives(result.result),
                                                           result_end_time=duration(result.result.end_time))],
            total_billed_time=duration(result.audio_seconds),
        )

    @handle_errors
    async def StreamingRecognize(self, requests, context):
        messages = requests.__aiter__()
        try:
            first = await messages.__anext__()
        except StopAsyncIteration:
            raise InvalidArgument("the stream ended before its first message; send streaming_config first",
                                  field="streaming_config") from None
        if isinstance(first, UndecodableRequest):
            raise InvalidArgument(first.message)
        if first.WhichOneof("streaming_request") != "streaming_config":
            raise InvalidArgument("message 0 has no streaming_config; the first message must carry it, audio_content "
                                  "comes after", field="streaming_config")
        sc = first.streaming_config
        config = recognition_config(sc.config, "streaming_config.config")
        label_request(model=config.model, version=config.version, for_model=True)
        deadline = deadline_of(context)
        async with self.engine.recognize_stream(config, sc.interim_results, deadline, sc.single_utterance,
                                                sc.end_silence_ms) as (name, version, stream):
            tasks = [asyncio.create_task(_read_audio(messages, stream)),
                     asyncio.create_task(_stop_early(self.engine, stream, deadline_margin(deadline)))]
            try:
                async for result in stream.updates():
                    if isinstance(result, types.SpeechEvent):  # the speaker stopped (single_utterance)
                        await context.write(recognize_pb2.StreamingRecognizeResponse(
                            model=name, version=str(version), total_billed_time=duration(stream.received_seconds),
                            speech_event_type=recognize_pb2.StreamingRecognizeResponse.SpeechEventType.Value(
                                result.kind)))
                        continue
                    await context.write(recognize_pb2.StreamingRecognizeResponse(
                        model=name, version=str(version), total_billed_time=duration(stream.received_seconds),
                        results=[recognize_pb2.StreamingRecognitionResult(
                            alternatives=speech_alternatives(result), is_final=result.is_final,
                            stability=result.stability, result_end_time=duration(result.end_time))],
                    ))
            finally:
                for task in tasks:
                    task.cancel()


async def _read_audio(messages, stream) -> None:
    """Feed a stream's audio_content messages to it; half-close finishes it; bad input fails it."""
    index = 1
    try:
        async for msg in messages:
            if isinstance(msg, UndecodableRequest):
                raise InvalidArgument(f"message {index}: {msg.message}")
            if msg.WhichOneof("streaming_request") == "streaming_config":
                raise InvalidArgument(f"message {index} carries streaming_config; only the first message may",
                                      field="streaming_config")
            stream.push(msg.audio_content, index)
            index += 1
        stream.finish()
    except ServiceError as err:
        stream.fail(err)


async def _stop_early(engine, stream, stop_at: float | None) -> None:
    """End the stream with what it recognised when the server drains or just before its deadline."""
    drain = asyncio.ensure_future(engine.wait_draining())
    try:
        timeout = None if stop_at is None else max(0.0, stop_at - time.monotonic())
        done, _ = await asyncio.wait([drain], timeout=timeout)
        if drain in done:
            stream.stop(Unavailable("server is draining; the final result covers the audio recognised until now"))
        else:
            stream.stop(DeadlineExceeded("the call's deadline is close; the final result covers the audio "
                                         "recognised until now"))
    finally:
        drain.cancel()


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    """seqserve.v1.Models on an Engine."""

    def __init__(self, engine) -> None:
        self.engine = engine

    @handle_errors
    async def ListModels(self, request, context):
        if request.task and request.task not in TASKS:
            raise InvalidArgument(f"task {request.task!r} is not one of {', '.join(TASKS)}", field="task")
        infos = [i for i in self.engine.list_models() if not request.task or i.task == request.task]
        infos.sort(key=lambda i: (i.name, int(i.version) if str(i.version).isdigit() else 0, str(i.version)))
        return models_pb2.ListModelsResponse(models=[model_info(i) for i in infos])

    @handle_errors
    async def GetModel(self, request, context):
        return models_pb2.GetModelResponse(model=model_info(self.engine.get_model(request.name, request.version)))


def register(server: grpc.aio.Server, servicer: Any, module: Any, service: str) -> str:
    """Register ``servicer`` for ``service`` of the generated ``module`` (e.g. forecast_pb2) like the
    generated add_*Servicer_to_server does, but with request_decoder deserializers; returns the
    service's full name."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for method in descriptor.methods:
        if method.client_streaming and not method.server_streaming:
            raise TypeError(f"{descriptor.full_name}.{method.name}: client streaming alone is not supported")
        if method.client_streaming:
            make = grpc.stream_stream_rpc_method_handler
        else:
            make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request_decoder(message_factory.GetMessageClass(method.input_type)),
            response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))
    server.add_registered_method_handlers(descriptor.full_name, handlers)
    return descriptor.full_name


def add_servicers(server: grpc.aio.Server, engine) -> list[str]:
    """Register the five seqserve.v1 services on ``server``; returns their full names."""
    return [
        register(server, TranslatorServicer(engine), translate_pb2, "Translator"),
        register(server, ForecasterServicer(engine), forecast_pb2, "Forecaster"),
        register(server, GeneratorServicer(engine), generate_pb2, "Generator"),
        register(server, RecognizerServicer(engine), recognize_pb2, "Recognizer"),
        register(server, ModelsServicer(engine), models_pb2, "Models"),
    ]
