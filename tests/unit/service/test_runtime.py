"""GraphRuntime: graph calls cheaper than the thread hand-off run on the event loop, others on workers."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from onnx import TensorProto, helper

from service.core.admission import Admission
from service.core.runtime import GraphRuntime, RuntimeOptions, WorkerPool


class _Counting:
    """Counts the calls handed to the executor's threads."""

    submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return super().submit(*args, **kwargs)


class CountingExecutor(_Counting, ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)


class CountingPool(_Counting, WorkerPool):
    def __init__(self, workers: int = 1) -> None:
        super().__init__(max_workers=workers)


def _identity() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


async def test_cheap_calls_run_inline_after_the_first_and_never_when_disabled():
    feeds = {"x": np.arange(4, dtype=np.float32)}
    for inline_ms in (0.2, 0.0):
        with CountingExecutor() as pool:
            graph = GraphRuntime("identity", _identity(), RuntimeOptions(inline_ms=inline_ms), pool)
            for _ in range(10):
                np.testing.assert_array_equal((await graph.run(feeds))["y"], feeds["x"])
            # The first calls measure the graph on a worker; an identity costs microseconds, so
            # once one was fast the following ones stay on the event loop -- unless inlining is off.
            warm = pool.submitted
            for _ in range(5):
                await graph.run(feeds)
            if inline_ms:
                assert 1 <= warm < 10 and pool.submitted == warm
            else:
                assert pool.submitted == 15


async def test_calls_run_inline_while_requests_come_one_at_a_time(monkeypatch):
    """inline_idle_ms: a graph call whose input shapes ran quickly before stays on the event loop
    while the server has one request at a time, and goes to a worker as soon as requests overlap
    (and for SEQUENTIAL_S after the overlap ended), while a worker runs a call, for shapes not seen
    yet or slower than the bound, and with a plain executor (no view of the requests)."""
    clock = [1000.0]
    monkeypatch.setattr("service.core.admission.time.monotonic", lambda: clock[0])
    one, two = {"x": np.arange(4, dtype=np.float32)}, {"x": np.arange(5, dtype=np.float32)}
    # inline_ms 0: only the idle rule can inline; an identity takes microseconds, well under 1000 ms.
    options = RuntimeOptions(inline_ms=0.0, inline_idle_ms=1000.0)
    with CountingPool(workers=2) as pool:
        graph = GraphRuntime("identity", _identity(), options, pool)
        pool.admission.enter()  # the request making the calls
        await graph.run(one)
        assert pool.submitted == 1  # shape never measured: a worker runs it (and measures it)
        np.testing.assert_array_equal((await graph.run(one))["y"], one["x"])
        assert pool.submitted == 1  # measured and quick: inline
        await graph.run(two)
        assert pool.submitted == 2  # another shape: measured on a worker first
        pool.admission.enter()  # a second request overlaps the first...
        await graph.run(one)
        assert pool.submitted == 3
        clock[0] += 5 * Admission.SEQUENTIAL_S  # ... for a long time
        pool.admission.leave()  # alone again, but the overlap ended just now: keep handing off for a while
        await graph.run(one)
        assert pool.submitted == 4
        clock[0] += 2 * Admission.SEQUENTIAL_S  # ... until a while has passed
        await graph.run(one)
        assert pool.submitted == 4
        started, release = threading.Event(), threading.Event()
        busy = pool.submit_counted(lambda: (started.set(), release.wait(10)))  # a call still on a worker
        started.wait(10)
        assert pool.running == 1
        await graph.run(one)
        assert pool.submitted == 6  # the busy call and this one
        release.set()
        busy.result(10)
        await asyncio.sleep(0)
        pool.admission.leave()
        assert pool.admission.requests == 0 and pool.running == 0  # every hand-off was counted back
    with CountingPool() as pool:  # a bound below what the graph takes: measured, but never inline
        graph = GraphRuntime("identity", _identity(), RuntimeOptions(inline_ms=0.0, inline_idle_ms=1e-9), pool)
        for _ in range(3):
            await graph.run(one)
        assert pool.submitted == 3
    with CountingPool() as pool:  # inline_idle_ms 0: never
        graph = GraphRuntime("identity", _identity(), RuntimeOptions(inline_ms=0.0, inline_idle_ms=0.0), pool)
        for _ in range(3):
            await graph.run(one)
        assert pool.submitted == 3
    with CountingExecutor() as plain:  # not a WorkerPool: it cannot tell whether requests overlap
        graph = GraphRuntime("identity", _identity(), options, plain)
        for _ in range(3):
            await graph.run(one)
        assert plain.submitted == 3


async def test_a_cancelled_caller_leaves_its_call_counted_until_the_worker_is_done():
    with WorkerPool(max_workers=1) as pool:
        started, release = threading.Event(), threading.Event()
        waiter = asyncio.ensure_future(asyncio.wrap_future(pool.submit_counted(lambda: (started.set(), release.wait(10)))))
        queued = pool.submit_counted(lambda: None)  # behind it: cancelled before it starts
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        waiter.cancel()
        assert queued.cancel()
        await asyncio.sleep(0)
        assert pool.running == 1  # the call still runs on its worker
        release.set()
        for _ in range(100):
            if pool.running == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.running == 0
