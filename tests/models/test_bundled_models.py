"""The bundled models in models/: what they record, that `seqserve serve` serves them with no
arguments, and that evaluating them again reproduces the figures in their manifests."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest

from service.client import SeqserveClient
from service.contract import read_manifest
from tests.conftest import REPO
from tests.integration.harness import ServerProcess

MODELS = REPO / "models"
BUNDLES = sorted(p.parent for p in MODELS.glob("*/*/manifest.json"))
SIZE_LIMIT = 30 * 1000 * 1000  # "under 30 MB"
# The figures `seqserve-train evaluate --write-manifest` stored that must reproduce within 1%.
KEY_FIGURES = {"translate": ("bleu", "chrf", "bleu_lc"), "forecast": ("mse", "mae"), "generate": ("nats_per_char",),
               "recognize": ("accuracy", "der"), "zero_shot": ("relative_mase", "relative_wql")}


def held_out(bundle: Path) -> str:
    """The evaluation key of a bundle's held-out figures: its test split's, or for a global forecaster
    (trained on no single dataset) the zero-shot benchmark's."""
    return "zero_shot" if "zero_shot" in read_manifest(bundle).evaluation else "test"

pytestmark = pytest.mark.skipif(not BUNDLES, reason="models/ holds no bundles")


def test_bundles_record_training_data_and_evaluation_and_stay_small():
    total = sum(f.stat().st_size for b in BUNDLES for f in b.iterdir())
    assert total < SIZE_LIMIT, f"bundles take {total / 1e6:.1f} MB; the limit is 30 MB"
    for bundle in BUNDLES:
        m = read_manifest(bundle)
        assert m.training["seconds"] > 0 and m.training["seed"] is not None, bundle
        files = m.training["data"]["files"]
        assert files and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in files.values()), bundle
        key = held_out(bundle)
        test = m.evaluation[key]
        assert all(isinstance(test[k], float) and math.isfinite(test[k]) for k in KEY_FIGURES[m.task if key == "test" else key]), bundle
        if m.weights == "int8":  # int8 weights only where every figure held within 1% of float32
            from training.quantize import compare_figures

            float32 = m.extra["quantization"]["evaluation_float32"]
            assert set(float32) == set(m.evaluation), bundle
            assert compare_figures(float32, m.evaluation, 0.01) == [], bundle


@pytest.mark.parametrize("bundle", BUNDLES, ids=[f"{b.parent.name}/{b.name}" for b in BUNDLES])
def test_the_preset_of_the_same_name_is_how_the_bundle_was_trained(bundle):
    """`scripts/build_bundles.sh NAME` rebuilds the bundle: every setting of the preset (threads
    included: they change float sums) is what the manifest says the bundle was trained with."""
    import yaml

    preset = yaml.safe_load((REPO / "training" / "presets" / f"{bundle.parent.name}.yaml").read_text())
    trained = read_manifest(bundle).training["run_config"]
    for section in ("data", "model", "train"):
        for key, value in preset.get(section, {}).items():
            if (section, key) in (("train", "out_dir"), ("train", "progress")):  # where it writes, not how it trains
                continue
            assert trained[section].get(key) == value, f"{section}.{key}: preset {value!r}, bundle {trained[section].get(key)!r}"


@pytest.mark.heavy  # evaluates the whole test split again: minutes
@pytest.mark.parametrize("bundle", BUNDLES, ids=[f"{b.parent.name}/{b.name}" for b in BUNDLES])
def test_evaluating_a_bundle_again_reproduces_its_manifest(bundle, data_dir):
    from training.evaluate import evaluate_bundle

    if held_out(bundle) == "zero_shot":
        from training import zeroshot as Z

        stored = read_manifest(bundle).evaluation["zero_shot"]
        name, run = Z.bundle_model(bundle)
        again = Z.figures(Z.run_benchmark({name: run}), name)
        for key in KEY_FIGURES["zero_shot"]:
            assert again[key] == pytest.approx(stored[key], rel=0.01), key
        return
    stored = read_manifest(bundle).evaluation["test"]
    again = evaluate_bundle(bundle, "test", data_dir)
    for key in KEY_FIGURES[again["task"]]:
        assert again[key] == pytest.approx(stored[key], rel=0.01), key
    for horizon, figures in stored.get("by_horizon", {}).items():
        assert again["by_horizon"][horizon]["mse"] == pytest.approx(figures["mse"], rel=0.01), horizon


BEAM_RUNS = [(b, key) for b in BUNDLES for key in read_manifest(b).evaluation if re.fullmatch(r"test_beam\d+", key)]


