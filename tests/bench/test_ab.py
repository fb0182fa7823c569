"""bench.ab: interleaved A/B of `seqserve serve` settings, over tiny random-weight bundles."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import ab


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    from tests.bundles import make_bundle

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ab-models")
    make_bundle(root, "forecast")
    return root


def test_variants_parse_as_name_and_shell_split_flags():
    assert ab.parse_variant("base=") == ("base", [])
    assert ab.parse_variant("two='--event-loop asyncio' --max-batch-size 4") == (
        "two", ["--event-loop asyncio", "--max-batch-size", "4"])
    with pytest.raises(argparse.ArgumentTypeError, match="expected NAME=FLAGS"):
        ab.parse_variant("--event-loop asyncio")


def test_two_variants_in_interleaved_rounds(models, capsys):
    """Both servers answer in every round; the table has each level of each variant, with the medians
    of its rounds and the first variant as the reference (ratio 1)."""
    code = ab.main(["--models", str(models), "--variant", "base=", "--variant", "nobatch=--max-batch-size 1",
                    "--rounds", "2", "--endpoint", "forecast", "--concurrency", "1,2", "--duration", "0.3",
                    "--warmup", "0", "--history-len", "24"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["LEVEL", "VARIANT", "ROUNDS"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("1", "base", "2"), ("1", "nobatch", "2"), ("2", "base", "2"),
                                                   ("2", "nobatch", "2")]
    for r in rows:
        assert float(r[3]) > 0 and float(r[5]) >= float(r[3]) and float(r[7]) > 0  # p50, p99, requests/s
        if r[1] == "base":
            assert r[4] == r[6] == r[8] == "1.000"
        assert r[9] == r[10] == "-"  # forecast: no tokens/s


def test_bad_usage_is_refused_before_any_server_starts(models):
    with pytest.raises(SystemExit):
        ab.main(["--models", str(models), "--variant", "a=", "--variant", "a=--max-batch-size 1"])
    with pytest.raises(SystemExit):
        ab.main(["--models", str(models), "--variant", "a=", "--rounds", "0"])


def test_a_variant_runs_from_another_checkout(models, tmp_path, capsys):
    """--tree NAME=DIR: that variant's server imports seqserve from DIR, the other from this checkout."""
    import shutil

    tree = tmp_path / "other"
    shutil.copytree(ab.ROOT / "service", tree / "service", ignore=shutil.ignore_patterns("__pycache__"))
    assert ab.serve_command(tree)[1] == {"PYTHONPATH": str(tree)}
    args = ["--models", str(models), "--variant", "here=", "--variant", "there=", "--tree", f"there={tree}",
            "--rounds", "1", "--endpoint", "forecast", "--concurrency", "1", "--duration", "0.2", "--warmup", "0",
            "--history-len", "24"]
    assert ab.main(args) == 0
    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert [(r[1], r[2]) for r in rows] == [("here", "1"), ("there", "1")]
    # The copy's code is what runs: a server that cannot start there stops the A/B, saying why.
    server = tree / "service" / "front" / "server.py"
    server.write_text(server.read_text() + '\nraise SystemExit("this is the other tree")\n')
    with pytest.raises(RuntimeError, match="this is the other tree"):
        ab.main(args)
    with pytest.raises(argparse.ArgumentTypeError, match="expected NAME=DIR"):
        ab.parse_tree(f"x={tmp_path / 'nowhere'}")
