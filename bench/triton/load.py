"""Closed-loop load generator for the Triton forecast model of ``bench/triton/server.py``, and with
the same client for seqserve's own Open Inference Protocol endpoint (``--model forecast-etth1``
against ``seqserve serve``: the model takes ``history`` [rows, steps] where Triton's takes ``window``
[rows, steps, channels]; the input is read from ModelMetadata).

Runs inside ``.venv-triton`` (tritonclient needs protobuf<7; the main venv has protobuf 7), and does
not import ``service``. It mirrors ``seqserve bench --endpoint forecast`` (service/loadgen/runners.py):

* closed loop: for each ``--concurrency`` level N, N asyncio workers on one gRPC channel
  (``tritonclient.grpc.aio``) send their next request as soon as the previous one finished;
* each level first runs ``--warmup`` seconds that are not counted (and drained), then measures for
  ``--duration`` seconds and waits for the requests in flight;
* latency per request is ``time.perf_counter`` from send to reply; figures are over OK requests;
  throughput = OK requests / elapsed seconds (until the last request finished);
* inputs: POOL_SIZE (256) seeded synthetic hourly-looking series (same generator and pool as
  service/loadgen/pools.py), sent round-robin. By default every history is a full window (the manifest's
  ``window`` steps); ``--random-length`` draws lengths in [min_history, window] like seqserve bench
  (then only equal lengths batch together, on both servers).

One JSON object per level (``--json``) or a table, with the keys of seqserve bench's CSV
(service/loadgen/results.py CSV_COLUMNS); figures that do not apply (tokens, ttft, itl, server_*) are null,
and as in ``seqserve bench --json`` ``error_codes`` is a {code: count} object there and a
"CODE:n;..." string in the CSV. ``--csv FILE`` writes the rows.

    .venv-triton/bin/python bench/triton/load.py --address 127.0.0.1:8001 --concurrency 1,16 --duration 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

# Same columns, same order as service/loadgen/results.py CSV_COLUMNS.
CSV_COLUMNS = (
    "endpoint", "mode", "level", "model", "version", "requests", "ok", "errors", "error_codes", "dropped",
    "elapsed_s", "throughput_rps", "tokens_per_s",
    "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms",
    "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
    "server_queue_ms", "server_compute_ms", "server_ttft_ms",
)
POOL_SIZE = 256
OK = "OK"
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from .venv-triton: service.loadgen.series is numpy-only
from service.loadgen.series import synthetic_series


@dataclass
class Outcome:
    latency: float  # seconds, send to reply
    code: str = OK  # gRPC status code name (StatusCode.X -> X) or the exception class


def histories(window: int, min_history: int, channels: int, random_length: bool, seed: int) -> list[np.ndarray]:
    """POOL_SIZE (1, steps, channels) float32 arrays."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(POOL_SIZE):
        steps = int(rng.integers(max(1, min_history), window + 1)) if random_length else window
        out.append(synthetic_series(rng, steps, channels).astype(np.float32)[None])
    return out


def error_code(err: Exception) -> str:
    if isinstance(err, InferenceServerException):
        status = str(err.status() or "")
        return status.removeprefix("StatusCode.") or "UNKNOWN"
    return type(err).__name__


