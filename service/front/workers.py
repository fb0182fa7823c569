"""``seqserve serve --workers N``: N serving processes behind one address.

The supervisor (the process ``seqserve serve`` started) reserves the gRPC port with SO_REUSEPORT and
starts N workers: each is a whole ``seqserve serve`` (event loop, engine, models) that binds the same
port once its models are loaded, so the kernel spreads new connections over the workers that are
ready. SO_REUSEPORT spreads connections, not calls: a client that opens one channel talks to one
worker for the channel's life; clients that want every core open several channels (``seqserve
bench --channels``, ``SeqserveClient(channels=)``).

What stays one server:
- /metrics: the supervisor serves the workers' metrics merged (counters and histograms summed, with
  what a dead worker had counted kept; gauges summed, except the info-like ones), plus
  ``seqserve_workers`` and ``seqserve_worker_restarts_total``;
- limits: max_streams and max_speech_streams are counted over every worker (service.core.shared);
  max_queue bounds each worker's own batcher queues;
- health, drain and reload: every worker answers health for itself and polls the same repository;
  SIGTERM / SIGINT reach every worker, which drain as one server does, and the supervisor exits
  when they have;
- one log stream: workers write to the supervisor's stderr, their lines marked ``worker K``.

A worker that dies (kill -9, a crash) is replaced at once; calls it held end UNAVAILABLE at their
clients (the connection closes), never hang, and the others keep serving. A worker that dies twice
within its first seconds means a configuration that cannot serve: the supervisor stops the rest and
exits 1."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from service.core import shared
from service.core.config import ServeConfig

log = logging.getLogger(__name__)

WORKER_ENV = "SEQSERVE_WORKER"  # "INDEX/COUNT/SUPERVISOR_PID/DIR": set by the supervisor for each worker
EARLY_EXIT_S = 10.0  # a worker that dies this soon after starting, twice in a row, cannot serve
SNAPSHOT_S = 2.0  # how often the supervisor keeps each worker's counters (what a dying one had counted)
# Gauges merged by max (every worker reports the same fact) or min; every other gauge is summed.
MAX_GAUGES = {"seqserve_model_info", "process_max_fds", "python_info"}
MIN_GAUGES = {"process_start_time_seconds"}


def resolved_workers(config: ServeConfig) -> int:
    """--workers, or for 0 one per two available cores: a busy worker keeps two cores busy, its
    event loop and the graph threads it feeds."""
    return config.workers or max(1, available_cores() // 2)


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container limited to 2 CPUs on a 16-core host has 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cores


@dataclass(frozen=True)
class WorkerSlot:
    """What a worker process knows of its place: its index, how many there are, the shared folder."""

    index: int
    count: int
    supervisor: int  # its pid: the worker's parent while the supervisor lives
    folder: Path

    def counts(self) -> shared.SharedCounts:
        return shared.SharedCounts(self.folder / "counts", self.count, self.index)

    def announce_metrics(self, port: int) -> None:
        """Tell the supervisor where this worker's own /metrics is."""
        tmp = self.folder / f".metrics-{self.index}"
        tmp.write_text(str(port))
        tmp.rename(self.folder / f"metrics-{self.index}")

    def announce_ready(self) -> None:
        """Tell the supervisor this worker's models are loaded and it takes connections."""
        (self.folder / f"ready-{self.index}").touch()


