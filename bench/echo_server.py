"""No-op seqserve.v1 server: the floor under ``seqserve bench`` figures, i.e. what gRPC alone costs.

It answers the services ``seqserve serve`` answers (Forecaster, Generator, Translator, Recognizer,
Models and grpc.health.v1) on ``grpc.aio``, but computes nothing, so a benchmark of it measures the client, the
channel and the server's message handling only:

* Forecast: zeros for the requested horizon (the model's when 0), as the point forecast and as one path
  per quantile level (the request's, else the model's), per channel for multichannel models: the reply
  has the size of seqserve's. Replies are built once per shape and then reused.
* Generate / GenerateStream: ``max_tokens`` tokens of "a" (default and limit as seqserve's), one chunk
  per token when streaming, the last with finish_reason "length" and the token counts. prompt_tokens
  counts characters: there is no tokenizer.
* Translate: each text back unchanged, its tokens split on spaces.
* Recognize / StreamingRecognize: an empty transcript; the audio's length (LINEAR16 bytes / 2 at the
  given rate) as total_billed_time and result_end_time; a stream answers every audio message with an
  interim result and its half-close with the final one.
* Models: ListModels / GetModel describe the bundles under ``--models`` (manifests only, no graph is
  loaded) or, without it, one made-up model per task, so ``seqserve bench`` finds the forecast shape.

``Catalogue`` (the model list, default models and ModelInfo replies) is shared with bench.torch_server.

Run ``python -m bench.echo_server --port 0 [--models DIR]``: it logs "serving gRPC on HOST:PORT" to
stderr and stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.contract import (
    GRAPHS,
    OPTIONAL_GRAPHS,
    TASKS,
    TOKENIZERS,
    BundleError,
    ForecastSpec,
    Manifest,
    SpeechSpec,
    check_name,
    read_manifest,
)
from service.core import types
from service.core.config import EVENT_LOOPS, ServeConfig
from service.front.server import MODELS_SERVICE, TASK_SERVICES, describe_loop, event_loop_factory, run_on_loop
from service.front.servicers import duration, model_info
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

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # as `seqserve serve` logs
GRACE_S = 1.0  # on SIGTERM / SIGINT: how long in-flight calls may finish

# The made-up models served when no --models directory is given; the forecast shape is a common
# hourly one (two weeks of history, one day ahead).
FAKE_FORECAST = ForecastSpec(window=336, min_history=24, horizon=24, channels=1, quantiles=[0.1, 0.5, 0.9],
                             target_channel=0, channel_names=["y"], frequency="1h")
FAKE_SIZES = {"forecast": (2, 64), "generate": (2, 256), "translate": (1, 192), "recognize": (2, 192)}  # layers, hidden
FAKE_SPEECH = SpeechSpec(sample_rate=8000, n_fft=256, hop=80, n_mels=40, f_min=20.0, f_max=4000.0, stack=3,
                         labels=["", *(str(d) for d in range(10))])


# -- the model catalogue (shared with bench.torch_server) ---------------------------------------


class RequestError(Exception):
    """A request the baseline refuses: the gRPC code and details to abort it with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class Entry:
    """One model version a baseline answers for."""

    name: str
    version: str
    manifest: Manifest
    path: Path | None  # the bundle folder; None for a made-up model
    is_default: bool  # answers requests of its task that leave model and version empty


