"""The Open Inference Protocol through the ecosystem's own client: tritonclient, in its own venv
(.venv-oip, made by tests/oip/setup.sh; CI makes it), against `seqserve serve` on the bundled
models. Its answers must equal seqserve.v1's for the same rows sent one by one."""

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

PYTHON = REPO / ".venv-oip" / "bin" / "python"
BUNDLES = tuple(sorted(p.name for p in (REPO / "models").iterdir() if p.is_dir()))  # every bundled model

pytestmark = pytest.mark.skipif(
    not PYTHON.exists() and not os.environ.get("CI"),
    reason="tritonclient's venv is missing: run `bash tests/oip/setup.sh` (CI does)",
)


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """What tritonclient received, and a seqserve.v1 client on the same server."""
    models = tmp_path_factory.mktemp("oip-models")
    for name in BUNDLES:
        shutil.copytree(REPO / "models" / name, models / name)
    with ServerProcess(models) as server:
        run = subprocess.run([str(PYTHON), str(REPO / "tests" / "oip" / "tritonclient_checks.py"), server.address,
                              ",".join(BUNDLES)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        with SeqserveClient(server.address) as client:
            yield json.loads(run.stdout), client


def test_health_and_metadata(checked):
    seen, _ = checked
    assert seen["server"]["name"] == "seqserve"
    models = seen["models"]
    assert models["translate-de-en"]["inputs"] == [["text", "BYTES", [-1]]]
    assert [o[0] for o in models["translate-de-en"]["outputs"]] == ["translation", "score", "unknown_source_tokens"]
    assert models["forecast-etth1"]["inputs"] == [["history", "FP32", [-1, -1]]]
    assert models["forecast-etth1"]["outputs"] == [["forecast", "FP32", [-1, -1]], ["quantiles", "FP32", [-1, -1, -1]]]
    assert models["generate-shakespeare"]["inputs"] == [["prompt", "BYTES", [-1]], ["continuation", "BYTES", [-1]]]
    assert all(m["versions"] == ["1"] for m in models.values())
    assert set(models) == set(BUNDLES)  # every bundled model answered a row through tritonclient
    assert {tuple(m["answered"][:1]) for m in models.values()} <= {("translation",), ("forecast",), ("text",),
                                                                    ("transcript",)}


def test_a_batch_of_rows_answers_as_separate_calls(checked):
    from tests.oip.inputs import HISTORY, PROMPTS, TEXTS

    seen, client = checked
    for text, got, score in zip(TEXTS, seen["translate"]["translation"], seen["translate"]["score"], strict=True):
        alone = client.translate(text, beam_size=4).translations[0]
        assert (got, score) == (alone.text, pytest.approx(alone.score, abs=1e-9))
    assert seen["translate"]["unknown_source_tokens"] == [0, 0, 2]
    for k, row in enumerate((HISTORY, 2 * HISTORY + 5)):
        alone = client.forecast(row.tolist(), horizon=24, quantiles=[0.1, 0.5, 0.9], model="forecast-etth1")
        # rows ride the batcher: a batch of 2 sums floats in another order than a batch of 1 (the graph is float32)
        np.testing.assert_allclose(seen["forecast_FP64"]["forecast"][k], alone.forecast, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.array(seen["forecast_FP64"]["quantiles"][k])[:, 0], alone.quantiles[0.1],
                                   rtol=1e-5, atol=1e-5)
        # FP32 in, FP32 out: the same forecast from float32-rounded history
        np.testing.assert_allclose(seen["forecast_FP32"]["forecast"][k], alone.forecast, rtol=1e-4, atol=1e-4)
    for prompt, text in zip(PROMPTS, seen["generate"]["text"], strict=True):
        assert text == client.generate(prompt, max_tokens=30, seed=7, temperature=0.8).text


def test_errors_keep_the_gRPC_codes_and_messages(checked):
    seen, client = checked
    errors = seen["errors"]
    assert errors["unknown model"].startswith("model 'no-such-model' not found; the models are: forecast-etth1")
    assert errors["parameter"] == "parameters.beam_size: beam_size 99 must be within 0..8 (0 or 1 = greedy)"
    assert "sequences (state kept between requests) are not supported" in errors["sequence"]
    assert client.health() == "SERVING"  # and the server kept serving
