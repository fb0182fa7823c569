"""Tokenizers: specials, lossless char round trip, readable word/BPE decoding, CJK pre-tokenisation, JSON save/load."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from training.vocab import (
    SPECIAL_IDS,
    SPECIALS,
    build_bpe_tokenizer,
    build_char_tokenizer,
    build_word_tokenizer,
    special_ids,
)

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n\tSpeak,  speak.\n"
DE = [
    "Ein Mann fährt Fahrrad.",
    "Eine Frau singt ein Lied.",
    "Zwei Hunde spielen im Park.",
    "Ein Kind liest ein Buch, die Katze schläft.",
    "Der Mann (mit Hut) lacht!",
] * 3
ZH = ["我爱你。", "他是中国人，我说中文。", "你好！我是学生。", "中国很大。"] * 3


def _all(texts):
    return [build_char_tokenizer("".join(texts)), build_word_tokenizer(texts, min_freq=1), build_bpe_tokenizer(texts, 80)]


def test_specials_have_fixed_ids_everywhere():
    assert SPECIALS == {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
    for tok in _all(DE):
        assert special_ids(tok) == SPECIAL_IDS == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
        ids = tok.encode(DE[0]).ids
        assert ids and not set(ids) & {0, 2, 3}, "encode must not add BOS/EOS/PAD"
        assert tok.decode([2, *ids, 3, 0, 0]) == tok.decode(ids), "decode skips specials"


def test_char_tokenizer_is_lossless_and_marks_unknowns():
    tok = build_char_tokenizer(TEXT)
    assert tok.get_vocab_size() == len(set(TEXT)) + len(SPECIALS)
    for s in (TEXT, "speak  speak\n\n", " hear me\t"):
        assert tok.decode(tok.encode(s).ids) == s
    assert len(tok.encode(TEXT).ids) == len(TEXT)
    assert tok.encode("Zq!").ids[0] == SPECIAL_IDS["unk"] and tok.encode("Zq!").ids[1] == SPECIAL_IDS["unk"]


def test_word_tokenizer_min_freq_lowercase_and_readable_decoding():
    texts = ["The cat sat.", "the cat ran, the dog sat.", "A rare word here."]
    tok = build_word_tokenizer(texts, min_freq=2)
    enc = tok.encode("the cat sat.")
    assert SPECIAL_IDS["unk"] not in enc.ids
    assert tok.decode(enc.ids) == "the cat sat."
    assert SPECIAL_IDS["unk"] in tok.encode("A rare word").ids  # seen once < min_freq
    low = build_word_tokenizer(texts, min_freq=2, lowercase=True)
    assert low.encode("THE CAT").ids == low.encode("the cat").ids
    with pytest.raises(ValueError, match="min_freq"):
        build_word_tokenizer(texts, min_freq=0)


def test_bpe_round_trips_german_and_respects_vocab_size():
    tok = build_bpe_tokenizer(DE, vocab_size=90, min_freq=1)
    assert tok.get_vocab_size() <= 90
    for s in DE[:5]:
        enc = tok.encode(s)
        assert SPECIAL_IDS["unk"] not in enc.ids
        assert tok.decode(enc.ids) == s
    with pytest.raises(ValueError, match="vocab_size"):
        build_bpe_tokenizer(DE, vocab_size=3)


def test_chinese_is_pre_tokenised_per_character():
    tok = build_bpe_tokenizer(ZH, vocab_size=60, language="zh", min_freq=1)
    for s in ZH[:4]:
        enc = tok.encode(s)
        assert all(len(t.replace("▁", "")) == 1 for t in enc.tokens), enc.tokens
        assert tok.decode(enc.ids) == s.replace("，", ",").replace("！", "!")  # NFKC folds full-width punctuation
    word = build_word_tokenizer(ZH, min_freq=1, language="zh")
    assert word.decode(word.encode("我是中国人。").ids) == "我是中国人。"


def test_traditional_and_simplified_chinese_share_tokens_when_asked(tmp_path):
    mixed = ["我會說中文。", "他是中國人。", "我说中文。", "中国很大。"] * 2
    plain = build_word_tokenizer(mixed, min_freq=1, language="zh")
    simple = build_word_tokenizer(mixed, min_freq=1, language="zh", simplify_chinese=True)
    assert plain.token_to_id("國") is not None and plain.token_to_id("說") is not None
    assert simple.token_to_id("國") is None and simple.token_to_id("說") is None  # folded into 国 / 说
    assert simple.get_vocab_size() < plain.get_vocab_size()
    assert simple.encode("我說中國話").tokens == simple.encode("我说中国话").tokens[:4] + ["[UNK]"]
    # The mapping travels in the tokenizer JSON: the server needs no OpenCC.
    path = tmp_path / "zh.json"
    simple.save(str(path))
    assert Tokenizer.from_file(str(path)).encode("他是中國人").ids == simple.encode("他是中国人").ids


def test_saved_json_loads_without_training_code(tmp_path):
    for i, tok in enumerate(_all(DE)):
        path = tmp_path / f"t{i}.json"
        tok.save(str(path))
        loaded = Tokenizer.from_file(str(path))
        for s in DE[:3]:
            assert loaded.encode(s).ids == tok.encode(s).ids
            assert loaded.decode(loaded.encode(s).ids) == tok.decode(tok.encode(s).ids)
