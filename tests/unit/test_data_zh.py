"""tatoeba-zh, the Chinese language model's data: the zh-en translator's Tatoeba parts, Chinese side."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO
from training import data

PRESETS = REPO / "training" / "presets"


def _preset_data(name: str, task: str) -> data.DataConfig:
    return data.DataConfig.from_dict(yaml.safe_load((PRESETS / f"{name}.yaml").read_text())["data"], task)


@pytest.fixture(scope="module")
def tatoeba(data_dir):
    if not (data_dir / data.TATOEBA_FILE).is_file():
        pytest.skip(f"{data.TATOEBA_FILE} is not in {data_dir}")
    return data_dir


@pytest.fixture(scope="module")
def lm_parts(tatoeba) -> dict[str, list[str]]:
    """split -> lines of the generate-zh preset's text (each line ends with a newline)."""
    cfg = _preset_data("generate-zh", "generate")
    parts = {}
    for split in data.SPLITS:
        text = data.lm_text(cfg, split, tatoeba)
        assert text.endswith("\n")
        parts[split] = text[:-1].split("\n")
    return parts


@pytest.fixture(scope="module")
def translator(tatoeba):
    """The zh-en translator's parts (its preset) and its Chinese tokenizer, built as training builds it."""
    cfg = _preset_data("translate-zh-en", "translate")
    parts = {split: data.translation_pairs(cfg, split, tatoeba) for split in data.SPLITS}
    tok = data.build_tokenizer(cfg.src_tokenizer, [zh for zh, _ in parts["train"]], cfg, cfg.src_lang)
    return parts, tok


def test_held_out_parts_are_the_translators_chinese_sentences_normalised_as_it_does(lm_parts, translator):
    parts, tok = translator
    for split in ("val", "test"):
        assert lm_parts[split] == [tok.normalizer.normalize_str(zh) for zh, _ in parts[split]], split
    assert parts["test"][0][0] == "閉嘴！" and lm_parts["test"][0] == "闭嘴!"  # traditional, full-width: NFKC too


def test_no_training_sentence_occurs_in_val_or_test(lm_parts, translator):
    parts, tok = translator
    held_out = set(lm_parts["val"]) | set(lm_parts["test"])
    assert not held_out & set(lm_parts["train"])
    # Only those are dropped: train is the translator's train part less its held-out sentences.
    kept = [s for s in (tok.normalizer.normalize_str(zh) for zh, _ in parts["train"]) if s not in held_out]
    assert sorted(lm_parts["train"]) == sorted(kept)
    assert len(kept) > 0.9 * len(parts["train"])


def test_traditional_characters_are_simplified_in_every_part_and_in_the_tokenizer(lm_parts):
    traditional = set("國說們這個來時會對學麼還")
    for split, lines in lm_parts.items():
        assert not traditional & set("".join(lines)), split
    cfg = _preset_data("generate-zh", "generate")
    tok = data.build_tokenizer("char", ["\n".join(lm_parts["train"]) + "\n"], cfg)
    unk = tok.token_to_id("[UNK]")
    ids = data.encode(tok, "我是中國人，我說")
    assert ids == data.encode(tok, "我是中国人,我说") and unk not in ids


def test_chinese_normalizer_maps_traditional_to_simplified_and_full_width_to_ascii():
    norm = data.chinese_normalizer(["国说"])
    assert norm.normalize_str("我是中國人，我說！") == "我是中国人,我说!"


def test_tatoeba_zh_is_a_generate_dataset_reading_the_tatoeba_file():
    cfg = data.DataConfig(dataset="tatoeba-zh").validate("generate")
    assert cfg.files() == [data.TATOEBA_FILE]
    with pytest.raises(ValueError, match="tatoeba-zh"):
        data.DataConfig(dataset="tatoeba-zh").validate("translate")
    assert _preset_data("generate-zh", "generate").seed == _preset_data("translate-zh-en", "translate").seed
