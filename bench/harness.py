"""Running the systems a benchmark compares: server subprocesses on loopback ports (seqserve, the
baselines, Triton), their health, and interleaved rounds. Shared by bench.targets and bench.ab."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
SERVING_LINE = re.compile(r"serving gRPC on 127\.0\.0\.1:(\d+)")


class Server:
    """A server subprocess on a free loopback port: ``argv`` must log "serving gRPC on 127.0.0.1:PORT"."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 120.0,
                 cwd: Path = ROOT):
        self.name = name
        # stdout and stderr in one pipe: some servers (Triton) announce themselves on stdout.
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.lines: list[str] = []
        self.port = 0
        self._announced = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._announced.wait(timeout_s) or not self.port:
            self.stop()
            raise RuntimeError(f"{name} did not start within {timeout_s:.0f} s:\n{''.join(self.lines[-30:])}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if not self.port and (match := SERVING_LINE.search(line)):
                self.port = int(match.group(1))
                self._announced.set()
        self._announced.set()  # the process ended: stop waiting

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return kib / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and every process below it (Triton's server and
    backend stubs run as children of its launcher)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))  # fields[1]: the parent
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def wait_serving(address: str, timeout_s: float = 120.0) -> None:
    """Poll grpc.health.v1 Check("") until SERVING."""
    end = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < end:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.01)
    raise RuntimeError(f"{address} never became SERVING")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TritonPeer:
    """Triton over ``bundle`` from ``venv``, up across rounds; each ``levels`` call loads it with
    bench/triton/load.py (its own client, in Triton's venv) and returns the JSON rows."""

    # Batches of up to 32 (seqserve's default), no added wait, two model instances: the settings
    # issue 19's measurement found best (instances 1-2, queue delay 0-500 us).
    SETTINGS = {"max_batch_size": 32, "queue_delay_us": 0, "instances": 2}

    def __init__(self, venv: Path, bundle: Path) -> None:
        self.python = venv / "bin" / "python"
        self.bundle = bundle
        grpc_port, http_port = free_port(), free_port()
        s = self.SETTINGS
        self.server = Server("triton", [str(self.python), "bench/triton/server.py", "--bundle", str(bundle), "--grpc-port",
                                        str(grpc_port), "--http-port", str(http_port), "--max-batch-size",
                                        str(s["max_batch_size"]), "--queue-delay-us", str(s["queue_delay_us"]),
                                        "--instances", str(s["instances"])], timeout_s=180)

    def levels(self, levels: tuple[int, ...], duration_s: float) -> list[dict[str, Any]]:
        out = subprocess.run(
            [str(self.python), "bench/triton/load.py", "--address", self.server.address, "--bundle", str(self.bundle),
             "--concurrency", ",".join(map(str, levels)), "--duration", str(duration_s), "--warmup", "1", "--json"],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=60 + len(levels) * (duration_s + 30),
        ).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def stop(self) -> None:
        self.server.stop()


async def interleaved(what: str, rounds: int, steps: dict[str, Callable[[int], Awaitable[None]]]) -> None:
    """``await steps[name](round_no)`` for every system once per round, the order reversed every other
    round, so that no system is always measured first or last (this VM's speed drifts by 10-30%
    within minutes)."""
    names = list(steps)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            log.info("%s, round %d/%d: %s", what, r + 1, rounds, name)
            await steps[name](r + 1)
