"""More real series for forecast-global's corpus, read from data files that ship inside packages on the index.

Each package and each dataset's terms (checked against the files in the installed wheels):
- vega_datasets 0.9.0 (MIT): hourly temperatures of Seattle and San Francisco in 2010 and Seattle's
  daily weather 2012-2015 (NOAA, public domain); monthly closing prices of AAPL, AMZN, IBM and MSFT
  2000-2010. Left out: ``us-employment`` (BLS series of the benchmark's fpp3 ``us_employment``) and
  GOOG (the benchmark's ``goog``); ``iowa-electricity`` is too short.
- arch 8.0.0 (NCSA): FRED's core CPI, AAA/BAA corporate bond yields, WTI crude oil price; Brent and
  WTI monthly; the Fama-French factors (monthly); S&P 500, NASDAQ and VIX closes (trading days).
- bokeh_sampledata 2026.1 (BSD-3; each dataset's terms in its ``licenses/datasets.json``): continuous
  glucose readings (public domain, 5-minute readings summed to hourly means), NERACOOS sea surface
  temperature every 30 minutes ("free to use and redistribute"), Quandl WIKI daily prices of AAPL,
  IBM and MSFT (public domain; GOOG left out as above), BLS monthly unemployment 1948-2013 and CDC
  marriages and divorces 1867-2014 (public domain). Left out: CO2 emissions of 168 countries, one
  quantity that would be most of the corpus's real series (rows are drawn uniformly over series).

Temporal aggregation widens the thin groups: each daily or trading-day series also enters as its
weekly means (complete weeks), each hourly one as its daily means. Nothing is copied into the
project; the train extra installs the three packages.
"""

from __future__ import annotations

import importlib.resources
import warnings

from training.data.corpus_sources import CorpusSeries
from training.data.files import DataError
from training.data.public_series import _clean

LEFT_OUT_TICKERS = ("GOOG",)  # the zero-shot benchmark's goog (fpp2) is Google's price too


def _file(package: str, *parts: str):
    return importlib.resources.files(package).joinpath(*parts)


def _series(source: str, name: str, group: str, values) -> CorpusSeries:
    return CorpusSeries(source, name, group, _clean(name, values)[1])


def _regular(frame, time: str, value: str, rule: str):
    """``frame[value]`` on a regular grid of ``rule`` (means of the readings in each step), by ``frame[time]``."""
    import pandas as pd

    s = pd.Series(pd.to_numeric(frame[value], errors="coerce").to_numpy(),
                  index=pd.to_datetime(frame[time], utc=True)).sort_index()
    return s.resample(rule).mean()


def _aggregated(source: str, name: str, group: str, frame, time: str, value: str) -> list[CorpusSeries]:
    """The series at its own step and its means over the next longer period (daily -> weekly, hourly -> daily),
    complete periods only."""
    rule, coarse, label = {"daily": ("D", "W", "weekly"), "business": ("B", "W", "weekly"),
                           "hourly": ("h", "D", "daily"), "30min": ("30min", "D", "daily")}[group]
    fine = _regular(frame, time, value, rule)
    if group == "business":  # trading days: the days that have a price, in order (holidays are not gaps)
        fine = fine[fine.index.dayofweek < 5].dropna()
    out = [_series(source, name, group, fine.to_numpy())]
    grouped = fine.resample(coarse)
    means, counts = grouped.mean(), grouped.count()
    full = counts == counts.max()  # partial periods at either end are cut; inside, a holiday week stays
    means = means[full.cummax() & full[::-1].cummax()[::-1]]
    out.append(_series(source, f"{name} ({label} means)", label, means.to_numpy()))
    return [s for s in out if len(s.values)]


def vega_series() -> list[CorpusSeries]:
    import pandas as pd

    d = _file("vega_datasets", "_data")
    out = []
    for city in ("seattle", "sf"):
        f = pd.read_csv(d / f"{city}-temps.csv")
        out += _aggregated("vega_datasets", f"{city}-temps", "hourly", f, "date", "temp")
    weather = pd.read_csv(d / "seattle-weather.csv")
    for col in ("temp_max", "temp_min", "precipitation", "wind"):
        out += _aggregated("vega_datasets", f"seattle-weather/{col}", "daily", weather, "date", col)
    stocks = pd.read_csv(d / "stocks.csv")
    for ticker, rows in stocks.groupby("symbol"):
        if ticker not in LEFT_OUT_TICKERS:
            out.append(_series("vega_datasets", f"stocks/{ticker}", "monthly", rows["price"]))
    return out


def arch_series() -> list[CorpusSeries]:
    import pandas as pd

    d = _file("arch", "data")
    out = [_series("arch", "core_cpi", "monthly", pd.read_csv(d / "core_cpi" / "core-cpi.csv.gz")["CPILFESL"])]
    crude = pd.read_csv(d / "crude" / "crude.csv.gz")
    out += [_series("arch", f"crude/{c}", "monthly", crude[c]) for c in ("Brent", "WTI")]
    default = pd.read_csv(d / "default" / "default.csv.gz")
    out += [_series("arch", f"default/{c}", "monthly", default[c]) for c in ("AAA", "BAA")]
    french = pd.read_csv(d / "frenchdata" / "frenchdata.csv.gz")
    out += [_series("arch", f"frenchdata/{c}", "monthly", french[c]) for c in ("Mkt-RF", "SMB", "HML", "RF")]
    for name, col in (("sp500", "Adj Close"), ("nasdaq", "Adj Close"), ("vix", "vix"), ("wti", "DCOILWTICO")):
        frame = pd.read_csv(d / name / f"{name}.csv.gz")
        out += _aggregated("arch", name, "business", frame, "Date", col)
    return out


def bokeh_series() -> list[CorpusSeries]:
    import pandas as pd

    d = _file("bokeh_sampledata", "_data")
    cgm = pd.read_csv(d / "CGM.csv.gz")
    out = _aggregated("bokeh_sampledata", "glucose", "hourly", cgm, "datetime", "glucose")
    sst = pd.read_csv(d / "sea_surface_temperature.csv.gz")
    out += _aggregated("bokeh_sampledata", "sea_surface_temperature", "30min", sst, "time (UTC)", "temperature (celsius)")
    stocks = pd.read_csv(d / "stocks.csv.gz")
    for ticker, rows in stocks.groupby("Ticker"):
        if ticker not in LEFT_OUT_TICKERS and len(rows) >= 1000:
            out += _aggregated("bokeh_sampledata", f"stocks/{ticker}", "business", rows, "Date", "Adj Close")
    unemployment = pd.read_csv(d / "unemployment1948.csv")
    months = [c for c in unemployment.columns if c not in ("Year", "Annual")]
    out.append(_series("bokeh_sampledata", "unemployment1948", "monthly", unemployment[months].to_numpy().ravel()))
    marriages = pd.read_csv(d / "us_marriages_divorces.csv")
    out += [_series("bokeh_sampledata", f"us_marriages_divorces/{c}", "yearly", marriages[c])
            for c in ("Marriages", "Divorces", "Marriages_per_1000", "Divorces_per_1000")]
    return out


LOADERS = {"vega_datasets": vega_series, "arch": arch_series, "bokeh_sampledata": bokeh_series}


def package_series(sources=tuple(LOADERS)) -> list[CorpusSeries]:
    """Every series of ``sources`` (names of LOADERS); DataError naming the install when a package is missing."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for source in sources:
            try:
                out += LOADERS[source]()
            except ModuleNotFoundError as e:
                raise DataError(f"data.corpus_sources names {source}, which is not installed ({e}); "
                                "pip install -e '.[train]' brings it") from e
    return out
