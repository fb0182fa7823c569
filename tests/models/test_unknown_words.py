"""What the bundled translators do with words they do not know, text in another language, and texts
of several sentences — through a real server on the real bundles (issue 20, item 2)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from service.client import SeqserveClient
from service.front.metrics import Metrics
from service.v1 import translate_pb2
from tests.conftest import REPO
from tests.integration.harness import ServerProcess, metric_value, serving

TRANSLATORS = ("translate-de-en", "translate-zh-en")
pytestmark = pytest.mark.skipif(not all((REPO / "models" / n).is_dir() for n in TRANSLATORS),
                                reason="the bundled translators are not in models/")


@pytest.fixture(scope="module")
def translators(tmp_path_factory):
    """A repository of the two bundled translators only."""
    root = tmp_path_factory.mktemp("translators")
    for name in TRANSLATORS:
        shutil.copytree(REPO / "models" / name, root / name)
    return root


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(translators):
    async with serving(translators, metrics=Metrics(CollectorRegistry(), process_metrics=False)) as s:
        yield s


async def translate(served, text: str, model: str = "translate-de-en", **kw) -> translate_pb2.Translation:
    reply = await served.translator.Translate(translate_pb2.TranslateRequest(model=model, texts=[text], **kw))
    return reply.translations[0]


@pytest.mark.asyncio(loop_scope="module")
async def test_names_the_model_does_not_know_are_reported_and_passed_through(served):
    t = await translate(served, "Ein Mann namens Gerhard fährt nach Würzburg.")
    assert t.unknown_source_tokens == 2 and list(t.unknown_words) == ["Gerhard", "Würzburg"]
    assert list(t.source_tokens).count("[UNK]") == 2
    assert t.copied_words >= 1 and re.search(r"\bGerhard\b", t.text), t.text  # dropped before: "A man is ."
    assert "[UNK]" not in t.tokens and t.warning == ""
    known = await translate(served, "Ein Mann fährt Fahrrad.")
    assert known.unknown_source_tokens == 0 and not known.unknown_words and known.copied_words == 0


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("model, text, language", [
    ("translate-de-en", "我是中国人，我说中文。", "German"),
    ("translate-de-en", "Je voudrais réserver une chambre pour deux personnes.", "German"),
    ("translate-zh-en", "Ein Mann fährt Fahrrad.", "Chinese"),
])
async def test_text_in_another_language_says_so(served, model, text, language):
    t = await translate(served, text, model)
    assert t.warning and f"is the text in {language}?" in t.warning and model in t.warning, t.warning
    assert t.unknown_source_tokens > len(t.source_tokens) / 2


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("model, sentences, joiner", [
    ("translate-de-en", ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee!", "Wer lacht?"], " "),
    ("translate-zh-en", ["我是中国人。", "我说中文！"], ""),
])
async def test_several_sentences_are_translated_one_by_one(served, model, sentences, joiner):
    whole = await translate(served, joiner.join(sentences), model, return_attention=True)
    parts = [await translate(served, s, model) for s in sentences]
    assert whole.sentences == len(sentences)
    assert whole.text == " ".join(p.text for p in parts)
    assert list(whole.tokens) == [tok for p in parts for tok in p.tokens]
    att = np.asarray(whole.attention.values).reshape(whole.attention.rows, whole.attention.cols)
    assert att.shape == (len(whole.tokens), len(whole.source_tokens))
    r = c = 0
    for p in parts:  # block-diagonal: each sentence's tokens attend only to its own source
        rows, cols = len(p.tokens), len(p.source_tokens)
        assert np.allclose(att[r : r + rows, c : c + cols].sum(axis=1), 1.0, atol=1e-4)
        assert np.all(att[r : r + rows, :c] == 0) and np.all(att[r : r + rows, c + cols :] == 0)
        r, c = r + rows, c + cols


@pytest.mark.asyncio(loop_scope="module")
async def test_unknown_source_tokens_are_counted_per_model(served):
    def counts():
        m = served.metrics
        return (metric_value(m, "seqserve_source_tokens_total", model="translate-de-en", version="1"),
                metric_value(m, "seqserve_unknown_source_tokens_total", model="translate-de-en", version="1"))

    before = counts()
    t = await translate(served, "Ein Mann namens Gerhard fährt nach Würzburg.")
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (len(t.source_tokens), 2)


def test_the_cli_warns_on_stderr_and_prints_the_translation(translators):
    with ServerProcess(translators) as server:
        run = subprocess.run(
            [sys.executable, "-m", "service.client.cli", "translate", "--address", server.address,
             "Ein Mann namens Gerhard fährt nach Würzburg.", "我是中国人。"],
            capture_output=True, text=True, timeout=60,
        )
        with SeqserveClient(server.address) as client:
            chinese = client.translate("我是中国人。").translations[0]
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 2 and "Gerhard" in lines[0]
    assert "warning: text 1: 2 of 8 source tokens unknown to translate-de-en: Gerhard, Würzburg" in run.stderr
    assert "warning: text 2:" in run.stderr and "is the text in German?" in run.stderr
    assert chinese.warning and chinese.unknown_words  # the client returns the fields


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("model, languages, domain", [
    ("translate-de-en", {"source": "de", "target": "en"}, "image captions"),
    ("translate-zh-en", {"source": "zh", "target": "en"}, "short everyday sentences"),
])
async def test_models_say_their_languages_and_domain(served, model, languages, domain):
    from service.v1 import models_pb2

    info = (await served.models.GetModel(models_pb2.GetModelRequest(name=model))).model
    assert dict(info.languages) == languages and domain in info.description
