"""Fixtures for the engine tests: tiny real bundles (built once), per-test repositories, engines."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.core.config import ServeConfig
from service.core.engine import Engine
from service.front.metrics import Metrics
from tests.bundles import make_bundle

# (task, name, cell) built once per session; tests copy what they need into their own repository.
BUILDS = {
    "tiny-forecast": ("forecast", "lstm"),
    "tiny-translate": ("translate", "lstm"),
    "tiny-generate": ("generate", "lstm"),
    "gru-translate": ("translate", "gru"),
    "gru-generate": ("generate", "gru"),
}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> a built bundle folder (version 1) outside any test's repository."""
    root = tmp_path_factory.mktemp("built")
    return {name: make_bundle(root, task, name=name, cell=cell, seed=1) for name, (task, cell) in BUILDS.items()}


@pytest.fixture
def add_bundle(built: dict[str, Path]) -> Callable[..., Path]:
    """add_bundle(repo, name, version="1") copies a built bundle into repo/<name>/<version>/,
    rewriting the manifest's version so the directory and manifest agree."""

    def add(repo: Path, name: str, version: str = "1") -> Path:
        dest = repo / name / version
        staging = repo / f".staging-{name}-{version}"  # invisible to the scanner, renamed at once
        shutil.copytree(built[name], staging)
        manifest = staging / "manifest.json"
        data = json.loads(manifest.read_text())
        data["version"] = version
        manifest.write_text(json.dumps(data))
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(dest)
        return dest

    return add


@pytest.fixture
def repo(tmp_path: Path, add_bundle) -> Path:
    """A repository with the three lstm tiny models, version 1."""
    root = tmp_path / "models"
    root.mkdir()
    for name in ("tiny-forecast", "tiny-translate", "tiny-generate"):
        add_bundle(root, name)
    return root


def _config(models: Path, **overrides) -> ServeConfig:
    """A config for tests: no polling unless asked, single-threaded graphs."""
    values = dict(models=models, poll_interval_s=0.0, worker_threads=2, grace_s=2.0)
    values.update(overrides)
    return ServeConfig(**values)


@pytest.fixture
async def make_engine() -> AsyncIterator[Callable[..., Awaitable[Engine]]]:
    """make_engine(models, **config) -> a started Engine recording into its own Metrics (a fresh
    registry: tests read what happened there, see ``step_calls``), stopped after the test."""
    engines: list[Engine] = []

    async def make(models: Path, **overrides) -> Engine:
        engine = Engine(_config(models, **overrides), Metrics(CollectorRegistry(), process_metrics=False))
        engines.append(engine)
        await engine.start()
        return engine

    yield make
    for engine in engines:
        await engine.stop(0.5)


@pytest.fixture
async def engine(repo: Path, make_engine) -> Engine:
    return await make_engine(repo)
