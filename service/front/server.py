"""The gRPC server: wires engine, servicers, health and reflection; runs until a signal, then drains."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.core.config import ServeConfig
from service.core.engine import Engine
from service.front.interceptors import MetricsInterceptor
from service.front.metrics import Metrics, start_metrics_server, stop_metrics_server
from service.front.security import auth_interceptor, describe, server_credentials
from service.front.oip import register_inference
from service.front.servicers import add_servicers
from service.front.workers import WorkerSlot, worker_slot

log = logging.getLogger(__name__)

T = TypeVar("T")
OVERALL = ""  # the health service name that stands for the whole server
# The service each task answers on; its health status follows engine.task_ready(task).
TASK_SERVICES = {
    "translate": "seqserve.v1.Translator",
    "forecast": "seqserve.v1.Forecaster",
    "generate": "seqserve.v1.Generator",
    "recognize": "seqserve.v1.Recognizer",
}
MODELS_SERVICE = "seqserve.v1.Models"
INFERENCE_SERVICE = "inference.GRPCInferenceService"  # the Open Inference Protocol: serves every task
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServingHealth:
    """grpc.health.v1 statuses that follow the engine.

    Each task's service is SERVING while that task has a ready model; Models, the Open Inference
    Protocol's service and "" (overall) while any task does. Everything is NOT_SERVING before the
    first model loads and from drain() on.
    """

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()
        self._engine: Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task] = set()

    async def attach(self, engine: Engine) -> None:
        """Follow ``engine``'s readiness from now on (call inside the server's event loop)."""
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        engine.add_listener(self._on_change)
        await self.refresh()

    async def refresh(self) -> None:
        """Re-read every task's readiness from the engine and publish it."""
        ready = {task: bool(self._engine and self._engine.task_ready(task)) for task in TASK_SERVICES}
        for task, service in TASK_SERVICES.items():
            await self.servicer.set(service, SERVING if ready[task] else NOT_SERVING)
        overall = SERVING if any(ready.values()) else NOT_SERVING
        await self.servicer.set(MODELS_SERVICE, overall)
        await self.servicer.set(INFERENCE_SERVICE, overall)
        await self.servicer.set(OVERALL, overall)

    async def drain(self) -> None:
        """Mark everything NOT_SERVING for good (later readiness changes are ignored)."""
        await self.servicer.enter_graceful_shutdown()

    def _on_change(self) -> None:
        # The engine calls this on the event loop; be safe if a loader thread ever does.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._schedule()
        else:
            loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        task = asyncio.ensure_future(self.refresh())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory that ServeConfig.event_loop names: uvloop's, or None for the standard loop
    ("asyncio", or "auto" where uvloop is not installed). Raises ValueError for "uvloop" when it is
    not installed."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("event_loop uvloop: uvloop is not installed (pip install uvloop; Linux and macOS)") from None
        return None
    return uvloop.new_event_loop


def run_on_loop(main: Coroutine[Any, Any, T], factory: Callable[[], asyncio.AbstractEventLoop] | None) -> T:
    """``asyncio.run(main)`` on a loop from ``factory`` (event_loop_factory's; None: the standard loop)."""
    if factory is None:
        return asyncio.run(main)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    loop = factory()  # Python 3.10: what asyncio.run does, on this loop
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    kind = type(loop)
    if kind.__module__.startswith("uvloop"):
        import uvloop
        return f"uvloop {uvloop.__version__}"
    return f"asyncio ({kind.__name__})"


