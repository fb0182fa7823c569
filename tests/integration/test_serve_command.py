"""`seqserve serve` as users run it: a subprocess on port 0, stopped with SIGTERM."""

from __future__ import annotations

import re
import urllib.request

import pytest

from service.client import SeqserveClient
from tests.integration.harness import SERVING_LINE, ServerProcess


def test_serve_command_runs_until_sigterm_and_drains(module_models):
    """`python -m service.client.cli serve --port 0` logs its port, serves, and exits 0 on SIGTERM."""
    with ServerProcess(module_models, "--grace-s", "1") as server:
        serving_line = server.wait_for_log(SERVING_LINE).string
        assert server.metrics_port and "(event loop: uvloop " in serving_line, serving_line  # auto: uvloop installed
        with SeqserveClient(server.address, timeout=10) as client:
            assert client.health() == "SERVING"
            assert client.generate("First", max_tokens=4, seed=1).completion_tokens == 4
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
            exposition = reply.read().decode()
        assert re.search(
            r'grpc_server_handled_total\{grpc_code="OK",grpc_method="Generate",grpc_service="seqserve.v1.Generator",'
            r'grpc_type="unary"\} 1\.0', exposition), exposition
        server.sigterm()
        assert server.wait(timeout=30) == 0, server.log[-3000:]
        assert "drained" in server.log


def _serve_exits(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "service.client.cli", "serve", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stderr


def _taken_port():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_grpc_port_in_use_is_one_line_naming_the_flag(module_models, workers):
    """Also with --workers 2, whose workers share the port among themselves (SO_REUSEPORT) but
    never with another server."""
    sock, port = _taken_port()
    with sock:
        code, err = _serve_exits("--models", str(module_models), "--port", str(port), "--metrics-port", "0",
                                 "--workers", workers)
    assert code == 1 and "Traceback" not in err, err
    assert f"error: --port {port} / --host 127.0.0.1 (SEQSERVE_PORT, SEQSERVE_HOST): cannot bind gRPC to 127.0.0.1:{port}" in err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_metrics_port_in_use_is_one_line_naming_the_flag(module_models, workers):
    sock, port = _taken_port()
    with sock:
        code, err = _serve_exits("--models", str(module_models), "--port", "0", "--metrics-port", str(port),
                                 "--workers", workers)
    assert code == 1 and "Traceback" not in err, err
    assert f"error: --metrics-port {port} / --metrics-host 127.0.0.1 (SEQSERVE_METRICS_PORT, SEQSERVE_METRICS_HOST): " \
           f"cannot serve /metrics on 127.0.0.1:{port}: Address already in use" in err


def test_a_missing_model_directory_stops_the_server(tmp_path):
    code, err = _serve_exits("--models", str(tmp_path / "nowhere"), "--port", "0", "--metrics-port", "0")
    assert code == 2 and "Traceback" not in err, err
    assert f"error: --models {tmp_path / 'nowhere'} (SEQSERVE_MODELS): no such directory" in err


def test_an_empty_model_directory_says_so_and_serves_what_is_copied_in(tmp_path, module_models):
    import shutil

    empty = tmp_path / "models"
    empty.mkdir()
    with ServerProcess(empty, "--poll-interval-s", "0.2", ready=None) as server:
        server.wait_for_log(r"holds no bundles \(<name>/<version>/manifest\.json\): nothing to serve until one is "
                            r"copied in \(looked for every 0\.2 s\)")
        shutil.copytree(module_models / "tiny-forecast", empty / "tiny-forecast")
        server.wait_for_log(r"model tiny-forecast version 1 \(forecast\) ready in", 60)
