"""What a user would write instead of seqserve: a plain gRPC server running the PyTorch models eagerly.

A synchronous ``grpc.server`` with a ``ThreadPoolExecutor`` (``--workers`` handlers at once) answers the
seqserve.v1 Forecaster, Generator and Models services and grpc.health.v1, so ``seqserve bench`` drives
it unchanged. Every request runs on its own: no batching, no step scheduler, ``torch.inference_mode``,
``torch.set_num_threads(--threads)`` (1 by default, like seqserve's one onnxruntime thread per call).

Models: for each forecast and generate bundle under ``--models DIR`` (DIR/NAME/VERSION/manifest.json)
the model of the same class and size is built from the manifest: its ``training.model_config`` (which
training/export.py always records) over the manifest's own fields. The weights are RANDOM (seeded by
``--seed``): bundles hold only ONNX graphs and the training checkpoints are not committed. This
baseline measures speed; its forecasts and texts are meaningless. Per-request compute is a trained
model's all the same, as it does not depend on the weights: a forecast is one pass over the window,
and generation runs to max_tokens as it does with the bundled trained model, which in practice never
emits its end-of-text token. (A random model would, ending about one in three 32-token generations
early, so its output bias for that token is set to -1e4.) Translate bundles are not served: with
random weights greedy decoding would run to the length limit instead of stopping where a trained
model stops, so the figures would not be comparable.

Requests are handled as the seqserve services define them, with the simple preprocessing a user would
write: Forecast crops the history to the model's window (the model normalises each window itself, as
the exported graph does) and returns the model's quantile levels (a requested level must be one of
them); Generate encodes the prompt with the bundle's tokenizer (an empty prompt starts from its BOS
token), runs the prompt through the model, then one token per step, sampled at the request's
temperature (0 = greedy) and top_k with a generator seeded by the request's seed; each token is decoded
on its own and streamed as one chunk. top_p < 1 and stop sequences are refused (INVALID_ARGUMENT).

Run ``python -m bench.torch_server --models DIR --port 0 [--threads 1] [--workers 8]``: it logs
"serving gRPC on HOST:PORT" to stderr and stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from grpc_health.v1 import health, health_pb2_grpc
from tokenizers import Tokenizer
from torch import Tensor, nn

from bench.echo_server import (
    LOG_FORMAT,
    Catalogue,
    Entry,
    RequestError,
    add_arguments,
    generation_length,
    health_statuses,
)
from service.contract import Manifest
from service.contract.frequency import season_of
from service.v1 import forecast_pb2, forecast_pb2_grpc, generate_pb2, generate_pb2_grpc, models_pb2, models_pb2_grpc
from training.layers import State
from training.models import CONFIGS, Forecaster, LanguageModel, build_model

log = logging.getLogger(__name__)

TASKS = ("forecast", "generate")  # the tasks this baseline serves
GRACE_S = 1.0  # on SIGTERM / SIGINT: how long in-flight calls may finish


def model_config(manifest: Manifest, vocab_size: int = 0) -> dict[str, Any]:
    """The config dict of the bundle's model: fields derived from the manifest, overridden by the
    recorded ``training.model_config`` (keys the config class does not know are left out);
    ``vocab_size`` is the tokenizer's size for a language model."""
    m = manifest
    derived: dict[str, Any] = {"cell": m.cell, "hidden_size": m.hidden_size, "num_layers": m.num_layers}
    if m.task == "forecast":
        assert m.forecast is not None  # a forecast manifest has its section
        spec = m.forecast
        derived.update(channels=spec.channels, window=spec.window, min_history=spec.min_history,
                       horizon=spec.horizon, quantiles=spec.quantiles, bidirectional=m.bidirectional)
    else:
        derived.update(vocab_size=m.vocab_size.get("text", vocab_size), embed_size=m.embed_size or m.hidden_size)
    known = {f.name for f in dataclasses.fields(CONFIGS[m.task])}
    recorded = {k: v for k, v in m.training.get("model_config", {}).items() if k in known}
    return {**derived, **recorded}


