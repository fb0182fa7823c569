"""`seqserve serve --workers 2`: two serving processes behind one address, one supervisor. Calls
over several channels reach both workers; /metrics is their sum; the stream cap counts every
worker's streams; a worker killed with SIGKILL under load is replaced while the other keeps serving,
and the calls it held end UNAVAILABLE, none hang; a new version reaches every worker; SIGTERM drains
both and the supervisor exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc

from service.v1 import forecast_pb2, forecast_pb2_grpc, generate_pb2, generate_pb2_grpc
from tests.integration.harness import ServerProcess, wait_until
from tests.integration.load import Mix, Tally, closed_loop, metric, report

WORKERS = ("--workers", "2")
READY = "serving gRPC on"  # the supervisor says so once every worker has loaded and bound the port


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return sorted(out)


def _workers(server: ServerProcess) -> list[int]:
    """The worker processes: the supervisor's children running seqserve serve."""
    return [p for p in _children(server.proc.pid) if b"service.client.cli" in Path(f"/proc/{p}/cmdline").read_bytes()]


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _history(n: int = 48) -> list[float]:
    return [float(i % 7) + 0.1 * i for i in range(n)]


async def _forecasts(channels: list[grpc.aio.Channel], n: int) -> list[str]:
    stubs = [forecast_pb2_grpc.ForecasterStub(c) for c in channels]
    replies = await asyncio.gather(*(stubs[i % len(stubs)].Forecast(
        forecast_pb2.ForecastRequest(model="tiny-forecast", history=_history())) for i in range(n)))
    return [r.model for r in replies]


async def test_two_workers_answer_on_one_address_and_metrics_are_their_sum(module_models):
    with ServerProcess(module_models, *WORKERS, ready=READY) as server:
        workers = _workers(server)
        assert len(workers) == 2, server.log[-2000:]
        before = server.scrape()
        cpu = {p: _cpu(p) for p in workers}
        # Sixteen connections: all on one worker once in 2 ** 15 runs.
        channels = [grpc.aio.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(16)]
        try:
            models = await _forecasts(channels, 400)
        finally:
            for c in channels:
                await c.close()
        after = server.scrape()
        busy = {p: _cpu(p) - cpu[p] for p in workers}
    assert set(models) == {"tiny-forecast"}
    # SO_REUSEPORT spread the connections over both workers: each computed forecasts.
    assert all(seconds > 0.05 for seconds in busy.values()), busy
    handled = (metric(after, "grpc_server_handled_total", grpc_method="Forecast", grpc_code="OK")
               - metric(before, "grpc_server_handled_total", grpc_method="Forecast", grpc_code="OK"))
    assert handled == 400  # every call counted once, whichever worker answered
    assert metric(after, "seqserve_workers") == 2
    assert metric(after, "seqserve_model_info", model="tiny-forecast") == 1  # a fact, not a sum
    report("workers", cpu_seconds_per_worker=busy, forecasts=handled)


async def test_the_stream_cap_counts_the_streams_of_every_worker(module_models):
    cap = 3
    with ServerProcess(module_models, *WORKERS, "--max-streams", str(cap), "--max-tokens", "100000",
                       ready=READY) as server:
        channels = [grpc.aio.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(8)]
        try:
            calls, codes = [], []
            for c in channels:  # one long stream per connection, spread over both workers
                call = generate_pb2_grpc.GeneratorStub(c).GenerateStream(
                    generate_pb2.GenerateRequest(model="tiny-generate", prompt="First", max_tokens=100000,
                                                 temperature=0.0))  # greedy: no EOS from this prompt
                try:
                    await call.read()
                    codes.append("OK")
                    calls.append(call)
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code().name)
                    assert "of 3 decoding streams are in use" in err.details(), err.details()
            assert codes.count("OK") == cap, codes  # not 3 per worker
            for call in calls:
                call.cancel()
        finally:
            for c in channels:
                await c.close()


