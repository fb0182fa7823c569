"""A forecast history from the CSV files people have: any delimiter, a BOM or Latin-1, with or
without a header, a time column, an index column, missing values and thousands separators."""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TextIO

MISSING = {"", "nan", "na", "n/a", "null", "none", "-", "?"}
TIME_NAMES = {"date", "time", "timestamp", "datetime", "ds", "period"}
INDEX_NAMES = {"", "index", "id", "unnamed: 0"}
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}([,\u00a0 ']\d{3})+(\.\d+)?$")
_DECIMAL_COMMA = re.compile(r"^[-+]?\d+,\d+$")
_TIME_FORMATS = ("%d/%m/%Y %H:%M", "%d/%m/%Y", "%m/%d/%Y %H:%M", "%m/%d/%Y", "%d.%m.%Y %H:%M", "%d.%m.%Y",
                 "%Y/%m/%d %H:%M", "%Y/%m/%d")


@dataclass
class CsvHistory:
    """What a CSV gave: the value columns used, their rows (time steps), and the time column's values."""

    names: list[str]
    rows: list[list[float]]
    times: list[datetime] | None = None
    time_column: str = ""
    notes: list[str] = field(default_factory=list)  # what was chosen without being asked, for stderr

    def next_times(self, n: int) -> list[datetime] | None:
        """``n`` timestamps continuing the time column by its usual step (the median of its steps)."""
        if not self.times or len(self.times) < 2:
            return None
        step = statistics.median(b - a for a, b in zip(self.times, self.times[1:]))
        if step <= timedelta(0):
            return None
        return [self.times[-1] + step * (k + 1) for k in range(n)]

    def frequency(self) -> str:
        """The time column's usual step as a pandas-style alias ("15min", "h", "D", "W", "M", "Q", "Y"),
        "" without a time column or for a step that is none of those."""
        if not self.times or len(self.times) < 3:
            return ""
        step = statistics.median(b - a for a, b in zip(self.times, self.times[1:])).total_seconds()
        days = step / 86400
        for low, high, alias in ((28, 31, "M"), (89, 92, "Q"), (365, 366, "Y")):
            if low <= days <= high:
                return alias
        seconds = round(step)
        if seconds <= 0 or abs(step - seconds) > 1e-6:
            return ""
        for unit, size in (("W", 604800), ("D", 86400), ("h", 3600), ("min", 60), ("s", 1)):
            if seconds % size == 0:
                return unit if seconds == size else f"{seconds // size}{unit}"
        return ""


def parse_number(text: str, delimiter: str = ",") -> float | None:
    """A finite number from a cell ("1.5", "30,000", "1 234.5", "3,5" in a ';' file), else None."""
    cell = text.strip()
    if _THOUSANDS.match(cell) and not (delimiter == ";" and _DECIMAL_COMMA.match(cell)):
        cell = re.sub(r"[,\u00a0 ']", "", cell)
    elif delimiter == ";" and _DECIMAL_COMMA.match(cell):
        cell = cell.replace(",", ".")
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_time(text: str) -> datetime | None:
    cell = text.strip()
    if not cell or parse_number(cell) is not None:
        return None
    try:
        return datetime.fromisoformat(cell.replace("Z", "+00:00"))
    except ValueError:
        pass
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(cell, fmt)
        except ValueError:
            continue
    return None


def _compact_time(text: str) -> datetime | None:
    """A named time column's compact dates: 20240131 (YYYYMMDD) or 202401 (YYYYMM)."""
    cell = text.strip()
    for fmt, width in (("%Y%m%d", 8), ("%Y%m", 6)):
        if len(cell) == width and cell.isdigit():
            try:
                return datetime.strptime(cell, fmt)
            except ValueError:
                return None
    return None


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # every byte is a character: Excel's western default


def _dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    try:
        return csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        return csv.excel


def _is_header(row: list[str], delimiter: str) -> bool:
    """A first row is a header when a cell in it is neither a number, a time nor a missing value."""
    return any(c.strip().lower() not in MISSING and parse_number(c, delimiter) is None and parse_time(c) is None
               for c in row)


def read_csv_history(path: str, columns: Sequence[str] = (), stdin: TextIO | None = None,
                     channels: int | Callable[[], int] = 0) -> CsvHistory:
    """Read a history for a model of ``channels`` channels (0 = unknown; a callable is asked only
    when the file has more than one candidate column) from the CSV at ``path``
    ("-" = ``stdin``). ``columns`` names the value columns; without them the numeric columns other
    than a time or index column are used (the last ``channels`` of them when there are more).
    Raises ValueError naming the file, line and column of anything unusable."""
    if path == "-":
        source = stdin if stdin is not None else io.StringIO("")
        text = _decode(source.buffer.read()) if hasattr(source, "buffer") else source.read()
    else:
        with open(path, "rb") as f:
            text = _decode(f.read())
    dialect = _dialect(text)
    delimiter = getattr(dialect, "delimiter", ",")
    table = [row for row in csv.reader(io.StringIO(text), dialect) if any(c.strip() for c in row)]
    if not table:
        raise ValueError(f"{path}: no data rows")
    header = _is_header(table[0], delimiter)
    width = max(len(r) for r in table)
    names = [c.strip() for c in table[0]] if header else [f"column {i + 1}" for i in range(width)]
    names += [f"column {i + 1}" for i in range(len(names), width)]
    first_line = 2 if header else 1
    records = table[1:] if header else table
    if not records:
        raise ValueError(f"{path}: a header row but no data rows")

    def cells(col: int) -> list[str]:
        return [r[col] if col < len(r) else "" for r in records]

    time_col = next((i for i, n in enumerate(names)
                     if all(parse_time(c) is not None for c in cells(i) if c.strip().lower() not in MISSING)
                     and any(c.strip() for c in cells(i))), None)
    if time_col is None:
        time_col = next((i for i, n in enumerate(names) if n.lower() in TIME_NAMES), None)
    notes: list[str] = []
    if columns:
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(map(repr, missing))}; columns are {', '.join(names)}")
        chosen = [names.index(c) for c in columns]
    else:
        def numeric(i: int) -> bool:
            values = [c for c in cells(i) if c.strip().lower() not in MISSING]
            return bool(values) and all(parse_number(c, delimiter) is not None for c in values)

        def index_like(i: int) -> bool:
            if names[i].lower() in INDEX_NAMES:
                return True
            values = [parse_number(c, delimiter) for c in cells(i)]  # 0, 1, 2, ... or 1, 2, 3, ...
            return len(values) > 2 and values[0] in (0, 1) and all(v == values[0] + k for k, v in enumerate(values))

        candidates = [i for i in range(width) if i != time_col and numeric(i) and not index_like(i)]
        if not candidates:
            raise ValueError(f"{path}: no numeric column among {', '.join(map(repr, names))}; name one with --column")
        wanted = channels() if callable(channels) and len(candidates) > 1 else channels
        wanted = wanted if isinstance(wanted, int) else 0
        chosen = candidates[-wanted:] if 0 < wanted < len(candidates) else candidates
        if len(chosen) < len(candidates) or len(candidates) < width - (time_col is not None):
            notes.append(f"{path}: using {', '.join(repr(names[i]) for i in chosen)}"
                         + (f" (time: {names[time_col]!r})" if time_col is not None else "")
                         + "; choose others with --column")
    rows: list[list[float]] = []
    for n, record in enumerate(records, start=first_line):
        row = []
        for i in chosen:
            cell = record[i] if i < len(record) else ""
            if cell.strip().lower() in MISSING:
                raise ValueError(f"{path}: line {n}, column {names[i]!r}: missing value ({cell!r}); every step "
                                 "needs one: fill or drop that row")
            value = parse_number(cell, delimiter)
            if value is None:
                raise ValueError(f"{path}: line {n}, column {names[i]!r}: {cell!r} is not a number")
            row.append(value)
        rows.append(row)
    times = None
    if time_col is not None:
        parsed = [parse_time(c) or _compact_time(c) for c in cells(time_col)]
        times = parsed if all(t is not None for t in parsed) else None
    return CsvHistory([names[i] for i in chosen], rows, times, names[time_col] if time_col is not None else "", notes)
