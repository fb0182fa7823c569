"""The Open Inference Protocol (KServe v2) on the engine: ``inference.GRPCInferenceService`` beside
seqserve.v1 on the same port, so Triton's and KServe's clients call seqserve unchanged.

Every bundle is a model with task-level tensors (``TENSORS``). A ModelInfer of B rows is B requests
to the engine, gathered: the same batchers, step loops, admission, deadlines and metrics as the
seqserve.v1 RPCs, and each row's answer is what a separate call gives."""

from __future__ import annotations

import asyncio
import importlib.metadata
from typing import Any

import numpy as np

from service.contract import TASKS
from service.core import types
from service.core.errors import InvalidArgument, NotFound
from service.core.observe import label_request
from service.front.oiptensors import (
    add_output,
    bool_parameter,
    float_parameter,
    int_parameter,
    read_inputs,
    request_parameters,
    string_parameter,
)
from service.front.servicers import deadline_of
from service.front.status import handle_errors
from service.v1 import open_inference_grpc_pb2 as pb
from service.v1 import open_inference_grpc_pb2_grpc as pb_grpc

PLATFORM = "seqserve"  # ModelMetadata.platform: the engine runs the bundle's graphs (onnxruntime inside)
# Per task: input tensors and output tensors as (name, datatype, shape); -1 = any size. Forecast
# inputs may be FP64 too (outputs then follow); a multichannel model takes history [-1, -1, C].
TENSORS = {
    "translate": ([("text", "BYTES", [-1])],
                  [("translation", "BYTES", [-1]), ("score", "FP64", [-1]), ("unknown_source_tokens", "INT32", [-1])]),
    "forecast": ([("history", "FP32", [-1, -1])], [("forecast", "FP32", [-1, -1]), ("quantiles", "FP32", [-1, -1, -1])]),
    "generate": ([("prompt", "BYTES", [-1]), ("continuation", "BYTES", [-1])],
                 [("text", "BYTES", [-1]), ("finish_reason", "BYTES", [-1]), ("completion_tokens", "INT32", [-1]),
                  ("cum_logprob", "FP64", [-1]), ("token_logprobs", "FP64", [-1, -1]),
                  ("logprob", "FP64", [-1]), ("greedy", "BOOL", [-1])]),
    # audio: one encoded recording per row (WAV, or LINEAR16 with parameter sample_rate_hertz), or
    # FP32/FP64 samples [rows, samples] in -1..1 at sample_rate_hertz
    "recognize": ([("audio", "BYTES", [-1])],
                  [("transcript", "BYTES", [-1]), ("confidence", "FP32", [-1]), ("audio_seconds", "FP32", [-1])]),
}
# Inputs a model may go without: a generation model given `continuation` scores it after `prompt`
# (Generator.Score, one continuation per row) instead of generating.
OPTIONAL_INPUTS = {"continuation"}
PARAMETERS = {
    "translate": {"beam_size": int_parameter, "max_length": int_parameter},
    "forecast": {"horizon": int_parameter, "quantiles": lambda n, v: _levels(n, v), "frequency": string_parameter,
                 "season_length": int_parameter},
    "generate": {"max_tokens": int_parameter, "temperature": float_parameter, "top_k": int_parameter,
                 "top_p": float_parameter, "seed": int_parameter, "stop": string_parameter,
                 "logprobs": bool_parameter},
    "recognize": {"sample_rate_hertz": int_parameter, "encoding": string_parameter},
}