async def test_a_worker_killed_under_load_is_replaced_and_no_call_hangs(module_models):
    with ServerProcess(module_models, *WORKERS, ready=READY) as server:
        victim = _workers(server)[0]
        channels = [grpc.aio.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(6)]
        try:
            mixes = [Mix(c, seed=40 + i, weights={"Forecast": 3, "Generate": 1, "GenerateStream": 2, "Translate": 1})
                     for i, c in enumerate(channels)]
            for mix in mixes:
                await mix.prepare()
            before = server.scrape()
            tally, stop = Tally(), asyncio.Event()
            loading = asyncio.gather(*(closed_loop(m, tally, 3, 60.0, stop=stop, timeout_s=20.0, backoff_s=0.05)
                                       for m in mixes))
            await wait_until(lambda: len(tally.calls) >= 100, timeout=60, what="100 calls")
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            server.wait_for_log(r"worker \d \(pid %d\) exited with signal SIGKILL" % victim, 30)
            await wait_until(lambda: len(_workers(server)) == 2 and server.count("worker .* ready: gRPC") >= 3,
                             timeout=60, what="a new worker")
            replaced_at = time.monotonic()
            await asyncio.sleep(1.0)  # load on the new pair
            stop.set()
            await loading
            after = server.scrape()
            # ... and fresh channels reach the server as before
            assert set(await _forecasts(channels, 40)) == {"tiny-forecast"}
        finally:
            for c in channels:
                await c.close()
    codes = tally.codes()
    at_kill = [c for c in tally.calls if c.code != "OK"]
    report("worker_killed", calls=len(tally.calls), codes=dict(codes), replaced_after_s=round(replaced_at - killed_at, 2),
           restarts=metric(after, "seqserve_worker_restarts_total"))
    assert set(codes) <= {"OK", "UNAVAILABLE"}, tally.summary()  # retryable, never DEADLINE_EXCEEDED: none hung
    assert codes["OK"] > 100 and sum(c.start > replaced_at and c.code == "OK" for c in tally.calls) > 0
    assert all(c.end - c.start < 15 for c in at_kill), at_kill
    assert metric(after, "seqserve_worker_restarts_total") == 1 and metric(after, "seqserve_workers") == 2
    # What the dead worker had counted stays counted: totals never go back.
    assert (metric(after, "grpc_server_started_total", grpc_method="Forecast")
            >= metric(before, "grpc_server_started_total", grpc_method="Forecast"))


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(module_models):
    """Also when the signal reaches the workers again (the supervisor forwards it as SIGTERM)."""
    with ServerProcess(module_models, *WORKERS, "--grace-s", "30", "--max-tokens", "100000", ready=READY) as server:
        workers = _workers(server)
        channels = [grpc.aio.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(6)]
        try:
            streams = [generate_pb2_grpc.GeneratorStub(c).GenerateStream(
                generate_pb2.GenerateRequest(model="tiny-generate", prompt="First", max_tokens=6000, temperature=0.0))
                for i, c in enumerate(channels)]
            for s in streams:
                await s.read()  # admitted and running
            server.sigterm()
            await asyncio.sleep(0.2)
            for pid in workers:  # Ctrl-C or systemd signal every process of the group: the workers
                os.kill(pid, signal.SIGINT)  # must go on draining, not die of the second signal
                os.kill(pid, signal.SIGTERM)
            finished = []
            for s in streams:
                last = None
                while (chunk := await s.read()) != grpc.aio.EOF:
                    last = chunk
                finished.append(last is not None and last.finish_reason == "length" and last.completion_tokens == 6000)
            code = await asyncio.to_thread(server.wait, 60)
        finally:
            for c in channels:
                await c.close()
    assert code == 0, server.log[-3000:]
    assert all(finished)
    assert server.count("drained") == 2 and "every worker stopped" in server.log
    assert not any(Path(f"/proc/{p}").exists() for p in workers)


def test_the_python_client_spreads_its_calls_over_its_channels(module_models):
    """SeqserveClient(channels=16), called from four threads, keeps both workers busy (all sixteen
    connections on one worker: once in 2 ** 15 runs)."""
    from concurrent.futures import ThreadPoolExecutor

    from service.client import SeqserveClient

    with ServerProcess(module_models, *WORKERS, ready=READY) as server:
        workers = _workers(server)
        cpu = {p: _cpu(p) for p in workers}
        with SeqserveClient(server.address, timeout=30, channels=16) as client, ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: client.forecast(_history(), model="tiny-forecast").model, range(400)))
        busy = {p: _cpu(p) - cpu[p] for p in workers}
    assert set(results) == {"tiny-forecast"}
    assert all(seconds > 0.05 for seconds in busy.values()), busy


async def test_a_new_version_reaches_every_worker(models_dir, bundle_source):
    """Hot reload with --workers 2: every worker polls the repository and swaps the version in, so
    soon every connection, whichever worker it reached, is answered by version 2."""
    from tests.bundles import install

    with ServerProcess(models_dir, *WORKERS, "--poll-interval-s", "0.2", ready=READY) as server:
        channels = [grpc.aio.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(16)]
        stubs = [forecast_pb2_grpc.ForecasterStub(c) for c in channels]
        request = forecast_pb2.ForecastRequest(model="tiny-forecast", history=_history())
        try:
            assert {(await s.Forecast(request)).version for s in stubs} == {"1"}
            install(bundle_source.spare / "tiny-forecast" / "2", models_dir / "tiny-forecast" / "2")

            async def everywhere() -> bool:
                return {(await s.Forecast(request)).version for s in stubs} == {"2"}

            await wait_until(everywhere, timeout=60, what="version 2 on every connection")
        finally:
            for c in channels:
                await c.close()
    assert server.count(r"model tiny-forecast version 2 \(forecast\) ready") == 2  # once per worker
