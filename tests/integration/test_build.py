"""seqserve-train build: a user's files to a bundle that a running server hot-loads, for every task it
builds; bad data is refused before training and a failed build leaves the repository as it was."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re

import numpy as np
import pytest

from service.v1 import forecast_pb2, generate_pb2, models_pb2
from tests.integration.harness import serving, wait_until
from tests.unit.training.test_user_data import edited, monthly_long
from training import cli

QUICK = ["--set", "train.max_steps=12", "--set", "model.hidden_size=16", "--threads", "1"]


async def build(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = await asyncio.to_thread(cli.main, ["build", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def entries(family) -> list[str]:
    return sorted(p.name for p in family.iterdir()) if family.exists() else []


async def test_a_forecast_build_is_hot_loaded_and_the_next_build_is_the_next_version(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    data = monthly_long(tmp_path / "sales.csv", series=3, rows=72)
    async with serving(models, poll_interval_s=0.05) as s:
        rc, out, err = await build(capsys, "--task", "forecast", "--data", str(data), "--name", "sales",
                                   "--models", str(models), "--out", str(tmp_path / "run1"), *QUICK)
        assert rc == 0, err
        assert "relative MAE" in out and "seasonal naive" in out and "freq           MS" in out
        request = forecast_pb2.ForecastRequest(model="sales", history=list(np.linspace(0, 1, 40)))

        async def served(version: str) -> bool:
            try:
                return (await s.forecaster.Forecast(request)).version == version
            except Exception:  # noqa: BLE001 - NOT_FOUND until the scan loads it
                return False

        await wait_until(lambda: served("1"), what="the built bundle to be served")
        reply = await s.forecaster.Forecast(request)
        assert len(reply.forecast) == 18  # the monthly default horizon (M4's)
        info = (await s.models.GetModel(models_pb2.GetModelRequest(name="sales"))).model
        assert info.state == "READY"
        manifest = json.loads((models / "sales" / "1" / "manifest.json").read_text())
        test = manifest["evaluation"]["test"]
        assert test["season"] == 12 and test["relative_mae"] == pytest.approx(test["mae"] / test["snaive_mae"])
        assert manifest["training"]["data"]["freq"] == "MS" and manifest["training"]["data"]["series"] == ["s0", "s1", "s2"]
        assert set(manifest["training"]["data"]["files"].values()) == {hashlib.sha256(data.read_bytes()).hexdigest()}

        rc, out, err = await build(capsys, "--task", "forecast", "--data", str(data), "--name", "sales",
                                   "--models", str(models), "--out", str(tmp_path / "run2"), *QUICK)
        assert rc == 0, err
        await wait_until(lambda: served("2"), what="version 2 to be served")
        assert entries(models / "sales") == ["1", "2"]


async def test_a_seasonal_forecast_build_is_served_with_the_season_it_was_trained_with(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    data = monthly_long(tmp_path / "sales.csv", series=2, rows=72)
    rc, out, err = await build(capsys, "--task", "forecast", "--data", str(data), "--name", "sales",
                               "--models", str(models), "--out", str(tmp_path / "run"), "--set", "model.seasonal=true",
                               "--set", "data.season_length=6", *QUICK)
    assert rc == 0, err
    spec = json.loads((models / "sales" / "1" / "manifest.json").read_text())["forecast"]
    assert (spec["season_input"], spec["season_length"], spec["frequency"], spec["frequencies"]) == (True, 6, "MS", ["MS"])
    async with serving(models) as s:
        history = list(np.linspace(0, 1, 40))
        plain = await s.forecaster.Forecast(forecast_pb2.ForecastRequest(model="sales", history=history))
        assert plain.season_length == 6  # what it was trained with, not the frequency's 12
        monthly = await s.forecaster.Forecast(forecast_pb2.ForecastRequest(model="sales", history=history, frequency="M"))
        assert monthly.season_length == 12
        info = (await s.models.GetModel(models_pb2.GetModelRequest(name="sales"))).model
        assert info.forecast.season_input and info.forecast.season_length == 6


async def test_bad_data_is_refused_before_training_and_leaves_nothing(tmp_path, capsys):
    models = tmp_path / "models"
    bad = edited(monthly_long(tmp_path / "good.csv"), tmp_path / "bad.csv", 9, "s0,2000-08-01,n/a")
    rc, _, err = await build(capsys, "--task", "forecast", "--data", str(bad), "--name", "sales", "--models",
                               str(models), "--out", str(tmp_path / "run"), *QUICK)
    assert rc == 2 and "bad.csv line 9, column 'y': value 'n/a' is not a number" in err
    assert not models.exists() and not (tmp_path / "run").exists()  # refused before training
    rc, _, err = await build(capsys, "--task", "translate", "--data", str(bad), "--name", "t", "--models", str(models))
    assert rc == 2 and "data.src_lang" in err


def test_an_interrupted_build_leaves_no_version_behind(tmp_path, monkeypatch):
    from training import build as B

    models = tmp_path / "models"
    (models / "sales" / "1").mkdir(parents=True)  # an existing version stays as it was
    data = monthly_long(tmp_path / "sales.csv", series=2, rows=72)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the int8 figures are computed

    monkeypatch.setattr("training.quantize.quantize_bundle", interrupted)
    config = cli.load_yaml(cli.PRESET_DIR / "files-forecast.yaml")
    config["train"].update(max_steps=5)
    with pytest.raises(KeyboardInterrupt):
        B.build("forecast", [str(data)], "sales", models, config=config, out_dir=tmp_path / "run", threads=1)
    assert entries(models / "sales") == ["1"]  # no 2, no hidden staging folder
    with pytest.raises(KeyboardInterrupt):
        B.build("forecast", [str(data)], "fresh", models, config=config, out_dir=tmp_path / "run", threads=1)
    assert not (models / "fresh").exists()


async def test_translate_and_generate_builds_serve(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    words = ["eins", "zwei", "drei", "vier", "fünf", "sechs"]
    english = ["one", "two", "three", "four", "five", "six"]
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 6, 3) for _ in range(300)]
    table = tmp_path / "pairs.tsv"
    table.write_text("de\ten\n" + "".join(" ".join(words[i] for i in r) + "\t" + " ".join(english[i] for i in r) + "\n"
                                          for r in rows), encoding="utf-8")
    text = tmp_path / "notes.txt"
    text.write_text("the cat sat on the mat.\nthe dog ran to the tree.\n" * 60, encoding="utf-8")
    async with serving(models, poll_interval_s=0.05) as s:
        rc, out, err = await build(capsys, "--task", "translate", "--data", str(table), "--name", "de-en", "--models",
                                   str(models), "--set", "data.src_lang=de", "--set", "data.tgt_lang=en", "--set",
                                   "data.vocab_size=60", "--out", str(tmp_path / "t"), *QUICK)
        assert rc == 0, err
        assert "copying the source" in out and "test BLEU beam 4" in out and "pairs" in out
        rc, out, err = await build(capsys, "--task", "generate", "--data", str(text), "--name", "notes", "--models",
                                   str(models), "--out", str(tmp_path / "g"), *QUICK)
        assert rc == 0, err
        assert "character frequencies alone" in out

        async def ready() -> bool:
            listed = await s.models.ListModels(models_pb2.ListModelsRequest())
            return {(m.name, m.state) for m in listed.models} >= {("de-en", "READY"), ("notes", "READY")}

        await wait_until(ready, what="both bundles to load")
        reply = await s.generator.Generate(generate_pb2.GenerateRequest(model="notes", prompt="the ", max_tokens=5))
        assert reply.model == "notes"
        manifest = json.loads((models / "de-en" / "1" / "manifest.json").read_text())
        assert {"test", "test_beam4"} <= set(manifest["evaluation"]) and "copy_bleu" in manifest["evaluation"]["test"]


async def test_a_recognize_build_from_recordings_and_transcripts_serves_offline_and_streaming(tmp_path, capsys,
                                                                                              data_dir):
    """FSDD files as a user's recordings with word transcripts: a character model, served with its labels."""
    from service.v1 import recognize_pb2, recognize_pb2_grpc
    from tests.integration.test_speech import first

    recordings = data_dir / "fsdd" / "recordings"
    words = "zero one two three four five six seven eight nine".split()
    table = tmp_path / "transcripts.csv"
    table.write_text("file,transcript\n" + "".join(f"{d}_theo_{t}.wav,{words[d]}\n" for d in range(10) for t in range(6)))
    models = tmp_path / "models"
    models.mkdir()
    async with serving(models, poll_interval_s=0.05) as s:
        rc, out, err = await build(capsys, "--task", "recognize", "--data", str(recordings), "--data", str(table),
                                   "--name", "words", "--models", str(models), "--out", str(tmp_path / "run"),
                                   "--set", "model.bidirectional=false", "--set", "train.batch_size=4", *QUICK)
        assert rc == 0, err
        assert "test CER" in out and "test CER streaming" in out and re.search(r"labels +\d+ characters '[a-z]+'", out)

        async def ready() -> bool:
            listed = await s.models.ListModels(models_pb2.ListModelsRequest())
            return ("words", "READY") in {(m.name, m.state) for m in listed.models}

        await wait_until(ready, what="the speech bundle to load")
        info = (await s.models.GetModel(models_pb2.GetModelRequest(name="words"))).model
        labels = "".join(info.speech.labels)  # the training transcripts' characters, sorted
        assert info.speech.word_separator == "" and labels == "".join(sorted(set(labels) & set("".join(words))))
        assert f"'{labels}'" in out and len(labels) >= 12
        assert info.speech.streaming and info.speech.sample_rate == 16000
        audio = (recordings / "3_theo_7.wav").read_bytes()  # 8 kHz: resampled to the model's 16
        stub = recognize_pb2_grpc.RecognizerStub(s.channel)
        wav_config = recognize_pb2.RecognitionConfig(encoding=recognize_pb2.RecognitionConfig.WAV, model="words")
        offline = await stub.Recognize(recognize_pb2.RecognizeRequest(config=wav_config, audio=audio))
        assert offline.results[0].alternatives and offline.total_billed_time.ToMilliseconds() > 0
        pcm = audio[44:]  # FSDD's WAVs: a 44-byte header, then 16-bit mono samples
        config = recognize_pb2.RecognitionConfig(encoding=recognize_pb2.RecognitionConfig.LINEAR16,
                                                 sample_rate_hertz=8000, model="words")
        requests = [first(config, interim=False)] + [recognize_pb2.StreamingRecognizeRequest(audio_content=pcm[i : i + 1600])
                                                     for i in range(0, len(pcm), 1600)]
        finals = [r async for r in stub.StreamingRecognize(iter(requests)) if r.results and r.results[0].is_final]
        assert finals[-1].results[0].alternatives[0].transcript == offline.results[0].alternatives[0].transcript
