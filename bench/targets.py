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
``seqserve bench``'s harness (service/loadgen/runners.py) and writes OUT/results.csv (every level of every
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

This module runs the measurements (``measure``) and the command line; bench/harness.py starts the
server processes and runs the interleaved rounds (shared with bench.ab), bench/scoring.py turns the
rounds into the targets' figures and verdicts, bench/report.py writes the files and plots.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench import inprocess
from bench.harness import ROOT, Server, TritonPeer, cpu_seconds, interleaved, wait_serving
from bench.report import write
from bench.scoring import FORECAST_LEVELS, MAX_TOKENS, TOKEN_SPAN, Run, per_token_ms, rps, targets
from service.contract import read_manifest
from service.loadgen.config import BenchConfig
from service.loadgen.results import LevelResult
from service.loadgen.runners import benchmark
from service.v1 import generate_pb2, generate_pb2_grpc

log = logging.getLogger("bench.targets")
STREAM_TOKENS = 560


async def drive(address: str, endpoint: str, levels: tuple[int, ...], duration_s: float, **workload: Any) -> list[LevelResult]:
    config = BenchConfig(address=address, endpoints=[endpoint], concurrency=list(levels), duration_s=duration_s,
                         warmup_s=1.0, timeout_s=60.0, **workload)
    return await benchmark(config)


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


async def measure(models: Path, duration_s: float, triton_venv: Path | None, rounds: int = 3) -> Run:
    run = Run(duration_s, rounds)
    # Each task's default model, as the server picks it (the one marked default, else the first
    # name): what the drives below reach without naming a model, and what the floors must measure.
    names: dict[str, str] = {}
    for path in sorted(models.glob("*/*/manifest.json")):
        manifest = read_manifest(path.parent)
        if manifest.task not in names or manifest.default:
            names[manifest.task] = path.parent.parent.name
    if (models / "translate-de-en").is_dir():  # the model bench's German sentences go to
        names["translate"] = "translate-de-en"
    if (models / "forecast-etth1").is_dir():  # issue 19's targets are measured on its graph (Triton serves it too)
        names["forecast"] = "forecast-etth1"
    forecast_bundle = max((models / names["forecast"]).iterdir())
    lm_bundle = max((models / names["generate"]).iterdir())
    window = read_manifest(forecast_bundle).forecast.window
    serve = [sys.executable, "-m", "service.client.cli", "serve", "--models", str(models), "--port", "0", "--metrics-port", "0",
             "--poll-interval-s", "0", "--workers", "1"]  # one process: the harness's clients open one channel

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
                floor("ort_translate_sentences_per_s", inprocess.translation_ceiling(
                    max((models / names["translate"]).iterdir()), beam=4, batch=16))

        def driven(results: dict[str, list[Any]], name: str, endpoint: str, levels: tuple[int, ...],
                   **workload: Any) -> Callable[[int], Awaitable[None]]:
            """One round of ``name`` at ``levels``: its results join ``results[name]`` and the CSV."""
            async def step(round_no: int) -> None:
                results[name] += run.add(name, await drive(servers[name].address, endpoint, levels, duration_s,
                                                           **workload), round_no)
            return step

        # Every system at every level, in interleaved rounds; the targets take each figure's median round.
        forecast: dict[str, list[Any]] = {"seqserve": [], "seqserve-nobatch": [], "echo": [], "torch": []}
        forecast_steps = {name: driven(forecast, name, "forecast", FORECAST_LEVELS, history_len=[window],
                                       model=names["forecast"])
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
            # Server CPU per forecast at c=64: the CPU seconds of the server's processes over one
            # level (its warm-up second included) over the requests answered in that time (the
            # measured rate over warm-up and measurement).
            cpu: dict[str, list[float]] = {}

            def cpu_step(name: str, pid: int, level: Callable[[], Awaitable[float]]) -> Callable[[int], Awaitable[None]]:
                async def step(_round: int) -> None:
                    before = cpu_seconds(pid)
                    rate = await level()
                    cpu.setdefault(name, []).append((cpu_seconds(pid) - before) * 1e3 / (rate * (duration_s + 1.0)))
                return step

            async def seqserve_64() -> float:
                return rps((await drive(seqserve.address, "forecast", (64,), duration_s, history_len=[window],
                                        model=names["forecast"]))[0])

            cpu_steps = {"seqserve": cpu_step("seqserve", seqserve.proc.pid, seqserve_64)}
            if triton is not None:
                async def triton_64() -> float:
                    return rps(triton.levels((64,), duration_s)[0])

                cpu_steps["triton"] = cpu_step("triton", triton.server.proc.pid, triton_64)
                run.figures["triton_settings"] = TritonPeer.SETTINGS
            await interleaved("server CPU per forecast at c=64", rounds, cpu_steps)
            run.figures["cpu_ms_per_forecast"] = {name: sorted(v)[(len(v) - 1) // 2] for name, v in cpu.items()}
            run.figures["cpu_ms_per_forecast_rounds"] = cpu
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
        run.add("seqserve (random lengths)", await drive(seqserve.address, "forecast", (64,), 2 * duration_s,
                                                         model=names["forecast"]))
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
