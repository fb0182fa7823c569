"""Tokenizers (HF `tokenizers`, saved as tokenizer JSON the service loads without torch): char, word, BPE.

Every tokenizer has the specials [PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3 and no post-processor: ``encode``
never adds BOS/EOS (training's collate and the service add them from the manifest), and
``decode(ids)`` (specials skipped) gives readable text.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIALS: dict[str, int] = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}  # token -> id
SPECIAL_IDS: dict[str, int] = {"pad": 0, "unk": 1, "bos": 2, "eos": 3}  # role -> id (manifest special_tokens)
UNK = "[UNK]"
# Scripts written without spaces between words: split into single characters before anything else.
_CJK = Regex(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")
_NO_SPACE_LANGUAGES = ("zh", "ja", "cmn", "yue")


def _finish(tok: Tokenizer) -> Tokenizer:
    tok.add_special_tokens(list(SPECIALS))
    for text, i in SPECIALS.items():
        if tok.token_to_id(text) != i:
            raise RuntimeError(f"special token {text} got id {tok.token_to_id(text)}, expected {i}")
    return tok


def build_char_tokenizer(text: str) -> Tokenizer:
    """One token per character of ``text`` (sorted), specials first; lossless: decode(encode(s).ids) == s
    for text made of known characters (spaces and newlines included); others become [UNK]."""
    chars = sorted(set(text))
    vocab = dict(SPECIALS)
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return _finish(tok)


def _prepend(language: str) -> str:
    # No ▁ before the first word of text written without spaces (it would be a token of its own).
    return "never" if language in _NO_SPACE_LANGUAGES else "first"


def _word_pre_tokenizer(language: str) -> pre_tokenizers.PreTokenizer:
    steps = [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=_prepend(language), split=True)]
    if language in _NO_SPACE_LANGUAGES:
        steps.append(pre_tokenizers.Split(_CJK, behavior="isolated"))
    steps.append(pre_tokenizers.Punctuation(behavior="isolated"))
    return pre_tokenizers.Sequence(steps)


def simplified_chinese(texts: Iterable[str]) -> list[normalizers.Normalizer]:
    """Normalizers mapping traditional Chinese characters to simplified ones, one character at a
    time by OpenCC's TSCharacters table (its first candidate), for every character whose simplified
    form occurs in ``texts`` once mapped: 國/国, 說/说 then share one token and their examples.

    They live in the tokenizer JSON, so the server applies them without OpenCC."""
    import opencc

    table = Path(opencc.__file__).parent / "dictionary" / "TSCharacters.txt"
    pairs: dict[str, str] = {}
    for line in table.read_text(encoding="utf-8").splitlines():
        traditional, simplified = line.split("\t")
        simplified = simplified.split(" ")[0]
        if len(traditional) == 1 and len(simplified) == 1 and traditional != simplified:
            pairs[traditional] = simplified
    seen = {pairs.get(ch, ch) for text in texts for ch in text}
    return [normalizers.Replace(t, s) for t, s in sorted(pairs.items()) if s in seen]


def build_word_tokenizer(
    texts: Iterable[str], min_freq: int = 2, lowercase: bool = False, language: str = "",
    simplify_chinese: bool = False,
) -> Tokenizer:
    """Word-level vocabulary of the words (and punctuation) seen at least ``min_freq`` times.

    Spaces are kept in the tokens (SentencePiece's ▁), so decoding restores the original spacing;
    ``language`` "zh"/"ja" splits CJK text into single characters; ``simplify_chinese`` maps
    traditional characters to simplified ones first (see simplified_chinese)."""
    if min_freq < 1:
        raise ValueError(f"min_freq must be >= 1, got {min_freq}")
    texts = list(texts)
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        + (simplified_chinese(texts) if simplify_chinese else []))
    tok.pre_tokenizer = _word_pre_tokenizer(language)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=_prepend(language), split=True)
    trainer = trainers.WordLevelTrainer(min_frequency=min_freq, special_tokens=list(SPECIALS), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return _finish(tok)


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int, language: str = "", min_freq: int = 2) -> Tokenizer:
    """Byte-pair-encoding vocabulary of about ``vocab_size`` tokens (specials included) for translation.

    SentencePiece-style: spaces become ▁ and belong to the following token, punctuation is split off,
    ``language`` "zh"/"ja" learns on single CJK characters (no merges across them); decode() gives
    detokenised text."""
    if vocab_size <= len(SPECIALS):
        raise ValueError(f"vocab_size {vocab_size} must exceed the {len(SPECIALS)} special tokens")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = _word_pre_tokenizer(language)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=_prepend(language), split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_freq, special_tokens=list(SPECIALS), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _finish(tok)


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """role -> id of the specials present in ``tok`` (pad, unk, bos, eos)."""
    roles = {"[PAD]": "pad", "[UNK]": "unk", "[BOS]": "bos", "[EOS]": "eos"}
    return {roles[t]: i for t in SPECIALS if (i := tok.token_to_id(t)) is not None}
