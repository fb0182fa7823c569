"""ThrottledLog: one warning per (method, code) per period, then a count of what it held back."""

from __future__ import annotations

import logging

from service.front.status import ThrottledLog


def test_a_flood_becomes_one_line_per_period_with_the_count(caplog):
    now = [100.0]
    throttled = ThrottledLog(every_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="service.front.servicers"):
        for _ in range(500):
            throttled.warning("Forecast", "RESOURCE_EXHAUSTED", "queue is full")
        throttled.warning("Forecast", "INVALID_ARGUMENT", "history is empty")  # another code: its own line
        now[0] += 12.5
        throttled.warning("Forecast", "RESOURCE_EXHAUSTED", "queue is full")
        throttled.warning("Forecast", "RESOURCE_EXHAUSTED", "queue is full")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "Forecast -> RESOURCE_EXHAUSTED: queue is full",
        "Forecast -> INVALID_ARGUMENT: history is empty",
        "Forecast -> RESOURCE_EXHAUSTED: queue is full (and 499 more in the last 12 s)",
    ]
