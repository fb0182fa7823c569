"""Frequency aliases without pandas: parsing, GluonTS's season lengths, equivalent spellings; the
training side's pandas-based reading agrees; a CSV's time column gives its alias."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from service.client.csvhistory import CsvHistory
from service.contract.frequency import FrequencyError, parse, season_of
from service.core.tasks.forecast import detect_season


@pytest.mark.parametrize("alias, season", [
    ("h", 24), ("H", 24), ("1h", 24), ("2h", 12), ("5h", 1), ("30min", 48), ("15min", 96), ("T", 1440),
    ("D", 1), ("B", 5), ("W", 1), ("W-SUN", 1), ("M", 12), ("MS", 12), ("ME", 12), ("Q", 4), ("QS-DEC", 4),
    ("QE", 4), ("Y", 1), ("YS", 1), ("A", 1), ("s", 1), ("2M", 6), ("5M", 1),
])
def test_season_lengths_are_gluonts(alias, season):
    assert season_of(alias) == season


def test_pandas_reads_the_same_table():
    pytest.importorskip("pandas")
    from training.data.user import seasonality

    for alias in ("h", "2h", "30min", "15min", "D", "B", "W-SUN", "MS", "ME", "QS", "QE-DEC", "YS", "s"):
        assert seasonality(alias) == season_of(alias), alias


@pytest.mark.parametrize("a, b, same", [
    ("h", "1h", True), ("h", "60min", True), ("H", "3600s", True), ("3M", "Q", True), ("12M", "Y", True),
    ("D", "24h", True), ("W", "7D", True), ("h", "D", False), ("M", "MS", True), ("B", "D", False),
])
def test_equal_spacings_match_in_any_spelling(a, b, same):
    assert parse(a).same_as(parse(b)) is same


@pytest.mark.parametrize("alias", ["", "fortnightly", "0h", "h2", "1.5h", "-1D", "W-MONDAY", "200000min"])
def test_a_bad_alias_names_the_field_and_value(alias):
    with pytest.raises(FrequencyError) as err:
        parse(alias, "frequency")
    assert err.value.field == "frequency" and repr(alias) in str(err.value)


def _history(start: datetime, step, n: int = 6) -> CsvHistory:
    times = [start + step(k) for k in range(n)]
    return CsvHistory(names=["y"], rows=[[float(k)] for k in range(n)], times=times, time_column="t")


@pytest.mark.parametrize("step, alias", [
    (lambda k: timedelta(hours=k), "h"), (lambda k: timedelta(minutes=15 * k), "15min"),
    (lambda k: timedelta(days=k), "D"), (lambda k: timedelta(weeks=k), "W"), (lambda k: timedelta(days=2 * k), "2D"),
    (lambda k: timedelta(seconds=k), "s"), (lambda k: timedelta(seconds=1.5 * k), ""),
])
def test_a_csv_time_column_gives_its_alias(step, alias):
    assert _history(datetime(2024, 1, 1), step).frequency() == alias


def test_calendar_months_quarters_and_years():
    def months(every: int):
        return lambda k: datetime(2020 + (every * k) // 12, (every * k) % 12 + 1, 1) - datetime(2020, 1, 1)

    assert _history(datetime(2020, 1, 1), months(1)).frequency() == "M"
    assert _history(datetime(2020, 1, 1), months(3)).frequency() == "Q"
    assert _history(datetime(2020, 1, 1), months(12)).frequency() == "Y"
    assert CsvHistory(names=["y"], rows=[[1.0], [2.0]], times=[]).frequency() == ""


def _noisy(period_values, repeats: int, trend: float = 0.0, noise: float = 0.1, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.tile(np.asarray(period_values, float), repeats)
    return y + trend * np.arange(len(y)) + rng.normal(0, noise, len(y))


@pytest.mark.parametrize("period", [4, 5, 7, 12, 24, 52])
def test_detect_season_finds_a_repeating_pattern_under_trend_and_noise(period):
    import numpy as np

    shape = np.sin(2 * np.pi * np.arange(period) / period) + 0.5 * np.cos(4 * np.pi * np.arange(period) / period)
    assert detect_season(_noisy(shape, 600 // period, trend=0.05), 512) == period


def test_detect_season_prefers_the_day_to_the_week_it_repeats_in_and_respects_the_window():
    import numpy as np

    day = np.sin(2 * np.pi * np.arange(24) / 24)
    weekly = np.concatenate([day * (1.5 if d >= 5 else 1.0) for d in range(7)])  # weekends stronger
    assert detect_season(_noisy(weekly, 4), 1000) == 24
    assert detect_season(_noisy(day, 20), 1000) == 24
    assert detect_season(_noisy(day, 20), 40) == 1  # the last 40 steps cannot hold two days


@pytest.mark.parametrize("name", ["white noise", "random walk", "line", "constant", "short"])
def test_detect_season_says_1_when_nothing_repeats(name):
    import numpy as np

    rng = np.random.default_rng(1)
    y = {"white noise": rng.normal(size=500), "random walk": np.cumsum(rng.normal(size=500)),
         "line": np.arange(300.0), "constant": np.ones(300), "short": np.tile([1.0, 0.0, 2.0, 0.0], 2)}[name]
    assert detect_season(y, 512) == 1
