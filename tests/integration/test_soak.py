"""Soak: mixed traffic on every RPC with random input lengths at concurrency 32 against a
`seqserve serve` subprocess -- zero unexpected errors and resident memory flat after warm-up.

The CI run (``-m heavy``, CI's second step) lasts SEQSERVE_SOAK_SHORT_S seconds (default 20); the
long one (``-m slow``) lasts SEQSERVE_SOAK_S seconds (default 300).
Figures: SEQSERVE_RELIABILITY_REPORT=FILE pytest -s ...
"""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from tests.integration.harness import ServerProcess
from tests.integration.load import Mix, Tally, closed_loop, metric, pct, report, rss_growth, sample_rss

CONCURRENCY = 32


async def _soak(models, duration_s: float, max_growth_mib: float) -> None:
    with ServerProcess(models, "--max-streams", "64", "--grace-s", "5") as server:
        channels = [grpc.aio.insecure_channel(server.address) for _ in range(4)]
        try:
            mixes = [Mix(channel, seed=i) for i, channel in enumerate(channels)]
            for mix in mixes:
                await mix.prepare()
            tally, samples, stop = Tally(), [], asyncio.Event()
            sampler = asyncio.create_task(sample_rss(server, samples, stop))
            await asyncio.gather(*(closed_loop(mix, tally, CONCURRENCY // len(mixes), duration_s) for mix in mixes))
            stop.set()
            await sampler
            exposition = server.scrape()
        finally:
            for channel in channels:
                await channel.close()
        start_mib, end_mib, growth = rss_growth(samples)
        failures = tally.failures()
        ok = tally.latencies_ms()
        report("soak", seconds=duration_s, concurrency=CONCURRENCY, calls=len(tally.calls),
               per_rpc={rpc: dict(tally.codes(rpc)) for rpc in sorted({c.rpc for c in tally.calls})},
               unexpected=len(failures), failures=[f"{c.rpc} {c.code}: {c.details}" for c in failures[:3]], p50_ms=round(pct(ok, 50), 2), p99_ms=round(pct(ok, 99), 2),
               rss_after_warmup_mib=round(start_mib, 1), rss_end_mib=round(end_mib, 1), rss_growth_mib=round(growth, 2))
        assert not failures, f"{len(failures)} unexpected: {failures[:5]}\n{tally.summary()}"
        assert {c.rpc for c in tally.calls} == set(mixes[0].rpcs)
        # The server counted every call as OK too (its own view, not the client's).
        handled_ok = metric(exposition, "grpc_server_handled_total", grpc_code="OK")
        assert handled_ok >= len(tally.calls)
        assert metric(exposition, "grpc_server_handled_total") == handled_ok
        assert growth <= max_growth_mib, f"resident memory grew {growth:.1f} MiB after warm-up ({samples[::20]})"


@pytest.mark.heavy
async def test_soak_short(module_models):
    await _soak(module_models, float(os.environ.get("SEQSERVE_SOAK_SHORT_S", "20")), max_growth_mib=16.0)


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_soak_long(module_models):
    await _soak(module_models, float(os.environ.get("SEQSERVE_SOAK_S", "300")), max_growth_mib=8.0)
