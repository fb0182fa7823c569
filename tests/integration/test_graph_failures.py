"""An onnxruntime failure at run time, through the shipped servicers: a bundle that loads and warms
up but whose graph fails inside onnxruntime for some inputs (tests.bundles.length_checked_forecaster:
odd history lengths). The caller gets INTERNAL naming nothing of onnxruntime's message; the log
keeps it; other requests, before and after, are served."""

from __future__ import annotations

import asyncio
import logging

import grpc
import numpy as np
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from service.v1 import forecast_pb2
from tests.bundles import length_checked_forecaster
from tests.integration.harness import rpc_error, serving

MODEL = "odd-forecast"


def _request(length: int) -> forecast_pb2.ForecastRequest:
    return forecast_pb2.ForecastRequest(model=MODEL, history=np.linspace(1.0, 2.0, length).tolist())


async def test_a_graph_failing_at_run_time_is_internal_and_leaks_nothing(tmp_path, caplog):
    models = tmp_path / "models"
    length_checked_forecaster(models, name=MODEL)
    caplog.set_level(logging.ERROR, logger="service")
    # Batches of up to 8 that wait 50 ms for company: concurrent requests share graph calls.
    async with serving(models, max_batch_size=8, max_batch_wait_ms=50) as s:
        assert len((await s.forecaster.Forecast(_request(10))).forecast) == 4  # it loaded and serves

        # Three requests of one odd length share a batch; two of an even length run beside them.
        odd = [s.forecaster.Forecast(_request(9), timeout=30) for _ in range(3)]
        even = [s.forecaster.Forecast(_request(12), timeout=30) for _ in range(2)]
        results = await asyncio.gather(*odd, *even, return_exceptions=True)
        errors, served = results[:3], results[3:]
        assert all(len(r.forecast) == 4 for r in served), served
        for err in errors:
            assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.INTERNAL, err
            status = rpc_status.from_call(err)
            assert (status.code, status.message, list(status.details)) == (code_pb2.INTERNAL, err.details(), [])
        assert len({e.details() for e in errors}) == 1  # the batch's one failure, for each of its requests

        # onnxruntime's own message stays in the server log, out of the status.
        failures = [r for r in caplog.records if r.exc_info and "Reshape" in str(r.exc_info[1])]
        assert failures, [r.getMessage() for r in caplog.records]
        ort_message = str(failures[0].exc_info[1])
        details = errors[0].details()
        for fragment in ("ONNXRuntimeError", "Reshape", "pairs_of_steps", "Input shape"):
            assert fragment in ort_message and fragment not in details, (fragment, details)
        assert str(models) not in details and "Traceback" not in details

        # The server goes on: health, and the same model for lengths its graph takes.
        health = await s.health_stub.Check(health_pb2.HealthCheckRequest(service="seqserve.v1.Forecaster"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert len((await s.forecaster.Forecast(_request(30))).forecast) == 4
        again = await rpc_error(s.forecaster.Forecast(_request(11)))
        assert (again.code(), again.details()) == (grpc.StatusCode.INTERNAL, details)

