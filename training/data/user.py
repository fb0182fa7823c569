"""A user's own data (``data.dataset: files``): time-series tables, parallel text and plain text.

Everything is read and checked before training starts; a problem raises DataError naming the file,
the line (CSV/TSV/text) or row (Parquet), the column, the value and what was expected.

- forecast: CSV/TSV or Parquet, long (``unique_id``/``ds``/``y`` as Nixtla writes it, ``item_id``/
  ``timestamp``/``target`` as GluonTS does, or columns named in the config) or wide (a time column,
  one column per series). Timestamps sorted, unique and evenly spaced per series; the frequency
  inferred (pandas) or given; every series split by time: the last ``test_share`` of its rows (at
  least one horizon) is test, the ``val_share`` before it val.
- translate: two line-aligned text files (source, target), or one CSV/TSV/Parquet table with a source
  and a target column; split by a seeded shuffle of the distinct target sentences.
- generate: one or more UTF-8 text files, joined; split by characters at line ends.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data.files import DataError, check_split, file_sha256

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".parquet": None, ".pq": None}
LONG_SCHEMAS = (("unique_id", "ds", "y"), ("item_id", "timestamp", "target"))
LAYOUTS = ("auto", "long", "wide")
MISSING = ("error", "interpolate")


def file_hashes(paths: Sequence[str]) -> dict[str, str]:
    """sha256 of every file the run reads (folders: every file inside), for the manifest."""
    out: dict[str, str] = {}
    for p in paths:
        path = Path(p)
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                out[str(f)] = file_sha256(f)
    return out


def _existing(paths: Sequence[str], what: str) -> list[Path]:
    if not paths:
        raise DataError(f"data.paths is empty: give the {what} (seqserve-train build --data PATH)")
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise DataError(f"{p}: {'is a folder, expected a file' if path.is_dir() else 'no such file'} ({what})")
        out.append(path)
    return out


def read_text(path: Path) -> str:
    """A file's text as UTF-8 (a BOM is dropped); undecodable bytes name their line and byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: byte {raw[err.start]:#04x} at offset {err.start} is not UTF-8 "
                        "(convert the file, e.g. iconv -f LATIN1 -t UTF-8)") from None


# ---------------------------------------------------------------- tables


@dataclass
class Table:
    path: Path
    frame: Any  # pandas.DataFrame, every cell as read (CSV: strings)
    parquet: bool

    def where(self, row: int) -> str:
        """How a user finds data row ``row`` (0-based): its line in a CSV (after the header), or row in Parquet."""
        return f"{self.path} row {row + 1}" if self.parquet else f"{self.path} line {row + 2}"

    def column(self, name: str) -> Any:
        if name not in self.frame.columns:
            raise DataError(f"{self.path}: no column {name!r}; columns are {', '.join(map(str, self.frame.columns))}")
        return self.frame[name]