def build(manifest: Manifest, seed: int, vocab_size: int = 0) -> nn.Module:
    """The bundle's model with random weights (seeded), in eval mode."""
    torch.manual_seed(seed)
    return build_model(manifest.task, model_config(manifest, vocab_size)).eval()


def invalid(details: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, details)


# -- forecast -------------------------------------------------------------------------------------


class TorchForecast:
    """One forecasting version: crop, forward, reply."""

    def __init__(self, entry: Entry, seed: int) -> None:
        self.entry = entry
        assert entry.manifest.forecast is not None  # a forecast manifest has its section
        self.spec = spec = entry.manifest.forecast
        self.model = build(entry.manifest, seed)
        assert isinstance(self.model, Forecaster)
        self.median = min(range(len(spec.quantiles)), key=lambda j: abs(spec.quantiles[j] - 0.5))

    def history(self, request: forecast_pb2.ForecastRequest) -> np.ndarray:
        """The request's history as (T, C) float32; raises RequestError INVALID_ARGUMENT when its
        shape does not fit the model or a value is not finite."""
        if request.history and request.channels:
            raise invalid("set either history or channels, not both")
        if request.channels:
            if len({len(s.values) for s in request.channels}) > 1:
                raise invalid("channels must all have the same length")
            values = np.array([list(s.values) for s in request.channels], dtype=np.float32).T
        else:
            values = np.array(request.history, dtype=np.float32).reshape(-1, 1)
        steps, channels = values.shape
        if channels != self.spec.channels:
            raise invalid(f"history has {channels} channels; the model expects {self.spec.channels}")
        if steps < self.spec.min_history:
            raise invalid(f"history has {steps} steps; the model needs at least {self.spec.min_history}")
        if not np.isfinite(values).all():
            raise invalid("every history value must be finite")
        return values

    @torch.inference_mode()
    def predict(self, window: np.ndarray, season: int = 1) -> np.ndarray:
        """(T, C) history -> (H, C, Q) quantiles in its scale (T cropped to the model's window); a model
        that takes a season gets ``season``."""
        seasons = (torch.tensor([season]),) if self.spec.season_input else ()
        return self.model(torch.from_numpy(window[-self.spec.window:])[None], *seasons)[0].numpy()

    def forecast(self, request: forecast_pb2.ForecastRequest) -> forecast_pb2.ForecastResponse:
        spec = self.spec
        window = self.history(request)
        horizon = request.horizon or spec.horizon
        if not 1 <= horizon <= spec.horizon:
            raise invalid(f"horizon {horizon} must be within 1..{spec.horizon}")
        wanted = list(request.quantiles) or list(spec.quantiles)
        columns = []
        for q in wanted:
            match = [j for j, level in enumerate(spec.quantiles) if math.isclose(level, q, abs_tol=1e-9)]
            if not match:
                raise invalid(f"quantile {q} is not one of the model's levels {spec.quantiles}")
            columns.append(match[0])
        season = request.season_length or (season_of(request.frequency) if request.frequency else 1)
        paths = self.predict(window, season)[:horizon].astype(np.float64)  # (H, C, Q)
        target = spec.target_channel % spec.channels
        reply = forecast_pb2.ForecastResponse(model=self.entry.name, version=self.entry.version,
                                              forecast=paths[:, target, self.median].tolist(), target_channel=target)
        multichannel = spec.channels > 1
        if multichannel:
            reply.channels.extend(forecast_pb2.Series(values=paths[:, c, self.median].tolist())
                                  for c in range(spec.channels))
        for q, j in zip(wanted, columns, strict=True):
            path = reply.quantiles.add(quantile=q, values=paths[:, target, j].tolist())
            if multichannel:
                path.channels.extend(forecast_pb2.Series(values=paths[:, c, j].tolist()) for c in range(spec.channels))
        return reply


# -- generate -------------------------------------------------------------------------------------


