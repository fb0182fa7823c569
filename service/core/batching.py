"""Dynamic batcher for whole-sequence graph calls: bounded queue, max batch size, max wait,
one future per request; requests with different keys (e.g. history lengths) never share a call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import DeadlineExceeded, ResourceExhausted, Unavailable
from .observe import NULL_METER, GraphMeter, label_request

log = logging.getLogger(__name__)

P = TypeVar("P")  # one request's payload
R = TypeVar("R")  # one request's result


@dataclass(eq=False)  # compared by identity: a cancelled caller takes its own entry out of the queue
class _Pending(Generic[P]):
    payload: P
    key: Hashable
    deadline: float | None  # time.monotonic() value
    future: asyncio.Future
    enqueued: float


class DynamicBatcher(Generic[P, R]):
    """Collects submitted payloads into batches and runs ``run_batch(payloads) -> results`` (same
    order, same length) for each group of equal ``key(payload)``. Up to ``max_concurrent`` batches
    run at once (one per worker thread of the engine, so that every core computes); the next ones
    fill meanwhile. A failed batch fails each of its requests with the same error."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[P]], Awaitable[list[R]]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        key: Callable[[P], Hashable] = lambda payload: None,
        meter: GraphMeter = NULL_METER,
        max_concurrent: int = 1,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self.name = name
        self.max_concurrent = max_concurrent
        self._meter = meter
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._key = key
        self._queue: deque[_Pending[P]] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._slot_free = asyncio.Event()
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher {self.name}")

    async def submit(self, payload: P, deadline: float | None = None) -> R:
        """Queue one request and wait for its result. Raises ResourceExhausted at once when the
        queue is full, DeadlineExceeded when its deadline passes before its batch runs,
        Unavailable after close(), or whatever its batch raised."""
        if self._closed:
            raise Unavailable(f"{self.name} is shutting down")
        if len(self._queue) >= self.max_queue:
            label_request(reason="queue_full")
            raise ResourceExhausted(f"queue of {self.name} is full ({self.max_queue} requests waiting); retry later")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        item = _Pending(payload, self._key(payload), deadline, future, time.monotonic())
        self._queue.append(item)
        self._meter.queue_depth(len(self._queue))
        self._arrived.set()
        if len(self._queue) >= self.max_batch_size:
            self._full.set()
        try:
            return await future
        except asyncio.CancelledError:
            # The caller is gone (its deadline passed, it cancelled): its place in the queue is freed
            # now, not when a batch would have reached it, so that the queue bound counts live
            # callers only. Already taken into a batch: that batch skips it.
            try:
                self._queue.remove(item)
            except ValueError:
                pass
            else:
                self._meter.queue_depth(len(self._queue))
            raise

    async def close(self) -> None:
        """Refuse new requests, run what is queued, then stop the worker."""
        self._closed = True
        self._arrived.set()
        self._full.set()
        if self._task is not None:
            await self._task
            self._task = None
        for item in self._queue:  # never started: fail rather than hang
            if not item.future.done():
                item.future.set_exception(Unavailable(f"{self.name} is shutting down"))
        self._queue.clear()
        self._meter.clear()  # the version is going away: drop its gauges

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    if self._running:
                        await asyncio.gather(*self._running, return_exceptions=True)
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if len(self._running) >= self.max_concurrent:  # every worker busy: the queue fills
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            wait = self._queue[0].enqueued + self.max_wait_s - time.monotonic()
            if wait > 0 and len(self._queue) < self.max_batch_size and not self._closed:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
            batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            if len(self._queue) < self.max_batch_size:
                self._full.clear()
            self._meter.queue_depth(len(self._queue))
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._slot_free.set()

    async def _run(self, batch: list[_Pending[P]]) -> None:
        now = time.monotonic()
        groups: dict[Hashable, list[_Pending[P]]] = {}
        for item in batch:
            if item.future.done():  # the caller gave up (cancelled)
                continue
            if item.deadline is not None and now >= item.deadline:
                item.future.set_exception(DeadlineExceeded(f"deadline passed while queued in {self.name}"))
                continue
            groups.setdefault(item.key, []).append(item)
        for items in groups.values():
            started = time.monotonic()
            try:
                results = await self._run_batch([i.payload for i in items])
                if len(results) != len(items):
                    raise RuntimeError(f"{self.name}: batch of {len(items)} gave {len(results)} results")
            except BaseException as err:  # noqa: BLE001 - every request of the batch gets the error
                if isinstance(err, asyncio.CancelledError):
                    for i in items:
                        if not i.future.done():
                            i.future.set_exception(Unavailable(f"{self.name} is shutting down"))
                    raise
                if not isinstance(err, Exception):
                    raise
                for i in items:
                    if not i.future.done():
                        i.future.set_exception(err)
                continue
            finished = time.monotonic()
            self._meter.batch(len(items), finished - started)
            for i in items:
                self._meter.item(started - i.enqueued, finished - started)
            for i, result in zip(items, results):
                if not i.future.done():
                    i.future.set_result(result)

