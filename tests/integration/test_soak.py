"""Soak: mixed traffic on every RPC with random input lengths at concurrency 32 against a
`seqserve serve` subprocess -- zero unexpected errors, resident memory flat after warm-up, and
nothing left open afterwards (generation and recognition streams, requests in flight).

The CI run (``-m heavy``, CI's second step) lasts SEQSERVE_SOAK_SHORT_S seconds (default 20); the
long one (``-m slow``) lasts SEQSERVE_SOAK_S seconds (default 300).
Figures: SEQSERVE_RELIABILITY_REPORT=FILE pytest -s ...
"""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from tests.integration.harness import ServerProcess, wait_until
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
            # No leak: every stream (generation and recognition) left its step loop, no request is in
            # flight (the server notes a call's end just after the client saw it).
            await wait_until(lambda: metric(server.scrape(), "seqserve_requests_in_flight") == 0
                             and metric(server.scrape(), "seqserve_active_streams") == 0,
                             what="the server to close every stream and call")
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
        assert metric(exposition, "seqserve_active_streams") == 0
        # Speech went through both paths: the dynamic batcher (Recognize) and the step loop (streams).
        assert metric(exposition, "seqserve_audio_seconds_total", mode="offline") > 0
        assert metric(exposition, "seqserve_audio_seconds_total", mode="stream") > 0
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
