"""`seqserve serve` as users run it: a subprocess on port 0, stopped with SIGTERM."""

from __future__ import annotations

import re
import urllib.request

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