class TorchLM:
    """One language-model version: prompt pass, then one eager step per token."""

    def __init__(self, entry: Entry, seed: int) -> None:
        m = entry.manifest
        assert entry.path is not None  # served models come from bundles
        self.entry = entry
        self.tokenizer = Tokenizer.from_file(str(entry.path / m.tokenizers["text"]))
        self.model = build(m, seed, vocab_size=self.tokenizer.get_vocab_size())
        assert isinstance(self.model, LanguageModel)
        self.bos = m.special_tokens.get("bos")
        self.eos = m.special_tokens.get("eos")
        if self.eos is not None:  # random weights must not end generation early (see the module docstring)
            with torch.no_grad():
                self.model.decoder.bias[self.eos] = -1e4

    @torch.inference_mode()
    def step(self, tokens: list[list[int]], state: State | None) -> tuple[Tensor, State]:
        """(1, T) ids and the state (zeros when None) -> the last position's (V,) logits, new state."""
        logits, state = self.model(torch.tensor(tokens, dtype=torch.int64), state)
        return logits[0, -1], state

    def stream(self, request: generate_pb2.GenerateRequest) -> Iterator[generate_pb2.GenerateChunk]:
        """Validate, then one chunk per generated token; the last says why generation ended."""
        max_tokens = generation_length(request)
        temperature = request.temperature if request.HasField("temperature") else 1.0
        if not temperature >= 0:
            raise invalid(f"temperature {temperature} must be 0 (greedy) or more")
        if request.top_k < 0:
            raise invalid(f"top_k {request.top_k} must be 0 (off) or more")
        if request.HasField("top_p") and request.top_p < 1.0:
            raise invalid("top_p is not supported by this baseline")
        if request.stop:
            raise invalid("stop sequences are not supported by this baseline")
        ids = self.tokenizer.encode(request.prompt, add_special_tokens=False).ids
        if not ids:
            if self.bos is None:
                raise invalid("prompt is empty and the model has no BOS token to start from")
            ids = [self.bos]
        generator = torch.Generator()
        if request.HasField("seed"):
            generator.manual_seed(request.seed)
        else:
            generator.seed()
        logits, state = self.step([ids], None)
        for n in range(1, max_tokens + 1):
            token = self.sample(logits, temperature, request.top_k, generator)
            finish = "eos" if token == self.eos else "length" if n == max_tokens else ""
            yield generate_pb2.GenerateChunk(text=self.tokenizer.decode([token]), finish_reason=finish,
                                             prompt_tokens=len(ids), completion_tokens=n)
            if finish:
                return
            logits, state = self.step([[token]], state)

    @staticmethod
    def sample(logits: Tensor, temperature: float, top_k: int, generator: torch.Generator) -> int:
        """The next token: argmax at temperature 0, else a draw from softmax(logits / temperature)
        over the top_k most likely tokens (all when 0)."""
        if temperature == 0:
            return int(logits.argmax())
        if 0 < top_k < logits.shape[0]:
            kept = torch.topk(logits, top_k)
            choice = torch.multinomial(torch.softmax(kept.values / temperature, dim=0), 1, generator=generator)
            return int(kept.indices[choice])
        return int(torch.multinomial(torch.softmax(logits / temperature, dim=0), 1, generator=generator))


# -- servicers ------------------------------------------------------------------------------------


class Registry:
    """The loaded models by (name, version), behind the catalogue that resolves requests."""

    def __init__(self, catalogue: Catalogue, seed: int) -> None:
        self.catalogue = catalogue
        self.models: dict[tuple[str, str], TorchForecast | TorchLM] = {}
        for entry in catalogue.entries():
            kind = TorchForecast if entry.manifest.task == "forecast" else TorchLM
            self.models[entry.name, entry.version] = kind(entry, seed)
            log.info("built %s/%s (%s %s, random weights)", entry.name, entry.version, entry.manifest.task,
                     entry.manifest.cell)

    def forecaster(self, request: forecast_pb2.ForecastRequest) -> TorchForecast:
        """The forecasting version that answers ``request``; raises RequestError."""
        entry = self.catalogue.resolve("forecast", request.model, request.version)
        model = self.models[entry.name, entry.version]
        assert isinstance(model, TorchForecast)
        return model

    def lm(self, request: generate_pb2.GenerateRequest) -> TorchLM:
        """The language-model version that answers ``request``; raises RequestError."""
        entry = self.catalogue.resolve("generate", request.model, request.version)
        model = self.models[entry.name, entry.version]
        assert isinstance(model, TorchLM)
        return model


