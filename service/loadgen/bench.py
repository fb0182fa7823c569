"""``seqserve bench``: load-test a running seqserve server and report what Triton's perf_analyzer reports.

The harness drives an already running server over gRPC (``grpc.aio``, one or ``--channels`` channels,
one asyncio task per outstanding request) and measures every request with ``time.perf_counter``.
For each endpoint it runs a series of load levels:

* closed loop (``--concurrency 1,4,16,64``): N workers, each sends its next request as soon as the
  previous one finished;
* open loop (``--rate R1,R2``): Poisson arrivals (exponential inter-arrival times, seeded) at R
  requests/s, with at most ``--max-outstanding`` requests in flight (arrivals beyond it are dropped
  and counted).

For ``recognize_stream`` a request is a whole stream: audio sent at real-time pace in ``--chunk-ms``
chunks, so ``--concurrency N`` is N live streams; its report adds each chunk's latency to the
interim result that covers it and the final result's latency after the half-close, and the run
ends with the largest level whose p99 chunk-to-interim latency stayed within 100 ms.

Each level first runs ``--warmup`` seconds whose requests are not counted, lets them finish, then
measures until ``--duration`` seconds have passed and/or ``--requests`` requests were sent, and
waits for the requests in flight (each bounded by ``--timeout``). With ``--metrics-address`` the
server's Prometheus histograms are scraped before and after the measured part of each level.

This module is the command line: ``add_parser`` / ``run`` (and ``config_from_args``). The harness is
split by concern, each module in service/loadgen/: ``config`` (BenchConfig, Load, ENDPOINTS),
``corpus`` (built-in sentences and prompts), ``series`` (synthetic forecast histories), ``speech``
(connected-digit audio for the recognize endpoints), ``pools``
(the prepared requests), ``senders`` (one timed gRPC call), ``runners`` (closed and open loop, one
level, ``benchmark`` (async) for callers and tests), ``server_metrics`` (the server's histograms),
``results`` (outcomes, statistics, CSV_COLUMNS) and ``report`` (table, CSV, plot).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from service.client.options import ADDRESS_ENV, DEFAULT_ADDRESS, EXIT_RPC_ERROR, EXIT_USAGE, with_default_port
from service.loadgen.config import (
    ALL_ENDPOINTS,
    DEFAULT_CHUNK_MS,
    DEFAULT_CONCURRENCY,
    ENDPOINTS,
    STREAM_P99_BOUND_MS,
    BenchConfig,
)
from service.loadgen.corpus import SENTENCES
from service.loadgen.report import matplotlib_missing, table_header, table_row, write_csv, write_plot
from service.loadgen.results import LevelResult, stream_capacity
from service.loadgen.runners import benchmark
from service.loadgen.speech import DATA_ENV


def _list_of(kind: type, what: str) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} {text!r} must be comma-separated numbers") from None
    return parse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an argparse ``subparsers`` object; its ``func`` is ``run``."""
    p = subparsers.add_parser(
        "bench",
        help="load-test a running server",
        description="Drive a running seqserve server over gRPC at fixed concurrency levels (closed loop) "
        "and/or Poisson arrival rates (open loop); report throughput, latency percentiles, errors by "
        "code, streaming token timings and (with --metrics-address) the server's queue and compute "
        "time per request. Every level ends after --duration seconds and/or --requests requests.",
    )
    group = p.add_argument_group("server")
    group.add_argument("--address", default=os.environ.get(ADDRESS_ENV, DEFAULT_ADDRESS),
                       help=f"server host:port (default {DEFAULT_ADDRESS}; env {ADDRESS_ENV})")
    group.add_argument("--metrics-address", default="", metavar="HOST:PORT",
                       help="the server's Prometheus endpoint, e.g. 127.0.0.1:9464: adds server-side "
                            "queue/compute/time-to-first-token means (default: off)")
    group.add_argument("--channels", type=int, default=1, help="gRPC channels, each its own connection, to spread over (default 1; against "
                       "`serve --workers N` use at least N: connections, not calls, are spread over workers)")
    group.add_argument("--timeout", type=float, default=30.0, help="deadline per request in seconds (default 30)")

    group = p.add_argument_group("workload")
    group.add_argument("--endpoint", action="append", default=[], metavar="NAME",
                       help=f"{'|'.join(ALL_ENDPOINTS)}; repeatable or comma-separated (default: the first six; "
                       "the recognize endpoints only when named)")
    group.add_argument("--model", default="", help="model name (default: the server's default model for each task)")
    group.add_argument("--version", default="", help="model version, digits (default: the model's default version)")
    group.add_argument("--texts", metavar="FILE", help="translate: sentences, one per line (default: built-in German)")
    group.add_argument("--history-len", type=_list_of(int, "--history-len"), default=[], metavar="N[,MAX]",
                       help="forecast: history steps, or a range drawn from per request (default: random between "
                       "the model's min_history and window; equal lengths share batches)")
    group.add_argument("--frequency", default="", metavar="ALIAS",
                       help="forecast: the frequency each request names (the synthetic histories are hourly: h; "
                       "default: none, so a model that takes a season detects one)")
    group.add_argument("--beam", type=int, default=1, help="translate: beam width (default 1 = greedy)")
    group.add_argument("--max-tokens", type=int, default=32, help="generate: tokens per request (default 32)")
    group.add_argument("--chunk-ms", type=float, default=DEFAULT_CHUNK_MS, metavar="MS",
                       help=f"recognize_stream: milliseconds of audio per message, sent at real-time pace "
                       f"(default {DEFAULT_CHUNK_MS:g})")
    group.add_argument("--digits", type=_list_of(int, "--digits"), default=[], metavar="N[,MAX]",
                       help="recognize*: digits per utterance, or a range drawn from (default 2,10: the "
                       "connected-digits test)")
    group.add_argument("--data-dir", default="", metavar="DIR",
                       help=f"recognize*: the data directory whose fsdd/recordings give the spoken digits (default "
                       f"${DATA_ENV}; without the recordings, synthetic tone strings)")
    group.add_argument("--seed", type=int, default=0, help="seed of inputs, generation and arrivals (default 0)")

    group = p.add_argument_group("load")
    group.add_argument("--concurrency", type=_list_of(int, "--concurrency"), default=None, metavar="N1,N2",
                       help="closed-loop levels: requests kept in flight (default 1,4,16,64 unless --rate is given)")
    group.add_argument("--rate", type=_list_of(float, "--rate"), default=[], metavar="R1,R2",
                       help="open-loop levels: Poisson arrivals per second (default: none)")
    group.add_argument("--max-outstanding", type=int, default=512,
                       help="open loop: most requests in flight; later arrivals are dropped (default 512)")
    group.add_argument("--duration", type=float, default=10.0, help="seconds measured per level; 0 = --requests only (default 10)")
    group.add_argument("--requests", type=int, default=0, help="most requests per level; 0 = no cap (default 0)")
    group.add_argument("--warmup", type=float, default=1.0, help="seconds per level sent before measuring (default 1)")

    group = p.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="print one JSON object per level instead of a table")
    group.add_argument("--csv", metavar="FILE", help="also write one row per (endpoint, mode, level) to FILE")
    group.add_argument("--plot", metavar="FILE.png", help="also plot latency against throughput (needs matplotlib)")
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A BenchConfig from parsed ``bench`` arguments; raises ValueError/OSError on bad values or files."""
    endpoints = [e.strip() for item in args.endpoint for e in item.split(",") if e.strip()] or list(ENDPOINTS)
    texts: Sequence[str] = SENTENCES
    if args.texts:
        texts = [line.strip() for line in Path(args.texts).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise ValueError(f"{args.texts}: no sentence in it")
    concurrency = args.concurrency if args.concurrency is not None else ([] if args.rate else DEFAULT_CONCURRENCY)
    config = BenchConfig(
        address=with_default_port(args.address), metrics_address=args.metrics_address, endpoints=list(dict.fromkeys(endpoints)),
        model=args.model, version=args.version, concurrency=list(concurrency), rates=list(args.rate),
        duration_s=args.duration, max_requests=args.requests, warmup_s=args.warmup,
        max_outstanding=args.max_outstanding, seed=args.seed, texts=texts, beam=args.beam,
        max_tokens=args.max_tokens, history_len=args.history_len, frequency=args.frequency, timeout_s=args.timeout,
        channels=args.channels,
        chunk_ms=args.chunk_ms, data_dir=args.data_dir, digits=args.digits,
    )
    config.validate()
    return config


def _printer(as_json: bool, out: TextIO) -> Callable[[LevelResult], None]:
    header = ""  # the table header printed last: the recognize endpoints have their own columns

    def show(result: LevelResult) -> None:
        nonlocal header
        if as_json:
            out.write(json.dumps({**result.row(), "error_codes": result.errors}, sort_keys=True) + "\n")
        else:
            if (title := table_header(result.endpoint)) != header:
                out.write(title + "\n")
                header = title
            out.write(table_row(result) + "\n")
        out.flush()

    return show


def run(args: argparse.Namespace) -> int:
    """Run ``seqserve bench`` from parsed arguments; returns the exit status (0 even when requests
    failed: they are part of the report; 1 when the server cannot be reached; 2 on bad usage)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.plot and (why := matplotlib_missing()):
        print(f"error: {why}", file=sys.stderr)
        return EXIT_USAGE
    started = time.perf_counter()
    try:
        results = asyncio.run(benchmark(config, _printer(args.json, sys.stdout)))
    except ConnectionError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RPC_ERROR
    if args.csv:
        write_csv(Path(args.csv), results)
    if args.plot:
        write_plot(Path(args.plot), results)
    # The summary and the total go to stderr with --json so that stdout stays one JSON object per line.
    if summary := stream_capacity(results, STREAM_P99_BOUND_MS):
        print(summary, file=sys.stderr if args.json else sys.stdout)
    print(f"total {time.perf_counter() - started:.1f} s, {len(results)} levels",
          file=sys.stderr if args.json else sys.stdout)
    return 0
