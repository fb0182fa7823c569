"""Requests admitted by the engine and not finished, and whether they come one at a time."""

from __future__ import annotations

import math
import time


class Admission:
    """The engine's count of requests in the server (``enter``/``leave``, on the event loop thread).

    ``one_at_a_time()`` tells the runtime when a graph call has nothing to overlap: then handing it
    to a worker thread and back is pure latency (see WorkerPool.alone)."""

    SEQUENTIAL_S = 1.0  # one_at_a_time(): no two requests overlapped for this long

    def __init__(self) -> None:
        self.requests = 0
        self._overlapped = -math.inf  # time.monotonic() when two requests last overlapped

    def enter(self) -> None:
        self.requests += 1
        if self.requests > 1:
            self._overlapped = time.monotonic()

    def leave(self) -> None:
        if self.requests > 1:  # the overlap lasted until now
            self._overlapped = time.monotonic()
        self.requests -= 1

    def one_at_a_time(self) -> bool:
        """At most one request in the server, and no two overlapped for SEQUENTIAL_S. (Only "at
        most one now" would also hold at every batch boundary under load, when a batch's requests
        all finish at once: the first request of the next round would then hold the event loop
        while the others arrive.)"""
        return self.requests <= 1 and time.monotonic() - self._overlapped > self.SEQUENTIAL_S