def worker_slot(environ: Mapping[str, str] = os.environ) -> WorkerSlot | None:
    """This process's WorkerSlot when a supervisor started it, else None."""
    value = environ.get(WORKER_ENV)
    if not value:
        return None
    index, count, supervisor, folder = value.split("/", 3)
    return WorkerSlot(int(index), int(count), int(supervisor), Path(folder))


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT and not listening: it keeps the port for the
    workers (port 0 picks one) and takes no connections itself. Raises OSError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class MergedMetrics:
    """A prometheus_client collector: the workers' expositions merged into one. Each worker's last
    good snapshot stands in when a fetch fails (a busy or dying worker), so its counts never drop
    out of a scrape; a dead worker's counter-like samples are kept (``retire``) so totals never go
    back. One lock orders scrapes, snapshots and retirements."""

    def __init__(self, supervisor: "Supervisor") -> None:
        self._sup = supervisor
        self._lock = threading.Lock()
        self._snapshots: dict[int, tuple[int, list[Any]]] = {}  # worker index -> (pid, families)
        self._retired: dict[tuple[str, str, tuple], float] = {}  # counted by workers that died
        self._kinds: dict[str, tuple[str, str]] = {}  # family -> (type, help)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy

    def _fetch(self, index: int) -> list[Any] | None:
        try:
            port = int((self._sup.folder / f"metrics-{index}").read_text())
            with self._opener.open(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as reply:
                return list(text_string_to_metric_families(reply.read().decode()))
        except Exception:  # noqa: BLE001 - not answering (starting, busy, dying): the last snapshot stands
            return None

    def refresh(self, index: int, pid: int) -> list[Any] | None:
        """Fetch worker ``index`` (process ``pid``) now; its families, or its last snapshot's."""
        families = self._fetch(index)
        with self._lock:
            if families is not None:
                self._snapshots[index] = (pid, families)
            kept = self._snapshots.get(index)
            return kept[1] if kept is not None and kept[0] == pid else None

    def retire(self, index: int, pid: int) -> None:
        """Worker ``index``, process ``pid``, died: keep its last snapshot's counts."""
        with self._lock:
            kept = self._snapshots.get(index)
            if kept is None or kept[0] != pid:
                return
            del self._snapshots[index]
            for fam in kept[1]:
                if fam.type in ("counter", "histogram", "summary"):
                    self._kinds[fam.name] = (fam.type, fam.documentation)
                    for s in fam.samples:
                        if not s.name.endswith("_created"):
                            key = (fam.name, s.name, tuple(sorted(s.labels.items())))
                            self._retired[key] = self._retired.get(key, 0.0) + s.value

    def collect(self) -> Iterable[Metric]:
        workers = self._sup.workers()
        fresh = {i: self._fetch(i) for i, _ in workers}
        merged: dict[str, tuple[str, str, dict[tuple[str, tuple], float]]] = {}
        with self._lock:
            for i, pid in workers:
                if fresh[i] is not None:
                    self._snapshots[i] = (pid, fresh[i])
            for _pid, families in self._snapshots.values():  # live workers, and dead ones not yet retired
                for fam in families:
                    _merge(merged, fam)
            for (name, sample, labels), value in self._retired.items():
                kind, doc = self._kinds[name]
                samples = merged.setdefault(name, (kind, doc, {}))[2]
                samples[(sample, labels)] = samples.get((sample, labels), 0.0) + value
        for name, (kind, doc, samples) in merged.items():
            family = Metric(name, doc, kind)
            for (sample, labels), value in samples.items():
                family.add_sample(sample, dict(labels), value)
            yield family
        live = Metric("seqserve_workers", "Worker processes serving now (seqserve serve --workers).", "gauge")
        live.add_sample("seqserve_workers", {}, len(workers))
        yield live
        restarts = Metric("seqserve_worker_restarts", "Worker processes started again after one died.", "counter")
        restarts.add_sample("seqserve_worker_restarts_total", {}, self._sup.restarts)
        yield restarts


def _merge(merged: dict[str, tuple[str, str, dict[tuple[str, tuple], float]]], fam: Any) -> None:
    """Add one worker's family: counters, histograms and most gauges sum; ``_created`` and
    MIN_GAUGES take the earliest, MAX_GAUGES the largest (facts every worker reports alike)."""
    samples = merged.setdefault(fam.name, (fam.type, fam.documentation, {}))[2]
    for s in fam.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        if key not in samples:
            samples[key] = s.value
        elif s.name.endswith("_created") or fam.name in MIN_GAUGES:
            samples[key] = min(samples[key], s.value)
        elif fam.name in MAX_GAUGES:
            samples[key] = max(samples[key], s.value)
        else:
            samples[key] = samples[key] + s.value


class Supervisor:
    """Starts, watches and stops the worker processes; serves their merged /metrics."""

    def __init__(self, config: ServeConfig, argv: Sequence[str], workers: int,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.config = config
        self.count = workers
        self._argv = list(argv)  # the `seqserve serve ...` command line, repeated for each worker
        self._environ = dict(environ)
        self._dir = tempfile.TemporaryDirectory(prefix="seqserve-workers-")
        self.folder = Path(self._dir.name)
        self.restarts = 0
        self._procs: list[subprocess.Popen | None] = [None] * workers
        self._started: list[float] = [0.0] * workers
        self._early: list[int] = [0] * workers  # consecutive deaths soon after starting
        self._stopping = threading.Event()
        self.metrics = MergedMetrics(self)

    def workers(self) -> list[tuple[int, int]]:
        """(index, pid) of every worker process running now."""
        return [(i, p.pid) for i, p in enumerate(self._procs) if p is not None and p.poll() is None]

    def _snapshot_often(self) -> None:
        """Keep every worker's counts (a thread: a slow worker never delays the watch loop)."""
        while not self._stopping.wait(SNAPSHOT_S):
            for i, pid in self.workers():
                self.metrics.refresh(i, pid)

    def _start(self, index: int, port: int) -> None:
        env = {**self._environ, WORKER_ENV: f"{index}/{self.count}/{os.getpid()}/{self.folder}"}
        argv = [sys.executable, "-m", "service.client.cli", *self._argv,
                "--port", str(port), "--metrics-host", "127.0.0.1", "--metrics-port", "0"]
        if not self.config.worker_threads:  # the cores are shared: each worker's graph threads get its share
            argv += ["--worker-threads", str(max(1, available_cores() // self.count))]
        for name in (f"metrics-{index}", f"ready-{index}"):
            (self.folder / name).unlink(missing_ok=True)
        self._procs[index] = subprocess.Popen(argv, env=env)
        self._started[index] = time.monotonic()

    def run(self) -> int:
        cfg = self.config
        cannot = (f"error: --port {cfg.port} / --host {cfg.host} (SEQSERVE_PORT, SEQSERVE_HOST): cannot bind gRPC to "
                  f"{cfg.host}:{cfg.port}: the port is in use or the address is not this machine's")
        if cfg.port and _answers(cfg.host, cfg.port):  # another server (SO_REUSEPORT would let it share)
            print(cannot, file=sys.stderr)
            return 1
        try:
            reserved = reserve_port(cfg.host, cfg.port)
        except OSError:
            print(cannot, file=sys.stderr)
            return 1
        port = reserved.getsockname()[1]
        shared.create(self.folder / "counts", self.count)
        registry = CollectorRegistry()
        registry.register(self.metrics)
        try:
            http, _ = start_http_server(cfg.metrics_port, addr=cfg.metrics_host, registry=registry)
        except OSError as err:
            print(f"error: --metrics-port {cfg.metrics_port} / --metrics-host {cfg.metrics_host} (SEQSERVE_METRICS_PORT, "
                  f"SEQSERVE_METRICS_HOST): cannot serve /metrics on {cfg.metrics_host}:{cfg.metrics_port}: "
                  f"{err.strerror or err}", file=sys.stderr)
            reserved.close()
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopping.set())
        for i in range(self.count):
            self._start(i, port)
        code = 0
        try:
            if not self._wait_ready():
                return 1
            if self._stopping.is_set():
                return 0
            log.info("serving gRPC on %s:%d, metrics on %s:%d, models from %s (%d worker processes)", cfg.host, port,
                     cfg.metrics_host, http.server_port, cfg.models, self.count)
            code = self._watch(port)
        finally:
            self._stop_all()
            http.shutdown()
            reserved.close()
            self._dir.cleanup()
        return code

    def _wait_ready(self) -> bool:
        """Wait until every worker has loaded its models and bound the port (False: one exited)."""
        while not self._stopping.wait(0.05):
            for i, proc in enumerate(self._procs):
                if proc is not None and proc.poll() is not None:
                    log.error("worker %d (pid %d) exited with %s while starting", i, proc.pid, _status(proc.returncode))
                    return False
            if all((self.folder / f"ready-{i}").exists() for i in range(self.count)):
                break
        return True

    def _watch(self, port: int) -> int:
        threading.Thread(target=self._snapshot_often, name="worker metrics", daemon=True).start()
        while not self._stopping.wait(0.1):
            for i, proc in enumerate(self._procs):
                if proc is None or proc.poll() is None:
                    continue
                lived = time.monotonic() - self._started[i]
                log.error("worker %d (pid %d) exited with %s after %.1f s; starting another", i, proc.pid,
                          _status(proc.returncode), lived)
                shared.reset_worker(self.folder / "counts", self.count, i)
                self.metrics.retire(i, proc.pid)
                self._early[i] = self._early[i] + 1 if lived < EARLY_EXIT_S else 0
                if self._early[i] >= 2:
                    log.error("worker %d died twice within %.0f s of starting: stopping the server", i, EARLY_EXIT_S)
                    return 1
                self.restarts += 1
                self._start(i, port)
        return 0

    def _stop_all(self) -> None:
        """SIGTERM every worker (each drains within --grace-s), then wait; kill what outlives that."""
        live = [p for p in self._procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace_s + 15.0
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop within --grace-s + 15 s: killing it", p.pid)
                p.kill()
                p.wait()
        log.info("every worker stopped")


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _status(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
