"""Helpers for every suite that runs the server: ``serving`` (the real grpc.aio server in this
process, on 127.0.0.1 port 0), ``ServerProcess`` (the one launcher of a `seqserve serve`
subprocess), and RPC checks."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from typing_extensions import Self

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


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``seqserve ARGV`` in a thread (the server shares this event loop); (exit code, stdout, stderr)."""
    from service.client import cli

    capsys.readouterr()
    rc = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def free_port() -> int:
    """A loopback port nothing listens on now (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metric_value(metrics: Metrics, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` in ``metrics``' registry whose labels include
    ``labels`` (0 when there are none): what a scrape of the in-process server would show."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


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


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0, what: str = "condition") -> None:
    """Re-check ``predicate`` (plain or async) every 20 ms until it holds; for states only observable
    by polling (the repository scans the disk every poll_interval_s; gauges and counters)."""
    end = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


# --- a `seqserve serve` subprocess ---------------------------------------------------------------

# What `seqserve serve` logs once its port is bound (service.front.server.serve).
SERVING_LINE = re.compile(r"serving gRPC on 127\.0\.0\.1:(\d+)(?:, metrics on 127\.0\.0\.1:(\d+))?")
ENGINE_STARTED = "engine started"  # ... and once every model has loaded (or failed to)


class ServerProcess:
    """``python -m service.client.cli serve`` on 127.0.0.1 port 0 (gRPC and /metrics) over ``models``,
    with ``args`` as extra flags; the one way the suite starts a server process.

    Returns once the log says ``ready`` (a regular expression; default: the engine has started;
    None: the port is bound, models may still be loading). The log is read on a thread from the
    start, so the pipe never fills and ``wait_for_log`` can wait for any later line. ``env``
    entries are added to (None: removed from) this process's environment; ``models=None`` leaves
    the model directory to the server's defaults. Another server that logs the same "serving gRPC
    on" line (the benchmark baselines) runs with ``command=("-m", module)``, ``server_flags=()`` and
    ``ready=None``. Only this process is ever signalled or killed, by its PID."""

    def __init__(self, models: Path | None, *args: str, env: dict[str, str | None] | None = None,
                 cwd: Path | str | None = None, ready: str | None = ENGINE_STARTED, start_timeout_s: float = 120.0,
                 command: tuple[str, ...] = ("-m", "service.client.cli", "serve"),
                 server_flags: tuple[str, ...] = ("--metrics-port", "0", "--intra-op-threads", "1", "--workers", "1")):
        environ = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if models is not None:
            environ["SEQSERVE_MODELS"] = str(models)
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        argv = [sys.executable, *command, "--port", "0", *server_flags, *args]
        self.lines: list[str] = []
        self.port = self.metrics_port = 0
        self._changed = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environ,
                                     cwd=cwd)
        self._reader = threading.Thread(target=self._read, name=f"server {self.proc.pid} log", daemon=True)
        self._reader.start()
        try:
            match = self.wait_for_log(SERVING_LINE, start_timeout_s)
            self.port = int(match.group(1))
            self.metrics_port = int(match.group(2) or 0)
            if ready is not None:
                self.wait_for_log(ready, start_timeout_s)
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for_log(self, pattern: str | re.Pattern, timeout: float = 60.0, *, start: int = 0) -> re.Match:
        """The first log line from line ``start`` on that matches ``pattern`` (re.search), waiting
        for it up to ``timeout`` seconds; AssertionError (with the log) when the server exits or
        the time runs out first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        end = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                left = end - time.monotonic()
                if self._eof or left <= 0:
                    why = f"exited with {self.proc.wait(timeout=10)}" if self._eof else f"not within {timeout} s"
                    raise AssertionError(f"the server never logged /{regex.pattern}/ ({why}):\n{self.log[-4000:]}")
                self._changed.wait(left)

    def count(self, pattern: str) -> int:
        """How many log lines so far match ``pattern``."""
        regex = re.compile(pattern)
        with self._changed:
            return sum(1 for line in self.lines if regex.search(line))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def rss_bytes(self) -> int:
        """Resident memory of the server process (VmRSS)."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def scrape(self) -> str:
        """The server's /metrics exposition."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            return reply.read().decode()

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def sigterm(self) -> None:
        self.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """The exit status, once the process has exited (within ``timeout``) and its log is read."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def close(self) -> None:
        """Kill the process if it still runs (by its PID) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
