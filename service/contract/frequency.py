"""Pandas-style frequency aliases ("h", "30min", "D", "W", "M", "Q", "Y", ...): parsed without pandas
(the serving install has none), compared, and mapped to a season length as GluonTS's
``get_seasonality`` defines it -- minutes and hours: a day; business days: a week (5); months: a year
(12); quarters: a year (4); seconds, days, weeks, years: 1; a multiple that does not divide the
period: 1. The training side (``training.data.user.seasonality``) uses the same table."""

from __future__ import annotations

import re
from dataclasses import dataclass

# unit spellings -> canonical unit (pandas' current and older aliases, either case where pandas allows it)
UNITS = {
    "s": "s", "S": "s", "sec": "s",
    "min": "min", "T": "min",
    "h": "h", "H": "h",
    "D": "D", "d": "D",
    "B": "B",
    "W": "W",
    "M": "M", "MS": "M", "ME": "M", "BM": "M", "BMS": "M", "BME": "M",
    "Q": "Q", "QS": "Q", "QE": "Q", "BQ": "Q", "BQS": "Q", "BQE": "Q",
    "Y": "Y", "YS": "Y", "YE": "Y", "A": "Y", "AS": "Y", "BA": "Y", "BY": "Y", "BYS": "Y", "BYE": "Y",
}
# GluonTS's seasonal period of one step of each unit (gluonts.time_feature.get_seasonality)
PERIODS = {"min": 1440, "h": 24, "B": 5, "M": 12, "Q": 4}
SECONDS = {"s": 1, "min": 60, "h": 3600, "D": 86400, "W": 7 * 86400}  # fixed-length units
MONTHS = {"M": 1, "Q": 3, "Y": 12}
_ALIAS = re.compile(r"^\s*(\d*)\s*([A-Za-z]+)(?:-[A-Za-z]{3})?\s*$")  # "15min", "W-SUN", "QS-DEC"
EXAMPLES = '"h", "30min", "D", "B", "W", "M", "Q" or "Y", optionally with a multiple such as "15min"'


@dataclass(frozen=True)
class Frequency:
    n: int  # steps of the unit per observation, >= 1
    unit: str  # canonical: s, min, h, D, B, W, M, Q, Y

    @property
    def season(self) -> int:
        """GluonTS's seasonal period: observations per day (minutes, hours), per week (business days) or
        per year (months, quarters); 1 for seconds, days, weeks and years, or when ``n`` does not divide it."""
        period = PERIODS.get(self.unit, 1)
        return period // self.n if period % self.n == 0 else 1

    def same_as(self, other: "Frequency") -> bool:
        """True when both name the same spacing ("h" and "60min", "3M" and "Q")."""
        for table in (SECONDS, MONTHS):
            if self.unit in table and other.unit in table:
                return self.n * table[self.unit] == other.n * table[other.unit]
        return (self.n, self.unit) == (other.n, other.unit)

    def __str__(self) -> str:
        return self.unit if self.n == 1 else f"{self.n}{self.unit}"


class FrequencyError(ValueError):
    def __init__(self, field: str, alias: str) -> None:
        super().__init__(f"{field} {alias!r} is not a frequency; use a pandas-style alias: {EXAMPLES}")
        self.field = field


def parse(alias: str, field: str = "frequency") -> Frequency:
    """``alias`` as a Frequency; raises FrequencyError (a ValueError) naming ``field`` and the value."""
    match = _ALIAS.match(alias)
    unit = UNITS.get(match.group(2)) if match else None
    n = int(match.group(1)) if match and match.group(1) else 1
    if unit is None or not 1 <= n <= 100_000:
        raise FrequencyError(field, alias)
    return Frequency(n, unit)


def season_of(alias: str, field: str = "frequency") -> int:
    """The season length (steps) of a frequency alias, as GluonTS defines it."""
    return parse(alias, field).season
