"""An independent Open Inference Protocol client in another language: grpc-js loading the spec's
proto at run time (tests/oip/js, installed by tests/oip/setup.sh; CI runs it), against `seqserve
serve` on the bundled models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from service.client import SeqserveClient
from tests.conftest import REPO
from tests.integration.harness import ServerProcess

JS = REPO / "tests" / "oip" / "js"
pytestmark = pytest.mark.skipif(
    not (JS / "node_modules" / "@grpc" / "grpc-js").is_dir() and not os.environ.get("CI"),
    reason="grpc-js is missing: run `bash tests/oip/setup.sh` (CI does)",
)


def test_grpc_js_reads_and_writes_the_wire_format(tmp_path):
    for name in ("translate-de-en", "forecast-etth1"):
        shutil.copytree(REPO / "models" / name, tmp_path / name)
    with ServerProcess(tmp_path) as server:
        run = subprocess.run(["node", str(JS / "client.js"), server.address], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        seen = json.loads(run.stdout)
        with SeqserveClient(server.address) as client:
            texts = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee."]
            want = [client.translate(t, beam_size=4).translations[0].text for t in texts]
            history = np.sin(np.arange(400) / 24 * 2 * np.pi).astype(np.float32).astype(np.float64)
            forecast = client.forecast(history.tolist(), horizon=6).forecast
    assert seen["ready"] is True and seen["forecast_inputs"] == [["history", "FP32", [-1, -1]]]
    assert seen["typed"] == seen["raw"] == want  # typed bytes_contents and raw framing alike
    assert seen["forecast_shape"] == [1, 6]
    np.testing.assert_allclose(seen["forecast"], forecast, rtol=1e-5, atol=1e-5)
    assert seen["error"]["code"] == 5 and seen["error"]["details"].startswith("model 'nope' not found")
