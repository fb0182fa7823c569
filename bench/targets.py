"""The performance targets of seqserve, measured in one run beside its baselines.

``python -m bench.targets --models models --out docs/benchmarks`` starts, on loopback ports:

* ``seqserve``: ``seqserve serve`` over the bundled models (default settings), its start-up to
  SERVING timed from the process's launch;
* ``seqserve-nobatch``: the same with batching switched off (``--max-batch-size 1
  --max-streams-per-step 1``: every forecast and every decoding step calls its graph alone);
* ``echo``: a no-op gRPC server speaking the same API (bench/echo_server.py): the gRPC floor;
* ``torch``: a plain gRPC server running the PyTorch models eagerly (bench/torch_server.py);
* ``triton``: Triton (nvidia-pytriton) serving the same forecast ONNX graph with dynamic batching,
  when ``.venv-triton`` exists (bench/triton/setup.sh), loaded by its own client (bench/triton/load.py),

measures the in-process onnxruntime floor (bench/inprocess.py), then drives each server with
``seqserve bench``'s harness (service/loadgen/bench.py) and writes OUT/results.csv (every level of every
system), OUT/targets.json and OUT/targets.md (each target: the figures, the ratio, met or not, and for
the batching targets the graph-only ceiling: the separate calls in-process over one call that stacks
them (64 forecasts, 32 LM streams, 16 beams of 4), the most batching could gain were everything
around the graph free),
OUT/forecast.png (latency against throughput per system) and OUT/generation.png (time per token
by position). Forecast histories are full windows (``--history-len`` = the window), so that every
request can share a batch, as in the Triton peer. Every level runs ``--duration`` seconds after a
warm-up; resident memory of seqserve is sampled throughout.

The systems are measured in ``--rounds`` interleaved rounds (every system at every level once per
round, the order reversed every other round) and each target takes the median round of each of its
figures: this VM's speed drifts by 10-30% within minutes, which a single pass, one system after the
other, turns into differences between systems. results.csv keeps every round (column ``round``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import inprocess
from service.contract import read_manifest
from service.loadgen.bench import CSV_COLUMNS, BenchConfig, LevelResult, benchmark
from service.v1 import generate_pb2, generate_pb2_grpc

log = logging.getLogger("bench.targets")
ROOT = Path(__file__).resolve().parents[1]
SERVING_LINE = re.compile(r"serving gRPC on 127\.0\.0\.1:(\d+)")
FORECAST_LEVELS = (1, 4, 16, 64)
MAX_TOKENS = 64  # tokens per generation request


class Server:
    """A server subprocess on a free loopback port: ``argv`` must log "serving gRPC on 127.0.0.1:PORT"."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 120.0):
        self.name = name
        # stdout and stderr in one pipe: some servers (Triton) announce themselves on stdout.
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
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


@dataclass
class Run:
    """Everything one run measured."""

    duration_s: float
    rounds: int = 1
    results: list[dict[str, Any]] = field(default_factory=list)  # CSV rows, with "system" and "round"
    figures: dict[str, Any] = field(default_factory=dict)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB) of seqserve

    def add(self, system: str, results: list[LevelResult], round_no: int = 1) -> list[LevelResult]:
        self.results.extend({"system": system, "round": round_no, **r.row()} for r in results)
        return results


async def drive(address: str, endpoint: str, levels: tuple[int, ...], duration_s: float, **workload: Any) -> list[LevelResult]:
    config = BenchConfig(address=address, endpoints=[endpoint], concurrency=list(levels), duration_s=duration_s,
                         warmup_s=1.0, timeout_s=60.0, **workload)
    return await benchmark(config)


TOKEN_SPAN = 50  # target 4 compares the time of tokens 10..60 with that of tokens 500..550
STREAM_TOKENS = 560


