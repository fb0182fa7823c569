"""`seqserve serve` as users run it: a subprocess on port 0, stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request

from service.client import SeqserveClient


def test_serve_command_runs_until_sigterm_and_drains(module_models):
    """`python -m service.client.cli serve --port 0` logs its port, serves, and exits 0 on SIGTERM."""
    env = {**os.environ, "SEQSERVE_MODELS": str(module_models), "SEQSERVE_METRICS_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.client.cli", "serve", "--port", "0", "--grace-s", "1", "--intra-op-threads", "1"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        port = metrics_port = None
        for line in proc.stderr:
            match = re.search(r"serving gRPC on 127\.0\.0\.1:(\d+), metrics on 127\.0\.0\.1:(\d+)", line)
            if match:
                port, metrics_port = int(match.group(1)), int(match.group(2))
                assert "(event loop: uvloop " in line, line  # --event-loop auto, uvloop installed
            if "engine started" in line:
                break
        assert port, "the server never logged its port"
        with SeqserveClient(f"127.0.0.1:{port}", timeout=10) as client:
            assert client.health() == "SERVING"
            assert client.generate("First", max_tokens=4, seed=1).completion_tokens == 4
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            exposition = reply.read().decode()
        assert re.search(
            r'grpc_server_handled_total\{grpc_code="OK",grpc_method="Generate",grpc_service="seqserve.v1.Generator",'
            r'grpc_type="unary"\} 1\.0', exposition), exposition
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0, rest
        assert "drained" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
