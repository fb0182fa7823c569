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

    async def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph in the thread pool. Raises Internal (traceback logged) if it fails."""
        loop = asyncio.get_running_loop()
        try:
            pool = self._pool
            if min(self._recent) < self._inline_s or (
                pool is not None and pool.alone() and self._by_shape.get(_shapes(feeds), math.inf) < self._inline_idle_s
            ):
                out = self.run_sync(feeds)
                await asyncio.sleep(0)  # still yield: callers loop on run()
                return out
            if pool is None:
                return await loop.run_in_executor(self._executor, self.run_sync, feeds)
            return await asyncio.wrap_future(pool.submit_counted(self.run_sync, feeds))
        except Exception as err:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            log.error("graph %s failed on inputs %s", self.name, shapes, exc_info=err)
            raise Internal(f"model graph {self.name} failed to run") from err


def _shapes(feeds: dict[str, np.ndarray]) -> tuple:
    return tuple(v.shape for v in feeds.values())
