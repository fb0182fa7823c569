"""The Open Inference Protocol's cost, measured: the same forecast graph and load over

* ``seqserve.v1`` — ``seqserve bench --endpoint forecast`` against ``seqserve serve``;
* ``OIP`` — ``seqserve bench --endpoint infer``: the same client harness sending ModelInfer to the
  same server (the protocol's cost alone);
* ``OIP, tritonclient`` — bench/triton/load.py (tritonclient's asyncio client, from .venv-triton or
  .venv-oip) against the same server;
* ``Triton, tritonclient`` — the same tritonclient load against Triton (PyTriton) serving the same
  graph with its dynamic batcher (bench/triton/server.py), when .venv-triton exists;

full-window histories of the bundle's forecast model, every system at every level in interleaved
rounds (the order reversed every other round), the median round of each figure reported.

    python -m bench.oip --models models --rounds 3 --duration 8 --out docs/benchmarks/oip.md

Targets (issue 18): OIP's p50 at c=1 at most 1.1x seqserve.v1's, its throughput at c=64 at least 0.9x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

from bench.harness import ROOT, Server, TritonPeer, interleaved, wait_serving
from service.contract import read_manifest
from service.loadgen.config import BenchConfig
from service.loadgen.runners import benchmark

log = logging.getLogger("bench.oip")
LEVELS = (1, 64)


async def _harness(address: str, endpoint: str, window: int, duration_s: float) -> dict[int, dict]:
    config = BenchConfig(address=address, endpoints=[endpoint], concurrency=list(LEVELS), duration_s=duration_s,
                         warmup_s=1.0, timeout_s=60.0, history_len=[window])
    return {int(r.load.level): {"rps": r.throughput_rps, "p50": r.latency_ms["p50"], "p99": r.latency_ms["p99"],
                                "errors": sum(r.errors.values())} for r in await benchmark(config)}


def _tritonclient(python: Path, address: str, model: str, bundle: Path, duration_s: float) -> dict[int, dict]:
    out = subprocess.run(
        [str(python), "bench/triton/load.py", "--address", address, "--model", model, "--bundle", str(bundle),
         "--concurrency", ",".join(map(str, LEVELS)), "--duration", str(duration_s), "--warmup", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=120 + len(LEVELS) * (duration_s + 30)).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {int(r["level"]): {"rps": r["throughput_rps"], "p50": r["latency_p50_ms"], "p99": r["latency_p99_ms"],
                              "errors": r["errors"]} for r in rows}


def _median(rounds: list[dict[int, dict]], level: int, key: str) -> float:
    return statistics.median(r[level][key] for r in rounds)


async def measure(models: Path, rounds: int, duration_s: float) -> dict[str, list[dict[int, dict]]]:
    bundle = max((models / "forecast-etth1").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
    window = read_manifest(bundle).forecast.window
    seqserve = Server("seqserve", [sys.executable, "-m", "service.client.cli", "serve", "--models", str(models),
                                   "--port", "0", "--metrics-port", "0", "--poll-interval-s", "0"])
    triton_venv, oip_venv = ROOT / ".venv-triton", ROOT / ".venv-oip"
    client_python = (triton_venv if triton_venv.exists() else oip_venv) / "bin" / "python"
    peer = TritonPeer(triton_venv, bundle) if triton_venv.exists() else None
    has_client = client_python.exists()  # tritonclient's venv: bench/triton/setup.sh or tests/oip/setup.sh
    if not has_client:
        log.warning("no .venv-triton or .venv-oip: the tritonclient rows are left out")
    results: dict[str, list[dict[int, dict]]] = {"seqserve.v1": [], "OIP": []}
    if has_client:
        results["OIP, tritonclient"] = []
    if peer is not None:
        results["Triton, tritonclient"] = []
    try:
        wait_serving(seqserve.address)

        async def v1(_: int) -> None:
            results["seqserve.v1"].append(await _harness(seqserve.address, "forecast", window, duration_s))

        async def oip(_: int) -> None:
            results["OIP"].append(await _harness(seqserve.address, "infer", window, duration_s))

        async def oip_triton(_: int) -> None:
            results["OIP, tritonclient"].append(await asyncio.to_thread(
                _tritonclient, client_python, seqserve.address, "forecast-etth1", bundle, duration_s))

        steps = {"seqserve.v1": v1, "OIP": oip, **({"OIP, tritonclient": oip_triton} if has_client else {})}
        if peer is not None:
            async def triton(_: int) -> None:
                results["Triton, tritonclient"].append(await asyncio.to_thread(
                    _tritonclient, client_python, peer.server.address, "forecast", bundle, duration_s))
            steps["Triton, tritonclient"] = triton
        await interleaved("oip", rounds, steps)
    finally:
        seqserve.stop()
        if peer is not None:
            peer.stop()
    return results


def report(results: dict[str, list[dict[int, dict]]], rounds: int, duration_s: float) -> str:
    lines = [f"Forecast, full windows, {rounds} interleaved rounds of {duration_s:g} s per level; the median round.", "",
             "| system | c=1: req/s, p50 / p99 ms | c=64: req/s, p50 / p99 ms | errors |", "| --- | --- | --- | --- |"]
    for name, rs in results.items():
        cells = [f"{_median(rs, c, 'rps'):,.0f}, {_median(rs, c, 'p50'):.2f} / {_median(rs, c, 'p99'):.2f}" for c in LEVELS]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {sum(r[c]['errors'] for r in rs for c in LEVELS)} |")
    v1, oip = results["seqserve.v1"], results["OIP"]
    p50 = _median(oip, 1, "p50") / _median(v1, 1, "p50")
    rps = _median(oip, 64, "rps") / _median(v1, 64, "rps")
    lines += ["", f"- OIP / seqserve.v1, same client harness: p50 at c=1 {p50:.2f}x (target <= 1.1x: "
              f"{'met' if p50 <= 1.1 else 'not met'}), throughput at c=64 {rps:.2f}x (target >= 0.9x: "
              f"{'met' if rps >= 0.9 else 'not met'})."]
    if "Triton, tritonclient" in results and "OIP, tritonclient" in results:
        t, o = results["Triton, tritonclient"], results["OIP, tritonclient"]
        lines.append(f"- seqserve OIP / Triton, both loaded by tritonclient: throughput at c=1 "
                     f"{_median(o, 1, 'rps') / _median(t, 1, 'rps'):.2f}x, at c=64 {_median(o, 64, 'rps') / _median(t, 64, 'rps'):.2f}x; "
                     f"p99 at c=64 {_median(o, 64, 'p99') / _median(t, 64, 'p99'):.2f}x.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per level and round")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = asyncio.run(measure(args.models, args.rounds, args.duration))
    text = report(results, args.rounds, args.duration)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