class Catalogue:
    """The model versions a baseline serves, resolved the way seqserve resolves them: an empty
    version is the newest one; an empty name is the task's default model (the one whose newest
    manifest says ``"default": true``, alphabetically first if several, else the first name)."""

    def __init__(self, bundles: Sequence[tuple[Manifest, Path | None]]) -> None:
        by_name: dict[str, dict[str, tuple[Manifest, Path | None]]] = {}
        for manifest, path in bundles:
            by_name.setdefault(manifest.name, {})[manifest.version] = (manifest, path)
        newest = {name: max(versions, key=int) for name, versions in by_name.items()}
        defaults: dict[str, str] = {}
        for task in TASKS:
            names = sorted(n for n, v in newest.items() if by_name[n][v][0].task == task)
            marked = [n for n in names if by_name[n][newest[n]][0].default]
            if names:
                defaults[task] = (marked or names)[0]
        self._entries = {
            name: {version: Entry(name, version, m, path, defaults.get(m.task) == name and newest[name] == version)
                   for version, (m, path) in versions.items()}
            for name, versions in by_name.items()
        }
        self._defaults = defaults
        self._loaded_at = time.time()

    @classmethod
    def from_dir(cls, models: Path, tasks: Sequence[str] = TASKS) -> Catalogue:
        """The bundles ``models/NAME/VERSION/`` of the given tasks; an unreadable one is skipped with a
        warning (seqserve marks it FAILED and serves the others)."""
        bundles: list[tuple[Manifest, Path | None]] = []
        for path in sorted(models.glob("*/*/")):
            if not (path / "manifest.json").is_file():
                continue
            try:
                check_name("name", path.parent.name)
                check_name("version", path.name)
                manifest = read_manifest(path)
            except BundleError as err:
                log.warning("skipping %s: %s", path, err)
                continue
            if (manifest.name, manifest.version) != (path.parent.name, path.name):
                log.warning("skipping %s: its manifest names %s/%s", path, manifest.name, manifest.version)
            elif manifest.task in tasks:
                bundles.append((manifest, path))
        return cls(bundles)

    @classmethod
    def fake(cls) -> Catalogue:
        """One made-up model per task, named echo-TASK, version 1."""
        manifests = []
        for task in TASKS:
            layers, hidden = FAKE_SIZES[task]
            manifests.append((Manifest(
                name=f"echo-{task}", version="1", task=task, cell="lstm", num_layers=layers, hidden_size=hidden,
                graphs={**GRAPHS[task], **OPTIONAL_GRAPHS.get(task, {})},
                tokenizers={role: f"tokenizer_{role}.json" for role in TOKENIZERS[task]},
                forecast=FAKE_FORECAST if task == "forecast" else None, speech=FAKE_SPEECH if task == "recognize" else None,
                description=f"made-up {task} model of bench.echo_server (computes nothing)",
            ), None))
        return cls(manifests)

    def entries(self, task: str = "") -> list[Entry]:
        """Every version (of ``task`` when given), by name then version number."""
        return [e for name in sorted(self._entries) for _, e in sorted(self._entries[name].items(), key=lambda kv: int(kv[0]))
                if not task or e.manifest.task == task]

    def find(self, name: str, version: str = "") -> Entry:
        """name/version ("" = newest); raises RequestError NOT_FOUND."""
        versions = self._entries.get(name)
        if not versions:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} not found")
        if not version:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} has no version {version!r}")
        return versions[version]

    def resolve(self, task: str, name: str, version: str) -> Entry:
        """The version that answers a ``task`` request; raises RequestError (NOT_FOUND, UNAVAILABLE when
        the task has no model, INVALID_ARGUMENT for a model of another task)."""
        if not name:
            if task not in self._defaults:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, f"no {task} model is loaded")
            name = self._defaults[task]
        entry = self.find(name, version)
        if entry.manifest.task != task:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"model {name!r} is a {entry.manifest.task} model, not a {task} model")
        return entry

    def tasks(self) -> set[str]:
        """The tasks that have a default model."""
        return set(self._defaults)

    def info(self, entry: Entry) -> models_pb2.ModelInfo:
        """The ModelInfo seqserve would send for ``entry`` (limits: the manifest's own)."""
        m = entry.manifest
        return model_info(types.ModelInfo(
            name=entry.name, version=entry.version, task=m.task, cell=m.cell, num_layers=m.num_layers,
            hidden_size=m.hidden_size, bidirectional=m.bidirectional, num_parameters=m.num_parameters,
            state=types.READY, is_default=entry.is_default, description=m.description,
            evaluation=dict(m.evaluation), limits=dict(m.limits),
            forecast=m.forecast.info() if m.forecast else None, loaded_at=self._loaded_at,
        ))

    def list_models(self, request: models_pb2.ListModelsRequest) -> models_pb2.ListModelsResponse:
        """ListModels; raises RequestError INVALID_ARGUMENT for an unknown task."""
        if request.task and request.task not in TASKS:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"task {request.task!r} is not one of {', '.join(TASKS)}")
        return models_pb2.ListModelsResponse(models=[self.info(e) for e in self.entries(request.task)])

    def get_model(self, request: models_pb2.GetModelRequest) -> models_pb2.GetModelResponse:
        """GetModel; raises RequestError NOT_FOUND."""
        if not request.name:
            raise RequestError(grpc.StatusCode.NOT_FOUND, "model '' not found; name a model")
        return models_pb2.GetModelResponse(model=self.info(self.find(request.name, request.version)))


