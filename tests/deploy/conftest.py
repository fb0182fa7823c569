"""Fixtures for the deployment tests: repository paths and the external tools they run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTALL_HINT = "install it with scripts/install_prometheus.sh (Debian packages prometheus, docker-compose)"


def tool(name: str) -> str:
    """Path of an external binary, or skip the test saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} binary not found on PATH; {INSTALL_HINT}")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return tool("prometheus")


@pytest.fixture(scope="session")
def compose_bin() -> str:
    return tool("docker-compose")
