"""Datasets for every task: verified files, the standard splits, synthetic sets, and batchers.

One module per concern: ``files`` (data directory, sha256 table, download and verification),
``translation``, ``series`` and ``text`` (each task's corpora, datasets and collate functions),
``batching`` (what fit() iterates) and ``config`` (DataConfig and the per-task dispatch). The names
below are re-exported so ``from training import data as D; D.translation_pairs(...)`` keeps working.
"""

from __future__ import annotations

from training.data.batching import EvalBatches, LoaderBatches, StreamBatches, batchify
from training.data.config import (
    TASK_DATASETS,
    TOKENIZER_KINDS,
    DataConfig,
    build_tokenizer,
    encode,
    forecast_series,
    lm_text,
    season_length,
    speech_recordings,
    translation_pairs,
)
from training.data.files import (
    DATA_ENV,
    FILES,
    SPLITS,
    DataError,
    DataFile,
    check_split,
    data_file,
    data_hashes,
    default_data_dir,
    fetch,
    file_sha256,
)
from training.data.series import (
    ETT_COLUMNS,
    ETT_ROWS_PER_DAY,
    CropWindows,
    Scaler,
    SeriesSplits,
    WindowDataset,
    collate_windows,
    ett_borders,
    load_ett,
    synthetic_forecast,
    synthetic_series,
)
from training.data.text import (
    SHAKESPEARE_FILE,
    chinese_normalizer,
    load_shakespeare,
    load_tatoeba_zh,
    split_text,
    synthetic_text,
)
from training.data.translation import (
    PAD_ID,
    TATOEBA_FILE,
    CommaJoin,
    PairDataset,
    concat_pairs,
    load_multi30k,
    load_tatoeba,
    make_collate_pairs,
    multi30k_files,
    synthetic_pairs,
)

__all__ = [
    "DATA_ENV", "ETT_COLUMNS", "ETT_ROWS_PER_DAY", "FILES", "PAD_ID", "SHAKESPEARE_FILE", "SPLITS", "TASK_DATASETS",
    "TATOEBA_FILE", "TOKENIZER_KINDS", "CommaJoin", "CropWindows", "DataConfig", "DataError", "DataFile",
    "EvalBatches", "LoaderBatches", "PairDataset", "Scaler", "SeriesSplits", "StreamBatches", "WindowDataset",
    "batchify", "build_tokenizer", "check_split", "chinese_normalizer", "collate_windows", "concat_pairs", "data_file", "data_hashes",
    "default_data_dir", "encode", "ett_borders", "fetch", "file_sha256", "forecast_series", "lm_text",
    "load_ett", "load_multi30k", "load_shakespeare", "load_tatoeba", "load_tatoeba_zh", "make_collate_pairs", "multi30k_files",
    "season_length", "speech_recordings", "split_text", "synthetic_forecast", "synthetic_pairs", "synthetic_series", "synthetic_text", "translation_pairs",
]
