"""Counts shared by the worker processes of one server (``seqserve serve --workers N``), so that a
whole-server limit (max_streams, max_speech_streams) means the same with one process or several.

A small memory-mapped file holds one cell per (count, worker). A worker only ever changes its own
cells; a count's value is the sum of its cells. Admission (read the sum, compare, add) holds an
``fcntl`` lock on the file, so two workers never both take the last slot; the kernel releases it
when a holder dies, and the supervisor zeroes a dead worker's cells before starting its successor
(whatever that worker held ended with it)."""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

COUNTS = ("streams", "speech_streams")  # the shared counts, in file order
_CELL = struct.Struct("<q")


def create(path: Path, workers: int) -> None:
    """A zeroed count file for ``workers`` workers (the supervisor, before starting them)."""
    path.write_bytes(bytes(_CELL.size * len(COUNTS) * workers))


def reset_worker(path: Path, workers: int, worker: int) -> None:
    """Zero every cell of ``worker`` (it died: what it held is gone with it)."""
    with open(path, "r+b") as f, _locked(f.fileno()):
        for c in range(len(COUNTS)):
            f.seek(_CELL.size * (c * workers + worker))
            f.write(_CELL.pack(0))


@contextmanager
def _locked(fd: int) -> Iterator[None]:
    fcntl.lockf(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)


class SharedCounts:
    """One worker's view of the count file: ``total(name)`` over every worker, ``try_add`` to its
    own cell under the lock when the total stays within a capacity."""

    def __init__(self, path: Path, workers: int, worker: int) -> None:
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} is outside 0..{workers - 1}")
        self.workers, self.worker = workers, worker
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, _CELL.size * len(COUNTS) * workers)

    def _offset(self, name: str, worker: int) -> int:
        return _CELL.size * (COUNTS.index(name) * self.workers + worker)

    def total(self, name: str) -> int:
        return sum(_CELL.unpack_from(self._map, self._offset(name, w))[0] for w in range(self.workers))

    def try_add(self, name: str, n: int, capacity: int) -> int | None:
        """Add ``n`` to this worker's cell unless the total would pass ``capacity``: returns None
        when added, else the total that refused it."""
        with _locked(self._fd):
            total = self.total(name)
            if total + n > capacity:
                return total
            self._add(name, n)
            return None

    def add(self, name: str, n: int) -> None:
        """Add ``n`` (negative to give back) to this worker's cell."""
        with _locked(self._fd):
            self._add(name, n)

    def _add(self, name: str, n: int) -> None:
        at = self._offset(name, self.worker)
        _CELL.pack_into(self._map, at, _CELL.unpack_from(self._map, at)[0] + n)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
