"""A forecaster that takes a season (forecast-global's kind) against a real server: the frequency and
season length of ForecastRequest, the Open Inference Protocol's parameters, the CLI's inference from a
CSV's time column, and what a model trained on one frequency refuses."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import pytest_asyncio

from service.v1 import forecast_pb2, open_inference_grpc_pb2 as oip, open_inference_grpc_pb2_grpc as oip_grpc
from tests.integration.harness import bad_request_fields, rpc_error, serving

pytestmark = pytest.mark.asyncio(loop_scope="module")

HISTORY = [float(np.sin(2 * np.pi * t / 12) * 10 + 50 + 0.1 * t) for t in range(40)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(module_models):
    async with serving(module_models) as s:
        yield s


def _graph(models, history, season):
    """What the bundle's graph gives for one standardised window and season, straight from onnxruntime."""
    x = np.asarray(history, np.float64)
    window = ((x - x.mean()) / x.std()).astype(np.float32)[None, :, None]
    session = ort.InferenceSession(str(models / "tiny-global" / "1" / "forecast.onnx"))
    q = session.run(None, {"window": window, "season": np.array([season], np.int64)})[0][0, :, 0, :]
    return q * x.std() + x.mean()


@pytest.mark.parametrize("frequency, season_length, season", [
    ("", 0, 12),  # a global model has no frequency of its own: the history's period, detected
    ("M", 0, 12), ("MS", 0, 12), ("h", 0, 24), ("4h", 0, 6), ("D", 0, 1), ("Q", 0, 4), ("2h", 0, 12),
    ("D", 7, 7),  # an explicit season length wins over the frequency's
    ("", 5, 5),
    ("30min", 0, 24),  # 48 steps a day, more than the window (24): the window's length
])
async def test_the_season_reaching_the_graph_comes_from_frequency_or_season_length(
        served, module_models, frequency, season_length, season):
    reply = await served.forecaster.Forecast(forecast_pb2.ForecastRequest(
        model="tiny-global", history=HISTORY, frequency=frequency, season_length=season_length))
    assert reply.season_length == season
    want = _graph(module_models, HISTORY[-24:], season)
    np.testing.assert_allclose(reply.forecast, want[:, 1], rtol=1e-4, atol=1e-3)  # levels 0.1, 0.5, 0.9


async def test_without_a_frequency_a_season_is_detected_or_none(served):
    rng = np.random.default_rng(0)
    for history, season in ((rng.normal(size=60), 1), (np.cumsum(rng.normal(size=60)), 1),
                            (np.tile([3.0, 1.0, 0.0, 1.0, 5.0], 8) + rng.normal(0, 0.1, 40), 5)):
        reply = await served.forecaster.Forecast(forecast_pb2.ForecastRequest(model="tiny-global", history=history))
        assert reply.season_length == season


async def test_windows_of_different_seasons_share_a_call_and_keep_their_own(served):
    requests = [forecast_pb2.ForecastRequest(model="tiny-global", history=HISTORY, season_length=s)
                for s in (1, 3, 12, 24, 3, 12)]
    alone = [await served.forecaster.Forecast(r) for r in requests]
    together = await asyncio.gather(*(served.forecaster.Forecast(r) for r in requests * 4))
    for k, reply in enumerate(together):
        np.testing.assert_allclose(reply.forecast, alone[k % len(requests)].forecast, rtol=1e-5)
    assert len({tuple(np.round(r.forecast, 4)) for r in alone}) >= 4  # the season changes the forecast


@pytest.mark.parametrize("model, frequency, season_length, field, words", [
    ("tiny-global", "fortnightly", 0, "frequency", "'fortnightly' is not a frequency"),
    ("tiny-global", "0h", 0, "frequency", "'0h'"),
    ("tiny-global", "", -2, "season_length", "-2 must be within 1..24"),
    ("tiny-global", "", 25, "season_length", "25 must be within 1..24"),
    ("tiny-forecast", "D", 0, "frequency", "'D' is not one model 'tiny-forecast' was trained for (1h)"),
    ("tiny-forecast", "", 24, "season_length", "takes no season"),
])
async def test_bad_frequency_or_season_is_invalid_argument_naming_the_field(
        served, model, frequency, season_length, field, words):
    err = await rpc_error(served.forecaster.Forecast(forecast_pb2.ForecastRequest(
        model=model, history=HISTORY, frequency=frequency, season_length=season_length)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.details()
    assert bad_request_fields(err) == [field]
    ok = await served.forecaster.Forecast(forecast_pb2.ForecastRequest(model=model, history=HISTORY))
    assert len(ok.forecast) == 6  # still serving


async def test_a_model_of_one_frequency_takes_its_own_in_any_spelling(served):
    plain = await served.forecaster.Forecast(forecast_pb2.ForecastRequest(model="tiny-forecast", history=HISTORY))
    for alias in ("h", "1h", "H", "60min"):
        reply = await served.forecaster.Forecast(forecast_pb2.ForecastRequest(
            model="tiny-forecast", history=HISTORY, frequency=alias))
        assert reply.season_length == 0 and list(reply.forecast) == list(plain.forecast)


async def test_open_inference_protocol_takes_frequency_and_season_length(served):
    def infer(**parameters):
        request = oip.ModelInferRequest(model_name="tiny-global")
        tensor = request.inputs.add(name="history", datatype="FP32", shape=[1, len(HISTORY)])
        tensor.contents.fp32_contents.extend(HISTORY)
        for key, value in parameters.items():
            if isinstance(value, str):
                request.parameters[key].string_param = value
            else:
                request.parameters[key].int64_param = value
        return oip_grpc.GRPCInferenceServiceStub(served.channel).ModelInfer(request)

    monthly = await served.forecaster.Forecast(forecast_pb2.ForecastRequest(model="tiny-global", history=HISTORY,
                                                                            frequency="M"))
    reply = await infer(frequency="M")
    point = np.frombuffer(reply.raw_output_contents[0], np.float32)
    np.testing.assert_allclose(point, monthly.forecast, rtol=1e-5)
    err = await rpc_error(infer(season_length=99))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "season_length 99" in err.details()
    assert bad_request_fields(err) == ["parameters.season_length"]
    err = await rpc_error(infer(frequency="fortnightly"))
    assert err.details().startswith("parameters.frequency: frequency 'fortnightly' is not a frequency")


async def test_cli_sends_the_csv_time_column_frequency_to_a_seasonal_model(served, tmp_path, capsys):
    from service.client import SeqserveClient
    from service.client.commands import run_forecast

    path = tmp_path / "monthly.csv"
    months = [f"{2000 + k // 12}-{k % 12 + 1:02d}-01" for k in range(len(HISTORY))]
    path.write_text("month,sales\n" + "".join(f"{m},{v}\n" for m, v in zip(months, HISTORY)), encoding="utf-8")
    args = SimpleNamespace(csv=str(path), column=[], model="tiny-global", version="", horizon=3, quantiles=[],
                           json=False, frequency="", season_length=0)

    def run(**changes) -> str:  # the blocking client, off the server's event loop
        out = io.StringIO()
        with SeqserveClient(served.address) as client:
            assert run_forecast(client, SimpleNamespace(**{**vars(args), **changes}), out) == 0
        return out.getvalue().splitlines()[0]

    assert (await asyncio.to_thread(run)).endswith("season 12")
    assert "frequency M (from the 'month' column)" in capsys.readouterr().err
    assert (await asyncio.to_thread(run, season_length=4)).endswith("season 4")
    # a model trained on one frequency is sent none unless asked: the file's months do not stop it
    assert "season" not in await asyncio.to_thread(run, model="tiny-forecast")
