"""The counts the worker processes of one server share (service.core.shared)."""

from __future__ import annotations

import multiprocessing

import pytest

from service.core import shared
from service.core.errors import ResourceExhausted
from service.core.scheduler import StreamSlots
from service.core.tasks.context import SpeechStreams


def test_every_worker_sees_the_total_and_none_passes_the_capacity(tmp_path):
    path = tmp_path / "counts"
    shared.create(path, 3)
    a, b, c = (shared.SharedCounts(path, 3, i) for i in range(3))
    assert a.try_add("streams", 2, 4) is None
    assert b.try_add("streams", 2, 4) is None
    assert c.try_add("streams", 1, 4) == 4  # refused: the total that refused it
    assert a.total("streams") == b.total("streams") == c.total("streams") == 4
    assert a.total("speech_streams") == 0  # counts are separate
    b.add("streams", -1)
    assert c.try_add("streams", 1, 4) is None and a.total("streams") == 4
    shared.reset_worker(path, 3, 0)  # worker 0 died: its 2 are gone
    assert c.total("streams") == 2


def test_stream_slots_and_speech_streams_count_across_workers(tmp_path):
    path = tmp_path / "counts"
    shared.create(path, 2)
    one, two = StreamSlots(3, shared.SharedCounts(path, 2, 0)), StreamSlots(3, shared.SharedCounts(path, 2, 1))
    leases = [one.acquire(2), two.acquire(1)]
    with pytest.raises(ResourceExhausted, match="3 of 3 decoding streams are in use; 1 more requested"):
        two.acquire(1)
    leases[0].release()
    leases[0].release()  # idempotent
    assert one.in_use == two.in_use == 1
    speech = [SpeechStreams(2, shared.SharedCounts(path, 2, i)) for i in range(2)]
    assert speech[0].try_open() is None and speech[1].try_open() is None
    assert speech[0].try_open() == 2  # refused: two of two are open, one in each worker
    speech[1].close()
    assert speech[0].try_open() is None and speech[0].open == speech[1].open == 2


def _take(path, worker, n, results):
    counts = shared.SharedCounts(path, 8, worker)
    results.put(sum(counts.try_add("streams", 1, 50) is None for _ in range(n)))


def test_processes_racing_for_the_last_slots_take_exactly_the_capacity(tmp_path):
    """Eight processes each try 20 slots of a capacity of 50 at once: exactly 50 are granted."""
    path = tmp_path / "counts"
    shared.create(path, 8)
    results = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=_take, args=(path, w, 20, results)) for w in range(8)]
    for p in procs:
        p.start()
    granted = sum(results.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert granted == 50
    assert shared.SharedCounts(path, 8, 0).total("streams") == 50
