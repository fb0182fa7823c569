"""Small PromQL helpers for the deployment tests: which metric names an expression reads."""

from __future__ import annotations

import re

# Words that look like identifiers in PromQL but are not metric names.
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "start", "end", "atan2",
}
# Grafana's variables, replaced with values Prometheus accepts.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$model": ".*"}


def grafana_to_promql(expr: str) -> str:
    """Substitute the dashboard's Grafana variables so Prometheus can parse ``expr``."""
    for var, val in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, val)
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r}")
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (functions, keywords and labels excluded)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        start, token = m.start(), m.group()
        if start and (s[start - 1].isdigit() or s[start - 1] == "."):
            continue  # the exponent of a number such as 1e3
        if token.lower() in KEYWORDS or s[m.end():].lstrip().startswith("("):
            continue  # keyword, function or aggregation
        names.add(token)
    return names