async def closed_loop(client: grpcclient.InferenceServerClient, model: str, pool: list[np.ndarray],
                      concurrency: int, duration_s: float, timeout_s: float,
                      first: int = 0, input_name: str = "window") -> tuple[list[Outcome], float]:
    start = time.perf_counter()
    deadline = start + duration_s
    outcomes: list[Outcome] = []
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while time.perf_counter() < deadline:
            i = first + sent
            sent += 1
            x = pool[i % len(pool)]
            inp = grpcclient.InferInput(input_name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            out = [grpcclient.InferRequestedOutput("quantiles")]
            t0 = time.perf_counter()
            try:
                reply = await client.infer(model, [inp], outputs=out, client_timeout=timeout_s)
                reply.as_numpy("quantiles")  # decode, as a seqserve client decodes its reply
            except Exception as err:  # noqa: BLE001 - every failure is a counted outcome
                outcomes.append(Outcome(time.perf_counter() - t0, error_code(err)))
                continue
            outcomes.append(Outcome(time.perf_counter() - t0))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes, time.perf_counter() - start


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def summarize(level: int, model: str, version: str, outcomes: list[Outcome], elapsed_s: float) -> dict:
    """One row with the CSV_COLUMNS keys, computed as service/loadgen/results.py summarize does."""
    ok = [o for o in outcomes if o.code == OK]
    ms = np.array([o.latency for o in ok], dtype=np.float64) * 1000.0
    pct = dict(zip((50, 90, 95, 99), np.percentile(ms, (50, 90, 95, 99)))) if ms.size else {}
    errors = Counter(o.code for o in outcomes if o.code != OK)
    row = dict.fromkeys(CSV_COLUMNS)
    row.update({
        "endpoint": "forecast", "mode": "concurrency", "level": level, "model": model, "version": version,
        "requests": len(outcomes), "ok": len(ok), "errors": sum(errors.values()),
        "error_codes": ";".join(f"{code}:{n}" for code, n in sorted(errors.items())),
        "dropped": 0, "elapsed_s": round(elapsed_s, 4),
        "throughput_rps": _round(len(ok) / elapsed_s if elapsed_s > 0 else 0.0),
        "latency_mean_ms": _round(ms.mean()) if ms.size else None,
        **{f"latency_p{q}_ms": _round(pct.get(q)) for q in (50, 90, 95, 99)},
    })
    return row


def table_line(row: dict) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"
    return (f"{row['endpoint']:<9} c={row['level']:<4} {row['requests']:>7} {row['ok']:>7} {row['errors']:>5} "
            f"{f(row['throughput_rps']):>9} {f(row['latency_mean_ms']):>8} {f(row['latency_p50_ms']):>8} "
            f"{f(row['latency_p90_ms']):>8} {f(row['latency_p99_ms']):>8}  {row['error_codes']}")


TABLE_HEADER = (f"{'endpoint':<9} {'level':<6} {'requests':>7} {'ok':>7} {'err':>5} {'req/s':>9} {'mean ms':>8} "
                f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  error codes")


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--concurrency {text!r} must be comma-separated integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("--concurrency levels must be >= 1")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Closed-loop load on Triton's forecast model (bench/triton/server.py).")
    p.add_argument("--address", default="127.0.0.1:8001", help="Triton gRPC host:port (default 127.0.0.1:8001)")
    p.add_argument("--model", default="forecast", help="Triton model name (default forecast)")
    p.add_argument("--concurrency", type=_ints, default=[1, 4, 16, 64], help="levels (default 1,4,16,64)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per level (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds per level sent before measuring (default 1)")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per request in seconds (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the histories (default 0)")
    p.add_argument("--random-length", action="store_true",
                   help="history lengths uniform in [min_history, window] (seqserve bench's workload) "
                        "instead of full windows")
    p.add_argument("--bundle", type=Path, default=REPO / "models" / "forecast-etth1" / "1",
                   help="the bundle the server serves: window/min_history/channels come from its "
                        "manifest.json (default models/forecast-etth1/1)")
    p.add_argument("--json", action="store_true", help="print one JSON object per level instead of a table")
    p.add_argument("--csv", metavar="FILE", help="also write one row per level to FILE")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.timeout <= 0:
        p.error("--duration and --timeout must be > 0, --warmup >= 0")
    return args


async def model_shape(client: grpcclient.InferenceServerClient, model: str,
                      bundle: Path) -> tuple[int, int, int, str, str]:
    """(window, min_history, channels, version, input name): the forecast spec from ``bundle``'s
    manifest (the one the server was started with), checked against the served model's input:
    Triton's ``window`` [rows, steps, channels] or seqserve's ``history`` [rows, steps(, channels)]."""
    meta = await client.get_model_metadata(model)
    version = meta.versions[-1] if meta.versions else ""
    spec = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["forecast"]
    channels = int(spec["channels"])
    names = [i.name for i in meta.inputs]
    name = next((n for n in ("window", "history") if n in names), None)
    if name is None:
        raise SystemExit(f"error: model {model!r} has no input 'window' or 'history' (inputs: {names})")
    served = [int(d) for i in meta.inputs if i.name == name for d in i.shape]
    if name == "window" and served[-1] > 0 and served[-1] != channels:
        raise SystemExit(f"error: the served model has {served[-1]} channels, {bundle} says {channels}")
    return int(spec["window"]), int(spec["min_history"]), channels, version, name


async def main_async(args: argparse.Namespace) -> list[dict]:
    client = grpcclient.InferenceServerClient(url=args.address)
    try:
        try:
            ready = await client.is_model_ready(args.model)
        except InferenceServerException as err:
            raise SystemExit(f"error: cannot reach Triton at {args.address}: {err}") from None
        if not ready:
            raise SystemExit(f"error: model {args.model!r} is not ready at {args.address}")
        window, min_history, channels, version, name = await model_shape(client, args.model, args.bundle)
        pool = histories(window, min_history, channels, args.random_length, args.seed)
        if name == "history" and channels == 1:  # seqserve: [rows, steps] for a one-channel model
            pool = [x[..., 0] for x in pool]
        if not args.json:
            print(TABLE_HEADER, flush=True)
        rows = []
        for level in args.concurrency:
            if args.warmup > 0:
                await closed_loop(client, args.model, pool, level, args.warmup, args.timeout, POOL_SIZE // 2, name)
            outcomes, elapsed = await closed_loop(client, args.model, pool, level, args.duration, args.timeout,
                                                  input_name=name)
            row = summarize(level, args.model, version, outcomes, elapsed)
            rows.append(row)
            if args.json:  # as seqserve bench --json: error_codes as {code: count}
                codes = dict(Counter(o.code for o in outcomes if o.code != OK))
                print(json.dumps({**row, "error_codes": codes}, sort_keys=True), flush=True)
            else:
                print(table_line(row), flush=True)
        return rows
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    rows = asyncio.run(main_async(args))
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    print(f"total {time.perf_counter() - started:.1f} s, {len(rows)} levels",
          file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
