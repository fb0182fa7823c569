"""Shared pytest setup: data directory, thread limits for a 2-core machine, and the tiny model
repositories every server test starts from (built with tests.bundles.make_bundle)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # Two cores here: keep every library single-threaded unless a test asks otherwise.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("SEQSERVE_DATA_DIR", str(REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Where the datasets live (SEQSERVE_DATA_DIR); tests needing it skip when it is absent."""
    path = Path(os.environ["SEQSERVE_DATA_DIR"])
    if not path.is_dir():
        pytest.skip(f"SEQSERVE_DATA_DIR {path} does not exist")
    return path


@dataclass
class BundleSource:
    models: Path  # tiny-translate/1, tiny-forecast/1, tiny-forecast3/1 (3 channels), tiny-generate/1
    spare: Path  # tiny-forecast/2 and /3, tiny-generate/2: other weights, for hot reload


@pytest.fixture(scope="session")
def bundle_source(tmp_path_factory) -> BundleSource:
    """The tiny bundles, built once per session; tests copy them (module_models, models_dir)."""
    pytest.importorskip("torch")
    from tests.bundles import global_forecaster, make_bundle

    models = tmp_path_factory.mktemp("bundles")
    spare = tmp_path_factory.mktemp("spare")
    for task in ("translate", "forecast", "generate", "recognize"):
        make_bundle(models, task)
    make_bundle(models, "forecast", name="tiny-forecast3", channels=3, seed=3)
    make_bundle(models, "forecast", name="tiny-global", seasonal=True, seed=4, edit=global_forecaster)
    make_bundle(spare, "forecast", version="2", seed=1)
    make_bundle(spare, "forecast", version="3", seed=2)
    make_bundle(spare, "generate", version="2", seed=1)
    return BundleSource(models, spare)


@pytest.fixture(scope="module")
def module_models(bundle_source, tmp_path_factory) -> Path:
    """A private copy of the model directory for one test module's server."""
    out = tmp_path_factory.mktemp("models") / "models"
    shutil.copytree(bundle_source.models, out)
    return out


@pytest.fixture
def models_dir(bundle_source, tmp_path) -> Path:
    """A private copy of the model directory that a test may change."""
    out = tmp_path / "models"
    shutil.copytree(bundle_source.models, out)
    return out