@pytest.mark.heavy  # evaluates the whole test split again: minutes
@pytest.mark.parametrize("bundle,key", BEAM_RUNS, ids=[f"{b.parent.name}/{k}" for b, k in BEAM_RUNS])
def test_beam_search_figures_reproduce_through_the_serving_engine(bundle, key, data_dir):
    from training.evaluate import evaluate_bundle

    stored = read_manifest(bundle).evaluation[key]
    again = evaluate_bundle(bundle, "test", data_dir, beam=stored["beam"])
    for figure in KEY_FIGURES["translate"]:
        assert again[figure] == pytest.approx(stored[figure], rel=0.01), figure


def test_seqserve_serve_with_no_arguments_serves_every_bundled_model():
    """The README's first command: `seqserve serve` loads models/ of the checkout."""
    unset = {k: None for k in os.environ if k.startswith("SEQSERVE_")}
    with ServerProcess(None, "--grace-s", "1", env=unset, cwd="/") as server:
        with SeqserveClient(server.address, timeout=30) as client:
            listed = {(m["name"], m["version"]): m for m in client.list_models()}
            for bundle in BUNDLES:
                info = listed[(bundle.parent.name, bundle.name)]
                assert info["state"] == "READY" and info["weights"] == read_manifest(bundle).weights, info
            tasks = {m["task"] for m in listed.values()}
            if "translate" in tasks:
                text = client.translate(["Ein Mann fährt Fahrrad."]).translations[0].text
                assert re.search(r"[A-Za-z]{2}", text), text
            if "forecast" in tasks:
                history = [math.sin(i / 24 * 2 * math.pi) for i in range(400)]
                result = client.forecast(history, horizon=24)
                assert len(result.forecast) == 24 and all(math.isfinite(v) for v in result.forecast)
                seasonal = [m for m in listed.values() if m.get("forecast", {}).get("season_input")]
                if seasonal:  # told the frequency, a global forecaster continues a daily cycle of hourly values
                    hourly = client.forecast(history, horizon=24, frequency="h", model=seasonal[0]["name"])
                    truth = [math.sin(i / 24 * 2 * math.pi) for i in range(400, 424)]
                    assert hourly.season_length == 24
                    assert sum(abs(a - b) for a, b in zip(hourly.forecast, truth)) / 24 < 0.1, hourly.forecast
            if "generate" in tasks:
                out = client.generate("ROMEO:", max_tokens=60, seed=1, temperature=0.8)
                assert out.completion_tokens == 60 and len(out.text) > 20
            recordings = Path(os.environ["SEQSERVE_DATA_DIR"]) / "fsdd" / "recordings"  # set by tests/conftest.py
            if "recognize" in tasks and recordings.is_dir():
                from training.data.speech import digit_error_rate  # edit distance over words
  # ten test takes, as a phone number is spoken
                speakers = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
                digits = [4, 1, 5, 5, 0, 9, 2, 6, 8, 3]
                audio = _joined([recordings / f"{d}_{speakers[i % 6]}_1.wav" for i, d in enumerate(digits)])
                said = client.recognize(audio).transcript.split()
                assert digit_error_rate([said], [[str(d) for d in digits]])[1] <= 2, said
                streaming = [m["name"] for m in listed.values() if m.get("speech", {}).get("streaming")]
                if streaming:  # a stream's final result is the streaming model's offline answer
                    pcm = audio[44:]
                    chunks = (pcm[i : i + 1600] for i in range(0, len(pcm), 1600))
                    final = list(client.recognize_stream(chunks, sample_rate_hertz=8000, model=streaming[0]))[-1]
                    offline = client.recognize(audio, model=streaming[0]).transcript
                    assert final.is_final and final.transcript == offline
                    assert digit_error_rate([offline.split()], [[str(d) for d in digits]])[1] <= 3, offline


def _joined(paths: list[Path]) -> bytes:
    """One 8 kHz WAV file: the recordings, with 200 ms of silence between them."""
    import io
    import wave

    pcm = b""
    for path in paths:
        with wave.open(str(path), "rb") as w:
            pcm += w.readframes(w.getnframes()) + b"\x00\x00" * 1600
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm)
    return out.getvalue()


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: f"{b.parent.name}/{b.name}")
def test_no_manifest_carries_a_build_machine_path(bundle):
    """Paths in a manifest are relative (the checkpoint a bundle came from), never the builder's /home/... ."""
    import json

    def strings(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value

    manifest = json.loads((bundle / "manifest.json").read_text())
    absolute = [s for s in strings(manifest) if s.startswith(("/work", "/home", "/tmp", "/root"))]
    assert not absolute, absolute