def read_table(path: Path) -> Table:
    """A CSV/TSV (cells kept as text) or Parquet table with a header row."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: expected a table ({', '.join(TABLE_SUFFIXES)}), got {suffix or 'no extension'!r}")
    if TABLE_SUFFIXES[suffix] is None:
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises many kinds
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
        return Table(path, frame, parquet=True)
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    import io

    try:
        frame = pd.read_csv(io.StringIO(text), sep=TABLE_SUFFIXES[suffix], dtype=str, keep_default_na=False)
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: not a valid {suffix[1:].upper()} table ({err})") from None
    return Table(path, frame, parquet=False)


def _is_missing(cell: Any) -> bool:
    return cell is None or (isinstance(cell, float) and math.isnan(cell)) or str(cell).strip() in ("", "NA", "NaN", "nan")


def _numbers(table: Table, column: str, series: str = "", missing: str = "error") -> np.ndarray:
    """The column as float64 (missing cells NaN when ``missing`` is "interpolate"); a non-numeric cell, or
    a missing one otherwise, raises DataError naming it."""
    import pandas as pd

    raw = table.column(column)
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if missing == "interpolate":
        bad = np.array([i for i in bad if not _is_missing(raw.iloc[i])], dtype=np.int64)
    if len(bad):
        i = int(bad[0])
        cell = raw.iloc[i]
        what = "missing" if _is_missing(cell) else f"{cell!r} is not a number"
        of = f" (series {series!r})" if series else ""
        hint = "; or --set data.missing=interpolate" if _is_missing(cell) else ""
        raise DataError(f"{table.where(i)}, column {column!r}{of}: value {what}; expected a finite number "
                        f"({len(bad)} such cell{'s' if len(bad) > 1 else ''} in the column{hint})")
    return np.where(np.isfinite(values), values, np.nan)


def _interpolate(values: np.ndarray, name: str, path: Path) -> tuple[np.ndarray, int]:
    """Missing values (NaN) filled linearly between their neighbours (the ends: the nearest value)."""
    gaps = np.isnan(values)
    if not gaps.any():
        return values, 0
    if gaps.all():
        raise DataError(f"{path}: every value of series {name!r} is missing")
    at = np.arange(len(values))
    return np.interp(at, at[~gaps], values[~gaps]), int(gaps.sum())


def _times(table: Table, column: str) -> Any:
    import pandas as pd

    raw = table.column(column)
    parsed = pd.to_datetime(raw, errors="coerce", format="mixed") if not table.parquet or raw.dtype == object \
        else pd.to_datetime(raw, errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{table.where(i)}, column {column!r}: {raw.iloc[i]!r} is not a timestamp "
                        "(expected a date or date-time such as 2024-01-31 or 2024-01-31 13:00)")
    return parsed


# ---------------------------------------------------------------- forecast


def seasonality(freq: str) -> int:
    """The seasonal period of a pandas frequency as GluonTS defines it (gluonts.time_feature.get_seasonality):
    minutes -> a day, hours -> a day, business days 5, months 12, quarters 4; seconds, days, weeks,
    years 1; a multiple that does not divide the period: 1. Pandas reads the alias; the table is the
    service's (service.contract.frequency), so a request naming the same frequency gets the same season."""
    from pandas.tseries.frequencies import to_offset

    from service.contract.frequency import UNITS, Frequency

    offset = to_offset(freq)
    base = offset.rule_code.split("-")[0]
    unit = UNITS.get(base) or UNITS.get(base.upper())
    return Frequency(max(1, int(offset.n)), unit).season if unit else 1


@dataclass
class UserSeries:
    names: list[str]
    values: list[np.ndarray]  # (N,) float64 per series
    starts: list[str]  # first timestamp of each series (ISO)
    freq: str  # pandas alias
    files: list[str] = field(default_factory=list)
    filled: int = 0  # missing values interpolated (data.missing: interpolate)


def _infer_freq(index: Any) -> str:
    import pandas as pd

    import warnings

    with warnings.catch_warnings():  # pandas 3 warns that infer_freq will return an offset
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        found = pd.infer_freq(index)
    return "" if found is None else str(getattr(found, "freqstr", found))


def _spacing(table: Table, rows: np.ndarray, stamps: Any, name: str, freq: str) -> str:
    """The series' frequency (given or inferred); unsorted, duplicate or unevenly spaced stamps raise DataError."""
    import pandas as pd

    idx = pd.DatetimeIndex(stamps)
    of = f" of series {name!r}" if name else ""
    for k in range(1, len(idx)):
        if idx[k] <= idx[k - 1]:
            same = idx[k] == idx[k - 1]
            raise DataError(f"{table.where(int(rows[k]))}: timestamp {idx[k]} {'repeats' if same else 'comes before'} "
                            f"{idx[k - 1]} ({table.where(int(rows[k - 1]))}){of}; expected timestamps "
                            "that increase" + ("" if same else " (sort the file by time)"))
    if not freq:
        if len(idx) < 3:
            raise DataError(f"{table.path}: series{of or ''} has {len(idx)} rows, too few to infer its frequency")
        freq = _infer_freq(idx)
        if not freq:  # find the first row that breaks the spacing of its first three
            freq = _infer_freq(idx[:3])
            if not freq:
                raise DataError(f"{table.where(int(rows[2]))}: the first timestamps{of} ({idx[0]}, {idx[1]}, {idx[2]}) "
                                "are not evenly spaced; give data.freq or fix the series")
    try:
        expected = pd.date_range(idx[0], periods=len(idx), freq=freq)
    except ValueError as err:
        raise DataError(f"data.freq {freq!r} is not a pandas frequency ({err})") from None
    off = np.flatnonzero(expected.to_numpy() != idx.to_numpy())
    if len(off):
        k = int(off[0])
        raise DataError(f"{table.where(int(rows[k]))}: timestamp {idx[k]}{of} breaks the series' spacing "
                        f"(frequency {freq}: expected {expected[k]} after {idx[k - 1]}); fill the gap or drop the rows")
    return freq


