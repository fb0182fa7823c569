"""Every RPC against a real server: results, error codes with details, reflection, health."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2

from service.v1 import forecast_pb2, generate_pb2, models_pb2, translate_pb2
from tests.integration.harness import bad_request_fields, rpc_error, serving

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVICES = ["seqserve.v1.Translator", "seqserve.v1.Forecaster", "seqserve.v1.Generator", "seqserve.v1.Models"]
HISTORY = [float(np.sin(t / 3.0) * 10 + 50) for t in range(30)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(module_models):
    async with serving(module_models) as s:
        yield s


# -- results -------------------------------------------------------------------------------------


async def test_translate_greedy_and_beam_with_attention(served):
    texts = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Park."]
    for beam in (1, 3):
        reply = await served.translator.Translate(
            translate_pb2.TranslateRequest(texts=texts, beam_size=beam, max_length=8, return_attention=True)
        )
        assert (reply.model, reply.version) == ("tiny-translate", "1")
        assert len(reply.translations) == len(texts)
        for t in reply.translations:
            assert len(t.tokens) <= 8 and t.source_tokens
            assert t.score <= 0
            assert (t.attention.rows, t.attention.cols) == (len(t.tokens), len(t.source_tokens))
            weights = np.array(t.attention.values).reshape(t.attention.rows, t.attention.cols)
            np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-4)
    plain = await served.translator.Translate(translate_pb2.TranslateRequest(texts=texts[:1], max_length=8))
    assert not plain.translations[0].HasField("attention")


async def test_forecast_univariate_with_quantiles(served):
    reply = await served.forecaster.Forecast(
        forecast_pb2.ForecastRequest(history=HISTORY, horizon=4, quantiles=[0.1, 0.9, 0.5])
    )
    assert (reply.model, reply.version, reply.target_channel) == ("tiny-forecast", "1", 0)
    assert len(reply.forecast) == 4 and not reply.channels
    assert [q.quantile for q in reply.quantiles] == [0.1, 0.9, 0.5]
    paths = {q.quantile: np.array(q.values) for q in reply.quantiles}
    np.testing.assert_allclose(paths[0.5], reply.forecast)
    assert all(len(p) == 4 for p in paths.values())

    default = await served.forecaster.Forecast(forecast_pb2.ForecastRequest(history=HISTORY))
    info = (await served.models.GetModel(models_pb2.GetModelRequest(name="tiny-forecast"))).model
    assert len(default.forecast) == info.forecast.horizon
    assert [q.quantile for q in default.quantiles] == list(info.forecast.quantiles)


async def test_forecast_multichannel(served):
    rng = np.random.default_rng(0)
    history = rng.normal(size=(20, 3)) * [1.0, 10.0, 100.0]  # (T, C)
    request = forecast_pb2.ForecastRequest(model="tiny-forecast3", horizon=5, quantiles=[0.1, 0.9])
    request.channels.extend(forecast_pb2.Series(values=col.tolist()) for col in history.T)
    reply = await served.forecaster.Forecast(request)
    assert reply.target_channel == 2  # the manifest's default target is the last channel
    assert len(reply.channels) == 3 and all(len(s.values) == 5 for s in reply.channels)
    np.testing.assert_allclose(reply.forecast, reply.channels[2].values)
    for q in reply.quantiles:
        assert len(q.channels) == 3
        np.testing.assert_allclose(q.values, q.channels[2].values)


async def test_generate_and_stream_agree_for_a_seed(served):
    request = generate_pb2.GenerateRequest(prompt="First", max_tokens=30, temperature=0.8, top_k=20, seed=7)
    unary = await served.generator.Generate(request)
    assert (unary.model, unary.version) == ("tiny-generate", "1")
    assert unary.finish_reason in ("length", "stop", "eos") and unary.completion_tokens > 0
    assert unary.prompt_tokens == len("First")  # character tokenizer
    chunks = [c async for c in served.generator.GenerateStream(request)]
    assert len(chunks) > 1
    assert "".join(c.text for c in chunks) == unary.text
    assert all(not c.finish_reason for c in chunks[:-1])
    last = chunks[-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == (
        unary.finish_reason, unary.prompt_tokens, unary.completion_tokens)
    other = await served.generator.Generate(generate_pb2.GenerateRequest(
        prompt="First", max_tokens=30, temperature=0.8, top_k=20, seed=8))
    assert other.text != unary.text


async def test_greedy_generation_is_deterministic_and_stops(served):
    greedy = generate_pb2.GenerateRequest(prompt="All:", max_tokens=40, temperature=0.0)
    first, second = [await served.generator.Generate(greedy) for _ in range(2)]
    assert first.text == second.text
    stop = first.text[5:7]
    stopped = await served.generator.Generate(
        generate_pb2.GenerateRequest(prompt="All:", max_tokens=40, temperature=0.0, stop=[stop]))
    assert stopped.finish_reason == "stop"
    assert stopped.text == first.text[: first.text.index(stop)]


async def test_score_and_token_logprobs(served):
    reply = await served.generator.Score(generate_pb2.ScoreRequest(prompt="First Citi", continuations=["zen", "a"]))
    assert (reply.model, reply.version, reply.prompt_tokens) == ("tiny-generate", "1", 10)
    assert [s.text for s in reply.scores] == ["zen", "a"]
    assert [[t.token for t in s.tokens] for s in reply.scores] == [["z", "e", "n"], ["a"]]
    for s in reply.scores:
        assert s.logprob == pytest.approx(sum(t.logprob for t in s.tokens)) and s.logprob < 0
    request = generate_pb2.GenerateRequest(prompt="All:", max_tokens=6, seed=2, logprobs=True, top_logprobs=3)
    whole = await served.generator.Generate(request)
    chunks = [c async for c in served.generator.GenerateStream(request)]
    assert len(whole.logprobs) == whole.completion_tokens >= 1  # EOS may come early with random weights
    assert [len(t.top_logprobs) for t in whole.logprobs] == [3] * whole.completion_tokens
    assert [(t.token_id, t.logprob) for c in chunks for t in c.logprobs] == [(t.token_id, t.logprob) for t in whole.logprobs]


async def test_list_and_get_models(served):
    listed = (await served.models.ListModels(models_pb2.ListModelsRequest())).models
    assert [(m.name, m.version) for m in listed] == [
        ("tiny-forecast", "1"), ("tiny-forecast3", "1"), ("tiny-generate", "1"), ("tiny-global", "1"), ("tiny-recognize", "1"),
        ("tiny-translate", "1")]
    assert all(m.state == "READY" and not m.error and m.loaded_at.seconds > 0 for m in listed)
    by_name = {m.name: m for m in listed}
    assert by_name["tiny-forecast"].is_default and not by_name["tiny-forecast3"].is_default
    assert by_name["tiny-translate"].bidirectional and by_name["tiny-translate"].limits["max_source_tokens"] == 64
    assert by_name["tiny-forecast3"].forecast.channels == 3
    assert (by_name["tiny-forecast"].forecast.frequency, list(by_name["tiny-forecast"].forecast.frequencies)) == ("1h", ["1h"])
    assert not by_name["tiny-forecast"].forecast.season_input
    glob = by_name["tiny-global"].forecast
    assert glob.season_input and glob.frequency == "" and list(glob.frequencies) == ["h", "D", "M"]
    assert by_name["tiny-generate"].num_parameters > 0 and by_name["tiny-generate"].num_layers == 2
    assert by_name["tiny-recognize"].speech.streaming and not by_name["tiny-generate"].HasField("speech")
    assert {m.weights for m in listed} == {"float32"}

    forecast_only = (await served.models.ListModels(models_pb2.ListModelsRequest(task="forecast"))).models
    assert {m.name for m in forecast_only} == {"tiny-forecast", "tiny-forecast3", "tiny-global"}
    one = (await served.models.GetModel(models_pb2.GetModelRequest(name="tiny-generate", version="1"))).model
    assert one == by_name["tiny-generate"]


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rpc, message, field, words",
    [
        ("forecaster.Forecast", forecast_pb2.ForecastRequest(history=[1.0, 2.0]), "history", "needs at least 8"),
        ("forecaster.Forecast", forecast_pb2.ForecastRequest(history=HISTORY, horizon=99), "horizon", "99"),
        ("forecaster.Forecast", forecast_pb2.ForecastRequest(
            model="tiny-forecast3", channels=[forecast_pb2.Series(values=[1.0] * 9), forecast_pb2.Series(values=[1.0] * 8)]),
         "channels", "same length"),
        ("generator.Generate", generate_pb2.GenerateRequest(prompt="x", temperature=-1.0), "temperature", "-1"),
        ("generator.Generate", generate_pb2.GenerateRequest(prompt="x", top_p=0.0), "top_p", "top_p"),
        ("generator.Generate", generate_pb2.GenerateRequest(prompt="x", stop=[""]), "stop", "empty"),
        ("generator.Generate", generate_pb2.GenerateRequest(prompt="x", top_logprobs=99), "top_logprobs", "99"),
        ("generator.Score", generate_pb2.ScoreRequest(prompt="x"), "continuations", "empty"),
        ("generator.Score", generate_pb2.ScoreRequest(prompt="x", continuations=["a", ""]), "continuations", "[1]"),
        ("translator.Translate", translate_pb2.TranslateRequest(), "texts", "empty"),
        ("translator.Translate", translate_pb2.TranslateRequest(texts=["Hallo"], beam_size=99), "beam_size", "99"),
        ("translator.Translate", translate_pb2.TranslateRequest(model="tiny-forecast", texts=["Hallo"]), "model", "forecast model"),
        ("models.ListModels", models_pb2.ListModelsRequest(task="cook"), "task", "'cook'"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_invalid_argument_names_the_field(served, rpc, message, field, words):
    stub, method = rpc.split(".")
    err = await rpc_error(getattr(getattr(served, stub), method)(message))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.details() and field in err.details()
    assert bad_request_fields(err) == [field]


@pytest.mark.parametrize(
    "make_call, details",
    [
        (lambda s: s.forecaster.Forecast(forecast_pb2.ForecastRequest(model="nope", history=HISTORY)),
         "model 'nope' not found; the models are: {models}"),
        (lambda s: s.forecaster.Forecast(forecast_pb2.ForecastRequest(model="tiny-forecast", version="9", history=HISTORY)),
         "model 'tiny-forecast' has no version '9'; its versions are: 1"),
        (lambda s: s.translator.Translate(translate_pb2.TranslateRequest(model="../x", texts=["Hallo"])),
         "model '../x' not found; the models are: {models}"),
        (lambda s: s.models.GetModel(models_pb2.GetModelRequest(name="../x")),
         "model '../x' not found; the models are: {models}"),
        (lambda s: s.models.GetModel(models_pb2.GetModelRequest(name="tiny-generate", version="../1")),
         "model 'tiny-generate' has no version '../1'; its versions are: 1"),
    ],
)
async def test_not_found(served, make_call, details):
    err = await rpc_error(make_call(served))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    models = ", ".join(sorted({m.name for m in served.engine.list_models()}))
    assert err.details() == details.format(models=models)  # what exists, so the caller can fix the name


async def test_deadline_exceeded_and_server_keeps_serving(served):
    long = generate_pb2.GenerateRequest(prompt="First", max_tokens=1000, temperature=1.0, seed=1)
    err = await rpc_error(served.generator.Generate(long, timeout=0.005))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in err.details().lower()
    ok = await served.generator.Generate(generate_pb2.GenerateRequest(prompt="First", max_tokens=3, seed=1))
    assert ok.completion_tokens == 3


async def test_unknown_method_is_unimplemented(served):
    call = served.channel.unary_unary("/seqserve.v1.Forecaster/Backcast")(b"")
    err = await rpc_error(call)
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


# -- health and reflection -----------------------------------------------------------------------


async def test_health_reports_every_service_serving(served):
    for service in ["", *SERVICES, "inference.GRPCInferenceService"]:
        reply = await served.health_stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    err = await rpc_error(served.health_stub.Check(health_pb2.HealthCheckRequest(service="seqserve.v1.Nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def _reflect(address: str):
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        pool = descriptor_pool.DescriptorPool(db)
        stream = pool.FindServiceByName("seqserve.v1.Generator").methods_by_name["GenerateStream"]
        temperature = pool.FindMessageTypeByName("seqserve.v1.GenerateRequest").fields_by_name["temperature"]
        infer = pool.FindServiceByName("inference.GRPCInferenceService").methods_by_name["ModelInfer"]  # as grpcurl sees it
        assert infer.input_type.fields_by_name["raw_input_contents"].number == 7
        return services, stream.server_streaming, temperature.has_presence


async def test_reflection_lists_and_describes_the_services(served):
    services, streaming, has_presence = await asyncio.to_thread(_reflect, served.address)
    assert set(SERVICES) | {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                            "inference.GRPCInferenceService"} <= services
    assert streaming and has_presence


def _call_through_reflection(address: str) -> dict:
    """What grpcurl does (grpcurl installs from none of PyPI, Debian or npm): learn
    inference.GRPCInferenceService from reflection alone, build a ModelInfer from the reflected
    descriptors, call it and read the answer with them."""
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName("inference.GRPCInferenceService").methods_by_name["ModelInfer"]
        request_type = message_factory.GetMessageClass(method.input_type)
        reply_type = message_factory.GetMessageClass(method.output_type)
        request = json_format.ParseDict({
            "model_name": "tiny-forecast",
            "inputs": [{"name": "history", "datatype": "FP64", "shape": [1, 12],
                        "contents": {"fp64_contents": [float(i % 5) for i in range(12)]}}],
            "parameters": {"horizon": {"int64_param": 3}},
        }, request_type())
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=request_type.SerializeToString,
                                   response_deserializer=reply_type.FromString)
        return json_format.MessageToDict(call(request, timeout=10), preserving_proto_field_name=True)


async def test_reflection_alone_is_enough_to_call_the_open_inference_protocol(served):
    reply = await asyncio.to_thread(_call_through_reflection, served.address)
    assert reply["model_name"] == "tiny-forecast" and [o["name"] for o in reply["outputs"]] == ["forecast", "quantiles"]
    assert reply["outputs"][0]["shape"] == ["1", "3"] and len(reply["raw_output_contents"]) == 2


async def test_every_rpc_is_labelled_with_the_version_that_answered(module_models):
    """One rule for seqserve_request_duration_seconds{model,version}: the version that answered;
    what no version answered is "unknown"; ListModels asks no model."""
    from prometheus_client import CollectorRegistry

    from service.front.metrics import Metrics
    from tests.integration.harness import metric_value

    metrics = Metrics(CollectorRegistry(), process_metrics=False)
    async with serving(module_models, metrics=metrics) as s:
        chunks = [c async for c in s.generator.GenerateStream(generate_pb2.GenerateRequest(prompt="Fir", max_tokens=3))]
        assert chunks[-1].finish_reason
        await s.forecaster.Forecast(forecast_pb2.ForecastRequest(history=HISTORY))
        for bad in (forecast_pb2.ForecastRequest(history=[1.0]),  # answered by the default model: too short
                    forecast_pb2.ForecastRequest(model="tiny-forecast", version="9", history=HISTORY),
                    forecast_pb2.ForecastRequest(model="nope", history=HISTORY)):
            await rpc_error(s.forecaster.Forecast(bad))
        await s.models.ListModels(models_pb2.ListModelsRequest())
        await s.generator.Score(generate_pb2.ScoreRequest(prompt="Fir", continuations=["st", "e"]))

    def count(method: str, model: str, version: str, code: str) -> float:
        return metric_value(metrics, "seqserve_request_duration_seconds_count", method=method, model=model,
                            version=version, code=code)

    assert count("GenerateStream", "tiny-generate", "1", "OK") == 1
    assert count("Forecast", "tiny-forecast", "1", "OK") == 1
    assert count("Forecast", "tiny-forecast", "1", "INVALID_ARGUMENT") == 1
    assert count("Forecast", "tiny-forecast", "unknown", "NOT_FOUND") == 1
    assert count("Forecast", "unknown", "unknown", "NOT_FOUND") == 1
    assert count("ListModels", "", "", "OK") == 1
    assert count("Score", "tiny-generate", "1", "OK") == 1
