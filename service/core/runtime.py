"""onnxruntime wrapper: one InferenceSession per graph, run in a thread pool off the event loop."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from service.contract import ORT_DTYPES, Found, GraphSpec, check_graph
from service.inference.sessions import RuntimeOptions, load_session

from .admission import Admission
from .errors import Internal

log = logging.getLogger(__name__)
T = TypeVar("T")

class WorkerPool(ThreadPoolExecutor):
    """The engine's threads for graph calls: ``running`` counts the calls handed to the workers by
    ``submit_counted`` and not finished (a cancelled caller's call still counts until its thread is
    done with it); ``admission`` is the engine's count of requests, read by ``alone()``."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "", admission: Admission | None = None) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.admission = admission if admission is not None else Admission()
        self.running = 0
        self._running_lock = threading.Lock()  # running drops in the worker threads

    def submit_counted(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """``submit``, counting the call in ``running`` until it is done (or cancelled unstarted)."""
        with self._running_lock:
            self.running += 1
        try:
            future = self.submit(fn, *args)
        except BaseException:
            self._call_done(None)
            raise
        future.add_done_callback(self._call_done)
        return future

    def _call_done(self, _future: Future | None) -> None:
        with self._running_lock:
            self.running -= 1

    def alone(self) -> bool:
        """Requests come one at a time (``Admission.one_at_a_time``) and no graph call is on a
        worker: nothing a hand-off could overlap."""
        return not self.running and self.admission.one_at_a_time()


_SHAPES_KEPT = 256  # input shapes whose last duration a GraphRuntime remembers (inline_idle_ms)


class GraphRuntime:
    """One ONNX graph. ``run`` executes on ``executor`` so the event loop never blocks, except calls
    so short that the hand-off would cost more (``options.inline_ms``), and short calls while requests
    come one at a time (``options.inline_idle_ms``, with a WorkerPool); the session is thread-safe,
    so batchers and step schedulers may share it."""

    def __init__(self, name: str, model: bytes, options: RuntimeOptions, executor: Executor) -> None:
        self.name = name
        self._executor = executor
        self._inline_s = options.inline_ms / 1000.0
        self._inline_idle_s = options.inline_idle_ms / 1000.0
        self._pool = executor if isinstance(executor, WorkerPool) and self._inline_idle_s else None
        self._session = load_session(model, options)
        self.inputs = {i.name: (i.type, i.shape) for i in self._session.get_inputs()}
        self.outputs = [o.name for o in self._session.get_outputs()]
        # Durations of the last calls: the fastest of them is the graph's own cost. (A call on a
        # worker thread also waits for the GIL; judged by the last call alone, a small graph stuck
        # on the worker once could look too slow to come back.)
        self._recent: deque[float] = deque([math.inf], maxlen=16)
        # The last duration per input shapes (for inline_idle_ms: a batch of 32 is not a batch of 1).
        self._by_shape: OrderedDict[tuple, float] = OrderedDict()

    def check(self, spec: GraphSpec) -> None:
        """Raise BundleError unless the graph's inputs and outputs are the contract's ``spec``."""
        def found(args) -> list[Found]:
            return [Found(a.name, ORT_DTYPES.get(a.type, a.type), tuple(a.shape)) for a in args]

        check_graph(self.name, spec, found(self._session.get_inputs()), found(self._session.get_outputs()))

    def run_sync(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph in the calling thread; returns every output by name."""
        start = time.perf_counter()
        values = self._session.run(self.outputs, feeds)
        elapsed = time.perf_counter() - start
        self._recent.append(elapsed)
        if self._pool is not None:
            shapes = _shapes(feeds)
            # Worker threads update it too; each operation is atomic under the GIL, and a KeyError
            # (another thread evicted the entry between two of them) only loses a measurement.
            try:
                self._by_shape[shapes] = elapsed
                self._by_shape.move_to_end(shapes)  # the least recently run shapes go first
                if len(self._by_shape) > _SHAPES_KEPT:
                    self._by_shape.popitem(last=False)
            except KeyError:
                pass
        return dict(zip(self.outputs, values))

    def _inline(self, feeds: dict[str, np.ndarray]) -> bool:
        pool = self._pool
        return min(self._recent) < self._inline_s or (
            pool is not None and pool.alone() and self._by_shape.get(_shapes(feeds), math.inf) < self._inline_idle_s)

    def _failed(self, feeds: dict[str, np.ndarray], err: BaseException) -> Internal:
        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        log.error("graph %s failed on inputs %s", self.name, shapes, exc_info=err)
        return Internal(f"model graph {self.name} failed to run")

    def _submit(self, feeds: dict[str, np.ndarray], work: Callable | None = None) -> Future:
        args = (self.run_sync, feeds) if work is None else (work, self.run_sync, feeds)
        if self._pool is None:
            return self._executor.submit(*args)
        return self._pool.submit_counted(*args)

    async def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph in the thread pool. Raises Internal (traceback logged) if it fails."""
        try:
            if self._inline(feeds):
                out = self.run_sync(feeds)
                await asyncio.sleep(0)  # still yield: callers loop on run()
                return out
            return await asyncio.wrap_future(self._submit(feeds))
        except Exception as err:
            raise self._failed(feeds, err) from err

    def start(self, feeds: dict[str, np.ndarray], work: Callable[[Callable, dict[str, np.ndarray]], T] | None = None,
              ) -> asyncio.Future:
        """``run``, begun before this returns: on a worker thread (or already done, when inline),
        so the caller can work while the graph runs. ``work(run_sync, feeds)``, when given, runs
        instead, always on a worker thread (several graph calls and what goes between them). The
        future fails with Internal."""
        out: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            if work is not None:
                inner = asyncio.wrap_future(self._submit(feeds, work))
            elif self._inline(feeds):
                out.set_result(self.run_sync(feeds))
                return out
            else:
                inner = asyncio.wrap_future(self._submit(feeds))
        except Exception as err:
            out.set_exception(self._failed(feeds, err))
            return out

        def settle(f: asyncio.Future) -> None:
            if out.done():  # the caller cancelled it
                return
            if f.cancelled():
                out.cancel()
            elif (err := f.exception()) is not None:
                out.set_exception(self._failed(feeds, err))
            else:
                out.set_result(f.result())

        inner.add_done_callback(settle)
        return out


def _shapes(feeds: dict[str, np.ndarray]) -> tuple:
    return tuple(v.shape for v in feeds.values())