def health_statuses(catalogue: Catalogue) -> dict[str, int]:
    """grpc.health.v1 service name -> status: SERVING for the whole server (""), Models and each task
    that has a model; NOT_SERVING for the other tasks."""
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    tasks = catalogue.tasks()
    return {"": serving, MODELS_SERVICE: serving,
            **{service: serving if task in tasks else not_serving for task, service in TASK_SERVICES.items()}}


def generation_length(request: generate_pb2.GenerateRequest) -> int:
    """Tokens to generate: max_tokens, or seqserve's default when 0; raises RequestError
    INVALID_ARGUMENT beyond seqserve's limit."""
    max_tokens = request.max_tokens or ServeConfig.default_max_tokens
    if not 1 <= max_tokens <= ServeConfig.max_tokens:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"max_tokens {max_tokens} must be within 1..{ServeConfig.max_tokens}")
    return max_tokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every baseline server takes: --host, --port, --log-level."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port; 0 picks a free one (default 50051)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


# -- the echo servicers ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def zero_forecast(name: str, version: str, horizon: int, channels: int, target: int,
                  levels: tuple[float, ...]) -> forecast_pb2.ForecastResponse:
    """A ForecastResponse of zeros shaped like seqserve's for these figures."""
    zeros = [0.0] * horizon
    reply = forecast_pb2.ForecastResponse(model=name, version=version, forecast=zeros, target_channel=target)
    if channels > 1:
        reply.channels.extend(forecast_pb2.Series(values=zeros) for _ in range(channels))
    for q in levels:
        path = reply.quantiles.add(quantile=q, values=zeros)
        if channels > 1:
            path.channels.extend(forecast_pb2.Series(values=zeros) for _ in range(channels))
    return reply


class EchoForecaster(forecast_pb2_grpc.ForecasterServicer):
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    async def Forecast(self, request: forecast_pb2.ForecastRequest,
                       context: grpc.aio.ServicerContext) -> forecast_pb2.ForecastResponse:
        try:
            entry = self.catalogue.resolve("forecast", request.model, request.version)
        except RequestError as err:
            await context.abort(err.code, err.details)
        spec = entry.manifest.forecast
        assert spec is not None  # a forecast manifest has its section
        horizon = request.horizon or spec.horizon
        if not 1 <= horizon <= spec.horizon:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"horizon {horizon} must be within 1..{spec.horizon}")
        levels = tuple(request.quantiles) or tuple(spec.quantiles)
        return zero_forecast(entry.name, entry.version, horizon, spec.channels, spec.target_index,
                             levels)


