"""scripts/lecture_memory.py: the lecture's question asked through the Score API (issue 21)."""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest
import pytest_asyncio

from tests.conftest import REPO
from tests.integration.harness import serving

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _script():
    spec = importlib.util.spec_from_file_location("lecture_memory", REPO / "scripts" / "lecture_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(module_models):
    async with serving(module_models) as s:
        yield s


async def test_every_template_and_cut_is_scored_through_the_api(served, tmp_path, capsys):
    lecture = _script()
    out = tmp_path / "pairs.json"
    rc = await asyncio.to_thread(lecture.main, ["--address", served.address, "--model", "tiny-generate",
                                                "--models", str(tmp_path), "--json", str(out)])
    report = json.loads(out.read_text(encoding="utf-8"))
    assert rc == 0 and report["model"] == "tiny-generate"
    assert [r["nationality"] for r in report["pairs"]] == [f"{c}人" for c in lecture.PAIRS]
    for row in report["pairs"]:
        assert row["of"] == len(row["templates"]) == 6 and 0 <= row["right"] <= 6
        for t in row["templates"]:  # a tie (unknown characters all alike) is not right
            assert t["right"] == (t["margin"] > 0)
    for country, points in report["cuts"].items():
        assert [p["context"] for p in points] == [f"我是{country}人，我说"[k:] for k in range(8)]
    assert set(report["headline"]) == {"中国", "英国"}
    printed = capsys.readouterr().out
    assert "| nationality | language | right |" in printed and "right: " in printed
