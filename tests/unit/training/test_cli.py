"""seqserve-train end to end: train a tiny preset, export it, evaluate the bundle and the checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch

from service.contract import read_manifest
from training import cli, rundir, train

torch.set_num_threads(1)
TASKS = ("translate", "forecast", "generate")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Train each tiny preset briefly through the CLI and export it: task -> (run dir, bundle dir)."""
    root = tmp_path_factory.mktemp("cli")
    out = {}
    for task in TASKS:
        run_dir, models = root / f"run-{task}", root / "models"
        assert cli.main(["train", task, "--preset", f"tiny-{task}", "--out", str(run_dir), "--seed", "1",
                         "--set", "train.max_steps=60", "--set", "train.eval_every=30",
                         "--set", "train.progress=false"]) == 0
        assert cli.main(["export", "--checkpoint", str(run_dir / rundir.BEST), "--models", str(models),
                         "--name", f"tiny-{task}", "--version", "1"]) == 0
        out[task] = (run_dir, models / f"tiny-{task}" / "1")
    return out


def _evaluate(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert cli.main(["evaluate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("task", TASKS)
def test_train_export_evaluate(task, exported, capsys):
    run_dir, bundle = exported[task]
    records = [json.loads(x) for x in (run_dir / rundir.METRICS_JSONL).read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert losses[-1] < 0.7 * losses[0], losses  # the tiny preset really learns
    assert (run_dir / rundir.LOSS_PNG).is_file()
    assert rundir.load_checkpoint(run_dir / rundir.BEST)["run_config"]["train"]["seed"] == 1

    served = _evaluate(capsys, "--bundle", str(bundle), "--write-manifest")
    trained = _evaluate(capsys, "--checkpoint", str(run_dir / rundir.BEST))
    assert served["source"] == "onnxruntime" and trained["source"] == "pytorch"
    assert served["task"] == task and served["split"] == "test"
    manifest = read_manifest(bundle)
    assert manifest.evaluation["test"]["task"] == task
    assert manifest.training["run_config"]["train"]["max_steps"] == 60
    if task == "forecast":
        assert served["windows"] > 0 and 0 <= served["coverage_10_90"] <= 1
        assert 0 < served["mse"] < 1.0  # standardised series: below predicting the mean
        for key in ("mse", "mae", "coverage_10_90"):
            assert served[key] == pytest.approx(trained[key], rel=1e-4)
        assert manifest.forecast.horizon == served["horizon"]
    elif task == "generate":
        vocab = manifest.vocab_size["text"]
        assert served["nats_per_char"] < 0.5 * math.log(vocab)  # far better than a uniform guess
        assert served["nats_per_char"] == pytest.approx(trained["nats_per_char"], rel=1e-4)
    else:
        assert served["sentences"] == trained["sentences"] > 0
        for key in ("bleu", "chrf", "bleu_lc"):
            assert 0 <= served[key] <= 100 and served[key] == pytest.approx(trained[key], abs=0.5)
        assert served["bleu"] > 5 and len(served["examples"]) == 3


def test_beam_evaluation_decodes_with_the_shared_decoding(exported, capsys):
    _, bundle = exported["translate"]
    greedy = _evaluate(capsys, "--bundle", str(bundle))
    served_greedy = _evaluate(capsys, "--bundle", str(bundle), "--beam", "1")
    # The server's greedy decoding is the evaluator's greedy decoding, sentence for sentence.
    assert served_greedy["source"] == "onnxruntime" and served_greedy["beam"] == 1
    assert [e["output"] for e in served_greedy["examples"]] == [e["output"] for e in greedy["examples"]]
    assert served_greedy["bleu"] == pytest.approx(greedy["bleu"], abs=1e-9)
    beam = _evaluate(capsys, "--bundle", str(bundle), "--beam", "4", "--write-manifest")
    assert beam["beam"] == 4 and beam["sentences"] == greedy["sentences"] and 0 <= beam["bleu"] <= 100
    stored = read_manifest(bundle).evaluation
    assert stored["test_beam4"]["bleu"] == beam["bleu"] and stored["test_beam4"]["beam"] == 4
    with pytest.raises(SystemExit, match="--beam needs --bundle"):
        cli.main(["evaluate", "--checkpoint", str(exported["translate"][0] / rundir.BEST), "--beam", "2"])
    capsys.readouterr()
    assert cli.main(["evaluate", "--bundle", str(exported["forecast"][1]), "--beam", "2"]) == 2
    assert "--beam applies to translation bundles" in capsys.readouterr().err


def test_quantize_keeps_the_figures_or_leaves_the_bundle_alone(exported, capsys, tmp_path):
    import shutil

    from service.contract import write_manifest

    bundle = tmp_path / "tiny-translate" / "1"
    shutil.copytree(exported["translate"][1], bundle)
    m = read_manifest(bundle)
    m.evaluation = {}  # other tests may have stored figures in the shared bundle
    write_manifest(bundle, m)
    with pytest.raises(SystemExit, match="no evaluation figures"):
        cli.main(["quantize", "--bundle", str(bundle)])
    greedy = _evaluate(capsys, "--bundle", str(bundle), "--write-manifest")
    _evaluate(capsys, "--bundle", str(bundle), "--beam", "2", "--write-manifest")
    graphs = {f: (bundle / f).read_bytes() for f in read_manifest(bundle).graphs.values()}

    # Figures the int8 graphs cannot reach: refused, every file as it was.
    m = read_manifest(bundle)
    m.evaluation["test"]["bleu"] = 100.0
    write_manifest(bundle, m)
    with pytest.raises(SystemExit, match=r"bundle left float32: evaluation.test.bleu: 100.0000 -> "):
        cli.main(["quantize", "--bundle", str(bundle)])
    assert {f: (bundle / f).read_bytes() for f in graphs} == graphs and read_manifest(bundle).weights == "float32"

    m.evaluation["test"]["bleu"] = greedy["bleu"]
    write_manifest(bundle, m)
    capsys.readouterr()
    assert cli.main(["quantize", "--bundle", str(bundle), "--tolerance", "0.25"]) == 0
    assert "stored as int8" in capsys.readouterr().out
    m = read_manifest(bundle)
    assert m.weights == "int8" and set(m.evaluation) == {"test", "test_beam2"}
    assert m.extra["quantization"]["evaluation_float32"]["test"]["bleu"] == greedy["bleu"]
    assert sum((bundle / f).stat().st_size for f in graphs) < 0.5 * sum(len(b) for b in graphs.values())
    # evaluate reproduces what quantize stored, greedy and with the shared beam search
    assert _evaluate(capsys, "--bundle", str(bundle))["bleu"] == pytest.approx(m.evaluation["test"]["bleu"], abs=1e-9)
    assert _evaluate(capsys, "--bundle", str(bundle), "--beam", "2")["bleu"] == pytest.approx(
        m.evaluation["test_beam2"]["bleu"], abs=1e-9)
    with pytest.raises(SystemExit, match="int8 already"):
        cli.main(["quantize", "--bundle", str(bundle)])

    # --int8-matmul: MatMul/Gemm computed in int8 as well, checked the same way
    import onnx

    shutil.copytree(tmp_path / "tiny-translate", tmp_path / "mm" / "tiny-translate")
    mm = tmp_path / "mm" / "tiny-translate" / "1"
    for f in graphs:
        (mm / f).write_bytes(graphs[f])
    m = read_manifest(mm)
    m.weights, m.evaluation = "float32", m.extra.pop("quantization")["evaluation_float32"]
    write_manifest(mm, m)
    assert cli.main(["quantize", "--bundle", str(mm), "--tolerance", "0.25", "--int8-matmul"]) == 0
    ops = {n.op_type for f in graphs for n in onnx.load(str(mm / f)).graph.node}
    assert "MatMulInteger" in ops and "DequantizeLinear" in ops  # the GRU's weights keep the storage scheme
    m = read_manifest(mm)
    assert m.weights == "int8" and m.extra["quantization"]["matmul"].startswith("onnxruntime dynamic")
    assert _evaluate(capsys, "--bundle", str(mm))["bleu"] == pytest.approx(m.evaluation["test"]["bleu"], abs=1e-9)


def test_help_texts_and_bad_arguments(capsys):
    for cmd in (["--help"], ["train", "--help"], ["export", "--help"], ["evaluate", "--help"], ["quantize", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(cmd)
        assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "tiny-translate" in text and "--write-manifest" in text and "--checkpoint" in text and "--tolerance" in text
    with pytest.raises(SystemExit, match="preset 'nope' is not one of"):
        cli.main(["train", "generate", "--preset", "nope"])
    with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
        cli.main(["train", "generate", "--set", "max_steps=3"])
    with pytest.raises(SystemExit) as exc:
        cli.main(["gradient-flow", "--help"])
    assert exc.value.code == 0 and "gradient-flow" in capsys.readouterr().out


def test_unknown_setting_is_named(capsys, tmp_path):
    with pytest.raises(SystemExit, match="unknown train setting.*bogus"):
        cli.main(["train", "generate", "--out", str(tmp_path), "--set", "train.bogus=3"])


def test_every_preset_parses():
    names = cli.presets()
    assert {"tiny-translate", "tiny-forecast", "tiny-generate", "translate-de-en", "translate-zh-en",
            "forecast-etth1", "generate-shakespeare"} <= set(names)
    for name in names:
        cfg = cli.load_yaml(cli.PRESET_DIR / f"{name}.yaml")
        if name.startswith("files-"):  # a user's own data: seqserve-train build gives the paths
            assert cfg["data"]["dataset"] == "files" and "paths" not in cfg["data"]
            cfg["data"]["paths"] = ["data.csv"]
        run = train.RunConfig.from_dict(cfg)
        assert run.train.out_dir == f"runs/{name}"
