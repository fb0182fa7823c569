"""DataConfig: which data a run uses, and the per-task dispatch to its splits and tokenizers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from training.data.corpus_sources import FIRST_SOURCES, parse_sources
from training.data.files import SPLITS, check_split
from training.data.series import ETT_ROWS_PER_DAY, SeriesSplits, load_ett, synthetic_forecast
from training.data.text import (
    SHAKESPEARE_FILE,
    chinese_normalizer,
    load_shakespeare,
    load_tatoeba_zh,
    split_text,
    synthetic_text,
)
from training.data.translation import TATOEBA_FILE, load_multi30k, load_tatoeba, multi30k_files, synthetic_pairs

TASK_DATASETS: dict[str, tuple[str, ...]] = {
    "translate": ("synthetic", "multi30k", "tatoeba", "files"),
    "forecast": ("synthetic", "ETTh1", "ETTm1", "files", "corpus"),
    "generate": ("synthetic", "shakespeare", "tatoeba-zh", "files"),
    "recognize": ("synthetic", "fsdd", "files"),
}
TOKENIZER_KINDS = ("word", "bpe", "char")


@dataclass
class DataConfig:
    """Which data a run trains on and how it is tokenised / windowed (fields apply per task)."""

    dataset: str = "synthetic"  # translate: synthetic|multi30k|tatoeba; forecast: synthetic|ETTh1|ETTm1; generate: synthetic|shakespeare|tatoeba-zh; recognize: synthetic|fsdd
    seed: int = 0  # synthetic data and the Tatoeba split (tatoeba-zh: the same split as tatoeba)
    # translate
    src_lang: str = "de"  # multi30k: de|en; tatoeba: zh|en
    tgt_lang: str = "en"
    src_tokenizer: str = "word"  # word | bpe | char
    tgt_tokenizer: str = "word"
    vocab_size: int = 8000  # bpe: vocabulary size per side
    min_freq: int = 2  # word: keep words seen at least this often
    lowercase: bool = False  # word: lowercase before building the vocabulary; recognize files: lowercase the transcripts
    simplify_chinese: bool = False  # word, zh side / char: traditional -> simplified characters (OpenCC table)
    max_len: int = 50  # drop training pairs with a side longer than this (tokens)
    concat_pairs: float = 0.0  # translate: add this share of extra training pairs, each two random pairs joined end to end
    concat_comma: float = 0.0  # translate: share of those joins spliced with a comma ("A，B。" / "A, b.") instead of a full stop
    num_examples: int = 2000  # synthetic translate: training pairs (val and test get a tenth each)
    # forecast (window and horizon come from the model config)
    features: str = "S"  # ETT: S = OT only, M = all 7 channels
    stride: int = 1  # step between training windows
    crop_prob: float = 0.5  # share of training batches cut to a random history in [min_history, window]
    num_series: int = 48  # synthetic forecast
    series_length: int = 400
    channels: int = 1  # synthetic forecast
    noise: float = 0.1
    # generate
    repeats: int = 300  # synthetic text: sentences
    # recognize
    holdout: str = ""  # fsdd: a speaker whose every take is the test split (and in neither train nor val)
    single_share: float = 0.3  # share of training utterances that are one recording (the rest: digit strings)
    steps_per_epoch: int = 100  # recognize / corpus: batches are built fresh: how many make an epoch
    val_utterances: int = 300  # val: the val split's single recordings plus this many digit strings
    tts_share: float = 0.0  # fsdd: share of training digits spoken by synthetic voices (training.data.tts); 0 = none
    tts_takes: int = 3  # takes of each digit per synthetic voice
    channel_db: float = 0.0  # speech training: each recording through a random frequency response, spectral
    # tilt up to +-channel_db dB with ripples, high- and low-pass (training.data.speech.channel); 0 = none
    # files: a user's own data (training.data.user; seqserve-train build)
    paths: list[str] = field(default_factory=list)  # forecast: tables; translate: 2 text files or 1 table; generate: text files; recognize: folder + CSV
    layout: str = "auto"  # forecast tables: auto | long (id, time, value columns) | wide (time column + one per series)
    id_column: str = ""  # long tables; "" = unique_id (Nixtla) or item_id (GluonTS)
    time_column: str = ""  # "" = ds / timestamp (long), the first column (wide)
    value_column: str = ""  # "" = y / target
    freq: str = ""  # pandas alias (h, 30min, D, W, MS, QS, YS); "" = inferred from the timestamps
    missing: str = "error"  # forecast: a missing value is bad input (error), or filled linearly in time (interpolate)
    season_length: int = 0  # seasonal naive's period; 0 = from the frequency (GluonTS's seasonality)
    file_column: str = ""  # recognize: the transcript table's audio-file column; "" = file, path, audio, ...
    text_column: str = ""  # and its transcript column; "" = transcript, text, sentence, ...
    src_column: str = ""  # translate tables; "" = the first column
    tgt_column: str = ""  # "" = the second column
    corpus_sources: str = FIRST_SOURCES  # corpus: packages and datasets the real series come from
    # (training.data.corpus_sources.SOURCES: also vega_datasets, arch, bokeh_sampledata)
    val_windows: int = 1  # corpus: validating horizons at the end of each real series (at most a tenth of it)
    synthetic_series: int = 400  # corpus: KernelSynth series (512 steps each) beside the real ones
    real_share: float = 0.5  # corpus: share of training rows cut from real series
    mix_share: float = 0.2  # corpus: share that are TSMixup mixes of real windows (the rest: synthetic)
    unknown_season: float = 0.1  # corpus, seasonal models: share of rows given season 1 (no frequency known)
    val_share: float = 0.1  # of each series' rows (at least a horizon), of the distinct targets, of the text
    test_share: float = 0.1

    def validate(self, task: str) -> "DataConfig":
        if task not in TASK_DATASETS:
            raise ValueError(f"task {task!r} is not one of {', '.join(TASK_DATASETS)}")
        if self.dataset not in TASK_DATASETS[task]:
            raise ValueError(f"data.dataset {self.dataset!r} is not one of {', '.join(TASK_DATASETS[task])} (task {task})")
        for key in ("src_tokenizer", "tgt_tokenizer"):
            if getattr(self, key) not in TOKENIZER_KINDS:
                raise ValueError(f"data.{key} {getattr(self, key)!r} is not one of {', '.join(TOKENIZER_KINDS)}")
        for key in ("vocab_size", "min_freq", "max_len", "num_examples", "stride", "num_series", "series_length", "channels",
                    "repeats", "steps_per_epoch", "val_utterances", "val_windows"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)!r}")
        if not 0.0 <= self.crop_prob <= 1.0:
            raise ValueError(f"data.crop_prob must be within [0, 1], got {self.crop_prob!r}")
        if self.dataset == "corpus":
            parse_sources(self.corpus_sources)
        if self.dataset == "files" and not self.paths:
            raise ValueError("data.dataset 'files' needs data.paths (the files to train on)")
        if not (0.0 < self.val_share < 1.0 and 0.0 < self.test_share < 1.0 and self.val_share + self.test_share < 1.0):
            raise ValueError(f"data.val_share {self.val_share!r} and data.test_share {self.test_share!r} must be in "
                             "(0, 1) and leave a training part")
        if self.season_length < 0:
            raise ValueError(f"data.season_length must be >= 0, got {self.season_length!r}")
        if not 0.0 <= self.channel_db <= 40.0:
            raise ValueError(f"data.channel_db must be within [0, 40] dB, got {self.channel_db!r}")
        if self.tts_takes < 1:
            raise ValueError(f"data.tts_takes must be >= 1, got {self.tts_takes!r}")
        for key in ("concat_pairs", "concat_comma", "single_share", "tts_share"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"data.{key} must be within [0, 1], got {getattr(self, key)!r}")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any], task: str) -> "DataConfig":
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown data setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        if isinstance(d.get("paths"), str):
            d = {**d, "paths": [d["paths"]]}
        return cls(**d).validate(task)

    def files(self) -> list[str]:
        """The verified dataset files this config reads (empty for synthetic data)."""
        if self.dataset == "multi30k":
            return [f for s in SPLITS for f in multi30k_files(s, (self.src_lang, self.tgt_lang))]
        if self.dataset in ("tatoeba", "tatoeba-zh"):
            return [TATOEBA_FILE]
        if self.dataset in ETT_ROWS_PER_DAY:
            return [f"ETDataset/{self.dataset}.csv"]
        if self.dataset == "shakespeare":
            return [SHAKESPEARE_FILE]
        return []


def translation_pairs(cfg: DataConfig, split: str, data_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(source, target) sentences of ``split``."""
    if cfg.dataset == "multi30k":
        return load_multi30k(split, cfg.src_lang, cfg.tgt_lang, data_dir)
    if cfg.dataset == "tatoeba":
        return load_tatoeba(split, cfg.src_lang, cfg.tgt_lang, data_dir, seed=cfg.seed)
    if cfg.dataset == "files":
        from training.data import user

        pairs = user.read_pairs(cfg.paths, cfg.src_column, cfg.tgt_column)
        return user.split_pairs(pairs, split, cfg.seed, cfg.val_share, cfg.test_share)
    n = {"train": cfg.num_examples, "val": max(8, cfg.num_examples // 10), "test": max(8, cfg.num_examples // 10)}
    offset = {"train": 0, "val": 1, "test": 2}[check_split(split)]
    return synthetic_pairs(n[split], seed=cfg.seed * 3 + offset)


def forecast_series(cfg: DataConfig, seq_len: int, data_dir: str | os.PathLike | None = None,
                    horizon: int = 24, min_history: int = 0) -> SeriesSplits:
    """All splits of the forecasting data, standardised with training statistics."""
    if cfg.dataset == "corpus":
        from training.data.corpus import corpus_splits

        return corpus_splits(cfg, seq_len, horizon, data_dir)
    if cfg.dataset == "files":
        from training.data.series import user_forecast

        return user_forecast(cfg, seq_len, horizon, min_history or seq_len)
    if cfg.dataset in ETT_ROWS_PER_DAY:
        return load_ett(cfg.dataset, cfg.features, seq_len, data_dir)
    return synthetic_forecast(cfg.num_series, cfg.series_length, cfg.channels, cfg.seed, cfg.noise)


def season_length(cfg: DataConfig, freq: str = "") -> int:
    """Seasonal naive's period for this data: data.season_length, else from the frequency (ETT: a day)."""
    if cfg.season_length:
        return cfg.season_length
    if cfg.dataset in ETT_ROWS_PER_DAY:
        return ETT_ROWS_PER_DAY[cfg.dataset]
    if freq:
        from training.data.user import seasonality

        return seasonality(freq)
    return 0


def lm_text(cfg: DataConfig, split: str, data_dir: str | os.PathLike | None = None) -> str:
    """Text of ``split`` for the language model."""
    if cfg.dataset == "shakespeare":
        return load_shakespeare(split, data_dir)
    if cfg.dataset == "tatoeba-zh":
        return "".join(line + "\n" for line in load_tatoeba_zh(split, data_dir, seed=cfg.seed))
    if cfg.dataset == "files":
        from training.data import user

        return user.split_corpus(user.read_corpus(cfg.paths), split, cfg.val_share, cfg.test_share)
    return split_text(synthetic_text(cfg.repeats, cfg.seed), split)


def speech_recordings(cfg: DataConfig, split: str, data_dir: str | os.PathLike | None = None):
    """The recordings of ``split`` (training.data.speech.Recording), FSDD or synthetic tones."""
    from training.data.speech import fsdd_split, load_fsdd, synthetic_recordings

    recordings = load_fsdd(data_dir) if cfg.dataset == "fsdd" else synthetic_recordings(cfg.seed)
    return fsdd_split(recordings, split, cfg.holdout)


def build_tokenizer(kind: str, texts: Sequence[str], cfg: DataConfig, language: str = ""):
    """A tokenizer of ``kind`` (word | bpe | char) learnt from ``texts`` (training data only)."""
    from training import vocab

    if kind == "char":
        tok = vocab.build_char_tokenizer("".join(texts))
        if cfg.simplify_chinese:  # text given to the served model is normalised as its training text was
            tok.normalizer = chinese_normalizer(list(texts))
        return tok
    if kind == "bpe":
        return vocab.build_bpe_tokenizer(texts, cfg.vocab_size, language=language)
    return vocab.build_word_tokenizer(texts, cfg.min_freq, cfg.lowercase, language=language,
                                      simplify_chinese=cfg.simplify_chinese and language in ("zh", "cmn"))


def encode(tok, text: str) -> list[int]:
    """Token ids of ``text`` without specials (the vocab tokenizers never add BOS/EOS)."""
    return tok.encode(text, add_special_tokens=False).ids
