"""ServeConfig: defaults, flag > env > default precedence, clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import service
from service.core.config import ServeConfig, add_arguments, config_from_args
from service.core.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)


def _parse(argv: list[str], environ: dict[str, str]) -> ServeConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv), environ=environ)


def test_defaults():
    cfg = _parse([], {})
    assert cfg == ServeConfig()
    assert cfg.models == Path(service.__file__).parents[1] / "models"
    assert (cfg.host, cfg.port, cfg.metrics_port, cfg.max_batch_size, cfg.max_streams) == ("127.0.0.1", 50051, 9464, 32, 64)


def test_flag_beats_env_beats_default():
    env = {"SEQSERVE_PORT": "6000", "SEQSERVE_MAX_BATCH_WAIT_MS": "0.5", "SEQSERVE_MODELS": "/srv/models"}
    cfg = _parse(["--port", "7000", "--max-streams", "3"], env)
    assert cfg.port == 7000  # flag over env
    assert cfg.max_batch_wait_ms == 0.5  # env over default
    assert cfg.models == Path("/srv/models")
    assert cfg.max_streams == 3
    assert cfg.max_queue == 256  # default


def test_bad_env_value_names_the_variable():
    with pytest.raises(ValueError, match=r"SEQSERVE_MAX_QUEUE='lots' is not an integer"):
        _parse([], {"SEQSERVE_MAX_QUEUE": "lots"})
    with pytest.raises(ValueError, match=r"max_streams 0 must be at least 1"):
        _parse([], {"SEQSERVE_MAX_STREAMS": "0"})
    with pytest.raises(ValueError, match=r"graph_optimization 'fast' is not one of"):
        _parse([], {"SEQSERVE_GRAPH_OPTIMIZATION": "fast"})
    with pytest.raises(ValueError, match=r"event_loop 'tokio' is not one of auto, uvloop, asyncio"):
        _parse([], {"SEQSERVE_EVENT_LOOP": "tokio"})
    with pytest.raises(ValueError, match=r"inline_idle_graph_ms -1.0 must be 0 or more"):
        _parse(["--inline-idle-graph-ms", "-1"], {})
    with pytest.raises(ValueError, match=r"end_silence_ms 50 must be within 100..10000"):
        _parse(["--end-silence-ms", "50"], {})
    assert _parse([], {"SEQSERVE_END_SILENCE_MS": "1500"}).end_silence_ms == 1500


def test_event_loop_factory_picks_uvloop_unless_asked_for_asyncio(monkeypatch):
    import asyncio
    import sys

    uvloop = pytest.importorskip("uvloop")  # a dependency of the serving install on Linux and macOS

    from service.front.server import describe_loop, event_loop_factory, run_on_loop

    async def running_loop() -> str:
        return describe_loop(asyncio.get_running_loop())

    assert event_loop_factory("asyncio") is None
    assert run_on_loop(running_loop(), event_loop_factory("asyncio")).startswith("asyncio (")
    for choice in ("auto", "uvloop"):
        loop = event_loop_factory(choice)()
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
        assert run_on_loop(running_loop(), event_loop_factory(choice)) == f"uvloop {uvloop.__version__}"
    # Without uvloop: auto falls back to the standard loop; asking for uvloop is an error that says why.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert event_loop_factory("auto") is None
    assert run_on_loop(running_loop(), event_loop_factory("auto")).startswith("asyncio (")
    with pytest.raises(ValueError, match=r"event_loop uvloop: uvloop is not installed"):
        event_loop_factory("uvloop")


def test_help_shows_default_and_env_var():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    assert "--max-batch-size" in text and "SEQSERVE_MAX_BATCH_SIZE" in text and "default 32" in text


@pytest.mark.parametrize(
    "cls, code",
    [
        (InvalidArgument, "INVALID_ARGUMENT"),
        (NotFound, "NOT_FOUND"),
        (ResourceExhausted, "RESOURCE_EXHAUSTED"),
        (Unavailable, "UNAVAILABLE"),
        (DeadlineExceeded, "DEADLINE_EXCEEDED"),
        (Cancelled, "CANCELLED"),
        (Unauthenticated, "UNAUTHENTICATED"),
        (Internal, "INTERNAL"),
    ],
)
def test_error_codes(cls, code):
    err = cls("horizon 900 exceeds the model's maximum 720", field="horizon")
    assert isinstance(err, ServiceError) and err.code == code
    assert err.message == str(err) == "horizon 900 exceeds the model's maximum 720" and err.field == "horizon"


def test_engine_imports_without_torch_or_grpc():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['grpc'] = None\n"
        "import service.core.engine, service.core.tasks.forecast, service.core.tasks.translate, service.core.tasks.generate"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