def _levels(name: str, value: Any) -> list[float]:
    """The quantiles parameter: "0.1,0.5,0.9" or one number."""
    try:
        return [float_parameter(name, value)]
    except InvalidArgument:
        text = string_parameter(name, value)
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidArgument(f"parameters.quantiles {text!r} must be levels like \"0.1,0.5,0.9\"",
                              field="parameters.quantiles") from None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService on an Engine."""

    def __init__(self, engine) -> None:
        self.engine = engine

    @handle_errors
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @handle_errors
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=any(self.engine.task_ready(t) for t in TASKS))

    @handle_errors
    async def ModelReady(self, request, context):
        try:
            info = self.engine.get_model(request.name, request.version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=info.state == types.READY and self.engine.task_ready(info.task))

    @handle_errors
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="seqserve", version=_version(), extensions=[])

    @handle_errors
    async def ModelMetadata(self, request, context):
        if not request.name:
            raise InvalidArgument("name is empty; name a model", field="name")
        info = Route(*self.engine.model_spec(request.name, request.version))
        versions = sorted((m.version for m in self.engine.list_models()
                           if m.name == info.name and m.state == types.READY), key=int)
        inputs, outputs = _tensors(info)
        return pb.ModelMetadataResponse(
            name=info.name, versions=versions, platform=PLATFORM,
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=n, datatype=d, shape=s) for n, d, s in inputs],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=n, datatype=d, shape=s) for n, d, s in outputs],
        )

    @handle_errors
    async def ModelInfer(self, request, context):
        label_request(model=request.model_name, version=request.model_version, for_model=True)
        self.engine.check_accepting()  # draining: UNAVAILABLE (retryable), before the models unload
        if not request.model_name:
            raise InvalidArgument("model_name is empty; name a model (ModelMetadata lists its tensors)", field="model_name")
        info = Route(*self.engine.model_spec(request.model_name, request.model_version))
        for t in request.inputs:  # the one rows check, before any element is read (a huge batch costs nothing)
            if t.shape:
                self._rows(t.shape[0], t.name)
        inputs = read_inputs(request)
        names = [n for n, _, _ in TENSORS[info.task][0]]
        required = [n for n in names if n not in OPTIONAL_INPUTS]
        if not set(required) <= set(inputs) <= set(names):
            optional = [n for n in names if n in OPTIONAL_INPUTS]
            raise InvalidArgument(f"inputs are {sorted(inputs)}; model {info.name!r} ({info.task}) takes "
                                  f"{', '.join(map(repr, required))}" + (f" (and optionally {', '.join(map(repr, optional))})"
                                                                         if optional else ""), field="inputs")
        params = request_parameters(request.parameters, PARAMETERS[info.task])
        info.asked = request.model_version  # rows resolve what the request named, as seqserve.v1 calls do
        datatype, array = inputs[required[0]]
        deadline = deadline_of(context)
        if "continuation" in inputs:
            version, outputs = await self._score(info, inputs["prompt"], inputs["continuation"], params, deadline)
        else:
            infer = {"translate": self._translate, "forecast": self._forecast, "generate": self._generate,
                     "recognize": self._recognize}[info.task]
            version, outputs = await infer(info, datatype, array, params, deadline)
        wanted = [o.name for o in request.outputs]
        known = [name for name, _, _, _ in outputs]
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise InvalidArgument(f"outputs {unknown} are not outputs of model {info.name!r} for this request "
                                  f"({', '.join(known)})", field="outputs")
        response = pb.ModelInferResponse(model_name=info.name, model_version=version, id=request.id)
        for name, dt, values, shape in outputs:
            if not wanted or name in wanted:
                add_output(response, name, dt, values, shape)
        return response

    def _rows(self, rows: int, name: str) -> None:
        """Refuse a batch outside 1..max_texts rows (the rows of one ModelInfer, each a request to the engine)."""
        limit = self.engine.config.max_texts
        if not 1 <= rows <= limit:
            raise InvalidArgument(f"inputs[{name!r}] has {rows} rows; one ModelInfer takes 1 to {limit}", field="inputs")

    async def _translate(self, info, datatype, array, params, deadline):
        texts = _strings(array, datatype, "text")
        # One engine request for all rows (each text is still translated on its own): the rows'
        # sentences then share one set of decoding waves instead of claiming max_texts streams each.
        req = types.TranslateRequest(model=info.name, version=info.asked, texts=texts,
                                     beam_size=params.get("beam_size", 1), max_length=params.get("max_length", 0))
        try:
            result = await self.engine.translate(req, deadline)
        except InvalidArgument as err:
            raise _in_row(err, None, info.task) from None
        shape = list(array.shape)
        ts = result.translations
        return result.version, [
            ("translation", "BYTES", [t.text.encode() for t in ts], shape),
            ("score", "FP64", np.array([t.score for t in ts]), shape),
            ("unknown_source_tokens", "INT32", np.array([t.unknown_source_tokens for t in ts]), shape),
        ]

    async def _forecast(self, info, datatype, array, params, deadline):
        if datatype not in ("FP32", "FP64"):
            raise InvalidArgument(f"inputs['history'] is {datatype}; it must be FP32 or FP64", field="inputs")
        channels = int((info.forecast or {}).get("channels", 1))
        if array.ndim == 3 and array.shape[2] != channels:
            raise InvalidArgument(f"inputs['history'] has {array.shape[2]} channels; model {info.name!r} takes {channels}",
                                  field="inputs")
        if array.ndim != (2 if channels == 1 else 3) and not (array.ndim == 3 and channels == 1):
            want = "[rows, steps]" if channels == 1 else f"[rows, steps, {channels}]"
            raise InvalidArgument(f"inputs['history'] has shape {list(array.shape)}; model {info.name!r} takes {want}",
                                  field="inputs")
        rows = array.shape[0]
        history = array.astype(np.float64).reshape(rows, array.shape[1], channels)
        base = dict(model=info.name, version=info.asked, horizon=params.get("horizon", 0),
                    quantiles=params.get("quantiles", []), frequency=params.get("frequency", ""),
                    season_length=params.get("season_length", 0))
        results = await _gather((self.engine.forecast(types.ForecastRequest(history=h, **base), deadline) for h in history),
                                info.task)
        target = results[0].target_channel
        point = np.stack([r.forecast[:, target] for r in results])  # (B, H)
        paths = np.stack([r.quantile_paths[:, :, target].T for r in results])  # (B, H, Q)
        return results[0].version, [("forecast", datatype, point, list(point.shape)),
                                    ("quantiles", datatype, paths, list(paths.shape))]

    async def _generate(self, info, datatype, array, params, deadline):
        prompts = _strings(array, datatype, "prompt")
        stop = [params.pop("stop")] if "stop" in params else []
        results = await _gather((self.engine.generate(types.GenerateRequest(
            model=info.name, version=info.asked, prompt=p, stop=stop, **params), deadline) for p in prompts), info.task)
        shape = list(array.shape)
        outputs = [
            ("text", "BYTES", [r.text.encode() for r in results], shape),
            ("finish_reason", "BYTES", [r.finish_reason.encode() for r in results], shape),
            ("completion_tokens", "INT32", np.array([r.completion_tokens for r in results]), shape),
        ]
        if params.get("logprobs"):  # each row's tokens, NaN after its completion_tokens
            steps = np.full((len(results), max(r.completion_tokens for r in results)), np.nan)
            for i, r in enumerate(results):
                steps[i, : len(r.logprobs)] = [t.logprob for t in r.logprobs]
            outputs += [("cum_logprob", "FP64", np.nansum(steps, axis=1), shape),
                        ("token_logprobs", "FP64", steps, [len(results), steps.shape[1]])]
        return results[0].version, outputs

    async def _recognize(self, info, datatype, array, params, deadline):
        """Each row: one recording (encoded bytes, or float samples), its best transcript."""
        encoding = params.get("encoding", "")
        if encoding not in ("", "LINEAR16", "WAV"):
            raise InvalidArgument(f"parameters.encoding {encoding!r} is not one of LINEAR16, WAV",
                                  field="parameters.encoding")
        config = types.RecognitionConfig(encoding=encoding, sample_rate_hertz=params.get("sample_rate_hertz", 0),
                                         model=info.name, version=info.asked)
        if datatype in ("FP32", "FP64"):
            if array.ndim != 2:
                raise InvalidArgument(f"inputs['audio'] has shape {list(array.shape)}; samples take [rows, samples]",
                                      field="inputs")
            requests = [types.RecognizeRequest(config, samples=row) for row in array]
        elif datatype == "BYTES":
            rows = array[:, 0] if array.ndim == 2 and array.shape[1] == 1 else array
            if rows.ndim != 1:
                raise InvalidArgument(f"inputs['audio'] has shape {list(array.shape)}; encoded audio takes [rows] or "
                                      "[rows, 1]", field="inputs")
            requests = [types.RecognizeRequest(config, audio=bytes(r)) for r in rows]
        else:
            raise InvalidArgument(f"inputs['audio'] is {datatype}; it must be BYTES (encoded audio) or FP32/FP64 "
                                  "(samples)", field="inputs")
        results = await _gather((self.engine.recognize(r, deadline) for r in requests), info.task)
        shape = [len(results)]
        best = [r.result.alternatives[0] for r in results]
        return results[0].version, [
            ("transcript", "BYTES", [a.transcript.encode() for a in best], shape),
            ("confidence", "FP32", np.array([a.confidence for a in best], np.float32), shape),
            ("audio_seconds", "FP32", np.array([r.audio_seconds for r in results], np.float32), shape),
        ]

    async def _score(self, info, prompt, continuation, params, deadline):
        """Each row: log P(continuation | prompt), as Generator.Score gives it."""
        prompts = _strings(prompt[1], prompt[0], "prompt")
        texts = _strings(continuation[1], continuation[0], "continuation")
        if len(texts) != len(prompts):
            raise InvalidArgument(f"inputs['continuation'] has {len(texts)} rows; 'prompt' has {len(prompts)}",
                                  field="inputs")
        if set(params) - {"logprobs"}:
            raise InvalidArgument(f"parameters {sorted(set(params) - {'logprobs'})} are for generating, not for "
                                  "scoring a continuation", field="parameters")
        results = await _gather((self.engine.score(types.ScoreRequest(
            model=info.name, version=info.asked, prompt=p, continuations=[c]), deadline)
            for p, c in zip(prompts, texts)), info.task)
        shape = list(prompt[1].shape)
        return results[0].version, [("logprob", "FP64", np.array([r.scores[0].logprob for r in results]), shape),
                                    ("greedy", "BOOL", np.array([r.scores[0].greedy for r in results]), shape)]


def _strings(array: np.ndarray, datatype: str, name: str) -> list[str]:
    """The UTF-8 texts of a BYTES input of shape [B] or [B, 1]."""
    if datatype != "BYTES":
        raise InvalidArgument(f"inputs[{name!r}] is {datatype}; it must be BYTES (UTF-8 text)", field="inputs")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InvalidArgument(f"inputs[{name!r}] has shape {list(array.shape)}; expected [rows] or [rows, 1]",
                              field="inputs")
    out = []
    for i, value in enumerate(array):
        try:
            out.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidArgument(f"inputs[{name!r}] row {i} is not UTF-8 text", field="inputs") from None
    return out


def _tensors(info: "Route") -> tuple[list, list]:
    inputs, outputs = TENSORS[info.task]
    if info.task == "forecast":
        spec = info.forecast or {}
        channels = int(spec.get("channels", 1))
        inputs = [("history", "FP32", [-1, -1] if channels == 1 else [-1, -1, channels])]
        # Q follows the quantiles parameter (the model's levels without it); FP64 in gives FP64 out
        outputs = [("forecast", "FP32", [-1, -1]), ("quantiles", "FP32", [-1, -1, -1])]
    return inputs, outputs


class Route:
    """Where a ModelInfer goes: the version, its task and (forecast) spec."""

    __slots__ = ("name", "version", "task", "forecast", "asked")

    def __init__(self, name: str, version: str, task: str, forecast: dict[str, Any] | None) -> None:
        self.name, self.version, self.task, self.forecast = name, version, task, forecast
        self.asked = version  # the version the request named ("" = the newest ready)


# Engine request fields that come from a ModelInfer input: their errors name the input and row.
_INPUT_FIELDS = {"texts": "text", "history": "history", "channels": "history", "prompt": "prompt",
                 "continuations": "continuation", "audio": "audio"}


async def _gather(calls, task: str) -> list:
    """Run the rows' engine calls together; the first error (after all finished) is the answer, an
    input's naming the input and the row. One row is awaited directly (no task to schedule)."""
    calls = list(calls)
    if len(calls) == 1:
        try:
            return [await calls[0]]
        except InvalidArgument as err:
            raise _in_row(err, 0, task) from None
    results = await asyncio.gather(*calls, return_exceptions=True)
    for row, r in enumerate(results):
        if isinstance(r, InvalidArgument):
            raise _in_row(r, row, task) from None
        if isinstance(r, BaseException):
            raise r
    return results


def _in_row(err: InvalidArgument, row: int | None, task: str) -> InvalidArgument:
    """An engine error in the protocol's terms: an input's names the input (and the row), a
    parameter's is put under parameters.NAME."""
    field = (err.field or "").removeprefix("config.")  # a recognition config's fields are parameters here
    if field in PARAMETERS[task]:
        return InvalidArgument(f"parameters.{field}: {err.message}", field=f"parameters.{field}")
    name = _INPUT_FIELDS.get(err.field or "")
    if name is None:
        return err
    where = f"inputs[{name!r}]" + ("" if row is None else f" row {row}")
    return InvalidArgument(f"{where}: {err.message}", field="inputs")


def register_inference(server, engine) -> str:
    """Add inference.GRPCInferenceService to ``server``; returns its full name."""
    from service.front.servicers import register

    return register(server, InferenceServicer(engine), pb, "GRPCInferenceService")


def _version() -> str:
    try:
        return importlib.metadata.version("seqserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
