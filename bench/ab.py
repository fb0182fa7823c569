"""Interleaved A/B of `seqserve serve` settings: which configuration is faster, on a noisy machine.

``python -m bench.ab --variant base="" --variant asyncio="--event-loop asyncio" --rounds 8 \\
--endpoint forecast --concurrency 1,4,16 --history-len 336`` starts one `seqserve serve` per
variant on loopback (all up at once, idle while another is measured), then in each round drives
every variant at every level with `seqserve bench`'s harness, the order reversed every other round,
and prints for each level the median over the rounds of each variant's p50 and p99 latency,
throughput and tokens/s, with its ratio to the first variant. On this project's 2-core VM, whose speed drifts by
10-30% within minutes, one pass per variant measures the drift more than the settings; short
interleaved rounds cancel it out. The figures in docs/benchmarks.md ("What changed") come from it.

``--tree NAME=DIR`` runs variant NAME's server from another checkout of seqserve (e.g. a ``git
worktree`` of an earlier commit) instead of this one, so two commits can be compared the same way:
``git worktree add /tmp/before COMMIT && python -m bench.ab --variant before= --tree before=/tmp/before
--variant after=``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import shlex
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np

from bench.harness import ROOT, Server, interleaved, wait_serving
from service.loadgen.config import ENDPOINTS, BenchConfig
from service.loadgen.results import LevelResult
from service.loadgen.runners import benchmark


def parse_tree(text: str) -> tuple[str, Path]:
    """``NAME=DIR``: variant NAME runs from the seqserve checkout at DIR."""
    name, sep, directory = text.partition("=")
    path = Path(directory).expanduser().resolve()
    if not sep or not name or not (path / "service").is_dir():
        raise argparse.ArgumentTypeError(f"--tree {text!r}: expected NAME=DIR with DIR a seqserve checkout")
    return name, path


def serve_command(tree: Path) -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment that run `seqserve serve` from the checkout at ``tree`` (its
    modules first on the path; the command lived in service/cli.py before service/ was split by role)."""
    module = "service.client.cli" if (tree / "service" / "client" / "cli.py").is_file() else "service.cli"
    return [sys.executable, "-m", module, "serve"], {"PYTHONPATH": str(tree)}


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=FLAGS`` (FLAGS as a shell would split them; may be empty) -> (name, flags)."""
    name, sep, flags = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME=FLAGS, e.g. asyncio='--event-loop asyncio'")
    return name, shlex.split(flags)


async def measure(addresses: dict[str, str], rounds: int, config: BenchConfig) -> dict[str, list[LevelResult]]:
    results: dict[str, list[LevelResult]] = {name: [] for name in addresses}

    def variant(name: str) -> Callable[[int], Awaitable[None]]:
        async def step(_round: int) -> None:
            results[name] += await benchmark(dataclasses.replace(config, address=addresses[name]))
        return step

    await interleaved(config.endpoints[0], rounds, {name: variant(name) for name in addresses})
    return results


def summary(results: dict[str, list[LevelResult]]) -> list[dict[str, object]]:
    """Per (level, variant): the median over rounds of p50 and p99 ms, requests/s and tokens/s, and each
    as a ratio to the first variant's median."""
    rows: list[dict[str, object]] = []
    names = list(results)
    levels = sorted({r.load.level for rs in results.values() for r in rs})
    figures = {"p50_ms": lambda r: r.latency_ms["p50"], "p99_ms": lambda r: r.latency_ms["p99"],
               "rps": lambda r: r.throughput_rps, "tokens_per_s": lambda r: r.tokens_per_s}
    for level in levels:
        medians: dict[str, dict[str, float | None]] = {}
        for name in names:
            at = [r for r in results[name] if r.load.level == level and r.ok]
            medians[name] = {}
            for key, get in figures.items():
                values = [get(r) for r in at if get(r) is not None]
                medians[name][key] = float(np.median(values)) if values else None
        base = medians[names[0]]
        for name in names:
            row: dict[str, object] = {"level": level, "variant": name, "rounds": sum(
                1 for r in results[name] if r.load.level == level and r.ok)}
            for key in figures:
                value, ref = medians[name][key], base[key]
                row[key] = value
                row[f"{key}_ratio"] = value / ref if value is not None and ref else None
            rows.append(row)
    return rows


def format_rows(rows: list[dict[str, object]]) -> str:
    def cell(value: object, fmt: str, width: int) -> str:
        return ("-" if value is None else format(value, fmt)).rjust(width)

    header = (f"{'LEVEL':>6}  {'VARIANT':<20} {'ROUNDS':>6} {'P50 MS':>9} {'x':>6} {'P99 MS':>9} {'x':>6} "
              f"{'REQ/S':>9} {'x':>6} {'TOK/S':>9} {'x':>6}")
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['level']:>6}  {str(r['variant'])[:20]:<20} {r['rounds']:>6} "
            + " ".join(cell(r[key], fmt, 9) + " " + cell(r[f"{key}_ratio"], ".3f", 6)
                       for key, fmt in (("p50_ms", ".3f"), ("p99_ms", ".3f"), ("rps", ".1f"), ("tokens_per_s", ".0f"))))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", type=parse_variant, required=True,
                        help="NAME=FLAGS: `seqserve serve` flags of one variant (repeat; the first is the reference)")
    parser.add_argument("--tree", action="append", type=parse_tree, default=[],
                        help="NAME=DIR: run variant NAME's server from the seqserve checkout at DIR (default: this one)")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="bundle directory (default: models/)")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    parser.add_argument("--endpoint", choices=ENDPOINTS, default="forecast")
    parser.add_argument("--concurrency", default="1,4,16", help="closed-loop levels (default 1,4,16)")
    parser.add_argument("--duration", type=float, default=1.5, help="measured seconds per level and round (default 1.5)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per level and round (default 0.5)")
    parser.add_argument("--history-len", type=int, help="forecast history steps (default: random lengths)")
    parser.add_argument("--model", default="", help="model to load (default: the task's default model)")
    parser.add_argument("--max-tokens", type=int, default=64, help="generation tokens per request (default 64)")
    parser.add_argument("--beam", type=int, default=1, help="translation beam width (default 1)")
    parser.add_argument("--channels", type=int, default=1,
                        help="client channels (connections) per variant (default 1; comparing --workers needs several)")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.variant]
    if len(set(names)) != len(names):
        parser.error(f"variant names must differ: {names}")
    trees = dict(args.tree)
    if set(trees) - set(names):
        parser.error(f"--tree names {sorted(set(trees) - set(names))} are not variants")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds} must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = BenchConfig(endpoints=[args.endpoint], concurrency=[int(c) for c in args.concurrency.split(",")],
                         duration_s=args.duration, warmup_s=args.warmup, timeout_s=60.0, max_tokens=args.max_tokens,
                         beam=args.beam, history_len=[args.history_len] if args.history_len else [], model=args.model,
                         channels=args.channels)
    try:
        config.validate()
    except ValueError as err:
        parser.error(str(err))
    common = ["--models", str(args.models.resolve()), "--port", "0", "--metrics-port", "0", "--poll-interval-s", "0"]
    servers: dict[str, Server] = {}
    try:
        for name, flags in args.variant:
            command, env = serve_command(trees.get(name, ROOT))
            servers[name] = Server(name, [*command, *common, *flags], env=env, cwd=trees.get(name, ROOT))
        for server in servers.values():
            wait_serving(server.address)
        results = asyncio.run(measure({n: s.address for n, s in servers.items()}, args.rounds, config))
    finally:
        for server in servers.values():
            server.stop()
    print(format_rows(summary(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
