"""Shared pytest setup: data directory, thread limits for a 2-core machine."""

import os
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
