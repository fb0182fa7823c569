"""The one ServiceError -> gRPC status mapping, for every error class, over a real aio server.

The real engine cannot be made to raise every class on demand (CANCELLED, UNAUTHENTICATED, a
bug), so a small servicer here raises them through the shipped ``handle_errors`` decorator.
"""

from __future__ import annotations

import logging

import grpc
import pytest
import pytest_asyncio
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status

from service.core import errors
from service.front.status import INTERNAL_MESSAGE, handle_errors
from service.v1 import forecast_pb2, forecast_pb2_grpc
from tests.integration.harness import rpc_error

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLASSES = {cls.__name__: cls for cls in errors.ServiceError.__subclasses__()}


class Raising(forecast_pb2_grpc.ForecasterServicer):
    """Raises what the request's ``model`` names: an errors.* class, or "bug" for a RuntimeError."""

    @handle_errors
    async def Forecast(self, request, context):
        if request.model == "bug":
            raise RuntimeError("secret internal detail /etc/passwd")
        field = request.version or None
        raise CLASSES[request.model](f"{request.model} happened (limit 3)", field=field)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub():
    server = grpc.aio.server()
    forecast_pb2_grpc.add_ForecasterServicer_to_server(Raising(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield forecast_pb2_grpc.ForecasterStub(channel)
    await server.stop(0)


@pytest.mark.parametrize("name", sorted(CLASSES))
async def test_each_service_error_maps_to_its_code_and_message(stub, name):
    err = await rpc_error(stub.Forecast(forecast_pb2.ForecastRequest(model=name)))
    assert err.code() == grpc.StatusCode[CLASSES[name].code]
    assert err.details() == f"{name} happened (limit 3)"
    status = rpc_status.from_call(err)
    assert (status.code, status.message) == (err.code().value[0], err.details())


async def test_invalid_argument_carries_a_bad_request_naming_the_field(stub):
    err = await rpc_error(stub.Forecast(forecast_pb2.ForecastRequest(model="InvalidArgument", version="history")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    (detail,) = rpc_status.from_call(err).details
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [("history", err.details())]


async def test_unexpected_errors_are_internal_without_leaking_details(stub, caplog):
    with caplog.at_level(logging.ERROR, logger="service.front.servicers"):
        err = await rpc_error(stub.Forecast(forecast_pb2.ForecastRequest(model="bug")))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == INTERNAL_MESSAGE
    assert "secret" not in err.details() and rpc_status.from_call(err).code == code_pb2.INTERNAL
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info and "secret internal detail" in str(record.exc_info[1])  # the log keeps it
