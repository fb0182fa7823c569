"""Hot reload faults under load: while 16 callers forecast without pause, new versions arrive with
a corrupt ONNX graph, a missing graph file and a manifest that is not JSON. None of them replaces
the serving version, not one call fails, each failure is logged and counted; then a good version
arrives and takes over, still without a failed call."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time

import grpc
import numpy as np
from prometheus_client import CollectorRegistry

from service.front.metrics import Metrics
from service.v1 import forecast_pb2, models_pb2
from tests.integration.harness import serving, wait_until
from tests.integration.load import report

MODEL = "tiny-forecast"


def _install(staging, dst) -> None:
    """Rename a finished bundle directory into place (atomic, as a deploy does)."""
    os.rename(staging, dst)


async def test_broken_versions_never_replace_the_serving_one_under_load(models_dir, bundle_source, tmp_path, caplog):
    from tests.bundles import make_bundle

    good = make_bundle(tmp_path / "good", "forecast", name=MODEL, version="5", seed=5)
    caplog.set_level(logging.WARNING, logger="service.core.repository")
    metrics = Metrics(CollectorRegistry())
    rng = np.random.default_rng(0)
    histories = [np.cumsum(rng.normal(0, 1, int(n))).tolist() for n in rng.integers(8, 72, 64)]
    versions: list[str] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async with serving(models_dir, poll_interval_s=0.05, metrics=metrics) as s:
        async def caller(i: int) -> None:
            while not stop.is_set():
                request = forecast_pb2.ForecastRequest(model=MODEL, history=histories[(i * 7 + len(versions)) % 64])
                try:
                    versions.append((await s.forecaster.Forecast(request, timeout=10)).version)
                except grpc.aio.AioRpcError as err:
                    failures.append(f"{err.code().name}: {err.details()}")

        async def state(version: str) -> str:
            listed = (await s.models.ListModels(models_pb2.ListModelsRequest())).models
            return next((m.state for m in listed if m.name == MODEL and m.version == version), "")

        callers = [asyncio.create_task(caller(i)) for i in range(16)]
        started = time.monotonic()
        faults = {}
        model_dir = models_dir / MODEL

        # 2: the graph is not ONNX.
        staging = tmp_path / "v2"
        shutil.copytree(bundle_source.spare / MODEL / "2", staging)
        (staging / "forecast.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf ModelProto" * 50)
        faults["2"] = "corrupt ONNX"
        # 3: the graph file the manifest names is missing.
        staging3 = tmp_path / "v3"
        shutil.copytree(bundle_source.spare / MODEL / "3", staging3)
        (staging3 / "forecast.onnx").unlink()
        faults["3"] = "missing graph file"
        # 4: the manifest is not JSON.
        staging4 = tmp_path / "v4"
        shutil.copytree(bundle_source.spare / MODEL / "2", staging4)
        (staging4 / "manifest.json").write_text('{"schema_version": 1, "name": ')
        faults["4"] = "manifest is not JSON"
        for version, path in (("2", staging), ("3", staging3), ("4", staging4)):
            _install(path, model_dir / version)
            await wait_until(lambda v=version: _is(state(v), "FAILED"), what=f"version {version} to fail")
            # Load keeps coming while the broken version sits there: 64 more calls answered.
            await wait_until(_calls(versions, failures, 64), what="64 more calls while the broken version sits there")
        served_before = set(versions)

        # 5: a good version takes over under the same load.
        _install(good, model_dir / "5")
        await wait_until(lambda: _is(state("5"), "READY"), what="version 5 to load")
        await wait_until(lambda: _answers(versions, "5"), what="version 5 to answer")
        # ... and goes on answering: 64 more calls after its first.
        await wait_until(_calls(versions, failures, 64), what="64 more calls on version 5")
        stop.set()
        await asyncio.gather(*callers)
        elapsed = time.monotonic() - started
        errors = {v: (await s.models.GetModel(models_pb2.GetModelRequest(name=MODEL, version=v))).model.error
                  for v in faults}

    counted = {v: sum(metrics.registry.get_sample_value(
        "seqserve_model_load_failures_total", {"model": MODEL, "version": v, "reason": stage}) or 0
        for stage in ("bundle", "build", "warmup")) for v in faults}
    logged = [r.getMessage() for r in caplog.records if r.name == "service.core.repository" and r.levelno >= logging.WARNING]
    report("reload_faults", calls=len(versions) + len(failures), failed=len(failures), seconds=round(elapsed, 1),
           faults=faults, errors={v: e.rsplit("/", 1)[-1][:100] for v, e in errors.items()}, counted=counted,
           versions_answering=sorted(set(versions)))
    assert not failures, failures[:5]
    assert served_before == {"1"}  # no broken version ever answered
    assert set(versions) == {"1", "5"}
    assert all(errors.values()), errors
    assert counted == {"2": 1, "3": 1, "4": 1}
    for version in faults:
        assert any(f"version {version}" in line for line in logged), logged


async def _is(state, want: str) -> bool:
    return await state == want


def _calls(versions: list[str], failures: list[str], more: int):
    """A condition: ``more`` calls have ended (answered or failed) since now."""
    target = len(versions) + len(failures) + more
    return lambda: len(versions) + len(failures) >= target


def _answers(versions: list[str], version: str) -> bool:
    return version in versions[-16:]