class EchoGenerator(generate_pb2_grpc.GeneratorServicer):
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    async def Generate(self, request: generate_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> generate_pb2.GenerateResponse:
        try:
            entry = self.catalogue.resolve("generate", request.model, request.version)
            n = generation_length(request)
        except RequestError as err:
            await context.abort(err.code, err.details)
        return generate_pb2.GenerateResponse(model=entry.name, version=entry.version, text="a" * n,
                                             finish_reason="length", prompt_tokens=len(request.prompt),
                                             completion_tokens=n)

    async def GenerateStream(self, request: generate_pb2.GenerateRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[generate_pb2.GenerateChunk]:
        try:
            self.catalogue.resolve("generate", request.model, request.version)
            n = generation_length(request)
        except RequestError as err:
            await context.abort(err.code, err.details)
        prompt_tokens = len(request.prompt)
        for i in range(1, n + 1):
            yield generate_pb2.GenerateChunk(text="a", finish_reason="length" if i == n else "",
                                             prompt_tokens=prompt_tokens, completion_tokens=i)


class EchoTranslator(translate_pb2_grpc.TranslatorServicer):
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    async def Translate(self, request: translate_pb2.TranslateRequest,
                        context: grpc.aio.ServicerContext) -> translate_pb2.TranslateResponse:
        try:
            entry = self.catalogue.resolve("translate", request.model, request.version)
        except RequestError as err:
            await context.abort(err.code, err.details)
        reply = translate_pb2.TranslateResponse(model=entry.name, version=entry.version)
        for text in request.texts:
            tokens = text.split()
            reply.translations.add(text=text, tokens=tokens, source_tokens=tokens)
        return reply


class EchoRecognizer(recognize_pb2_grpc.RecognizerServicer):
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    async def Recognize(self, request: recognize_pb2.RecognizeRequest,
                        context: grpc.aio.ServicerContext) -> recognize_pb2.RecognizeResponse:
        try:
            entry = self.catalogue.resolve("recognize", request.config.model, request.config.version)
        except RequestError as err:
            await context.abort(err.code, err.details)
        seconds = duration(len(request.audio) / 2 / (request.config.sample_rate_hertz or 8000))
        return recognize_pb2.RecognizeResponse(
            model=entry.name, version=entry.version, total_billed_time=seconds,
            results=[recognize_pb2.SpeechRecognitionResult(
                alternatives=[recognize_pb2.SpeechRecognitionAlternative(confidence=1.0)], result_end_time=seconds)])

    async def StreamingRecognize(self, requests, context: grpc.aio.ServicerContext):
        config, received = None, 0
        async for msg in requests:
            if config is None:
                config = msg.streaming_config.config
                try:
                    entry = self.catalogue.resolve("recognize", config.model, config.version)
                except RequestError as err:
                    await context.abort(err.code, err.details)
                continue
            received += len(msg.audio_content)
            seconds = duration(received / 2 / (config.sample_rate_hertz or 8000))
            yield recognize_pb2.StreamingRecognizeResponse(
                model=entry.name, version=entry.version, total_billed_time=seconds,
                results=[recognize_pb2.StreamingRecognitionResult(
                    alternatives=[recognize_pb2.SpeechRecognitionAlternative()], result_end_time=seconds)])
        if config is not None:
            seconds = duration(received / 2 / (config.sample_rate_hertz or 8000))
            yield recognize_pb2.StreamingRecognizeResponse(
                model=entry.name, version=entry.version, total_billed_time=seconds,
                results=[recognize_pb2.StreamingRecognitionResult(
                    alternatives=[recognize_pb2.SpeechRecognitionAlternative(confidence=1.0)], is_final=True,
                    result_end_time=seconds)])


class AioModels(models_pb2_grpc.ModelsServicer):
    """seqserve.v1.Models on a Catalogue, for grpc.aio servers."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    async def ListModels(self, request: models_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> models_pb2.ListModelsResponse:
        try:
            return self.catalogue.list_models(request)
        except RequestError as err:
            await context.abort(err.code, err.details)

    async def GetModel(self, request: models_pb2.GetModelRequest,
                       context: grpc.aio.ServicerContext) -> models_pb2.GetModelResponse:
        try:
            return self.catalogue.get_model(request)
        except RequestError as err:
            await context.abort(err.code, err.details)


async def create_server(catalogue: Catalogue, host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.aio.Server, int]:
    """The echo server (not started) bound to host:port; returns it and the bound port."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    forecast_pb2_grpc.add_ForecasterServicer_to_server(EchoForecaster(catalogue), server)
    generate_pb2_grpc.add_GeneratorServicer_to_server(EchoGenerator(catalogue), server)
    translate_pb2_grpc.add_TranslatorServicer_to_server(EchoTranslator(catalogue), server)
    recognize_pb2_grpc.add_RecognizerServicer_to_server(EchoRecognizer(catalogue), server)
    models_pb2_grpc.add_ModelsServicer_to_server(AioModels(catalogue), server)
    checker = health.aio.HealthServicer()
    for service, status in health_statuses(catalogue).items():
        await checker.set(service, status)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC address {host}:{port}")
    return server, bound


async def serve(catalogue: Catalogue, host: str, port: int, models: str) -> None:
    """Serve until SIGTERM or SIGINT, then stop within GRACE_S."""
    server, bound = await create_server(catalogue, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    log.info("serving gRPC on %s:%d, models from %s (event loop: %s)", host, bound, models, describe_loop(loop))
    await stop.wait()
    await server.stop(GRACE_S)
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.echo_server``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--models", type=Path, help="seqserve bundle directory to describe (default: made-up models)")
    parser.add_argument("--event-loop", default="auto", choices=EVENT_LOOPS,
                        help="asyncio event loop, as `seqserve serve --event-loop` (default auto: uvloop when installed, "
                             "so the floor runs on the loop seqserve runs on)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format=LOG_FORMAT)
    catalogue = Catalogue.from_dir(args.models) if args.models else Catalogue.fake()
    try:
        factory = event_loop_factory(args.event_loop)
    except ValueError as err:
        parser.error(str(err))
    run_on_loop(serve(catalogue, args.host, args.port, str(args.models) if args.models else "(made-up models)"), factory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
