"""Step-level (continuous) batching of autoregressive decoding: every active stream or beam
advances through one shared decoder call per step; streams join and leave between steps."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from service.inference.steps import StepLayout

from .errors import (
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from .observe import NULL_METER, GraphMeter, label_request
from .runtime import GraphRuntime

log = logging.getLogger(__name__)


class StreamSlots:
    """The server-wide cap on concurrently admitted generation streams and translation beam
    searches (one slot per sentence, whatever its beam). Full -> ResourceExhausted at once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0

    def acquire(self, n: int = 1) -> "SlotLease":
        """Take ``n`` slots now or raise ResourceExhausted; release them with the lease."""
        if self.in_use + n > self.capacity:
            label_request(reason="streams_full")
            if n > self.capacity:
                raise ResourceExhausted(f"request needs {n} decoding streams; the server admits at most {self.capacity}")
            raise ResourceExhausted(
                f"{self.in_use} of {self.capacity} decoding streams are in use; {n} more requested; retry later"
            )
        self.in_use += n
        return SlotLease(self, n)

    @contextmanager
    def hold(self, n: int = 1) -> Iterator[None]:
        lease = self.acquire(n)
        try:
            yield
        finally:
            lease.release()


class SlotLease:
    """Slots taken from StreamSlots; release() is idempotent."""

    def __init__(self, slots: StreamSlots, n: int) -> None:
        self._slots = slots
        self._n = n

    def release(self) -> None:
        if self._n:
            self._slots.in_use -= self._n
            self._n = 0


class StepItem:
    """One participant of the step loop: a generation stream (1 row) or a beam search (one row
    per live hypothesis). Subclasses keep their own state, sampler and RNG."""

    rows: int = 1  # rows this item contributes to the next call
    deadline: float | None = None  # time.monotonic() value
    cancelled: bool = False  # set by the owner; the loop drops the item before the next step
    serial: int = 0  # set by StepScheduler.add; unique per scheduler (ids of dead objects get reused)

    def step_feeds(self) -> dict[str, np.ndarray]:
        """Per-step inputs: state tensors (L, rows, H), everything else (rows, ...)."""
        raise NotImplementedError

    def static_feeds(self) -> dict[str, np.ndarray]:
        """Inputs fixed while ``rows`` is unchanged, (rows, S, ...); padded along S to the step's
        longest. Items should cache them."""
        return {}

    def advance(self, outputs: dict[str, np.ndarray]) -> bool:
        """Consume this item's rows of one call's outputs; return True when finished."""
        raise NotImplementedError

    def fail(self, error: ServiceError) -> None:
        """Finish with an error (deadline, shutdown, graph failure)."""
        raise NotImplementedError


class StepScheduler:
    """One loop per decoder graph. ``add`` an item; it advances one step per shared call until its
    ``advance`` returns True, it is cancelled, or its deadline passes."""

    def __init__(
        self,
        name: str,
        runtime: GraphRuntime,
        layout: StepLayout,
        meter: GraphMeter = NULL_METER,
        max_streams_per_step: int = 0,
    ) -> None:
        self.name = name
        self.max_streams_per_step = max_streams_per_step  # 0 = all active streams share each call
        self._meter = meter
        self._runtime = runtime
        self._layout = layout
        self._pending: list[StepItem] = []
        self._active: list[StepItem] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._static_key: tuple | None = None
        self._static: dict[str, np.ndarray] = {}
        self._serial = 0

    @property
    def active(self) -> int:
        return len(self._active) + len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"scheduler {self.name}")

    def add(self, item: StepItem) -> None:
        """Join the loop before its next step. Raises Unavailable after close()."""
        if self._closed:
            raise Unavailable(f"{self.name} is shutting down")
        self._serial += 1
        item.serial = self._serial
        self._pending.append(item)
        self._meter.streams(self.active)
        self._idle.clear()
        self._wake.set()

    def remove(self, item: StepItem) -> None:
        """Leave at once (no-op when already gone): the item is not part of any later call."""
        item.cancelled = True
        for group in (self._pending, self._active):
            if item in group:
                group.remove(item)
        self._meter.streams(self.active)
        if not self._pending and not self._active:
            self._idle.set()

    async def close(self, grace_s: float = 0.0) -> None:
        """Refuse new items, let active ones finish within ``grace_s``, fail the rest with Unavailable."""
        self._closed = True
        if grace_s > 0:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
            except asyncio.TimeoutError:
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for item in self._pending + self._active:
            item.fail(Unavailable(f"{self.name} shut down before the request finished"))
        self._pending.clear()
        self._active.clear()
        self._meter.clear()  # the version is going away: drop its gauges
        self._idle.set()

    def _stack(self, items: list[StepItem]) -> dict[str, np.ndarray]:
        feeds = self._layout.stack([it.step_feeds() for it in items])
        if self._layout.padded_inputs:
            key = tuple((it.serial, it.rows) for it in items)
            if key != self._static_key:  # membership or row counts changed: rebuild
                self._static = self._layout.pad([it.static_feeds() for it in items])
                self._static_key = key
            feeds.update(self._static)
        return feeds

    def _admit(self) -> list[StepItem]:
        self._active.extend(self._pending)
        self._pending.clear()
        now = time.monotonic()
        live: list[StepItem] = []
        for item in self._active:
            if item.cancelled:
                continue
            if item.deadline is not None and now >= item.deadline:
                item.fail(DeadlineExceeded(f"deadline passed while decoding in {self.name}"))
                continue
            live.append(item)
        self._active = live
        self._meter.streams(self.active)
        return list(live)

    async def _loop(self) -> None:
        while True:
            items = self._admit()
            if not items:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            # Continuous batching: every stream advances through one shared call; with
            # max_streams_per_step they go in groups of at most that many (1 = batching off).
            group = self.max_streams_per_step or len(items)
            for k in range(0, len(items), group):
                await self._step(items[k : k + group])

    async def _step(self, items: list[StepItem]) -> None:
        """One decoder call for ``items``; each advances (or fails) with its rows of the outputs."""
        bounds = []
        start = 0
        for it in items:  # rows may change in advance(): fix the slices first
            bounds.append((start, start + it.rows))
            start += it.rows
        started = time.monotonic()
        try:
            outputs = await self._runtime.run(self._stack(items))
        except ServiceError as err:
            for it in items:
                if not it.cancelled:
                    it.fail(err)
                self.remove(it)
            return
        self._meter.batch(start, time.monotonic() - started)
        for it, (lo, hi) in zip(items, bounds):
            if it.cancelled:  # left while the call ran
                continue
            try:
                done = it.advance(self._layout.split(outputs, lo, hi))
            except Exception as err:  # noqa: BLE001 - one broken item must not stop the loop
                log.error("%s: decoding step failed", self.name, exc_info=err)
                it.fail(Internal(f"decoding failed in {self.name}"))
                done = True
            if done:
                self.remove(it)