async def create_server(
    config: ServeConfig,
    engine: Engine | None = None,
    *,
    health: ServingHealth | None = None,
    metrics: Metrics | None = None,
    reflection_enabled: bool = True,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, int, Engine]:
    """Build (not start) the server bound to ``config.host:config.port``; port 0 picks a free one.

    The engine is created from ``config`` (and ``metrics``) when not given, and is not started
    here: health reports NOT_SERVING until ``await engine.start()`` has loaded a task's models.
    Pass ``health`` to keep a handle for drain(); with ``metrics`` every RPC is recorded (its
    interceptor runs first, before ``interceptors``). With ``config.tls_cert`` the port speaks TLS
    (mutual TLS with ``config.tls_client_ca``); with a configured token every RPC but health needs
    it (see service.front.security). Returns (server, bound port, engine); raises ValueError on unusable
    TLS or token settings, RuntimeError when the address cannot be bound.
    """
    credentials = server_credentials(config)
    auth = auth_interceptor(config)
    engine = engine if engine is not None else Engine(config, metrics=metrics)
    health_state = health if health is not None else ServingHealth()
    options = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # A second server on the same port must fail, not share it; the workers of one server
        # (service.front.workers) share it on purpose.
        ("grpc.so_reuseport", int(reuse_port)),
    ]
    # Metrics first so that it also records calls the token check turns away (UNAUTHENTICATED).
    chain = [
        *([MetricsInterceptor(metrics)] if metrics is not None else []),
        *([auth] if auth is not None else []),
        *interceptors,
    ]
    server = grpc.aio.server(interceptors=chain, options=options)
    names = add_servicers(server, engine)
    names.append(register_inference(server, engine))  # the Open Inference Protocol, same port
    health_pb2_grpc.add_HealthServicer_to_server(health_state.servicer, server)
    names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    if reflection_enabled:
        names.append(reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    address = f"{config.host}:{config.port}"
    cannot = StartupError(f"--port {config.port} / --host {config.host} (SEQSERVE_PORT, SEQSERVE_HOST): cannot bind "
                          f"gRPC to {address}: the port is in use or the address is not this machine's")
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:
        raise cannot from None
    if port == 0:
        raise cannot
    await health_state.attach(engine)
    log.info("gRPC server bound to %s:%d (%s; %s)", config.host, port, describe(config), ", ".join(names))
    if auth is not None and credentials is None:
        log.warning("bearer tokens travel in plaintext: set tls_cert/tls_key or terminate TLS in front of the server")
    return server, port, engine


class StartupError(RuntimeError):
    """The server cannot start as configured; the message names the setting, its value and why."""


REPLY_GRACE_S = 2.0  # after the engine stopped: time for handlers to send their last replies


async def drain(server: grpc.aio.Server, engine: Engine, health: ServingHealth, grace_s: float) -> None:
    """Shut down gracefully within about ``grace_s`` seconds.

    Health turns NOT_SERVING for good; the engine refuses new calls (UNAVAILABLE "server is
    draining", which clients may retry elsewhere) while in-flight calls and streams get ``grace_s``
    to finish; then the gRPC server stops, cancelling whatever is still running.
    """
    log.info("draining: in-flight requests have %.1f s", grace_s)
    await health.drain()
    await engine.stop(grace_s)
    # The engine has finished or cancelled its work; handlers only have their replies to send. What
    # else is open never ends by itself (health Watch streams, which already said NOT_SERVING):
    # give replies a moment, not the whole grace period again.
    await server.stop(min(grace_s, REPLY_GRACE_S))
    log.info("drained")


async def serve(config: ServeConfig, *, reflection_enabled: bool = True) -> None:
    """Serve gRPC and /metrics until SIGTERM or SIGINT, then drain within ``config.grace_s``."""
    health = ServingHealth()
    metrics = Metrics()
    slot = worker_slot()
    if slot is not None:
        await _serve_as_worker(config, slot, health, metrics, reflection_enabled)
        return
    server, port, engine = await create_server(
        config, health=health, metrics=metrics, reflection_enabled=reflection_enabled
    )
    try:
        http, metrics_port = start_metrics_server(metrics, config.metrics_host, config.metrics_port)
    except OSError as err:
        await server.stop(0)
        raise StartupError(
            f"--metrics-port {config.metrics_port} / --metrics-host {config.metrics_host} (SEQSERVE_METRICS_PORT, "
            f"SEQSERVE_METRICS_HOST): cannot serve /metrics on {config.metrics_host}:{config.metrics_port}: "
            f"{err.strerror or err}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    log.info(
        "serving gRPC on %s:%d, metrics on %s:%d, models from %s (event loop: %s)",
        config.host, port, config.metrics_host, metrics_port, config.models, describe_loop(loop),
    )
    # Load models while already answering health checks; a signal during loading still drains.
    starting = asyncio.create_task(engine.start())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # re-raise a failed start
            await stopping
    finally:
        await _stop_waiting(loop, starting, stopping)
        await drain(server, engine, health, config.grace_s)
        stop_metrics_server(http)


async def _serve_as_worker(config: ServeConfig, slot: WorkerSlot, health: ServingHealth, metrics: Metrics,
                           reflection_enabled: bool) -> None:
    """One of ``seqserve serve --workers N``'s processes (service.front.workers): loads its models
    first and only then binds the shared port, so that no connection lands on a worker still
    loading; its /metrics is private (the supervisor merges them); it drains like a server."""
    die_with_parent(slot.supervisor)
    engine = Engine(config, metrics=metrics, shared=slot.counts())
    http, metrics_port = start_metrics_server(metrics, "127.0.0.1", 0)
    slot.announce_metrics(metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Only the supervisor's SIGTERM stops a worker, once: Ctrl-C reaches the whole process group,
    # and the supervisor forwards it as SIGTERM, which must not cut a drain short.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    server = None
    starting = asyncio.create_task(engine.start())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and not stopping.done():
            starting.result()  # re-raise a failed start
            server, port, _ = await create_server(config, engine, health=health, metrics=metrics,
                                                  reflection_enabled=reflection_enabled, reuse_port=True)
            await server.start()
            slot.announce_ready()
            log.info("worker %d of %d ready: gRPC on %s:%d (event loop: %s)", slot.index, slot.count, config.host, port,
                     describe_loop(loop))
            await stopping
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: None)  # draining already: later signals change nothing
        await _stop_waiting(None, starting, stopping)
        if server is not None:
            await drain(server, engine, health, config.grace_s)
        else:
            await engine.stop(0)
        stop_metrics_server(http)


async def _stop_waiting(loop: asyncio.AbstractEventLoop | None, *tasks: asyncio.Task) -> None:
    """Signals go back to their defaults (with ``loop``); the model loading and signal waiting
    tasks end."""
    for sig in (signal.SIGTERM, signal.SIGINT) if loop is not None else ():
        loop.remove_signal_handler(sig)
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def die_with_parent(supervisor: int) -> None:
    """Ask Linux for SIGTERM when the supervisor (pid ``supervisor``) dies, so that a killed
    supervisor leaves no workers serving on their own; elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before that took hold (the supervisor may be pid 1 itself)
        raise SystemExit("the supervisor is gone")
