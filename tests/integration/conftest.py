"""Integration fixtures: tiny real bundles (built once per session) and per-test model directories."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class BundleSource:
    models: Path  # tiny-translate/1, tiny-forecast/1, tiny-forecast3/1 (3 channels), tiny-generate/1
    spare: Path  # tiny-forecast/2 and /3: other weights, for hot reload


@pytest.fixture(scope="session")
def bundle_source(tmp_path_factory) -> BundleSource:
    torch = pytest.importorskip("torch")
    from tests.bundles import make_bundle

    torch.set_num_threads(1)
    models = tmp_path_factory.mktemp("bundles")
    spare = tmp_path_factory.mktemp("spare")
    for task in ("translate", "forecast", "generate"):
        make_bundle(models, task)
    make_bundle(models, "forecast", name="tiny-forecast3", channels=3, seed=3)
    make_bundle(spare, "forecast", version="2", seed=1)
    make_bundle(spare, "forecast", version="3", seed=2)
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
