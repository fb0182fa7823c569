"""Helpers for the integration tests: a real server on port 0 over a model directory, and RPC checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from service.core.config import ServeConfig
from service.core.engine import Engine
from service.front.metrics import Metrics
from service.front.server import ServingHealth, create_server, drain
from service.v1 import forecast_pb2_grpc, generate_pb2_grpc, models_pb2_grpc, translate_pb2_grpc

# Single-threaded graphs, no repository polling and a short grace unless a test says otherwise.
TEST_CONFIG = dict(port=0, metrics_port=0, poll_interval_s=0.0, grace_s=1.0, intra_op_threads=1, worker_threads=2)


@dataclass
class Served:
    """A running server and an aio channel with a stub per service."""

    server: grpc.aio.Server
    port: int
    engine: Engine
    health: ServingHealth
    config: ServeConfig
    channel: grpc.aio.Channel
    metrics: Metrics | None = None
    drained: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def translator(self):
        return translate_pb2_grpc.TranslatorStub(self.channel)

    @property
    def forecaster(self):
        return forecast_pb2_grpc.ForecasterStub(self.channel)

    @property
    def generator(self):
        return generate_pb2_grpc.GeneratorStub(self.channel)

    @property
    def models(self):
        return models_pb2_grpc.ModelsStub(self.channel)

    @property
    def health_stub(self):
        return health_pb2_grpc.HealthStub(self.channel)

    async def drain(self, grace_s: float = 1.0) -> None:
        self.drained = True
        await drain(self.server, self.engine, self.health, grace_s)


@asynccontextmanager
async def serving(models: Path, *, start_engine: bool = True, metrics: Metrics | None = None, **overrides: Any) -> AsyncIterator[Served]:
    """Run a server over ``models`` (config = TEST_CONFIG + overrides) and drain it on exit."""
    config = ServeConfig(models=models, **{**TEST_CONFIG, **overrides})
    health = ServingHealth()
    server, port, engine = await create_server(config, health=health, metrics=metrics)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    served = Served(server, port, engine, health, config, channel, metrics)
    try:
        if start_engine:
            await engine.start()
        yield served
    finally:
        await channel.close()
        if not served.drained:
            await served.drain(0.5)


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """Await ``call`` and return the error it must fail with."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the call succeeded; an error was expected")


def bad_request_fields(err: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest details of ``err`` (rich status)."""
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == err.code().value[0] and status.message == err.details()
    fields = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields.extend(v.field for v in bad.field_violations)
    return fields


async def watch_health(served: Served, service: str, want: int, timeout: float = 10.0) -> None:
    """Await (via grpc.health.v1 Watch) until ``service`` reports ``want``."""
    call = served.health_stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    try:
        async for reply in call:
            if reply.status == want:
                return
    finally:
        call.cancel()
    raise AssertionError(f"health of {service!r} never became {want}")


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition") -> None:
    """Re-check ``predicate`` every 50 ms until it holds; for states only observable by polling
    (the repository scans the disk every poll_interval_s)."""
    end = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