def _layout(table: Table, layout: str, id_col: str, time_col: str, value_col: str) -> tuple[str, str, str, str]:
    cols = [str(c) for c in table.frame.columns]
    if layout not in LAYOUTS:
        raise DataError(f"data.layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = "long" if value_col or id_col else "wide"
        for schema in LONG_SCHEMAS:
            if set(schema) <= set(cols):
                layout = "long"
    if layout == "long":
        schema = next((s for s in LONG_SCHEMAS if set(s) <= set(cols)), ("", "", ""))
        id_col, time_col, value_col = id_col or schema[0], time_col or schema[1], value_col or schema[2]
        for key, col in (("id_column", id_col), ("time_column", time_col), ("value_column", value_col)):
            if not col:
                raise DataError(f"{table.path}: a long table needs data.{key} (columns: {', '.join(cols)}; "
                                f"the known schemas are {' and '.join('/'.join(s) for s in LONG_SCHEMAS)})")
            table.column(col)
    else:
        time_col = time_col or cols[0]
        table.column(time_col)
        if len(cols) < 2:
            raise DataError(f"{table.path}: a wide table needs a time column and at least one series column; "
                            f"it has {', '.join(cols)}")
    return layout, id_col, time_col, value_col


def load_series_files(paths: Sequence[str], layout: str = "auto", id_column: str = "", time_column: str = "",
                      value_column: str = "", freq: str = "", missing: str = "error") -> UserSeries:
    """Every series of every table in ``paths``, checked; one frequency for all. ``missing``: "error"
    (a missing value is bad input) or "interpolate" (filled linearly in time)."""
    if missing not in MISSING:
        raise DataError(f"data.missing {missing!r} is not one of {', '.join(MISSING)}")
    names, values, starts, freqs, filled = [], [], [], {}, 0
    for path in _existing(paths, "time-series tables"):
        table = read_table(path)
        if table.frame.empty:
            raise DataError(f"{path}: the table has a header but no rows")
        kind, id_col, time_col, value_col = _layout(table, layout, id_column, time_column, value_column)
        stamps = _times(table, time_col)
        if kind == "long":
            ids = table.column(id_col).astype(str).to_numpy()
            y = _numbers(table, value_col, missing=missing)
            groups: dict[str, list[int]] = {}
            for i, key in enumerate(ids):
                groups.setdefault(key, []).append(i)
            parts = [(key, np.asarray(rows), y[rows]) for key, rows in groups.items()]
        else:
            rows = np.arange(len(table.frame))
            parts = [(str(c), rows, _numbers(table, str(c), str(c), missing)) for c in table.frame.columns
                     if str(c) != time_col]
        for key, rows, series in parts:
            s = stamps.iloc[rows]
            f = _spacing(table, rows, s, key, freq)
            name = key if len(paths) == 1 else f"{path.stem}/{key}"
            if name in names:
                raise DataError(f"{path}: series {name!r} appears twice")
            series, n = _interpolate(series, name, path)
            filled += n
            names.append(name)
            values.append(series)
            starts.append(s.iloc[0].isoformat())
            freqs.setdefault(f, name)
    if len(freqs) > 1:
        shown = ", ".join(f"{f} ({n!r})" for f, n in freqs.items())
        raise DataError(f"the series have different frequencies: {shown}; one model serves one frequency "
                        "(build one per frequency, or give data.freq)")
    return UserSeries(names, values, starts, next(iter(freqs)), [str(p) for p in paths], filled)


def split_rows(n: int, horizon: int, val_share: float, test_share: float) -> tuple[int, int]:
    """(val rows, test rows) of a series of ``n`` rows: each a share of it, at least one horizon."""
    return max(horizon, round(n * val_share)), max(horizon, round(n * test_share))


def check_lengths(series: UserSeries, window: int, min_history: int, horizon: int, val_share: float,
                  test_share: float) -> None:
    """Every series must hold a training window (min_history + horizon) before its val and test parts."""
    for name, v in zip(series.names, series.values):
        n_val, n_test = split_rows(len(v), horizon, val_share, test_share)
        need = min_history + horizon + n_val + n_test
        if len(v) < need:
            raise DataError(f"series {name!r} has {len(v)} rows; a model with min_history {min_history} and horizon "
                            f"{horizon} needs at least {need} (training {min_history + horizon}, val {n_val}, test "
                            f"{n_test}); drop the series, or set model.min_history / model.horizon lower")
    if not any(len(v) - sum(split_rows(len(v), horizon, val_share, test_share)) >= window + horizon
               for v in series.values):
        raise DataError(f"no series is long enough for one full training window ({window} + horizon {horizon} rows "
                        f"before its val and test parts); set model.window lower")


# ---------------------------------------------------------------- translate


def _lines(path: Path) -> list[str]:
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            raise DataError(f"{path} line {n}: the line is empty; every line must hold one sentence")
    if not lines:
        raise DataError(f"{path}: the file is empty")
    return [line.rstrip("\r") for line in lines]


def read_pairs(paths: Sequence[str], src_column: str = "", tgt_column: str = "") -> list[tuple[str, str]]:
    """(source, target) pairs from two line-aligned files or one two-column table."""
    files = _existing(paths, "parallel text: a source and a target file, or one table")
    if len(files) == 2 and not any(f.suffix.lower() in TABLE_SUFFIXES for f in files):
        src, tgt = _lines(files[0]), _lines(files[1])
        if len(src) != len(tgt):
            raise DataError(f"{files[0]} has {len(src)} lines but {files[1]} has {len(tgt)}; the files must be "
                            "line-aligned (line n of one translates line n of the other)")
        return list(zip(src, tgt))
    if len(files) != 1:
        raise DataError(f"data.paths has {len(files)} files; give two line-aligned text files or one table")
    table = read_table(files[0])
    cols = [str(c) for c in table.frame.columns]
    if not (src_column and tgt_column) and len(cols) < 2:
        raise DataError(f"{files[0]}: expected two columns (source, target), found {len(cols)}")
    src_col, tgt_col = src_column or cols[0], tgt_column or cols[1]
    out = []
    for i, (s, t) in enumerate(zip(table.column(src_col), table.column(tgt_col))):
        for col, cell in ((src_col, s), (tgt_col, t)):
            if not isinstance(cell, str) or not cell.strip():
                raise DataError(f"{table.where(i)}, column {col!r}: {cell!r} is empty; expected a sentence")
        out.append((s.strip(), t.strip()))
    return out


def seeded_part(keys: Sequence[Any], split: str, seed: int, val_share: float, test_share: float, what: str) -> list[Any]:
    """``split``'s part of a seeded shuffle of ``keys`` (test first, then val, the rest train)."""
    check_split(split)
    order = list(keys)
    random.Random(seed).shuffle(order)
    n_val, n_test = round(len(order) * val_share), round(len(order) * test_share)
    if n_val < 1 or n_test < 1 or len(order) - n_val - n_test < 1:
        raise DataError(f"{len(order)} {what} are too few to split (val_share {val_share}, test_share {test_share}: "
                        "every split needs at least one)")
    lo, hi = {"test": (0, n_test), "val": (n_test, n_test + n_val), "train": (n_test + n_val, len(order))}[split]
    return order[lo:hi]


def split_pairs(pairs: Sequence[tuple[str, str]], split: str, seed: int, val_share: float,
                test_share: float) -> list[tuple[str, str]]:
    """``split`` of a seeded shuffle of the distinct targets: a sentence's translations share one split."""
    chosen = set(seeded_part(sorted({t for _, t in pairs}), split, seed, val_share, test_share,
                             "distinct target sentences"))
    return [p for p in pairs if p[1] in chosen]


# ---------------------------------------------------------------- generate


def read_corpus(paths: Sequence[str]) -> str:
    """The files' text joined (each ending in a newline)."""
    parts = []
    for path in _existing(paths, "text files"):
        text = read_text(path)
        if not text.strip():
            raise DataError(f"{path}: the file is empty")
        parts.append(text if text.endswith("\n") else text + "\n")
    return "".join(parts)


def split_corpus(text: str, split: str, val_share: float, test_share: float) -> str:
    """train, val, test: consecutive parts of the text, cut at line ends."""
    check_split(split)

    def cut(share: float) -> int:
        at = int(len(text) * share)
        nl = text.find("\n", at)
        return len(text) if nl < 0 else nl + 1

    a, b = cut(1.0 - val_share - test_share), cut(1.0 - test_share)
    part = {"train": text[:a], "val": text[a:b], "test": text[b:]}[split]
    if not part.strip():
        raise DataError(f"the text ({len(text)} characters) is too short to split: its {split} part is empty "
                        f"(val_share {val_share}, test_share {test_share})")
    return part