class ForecastServicer(forecast_pb2_grpc.ForecasterServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def Forecast(self, request: forecast_pb2.ForecastRequest,
                 context: grpc.ServicerContext) -> forecast_pb2.ForecastResponse:
        try:
            return self.registry.forecaster(request).forecast(request)
        except RequestError as err:
            context.abort(err.code, err.details)


class GenerateServicer(generate_pb2_grpc.GeneratorServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def Generate(self, request: generate_pb2.GenerateRequest,
                 context: grpc.ServicerContext) -> generate_pb2.GenerateResponse:
        try:
            lm = self.registry.lm(request)
            chunks = list(lm.stream(request))
        except RequestError as err:
            context.abort(err.code, err.details)
        last = chunks[-1]
        return generate_pb2.GenerateResponse(
            model=lm.entry.name, version=lm.entry.version, text="".join(c.text for c in chunks),
            finish_reason=last.finish_reason, prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
        )

    def GenerateStream(self, request: generate_pb2.GenerateRequest,
                       context: grpc.ServicerContext) -> Iterator[generate_pb2.GenerateChunk]:
        try:
            yield from self.registry.lm(request).stream(request)
        except RequestError as err:
            context.abort(err.code, err.details)


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    """seqserve.v1.Models on a Catalogue, for synchronous servers."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def ListModels(self, request: models_pb2.ListModelsRequest,
                   context: grpc.ServicerContext) -> models_pb2.ListModelsResponse:
        try:
            return self.catalogue.list_models(request)
        except RequestError as err:
            context.abort(err.code, err.details)

    def GetModel(self, request: models_pb2.GetModelRequest,
                 context: grpc.ServicerContext) -> models_pb2.GetModelResponse:
        try:
            return self.catalogue.get_model(request)
        except RequestError as err:
            context.abort(err.code, err.details)


def create_server(registry: Registry, host: str = "127.0.0.1", port: int = 0,
                  workers: int = 8) -> tuple[grpc.Server, int]:
    """The server (not started) bound to host:port, ``workers`` handler threads; returns it and the port."""
    server = grpc.server(ThreadPoolExecutor(max_workers=workers), options=[("grpc.so_reuseport", 0)])
    forecast_pb2_grpc.add_ForecasterServicer_to_server(ForecastServicer(registry), server)
    generate_pb2_grpc.add_GeneratorServicer_to_server(GenerateServicer(registry), server)
    models_pb2_grpc.add_ModelsServicer_to_server(ModelsServicer(registry.catalogue), server)
    checker = health.HealthServicer()
    for service, status in health_statuses(registry.catalogue).items():
        checker.set(service, status)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC address {host}:{port}")
    return server, bound


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.torch_server``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.torch_server", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--models", type=Path, required=True, help="seqserve bundle directory (forecast, generate)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--workers", type=int, default=8, help="requests handled at once (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format=LOG_FORMAT)
    torch.set_num_threads(args.threads)
    registry = Registry(Catalogue.from_dir(args.models, TASKS), args.seed)
    if not registry.models:
        parser.error(f"no forecast or generate bundle under {args.models}")
    server, port = create_server(registry, args.host, args.port, args.workers)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(GRACE_S))
    signal.signal(signal.SIGINT, lambda *_: server.stop(GRACE_S))
    server.start()
    log.info("serving gRPC on %s:%d, models from %s", args.host, port, args.models)
    server.wait_for_termination()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