async def token_arrivals(address: str, model: str, tokens: int, streams: int) -> np.ndarray:
    """(streams, tokens) arrival time in ms of each token after the first one's, single greedy
    streams one at a time. A token's arrival is that of the chunk carrying it: the server sends
    the tokens sampled while it was writing the previous chunk together, so time per token is
    read as a slope over many tokens, not from consecutive chunks."""
    out = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = generate_pb2_grpc.GeneratorStub(channel)
        for i in range(streams):
            request = generate_pb2.GenerateRequest(model=model, prompt="ROMEO:\n", max_tokens=tokens, temperature=0.0, seed=i)
            times: list[float] = []
            async for chunk in stub.GenerateStream(request, timeout=120):
                times.extend([time.perf_counter()] * (chunk.completion_tokens - len(times)))
            if len(times) < tokens:
                raise RuntimeError(f"stream {i} ended after {len(times)} of {tokens} tokens")
            out.append((np.array(times[:tokens]) - times[0]) * 1e3)
    return np.array(out)


def per_token_ms(arrivals: np.ndarray, start: int, span: int) -> float:
    """Median over streams of the time per token from token ``start`` to ``start + span``."""
    return float(np.median((arrivals[:, start + span] - arrivals[:, start]) / span))


def middle(results: list[Any], level: int, key: Callable[[Any], float]) -> Any:
    """Of the rounds measured at ``level`` (LevelResults, or Triton's rows), the one whose ``key`` is
    the median (the lower middle for an even count)."""
    at = sorted((r for r in results if _level(r) == level), key=key)
    if not at:
        raise KeyError(f"no result at level {level}")
    return at[(len(at) - 1) // 2]


def _level(result: Any) -> int:
    return int(result["level"]) if isinstance(result, dict) else result.load.level


def rps(r: Any) -> float:
    return float(r["throughput_rps"] if isinstance(r, dict) else r.throughput_rps)


def p50(r: Any) -> float:
    return float(r["latency_p50_ms"] if isinstance(r, dict) else r.latency_ms["p50"])


def p99(r: Any) -> float:
    return float(r["latency_p99_ms"] if isinstance(r, dict) else r.latency_ms["p99"])


def tokens(r: LevelResult) -> float:
    return r.tokens_per_s or 0.0


def per_token(r: LevelResult) -> float:
    """A stream's time after its first token over the tokens after the first (chunks can arrive in
    bursts, so the inter-chunk p50 would understate it)."""
    return (r.latency_ms["p50"] - r.ttft_ms["p50"]) / (MAX_TOKENS - 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TritonPeer:
    """Triton over ``bundle`` from ``venv``, up across rounds; each ``levels`` call loads it with
    bench/triton/load.py (its own client, in Triton's venv) and returns the JSON rows."""

    def __init__(self, venv: Path, bundle: Path) -> None:
        self.python = venv / "bin" / "python"
        self.bundle = bundle
        grpc_port, http_port = free_port(), free_port()
        # The same batching settings as seqserve's defaults: batches of up to 32, no added wait.
        self.server = Server("triton", [str(self.python), "bench/triton/server.py", "--bundle", str(bundle), "--grpc-port",
                                        str(grpc_port), "--http-port", str(http_port), "--max-batch-size", "32",
                                        "--queue-delay-us", "0"], timeout_s=180)

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


async def measure(models: Path, duration_s: float, triton_venv: Path | None, rounds: int = 3) -> Run:
    run = Run(duration_s, rounds)
    names = {read_manifest(p.parent).task: p.parent.parent.name for p in sorted(models.glob("*/*/manifest.json"))}
    if (models / "translate-de-en").is_dir():  # the model bench's German sentences go to
        names["translate"] = "translate-de-en"
    forecast_bundle = max((models / names["forecast"]).iterdir())
    lm_bundle = max((models / names["generate"]).iterdir())
    window = read_manifest(forecast_bundle).forecast.window
    serve = [sys.executable, "-m", "service.client.cli", "serve", "--models", str(models), "--port", "0", "--metrics-port", "0",
             "--poll-interval-s", "0"]

    # 7: start-up to SERVING, from the launch of the process (imports and model loading included).
    launched = time.perf_counter()
    seqserve = Server("seqserve", serve)
    wait_serving(seqserve.address)
    run.figures["startup_s"] = time.perf_counter() - launched
    t0 = time.perf_counter()
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(0.25):
            run.rss.append((time.perf_counter() - t0, seqserve.rss_mib()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    others = {
        "seqserve-nobatch": Server("seqserve-nobatch", [*serve, "--max-batch-size", "1", "--max-streams-per-step", "1"]),
        "echo": Server("echo", [sys.executable, "-m", "bench.echo_server", "--port", "0", "--models", str(models)]),
        "torch": Server("torch", [sys.executable, "-m", "bench.torch_server", "--models", str(models), "--port", "0",
                                  "--workers", "64"]),
    }
    servers = {"seqserve": seqserve, **others}
    try:
        for server in others.values():
            wait_serving(server.address)
        # The floor, the same graphs in-process, is measured in the rounds too, as one more system.
        floors: dict[str, list[float]] = {}

        def floor(figure: str, value: float) -> None:
            floors.setdefault(figure, []).append(value)

        async def forecast_floor(_round: int) -> None:
            floor("ort_forecast_p50_ms", inprocess.forecast_latency(forecast_bundle, n=500).p50_ms)
            # What batching can gain on the graph alone: one call for B rows against B calls of one.
            floor("ort_forecast64_p50_ms", inprocess.forecast_latency(forecast_bundle, n=100, batch=64).p50_ms)

        async def step_floor(_round: int) -> None:
            steps = inprocess.decode_step_latency(lm_bundle, n=500, batch=32)
            floor("ort_step_p50_ms", steps[1].p50_ms)
            floor("ort_step32_p50_ms", steps[32].p50_ms)

        async def translate_floor(_round: int) -> None:
            if "translate" in names:
                steps = inprocess.translate_step_latency(max((models / names["translate"]).iterdir()), (4, 64), n=300)
                floor("ort_translate_step4_p50_ms", steps[4].p50_ms)
                floor("ort_translate_step64_p50_ms", steps[64].p50_ms)

        def driven(results: dict[str, list[Any]], name: str, endpoint: str, levels: tuple[int, ...],
                   **workload: Any) -> Callable[[int], Awaitable[None]]:
            """One round of ``name`` at ``levels``: its results join ``results[name]`` and the CSV."""
            async def step(round_no: int) -> None:
                results[name] += run.add(name, await drive(servers[name].address, endpoint, levels, duration_s,
                                                           **workload), round_no)
            return step

        # Every system at every level, in interleaved rounds; the targets take each figure's median round.
        forecast: dict[str, list[Any]] = {"seqserve": [], "seqserve-nobatch": [], "echo": [], "torch": []}
        forecast_steps = {name: driven(forecast, name, "forecast", FORECAST_LEVELS, history_len=[window])
                          for name in forecast}
        seqserve_step = forecast_steps["seqserve"]

        async def seqserve_and_memory(round_no: int) -> None:
            await seqserve_step(round_no)
            # Right after its concurrency-64 level.
            run.figures["rss_c64_mib"] = max(run.figures.get("rss_c64_mib", 0.0), seqserve.rss_mib())

        forecast_steps["seqserve"] = seqserve_and_memory
        triton = TritonPeer(triton_venv, forecast_bundle) if triton_venv is not None else None
        if triton is not None:
            forecast["triton"] = []

            async def triton_step(round_no: int) -> None:
                rows = triton.levels(FORECAST_LEVELS, duration_s)
                run.results.extend({"system": "triton", "round": round_no, **row} for row in rows)
                forecast["triton"] += rows

            forecast_steps["triton"] = triton_step
        try:
            await interleaved("forecast", rounds, {**forecast_steps, "in-process": forecast_floor})
        finally:
            if triton is not None:
                triton.stop()

        generation_levels = {"seqserve": (1, 8, 32), "seqserve-nobatch": (32,), "torch": (1, 32), "echo": (1,)}
        generation: dict[str, list[LevelResult]] = {name: [] for name in generation_levels}
        await interleaved("generate_stream", rounds, {
            **{name: driven(generation, name, "generate_stream", levels, max_tokens=MAX_TOKENS)
               for name, levels in generation_levels.items()},
            "in-process": step_floor,
        })
        log.info("token position")
        arrivals = await token_arrivals(seqserve.address, names["generate"], STREAM_TOKENS, 5)
        run.figures["token_ms_early"] = per_token_ms(arrivals, 10, TOKEN_SPAN)
        run.figures["token_ms_late"] = per_token_ms(arrivals, 500, TOKEN_SPAN)
        # For the plot: time per token over the next 10 tokens, at every position.
        run.figures["token_gap_ms"] = [round(per_token_ms(arrivals, i, 10), 4) for i in range(STREAM_TOKENS - 10)]

        translation: dict[str, list[LevelResult]] = {"seqserve": [], "seqserve-nobatch": []}
        await interleaved("translate beam 4", rounds, {
            **{name: driven(translation, name, "translate", (16,), beam=4) for name in translation},
            "in-process": translate_floor,
        })
        # Resident memory with random input lengths: the default bench mix (random history lengths,
        # random prompts) at concurrency 64, after everything above.
        log.info("random lengths at c=64")
        before = seqserve.rss_mib()
        run.add("seqserve (random lengths)", await drive(seqserve.address, "forecast", (64,), 2 * duration_s))
        run.figures["rss_random_lengths_mib"] = (before, seqserve.rss_mib())
    finally:
        stop_sampling.set()
        sampler.join()
        for server in servers.values():
            server.stop()
    # Each floor figure: the median of its rounds, the lower middle for an even count as in middle()
    # (every round's beside it).
    run.figures.update({figure: sorted(values)[(len(values) - 1) // 2] for figure, values in floors.items()})
    run.figures["floor_rounds"] = floors
    run.figures.update(targets(run, forecast, generation, translation))
    return run


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def targets(run: Run, forecast: dict[str, list[Any]], generation: dict[str, list[LevelResult]],
            translation: dict[str, list[LevelResult]]) -> dict[str, Any]:
    """Each target: figures (each the median of its rounds), ratio, bound and whether it is met."""
    f = run.figures
    out: dict[str, Any] = {}
    s1, echo1 = p50(middle(forecast["seqserve"], 1, p50)), p50(middle(forecast["echo"], 1, p50))
    floor = f["ort_forecast_p50_ms"] + echo1
    out["1"] = {"what": "forecast c=1 p50 / (in-process ORT p50 + echo p50)", "value": _ratio(s1, floor), "bound": "<= 1.3",
                    "met": s1 <= 1.3 * floor, "detail": f"{s1:.2f} ms vs {f['ort_forecast_p50_ms']:.2f} + {echo1:.2f} ms"}
    s64, off64 = rps(middle(forecast["seqserve"], 64, rps)), rps(middle(forecast["seqserve-nobatch"], 64, rps))
    ratio_off = _ratio(s64, off64)
    out["2a"] = {"what": "forecast c=64 throughput / batching off", "value": ratio_off, "bound": ">= 4", "met": ratio_off >= 4,
                     "detail": f"{s64:.0f} vs {off64:.0f} req/s",
                     "ceiling": _ratio(64 * f["ort_forecast_p50_ms"], f["ort_forecast64_p50_ms"])}
    if forecast.get("triton"):
        t64, t99 = rps(middle(forecast["triton"], 64, rps)), p99(middle(forecast["triton"], 64, p99))
        s99 = p99(middle(forecast["seqserve"], 64, p99))
        out["2b"] = {"what": "forecast c=64 throughput / Triton's", "value": _ratio(s64, t64), "bound": ">= 1", "met": s64 >= t64,
                         "detail": f"{s64:.0f} vs {t64:.0f} req/s"}
        out["2c"] = {"what": "forecast c=64 p99 / Triton's", "value": _ratio(s99, t99), "bound": "<= 1", "met": s99 <= t99,
                         "detail": f"{s99:.1f} vs {t99:.1f} ms"}
    g1, g32 = tokens(middle(generation["seqserve"], 1, tokens)), tokens(middle(generation["seqserve"], 32, tokens))
    out["3a"] = {"what": "generation: tokens/s of 32 streams / of one", "value": _ratio(g32, g1),
                     "bound": ">= 8", "met": g32 >= 8 * g1, "detail": f"{g32:.0f} vs {g1:.0f} tokens/s",
                     "ceiling": _ratio(32 * f["ort_step_p50_ms"], f["ort_step32_p50_ms"])}
    one = per_token(middle(generation["seqserve"], 1, per_token))
    out["3b"] = {"what": "one stream's time per token, c=1 (stream time after the first token / 63) / raw ORT step p50",
                     "value": _ratio(one, f["ort_step_p50_ms"]), "bound": "<= 1.3",
                     "met": one <= 1.3 * f["ort_step_p50_ms"], "detail": f"{one:.3f} ms vs {f['ort_step_p50_ms']:.3f} ms"}
    early, late = f["token_ms_early"], f["token_ms_late"]
    out["4"] = {"what": f"time per token at 500..{500 + TOKEN_SPAN} / at 10..{10 + TOKEN_SPAN} (single greedy stream)",
                    "value": late / early, "bound": "<= 1.2",
                    "met": late <= 1.2 * early, "detail": f"{late:.3f} vs {early:.3f} ms"}
    t_on, t_off = rps(middle(translation["seqserve"], 16, rps)), rps(middle(translation["seqserve-nobatch"], 16, rps))
    out["5"] = {"what": "translation beam 4, c=16: sentences/s / batching off",
                    "value": _ratio(t_on, t_off), "bound": ">= 3", "met": t_on >= 3 * t_off,
                    "detail": f"{t_on:.1f} vs {t_off:.1f} sentences/s",
                    "ceiling": _ratio(16 * f.get("ort_translate_step4_p50_ms", 0), f.get("ort_translate_step64_p50_ms"))}
    torch64, torch32 = rps(middle(forecast["torch"], 64, rps)), tokens(middle(generation["torch"], 32, tokens))
    out["6a"] = {"what": "forecast c=64 throughput / PyTorch eager server's", "value": _ratio(s64, torch64), "bound": ">= 3",
                     "met": s64 >= 3 * torch64, "detail": f"{s64:.0f} vs {torch64:.0f} req/s"}
    out["6b"] = {"what": "generation c=32 tokens/s / PyTorch eager server's", "value": _ratio(g32, torch32), "bound": ">= 3",
                     "met": g32 >= 3 * torch32, "detail": f"{g32:.0f} vs {torch32:.0f} tokens/s"}
    out["7a"] = {"what": "start-up to SERVING, bundled models (s)", "value": f["startup_s"], "bound": "<= 3",
                     "met": f["startup_s"] <= 3, "detail": "process launch to health SERVING"}
    rss = [m for _, m in run.rss]
    start, end = f["rss_random_lengths_mib"]
    out["7b"] = {"what": "resident memory under c=64 (MiB); growth over the random-length phase", "value": f["rss_c64_mib"],
                     "bound": "reported; flat", "met": abs(end - start) <= 8,
                     "detail": f"{f['rss_c64_mib']:.0f} MiB at c=64; {start:.1f} -> {end:.1f} MiB over the random-length "
                     f"phase; {min(rss):.0f}-{max(rss):.0f} MiB over the run"}
    return {"targets": out}


SYSTEM_TITLES = {"seqserve": "seqserve", "seqserve-nobatch": "seqserve, batching off", "triton": "Triton (pytriton), same graph",
                 "torch": "PyTorch eager gRPC server", "echo": "no-op echo (floor)",
                 "seqserve (random lengths)": "seqserve, random history lengths"}


def systems_tables(rows: list[dict[str, Any]]) -> str:
    """Markdown tables of every system at every level (the median round by throughput), from
    results.csv rows (strings) or Run.results (numbers)."""
    def num(row: dict[str, Any], column: str) -> float:
        return float(row[column]) if row.get(column) not in (None, "") else float("nan")

    def cells(system: str, endpoint: str) -> dict[int, dict[str, Any]]:
        measured = [r for r in rows if r["system"] == system and r["endpoint"] == endpoint and num(r, "ok") > 0]
        return {level: middle(measured, level, lambda r: num(r, "throughput_rps"))
                for level in sorted({int(r["level"]) for r in measured})}

    lines = ["| system | forecast c=1: req/s, p50 / p99 ms | c=4 | c=16 | c=64 |", "| --- | --- | --- | --- | --- |"]
    for system, title in SYSTEM_TITLES.items():
        got = cells(system, "forecast")
        if got:
            lines.append(f"| {title} | " + " | ".join(
                f"{num(got[c], 'throughput_rps'):,.0f}, {num(got[c], 'latency_p50_ms'):.1f} / {num(got[c], 'latency_p99_ms'):.1f}"
                if c in got else "" for c in FORECAST_LEVELS) + " |")
    lines += ["", "| system | generate_stream, 64 tokens: tokens/s (TTFT p50 ms) |", "| --- | --- |"]
    for system, title in SYSTEM_TITLES.items():
        got = cells(system, "generate_stream")
        if got:
            lines.append(f"| {title} | " + "; ".join(
                f"c={c}: {num(r, 'tokens_per_s'):,.0f} ({num(r, 'ttft_p50_ms'):.1f})" for c, r in got.items()) + " |")
    lines += ["", "| system | translate, beam 4: sentences/s, p50 / p99 ms |", "| --- | --- |"]
    for system, title in SYSTEM_TITLES.items():
        got = cells(system, "translate")
        if got:
            lines.append(f"| {title} | " + "; ".join(
                f"c={c}: {num(r, 'throughput_rps'):,.1f}, {num(r, 'latency_p50_ms'):.1f} / {num(r, 'latency_p99_ms'):.1f}"
                for c, r in got.items()) + " |")
    return "\n".join(lines) + "\n"


def write(run: Run, out: Path, models: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["system", "round", *CSV_COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(run.results)
    (out / "targets.json").write_text(json.dumps(run.figures, indent=2, default=float) + "\n")
    lines = ["| # | target | figures | ratio | bound | met | graph-only ceiling |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, t in run.figures["targets"].items():
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        ceiling = "" if t.get("ceiling") is None else f"{t['ceiling']:.2f}"
        lines.append(f"| {key} | {t['what']} | {t['detail']} | {value} | {t['bound']} | {'yes' if t['met'] else '**no**'} "
                     f"| {ceiling} |")
    (out / "targets.md").write_text("\n".join(lines) + "\n\n" + systems_tables(run.results))
    plot(run, out)
    log.info("wrote %s/results.csv, targets.json, targets.md, forecast.png, generation.png (models %s)", out, models)


def plot(run: Run, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in dict.fromkeys(r["system"] for r in run.results):
        measured = [r for r in run.results if r["system"] == system and r["endpoint"] == "forecast"
                    and r["mode"] == "concurrency" and r["latency_p50_ms"]]
        rows = [middle(measured, level, rps) for level in sorted({int(r["level"]) for r in measured})]  # median rounds
        if rows:
            line, = ax.plot([r["throughput_rps"] for r in rows], [r["latency_p99_ms"] for r in rows], "o-", label=f"{system} p99")
            ax.plot([r["throughput_rps"] for r in rows], [r["latency_p50_ms"] for r in rows], "o--", color=line.get_color(),
                    alpha=0.6, label=f"{system} p50")
    ax.set_xlabel("forecasts/s (concurrency 1, 4, 16, 64)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("forecast-etth1: latency against throughput")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "forecast.png", dpi=100)
    plt.close(fig)

    gaps = np.array(run.figures["token_gap_ms"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(np.arange(len(gaps)), gaps, lw=0.8, label="time per token over tokens i..i+10 (median of 5 streams)")
    ax.axhline(run.figures["ort_step_p50_ms"], color="k", ls="--", lw=0.8, label="in-process ORT step p50")
    ax.set_xlabel("token position")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.set_title("generate-shakespeare: time per token along one stream")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "generation.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.targets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="bundle directory (default: models/)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks", help="output directory")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per level and round (default 3)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds: every system at every level once per round, in alternating order; "
                             "each target takes the median round of each figure, the lower middle for an even "
                             "count (default 3)")
    parser.add_argument("--triton-venv", type=Path, default=ROOT / ".venv-triton",
                        help="venv of bench/triton/setup.sh (skipped when missing)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    venv = args.triton_venv if (args.triton_venv / "bin" / "python").exists() else None
    if venv is None:
        log.warning("no %s: the Triton peer is skipped (run bench/triton/setup.sh)", args.triton_venv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds} must be at least 1")
    run = asyncio.run(measure(args.models.resolve(), args.duration, venv, args.rounds))
    write(run, args.out, args.models)
    print((args.out / "targets.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
